"""SenML (RFC 8428) packs in JSON and CBOR, resolved to plain records.

NB-IoT devices that speak SenML send a *pack*: a list of records where
base fields (``bn`` base name, ``bt`` base time, ``bu`` base unit, ``bv``
base value, ``bs`` base sum, ``bver`` version) apply to their own record
and every later one until replaced. ``resolve`` applies them (RFC 8428
section 4.6), turns relative times into absolute ones (a time below 2**28
counts from "now", section 4.5.3) and checks what a receiver must check:
one value per record, the version, and "must understand" fields (names
ending in ``_``). Pure: no I/O; anything malformed raises ``SenmlError``
(a ``ValueError``) and nothing else.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from typing import Any

# RFC 8428 section 6, table 4: CBOR integer labels of the SenML fields.
CBOR_LABELS: dict[int, str] = {
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}
_KNOWN = frozenset(CBOR_LABELS.values())
_VALUE_KEYS = ("v", "vs", "vb", "vd")
RELATIVE_LIMIT = 2**28  # section 4.5.3: smaller times are relative to "now"
SENML_VERSION = 10  # the version RFC 8428 defines; later versions may change meanings
_MAX_INT = 2**53  # integers beyond this lose precision as floats, and huge ones overflow
MAX_RECORDS = 1024  # a pack larger than this is refused (one datagram never carries that many)


class SenmlError(ValueError):
    """A SenML pack that cannot be resolved; the message says why."""


@dataclass(frozen=True, slots=True)
class Record:
    """One resolved SenML record.

    Attributes:
        name: base name + name.
        local: the record's own name (``n``), without the base name.
        unit: its unit (or the base unit), or None.
        value: number, str, bool, or the ``vd`` data as base64url text; the sum when no value.
        time: absolute seconds since the epoch.
    """

    name: str
    local: str
    unit: str | None
    value: float | int | str | bool
    time: float


def loads_json(data: bytes | str) -> list[dict[str, Any]]:
    """A SenML JSON pack (``application/senml+json``) → its raw records."""
    try:
        pack = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SenmlError(f"not JSON: {exc}") from None
    return _check_pack(pack)


def loads_cbor(data: bytes) -> list[dict[str, Any]]:
    """A SenML CBOR pack (``application/senml+cbor``) → its raw records with text labels."""
    import cbor2

    try:
        pack = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises assorted errors on hostile input; all mean "not CBOR"
        raise SenmlError(f"not CBOR: {type(exc).__name__}: {exc}") from None
    records = _check_pack(pack)
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        named: dict[str, Any] = {}
        for key, value in rec.items():
            if isinstance(key, int) and not isinstance(key, bool):
                if key not in CBOR_LABELS:
                    raise SenmlError(f"record {i}: unknown CBOR label {_label(key)}")
                named[CBOR_LABELS[key]] = value
            elif isinstance(key, str):
                named[key] = value  # extension fields are text labels in CBOR too
            else:
                raise SenmlError(f"record {i}: label {_label(key)} is neither an integer nor text")
        out.append(named)
    return out


def _check_pack(pack: Any) -> list[dict[str, Any]]:
    if not isinstance(pack, list):
        raise SenmlError("a SenML pack is an array of records")
    if len(pack) > MAX_RECORDS:
        raise SenmlError(f"pack has {len(pack)} records; more than {MAX_RECORDS} are refused")
    for i, rec in enumerate(pack):
        if not isinstance(rec, dict):
            raise SenmlError(f"record {i} is not a map")
    return pack


def _label(key: Any) -> str:
    """A hostile label for a message: a bignum's str() raises past 4300 digits, a nested key's repr may recurse."""
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key) if abs(key) < 10**15 else f"(an integer of {key.bit_length()} bits)"
    if isinstance(key, str):
        return ascii(key[:40])
    return f"(a {type(key).__name__})"


def _number(rec: dict[str, Any], key: str, i: int) -> float | int:
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SenmlError(f"record {i}: {key!r} must be a number, not {type(v).__name__}")
    if isinstance(v, float) and not math.isfinite(v):
        raise SenmlError(f"record {i}: {key!r} is not finite")
    if isinstance(v, int) and abs(v) > _MAX_INT:
        raise SenmlError(f"record {i}: {key!r} is out of range")
    return v


def _text(rec: dict[str, Any], key: str, i: int) -> str:
    v = rec[key]
    if not isinstance(v, str):
        raise SenmlError(f"record {i}: {key!r} must be text, not {type(v).__name__}")
    return v


def resolve(records: list[dict[str, Any]], now: float | None = None) -> list[Record]:
    """Apply base fields and relative times (RFC 8428 section 4.6).

    Args:
        records: raw records with text labels (``loads_json`` / ``loads_cbor``).
        now: the receive time for relative times; default: the current time.

    Raises:
        SenmlError: a record breaks the format (the message names it).
    """
    now = time.time() if now is None else now
    bn, bu = "", None
    bt: float | int = 0
    bv: float | int = 0
    bs: float | int = 0
    out: list[Record] = []
    for i, rec in enumerate(records):
        for key in rec:
            if not isinstance(key, str):
                raise SenmlError(f"record {i}: label {_label(key)} is not text")
            if key.endswith("_"):
                raise SenmlError(f"record {i}: must-understand field {_label(key)} is not supported")
        if "bver" in rec:
            ver = _number(rec, "bver", i)
            if not isinstance(ver, int) or ver < 1 or ver > SENML_VERSION:
                raise SenmlError(f"record {i}: SenML version {ver} is not supported (up to {SENML_VERSION})")
        if "bn" in rec:
            bn = _text(rec, "bn", i)
        if "bt" in rec:
            bt = _number(rec, "bt", i)
        if "bu" in rec:
            bu = _text(rec, "bu", i)
        if "bv" in rec:
            bv = _number(rec, "bv", i)
        if "bs" in rec:
            bs = _number(rec, "bs", i)
        present = [k for k in _VALUE_KEYS if k in rec]
        if len(present) > 1:
            raise SenmlError(f"record {i}: more than one value field ({', '.join(present)})")
        if not present and "s" not in rec:
            if "n" in rec or "t" in rec or "u" in rec:
                raise SenmlError(f"record {i}: no value (v, vs, vb, vd) and no sum (s)")
            continue  # a record of base fields only
        local = _text(rec, "n", i) if "n" in rec else ""
        name = bn + local
        if not name:
            raise SenmlError(f"record {i}: no name (n) and no base name (bn)")
        unit = _text(rec, "u", i) if "u" in rec else bu
        value: float | int | str | bool
        if present:
            key = present[0]
            if key == "v":
                value = bv + _number(rec, "v", i)
            elif key == "vs":
                value = _text(rec, "vs", i)
            elif key == "vb":
                vb = rec["vb"]
                if not isinstance(vb, bool):
                    raise SenmlError(f"record {i}: 'vb' must be true or false")
                value = vb
            else:
                vd = rec["vd"]
                if isinstance(vd, bytes):  # CBOR carries the bytes themselves
                    value = base64.urlsafe_b64encode(vd).rstrip(b"=").decode("ascii")
                elif isinstance(vd, str):
                    value = vd
                else:
                    raise SenmlError(f"record {i}: 'vd' must be base64url text or bytes")
        else:
            value = bs + _number(rec, "s", i)
        t = bt + (_number(rec, "t", i) if "t" in rec else 0)
        if t < RELATIVE_LIMIT:
            t = now + t
        if "ut" in rec:
            _number(rec, "ut", i)
        if isinstance(value, float) and not math.isfinite(value):
            raise SenmlError(f"record {i}: value is not finite")
        out.append(Record(name, local, unit, value, float(t)))
    return out

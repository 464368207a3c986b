"""Payload decoding: one CoAP report's bytes → raw readings of the profile's points.

Four formats, chosen by the profile (``payload.format``):

- ``senml``: RFC 8428 JSON or CBOR, by the request's Content-Format (110
  senml+json, 112 senml+cbor; sniffed when absent). Records map to points
  by name (records no point takes are counted by name and announced once,
  two records for one point at one time make that point bad,
  ``duplicate_record``); a pack with several times gives one reading per time, oldest
  first. A record whose unit differs from the point's is a ``unit_mismatch``.
- ``json`` / ``cbor``: a document read with each point's dotted ``path``.
- ``binary``: bytes read with the serial driver's ``FieldSpec`` and
  ``BinaryDecoder`` (shared code, not a copy), optionally checked with one of
  its checksums.

A measurement time from the device (SenML ``t``/``bt``, ``payload.time``)
outside ``schema.plausible_time``'s window (before 2000, or more than a day
past the gateway clock) is not believed: the reading takes the receive time
and its values are marked ``uncertain`` with reason ``implausible_time``.
The values are kept (a device with a flat RTC battery still measures), and
``flagged`` counts them.

Everything a device can send either decodes or raises ``PayloadError`` (a
``ValueError``) with a reason; the fuzz tests hold this line.

``encode_writes`` is the other direction, for a command's write: the points'
engineering values, unscaled, in the same format (SenML records by the same
names, a JSON/CBOR document by the same paths), so what the decoder reads is
what the encoder wrote; the tests run both ways.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fieldgate.codecs.checksums import CHECKSUMS
from fieldgate.codecs.fields import BinaryDecoder
from fieldgate.schema import IMPLAUSIBLE_TIME, PointError, Quality, RawReading, plausible_time

from .profile import CoapPoint, CoapProfile, PayloadSpec
from .senml import SenmlError, loads_cbor, loads_json, resolve

# CoAP Content-Format numbers (IANA CoRE parameters registry)
CF_TEXT, CF_OCTETS, CF_JSON, CF_CBOR, CF_SENML_JSON, CF_SENML_CBOR = 0, 42, 50, 60, 110, 112
_ACCEPTED = {
    "senml": {None, CF_SENML_JSON, CF_SENML_CBOR, CF_JSON, CF_CBOR},
    "json": {None, CF_JSON, CF_TEXT},
    "cbor": {None, CF_CBOR},
    "binary": {None, CF_OCTETS},
}
MAX_PAYLOAD = 4096  # bytes; an NB-IoT report is tens of bytes, a CoAP datagram at most ~1 kB
#: Distinct unmatched record names kept (and announced) per device; a device inventing names
#: for every report must not grow the gateway's memory or flood the events topic.
MAX_UNMATCHED_NAMES = 32
#: The bucket of unmatched records beyond ``MAX_UNMATCHED_NAMES`` names.
OTHER_NAMES = "(other names)"


class PayloadError(ValueError):
    """A report that cannot be decoded.

    Attributes:
        reason: ``decode_error``, ``unsupported_format`` or ``checksum``.
    """

    def __init__(self, message: str, reason: str = "decode_error") -> None:
        super().__init__(message)
        self.reason = reason


class PayloadDecoder:
    """Decodes one profile's payloads; built once per device.

    Args:
        profile: the device's profile.
    """

    def __init__(self, profile: CoapProfile) -> None:
        self.spec: PayloadSpec = profile.payload
        self.points: Sequence[CoapPoint] = profile.points
        self.format = self.spec.format
        self._senml = {(p.senml or p.name): p for p in self.points}
        self._paths = [(p.name, p.path.split(".")) for p in self.points if p.path]
        self._time_path = self.spec.time.split(".") if self.spec.time else None
        self.flagged = 0  # readings whose device time was implausible (replaced by the receive time)
        #: SenML records no point takes, by name (at most MAX_UNMATCHED_NAMES names, then OTHER_NAMES)
        self.unmatched: Counter[str] = Counter()
        #: packs in which two records named one point at one time
        self.duplicates = 0
        #: ``on_event(kind, **fields)``: the device's events topic, set by the driver
        self.on_event: Callable[..., None] | None = None
        self._announced_duplicates: set[tuple[str, tuple[str, ...]]] = set()
        self._binary: BinaryDecoder | None = None
        if self.format == "binary":
            self._binary = BinaryDecoder([(p.name, p.field_spec()) for p in self.points], self.spec.byte_order)
            self._need = max(p.at + p.field_spec().size for p in self.points if p.at is not None)

    def accepts(self, content_format: int | None) -> bool:
        """Whether a request with this Content-Format can hold this profile's payload."""
        return content_format in _ACCEPTED[self.format]

    def decode(self, payload: bytes, content_format: int | None = None, now: float | None = None) -> list[RawReading]:
        """Raw readings of one report (at least one).

        Raises:
            PayloadError: the payload does not decode, or holds none of the profile's points.
        """
        now = time.time() if now is None else now
        if not self.accepts(content_format):
            raise PayloadError(f"Content-Format {content_format} does not carry a {self.format} payload",
                               "unsupported_format")
        if len(payload) > MAX_PAYLOAD:
            raise PayloadError(f"payload of {len(payload)} bytes is larger than {MAX_PAYLOAD}")
        if self.format == "senml":
            return self._decode_senml(payload, content_format, now)
        if self.format == "binary":
            return [self._decode_binary(payload, now)]
        return [self._decode_mapped(payload, now)]

    # --- SenML --------------------------------------------------------------

    def _decode_senml(self, payload: bytes, content_format: int | None, now: float) -> list[RawReading]:
        is_json = content_format in (CF_SENML_JSON, CF_JSON) or (
            content_format is None and payload.lstrip()[:1] == b"[")
        try:
            records = resolve(loads_json(payload) if is_json else loads_cbor(payload), now)
        except SenmlError as exc:
            raise PayloadError(f"SenML {'JSON' if is_json else 'CBOR'}: {exc}") from None
        by_time: dict[float, dict[str, Any]] = {}
        sources: dict[tuple[float, str], list[str]] = {}
        for rec in records:
            point = self._senml.get(rec.name) or self._senml.get(rec.local)
            if point is None:
                self._unmatched(rec.name)
                continue
            value: Any = rec.value
            if rec.unit is not None and point.unit is not None and rec.unit != point.unit:
                value = PointError("unit_mismatch")
            elif isinstance(value, str) and point.unit is not None:
                value = PointError("decode_error")  # text where the profile expects a measured number
            values = by_time.setdefault(rec.time, {})
            seen = sources.setdefault((rec.time, point.name), [])
            seen.append(rec.name)
            if len(seen) > 1:
                # Two values of one point at one instant (RFC 8428 5.1.6 lets the last win): which one
                # the device meant cannot be known, so the point is bad and the rest of the pack stands.
                if len(seen) == 2:
                    self._duplicate(point.name, seen)
                values[point.name] = PointError("duplicate_record")
                continue
            values[point.name] = value
        if not by_time:
            names = ", ".join(_shown(n) for n in sorted({r.name for r in records})[:5]) or "none"
            raise PayloadError(f"no record names a point of the profile (records: {names})")
        return [self._reading(values, ts, now) for ts, values in sorted(by_time.items())]

    def _unmatched(self, name: str) -> None:
        """Count a record no point takes; announce a name the first time it is seen."""
        key = name if name in self.unmatched or len(self.unmatched) < MAX_UNMATCHED_NAMES else OTHER_NAMES
        first = key not in self.unmatched
        self.unmatched[key] += 1
        if first and key != OTHER_NAMES:
            self._announce("senml_unmatched", names=[name], message=(
                f"SenML record {_shown(name)} matches no point of the profile and is dropped"
                f"{self._hint(name)}"))

    def _hint(self, name: str) -> str:
        """Why a record may not match: it carries a point's name where the profile expects its senml name."""
        for point in self.points:
            if point.senml and point.senml != point.name and name.rpartition(":")[2].rpartition("/")[2] == point.name:
                return (f"; point {point.name!r} matches records named {point.senml!r}: "
                        f"set senml: {point.name} or rename the device's record")
        return ""

    def _duplicate(self, point: str, names: list[str]) -> None:
        self.duplicates += 1
        key = (point, tuple(sorted(names)))
        if key not in self._announced_duplicates and len(self._announced_duplicates) < MAX_UNMATCHED_NAMES:
            self._announced_duplicates.add(key)
            self._announce("senml_duplicate", point=point, names=sorted(names), message=(
                f"SenML records {', '.join(_shown(n) for n in sorted(names))} are all values of point {point!r} "
                "at one time: it is published as bad (duplicate_record); give each record its own point"))

    def _announce(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, **fields)

    def _reading(self, values: dict[str, Any], ts: float, now: float) -> RawReading:
        """A reading at the device's time, or at ``now`` with its values flagged when that time is implausible."""
        if plausible_time(ts, now):
            return RawReading(values, ts)
        self.flagged += 1
        return RawReading(values, now, {name: (Quality.UNCERTAIN, IMPLAUSIBLE_TIME) for name in values})

    # --- JSON / CBOR with paths ---------------------------------------------

    def _decode_mapped(self, payload: bytes, now: float) -> RawReading:
        if self.format == "json":
            try:
                doc = json.loads(payload)
            except (ValueError, RecursionError) as exc:
                raise PayloadError(f"not JSON: {exc}") from None
        else:
            import cbor2

            try:
                doc = cbor2.loads(payload)
            except Exception as exc:  # cbor2 raises assorted errors on hostile input; all mean "not CBOR"
                raise PayloadError(f"not CBOR: {type(exc).__name__}") from None
        values: dict[str, Any] = {}
        for name, path in self._paths:
            found, raw = _walk(doc, path)
            if not found:
                continue
            values[name] = raw if _plain(raw) else PointError("decode_error")
        if not values:
            raise PayloadError("none of the profile's paths is in the payload")
        if self._time_path is not None:
            found, t = _walk(doc, self._time_path)
            if found:
                if isinstance(t, bool) or not isinstance(t, int | float):
                    raise PayloadError(f"time at {self.spec.time!r} is not a number (seconds since the epoch)")
                # float() of an integer beyond the float range raises; such a time is implausible anyway
                return self._reading(values, float(t) if abs(t) < 1e300 else math.inf, now)
        return RawReading(values, now)

    # --- binary -------------------------------------------------------------

    def _decode_binary(self, payload: bytes, now: float) -> RawReading:
        n = len(payload)
        if n < max(self.spec.min_length, 1):
            raise PayloadError(f"{n}-byte payload is shorter than the {self.spec.min_length} bytes expected")
        check = self.spec.checksum
        if check is not None:
            algo = CHECKSUMS[check.type]
            at = check.at if check.at is not None else -algo.size
            a = at if at >= 0 else n + at
            start, end = check.over if check.over is not None else (0, a)
            start = start if start >= 0 else n + start
            end = end if end >= 0 else n + end
            if not (a >= 0 and a + algo.size <= n and 0 <= start <= end <= n):
                raise PayloadError(f"{n}-byte payload is too short for its {check.type} checksum")
            if algo.compute(payload[start:end]) != int.from_bytes(payload[a:a + algo.size], check.byte_order):
                raise PayloadError(f"{check.type} checksum does not match", "checksum")
        assert self._binary is not None
        values = self._binary.decode(payload)
        if all(isinstance(v, PointError) for v in values.values()):
            raise PayloadError(f"{n}-byte payload holds none of the fields (needs {self._need} bytes)")
        for name, v in values.items():
            if isinstance(v, float) and not math.isfinite(v):
                values[name] = PointError("decode_error")
        return RawReading(values, now)


def _shown(text: str, limit: int = 40) -> str:
    """A device-supplied name for a message: quoted, escaped (no newlines or escapes reach a log), cut."""
    return ascii(text[:limit] + ("..." if len(text) > limit else ""))


def _walk(doc: Any, path: list[str]) -> tuple[bool, Any]:
    """Follow a dotted path through maps (by key) and lists (by index)."""
    node = doc
    for part in path:
        if isinstance(node, dict):
            if part in node:
                node = node[part]
            elif part.lstrip("-").isdigit() and int(part) in node:  # CBOR maps with integer keys
                node = node[int(part)]
            else:
                return False, None
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _plain(value: Any) -> bool:
    if isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return abs(value) <= 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    return False


def _raw(point: CoapPoint, value: float | bool) -> float | int | bool:
    """The value the device holds for an engineering value: ``(value - offset) / scale``, whole when it is."""
    if isinstance(value, bool) or (point.scale == 1.0 and point.offset == 0.0):
        return value
    raw = (value - point.offset) / point.scale
    nearest = round(raw)
    # 21.5 / 0.1 is 214.99999999999997 in binary floating point: a device scaled by 0.1 holds 215
    return nearest if abs(raw - nearest) <= 1e-9 * max(1.0, abs(raw)) else raw


def encode_writes(profile: CoapProfile, values: Mapping[str, float | bool]) -> tuple[bytes, int]:
    """(payload, Content-Format) of a write of ``values`` (point name → engineering value).

    Raises:
        PayloadError: reason ``not_supported`` (a binary payload), ``unknown_point``, or
            ``encode_error`` (a value that is not a finite number or a boolean).
    """
    fmt = profile.payload.format
    if fmt == "binary":
        raise PayloadError("a binary payload cannot be written (a frame needs every field)", "not_supported")
    by_name = {p.name: p for p in profile.points}
    raws: list[tuple[CoapPoint, float | int | bool]] = []
    for name, value in values.items():
        point = by_name.get(name)
        if point is None:
            raise PayloadError(f"no point {name!r} in the profile", "unknown_point")
        if not isinstance(value, bool | int | float) or (isinstance(value, float) and not math.isfinite(value)):
            raise PayloadError(f"{name!r}: {value!r} is not a number or a boolean", "encode_error")
        raws.append((point, _raw(point, value)))
    if fmt == "senml":
        # RFC 8428 section 4.3: v for numbers, vb for booleans; the record name the decoder matches
        records = [{"n": p.senml or p.name, ("vb" if isinstance(raw, bool) else "v"): raw} for p, raw in raws]
        return json.dumps(records, separators=(",", ":")).encode(), CF_SENML_JSON
    doc: dict[str, Any] = {}
    for p, raw in raws:
        assert p.path is not None
        *parents, leaf = p.path.split(".")
        node = doc
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PayloadError(f"{p.name!r}: path {p.path!r} runs through another point's value", "encode_error")
            node = child
        node[leaf] = raw
    if fmt == "cbor":
        import cbor2

        return cbor2.dumps(doc), CF_CBOR
    return json.dumps(doc, separators=(",", ":")).encode(), CF_JSON

"""The command message (``fieldgate.command/1``): parse, check, and build its result.

Pure: no I/O. ``parse`` turns whatever arrived (a parsed JSON object from MQTT,
the local API or the CLI) into a ``Command`` or raises ``BadCommand`` naming
the first problem, so the executor can answer ``rejected`` with a reason a
person can act on. The checks are those of ``contract/command.schema.json``,
written out here because the runtime does not depend on a JSON Schema library
(the Pi install stays small); the tests validate every message the gateway
sends against the schema itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..schema import iso_ms

COMMAND_SCHEMA = "fieldgate.command/1"
RESULT_SCHEMA = "fieldgate.command-result/1"
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
#: The most points one command may name: a command is for a setpoint or a few, not a bulk transfer.
MAX_POINTS = 64
#: Statuses a result may carry (the contract's list).
STATUSES = ("ok", "mismatch", "rejected", "expired", "failed")
_KEYS = {"schema", "id", "op", "metrics", "expires"}


class BadCommand(ValueError):
    """The message is not a valid command; ``reason`` is ``bad_message: <what is wrong>``.

    Attributes:
        reason: the result's reason.
        id: the command's id when it could be read (a string), else ``""``.
    """

    def __init__(self, detail: str, command_id: str = "") -> None:
        super().__init__(detail)
        self.reason = f"bad_message: {detail}"
        self.id = command_id


@dataclass(frozen=True, slots=True)
class Command:
    """A valid command.

    Attributes:
        id: the sender's id (at most once per device and id).
        op: ``write`` or ``read``.
        values: for ``write``, point name → value as sent (checked against the profile later).
        names: for ``read``, the point names asked for (None: all).
        expires: epoch seconds after which it must not run, or None.
    """

    id: str
    op: str
    values: dict[str, float | int | bool | str]
    names: tuple[str, ...] | None
    expires: float | None

    def as_dict(self) -> dict[str, Any]:
        """The command as a JSON-able dict (what the store and the audit trail keep)."""
        out: dict[str, Any] = {"schema": COMMAND_SCHEMA, "id": self.id, "op": self.op}
        if self.op == "write":
            out["metrics"] = dict(self.values)
        elif self.names is not None:
            out["metrics"] = list(self.names)
        if self.expires is not None:
            out["expires"] = iso_ms(self.expires)
        return out


def parse_time(text: str) -> float:
    """An RFC 3339 date-time with a zone (``2026-12-01T20:15:30.000Z``) as epoch seconds.

    Raises:
        ValueError: not such a date-time (a time without a zone is refused: it would mean the
            gateway's local time, which a sender cannot know).
    """
    if not isinstance(text, str) or not re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}", text):
        raise ValueError("not an RFC 3339 date-time")
    when = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    if when.tzinfo is None:
        raise ValueError("a date-time without a zone (add Z for UTC)")
    return when.timestamp()


def command_id_of(msg: object) -> str:
    """The id of a message, when it has a usable one (for answering a bad message), else ``""``."""
    if isinstance(msg, Mapping):
        cid = msg.get("id")
        if isinstance(cid, str) and ID_RE.match(cid):
            return cid
    return ""


def _not_text(value: object) -> bool:
    """A string JSON can carry but UTF-8 cannot (a lone surrogate escape such as ``"\\udcdf"``)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse(msg: object) -> Command:
    """Check a command message and return it.

    Raises:
        BadCommand: the first problem found, by key.
    """
    if not isinstance(msg, Mapping):
        raise BadCommand("a command is a JSON object")
    cid = command_id_of(msg)
    if msg.get("schema") != COMMAND_SCHEMA:
        raise BadCommand(f"schema must be {COMMAND_SCHEMA!r}", cid)
    raw_id = msg.get("id")
    if not isinstance(raw_id, str) or not ID_RE.match(raw_id):
        raise BadCommand("id must be 1 to 64 characters of A-Z a-z 0-9 _ . : -", cid)
    unknown = sorted(str(k) for k in msg if k not in _KEYS)
    if unknown:
        # The schema would let them pass; refusing them catches a misspelt "expires" that would
        # otherwise make a command never expire.
        raise BadCommand(f"unknown key {unknown[0]!r} (a command has {', '.join(sorted(_KEYS))})", cid)
    op = msg.get("op")
    if op not in ("write", "read"):
        raise BadCommand("op must be 'write' or 'read'", cid)
    expires = None
    if "expires" in msg:
        try:
            expires = parse_time(msg["expires"])
        except (ValueError, OverflowError) as exc:
            raise BadCommand(f"expires: {exc}", cid) from None
    metrics = msg.get("metrics")
    values: dict[str, float | int | bool | str] = {}
    names: tuple[str, ...] | None = None
    if op == "write":
        if not isinstance(metrics, Mapping) or not metrics:
            raise BadCommand("a write needs metrics: an object of point name → value", cid)
        if len(metrics) > MAX_POINTS:
            raise BadCommand(f"a command names at most {MAX_POINTS} points", cid)
        for name, value in metrics.items():
            if _not_text(name) or _not_text(value):
                # Its result could not be published (a result is UTF-8): refused here, answered.
                raise BadCommand("metrics: a point name or value is not text (a lone UTF-16 surrogate escape)", cid)
            if not isinstance(value, bool | int | float | str):
                raise BadCommand(f"metrics.{name}: a value is a number, a boolean or a string", cid)
            if isinstance(value, float) and not math.isfinite(value):
                raise BadCommand(f"metrics.{name}: not a finite number", cid)
            values[str(name)] = value
    elif metrics is not None:
        if not isinstance(metrics, list) or not all(isinstance(n, str) for n in metrics):
            raise BadCommand("a read's metrics is a list of point names (or absent for all)", cid)
        if any(_not_text(n) for n in metrics):
            raise BadCommand("metrics: a point name is not text (a lone UTF-16 surrogate escape)", cid)
        if len(metrics) > MAX_POINTS:
            raise BadCommand(f"a command names at most {MAX_POINTS} points", cid)
        names = tuple(dict.fromkeys(metrics))
    return Command(raw_id, op, values, names, expires)


def result(gateway: str, device: str, command_id: str, status: str, ts: float, *, reason: str | None = None,
           metrics: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A result message (``fieldgate.command-result/1``)."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    out: dict[str, Any] = {"schema": RESULT_SCHEMA, "gateway": gateway, "device": device, "id": command_id,
                           "status": status, "ts": iso_ms(ts)}
    if reason is not None:
        out["reason"] = reason
    elif status != "ok":
        raise ValueError(f"a {status} result needs a reason")
    if metrics:
        out["metrics"] = metrics
    return out

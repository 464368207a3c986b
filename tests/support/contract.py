"""Validators for every message of the wire contract (``gateway/contract/CONTRACT.md``).

The reading message is checked against the JSON Schema the package ships
(``gateway/contract/reading.schema.json``), which must stay identical to the shared contract's copy
(``../shared/contract/reading.schema.json`` beside the repository) when that is present; commands and
their results likewise against ``command.schema.json`` (one schema, one alternative each). The other
messages (statuses, events, batches) have no shipped schema; the small schemas here follow the
contract's topic table. Every validator raises ``AssertionError`` listing *all* problems at once.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

__all__ = [
    "ID_PATTERN",
    "SHARED_SCHEMA",
    "SHIPPED_SCHEMA",
    "TS_PATTERN",
    "command_schema",
    "reading_schema",
    "shipped_command_schema_matches_shared",
    "shipped_schema_matches_shared",
    "validate_batch",
    "validate_command",
    "validate_command_result",
    "validate_event",
    "validate_gateway_status",
    "validate_message",
    "validate_reading",
    "validate_status",
]

REPO = Path(__file__).resolve().parents[2]
SHIPPED_SCHEMA = REPO / "gateway" / "contract" / "reading.schema.json"
SHARED_SCHEMA = REPO.parent / "shared" / "contract" / "reading.schema.json"
SHIPPED_COMMAND_SCHEMA = REPO / "gateway" / "contract" / "command.schema.json"
SHARED_COMMAND_SCHEMA = REPO.parent / "shared" / "contract" / "command.schema.json"

# The contract's id and timestamp formats, as the reading schema spells them.
ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TS_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$"
_TS = {"type": "string", "pattern": TS_PATTERN}

STATUS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "fieldgate device status ({prefix}/{gw}/{dev}/status, retained)",
    "type": "object",
    "required": ["state", "ts", "error"],
    "properties": {
        "state": {"enum": ["online", "degraded", "offline"]},
        "ts": _TS,
        "error": {"type": ["string", "null"]},
    },
}

GATEWAY_STATUS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "fieldgate gateway status ({prefix}/{gw}/status, retained; 'offline' is the last will)",
    "type": "object",
    "required": ["state", "ts", "version"],
    "properties": {
        "state": {"enum": ["online", "offline"]},
        "ts": _TS,
        "version": {"type": "string", "minLength": 1},
    },
}

EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "fieldgate event ({prefix}/{gw}/events)",
    "type": "object",
    "required": ["ts", "kind"],
    "properties": {
        "ts": _TS,
        "kind": {"type": "string", "minLength": 1},
    },
}

# The items are checked by the reading schema, each error prefixed with its index.
BATCH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "fieldgate batch ({prefix}/{gw}/readings)",
    "type": "object",
    "required": ["schema", "readings"],
    "properties": {
        "schema": {"const": "fieldgate.batch/1"},
        "readings": {"type": "array", "minItems": 1, "items": {"type": "object"}},
    },
}


@functools.cache
def reading_schema() -> dict[str, Any]:
    """The shipped reading schema (checked once to be a valid Draft 2020-12 schema)."""
    schema: dict[str, Any] = json.loads(SHIPPED_SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return schema


@functools.cache
def command_schema() -> dict[str, Any]:
    """The shipped command schema (its ``oneOf``: the command, then the result)."""
    schema: dict[str, Any] = json.loads(SHIPPED_COMMAND_SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return schema


def _command_part(title: str) -> dict[str, Any]:
    """One alternative of the command schema as a schema of its own (errors then name its keys)."""
    schema = command_schema()
    part = next(p for p in schema["oneOf"] if p.get("title") == title)
    return {"$schema": schema["$schema"], **part}


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    schemas: dict[str, Callable[[], dict[str, Any]]] = {
        "reading": reading_schema,
        "command": lambda: _command_part("command"),
        "command result": lambda: _command_part("command result"),
        "status": lambda: STATUS_SCHEMA,
        "gateway status": lambda: GATEWAY_STATUS_SCHEMA,
        "event": lambda: EVENT_SCHEMA,
        "batch": lambda: BATCH_SCHEMA,
    }
    schema = schemas[name]()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def _errors(name: str, msg: Any, where: str = "") -> list[str]:
    out = []
    for err in sorted(_validator(name).iter_errors(msg), key=lambda e: list(map(str, e.absolute_path))):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        out.append(f"{where}{path or '(top)'}: {err.message}")
    return out


def _raise(name: str, msg: Any, errors: list[str]) -> None:
    if errors:
        text = json.dumps(msg, default=str)
        if len(text) > 600:
            text = text[:600] + "..."
        raise AssertionError(f"{name} message breaks the contract ({len(errors)} errors):\n  "
                             + "\n  ".join(errors) + f"\nmessage: {text}")


def validate_reading(msg: dict[str, Any]) -> None:
    """Validate a reading message against the shipped ``reading.schema.json``.

    Raises:
        AssertionError: listing every schema error with its JSON path.
    """
    _raise("reading", msg, _errors("reading", msg))


def validate_status(msg: dict[str, Any]) -> None:
    """Validate a device status (``{prefix}/{gw}/{dev}/status``): state, ts and error (string or null).

    Raises:
        AssertionError: listing every error.
    """
    _raise("device status", msg, _errors("status", msg))


def validate_gateway_status(msg: dict[str, Any]) -> None:
    """Validate a gateway status (``{prefix}/{gw}/status``): state online/offline, ts and version.

    Raises:
        AssertionError: listing every error.
    """
    _raise("gateway status", msg, _errors("gateway status", msg))


def validate_event(msg: dict[str, Any]) -> None:
    """Validate an event (``{prefix}/{gw}/events``): ts and kind; other keys are free.

    Raises:
        AssertionError: listing every error.
    """
    _raise("event", msg, _errors("event", msg))


def validate_command(msg: dict[str, Any]) -> None:
    """Validate a command (``{prefix}/{gw}/{dev}/cmd``) against the shipped ``command.schema.json``.

    Raises:
        AssertionError: listing every error.
    """
    errors = _errors("command", msg) or _errors_whole(msg)
    _raise("command", msg, errors)


def validate_command_result(msg: dict[str, Any]) -> None:
    """Validate a command result (``{prefix}/{gw}/{dev}/cmd/result``) against ``command.schema.json``.

    Raises:
        AssertionError: listing every error.
    """
    errors = _errors("command result", msg) or _errors_whole(msg)
    _raise("command result", msg, errors)


def _errors_whole(msg: Any) -> list[str]:
    """Errors against the whole schema (its oneOf: a message must match exactly one alternative)."""
    validator = Draft202012Validator(command_schema(), format_checker=FormatChecker())
    return [e.message for e in validator.iter_errors(msg)]


def validate_batch(msg: dict[str, Any]) -> None:
    """Validate a batch (``{prefix}/{gw}/readings``) and every reading in it.

    Raises:
        AssertionError: listing every error, readings' errors prefixed with ``readings[i]``.
    """
    errors = _errors("batch", msg)
    readings = msg.get("readings") if isinstance(msg, dict) else None
    if isinstance(readings, list):
        for i, reading in enumerate(readings):
            errors += _errors("reading", reading, where=f"readings[{i}]")
    _raise("batch", msg, errors)


def validate_message(topic: str, payload: bytes | str | dict[str, Any], prefix: str = "fieldgate") -> str:
    """Validate any message by its topic: the topic's shape and ids, the payload, and that they agree.

    Args:
        topic: the MQTT topic, under ``prefix``.
        payload: the raw payload or the parsed object.
        prefix: the configured topic prefix.

    Returns:
        The message kind: ``reading``, ``batch``, ``gateway status``, ``device status``, ``event``,
        ``command`` or ``command result``.

    Raises:
        AssertionError: the topic is not in the contract, or the payload breaks it.
    """
    if not topic.startswith(prefix + "/"):
        raise AssertionError(f"{topic}: not under the prefix {prefix!r}")
    parts = topic[len(prefix) + 1:].split("/")
    bad_ids = [p for p in parts[:-1] if not re.match(ID_PATTERN, p)]
    if bad_ids:
        raise AssertionError(f"{topic}: ids {bad_ids} do not match {ID_PATTERN}")
    if isinstance(payload, bytes | str):
        try:
            msg = json.loads(payload)
        except ValueError as exc:
            raise AssertionError(f"{topic}: payload is not JSON ({exc}): {payload[:200]!r}") from exc
    else:
        msg = payload
    match parts:
        case [gw, dev, "reading"]:
            validate_reading(msg)
            if (msg.get("gateway"), msg.get("device")) != (gw, dev):
                raise AssertionError(f"{topic}: carries gateway={msg.get('gateway')!r} device={msg.get('device')!r}")
            return "reading"
        case [gw, "readings"]:
            validate_batch(msg)
            others = {r.get("gateway") for r in msg["readings"]} - {gw}
            if others:
                raise AssertionError(f"{topic}: batch carries readings of other gateways {sorted(others)}")
            return "batch"
        case [_, "status"]:
            validate_gateway_status(msg)
            return "gateway status"
        case [_, _, "status"]:
            validate_status(msg)
            return "device status"
        case [_, "events"]:
            validate_event(msg)
            return "event"
        case [_, _, "cmd"]:
            validate_command(msg)
            return "command"
        case [gw, dev, "cmd", "result"]:
            validate_command_result(msg)
            if (msg.get("gateway"), msg.get("device")) != (gw, dev):
                raise AssertionError(f"{topic}: carries gateway={msg.get('gateway')!r} device={msg.get('device')!r}")
            return "command result"
    raise AssertionError(f"{topic}: not a topic of the contract")


def shipped_command_schema_matches_shared() -> bool | None:
    """Whether the shipped command schema is byte-identical to the shared contract's (None: no shared copy).

    Raises:
        AssertionError: the copies differ.
    """
    if not SHARED_COMMAND_SCHEMA.is_file():
        return None
    if SHIPPED_COMMAND_SCHEMA.read_text() != SHARED_COMMAND_SCHEMA.read_text():
        raise AssertionError(f"{SHIPPED_COMMAND_SCHEMA} differs from {SHARED_COMMAND_SCHEMA}")
    return True


def shipped_schema_matches_shared() -> bool | None:
    """Whether the shipped reading schema is byte-identical to the shared contract's.

    Returns:
        True when identical; None when the shared contract is not beside the repository.

    Raises:
        AssertionError: the copies differ, with a unified diff.
    """
    if not SHARED_SCHEMA.is_file():
        return None
    shipped, shared = SHIPPED_SCHEMA.read_text(), SHARED_SCHEMA.read_text()
    if shipped != shared:
        diff = difflib.unified_diff(
            shared.splitlines(keepends=True), shipped.splitlines(keepends=True), str(SHARED_SCHEMA), str(SHIPPED_SCHEMA)
        )
        raise AssertionError("the shipped reading schema differs from the shared contract:\n" + "".join(diff))
    return True

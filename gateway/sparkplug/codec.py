"""Sparkplug B payloads from fieldgate readings, and the messages a host sends us: pure functions.

Mapping (docs/sparkplug.md has the table):

* a reading's metric becomes a Sparkplug metric of the device; its datatype follows the JSON
  value (bool → Boolean, int → Int64, float → Double, str → String), an Int64 metric that gets a
  fractional value is widened to Double (a new birth certificate says so);
* ``unit`` → the ``engUnit`` property (in births), ``quality`` → the standard ``Quality``
  property (good 192, bad 0, uncertain 500 = STALE: the specification's three codes, one for each
  of ours), ``reason`` → a ``reason`` String property, and the reading's ``seq`` → the
  ``fieldgate_seq`` UInt64 property, so a consumer dedupes on (edge node, fieldgate_seq) as on
  (gateway, seq) with JSON; a reading's ``clock: unsynced`` → a ``clock`` String property.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from ..errors import GatewayError
from .fieldgate_sparkplug_b_pb2 import Payload

# Datatypes (specification 6.4.16) and quality codes (6.4.9) used here.
INT32, INT64, UINT64, DOUBLE, BOOLEAN, STRING = 3, 4, 8, 10, 11, 12
QUALITY_BAD, QUALITY_GOOD, QUALITY_STALE = 0, 192, 500
QUALITY_CODES = {"good": QUALITY_GOOD, "bad": QUALITY_BAD, "uncertain": QUALITY_STALE}
QUALITY_NAMES = {v: k for k, v in QUALITY_CODES.items()}

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
SEQ_PROPERTY = "fieldgate_seq"

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
_MASK64 = 2**64 - 1
_NUMERIC = frozenset((INT64, UINT64, DOUBLE))


class SparkplugError(GatewayError):
    """A Sparkplug message we received cannot be used (undecodable, or not what it must be)."""


@dataclass(slots=True)
class MetricDef:
    """What a device's birth certificate says of one metric."""

    name: str
    alias: int
    datatype: int
    unit: str | None = None


def datatype_of(value: Any) -> int | None:
    """The Sparkplug datatype of a reading's value (None for null: it says nothing)."""
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int in Python
        return BOOLEAN
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return INT64
        return UINT64 if 0 <= value <= _UINT64_MAX else DOUBLE
    if isinstance(value, float):
        return DOUBLE
    return STRING


def merge_datatype(known: int | None, value: Any) -> int:
    """The datatype a metric needs after ``value``: ``known`` unless the value does not fit it.

    Numbers widen (Int64 and UInt64 to Double); any other change takes the new type. A metric
    never seen with a value is a Double until one arrives.
    """
    new = datatype_of(value)
    if new is None:
        return known if known is not None else DOUBLE
    if known is None or known == new:
        return new
    if known in _NUMERIC and new in _NUMERIC:
        return DOUBLE if DOUBLE in (known, new) or {known, new} == {INT64, UINT64} else known
    return new


def _set_value(m: Payload.Metric, datatype: int, value: Any) -> None:
    if value is None:
        m.is_null = True
    elif datatype == BOOLEAN:
        m.boolean_value = bool(value)
    elif datatype == STRING:
        m.string_value = str(value)
    elif datatype == DOUBLE:
        m.double_value = float(value)
    else:  # Int64 as two's complement in the uint64 field (specification 6.4.16), UInt64 as is
        m.long_value = int(value) & _MASK64


def _prop(props: Payload.PropertySet, key: str, ptype: int, value: int | str) -> None:
    props.keys.append(key)
    pv = props.values.add()
    pv.type = ptype
    if ptype == STRING:
        pv.string_value = str(value)
    elif ptype == INT32:
        pv.int_value = int(value) & 0xFFFFFFFF
    else:
        pv.long_value = int(value)


def _quality_props(props: Payload.PropertySet, quality: str | None, reason: str | None) -> None:
    # Quality is optional when GOOD (6.4.9), so a good value costs no bytes for it.
    if quality is not None and quality != "good":
        _prop(props, "Quality", INT32, QUALITY_CODES.get(quality, QUALITY_BAD))
    if reason:
        _prop(props, "reason", STRING, reason)


def node_birth(ts_ms: int, bdseq: int) -> bytes:
    """NBIRTH: seq 0, ``bdSeq`` of this connection's will, ``Node Control/Rebirth`` false.

    Neither metric has an alias: the Rebirth metric must not have one
    ([tck-id-operational-behavior-data-commands-rebirth-name-aliases]), and bdSeq is named in
    the NDEATH, which a host reads without a birth.
    """
    p = Payload(timestamp=ts_ms, seq=0)
    m = p.metrics.add(name=BDSEQ, timestamp=ts_ms, datatype=INT64)
    m.long_value = bdseq
    m = p.metrics.add(name=REBIRTH, timestamp=ts_ms, datatype=BOOLEAN)
    m.boolean_value = False
    return p.SerializeToString()


def node_death(ts_ms: int, bdseq: int) -> bytes:
    """NDEATH (the will): the bdSeq only, and no seq ([tck-id-payloads-ndeath-seq])."""
    p = Payload(timestamp=ts_ms)
    m = p.metrics.add(name=BDSEQ, timestamp=ts_ms, datatype=INT64)
    m.long_value = bdseq
    return p.SerializeToString()


def device_birth(ts_ms: int, seq: int, metrics: list[MetricDef],
                 last: dict[str, tuple[Any, int, str | None, str | None]]) -> bytes:
    """DBIRTH: every metric with name, alias, datatype and ``engUnit``; the last value known or null.

    Args:
        last: metric name → (value, ts_ms, quality, reason) of the last value published.
    """
    p = Payload(timestamp=ts_ms, seq=seq)
    for d in metrics:
        m = p.metrics.add(name=d.name, alias=d.alias, datatype=d.datatype)
        value, vts, quality, reason = last.get(d.name, (None, ts_ms, None, None))
        m.timestamp = vts
        _set_value(m, d.datatype, value)
        props = m.properties
        if d.unit:
            _prop(props, "engUnit", STRING, d.unit)
        _quality_props(props, quality, reason)
        if not props.keys:
            m.ClearField("properties")
    return p.SerializeToString()


def device_data(ts_ms: int, seq: int, defs: dict[str, MetricDef], reading: dict[str, Any], fg_seq: int,
                historical: bool, clock_unsynced: bool = False) -> bytes:
    """DDATA of one reading: its metrics by alias only, each with its timestamp, quality and seq.

    ``clock_unsynced`` (the reading's ``clock: unsynced``) adds the String property ``clock`` =
    ``unsynced`` to each value: its timestamp may be wrong, which Sparkplug has no word for.
    """
    p = Payload(timestamp=ts_ms, seq=seq)
    for name, point in reading.items():
        d = defs[name]
        m = p.metrics.add(alias=d.alias, timestamp=ts_ms)
        if historical:
            m.is_historical = True
        _set_value(m, d.datatype, point.get("value"))
        props = m.properties
        _quality_props(props, point.get("quality"), point.get("reason"))
        _prop(props, SEQ_PROPERTY, UINT64, fg_seq)
        if clock_unsynced:
            _prop(props, "clock", STRING, "unsynced")
    return p.SerializeToString()


def device_death(ts_ms: int, seq: int) -> bytes:
    """DDEATH: timestamp and seq, no metrics."""
    return Payload(timestamp=ts_ms, seq=seq).SerializeToString()


def decode(payload: bytes) -> Payload:
    """A Sparkplug B payload.

    Raises:
        SparkplugError: not a Sparkplug B protobuf payload.
    """
    p = Payload()
    try:
        p.ParseFromString(payload)
    except (DecodeError, ValueError) as exc:
        raise SparkplugError(f"not a Sparkplug B payload ({len(payload)} bytes): {exc}") from exc
    return p


def metric_value(m: Payload.Metric) -> Any:
    """The Python value of a decoded metric (Int8..Int64 read back from two's complement)."""
    if m.is_null:
        return None
    kind = m.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(m, kind)
    if kind == "long_value" and m.datatype == INT64 and value > _INT64_MAX:
        return value - 2**64
    if kind == "int_value" and m.datatype in (1, 2, 3) and value > 0x7FFFFFFF:
        return value - 2**32
    return value


def rebirth_requested(p: Payload) -> bool:
    """Whether an NCMD asks for a rebirth: ``Node Control/Rebirth`` = true (by name: it has no alias)."""
    return any(m.name == REBIRTH and m.WhichOneof("value") == "boolean_value" and m.boolean_value
               for m in p.metrics)


def parse_state(payload: bytes) -> tuple[bool, int]:
    """A host's STATE message: ``{"online": bool, "timestamp": ms}`` (specification 3.0).

    Raises:
        SparkplugError: not that JSON object.
    """
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SparkplugError(f"STATE payload is not JSON: {payload[:60]!r}") from exc
    if not isinstance(obj, dict):
        raise SparkplugError(f"STATE payload is not a JSON object: {payload[:60]!r}")
    online, ts = obj.get("online"), obj.get("timestamp")
    if not isinstance(online, bool) or isinstance(ts, bool) or not isinstance(ts, int | float):
        raise SparkplugError(f"STATE payload needs a boolean 'online' and a numeric 'timestamp': {payload[:80]!r}")
    return online, int(ts)

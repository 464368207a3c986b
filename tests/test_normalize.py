"""Normalization: raw values → contract reading messages."""

from __future__ import annotations

from typing import Any

from fieldgate.drivers.sim.profile import SimProfile
from fieldgate.normalize import Normalizer
from fieldgate.schema import PointError, Quality, RawReading

from .support.contract import validate_reading


def profile(*points: dict[str, Any]) -> SimProfile:
    return SimProfile.model_validate({"schema_version": 1, "driver": "sim", "vendor": "v", "model": "m",
                                      "points": list(points)})


def norm(prof: SimProfile, values: dict[str, Any], ts: float = 1_763_800_000.25, synced: bool = True,
         **kw: Any) -> dict[str, Any] | None:
    msg = Normalizer("gw-1", "dev-1", prof, **kw).normalize(RawReading(values, ts=ts), synced)
    if msg is not None:
        validate_reading({"seq": 1, **msg})
    return msg


def test_scaling_offset_rounding_units_and_timestamp() -> None:
    p = profile({"name": "energy", "unit": "kWh", "scale": 0.01, "decimals": 2},
                {"name": "temp", "unit": "Cel", "scale": 0.1, "offset": -40},
                {"name": "on", "type": "bool"}, {"name": "fw", "type": "string"})
    msg = norm(p, {"energy": 123456, "temp": 653, "on": True, "fw": "1.2"})
    assert msg == {
        "schema": "fieldgate.reading/1", "gateway": "gw-1", "device": "dev-1", "ts": "2025-11-22T08:26:40.250Z",
        "metrics": {
            "energy": {"value": 1234.56, "quality": "good", "unit": "kWh"},
            "temp": {"value": 653 * 0.1 - 40, "quality": "good", "unit": "Cel"},
            "on": {"value": True, "quality": "good"},
            "fw": {"value": "1.2", "quality": "good"},
        },
    }


def test_out_of_range_point_errors_nan_and_driver_quality() -> None:
    p = profile({"name": "a", "range": [0, 10]}, {"name": "b", "unit": "V"}, {"name": "c"}, {"name": "d"})
    raw = RawReading({"a": 11, "b": PointError("exception:02"), "c": float("nan"), "d": 5},
                     ts=0.0, quality={"d": (Quality.UNCERTAIN, "sensor_warming_up")})
    msg = Normalizer("gw-1", "dev-1", p).normalize(raw)
    assert msg is not None
    validate_reading({"seq": 1, **msg})
    assert msg["metrics"] == {
        "a": {"value": 11.0, "quality": "bad", "reason": "out_of_range"},
        "b": {"value": None, "quality": "bad", "reason": "exception:02", "unit": "V"},
        "c": {"value": None, "quality": "bad", "reason": "decode_error"},
        "d": {"value": 5, "quality": "uncertain", "reason": "sensor_warming_up"},
    }


def test_clock_unsynced_is_flagged_and_meta_attached() -> None:
    p = profile({"name": "a"})
    msg = norm(p, {"a": 1}, synced=False, meta={"driver": "sim", "tags": {"site": "x"}})
    assert msg is not None and msg["clock"] == "unsynced" and msg["meta"] == {"driver": "sim", "tags": {"site": "x"}}
    assert "clock" not in (norm(p, {"a": 1}) or {})


def test_deadband_reports_changes_and_heartbeat() -> None:
    p = profile({"name": "t", "deadband": 0.5, "heartbeat": "60s"}, {"name": "n"})
    n = Normalizer("gw-1", "dev-1", p)

    def sent(v: float, ts: float) -> bool:
        msg = n.normalize(RawReading({"t": v}, ts=ts))
        return msg is not None and "t" in msg["metrics"]

    assert [sent(20.0, 0), sent(20.3, 10), sent(20.6, 20), sent(20.7, 30), sent(20.7, 81), sent(20.7, 90)] == \
        [True, False, True, False, True, False]
    # a point without deadband is always reported; a message with no metric left is not sent
    assert n.normalize(RawReading({"t": 20.7, "n": 1}, ts=91)) is not None
    assert n.normalize(RawReading({"t": 20.7}, ts=92)) is None

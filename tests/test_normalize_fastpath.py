"""The normalizer's fast path (issue 16) against the rules it skips: every kind of value, one message each."""

from __future__ import annotations

import enum
import math

from fieldgate.schema import PointError, Quality, RawReading

from .test_normalize import norm, profile


class _Code(enum.IntEnum):
    RUN = 3


class _MyError(PointError):
    pass


def test_each_kind_of_value_gets_the_same_treatment_as_before() -> None:
    p = profile({"name": "plain"}, {"name": "unit", "unit": "V"},
                {"name": "scaled", "scale": 0.5, "offset": 1, "decimals": 1},
                {"name": "ranged", "range": [0, 10]}, {"name": "nan"}, {"name": "inf"},
                {"name": "enum", "scale": 2}, {"name": "flag", "type": "bool"},
                {"name": "err", "unit": "A"}, {"name": "sub"}, {"name": "none"}, {"name": "odd"})
    msg = norm(p, {"plain": 7, "unit": 230.5, "scaled": 3, "ranged": 11, "nan": math.nan, "inf": -math.inf,
                   "enum": _Code.RUN, "flag": False, "err": PointError("timeout"), "sub": _MyError("x"),
                   "none": None, "odd": object()})
    assert msg is not None
    assert msg["metrics"] == {
        "plain": {"value": 7, "quality": "good"},
        "unit": {"value": 230.5, "quality": "good", "unit": "V"},
        "scaled": {"value": 2.5, "quality": "good"},
        "ranged": {"value": 11, "quality": "bad", "reason": "out_of_range"},
        "nan": {"value": None, "quality": "bad", "reason": "decode_error"},
        "inf": {"value": None, "quality": "bad", "reason": "decode_error"},
        "enum": {"value": 6.0, "quality": "good"},
        "flag": {"value": False, "quality": "good"},
        "err": {"value": None, "quality": "bad", "reason": "timeout", "unit": "A"},
        "sub": {"value": None, "quality": "bad", "reason": "x"},
        "none": {"value": None, "quality": "bad", "reason": "no_value"},
        "odd": {"value": None, "quality": "bad", "reason": "decode_error"},
    }
    assert type(msg["metrics"]["plain"]["value"]) is int  # an identity point keeps the driver's int


def test_an_override_and_a_deadband_still_apply_to_good_numbers() -> None:
    from fieldgate.normalize import Normalizer

    p = profile({"name": "t", "deadband": 1.0}, {"name": "u"})
    n = Normalizer("gw-1", "dev-1", p)
    first = n.normalize(RawReading({"t": 20.0, "u": 1}, ts=1.0, quality={"u": (Quality.UNCERTAIN, "sensor")}))
    assert first is not None
    assert first["metrics"]["u"] == {"value": 1, "quality": "uncertain", "reason": "sensor"}
    second = n.normalize(RawReading({"t": 20.5, "u": 2}, ts=2.0))
    assert second is not None and "t" not in second["metrics"]  # within the deadband
    assert second["metrics"]["u"] == {"value": 2, "quality": "good"}

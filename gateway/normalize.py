"""Normalization: raw driver values → the contract's reading message.

Scaling and offset, rounding, valid-range checks, per-point quality with a
reason, report-by-exception (deadband with a heartbeat), UTC millisecond
timestamps and the ``clock: unsynced`` flag. This runs for every value the
gateway handles, so each point's rules are compiled once into a small tuple
and the per-value work is a few comparisons.
"""

from __future__ import annotations

import math
from typing import Any

from .expr import Expression, parse
from .profile import BasePoint, BaseProfile, DerivedPoint
from .schema import READING_SCHEMA, PointError, Quality, RawReading, iso_ms

_GOOD = Quality.GOOD.value
_BAD = Quality.BAD.value


class _Derived:
    __slots__ = ("decimals", "expr", "hi", "lo", "name", "unit")

    def __init__(self, d: DerivedPoint) -> None:
        self.name = d.name
        self.unit = d.unit
        self.decimals = d.decimals
        self.lo, self.hi = (d.range[0], d.range[1]) if d.range else (-math.inf, math.inf)
        self.expr: Expression = parse(d.expr)  # checked against the profile's names when it loaded


class _Point:
    __slots__ = ("deadband", "decimals", "heartbeat", "hi", "identity", "lo", "name", "offset", "plain",
                 "scale", "unit")

    def __init__(self, p: BasePoint) -> None:
        self.name = p.name
        self.unit = p.unit
        self.scale = p.scale
        self.offset = p.offset
        self.identity = p.scale == 1.0 and p.offset == 0.0
        self.decimals = p.decimals
        self.lo, self.hi = (p.range[0], p.range[1]) if p.range else (-math.inf, math.inf)
        self.deadband = p.deadband
        self.heartbeat = p.heartbeat
        # a good value goes out as it is: no report-by-exception state to keep
        self.plain = p.deadband is None


class Normalizer:
    """Turns one device's raw readings into reading messages (without ``seq``).

    Args:
        gateway: gateway id.
        device: device id.
        profile: the device's profile.
        meta: static ``meta`` object (profile, driver, tags), or None.
    """

    def __init__(self, gateway: str, device: str, profile: BaseProfile, meta: dict[str, Any] | None = None) -> None:
        self.gateway = gateway
        self.device = device
        self.points = {p.name: _Point(p) for p in profile.points}
        self.derived = [_Derived(d) for d in profile.derived]
        self.meta = meta
        # report-by-exception state: name -> (last reported value, last report ts)
        self._last: dict[str, tuple[Any, float]] = {}

    def normalize(self, raw: RawReading, clock_synced: bool = True) -> dict[str, Any] | None:
        """Build the reading message for one raw reading.

        Returns:
            The message (a dict in contract key order, without ``seq``), or
            ``None`` when report-by-exception left no metric to send.
        """
        metrics: dict[str, dict[str, Any]] = {}
        points = self.points
        overrides = raw.quality
        ts = raw.ts
        # what derived points may read: name -> (value, quality, reason), before report-by-exception
        inputs: dict[str, tuple[Any, str, str | None]] | None = {} if self.derived else None
        for name, value in raw.values.items():
            pt = points.get(name)
            if pt is None:
                continue  # a driver reporting an unknown point is a driver bug; ignore the value
            t = type(value)
            # The common case first, tested by type identity: a number within its range, good, no
            # deadband, no override. Each step of this loop runs for every value the gateway reads.
            if t is int or t is float:
                if not pt.identity:
                    value = value * pt.scale + pt.offset
                if value - value != 0:  # NaN/inf are not JSON (an int's difference is 0)
                    value, quality, reason = None, _BAD, "decode_error"
                else:
                    if pt.decimals is not None:
                        value = round(value, pt.decimals)
                    if pt.lo <= value <= pt.hi:
                        if pt.plain and not overrides:
                            metrics[name] = {"value": value, "quality": _GOOD, "unit": pt.unit} if pt.unit \
                                else {"value": value, "quality": _GOOD}
                            if inputs is not None:  # a derived point may read it
                                inputs[name] = (value, _GOOD, None)
                            continue
                        quality, reason = _GOOD, None
                    else:
                        quality, reason = _BAD, "out_of_range"
            elif t is PointError:
                m: dict[str, Any] = {"value": None, "quality": value.quality.value, "reason": value.reason}
                if pt.unit:
                    m["unit"] = pt.unit
                metrics[name] = m
                self._last.pop(name, None)
                if inputs is not None:
                    inputs[name] = (None, _BAD, value.reason)
                continue
            elif isinstance(value, bool | str):
                quality, reason = _GOOD, None
            elif isinstance(value, PointError):  # a subclass (a driver's own)
                m = {"value": None, "quality": value.quality.value, "reason": value.reason}
                if pt.unit:
                    m["unit"] = pt.unit
                metrics[name] = m
                self._last.pop(name, None)
                continue
            elif isinstance(value, int | float):  # a subclass of int or float (numpy-like, IntEnum)
                if not pt.identity:
                    value = value * pt.scale + pt.offset
                quality, reason = _GOOD, None
                if value != value or value in (math.inf, -math.inf):
                    value, quality, reason = None, _BAD, "decode_error"
                else:
                    if pt.decimals is not None:
                        value = round(value, pt.decimals)
                    if value < pt.lo or value > pt.hi:
                        quality, reason = _BAD, "out_of_range"
            elif value is None:
                quality, reason = _BAD, "no_value"
            else:
                value, quality, reason = None, _BAD, "decode_error"
            if overrides and name in overrides and quality == _GOOD:
                q, reason = overrides[name]
                quality = q.value
            if inputs is not None:
                inputs[name] = (value, quality, reason)
            if pt.deadband is not None and quality == _GOOD and not self._changed(pt, value, ts):
                continue
            m = {"value": value, "quality": quality}
            if pt.unit:
                m["unit"] = pt.unit
            if reason:
                m["reason"] = reason
            metrics[name] = m
        if inputs is not None:
            self._derive(inputs, metrics)
        if not metrics:
            return None
        msg: dict[str, Any] = {
            "schema": READING_SCHEMA,
            "gateway": self.gateway,
            "device": self.device,
            "ts": iso_ms(ts),
            "metrics": metrics,
        }
        if not clock_synced:
            msg["clock"] = "unsynced"
        if self.meta:
            msg["meta"] = self.meta
        return msg

    def _derive(self, inputs: dict[str, tuple[Any, str, str | None]], metrics: dict[str, dict[str, Any]]) -> None:
        """Compute the derived points whose inputs are all in this reading (in profile order)."""
        for d in self.derived:
            used = [inputs.get(n) for n in d.expr.names]
            if any(u is None for u in used):
                continue  # an input not read this poll (every: N): nothing is made up
            worst = [u for u in used if u is not None and u[1] != _GOOD]
            value: Any = None
            quality, reason = _GOOD, None
            if any(u is not None and (u[1] == _BAD or isinstance(u[0], bool) or not isinstance(u[0], int | float))
                   for u in used):
                quality, reason = _BAD, "input_bad"  # bad, or not a number (a flag, a text)
            else:
                try:
                    value = d.expr.evaluate({n: inputs[n][0] for n in d.expr.names})
                except (ArithmeticError, ValueError):
                    value = math.nan
                if value != value or value in (math.inf, -math.inf):
                    value, quality, reason = None, _BAD, "math_error"
                else:
                    if d.decimals is not None:
                        value = round(value, d.decimals)
                    if value < d.lo or value > d.hi:
                        quality, reason = _BAD, "out_of_range"
                    elif worst:  # an uncertain input makes the result as uncertain, for its reason
                        quality, reason = worst[0][1], worst[0][2]
            m: dict[str, Any] = {"value": value, "quality": quality}
            if d.unit:
                m["unit"] = d.unit
            if reason:
                m["reason"] = reason
            metrics[d.name] = m
            inputs[d.name] = (value, quality, reason)

    def _changed(self, pt: _Point, value: Any, ts: float) -> bool:
        last = self._last.get(pt.name)
        if last is not None:
            prev, prev_ts = last
            moved = (
                abs(value - prev) > (pt.deadband or 0.0)
                if isinstance(value, int | float) and not isinstance(value, bool)
                and isinstance(prev, int | float)
                else value != prev
            )
            due = pt.heartbeat is not None and ts - prev_ts >= pt.heartbeat
            if not moved and not due:
                return False
        self._last[pt.name] = (value, ts)
        return True

"""Trends for the status page, in memory and bounded: no database server, no disk writes.

Kept per metric (device, point):

* the **hour**: the readings themselves (time, value), as many as fit the
  metric's share of ``web.history_max_bytes``, at most one per poll interval.
  With the default 5 MB and 1000 metrics that is ~140 readings per metric (one
  per 19 s); a gateway with 50 metrics keeps every reading of the hour.
  Readings beyond that rate are skipped, never averaged, so every point shown
  is a value that was published.
* the **day**: 96 buckets of 15 minutes with mean, min and max.

Kept for the gateway: buffer depth, publish rate and ack rate once per second
for an hour (the outage "hill"), and per device its state changes and the data
quality counts per minute for a day (completeness, bad and uncertain by reason,
clock-unsynced readings).

Memory is allocated when a series is created (fixed-size ``array`` rings), so
what :attr:`History.allocated` says is what is used; a series that would pass
the cap is not created and is counted in :attr:`History.refused`.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

HOUR = 3600.0
DAY_BUCKET = 900.0  # 15 minutes
DAY_BUCKETS = 96
MIN_HOUR_POINTS = 60
GATEWAY_POINTS = 3600  # buffer depth and rates: once a second for an hour
SLOT = 300.0  # quality counters: 5-minute slots for a day
SLOTS = 288
STATE_CHANGES = 48  # per device, for its timeline
# What one series costs beyond its rings: the object, three array headers, the dict entry and its key
_SERIES_OVERHEAD = 900
_DAY_BYTES = DAY_BUCKETS * (3 * 4 + 4)  # mean/min/max as float32, the bucket number as int32
_NAN = float("nan")
_ABSENT: Any = object()  # a metric not seen yet (None in History._of is one refused at the cap)
# What a device's quality counters and state timeline may cost, and the gateway's own series
DEVICE_BYTES = SLOTS * 4 + 4 * SLOTS * 2 + STATE_CHANGES * 90 + 500
GATEWAY_BYTES = 3 * (GATEWAY_POINTS * 16 + _DAY_BYTES + _SERIES_OVERHEAD)


def series_bytes(hour_points: int) -> int:
    """What a series with ``hour_points`` hour slots costs in memory (rings plus overhead)."""
    return hour_points * 16 + _DAY_BYTES + _SERIES_OVERHEAD


def _number(value: Any) -> float | None:
    """A chartable number: booleans as 0/1; strings and non-finite numbers are not charted."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        v = float(value)
        return v if math.isfinite(v) else None
    return None


def _json_num(v: float) -> float | None:
    return None if math.isnan(v) else v


class Series:
    """One metric: the hour's readings and the day's 15-minute buckets.

    Args:
        hour_points: slots in the hour ring.
        min_step: seconds between kept readings (the hour divided by the slots, or the poll interval).
    """

    __slots__ = ("_bucket", "_count", "_max", "_min", "_sum", "day", "day_idx", "hour", "hour_points", "last_t",
                 "min_step", "n", "unit", "write")

    def __init__(self, hour_points: int, min_step: float) -> None:
        self.hour_points = hour_points
        self.min_step = min_step
        self.hour = array("d", bytes(16 * hour_points))  # interleaved t (epoch s), v; NaN = no value
        self.write = 0
        self.n = 0
        self.last_t = -math.inf  # time of the newest hour slot (the rate limit's reference)
        self.day = array("f", bytes(12 * DAY_BUCKETS))  # mean, min, max per bucket
        self.day_idx = array("i", [-1]) * DAY_BUCKETS  # which 15-minute bucket of time a slot holds
        # the current 15-minute bucket, as plain attributes: this runs for every value the gateway reads
        self._bucket = -1
        self._sum = 0.0
        self._count = 0
        self._min = math.inf
        self._max = -math.inf
        self.unit: str | None = None

    def add(self, ts: float, value: float | None) -> bool:
        """Record a reading at ``ts`` (epoch seconds); False when skipped for the rate limit."""
        if value is not None:
            bucket = int(ts // DAY_BUCKET)
            if bucket != self._bucket:
                self._flush()
                self._bucket, self._sum, self._count, self._min, self._max = bucket, value, 1, value, value
            else:
                self._sum += value
                self._count += 1
                if value < self._min:
                    self._min = value
                elif value > self._max:
                    self._max = value
        if ts - self.last_t < self.min_step:
            return False
        i = 2 * self.write
        self.hour[i] = ts
        self.hour[i + 1] = _NAN if value is None else value
        self.last_t = ts
        self.write = (self.write + 1) % self.hour_points
        if self.n < self.hour_points:
            self.n += 1
        return True

    def _flush(self) -> None:
        if self._bucket < 0 or not self._count:
            return
        slot = self._bucket % DAY_BUCKETS
        self.day_idx[slot] = self._bucket
        self.day[3 * slot:3 * slot + 3] = array("f", [self._sum / self._count, self._min, self._max])

    def points(self, since: float) -> tuple[list[float], list[float | None]]:
        """The hour's readings at or after ``since``, oldest first: (times in epoch s, values)."""
        ts: list[float] = []
        vs: list[float | None] = []
        start = (self.write - self.n) % self.hour_points
        for k in range(self.n):
            i = 2 * ((start + k) % self.hour_points)
            t = self.hour[i]
            if t >= since:
                ts.append(t)
                vs.append(_json_num(self.hour[i + 1]))
        return ts, vs

    def buckets(self, since: float) -> dict[str, list[Any]]:
        """The day's 15-minute buckets from ``since`` on (the current one included), oldest first."""
        self._flush()
        first = int(since // DAY_BUCKET)
        rows = sorted((b, s) for s, b in enumerate(self.day_idx) if b >= first)
        out: dict[str, list[Any]] = {"t": [], "mean": [], "min": [], "max": []}
        for b, s in rows:
            out["t"].append(b * DAY_BUCKET)
            for k, name in enumerate(("mean", "min", "max")):
                out[name].append(round(float(self.day[3 * s + k]), 6))
        return out


class _Slots:
    """Quality counters of one device in 5-minute slots over a day: received, bad, uncertain, unsynced."""

    __slots__ = ("counts", "slot")

    KINDS = ("received", "bad", "uncertain", "unsynced")

    def __init__(self) -> None:
        self.slot = array("i", [-1]) * SLOTS
        self.counts = [array("H", bytes(2 * SLOTS)) for _ in self.KINDS]

    def add(self, ts: float, kind: int) -> None:
        n = int(ts // SLOT)
        i = n % SLOTS
        if self.slot[i] != n:
            self.slot[i] = n
            for c in self.counts:
                c[i] = 0
        c = self.counts[kind]
        c[i] = min(65535, c[i] + 1)

    def total(self, since: float, kind: int) -> int:
        first = int(since // SLOT)
        return sum(c for n, c in zip(self.slot, self.counts[kind], strict=True) if n >= first)


@dataclass(slots=True)
class DeviceQuality:
    """Data-quality counts of one device."""

    slots: _Slots
    reasons: Counter[str]
    first_ts: float
    last_seen: dict[str, float]
    states: deque[tuple[float, str]]
    last_error: str | None = None


class History:
    """Every trend the status page shows, within ``max_bytes``.

    Args:
        max_bytes: the memory cap for metric series (gateway series and quality counters are
            small and fixed: ~175 KB plus ~9 KB per device, and are counted in the cap too).
    """

    def __init__(self, max_bytes: int = 5_000_000) -> None:
        self.max_bytes = max_bytes
        self.series: dict[tuple[str, str], Series] = {}
        # the same series by device, then metric name; None: refused at the cap (asked once, not per reading)
        self._of: dict[str, dict[str, Series | None]] = {}
        self.allocated = GATEWAY_BYTES
        self.refused = 0
        self.quality: dict[str, DeviceQuality] = {}
        self.gateway = {k: Series(GATEWAY_POINTS, 0.5) for k in ("buffer_depth", "publish_rate", "ack_rate")}
        self._plan: dict[str, tuple[int, float]] = {}  # device -> (hour points per metric, min step)

    def plan(self, devices: Iterable[tuple[str, float, int]]) -> None:
        """Share the cap among the configured metrics: ``(device id, poll interval s, points)`` each.

        A metric keeps every reading of the hour when its share allows (at most one per poll
        interval), else as many as fit, evenly spaced; never fewer than ``MIN_HOUR_POINTS``.
        """
        devices = list(devices)
        total = sum(max(1, n) for _, _, n in devices) or 1
        share = max(0, self.max_bytes - GATEWAY_BYTES - DEVICE_BYTES * len(devices)) // total
        fit = max(MIN_HOUR_POINTS, (share - _DAY_BYTES - _SERIES_OVERHEAD) // 16)
        for dev, interval, _ in devices:
            want = math.ceil(HOUR / max(interval, 0.001))
            points = int(max(MIN_HOUR_POINTS, min(want, fit)))
            self._plan[dev] = (points, HOUR / points * 0.999 if points < want else 0.0)

    def _quality(self, device: str, ts: float) -> DeviceQuality:
        q = self.quality.get(device)
        if q is None:
            self.allocated += DEVICE_BYTES
            q = self.quality[device] = DeviceQuality(_Slots(), Counter(), ts, {}, deque(maxlen=STATE_CHANGES))
        return q

    def add_reading(self, device: str, message: dict[str, Any]) -> None:
        """Record a reading message as it goes to the output (the hot path: no allocation but new series).

        This runs for every value the gateway reads, whether or not anyone looks at the page, so the
        loop is written for speed: the device's series by name (no tuple key per metric), the value's
        type tested by identity, the common good-quality number with no further checks.
        """
        ts = _epoch(message.get("ts"))
        q = self._quality(device, ts)
        q.slots.add(ts, 0)
        if message.get("clock") == "unsynced":
            q.slots.add(ts, 3)
        bad = uncertain = False
        mine = self._of.get(device)
        if mine is None:
            mine = self._of[device] = {}
        last_seen = q.last_seen
        for name, m in (message.get("metrics") or {}).items():
            if type(m) is not dict:
                continue
            raw: Any = m.get("value")
            t = type(raw)
            if t is int:
                value: float | None = float(raw)
            elif t is float:
                if raw - raw != 0.0:
                    continue  # NaN and infinities are not charted
                value = raw
            elif raw is None:
                value = None
            else:
                value = _number(raw)
                if value is None:
                    continue  # a string: shown as the latest value, not charted
            quality = m.get("quality", "good")
            if quality != "good":
                bad |= quality == "bad"
                uncertain |= quality == "uncertain"
                if len(q.reasons) < 64 or m.get("reason") in q.reasons:
                    q.reasons[f"{quality}:{m.get('reason') or 'unknown'}"] += 1
                if quality == "bad":
                    value = None
            last_seen[name] = ts
            s = mine.get(name, _ABSENT)
            if s is _ABSENT:
                s = self._new_series(device, name)
                if s is not None:
                    s.unit = m.get("unit")
            if s is not None:  # None: refused at the cap, once (series are never freed, so it stays refused)
                s.add(ts, value)
        if bad:
            q.slots.add(ts, 1)
        elif uncertain:
            q.slots.add(ts, 2)

    def _new_series(self, device: str, name: str) -> Series | None:
        points, step = self._plan.get(device, (MIN_HOUR_POINTS, HOUR / MIN_HOUR_POINTS))
        cost = series_bytes(points)
        if self.allocated + cost > self.max_bytes:
            if points > MIN_HOUR_POINTS and self.allocated + series_bytes(MIN_HOUR_POINTS) <= self.max_bytes:
                points, step, cost = MIN_HOUR_POINTS, HOUR / MIN_HOUR_POINTS, series_bytes(MIN_HOUR_POINTS)
            else:
                self.refused += 1
                self._of.setdefault(device, {})[name] = None  # not offered again at every reading
                return None
        self.allocated += cost
        s = self.series[(device, name)] = self._of.setdefault(device, {})[name] = Series(points, step)
        return s

    def add_state(self, device: str, state: str, error: str | None, ts: float | None = None) -> None:
        """Record a device state change for its timeline."""
        ts = time.time() if ts is None else ts
        q = self._quality(device, ts)
        if not q.states or q.states[-1][1] != state:
            q.states.append((ts, state))
        # only the latest error is kept (what the timeline's last segment shows); older ones are in the events
        q.last_error = error[:200] if error and state != "online" else None

    def sample_gateway(self, ts: float, depth: int | None, publish_rate: float | None, ack_rate: float | None) -> None:
        """Once a second: buffer depth and uplink rates."""
        self.gateway["buffer_depth"].add(ts, None if depth is None else float(depth))
        self.gateway["publish_rate"].add(ts, publish_rate)
        self.gateway["ack_rate"].add(ts, ack_rate)

    # --- documents ---------------------------------------------------------------

    def metric_doc(self, device: str, name: str, since: float, now: float) -> dict[str, Any] | None:
        """One metric's history from ``since``: readings within the hour, 15-minute buckets beyond."""
        s = self.series.get((device, name))
        if s is None:
            return None
        ts, vs = s.points(max(since, now - HOUR))
        doc: dict[str, Any] = {"metric": name, "unit": s.unit, "hour_points": s.hour_points,
                               "min_step_s": round(s.min_step, 3),
                               "points": {"t": [round(t, 3) for t in ts], "v": vs}}
        if since < now - HOUR:
            doc["buckets"] = s.buckets(since)
        return doc

    def metrics_of(self, device: str) -> list[str]:
        """Names of the metrics of ``device`` that have a history."""
        return [n for d, n in self.series if d == device]

    def states_doc(self, device: str, since: float) -> list[dict[str, Any]]:
        """The device's state changes from ``since`` (and the state it was in then)."""
        q = self.quality.get(device)
        if q is None:
            return []
        rows = list(q.states)
        before = [r for r in rows if r[0] < since][-1:]
        rows = before + [r for r in rows if r[0] >= since]
        out: list[dict[str, Any]] = [{"t": round(t, 3), "state": st, "error": None} for t, st in rows]
        if out:
            out[-1]["error"] = q.last_error
        return out

    def gateway_doc(self, since: float) -> dict[str, Any]:
        """Buffer depth and uplink rates from ``since`` (at most an hour)."""
        out: dict[str, Any] = {}
        for name, s in self.gateway.items():
            ts, vs = s.points(since)
            out[name] = {"t": [round(t, 3) for t in ts], "v": vs}
        return out

    def quality_doc(self, device: str, poll_interval: float | None, points: list[str], now: float,
                    pushes: bool) -> dict[str, Any]:
        """Completeness and quality counts of one device over the last hour and day."""
        q = self.quality.get(device)
        doc: dict[str, Any] = {"device": device}
        for label, span in (("hour", HOUR), ("day", 86400.0)):
            since = (now - span) // SLOT * SLOT  # counted in whole 5-minute slots
            received = q.slots.total(since, 0) if q else 0
            expected = None
            if q is not None and poll_interval and not pushes:
                expected = max(1, int((now - max(since, q.first_ts)) / poll_interval) + 1)
            doc[label] = {
                "received": received, "expected": expected,
                "completeness": None if expected is None else round(min(1.0, received / expected), 4),
                "bad": q.slots.total(since, 1) if q else 0, "uncertain": q.slots.total(since, 2) if q else 0,
                "unsynced": q.slots.total(since, 3) if q else 0,
            }
        doc["reasons"] = dict(q.reasons.most_common(20)) if q else {}
        stale_after = 3 * (poll_interval or 60.0)
        seen = q.last_seen if q else {}
        doc["stale"] = sorted(p for p in points if now - seen.get(p, -math.inf) > stale_after)
        return doc

    def memory_doc(self) -> dict[str, Any]:
        """What the history holds and may hold."""
        return {"max_bytes": self.max_bytes, "allocated_bytes": self.allocated, "series": len(self.series),
                "refused_series": self.refused}


def _epoch(iso: Any) -> float:
    """RFC 3339 ``...Z`` → epoch seconds (now when absent or unreadable)."""
    if isinstance(iso, str):
        try:
            return datetime.fromisoformat(iso).timestamp()
        except ValueError:
            pass
    return time.time()


__all__ = ["History", "Series", "series_bytes"]

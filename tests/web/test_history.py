"""The status page's trends: bounded memory, what the rings keep, and the history API of a real gateway."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import math
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fieldgate.schema import iso_ms
from fieldgate.web import history as history_module
from fieldgate.web.history import (
    DAY_BUCKET,
    DEVICE_BYTES,
    GATEWAY_BYTES,
    HOUR,
    MIN_HOUR_POINTS,
    History,
    series_bytes,
)

from ..conftest import Proc
from ..support.broker import Mosquitto
from ..support.collector import Collector
from .conftest import GatewayProcess, process_yaml, start_gateway_process


def _reading(ts: float, **values: Any) -> dict[str, Any]:
    metrics = {k: ({"value": v, "quality": "good"} if not isinstance(v, dict) else v) for k, v in values.items()}
    return {"schema": "fieldgate.reading/1", "ts": iso_ms(ts), "metrics": metrics}


def test_default_cap_holds_1000_metrics_in_at_most_5_mb_measured() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        hist = History()
        hist.plan((f"d{i}", 1.0, 10) for i in range(100))  # 100 devices x 10 points, polled every second
        t0 = 1_800_000_000.0
        for k in range(400):  # more readings than the hour ring holds, so every ring wraps
            for i in range(100):
                hist.add_reading(f"d{i}", _reading(t0 + k * 20.0, **{f"p{j}": float(k + j) for j in range(10)}))
        gc.collect()
        # what the lines of history.py hold (other threads of the test run allocate meanwhile)
        used = sum(t.size for t in tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, history_module.__file__)]).traces)
    finally:
        tracemalloc.stop()
    assert len(hist.series) == 1000 and hist.refused == 0
    assert hist.allocated <= hist.max_bytes == 5_000_000
    assert used <= 5_000_000, f"{used} bytes for 1000 metrics"
    print(f"history: 1000 metrics use {used} bytes measured ({hist.allocated} accounted), "
          f"{hist.series['d0', 'p0'].hour_points} readings per metric in the hour")


def test_a_small_gateway_keeps_every_reading_of_the_hour() -> None:
    hist = History()
    hist.plan([("m", 1.0, 3)])
    t0 = 1_800_000_000.0
    for k in range(3600):
        hist.add_reading("m", _reading(t0 + k, v=float(k)))
    doc = hist.metric_doc("m", "v", t0 - 10, t0 + 3599)
    assert doc is not None and doc["points"]["v"] == [float(k) for k in range(3600)]  # the hour: all of it
    assert doc["points"]["t"][0] == t0


def test_more_readings_than_slots_are_spaced_out_and_are_real_readings() -> None:
    hist = History(max_bytes=GATEWAY_BYTES + DEVICE_BYTES + series_bytes(MIN_HOUR_POINTS) * 2)
    hist.plan([("m", 0.1, 2)])
    t0 = 1_800_000_000.0
    for k in range(36000):
        hist.add_reading("m", _reading(t0 + k * 0.1, v=float(k)))
    doc = hist.metric_doc("m", "v", t0, t0 + 3600)
    assert doc is not None
    ts, vs = doc["points"]["t"], doc["points"]["v"]
    assert MIN_HOUR_POINTS - 2 <= len(ts) <= MIN_HOUR_POINTS
    assert all(b - a >= HOUR / MIN_HOUR_POINTS * 0.99 for a, b in itertools.pairwise(ts))
    assert all(v == round((t - t0) / 0.1) for t, v in zip(ts, vs, strict=True))  # each point is a published value


def test_a_series_beyond_the_cap_is_refused_and_counted() -> None:
    hist = History(max_bytes=GATEWAY_BYTES + DEVICE_BYTES + series_bytes(MIN_HOUR_POINTS) * 2)
    hist.plan([("m", 60.0, 3)])
    hist.add_reading("m", _reading(1_800_000_000.0, a=1.0, b=2.0, c=3.0))
    assert len(hist.series) == 2 and hist.refused == 1 and hist.allocated <= hist.max_bytes
    assert hist.memory_doc() == {"max_bytes": hist.max_bytes, "allocated_bytes": hist.allocated, "series": 2,
                                 "refused_series": 1}


def test_the_day_keeps_mean_min_max_per_15_minutes_and_bad_values_are_gaps() -> None:
    hist = History()
    hist.plan([("m", 60.0, 1)])
    t0 = 1_800_000_000.0 // DAY_BUCKET * DAY_BUCKET
    for k in range(30):  # two buckets of 15 readings
        hist.add_reading("m", _reading(t0 + k * 60, v=float(k)))
    hist.add_reading("m", _reading(t0 + 1900, v={"value": None, "quality": "bad", "reason": "timeout"}))
    doc = hist.metric_doc("m", "v", t0 - 86000, t0 + 2000)
    assert doc is not None
    assert doc["buckets"] == {"t": [t0, t0 + DAY_BUCKET], "mean": [7.0, 22.0], "min": [0.0, 15.0],
                              "max": [14.0, 29.0]}  # the bad reading is in no bucket
    assert doc["points"]["v"][-1] is None  # the bad reading is a gap, not a zero
    q = hist.quality_doc("m", 60.0, ["v", "w"], t0 + 1900, pushes=False)
    assert q["hour"]["received"] == 31 and q["hour"]["bad"] == 1 and q["reasons"] == {"bad:timeout": 1}
    assert q["stale"] == ["w"]  # never seen
    assert q["hour"]["expected"] == 32 and q["hour"]["completeness"] == round(31 / 32, 4)  # 1800 s and 1860 s missed


def test_strings_are_not_charted_and_booleans_are() -> None:
    hist = History()
    hist.add_reading("m", _reading(1_800_000_000.0, state="run", on=True, x=math.inf))
    assert set(hist.metrics_of("m")) == {"on"}  # a string or an infinity has no point on a chart
    doc = hist.metric_doc("m", "on", 1_799_999_000.0, 1_800_000_001.0)
    assert doc is not None and doc["points"]["v"] == [1.0]


# --- the real gateway ------------------------------------------------------------------------------


def _get(gp: GatewayProcess, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(gp.url + path, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_history_api_values_are_the_published_readings(
        tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]) -> None:
    with Collector.for_broker(mosquitto) as col:
        gp = await asyncio.to_thread(start_gateway_process, fieldgate_proc, tmp_path,
                                     process_yaml(tmp_path, mqtt_port=mosquitto.port))
        await asyncio.to_thread(col.wait_readings, 20, 30)
        status, doc = await asyncio.to_thread(_get, gp, "/api/v1/devices/meter-1/history?metric=voltage&since=600")
        assert status == 200, doc
        (m,) = doc["metrics"]
        assert m["metric"] == "voltage" and m["unit"] == "V" and len(m["points"]["t"]) >= 5
        pts = list(zip(m["points"]["t"], m["points"]["v"], strict=True))
        await asyncio.to_thread(col.wait_readings, len(col.readings()) + 10, 30)  # the newest points are out too
        published = {r["ts"]: r["metrics"]["voltage"]["value"] for r in col.readings() if r["device"] == "meter-1"}
        for t, v in pts:
            assert published.get(iso_ms(t)) == v, (iso_ms(t), v)
        # the other documents, and the errors a client can make
        status, hist = await asyncio.to_thread(_get, gp, "/api/v1/history?since=600")
        assert status == 200 and hist["memory"]["series"] >= 2 and hist["gateway"]["buffer_depth"]["t"]
        assert hist["states"]["meter-1"][-1]["state"] == "online"
        status, q = await asyncio.to_thread(_get, gp, "/api/v1/quality")
        assert status == 200 and {d["device"] for d in q["devices"]} == {"meter-1", "air-1"}
        for path, code in [("/api/v1/devices/meter-1/history?metric=nope", 404),
                           ("/api/v1/devices/nope/history", 404),
                           ("/api/v1/devices/meter-1/history?since=0", 400),
                           ("/api/v1/devices/meter-1/history?since=nan", 400),
                           ("/api/v1/devices/meter-1/history?since=yesterday", 400),
                           ("/api/v1/history?since=1e9", 400)]:
            status, err = await asyncio.to_thread(_get, gp, path)
            assert status == code and err["message"], (path, status, err)
        assert "Traceback" not in gp.lines()


def test_every_kind_of_value_lands_as_before_on_the_fast_path() -> None:
    """Ints and floats are charted, bools as 0/1, bad values as gaps, NaN and strings not at all; the day's
    buckets hold mean/min/max of every reading, the hour ring one reading per min_step (issue 16's fast path)."""
    hist = History()
    hist.plan([("m", 60.0, 6)])
    t0 = 1_800_000_000.0 // DAY_BUCKET * DAY_BUCKET
    for k, v in enumerate([3, 1.5, 7, -2.0]):
        bad = {"value": None, "quality": "bad", "reason": "timeout"}
        hist.add_reading("m", _reading(t0 + k * 60.0, i=v, b=bool(k % 2), s="text", n=math.nan, x=bad))
    hist.add_reading("m", _reading(t0 + DAY_BUCKET, i=10))  # the next 15-minute bucket
    s = hist.series["m", "i"]
    assert s.points(0.0) == ([t0 + k * 60.0 for k in range(4)] + [t0 + DAY_BUCKET], [3.0, 1.5, 7.0, -2.0, 10.0])
    assert s.buckets(0.0) == {"t": [t0, t0 + DAY_BUCKET], "mean": [2.375, 10.0], "min": [-2.0, 10.0],
                              "max": [7.0, 10.0]}
    assert hist.series["m", "b"].points(0.0)[1] == [0.0, 1.0, 0.0, 1.0]
    assert hist.series["m", "x"].points(0.0)[1] == [None] * 4
    assert ("m", "s") not in hist.series and ("m", "n") not in hist.series
    assert hist.quality["m"].reasons == {"bad:timeout": 4}

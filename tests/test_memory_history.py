"""The page's history at its cap: a metric that did not fit is refused once, not at every reading.

At issue 16's scenario C (100 devices x 100 points every 100 ms) the default 5 MB holds ~1,400
series; the other ~8,600 metrics were offered a series again at every reading (86,000 times a
second, on the hot path), and ``refused_series`` on the API counted the attempts, not the series.
"""

from __future__ import annotations

from typing import Any

from fieldgate.schema import iso_ms
from fieldgate.web.history import MIN_HOUR_POINTS, History, series_bytes


def _reading(ts: float, n: int) -> dict[str, Any]:
    return {"ts": iso_ms(ts), "metrics": {f"p{j}": {"value": float(j), "quality": "good"} for j in range(n)}}


def test_a_metric_refused_at_the_cap_is_refused_once_and_counted_once() -> None:
    room = 5  # series that fit beside the gateway's and the device's own
    probe = History()
    cap = probe.allocated + 9_000 + room * series_bytes(MIN_HOUR_POINTS)  # 9,000 > one device's counters
    hist = History(cap)
    hist.plan([("d", 1.0, 20)])
    for k in range(50):
        hist.add_reading("d", _reading(1_800_000_000.0 + 60.0 * k, 20))  # one per hour slot
    assert len(hist.series) == room
    assert hist.refused == 20 - room, f"refused_series counts attempts: {hist.refused}"
    assert hist.memory_doc()["refused_series"] == 20 - room
    assert hist.allocated <= cap
    assert len(hist.series["d", "p0"].points(0)[0]) == 50  # the series that fit keep every reading

"""The status page's view of the gateway: JSON documents built from its live state.

:class:`StateHub` looks at the gateway once a second (the gateway keeps its
state in plain objects and has no change notifications; reading a few
counters per second costs nothing next to polling devices), turns it into the
documents the API serves, measures CPU use and the publish rate, samples
the buffer depth and uplink rates into the history, and hands each new
document to the live-update streams. With no stream subscribed no document is
built: a tick is then a few counter reads (see bench/web.py for the figures).
Everything here is read-only towards the gateway.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import os
import time
from collections import deque
from typing import Any

from .. import __version__
from ..app import DescribedOutput, Gateway, NamedOutput
from ..schema import iso_ms
from ..tasks import cancel_and_wait
from .history import History
from .logring import EventLog, Redactor

log = logging.getLogger(__name__)

_STATES = ("online", "degraded", "offline")


def _read_meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and key in ("MemTotal", "MemAvailable"):
                    out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class SystemSampler:
    """CPU share of this process and memory of the process and the machine (Linux /proc)."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None
        self.cpu_percent: float | None = None

    def sample(self) -> None:
        """Update the CPU share since the previous call."""
        t = os.times()
        now = (time.monotonic(), t.user + t.system)
        if self._last is not None and now[0] > self._last[0]:
            self.cpu_percent = round(100.0 * (now[1] - self._last[1]) / (now[0] - self._last[0]), 1)
        self._last = now

    def snapshot(self) -> dict[str, Any]:
        """CPU and memory figures; ``None`` where the platform does not say."""
        t = os.times()
        mem = _read_meminfo()
        try:
            load1: float | None = round(os.getloadavg()[0], 2)
        except OSError:
            load1 = None
        return {
            "cpu_percent": self.cpu_percent, "cpu_seconds": round(t.user + t.system, 3),
            "cpu_count": os.cpu_count(), "load1": load1, "rss_bytes": _rss_bytes(),
            "mem_total_bytes": mem.get("MemTotal"), "mem_available_bytes": mem.get("MemAvailable"),
        }


class RateMeter:
    """Messages per second of a growing counter over a sliding window."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, count: int) -> float | None:
        """Record ``count`` at ``now``; returns the rate over the window (None until two samples)."""
        if self.samples and count < self.samples[-1][1]:
            self.samples.clear()  # the counter restarted (new uplink object)
        self.samples.append((now, count))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return None if t1 <= t0 else round((c1 - c0) / (t1 - t0), 2)


def output_kind(output: object) -> str:
    """What the output says it is (``mqtt``, ``stdout``, ``memory``); a third-party one without a ``kind``
    is called by its class name."""
    return output.kind if isinstance(output, NamedOutput) else type(output).__name__.lower()


def _output_snapshot(output: object) -> dict[str, Any] | None:
    """The output's connection and buffer figures (the buffered uplink's ``snapshot()``), or None."""
    return output.snapshot() if isinstance(output, DescribedOutput) else None


class StateHub:
    """Builds the API documents and feeds the live streams.

    Args:
        gateway: the running :class:`fieldgate.app.Gateway`.
        output: the gateway's output (a ``BufferedUplink``, ``StdoutOutput`` or ``MemoryOutput``).
        events: where device state changes and output events are recorded.
        redact: applied to every free-text field that leaves the process.
        interval: seconds between looks at the gateway.
    """

    def __init__(self, gateway: Gateway, output: object, events: EventLog, redact: Redactor,
                 interval: float = 1.0, history: History | None = None) -> None:
        self.gateway = gateway
        self.output = output
        self.events = events
        self.redact = redact
        self.interval = interval
        self.system = SystemSampler()
        self.publish_rate = RateMeter()
        self.rate: float | None = None
        self.history = history if history is not None else History()
        self.states_tapped = False  # the output's device_status is tapped: state changes arrive from there
        self._planned: object = None
        self._counts: tuple[float, int, int] | None = None
        self._states: dict[str, str] = {}
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.ticks = 0
        self._ack_rate: float | None = None
        # when the uplink's state last changed, as this page saw it (to a tick): the uplink keeps only
        # connected_since, and an operator needs "disconnected since" just as much
        self._uplink_state: str | None = None
        self._uplink_since: float | None = None

    # --- documents -----------------------------------------------------------

    def _specs(self) -> list[Any]:
        return list(self.gateway.loaded.devices)

    def device(self, dev_id: str, *, detail: bool = False, spec: Any = None) -> dict[str, Any] | None:
        """One device's document, or None when no such device is configured.

        Args:
            dev_id: the device.
            detail: add the driver's status, the config and the profile.
            spec: its configured spec when the caller looked it up already (``devices``: one map, not a
                scan of every spec per device).
        """
        if spec is None:
            spec = next((s for s in self._specs() if s.config.id == dev_id), None)
        runner = self.gateway.device_snapshot(dev_id)
        if spec is None and runner is not None:
            spec = runner.spec
        if spec is None:
            return None
        cfg = spec.config
        doc: dict[str, Any] = {
            "id": cfg.id, "driver": spec.driver.name, "profile": spec.profile_source,
            "enabled": cfg.enabled, "poll_interval_s": cfg.poll_interval, "tags": dict(cfg.tags),
        }
        if runner is None:
            doc.update(state="disabled" if not cfg.enabled else "starting", last_error=None, last_error_ts=None,
                       last_reading=None, polls=0, failures=0, consecutive_failures=0, overruns=0,
                       latency_ms=None, avg_latency_ms=None, metrics={})
        else:
            s = runner
            ok = s.polls - s.failures
            doc.update(
                state=s.state,
                last_error=self.redact(s.last_error) if s.last_error else None,
                last_error_ts=iso_ms(s.last_error_ts) if s.last_error_ts else None,
                last_reading=iso_ms(s.last_reading_ts) if s.last_reading_ts else None,
                polls=s.polls, failures=s.failures, consecutive_failures=s.consecutive_failures,
                overruns=s.overruns,
                latency_ms=round(s.last_latency_s * 1000, 1) if s.last_latency_s is not None else None,
                avg_latency_ms=round(s.latency_sum_s / ok * 1000, 1) if ok > 0 else None,
                # values kept from before the device went offline are shown, but marked stale
                metrics={name: self._metric(m, stale=s.state == "offline") for name, m in s.latest.items()},
            )
        if detail:
            report = self.gateway.driver_status(dev_id) if runner is not None else None
            # what the driver reports about itself (counters, adapter or endpoint state); strings redacted
            doc["driver_status"] = self._redact_doc(report) if report is not None else None
            profile = spec.profile
            doc["config"] = {
                "timeout_s": cfg.poll_timeout, "offline_after": cfg.offline_after,
                "backoff_max_s": cfg.backoff_max, "bus": spec.bus,
            }
            doc["profile_info"] = {
                "vendor": profile.vendor, "model": profile.model, "description": profile.description,
                "points": [{"name": p.name, "unit": p.unit, "range": list(p.range) if p.range else None}
                           for p in profile.points],
            }
        return doc

    def _redact_doc(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._redact_doc(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._redact_doc(v) for v in value]
        return self.redact(value) if isinstance(value, str) else value

    def _metric(self, m: Any, stale: bool = False) -> dict[str, Any]:
        if not isinstance(m, dict):
            return {"value": None, "quality": "bad", "reason": "unknown", "stale": stale}
        out: dict[str, Any] = {"value": m.get("value"), "quality": m.get("quality", "good"), "stale": stale}
        if m.get("unit"):
            out["unit"] = m["unit"]
        if m.get("reason"):
            out["reason"] = m["reason"]
        return out

    def devices(self) -> list[dict[str, Any]]:
        """Every configured device (and any still running from before a reload)."""
        specs: dict[str, Any] = {}
        for spec in self._specs():
            specs.setdefault(spec.config.id, spec)
        ids = list(specs) + [i for i in self.gateway.device_snapshots() if i not in specs]
        return [d for d in (self.device(i, spec=specs.get(i)) for i in ids) if d is not None]

    def uplink(self) -> dict[str, Any]:
        """The uplink document (a stand-in when the output has no uplink)."""
        kind = output_kind(self.output)
        snap = _output_snapshot(self.output)
        if snap is None:
            return {"kind": kind, "state": "none", "broker": None, "last_error": None, "connected_since": None,
                    "state_since": None,
                    "published": 0, "acked": 0, "resent": 0, "connects": 0, "inflight": 0, "pending": 0,
                    "publish_rate": None, "ack_rate": None}
        u = dict(snap)
        u.pop("buffer", None)
        u["kind"] = kind
        u["ack_rate"] = self._ack_rate if u.get("state") == "connected" else None
        u["last_error"] = self.redact(u["last_error"]) if u.get("last_error") else None
        since = u.get("connected_since") if u.get("state") == "connected" else None
        u["state_since"] = since or (iso_ms(self._uplink_since) if self._uplink_since else None)
        # a rate from before the outage would say data is getting out while it is not
        u["publish_rate"] = self.rate if u.get("state") == "connected" else None
        return u

    def buffer(self) -> dict[str, Any] | None:
        """The durable buffer's figures, or None without one."""
        snap = _output_snapshot(self.output)
        b = snap.get("buffer") if snap is not None else None
        if not b:
            return None
        out = dict(b)
        oldest = out.get("oldest_ts")
        out["oldest_age_s"] = None
        if oldest:
            ts = calendar.timegm(time.strptime(oldest[:19], "%Y-%m-%dT%H:%M:%S"))
            out["oldest_age_s"] = round(max(0.0, time.time() - ts), 1)
        return out

    def status(self, devices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The overview document (``devices``: their documents, when the caller built them already)."""
        gw = self.gateway
        if devices is None:
            devices = self.devices()
        counts = {k: 0 for k in (*_STATES, "other")}
        for d in devices:
            counts[d["state"] if d["state"] in _STATES else "other"] += 1
        now = time.time()
        return {
            "gateway": gw.gateway_id, "version": __version__, "started": iso_ms(gw.started),
            "uptime_s": round(now - gw.started, 1), "now": iso_ms(now),
            "clock": {"synced": bool(gw.clock.synced), "check": gw.clock.mode},
            "devices": {"total": len(devices), **counts},
            "uplink": self.uplink(), "buffer": self.buffer(), "system": self.system.snapshot(),
        }

    def live(self) -> dict[str, Any]:
        """What a live stream sends each second: the overview and every device."""
        devices = self.devices()  # once: the overview counts the same documents the stream sends
        return {"status": self.status(devices), "devices": devices}

    # --- the loop ------------------------------------------------------------

    def tick(self) -> dict[str, Any] | None:
        """Look at the gateway once: sample the trends; the live document only if someone watches."""
        self.ticks += 1
        self.system.sample()
        if self._planned is not self.gateway.loaded:
            self._planned = self.gateway.loaded
            self.history.plan(self._plan())
        self._sample()
        if not self.states_tapped:
            self._watch_states()
        if not self._subscribers:
            return None  # nobody is watching: no document is built
        return self.live()

    def _plan(self) -> list[tuple[str, float, int]]:
        out = []
        for spec in self._specs():
            interval = spec.config.poll_interval or 1.0
            out.append((spec.config.id, float(interval), len(spec.profile.points)))
        return out

    def _sample(self) -> None:
        """Buffer depth and uplink rates into the history (once per tick)."""
        s = _output_snapshot(self.output)
        if s is None:
            return
        mono, now = time.monotonic(), time.time()
        published, acked = int(s.get("published", 0)), int(s.get("acked", 0))
        self.rate = self.publish_rate.add(mono, published)
        rate = ack = None
        if self._counts is not None and mono > self._counts[0]:
            dt = mono - self._counts[0]
            rate = max(0.0, round((published - self._counts[1]) / dt, 2))
            ack = max(0.0, round((acked - self._counts[2]) / dt, 2))
        self._counts = (mono, published, acked)
        state = str(s.get("state"))
        if state != self._uplink_state:
            # the first look: the state has held since the gateway started, as far as anyone knows
            self._uplink_since = now if self._uplink_state is not None else float(self.gateway.started)
            self._uplink_state = state
        self._ack_rate = ack
        b = s.get("buffer") or {}
        self.history.sample_gateway(now, b.get("depth"), rate, ack)

    def device_status(self, device: str, state: str, error: str | None) -> None:
        """A device changed state (from the tapped output): record the event and the timeline."""
        self.states_tapped = True
        before = self._states.get(device)
        self._states[device] = state
        self.history.add_state(device, state, error)
        if before is not None and before != state:
            self.events.add("device_state", device=device, state=state, previous=before,
                            error=self.redact(error) if error and state != "online" else None)

    def _watch_states(self) -> None:
        """Without a tapped output: notice state changes by looking at each runner."""
        for dev_id, s in self.gateway.device_snapshots().items():
            before = self._states.get(dev_id)
            if before != s.state:
                self.history.add_state(dev_id, s.state, s.last_error)
                if before is not None:
                    self.events.add("device_state", device=dev_id, state=s.state, previous=before,
                                    error=self.redact(s.last_error) if s.last_error and s.state != "online" else None)
                self._states[dev_id] = s.state

    async def _run(self) -> None:
        while True:
            try:
                doc = self.tick()
            except Exception:  # a bug here must not take the gateway down; it shows in the log
                log.exception("status page: building the status failed")
            else:
                if doc is not None:
                    for q in list(self._subscribers):
                        _offer(q, doc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Start looking at the gateway (call from the event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="web-state")

    async def close(self) -> None:
        """Stop the loop and end every live stream."""
        self._closed = True
        for q in list(self._subscribers):
            _offer(q, None)
        if self._task is not None:
            await cancel_and_wait(self._task)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue receiving each new live document; ``None`` means the server is closing."""
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=4)
        if self._closed:
            q.put_nowait(None)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        """Stop feeding ``q``."""
        self._subscribers.discard(q)


def _offer(q: asyncio.Queue[dict[str, Any] | None], item: dict[str, Any] | None) -> None:
    """Put without blocking; a slow reader loses the oldest update, not the newest."""
    while True:
        try:
            q.put_nowait(item)
            return
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()

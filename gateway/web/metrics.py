"""Prometheus text exposition (format 0.0.4) of the gateway's state, written by hand.

Written by hand rather than with ``prometheus_client``: the figures already
live in the gateway's own objects, the format is a few lines of text, and a
Pi-class gateway gains nothing from a second metrics registry. Counters end
in ``_total``; device states and the uplink state are "state sets" (one
series per state, 1 for the current one) so a dashboard can colour them.
"""

from __future__ import annotations

from typing import Any

from .state import StateHub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_UPLINK_STATES = ("connected", "connecting", "disconnected", "none")
_DEVICE_STATES = ("online", "degraded", "offline", "starting", "disabled")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, str], float | bool | None]], suffix: str = "") -> None:
        present = [(labels, v) for labels, v in samples if v is not None]
        if not present:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, v in present:
            assert v is not None
            self.lines.append(f"{name}{suffix}{_labels(labels)} {_num(v)}")

    def summary(self, name: str, help_text: str, samples: list[tuple[dict[str, str], float, int]]) -> None:
        if not samples:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} summary")
        for labels, total, count in samples:
            self.lines.append(f"{name}_sum{_labels(labels)} {_num(float(total))}")
            self.lines.append(f"{name}_count{_labels(labels)} {count}")


def render_metrics(hub: StateHub) -> str:
    """The whole exposition for one scrape."""
    w = _Writer()
    gw = hub.gateway
    status = hub.status()
    w.family("fieldgate_info", "gauge", "Gateway identity; always 1.",
             [({"gateway": status["gateway"], "version": status["version"]}, 1)])
    w.family("fieldgate_uptime_seconds", "gauge", "Seconds since the gateway started.", [({}, status["uptime_s"])])
    w.family("fieldgate_clock_synced", "gauge", "1 when the system clock is known to be synchronized.",
             [({}, status["clock"]["synced"])])

    devices = hub.devices()
    dl = [({"device": d["id"]}, d) for d in devices]
    w.family("fieldgate_device_state", "gauge", "Device state: 1 for the current state, 0 for the others.",
             [({"device": d["id"], "state": s}, d["state"] == s) for d in devices for s in _DEVICE_STATES])
    w.family("fieldgate_device_polls_total", "counter", "Polls attempted, failed ones included.",
             [(lbl, d["polls"]) for lbl, d in dl])
    w.family("fieldgate_device_poll_errors_total", "counter", "Polls that failed (timeout, error, unreachable).",
             [(lbl, d["failures"]) for lbl, d in dl])
    w.family("fieldgate_device_poll_overruns_total", "counter", "Poll slots skipped because a poll ran late.",
             [(lbl, d["overruns"]) for lbl, d in dl])
    w.family("fieldgate_device_consecutive_failures", "gauge", "Failed polls in a row.",
             [(lbl, d["consecutive_failures"]) for lbl, d in dl])
    w.family("fieldgate_device_last_poll_duration_seconds", "gauge", "Duration of the last successful poll.",
             [(lbl, None if d["latency_ms"] is None else d["latency_ms"] / 1000) for lbl, d in dl])
    summaries: list[tuple[dict[str, str], float, int]] = []
    last_reading: list[tuple[dict[str, str], float | bool | None]] = []
    for lbl, d in dl:
        s = gw.device_snapshot(d["id"])
        if s is not None:
            summaries.append((lbl, s.latency_sum_s, s.polls - s.failures))
            last_reading.append((lbl, s.last_reading_ts))
    w.summary("fieldgate_device_poll_duration_seconds", "Duration of successful polls.", summaries)
    w.family("fieldgate_device_last_reading_timestamp_seconds", "gauge", "Unix time of the last reading.",
             last_reading)

    u = status["uplink"]
    w.family("fieldgate_uplink_state", "gauge", "Uplink state: 1 for the current state.",
             [({"state": s}, u["state"] == s) for s in _UPLINK_STATES])
    w.family("fieldgate_uplink_connected", "gauge", "1 while connected to the broker.",
             [({}, u["state"] == "connected")])
    for key, help_text in (("published", "Messages published (QoS 1)."),
                           ("acked", "Readings acknowledged by the broker (PUBACK)."),
                           ("resent", "Messages sent again after a reconnect."),
                           ("connects", "Successful connections to the broker.")):
        w.family(f"fieldgate_uplink_{key}_total", "counter", help_text, [({}, u.get(key))])
    w.family("fieldgate_uplink_inflight", "gauge", "Messages awaiting PUBACK.", [({}, u.get("inflight"))])
    w.family("fieldgate_uplink_publish_rate", "gauge", "Messages published per second over the last minute.",
             [({}, u.get("publish_rate"))])

    b: dict[str, Any] | None = status["buffer"]
    if b is not None:
        w.family("fieldgate_buffer_depth", "gauge", "Readings in the buffer awaiting PUBACK.", [({}, b["depth"])])
        w.family("fieldgate_buffer_bytes", "gauge", "Bytes the buffer uses on disk.", [({}, b["bytes"])])
        w.family("fieldgate_buffer_dropped_total", "counter", "Readings dropped by the buffer limits.",
                 [({}, b["dropped"])])
        w.family("fieldgate_buffer_oldest_age_seconds", "gauge", "Age of the oldest buffered reading.",
                 [({}, b.get("oldest_age_s"))])
        w.family("fieldgate_buffer_last_seq", "gauge", "Highest seq assigned.", [({}, b["last_seq"])])
        w.family("fieldgate_buffer_disk_full", "gauge", "1 while the disk is full.", [({}, bool(b["disk_full"]))])
        w.family("fieldgate_buffer_spill_lost_total", "counter",
                 "Readings lost from the in-memory spill while the disk was full.", [({}, b.get("spill_lost"))])
        w.family("fieldgate_buffer_kept", "gauge", "Acknowledged readings kept for buffer.keep_acked.",
                 [({}, b.get("kept"))])

    sysinfo = status["system"]
    w.family("fieldgate_process_cpu_seconds_total", "counter", "CPU time of the gateway process.",
             [({}, sysinfo["cpu_seconds"])])
    w.family("fieldgate_process_resident_memory_bytes", "gauge", "Resident memory of the gateway process.",
             [({}, sysinfo["rss_bytes"])])
    w.family("fieldgate_system_memory_available_bytes", "gauge", "Memory available on the machine.",
             [({}, sysinfo["mem_available_bytes"])])
    return "\n".join(w.lines) + "\n"

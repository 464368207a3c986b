"""A host stall, made on purpose: the real gateway process, frozen with SIGSTOP for a moment, again and again.

Used by ``test_stall.py`` (assertions) and ``bench/stall.py`` (figures). The
gateway runs as ``fieldgate run`` against a real mosquitto; each device is
a pymodbus server of its own (hw-sim) on a free port, served from a thread
of this process so that freezing the gateway does not freeze the devices:
they answer on time, as real ones would, and only the gateway is late. A
persistent QoS 1 subscriber counts every reading and device status.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fieldgate_hwsim.modbus_sim import ModbusSim, load_modbus_profile

from tests.support.broker import Mosquitto
from tests.support.collector import Collector

PROFILE = "eastron/sdm120"
GW = "gw-stall"


@dataclass
class Figures:
    """What the stalls cost, summed over the devices."""

    devices: int
    interval: float
    stalls: int
    stall_s: float
    window_s: float = 0.0
    expected: int = 0
    delivered: int = 0
    degraded: int = 0  # status messages other than online
    timeouts_logged: int = 0
    per_device: dict[str, int] = field(default_factory=dict)
    stall_lengths: list[float] = field(default_factory=list)  # as made: a busy machine stretches them
    # The same length of time just before, with no stall: what this machine's load alone costs.
    control_expected: int = 0
    control_delivered: int = 0

    @property
    def control_lost(self) -> int:
        return max(0, self.control_expected - self.control_delivered)

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.delivered)

    @property
    def unavoidable(self) -> int:
        """Polls no gateway could make: slots that began and ended while it was frozen, beyond the one
        it polls late on waking (the loop polls the slot it slept for, then the current one)."""
        return self.devices * sum(max(0, int(s // self.interval) - 1) for s in self.stall_lengths)


def _ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class SimThread:
    """Simulators in an event loop of their own thread (they keep answering whatever the test does)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="modbus-sims", daemon=True)
        self.thread.start()
        self.sims: list[ModbusSim] = []

    def start(self, count: int, faults: list[str | None] | None = None, profile: str = PROFILE) -> list[int]:
        """Start ``count`` Modbus TCP servers of unit 1 (``faults[i]`` injected into the i-th); their ports."""
        async def _start() -> list[int]:
            prof = load_modbus_profile(profile)
            ports = []
            for i in range(count):
                sim = ModbusSim({1: prof})
                if faults and faults[i]:
                    sim.set_fault(1, faults[i])
                self.sims.append(sim)
                ports.append(await sim.start_tcp())
            return ports

        return asyncio.run_coroutine_threadsafe(_start(), self.loop).result(30)

    def stop(self) -> None:
        async def _stop() -> None:
            for sim in self.sims:
                await sim.stop()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def config(data: Path, broker_port: int, ports: list[int], interval: float, timeout: str | None) -> str:
    extra = f", timeout: {timeout}" if timeout else ""
    devices = "".join(
        f"  - {{id: m{i}, driver: modbus, profile: {PROFILE}, poll_interval: {interval}s{extra}, "
        f"connection: {{transport: tcp, host: 127.0.0.1, port: {p}, unit: 1}}}}\n" for i, p in enumerate(ports))
    return (f"gateway: {{id: {GW}, data_dir: {data}, clock_check: off, shutdown_timeout: 5s}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker_port}}}\n"
            f"buffer: {{flush_interval: 50ms}}\ndevices:\n{devices}")


def run(folder: Path, *, devices: int = 6, interval: float = 0.2, stalls: int = 10, stall_s: float = 0.15,
        gap_s: tuple[float, float] = (0.4, 0.9), timeout: str | None = None, seed: int = 0) -> Figures:
    """Start everything, freeze the gateway ``stalls`` times for ``stall_s``, count what arrived."""
    rng = random.Random(seed)
    fig = Figures(devices, interval, stalls, stall_s)
    sims = SimThread()
    (folder / "broker").mkdir()
    broker = Mosquitto(folder / "broker").start()
    col = Collector(broker.host, broker.port)
    proc: subprocess.Popen[str] | None = None
    try:
        col.connect()
        ports = sims.start(devices)
        cfg = folder / "fieldgate.yaml"
        cfg.write_text(config(folder / "data", broker.port, ports, interval, timeout))
        log = (folder / "gateway.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "fieldgate.cli", "run", "-c", str(cfg)], stdout=log,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        names = [f"m{i}" for i in range(devices)]

        def each_has(n: int) -> bool:
            got = [r["device"] for r in col.readings()]
            return all(got.count(d) >= n for d in names)

        col.wait_for(lambda: each_has(3), timeout=60, what="first readings of every device")
        gaps = [rng.uniform(*gap_s) for _ in range(stalls)]
        # A control window as long as the stalled one, with no stall: on a loaded machine the gateway
        # misses slots by itself, and only what the stalls add is theirs.
        c0 = time.time()
        time.sleep(sum(gaps) + stalls * stall_s + gap_s[1])  # the control window's length, not a wait
        c1 = t0 = time.time()
        for gap in gaps:
            time.sleep(gap)  # fault injection timing, not synchronization
            proc.send_signal(signal.SIGSTOP)
            frozen = time.monotonic()
            time.sleep(stall_s)  # the stall itself
            proc.send_signal(signal.SIGCONT)
            fig.stall_lengths.append(time.monotonic() - frozen)
        time.sleep(gap_s[1])  # fault injection timing: a quiet tail after the last stall
        t1 = time.time()
        fig.window_s = t1 - t0
        # Everything polled inside the window reaches the collector (the buffer publishes it).
        col.wait_for(lambda: all(any(_ts(r["ts"]) > t1 for r in col.readings() if r["device"] == d)
                                 for d in names), timeout=60, what="readings after the window")
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
        readings = col.readings()
        for d in names:
            n = sum(1 for r in readings if r["device"] == d and t0 <= _ts(r["ts"]) < t1)
            fig.per_device[d] = n
            fig.delivered += n
        fig.expected = devices * round(fig.window_s / interval)
        fig.control_expected = devices * round((c1 - c0) / interval)
        fig.control_delivered = sum(1 for r in readings if c0 <= _ts(r["ts"]) < c1)
        for d in names:
            for s in col.statuses(f"fieldgate/{GW}/{d}/status"):
                if s.get("state") != "online" and t0 <= _ts(s["ts"]) < t1 + 1:
                    fig.degraded += 1
        fig.timeouts_logged = sum(1 for line in (folder / "gateway.log").read_text().splitlines()
                                  if "no answer" in line or "timeout" in line)
        return fig
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        col.disconnect()
        sims.stop()
        broker.stop()


def describe(fig: Figures) -> str:
    """One line of figures, with the load average."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{fig.devices} devices every {fig.interval:g}s, {fig.stalls} stalls of {fig.stall_s * 1000:.0f} ms in "
            f"{fig.window_s:.1f}s (longest {max(fig.stall_lengths, default=0) * 1000:.0f} ms): polls expected "
            f"{fig.expected}, delivered {fig.delivered}, lost {fig.lost} (unavoidable {fig.unavoidable}), "
            f"degraded/offline statuses {fig.degraded}, timeout lines logged {fig.timeouts_logged}; with no stall "
            f"{fig.control_lost} of {fig.control_expected} lost "
            f"(load average {load})")

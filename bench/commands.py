"""Benchmark: command latency (write + read-back) and the poll schedule of a shared RS-485 line under writes.

Run: .venv/bin/python bench/commands.py
Starts the real gateway (runtime.running, memory output) against the Modbus simulator, over TCP
and over RTU on a pty at 38400 baud, and prints, per transport, the median and 95th percentile
of ``CommandExecutor.execute`` for a one-point write (the store's two fsynced commits, the write,
the read-back poll). Then two units on one RTU line polled every 0.25 s while one is written
4 times a second: each device's polls, overruns and the largest gap between two readings.
Figures depend on the host's load: the load average is printed with them.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fieldgate.config import load_config_text
from fieldgate.outputs import MemoryOutput
from fieldgate.runtime import running

from tests.commands.conftest import PROFILE, config, start_sim

N = 40


def _cmd(i: int) -> dict[str, object]:
    return {"schema": "fieldgate.command/1", "id": f"b-{i}", "op": "write", "metrics": {"setpoint": 20.0 + i / 100}}


async def latency(tmp: Path, transport: str) -> None:
    profile = tmp / "boiler.yaml"
    profile.write_text(PROFILE)
    sims: list = []
    sim, conn = await start_sim(sims, profile, transport)
    out = MemoryOutput()
    text = config(tmp / f"data-{transport}", profile, {"boiler": conn}, interval="3600s", rate=100, burst=1000)
    try:
        async with running(load_config_text(text, str(tmp / "c.yaml")), output=out) as rt:
            await out.wait_for(lambda o: len(o.by_device("boiler")) >= 1)
            assert rt.gateway.commands is not None
            times = []
            for i in range(N):
                t0 = time.perf_counter()
                res = await rt.gateway.commands.execute("boiler", _cmd(i), origin="cli")
                times.append(time.perf_counter() - t0)
                assert res["status"] == "ok", res
            times.sort()
            print(f"{transport:4} write+read-back: median {statistics.median(times) * 1000:6.1f} ms, "
                  f"p95 {times[int(0.95 * N) - 1] * 1000:6.1f} ms ({N} commands, {len(sim.models[1].writes)} writes)")
    finally:
        for s in sims:
            await s.stop()


async def shared_line(tmp: Path) -> None:
    profile = tmp / "boiler.yaml"
    sims: list = []
    _sim, conn = await start_sim(sims, profile, "rtu", units=(1, 2))
    out = MemoryOutput()
    devices = {"b1": {**conn, "unit": 1}, "b2": {**conn, "unit": 2}}
    text = config(tmp / "data-line", profile, devices, interval="0.25s", rate=100, burst=1000)
    try:
        async with running(load_config_text(text, str(tmp / "c.yaml")), output=out) as rt:
            await out.wait_for(lambda o: all(len(o.by_device(d)) >= 1 for d in devices))
            assert rt.gateway.commands is not None
            start = len(out.readings)
            t_end = time.monotonic() + 10.0
            i = 0
            while time.monotonic() < t_end:
                await rt.gateway.commands.execute("b1", _cmd(1000 + i), origin="cli")
                i += 1
                await asyncio.sleep(0.25)  # the load's pace
            for dev in devices:
                snap = rt.gateway.device_snapshot(dev)
                assert snap is not None
                ts = [r["ts"] for r in out.readings[start:] if r["device"] == dev]
                print(f"line {dev}: {snap.polls} polls, {snap.overruns} overruns, {snap.failures} failures, "
                      f"{len(ts)} readings in 10 s while {i} writes to b1")
    finally:
        for s in sims:
            await s.stop()


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        await latency(tmp, "tcp")
        await latency(tmp, "rtu")
        await shared_line(tmp)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())

"""Benchmark: the CPU one Modbus TCP read request costs the gateway, pymodbus alone and through the bus.

Run: .venv/bin/python bench/modbus_request.py [--requests 5000] [--registers 100] [--concurrency 100]

A fleet of ``--concurrency`` devices (``fieldgate_hwsim.fleet_sim``, a process of its own) is read
with ``--registers`` holding registers per request, every device in its own task, so the event loop
interleaves requests as the gateway does. Prints the process CPU time per request for:
  - pymodbus: ``AsyncModbusTcpClient.read_holding_registers`` alone;
  - pymodbus*: the same once ``compat.lazy_pdu_text`` stopped its per-answer debug text;
  - bus: ``ModbusBus.read`` (what the driver calls: the lock, the answer checks, the timeout);
  - driver: ``ModbusDriver.poll`` of one block (decoding and the raw reading included);
and the share of one core each needs for scenario C (100 devices every 100 ms: 1000 requests/s,
a budget of 1 ms of CPU per request, and 10 ms per device poll cycle for all hundred devices).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fieldgate.driver import DeviceContext, SharedResources
from fieldgate.drivers.modbus import compat
from fieldgate.drivers.modbus.bus import ModbusBus
from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.drivers.modbus.profile import ModbusConnection, ModbusProfile

REPO = Path(__file__).resolve().parents[1]


def fleet_profile(registers: int) -> ModbusProfile:
    return ModbusProfile.model_validate({
        "schema_version": 1, "driver": "modbus", "vendor": "bench", "model": "fleet",
        "addressing_verified": True,
        "points": [{"name": f"r{a}", "address": a} for a in range(registers)]})


class _Sink:
    values = 0

    def add(self, reading: Any) -> None:
        self.values += len(reading.values)

    def add_error(self, error: Any) -> None:
        raise AssertionError(error)


async def run(kind: str, ports: list[int], requests: int, registers: int) -> float:
    """CPU seconds per request for ``kind`` (pymodbus, bus, driver)."""
    per = max(1, requests // len(ports))
    profile = fleet_profile(registers)
    log = logging.LoggerAdapter(logging.getLogger("bench"), {})

    async def one(port: int) -> None:
        conn = ModbusConnection(host="127.0.0.1", port=port, timeout=5.0)
        if kind.startswith("pymodbus"):
            from pymodbus.client import AsyncModbusTcpClient

            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
            await client.connect()
            await ready.wait()
            for _ in range(per):
                await client.read_holding_registers(0, count=registers, device_id=1)
            client.close()
        elif kind == "bus":
            bus = ModbusBus(f"tcp:127.0.0.1:{port}", conn)
            await bus.connect()
            await ready.wait()
            for _ in range(per):
                await bus.read(1, "holding", 0, registers, timeout=5.0, retries=0, backoff=1, backoff_max=1)
            await bus.close()
        else:
            drv = ModbusDriver(DeviceContext(f"d{port}", profile, conn, 0.1, log, SharedResources()))
            sink = _Sink()
            async with drv:
                await drv.poll(sink)
                await ready.wait()
                for _ in range(per):
                    await drv.poll(sink)

    ready = asyncio.Event()
    tasks = [asyncio.create_task(one(p)) for p in ports]
    await asyncio.sleep(0.5)  # connections settle; the measured part starts at the event
    cpu0 = time.process_time()
    ready.set()
    await asyncio.gather(*tasks)
    return (time.process_time() - cpu0) / (per * len(ports))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--registers", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=100)
    args = ap.parse_args()
    sim = subprocess.Popen([sys.executable, "-m", "fieldgate_hwsim.fleet_sim", "--devices", str(args.concurrency),
                            "--registers", str(args.registers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    try:
        assert sim.stdout is not None
        ports = json.loads(sim.stdout.readline())["ports"]
        print(f"{args.requests} requests of {args.registers} registers over {len(ports)} devices; "
              f"load average {os.getloadavg()[0]:.2f}")
        for kind in ("pymodbus", "pymodbus*", "bus", "driver"):
            if kind == "pymodbus*":
                compat.lazy_pdu_text()  # what the bus does when it connects
            per = asyncio.run(run(kind, ports, args.requests, args.registers))
            print(f"  {kind:8s} {per * 1e6:7.0f} us CPU/request  -> scenario C (1000 req/s): "
                  f"{per * 1000 * 100:5.1f} % of one core", flush=True)
    finally:
        if sim.stdin is not None:
            sim.stdin.close()
        sim.terminate()
        sim.wait(30)
        if sim.stdout is not None:
            sim.stdout.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the modbus driver: merged reads vs one request per point, over TCP and RTU.

Prints, per transport: requests per poll cycle (merged / one per point), the
measured poll cycle time against the theoretical line-time minimum of those
frames (RTU: 11 bits per character plus the 3.5-character silence before
each frame), values per second, and the driver's CPU time per 1000 values.
The simulator runs in a separate process (``python -m fieldgate_hwsim.modbus_sim``)
so the CPU figure is the gateway's own. Not a timed test: run
``python bench/modbus.py``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from typing import Any

from fieldgate.driver import DeviceContext, SharedResources
from fieldgate.drivers.modbus.bus import inter_frame_silence, line_time
from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.drivers.modbus.plan import Block
from fieldgate.drivers.modbus.profile import ModbusConnection, ModbusProfile
from fieldgate_hwsim.modbus_sim import load_modbus_profile

PROFILE = "eastron/sdm630"


class _Sink:
    def __init__(self) -> None:
        self.values = 0

    def add(self, reading: Any) -> None:
        self.values += len(reading.values)

    def add_error(self, error: Any) -> None:
        raise AssertionError(error)


def theoretical(blocks: list[Block], baud: int | None) -> float | None:
    """Line-time minimum of one cycle: request 8 bytes, answer 5 + data bytes, a silence before each frame."""
    if baud is None:
        return None
    total = 0.0
    for b in blocks:
        data = 2 * b.count if b.table in ("holding", "input") else (b.count + 7) // 8
        total += line_time(8, baud) + line_time(5 + data, baud) + 2 * inter_frame_silence(baud)
    return total


async def measure(profile: ModbusProfile, conn: ModbusConnection, polls: int) -> dict[str, Any]:
    log = logging.LoggerAdapter(logging.getLogger("bench"), {})
    drv = ModbusDriver(DeviceContext("bench", profile, conn, 60.0, log, SharedResources()))
    sink = _Sink()
    async with drv:
        await drv.poll(sink)  # warm up: connect, plan
        sink.values = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(polls):
            await drv.poll(sink)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    blocks = drv.plan(drv.due(1))
    return {"requests": len(blocks), "cycle": wall / polls, "values": sink.values, "cpu": cpu, "blocks": blocks,
            "wall": wall}


def start_sim(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "fieldgate_hwsim.modbus_sim", "--profile", PROFILE, *args],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[2]


async def main() -> None:
    merged = load_modbus_profile(PROFILE)
    # Same points without the datasheet's every: N, so every cycle reads everything.
    merged = merged.model_copy(update={"points": [p.model_copy(update={"every": 1}) for p in merged.points]})
    single = merged.model_copy(update={"max_registers": 2, "max_gap": 0})
    print(f"profile {PROFILE}: {len(merged.points)} points per poll\n")
    head = (f"{'transport, reads':<26}{'req':>4}{'cycle ms':>11}{'line min ms':>13}{'values/s':>10}"
            f"{'CPU ms/1000 values':>20}")
    print(head)
    print("-" * len(head))
    runs: list[tuple[str, list[str], dict[str, Any], int | None, int]] = [
        ("tcp", ["--tcp", "127.0.0.1:0"], {}, None, 200),
        ("rtu 115200", ["--rtu", "--baud", "115200"], {"baudrate": 115200}, 115200, 40),
        ("rtu 9600", ["--rtu", "--baud", "9600"], {"baudrate": 9600}, 9600, 6),
    ]
    for label, sim_args, extra, baud, polls in runs:
        proc, where = start_sim(sim_args)
        try:
            if baud is None:
                host, port = where.rsplit(":", 1)
                conn = ModbusConnection(transport="tcp", host=host, port=int(port), timeout=2.0)
            else:
                conn = ModbusConnection(transport="rtu", serial_port=where, timeout=2.0, **extra)
            for name, prof in (("merged", merged), ("1 per point", single)):
                r = await measure(prof, conn, polls)
                lmin = theoretical(r["blocks"], baud)
                lmin_s = f"{lmin * 1000:.1f}" if lmin is not None else "n/a"
                print(f"{label + ' ' + name:<26}{r['requests']:>4}{r['cycle'] * 1000:>11.1f}{lmin_s:>13}"
                      f"{r['values'] / r['wall']:>10.0f}{r['cpu'] / r['values'] * 1000 * 1000:>20.2f}")
        finally:
            proc.terminate()
            proc.wait(5)
    print("\nline min: RTU frame bytes at 11 bits/char plus 3.5-char silence per frame; TCP has no line limit.")


if __name__ == "__main__":
    asyncio.run(main())

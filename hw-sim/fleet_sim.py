"""A fleet of Modbus TCP devices for end-to-end benchmarks: one pymodbus server (one port) per device.

Each device exposes ``registers`` holding registers from address 0:

* register 0 counts the reads that include it (mod 65536), so a gap in the
  values a subscriber receives is a lost poll and a repeat is a duplicate;
* registers 1-2 latch the simulator's clock at that read, in milliseconds
  since the epoch mod 2**32 (high word first), so a subscriber can measure
  the latency from the register read to its own receive time;
* the others change every 100 ms (a value derived from the 100 ms tick), so
  report-by-exception or caching upstream cannot hide work.

It runs in a process of its own (``python -m fieldgate_hwsim.fleet_sim``) so
the gateway's CPU figures are its own. It prints one JSON line with the ports
and serves until stdin closes or SIGTERM. Unlike ``modbus_sim`` no profile is
involved: the register image is computed at each read, which keeps the
simulator cheap enough to serve 100 devices at 10 reads/s each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer

#: Clock registers hold milliseconds mod this (two 16-bit registers).
CLOCK_MOD = 1 << 32


class FleetDevice:
    """One simulated device's register image (computed at each read)."""

    def __init__(self, index: int, registers: int) -> None:
        self.index = index
        self.registers = registers
        self.reads = 0

    def read(self, address: int, count: int) -> list[int] | ExcCodes:
        """Holding registers ``address .. address+count-1``; exception 02 beyond the image."""
        if address < 0 or address + count > self.registers:
            return ExcCodes.ILLEGAL_ADDRESS
        if address == 0:
            self.reads += 1
        ms = int(time.time() * 1000) % CLOCK_MOD
        tick = int(time.monotonic() * 10)
        out = []
        for a in range(address, address + count):
            if a == 0:
                out.append(self.reads & 0xFFFF)
            elif a == 1:
                out.append(ms >> 16)
            elif a == 2:
                out.append(ms & 0xFFFF)
            else:
                out.append((tick + a * 7 + self.index) & 0xFFFF)
        return out


class _Context(ModbusServerContext):
    """Routes every request of one server to its device (any unit id answers)."""

    def __init__(self, device: FleetDevice) -> None:  # pymodbus's own __init__ builds a model we do not use
        self.device = device
        self.simdevices = []
        self.old_simulator = True

    def device_ids(self) -> list[int]:
        return [0]  # 0: the server answers every unit id

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        if func_code not in (3, 4):
            return ExcCodes.ILLEGAL_FUNCTION
        return self.device.read(address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_FUNCTION


class FleetSim:
    """``devices`` Modbus TCP servers of ``registers`` holding registers each."""

    def __init__(self, devices: int, registers: int) -> None:
        if registers < 3:
            raise ValueError("a fleet device needs at least 3 registers (counter and clock)")
        self.devices = [FleetDevice(i, registers) for i in range(devices)]
        self._servers: list[ModbusTcpServer] = []

    async def start(self, host: str = "127.0.0.1") -> list[int]:
        """Start one server per device on free ports; returns the ports in device order."""
        ports = []
        for dev in self.devices:
            server = ModbusTcpServer(_Context(dev), framer=FramerType.SOCKET, address=(host, 0))
            await server.serve_forever(background=True)
            self._servers.append(server)
            ports.append(int(server.transport.sockets[0].getsockname()[1]))  # type: ignore[union-attr]
        return ports

    async def stop(self) -> None:
        """Stop every server."""
        for s in self._servers:
            await s.shutdown()
        self._servers.clear()


async def _main(args: argparse.Namespace) -> None:
    if not args.verbose:
        # A gateway that stops mid-request makes pymodbus's server log "Cancel send" errors with frame
        # dumps; the benchmark counts what its subscriber got, so they are noise there.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    sim = FleetSim(args.devices, args.registers)
    ports = await sim.start(args.host)
    print(json.dumps({"host": args.host, "ports": ports}), flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    # stdin closing (the parent exited) also ends the simulator, so no orphan keeps the ports.
    loop.add_reader(sys.stdin.fileno(), lambda: done.set() if not sys.stdin.buffer.read1(4096) else None)
    try:
        await done.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m fieldgate_hwsim.fleet_sim --devices 50 --registers 50``."""
    ap = argparse.ArgumentParser(prog="python -m fieldgate_hwsim.fleet_sim",
                                 description="Serve a fleet of Modbus TCP devices (one port each) for benchmarks.")
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--registers", type=int, default=20)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--verbose", action="store_true", help="keep pymodbus's server log (errors at teardown)")
    args = ap.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except ValueError as exc:
        print(f"fleet_sim: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

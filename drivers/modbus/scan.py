"""``fieldgate scan modbus``: find the unit ids that answer on a line or endpoint.

Each unit id gets one small read (holding register 0). Any answer, including
a Modbus exception (the unit exists but has no register 0), counts as
present; silence within the timeout counts as absent. Requests go through
the same ``ModbusBus`` as the driver, with its inter-frame silence.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from fieldgate.errors import DeviceTimeout, DriverError

from .bus import ExceptionResponse, FrameError, ModbusBus
from .profile import ModbusConnection


def parse_ids(text: str) -> list[int]:
    """``1-10,17,20-22`` → sorted unit ids.

    Raises:
        ValueError: malformed or outside 0..255.
    """
    out: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        a, b = int(lo), int(hi) if sep else int(lo)
        if not 0 <= a <= b <= 255:
            raise ValueError(f"bad unit id range {part!r} (ids are 1..247, 255 for some TCP gateways)")
        out.update(range(a, b + 1))
    return sorted(out)


async def scan(conn: ModbusConnection, ids: list[int], out: TextIO | None = None) -> list[int]:
    """Probe ``ids`` one by one; returns those that answered.

    Raises:
        DeviceUnreachable: the port or endpoint cannot be opened.
    """
    stream = out if out is not None else sys.stdout
    key = conn.serial_port if conn.transport == "rtu" else f"tcp:{conn.host}:{conn.tcp_port}"
    bus = ModbusBus(key or "", conn)
    await bus.connect()
    found: list[int] = []
    try:
        for unit in ids:
            try:
                regs = await bus.read(unit, "holding", 0, 1, timeout=conn.timeout, retries=0, backoff=1e-6,
                                      backoff_max=1e-6)
                print(f"unit {unit}: answers (holding 0 = 0x{int(regs[0]):04X})", file=stream, flush=True)
            except ExceptionResponse as exc:
                print(f"unit {unit}: answers with exception {exc.code:02d} (present)", file=stream, flush=True)
            except DeviceTimeout:
                continue
            except FrameError as exc:
                # Something answered, but not validly: say what (a wrong baud rate garbles every id).
                print(f"unit {unit}: bad answer ({exc.reason}): {exc.args[0]}", file=stream, flush=True)
                continue
            found.append(unit)
    finally:
        await bus.close()
    return found


def main(argv: list[str]) -> int:
    """Entry point of ``fieldgate scan modbus``; returns the exit code.

    0 found, 1 none, 2 usage error, 3 the line or host cannot be opened.
    """
    ap = argparse.ArgumentParser(prog="fieldgate scan modbus", description="Find Modbus unit ids that answer.")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port of the RS-485 adapter, e.g. /dev/ttyUSB0")
    where.add_argument("--host", help="Modbus TCP device or serial server")
    ap.add_argument("--baud", type=int, default=9600, help="serial: baud rate (default 9600)")
    ap.add_argument("--parity", default="N", choices=["N", "E", "O"], help="serial: parity (default N)")
    ap.add_argument("--stopbits", type=int, default=1, choices=[1, 2], help="serial: stop bits (default 1)")
    ap.add_argument("--tcp-port", type=int, default=502, help="TCP port (default 502)")
    ap.add_argument("--rtu-over-tcp", action="store_true", help="the TCP peer is a serial server passing RTU frames")
    ap.add_argument("--ids", default="1-247", help="unit ids to try, e.g. 1-247 or 1,2,10-20 (default 1-247)")
    ap.add_argument("--timeout", type=float, default=0.2, help="seconds to wait for each unit (default 0.2)")
    args = ap.parse_args(argv)
    try:
        ids = parse_ids(args.ids)
        if args.port:
            conn = ModbusConnection(transport="rtu", serial_port=args.port, baudrate=args.baud,
                                    parity=args.parity, stopbits=args.stopbits, timeout=args.timeout)
        else:
            conn = ModbusConnection(transport="rtu-over-tcp" if args.rtu_over_tcp else "tcp", host=args.host,
                                    port=args.tcp_port, timeout=args.timeout)
    except ValueError as exc:
        print(f"fieldgate scan modbus: {exc}", file=sys.stderr)
        return 2
    where_text = f"{args.port} at {args.baud} baud" if args.port else f"{args.host}:{args.tcp_port}"
    print(f"scanning {len(ids)} unit id(s) on {where_text}, {args.timeout:g}s each", flush=True)
    try:
        found = asyncio.run(scan(conn, ids))
    except DriverError as exc:
        # unreachable, refused or busy: a device problem (3), not a usage error (2)
        print(f"fieldgate scan modbus: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    print(f"found {len(found)} unit(s){': ' + ', '.join(map(str, found)) if found else ''}")
    return 0 if found else 1

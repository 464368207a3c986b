"""The ``modbus`` driver: poll one Modbus device through its line's shared bus.

Each poll picks the points due (``every: N``), plans merged reads for them
(cached per set of due points), reads block by block through the ``ModbusBus``
that owns the port or endpoint, decodes raw values and hands them to the
sink. An exception response fails only the points of its block (the poll
goes on); a merged read the device rejects with exception 02 is retried as
smaller reads and remembered. A timeout or a bad answer (``FrameError``:
junk, wrong unit, ...) on the first request fails the poll; on a later one
it fails only that block's points, with the reason as their quality reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar, Self

from fieldgate.checks import DoctorDevice, Finding, serial_port_findings
from fieldgate.driver import DeviceContext, PointWrite, ReadingSink
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DriverError
from fieldgate.schema import PointError, RawReading

from .bus import ExceptionResponse, FrameError, ModbusBus
from .decode import DecodeError, decode, hex_words
from .plan import BIT_TABLES, Block, Item, plan_reads, split
from .profile import ModbusConnection, ModbusPoint, ModbusProfile
from .write import WriteRefused, plan_write, write_points

ILLEGAL_ADDRESS = 2


class ModbusDriver:
    """One Modbus device (a unit on a line or a TCP endpoint)."""

    name: ClassVar[str] = "modbus"
    Profile: ClassVar[type[ModbusProfile]] = ModbusProfile
    Connection: ClassVar[type[ModbusConnection]] = ModbusConnection

    @classmethod
    def bus_of(cls, connection: ModbusConnection) -> str:
        """The physical line: the serial port for RTU, ``tcp:host:port`` for TCP and RTU-over-TCP."""
        if connection.transport == "rtu":
            return connection.serial_port or ""
        return f"tcp:{connection.host}:{connection.tcp_port}"

    @classmethod
    async def doctor(cls, devices: Sequence[DoctorDevice], timeout: float) -> list[Finding]:
        """``fieldgate doctor``: each RTU line's port is a serial device node the service may open."""
        ports: dict[str, list[str]] = {}
        for dev in devices:
            port = dev.connection.serial_port if isinstance(dev.connection, ModbusConnection) else None
            if port and port.startswith("/"):
                ports.setdefault(port, []).append(dev.id)
        return serial_port_findings(ports)

    def __init__(self, ctx: DeviceContext[ModbusProfile, ModbusConnection]) -> None:
        self.ctx = ctx
        self.profile = ctx.profile
        self.conn = ctx.connection
        self.key = self.bus_of(self.conn)
        self.points = {p.name: p for p in self.profile.points}
        self.bus: ModbusBus | None = None
        self.polls = 0
        self._plans: dict[frozenset[str], list[Block]] = {}
        self._split: set[tuple[str, int, int]] = set()  # merged reads the device rejected
        self._raw: list[tuple[str, str]] = []
        self._unreadable = [(r.table, r.start, r.end) for r in self.profile.unreadable]
        self._read_all = False  # after a write: the read-back poll reads every point, `every: N` or not

    async def __aenter__(self) -> Self:
        bus = self.ctx.shared.acquire(self.key, lambda: ModbusBus(self.key, self.conn))
        try:
            bus.check_compatible(self.conn)
            await bus.connect()
        except BaseException:
            await self._release()
            raise
        self.bus = bus
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.bus = None
        await self._release()

    async def _release(self) -> None:
        last = self.ctx.shared.release(self.key)
        if isinstance(last, ModbusBus):
            await last.close()

    def last_raw(self) -> list[tuple[str, str]]:
        """Point name → raw registers of the last poll, e.g. ``0x4366 0x0000`` (for ``fieldgate probe``)."""
        return list(self._raw)

    # -- planning -----------------------------------------------------------------------------

    def due(self, poll: int) -> frozenset[str]:
        """Names of the points read on poll number ``poll`` (with the scale factors they need)."""
        names = {p.name for p in self.profile.points if poll % p.every == 0}
        names |= {self.points[n].scale_factor_point for n in names  # type: ignore[misc]
                  if self.points[n].scale_factor_point}
        return frozenset(names)

    def plan(self, names: frozenset[str]) -> list[Block]:
        """Requests for a set of points (cached; the device's rejections are applied)."""
        blocks = self._plans.get(names)
        if blocks is None:
            items = [Item(n, p.table, p.address, p.width) for n, p in self.points.items() if n in names]
            blocks = plan_reads(items, self.profile.max_registers, self.profile.max_gap, self._unreadable)
            blocks = [b for blk in blocks for b in (split(blk) if self._rejected(blk) else [blk])]
            self._plans[names] = blocks
            if len(self._plans) == 1:
                self.ctx.log.info("read plan: %d point(s) in %d request(s)", len(items), len(blocks))
        return blocks

    def _rejected(self, block: Block) -> bool:
        return (block.table, block.start, block.count) in self._split

    # -- writing (drivers/modbus/write.py) ----------------------------------------------------

    async def write(self, writes: Sequence[PointWrite]) -> None:
        """Write points: every value is encoded first (a refusal sends nothing), then one request each."""
        if self.bus is None:
            raise DriverError("driver used outside `async with`")
        try:
            requests = [plan_write(self.profile, self.points[w.name], w.value) for w in writes]
        except (WriteRefused, KeyError) as exc:
            raise DriverError(f"cannot write: {exc}", reason=getattr(exc, "reason", "unknown_point")) from exc
        self._read_all = True  # even a failed write may have changed a point: read them all
        await write_points(self.bus, self.conn, requests)

    # -- polling ------------------------------------------------------------------------------

    async def poll(self, sink: ReadingSink) -> None:
        """Read the due points once and hand their raw values to ``sink``."""
        if self.bus is None:
            raise DriverError("driver used outside `async with`")
        names = self.due(0) if self._read_all else self.due(self.polls)  # poll 0 reads every point
        self._read_all = False
        self.polls += 1
        ts = time.time()
        words: dict[str, list[Any]] = {}
        failed: dict[str, PointError] = {}
        problems: list[DeviceProtocolError] = []
        for block in self.plan(names):
            await self._read_block(block, words, failed, problems)
        if not words and problems:
            first = problems[0]
            raise DeviceProtocolError(f"{first}; nothing could be read", reason=first.reason,
                                      hint="check the profile matches the device model and firmware")
        if problems:
            # One report per poll: the core logs each one, and a profile/device mismatch repeats every poll.
            first = problems[0]
            more = f" ({len(problems)} request(s) failed)" if len(problems) > 1 else ""
            sink.add_error(DeviceProtocolError(f"{first}{more}", reason=first.reason))
        values, raw = self._decode(names, words, failed)
        self._raw = raw
        sink.add(RawReading(values, ts=ts))

    async def _read_block(self, block: Block, words: dict[str, list[Any]], failed: dict[str, PointError],
                          problems: list[DeviceProtocolError]) -> None:
        assert self.bus is not None
        c = self.conn
        try:
            data = await self.bus.read(c.unit, block.table, block.start, block.count, timeout=c.timeout,
                                       retries=c.retries, backoff=c.backoff, backoff_max=c.backoff_max)
        except ExceptionResponse as exc:
            if exc.code == ILLEGAL_ADDRESS and len(block.items) > 1 and not self._rejected(block):
                self._split.add((block.table, block.start, block.count))
                self._plans.clear()
                self.ctx.log.info("unit %d rejected the merged read %s %d+%d (exception 02); reading its %d "
                                  "point(s) separately from now on", c.unit, block.table, block.start,
                                  block.count, len(block.items))
                for part in split(block):
                    await self._read_block(part, words, failed, problems)
                return
            problems.append(exc)
            for it in block.items:
                failed[it.key] = PointError(exc.reason)
            return
        except (DeviceTimeout, FrameError) as exc:
            if not words and not failed:
                raise
            # Part of the device answered: report the rest with the reason and go on.
            if isinstance(exc, FrameError):
                problems.append(exc)
            for it in block.items:
                failed[it.key] = PointError(exc.reason)
            return
        for it in block.items:
            off = it.address - block.start
            words[it.key] = data[off:off + it.width]

    def _decode(self, names: frozenset[str], words: dict[str, list[Any]],
                failed: dict[str, PointError]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        values: dict[str, Any] = {}
        raw: list[tuple[str, str]] = []
        for name in names:
            p = self.points[name]
            if name in failed:
                values[name] = failed[name]
                raw.append((name, failed[name].reason))
                continue
            w = words[name]
            try:
                values[name] = self._value(p, w)
            except (DecodeError, ValueError, IndexError):
                values[name] = PointError("decode_error")
            raw.append((name, ("1" if w[0] else "0") if p.table in BIT_TABLES else hex_words(w)))
        for name, value in list(values.items()):
            p = self.points[name]
            if p.scale_factor_point and not isinstance(value, PointError):
                sf = values.get(p.scale_factor_point)
                if isinstance(sf, PointError) or sf is None:
                    values[name] = PointError("decode_error")
                elif sf == -32768:  # SunSpec "not implemented"
                    values[name] = PointError("not_implemented")
                else:
                    values[name] = value * 10.0 ** sf
        order = {p.name: i for i, p in enumerate(self.profile.points)}
        out = {n: values[n] for n in sorted(values, key=order.__getitem__) if self.points[n].report}
        raw.sort(key=lambda r: order[r[0]])
        return out, raw

    def _value(self, p: ModbusPoint, w: list[Any]) -> Any:
        if p.table in BIT_TABLES:
            return bool(w[0])
        byte_order, word_order = self.profile.order_of(p)
        return decode(w, p.kind, byte_order, word_order, p.bit)

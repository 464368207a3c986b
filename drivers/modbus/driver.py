"""The ``modbus`` driver: poll one Modbus device through its line's shared bus.

Each poll picks the points due (``every: N``; cached by the poll's phase),
takes the compiled plan of that set (merged reads, each with a
``BlockDecoder`` that decodes the whole block at once, and the reading's key
order; built once per set of due points), reads block by block through the
``ModbusBus`` that owns the port or endpoint and hands the raw values to the
sink. The raw registers for ``fieldgate probe`` are formatted only when it
asks (``last_raw``): a poll keeps the blocks it read, nothing more.

An exception response fails only the points of its block (the poll goes
on); a merged read the device rejects with exception 02 is retried as
smaller reads and remembered. A timeout or a bad answer (``FrameError``:
junk, wrong unit, ...) on the first request fails the poll; on a later one
it fails only that block's points, with the reason as their quality reason.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from fieldgate.checks import DoctorDevice, Finding, serial_port_findings
from fieldgate.driver import DeviceContext, PointWrite, ReadingSink
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DriverError
from fieldgate.schema import PointError, RawReading

from .bus import ExceptionResponse, FrameError, ModbusBus
from .decode import BlockDecoder, DecodeError, apply_scale_factor, decode, hex_words
from .plan import BIT_TABLES, Block, Item, plan_reads, split
from .profile import ModbusConnection, ModbusPoint, ModbusProfile
from .sunspec_chain import Chain, discover, relocate
from .write import WriteRefused, plan_write, write_points

ILLEGAL_ADDRESS = 2


class ModbusDriver:
    """One Modbus device (a unit on a line or a TCP endpoint)."""

    name: ClassVar[str] = "modbus"
    Profile: ClassVar[type[ModbusProfile]] = ModbusProfile
    Connection: ClassVar[type[ModbusConnection]] = ModbusConnection

    @staticmethod
    def decode_vector(profile: ModbusProfile, vector: Mapping[str, Any]) -> dict[str, Any]:
        """Conformance hook (``DecodesVectors``): one datasheet test vector → raw values, see vectors.py."""
        from .vectors import decode_vector

        return decode_vector(profile, vector)

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
        self.bus: ModbusBus | None = None
        self.polls = 0
        self._read_all = False  # after a write: the read-back poll reads every point, `every: N` or not
        self.chain: Chain | None = None  # a SunSpec profile: the model chain found on connect
        self._unset: dict[str, int] = {}  # SunSpec points and their "not implemented" raw value
        self._use(ctx.profile)

    def _use(self, profile: ModbusProfile) -> None:
        """Take ``profile``'s points as this device's (a SunSpec chain's relocate them on connect)."""
        self.profile = profile
        self.points = {p.name: p for p in profile.points}
        self._plans: dict[frozenset[str], _Phase] = {}
        self._split: set[tuple[str, int, int]] = set()  # merged reads the device rejected
        self._everies = tuple(sorted({p.every for p in profile.points}))
        # The due set repeats with the least common multiple of the ``every`` values: the phase is poll % that
        # (one modulo per poll); a profile whose multiples have a huge LCM keys by which of them divide the poll.
        period = math.lcm(*self._everies)
        self._period = period if period <= 10_000 else 0
        self._due: dict[int | tuple[bool, ...], frozenset[str]] = {}
        self._sets: dict[frozenset[str], frozenset[str]] = {}
        self._order = {p.name: i for i, p in enumerate(profile.points)}
        # the last poll's blocks and failures, formatted only when ``last_raw`` is asked
        self._last: tuple[list[tuple[Block, list[Any]]], dict[str, PointError]] | None = None
        self._unreadable = [(r.table, r.start, r.end) for r in profile.unreadable]

    async def __aenter__(self) -> Self:
        bus = self.ctx.shared.acquire(self.key, lambda: ModbusBus(self.key, self.conn))
        try:
            bus.check_compatible(self.conn)
            await bus.connect()
            if self.ctx.profile.sunspec is not None:
                await self._discover(bus)
        except BaseException:
            await self._release()
            raise
        self.bus = bus
        return self

    async def _discover(self, bus: ModbusBus) -> None:
        """SunSpec: find the chain, then read each model where this device has it (drivers/modbus/sunspec.py)."""
        assert self.ctx.profile.sunspec is not None
        self.chain = await discover(bus, self.conn, self.ctx.profile.sunspec.base)
        profile, self._unset = relocate(self.ctx.profile, self.chain)
        if not any(p.report for p in profile.points):
            ids = ", ".join(str(m[0]) for m in self.chain.models) or "none"
            raise DeviceProtocolError(
                f"the SunSpec chain at {self.chain.base} holds models {ids}: none of the profile's "
                f"{self.ctx.profile.sunspec.models}", reason="sunspec_models",
                hint="list the models the device has under sunspec.models (fieldgate probe shows them)")
        c = self.chain.common
        self.ctx.log.info("SunSpec at %d: %s %s (serial %s), models %s", self.chain.base, c.get("manufacturer"),
                          c.get("model"), c.get("serial"), " ".join(str(m[0]) for m in self.chain.models))
        self._use(profile)

    def status(self) -> dict[str, Any]:
        """For the status page and ``probe``: a SunSpec device's chain (``found``: one line per model)."""
        if self.chain is None:
            return {}
        return {"sunspec_base": self.chain.base, **self.chain.common, "found": self.chain.summary()}

    async def __aexit__(self, *exc: object) -> None:
        self.bus = None
        await self._release()

    async def _release(self) -> None:
        last = self.ctx.shared.release(self.key)
        if isinstance(last, ModbusBus):
            await last.close()

    def last_raw(self) -> list[tuple[str, str]]:
        """Point name → raw registers of the last poll, e.g. ``0x4366 0x0000`` (for ``fieldgate probe``).

        Formatted here, when asked: a poll keeps only the blocks it read (probe is rare, polls are not).
        """
        if self._last is None:
            return []
        reads, failed = self._last
        raw: dict[str, str] = {name: err.reason for name, err in failed.items()}
        for block, data in reads:
            bits = block.table in BIT_TABLES
            for it in block.items:
                off = it.address - block.start
                w = data[off:off + it.width]
                if not w:
                    continue
                raw[it.key] = ("1" if w[0] else "0") if bits else hex_words(w)
        return sorted(raw.items(), key=lambda r: self._order[r[0]])

    # -- planning -----------------------------------------------------------------------------

    def due(self, poll: int) -> frozenset[str]:
        """Names of the points read on poll number ``poll`` (with the scale factors they need).

        Cached by phase (which of the profile's ``every`` values divide ``poll``): a poll builds no set.
        """
        key: int | tuple[bool, ...] = poll % self._period if self._period else \
            tuple(poll % e == 0 for e in self._everies)
        names = self._due.get(key)
        if names is None:
            picked = {p.name for p in self.profile.points if poll % p.every == 0}
            picked |= {self.points[n].scale_factor_point for n in picked  # type: ignore[misc]
                       if self.points[n].scale_factor_point}
            fresh = frozenset(picked)
            names = self._due[key] = self._sets.setdefault(fresh, fresh)  # one object per distinct set
        return names

    def plan(self, names: frozenset[str]) -> list[Block]:
        """Requests for a set of points (cached; the device's rejections are applied)."""
        return [step.block for step in self._steps(names).steps]

    def _steps(self, names: frozenset[str]) -> _Phase:
        """The compiled plan of one set of due points: its blocks with their decoders (cached)."""
        phase = self._plans.get(names)
        if phase is None:
            items = [Item(n, p.table, p.address, p.width) for n, p in self.points.items() if n in names]
            blocks = plan_reads(items, self.profile.max_registers, self.profile.max_gap, self._unreadable)
            blocks = [b for blk in blocks for b in (split(blk) if self._rejected(blk) else [blk])]
            phase = _Phase([self._compile(b) for b in blocks], names, self.profile, self._order)
            self._plans[names] = phase
            if len(self._plans) == 1:
                self.ctx.log.info("read plan: %d point(s) in %d request(s)", len(items), len(blocks))
        return phase

    def _compile(self, block: Block) -> _Step:
        layout = []
        for it in block.items:
            p = self.points[it.key]
            byte_order, word_order = self.profile.order_of(p)
            layout.append((it.address - block.start, p.kind, byte_order, word_order, p.bit, it.width))
        return _Step(block, BlockDecoder(layout), tuple(it.key for it in block.items))

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
        # poll 0 reads every point, and so does the read-back poll after a write
        phase = self._steps(self.due(0) if self._read_all else self.due(self.polls))
        self._read_all = False
        self.polls += 1
        ts = time.time()
        values: dict[str, Any] = {}
        failed: dict[str, PointError] = {}
        problems: list[DeviceProtocolError] = []
        reads: list[tuple[Block, list[Any]]] = []
        for step in phase.steps:
            await self._read_block(step, reads, values, failed, problems)
        if not reads and problems:
            first = problems[0]
            raise DeviceProtocolError(f"{first}; nothing could be read", reason=first.reason,
                                      hint="check the profile matches the device model and firmware")
        if problems:
            # One report per poll: the core logs each one, and a profile/device mismatch repeats every poll.
            first = problems[0]
            more = f" ({len(problems)} request(s) failed)" if len(problems) > 1 else ""
            sink.add_error(DeviceProtocolError(f"{first}{more}", reason=first.reason))
        if self._unset:
            for name, unset in self._unset.items():
                if values.get(name) == unset and name not in failed:
                    failed[name] = PointError("not_implemented")  # SunSpec's "this device has no such value"
        self._last = (reads, failed)
        if phase.direct and not failed and len(reads) == len(phase.steps):
            # Every block read as planned, in profile order, all points reported: the dict is the reading.
            sink.add(RawReading(values, ts=ts))
            return
        values.update(failed)
        if phase.scaled:
            self._apply_scale_factors(phase, values)
        for name, table in phase.mapped:
            value = values[name]
            if isinstance(value, PointError):
                continue
            # a code maps to its value; a literal (a value of the table) stands for itself
            mapped = table.get(value)
            if mapped is not None:
                values[name] = int(mapped) if float(mapped).is_integer() else mapped
            elif value not in table.values():
                values[name] = PointError("unknown_code")
        sink.add(RawReading({n: values[n] for n in phase.report}, ts=ts))

    async def _read_block(self, step: _Step, reads: list[tuple[Block, list[Any]]], values: dict[str, Any],
                          failed: dict[str, PointError], problems: list[DeviceProtocolError]) -> None:
        assert self.bus is not None
        c = self.conn
        block = step.block
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
                    await self._read_block(self._compile(part), reads, values, failed, problems)
                return
            problems.append(exc)
            for it in block.items:
                failed[it.key] = PointError(exc.reason)
            return
        except (DeviceTimeout, FrameError) as exc:
            if not reads and not failed:
                raise
            # Part of the device answered: report the rest with the reason and go on.
            if isinstance(exc, FrameError):
                problems.append(exc)
            for it in block.items:
                failed[it.key] = PointError(exc.reason)
            return
        reads.append((block, data))
        try:
            values.update(zip(step.names, step.decoder.decode(data), strict=True))
        except (DecodeError, ValueError, IndexError, struct.error):
            # The block as a whole does not decode (a short answer): find out point by point.
            for it in block.items:
                off = it.address - block.start
                try:
                    values[it.key] = self._value(self.points[it.key], data[off:off + it.width])
                except (DecodeError, ValueError, IndexError):
                    values[it.key] = PointError("decode_error")

    def _apply_scale_factors(self, phase: _Phase, values: dict[str, Any]) -> None:
        for name, sf_name in phase.scaled:
            value = values[name]
            if isinstance(value, PointError):
                continue
            sf = values.get(sf_name)
            if isinstance(sf, PointError) or sf is None:
                values[name] = PointError("decode_error")
            elif sf == -32768:  # SunSpec "not implemented"
                values[name] = PointError("not_implemented")
            else:
                values[name] = apply_scale_factor(value, sf)

    def _value(self, p: ModbusPoint, w: list[Any]) -> Any:
        if p.table in BIT_TABLES:
            return bool(w[0])
        byte_order, word_order = self.profile.order_of(p)
        return decode(w, p.kind, byte_order, word_order, p.bit)


class _Step:
    """One request of a compiled plan: the block, its decoder, and its points' names in decoder order."""

    __slots__ = ("block", "decoder", "names")

    def __init__(self, block: Block, decoder: BlockDecoder, names: tuple[str, ...]) -> None:
        self.block = block
        self.decoder = decoder
        self.names = names


class _Phase:
    """The compiled plan of one set of due points.

    Attributes:
        steps: the requests, with their decoders.
        report: the names the reading carries, in profile order (``report: false`` points left out).
        scaled: (point, its scale factor point) for the due points that have one.
        mapped: (point, its code -> value map) for the due points that have one.
        direct: the decoded values of a complete poll are the reading as they come.
    """

    __slots__ = ("direct", "mapped", "report", "scaled", "steps")

    def __init__(self, steps: list[_Step], names: frozenset[str], profile: ModbusProfile,
                 order: dict[str, int]) -> None:
        self.steps = steps
        self.report = tuple(sorted((p.name for p in profile.points if p.name in names and p.report),
                                   key=order.__getitem__))
        self.scaled = tuple((p.name, p.scale_factor_point) for p in profile.points
                            if p.name in names and p.scale_factor_point)
        # The blocks' points, in request order, are exactly the report in profile order (no scale
        # factors, no hidden or shared registers): a poll that read every block needs no reordering.
        self.mapped = tuple((p.name, p.map) for p in profile.points if p.name in names and p.map)
        self.direct = not self.scaled and not self.mapped and tuple(n for st in steps for n in st.names) == self.report

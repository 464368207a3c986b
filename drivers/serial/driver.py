"""The ``serial`` driver: UART/USB devices described by a profile, on pyserial's asyncio layer.

One instance serves one device on one port. Streaming devices (particulate
sensors, GNSS) run as a push driver: ``run(sink)`` reads forever and hands a
reading per decoded frame (optionally at most one per ``min_interval``,
last or mean). Query devices are polled: ``poll(sink)`` sends the profile's
query and waits for one answer. A vanished or unopenable port raises
``DeviceUnreachable`` with a hint; the supervisor marks the device offline,
backs off and reopens, which also finds an adapter that came back under
the same ``/dev/serial/by-id`` name. Bad checksums are counted and, when
they keep coming, reported as a ``checksum`` protocol error; nothing a
device sends can crash the driver.
"""

from __future__ import annotations

import asyncio
import errno
import re
import termios
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import serial
from fieldgate.checks import DoctorDevice, Finding, serial_port_findings
from fieldgate.codecs.fields import BinaryDecoder, TextDecoder
from fieldgate.codecs.frames import make_framer
from fieldgate.driver import DeviceContext, ReadingSink
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from fieldgate.schema import IMPLAUSIBLE_TIME, PointError, Quality, RawReading, plausible_time
from serial_asyncio_fast import create_serial_connection

from . import nmea
from .profile import SerialConnection, SerialProfile

_MAX_PENDING = 64 * 1024  # bytes received but not yet framed; beyond this the oldest are dropped
_UNSTABLE_NAME = re.compile(r"^/dev/tty(USB|ACM)\d+$")


class _PortProtocol(asyncio.Protocol):
    """Collects received bytes and wakes the reader; records a lost port."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.dropped = 0
        self.lost: BaseException | None = None
        self.closed = asyncio.Event()
        self.wake = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.pending += data
        if len(self.pending) > _MAX_PENDING:  # the reader stalled; keep the newest bytes
            cut = len(self.pending) - _MAX_PENDING
            del self.pending[:cut]
            self.dropped += cut
        self.wake.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or EOFError("port closed")
        self.closed.set()
        self.wake.set()

    def take(self) -> bytes:
        data = bytes(self.pending)
        self.pending.clear()
        self.wake.clear()
        return data


def open_hint(port: str, exc: BaseException, lost: bool = False) -> str:
    """One sentence a technician can act on when a port cannot be opened or vanished."""
    code = getattr(exc, "errno", None)
    if code is None and isinstance(exc.__cause__, OSError):
        code = exc.__cause__.errno
    stable = ("; USB adapters change /dev/ttyUSB numbers when replugged: use the stable name "
              "from `ls -l /dev/serial/by-id/`") if _UNSTABLE_NAME.match(port) else ""
    if code in (errno.EACCES, errno.EPERM):
        return ("permission denied: add the gateway's user to the 'dialout' group "
                "(sudo usermod -aG dialout fieldgate) and restart the service")
    if code == errno.ENOENT:
        return f"{port} does not exist: is the adapter plugged in? `ls -l /dev/serial/by-id/` lists ports{stable}"
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in str(exc).lower():
        # Not "set exclusive: false": two programs reading one port each get part of its bytes.
        return (f"another program holds the port: find it with `fuser -v {port}` (a second gateway, "
                "ModemManager, screen, minicom) and stop it; the lock keeps it from taking the device's frames")
    if lost:
        return ("the adapter was unplugged or reset; the gateway reopens the port when it returns"
                f"{stable or ' (a /dev/serial/by-id/... name survives replugging)'}")
    return f"check the cable and the adapter{stable}"


class SerialDriver:
    """A serial device described by a profile (stream or query/response)."""

    name: ClassVar[str] = "serial"
    Profile: ClassVar[type[SerialProfile]] = SerialProfile
    Connection: ClassVar[type[SerialConnection]] = SerialConnection

    @staticmethod
    def decode_vector(profile: SerialProfile, vector: Mapping[str, Any]) -> dict[str, Any]:
        """Conformance hook (``DecodesVectors``): one datasheet test vector → raw values, see vectors.py."""
        from .vectors import decode_vector

        return decode_vector(profile, vector)

    @classmethod
    def create(cls, ctx: DeviceContext[SerialProfile, SerialConnection]) -> SerialDriver:
        """The declared factory: a ``StreamingSerialDriver`` for stream-mode devices, a polled one otherwise."""
        mode = ctx.connection.mode or ctx.profile.mode
        return StreamingSerialDriver(ctx) if mode == "stream" else SerialDriver(ctx)

    def __init__(self, ctx: DeviceContext[SerialProfile, SerialConnection]) -> None:
        self.ctx = ctx
        self.profile = ctx.profile
        self.conn = ctx.connection
        self.mode = self.conn.mode or self.profile.mode
        self.query = self.conn.query or self.profile.query
        self.framer = make_framer(self.profile.frame)
        points = [(p.name, p) for p in self.profile.points]
        self.decoder: TextDecoder | BinaryDecoder = (
            TextDecoder(self.profile.frame.patterns, points) if self.profile.frame.is_text
            else BinaryDecoder(points, self.profile.frame.byte_order)
        )
        self.numeric = {p.name for p in self.profile.points if p.value_type not in ("str", "bool")}
        self.unmatched = 0  # lines no pattern matched (other NMEA sentences, prompts, echoes)
        self._fix_ts: float | None = None  # the fix time of the last decoded frame (profile nmea.fix_time)
        self._transport: asyncio.Transport | None = None
        self._proto: _PortProtocol | None = None
        self._bad_run = 0
        self._bad_reported = False
        self._seen_checksums = 0
        self._window: list[dict[str, Any]] = []
        self._last_emit = 0.0

    @staticmethod
    def bus_of(connection: Any) -> str | None:
        """Devices are not multiplexed on one port: no shared bus lock."""
        return None

    @classmethod
    async def doctor(cls, devices: Sequence[DoctorDevice], timeout: float) -> list[Finding]:
        """``fieldgate doctor``: each port named is a serial device node the service may open."""
        ports: dict[str, list[str]] = {}
        for dev in devices:
            if isinstance(dev.connection, SerialConnection) and dev.connection.port.startswith("/"):
                ports.setdefault(dev.connection.port, []).append(dev.id)
        return serial_port_findings(ports)

    # --- open / close -------------------------------------------------------

    async def __aenter__(self) -> Self:
        line = self.conn.line(self.profile)
        port = self.conn.port
        proto = _PortProtocol()
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await create_serial_connection(
                loop, lambda: proto, port, baudrate=line.baudrate, bytesize=line.bytesize,
                parity=line.parity, stopbits=line.stopbits, exclusive=self.conn.exclusive or None,
            )
        except termios.error as exc:  # not an OSError: the port exists but refuses the line settings
            raise DeviceUnreachable(
                f"cannot set {port} to {line.baudrate} {line.bytesize}{line.parity}{_stop(line.stopbits)}: {exc}",
                hint="the adapter does not support these settings; a pty (simulator) supports only 8N1") from exc
        except (serial.SerialException, OSError, ValueError) as exc:
            what = "another program holds its lock" if _locked(exc) else _short(exc)
            raise DeviceUnreachable(f"cannot open {port}: {what}", hint=open_hint(port, exc)) from exc
        self._transport, self._proto = transport, proto
        self.framer.reset()
        self.ctx.log.info("opened %s at %d %d%s%s (%s mode)", port, line.baudrate, line.bytesize, line.parity,
                          _stop(line.stopbits), self.mode)
        if self.profile.init:
            self._write(self.profile.init)
        return self

    async def __aexit__(self, *exc: object) -> None:
        transport, proto = self._transport, self._proto
        self._transport = None
        if transport is None or proto is None:
            return
        # abort, not close: close() drains output first, which blocks on a vanished port.
        # A lost port is already closing: closing it twice breaks the transport.
        if not transport.is_closing():
            transport.abort()
        try:
            async with asyncio.timeout(2.0):
                await proto.closed.wait()
        except TimeoutError:
            self.ctx.log.debug("port close did not complete in 2s")

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    # --- reading ------------------------------------------------------------

    async def _chunk(self, deadline: float | None) -> bytes:
        """The bytes received so far, waiting until some arrive or ``deadline`` (loop time).

        Raises:
            DeviceUnreachable: the port went away.
            TimeoutError: nothing arrived before the deadline.
        """
        proto = self._proto
        assert proto is not None
        while not proto.pending:
            if proto.lost is not None:
                raise DeviceUnreachable(f"{self.conn.port} went away: {_short(proto.lost)}",
                                        hint=open_hint(self.conn.port, proto.lost, lost=True)) from proto.lost
            if deadline is None:
                await proto.wake.wait()
            else:
                async with asyncio.timeout_at(deadline):
                    await proto.wake.wait()
            if not proto.pending:
                proto.wake.clear()
        return proto.take()

    def _decode(self, frame: Any) -> dict[str, Any] | None:
        values = self.decoder.decode(frame)
        if values is None:
            self.unmatched += 1
        elif self.profile.nmea is not None:
            # per frame, before any aggregation: signs belong to their own sentence, and the time
            # a reading carries is that of its last frame
            self._fix_ts = nmea.apply(self.profile.nmea, values)
        return values

    def _reading(self, values: dict[str, Any]) -> RawReading:
        """A reading of decoded values, stamped with the device's fix time when the profile asks for it."""
        ts, self._fix_ts = self._fix_ts, None
        if ts is None:
            return RawReading(values)
        if plausible_time(ts):
            return RawReading(values, ts=ts)
        # a receiver clock before 2000 or in the future (GPS week rollover, no almanac yet)
        doubt = (Quality.UNCERTAIN, IMPLAUSIBLE_TIME)
        return RawReading(values, quality=dict.fromkeys(values, doubt))

    def _checksum_health(self, sink: ReadingSink, good: int) -> None:
        """Report a run of bad checksums once; a good frame ends the run."""
        stats = self.framer.stats
        bad = stats.bad_checksums - self._seen_checksums
        self._seen_checksums = stats.bad_checksums
        if good:
            self._bad_run = bad
            self._bad_reported = False
        else:
            self._bad_run += bad
        if bad:
            self.ctx.log.debug("%d bad checksum(s), %d in a row, %d in total", bad, self._bad_run,
                               stats.bad_checksums)
        if self._bad_run >= self.conn.bad_frames_degraded and not self._bad_reported:
            self._bad_reported = True
            sink.add_error(self._checksum_error())

    def _checksum_error(self) -> DeviceProtocolError:
        stats = self.framer.stats
        algo = self.profile.frame.checksum.type if self.profile.frame.checksum else "checksum"
        return DeviceProtocolError(
            f"{self._bad_run} frame(s) in a row failed the {algo} check ({stats.bad_checksums} in total)",
            reason="checksum",
            hint="electrical noise or a wrong baud rate: check the ground wire, cable length and line settings",
        )

    def _silence_error(self, waited: float) -> DeviceTimeout:
        stats = self.framer.stats
        if stats.garbage_bytes or stats.oversize or self.unmatched:
            hint = (f"bytes arrive but no frame decodes ({stats.garbage_bytes} garbage bytes, {self.unmatched} "
                    "unmatched lines): check baudrate/parity/stopbits and that the profile fits the device")
        else:
            hint = "nothing received: check power, TX/RX wiring (device TX to adapter RX) and the device's mode"
        return DeviceTimeout(f"no valid frame from {self.conn.port} for {waited:g}s", hint=hint)

    # --- query mode ---------------------------------------------------------

    async def poll(self, sink: ReadingSink) -> None:
        """Query mode: send the query, hand the first decoded answer to ``sink``.

        In stream mode a poll waits for the next decoded frame instead.

        Raises:
            DeviceUnreachable: the port went away.
            DeviceTimeout: no answer within ``answer_timeout``.
            DeviceProtocolError: answers came but failed their checksum (reason ``checksum``).
        """
        assert self._proto is not None
        loop = asyncio.get_running_loop()
        if self.mode == "query":
            self._proto.take()  # a late answer to an earlier query must not be taken for this one
            self.framer.reset()
            assert self.query is not None
            self._write(self.query)
        before = self.framer.stats.bad_checksums
        deadline = loop.time() + self.conn.answer_timeout
        while True:
            try:
                chunk = await self._chunk(deadline)
            except TimeoutError:
                if self.framer.stats.bad_checksums > before:
                    self._bad_run = self.framer.stats.bad_checksums - before
                    raise self._checksum_error() from None
                raise DeviceTimeout(f"no answer from {self.conn.port} within {self.conn.answer_timeout:g}s",
                                    hint=self._silence_error(self.conn.answer_timeout).hint) from None
            for frame in self.framer.feed(chunk):
                values = self._decode(frame)
                if values is not None:
                    sink.add(self._reading(values))
                    if self.framer.stats.bad_checksums > before:
                        sink.add_error(DeviceProtocolError(
                            f"{self.framer.stats.bad_checksums - before} bad answer(s) before a good one",
                            reason="checksum"))
                    self._seen_checksums = self.framer.stats.bad_checksums
                    return


class StreamingSerialDriver(SerialDriver):
    """A serial device that sends frames on its own: the supervisor runs ``run``.

    ``SerialDriver.create(ctx)`` returns an instance of this class for stream-mode
    devices: the supervisor tells push drivers from polled ones by the
    presence of ``run``, and a query device must not have it.
    """

    async def run(self, sink: ReadingSink) -> None:
        """Decode frames until cancelled (stream mode only: see ``StreamingSerialDriver``).

        Raises:
            DeviceUnreachable: the port went away.
            DeviceTimeout: no valid frame for ``stale_after``.
        """
        loop = asyncio.get_running_loop()
        stale = self.conn.stale_after or None
        last_good = loop.time()
        while True:
            deadline = last_good + stale if stale else None
            try:
                chunk = await self._chunk(deadline)
            except TimeoutError:
                raise self._silence_error(loop.time() - last_good) from None
            good = 0
            for frame in self.framer.feed(chunk):
                values = self._decode(frame)
                if values is not None:
                    good += 1
                    self._emit(values, sink)
            if good:
                last_good = loop.time()
            self._checksum_health(sink, good)

    def _emit(self, values: dict[str, Any], sink: ReadingSink) -> None:
        interval = self.conn.min_interval
        if not interval:
            sink.add(self._reading(values))
            return
        self._window.append(values)
        now = time.monotonic()
        if now - self._last_emit < interval:
            return
        self._last_emit = now
        window, self._window = self._window, []
        if self.conn.aggregate == "last" or len(window) == 1:
            merged: dict[str, Any] = {}
            for v in window:
                merged.update(v)
            sink.add(self._reading(merged))
            return
        self._fix_ts = None  # a mean over the window is of no single fix
        sink.add(RawReading(_mean(window, self.numeric)))


def _mean(window: list[dict[str, Any]], numeric: set[str]) -> dict[str, Any]:
    """Per point: the mean of its numbers over the window; other values: the last one."""
    out: dict[str, Any] = {}
    sums: dict[str, tuple[float, int]] = {}
    for values in window:
        for name, v in values.items():
            if name in numeric and isinstance(v, int | float) and not isinstance(v, bool):
                total, count = sums.get(name, (0.0, 0))
                sums[name] = (total + v, count + 1)
            elif name not in sums:
                out[name] = v
    for name, (total, count) in sums.items():
        out[name] = total / count
    for name, value in list(out.items()):
        if value is None and name in numeric:
            out[name] = PointError("no_value")
    return out


def _locked(exc: BaseException) -> bool:
    """pyserial's failed ``flock`` of an exclusive open (another process holds the port's lock)."""
    return getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK) and "lock" in str(exc).lower()


_ERRNO_TAG = re.compile(r"\[Errno -?\d+\] ")


def _short(exc: BaseException) -> str:
    # pyserial wraps the OSError's text, "[Errno N] ..." included, in its own "[Errno N] ...": once is enough.
    text = _ERRNO_TAG.sub("", str(exc)) or type(exc).__name__
    return text.splitlines()[0][:200]


def _stop(bits: float) -> str:
    return str(int(bits)) if bits in (1, 2) else str(bits)

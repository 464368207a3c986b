"""The bus: one owner per serial port or TCP endpoint, shared by its devices.

Every Modbus request of every device on one RS-485 line (or one TCP endpoint)
goes through one ``ModbusBus``: one pymodbus client, one lock (``BusTurns``:
FIFO for reads, so devices with different poll rates take turns fairly request
by request; a write goes next after the request in flight), the inter-frame
silence the serial line spec requires before each frame, and a per-unit
backoff: a unit that stopped answering is skipped
without touching the line until its backoff expires, so a dead slave costs
its timeout once per backoff period instead of once per poll.

pymodbus is used with ``retries=0`` and no automatic reconnect; retries,
timeouts and reconnects are done here, per device, where they can be
reported with a reason and a hint.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable, DriverError
from fieldgate.tasks import cancel_and_wait
from fieldgate.turns import BusTurns

from . import compat, frames
from .profile import ModbusConnection

log = logging.getLogger(__name__)

#: Bits per character on an RTU line: start + 8 data + parity or 2nd stop + stop.
BITS_PER_CHAR = 11
#: Wait after a broadcast before the next frame (Modbus over serial line spec, 2.4.1: "turnaround delay").
TURNAROUND_DELAY = 0.1


class _QuietPymodbus(logging.Filter):
    """pymodbus logs every timeout at ERROR and every failed connect at WARNING.

    The bus reports the same events once, with a device name and a hint; the
    library's copies are kept only while this module logs at DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return log.isEnabledFor(logging.DEBUG)


logging.getLogger("pymodbus.logging").addFilter(_QuietPymodbus())


def inter_frame_silence(baudrate: int) -> float:
    """Silence before a frame: 3.5 character times, fixed 1.75 ms above 19200 baud (serial line spec 2.5.1.1)."""
    if baudrate > 19200:
        return 0.00175
    return 3.5 * BITS_PER_CHAR / baudrate


def line_time(n_bytes: int, baudrate: int) -> float:
    """Seconds ``n_bytes`` take on the wire at ``baudrate``."""
    return n_bytes * BITS_PER_CHAR / baudrate


class ExceptionResponse(DeviceProtocolError):
    """The device answered a request with a Modbus exception code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, reason=f"exception:{code:02d}")
        self.code = code


class FrameError(DeviceProtocolError):
    """An answer came, but not a valid one for the request (``reason``: bad_frame, wrong_unit, ...)."""


class _StaleFrame(FrameError):
    """RTU: a sound frame from the unit that answers another request (e.g. late); drain and ask again."""


#: What a technician checks for each kind of bad answer; (TCP hint, RTU hint).
_HINTS = {
    frames.BAD_FRAME: ("the device does not speak Modbus TCP on this port; an RS-485 serial server needs "
                       "transport rtu-over-tcp", "check baud rate, parity, stop bits and the A/B wiring"),
    frames.BAD_CRC: ("noise between the serial server and the device: check termination, biasing and shielding",
                     "noise on the line: check termination, biasing, shielding and the baud rate"),
    frames.WRONG_UNIT: ("the device answers as another unit: set its unit id in the connection",
                        "two devices may share one unit id, or the device answers as another: check the ids"),
    frames.WRONG_TRANSACTION: ("answers arrive late or mixed up: raise the timeout, or check that no second "
                               "client uses a device that serves one at a time", ""),
    frames.BAD_LENGTH: ("the answer does not fit the request: lower the profile's max_registers if the device "
                        "caps reads",) * 2,
    frames.WRONG_FUNCTION: ("the device answered another register table: check the profile's tables "
                            "(holding vs input) for this model",) * 2,
    frames.INCOMPLETE: ("the answer stopped midway: the device or a gateway in between is overloaded",
                        "the answer stopped midway: check the baud rate and the serial server's packet timeout"),
}


class _Pending:
    """The one request in flight on a bus: what it must get back, and what came so far."""

    __slots__ = ("expect", "failed", "note", "received", "sent_at")

    def __init__(self, expect: frames.Expect, loop: asyncio.AbstractEventLoop) -> None:
        self.expect = expect
        self.sent_at: float | None = None
        self.received = b""
        self.note: tuple[str, str] | None = None
        self.failed: asyncio.Future[DriverError] = loop.create_future()


@dataclass(slots=True)
class _Unit:
    failures: int = 0
    until: float = 0.0
    last: DriverError | None = None  # why it is skipped


_READERS = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}


class ModbusBus:
    """Owner of one Modbus line; get it with ``SharedResources.acquire(bus_of(conn), ...)``.

    Args:
        key: the bus key (serial port path or ``tcp:host:port``).
        conn: the first device's connection; line settings must match for every device.
    """

    def __init__(self, key: str, conn: ModbusConnection) -> None:
        self.key = key
        self.conn = conn
        self.serial = conn.transport == "rtu"
        self.rtu_framing = conn.transport in ("rtu", "rtu-over-tcp")
        self.silence = inter_frame_silence(conn.baudrate) if self.serial else 0.0
        self.lock = BusTurns()
        self.client: Any = None
        self.units: dict[int, _Unit] = {}
        self._quiet_from = 0.0  # monotonic time the line went quiet
        self._pending: _Pending | None = None
        self.requests = 0

    def check_compatible(self, conn: ModbusConnection) -> None:
        """Refuse a device whose line settings contradict the bus's.

        Raises:
            DeviceProtocolError: transport or serial settings differ.
        """
        keys = ("transport", "baudrate", "parity", "stopbits", "bytesize") if self.serial else ("transport",)
        diff = [k for k in keys if getattr(conn, k) != getattr(self.conn, k)]
        if diff:
            raise DeviceProtocolError(
                f"devices on {self.key} disagree on {', '.join(diff)}",
                reason="config", hint="all devices on one line need the same transport and serial settings")

    # -- connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the port or socket if it is not open.

        Raises:
            DeviceUnreachable: port missing, busy, not permitted, or refused; with a hint.
        """
        async with self.lock:
            await self._connect()

    async def _connect(self) -> None:
        if self.client is not None and self.client.connected:
            return
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
        from pymodbus.framer import FramerType

        compat.check_version()
        compat.lazy_pdu_text()
        c = self.conn
        if self.client is not None:
            self.client.close()
        if self.serial:
            assert c.serial_port is not None
            _check_serial_port(c.serial_port)
            self.client = AsyncModbusSerialClient(
                c.serial_port, framer=FramerType.RTU, baudrate=c.baudrate, bytesize=c.bytesize,
                parity=c.parity, stopbits=c.stopbits, timeout=c.timeout, retries=0, reconnect_delay=0,
                name=c.serial_port, trace_packet=self._packet, trace_connect=self._connection)
        else:
            framer = FramerType.RTU if self.rtu_framing else FramerType.SOCKET
            self.client = AsyncModbusTcpClient(
                c.host or "", port=c.tcp_port, framer=framer, timeout=c.timeout, retries=0, reconnect_delay=0,
                name=self.key, trace_packet=self._packet, trace_connect=self._connection)
        # A silent unit must not make pymodbus drop a connection shared with healthy units.
        self.client.set_max_no_responses(1_000_000)
        compat.widen_receive_buffer(self.client)
        ok = await self.client.connect()
        if not ok:
            self.client.close()
            self.client = None
            if self.serial:
                raise DeviceUnreachable(
                    f"cannot open serial port {c.serial_port}",
                    hint="is another program (or another fieldgate) using the port? check with `fuser`")
            raise await _diagnose_tcp(c.host or "", c.tcp_port, c.timeout)
        self._quiet_from = time.monotonic()
        log.info("connected to %s", self.key)

    async def close(self) -> None:
        """Close the port or socket (the last device on the bus left)."""
        async with self.lock:
            if self.client is not None:
                self.client.close()
                self.client = None

    # -- requests -----------------------------------------------------------------------------

    async def read(self, unit: int, table: str, start: int, count: int, *, timeout: float, retries: int,
                   backoff: float, backoff_max: float) -> list[int] | list[bool]:
        """Read ``count`` registers or bits, serialized with every other request on the bus.

        ``timeout`` runs from the moment the request is written, and an answer that arrived while
        the event loop was busy elsewhere is taken, not timed out.

        Raises:
            DeviceTimeout: nothing came back after the retries, or the unit is in backoff after that.
            FrameError: bytes came back, but no valid answer to the request (``reason`` names why:
                bad_frame, bad_crc, wrong_unit, wrong_transaction, bad_length, wrong_function,
                incomplete_frame), after the retries, or the unit is in backoff after that.
            ExceptionResponse: the device answered with a Modbus exception.
            DeviceUnreachable: the port or connection is gone.
        """
        state = self.unit_state(unit)
        async with self.lock:
            await self._connect()
            attempts = stale = 0
            while True:
                try:
                    resp = await self._request(unit, table, start, count, timeout)
                except _StaleFrame as exc:
                    # A late answer to an earlier request (RTU frames carry no transaction id).
                    # Let the real answer arrive and be dropped, then ask again, once.
                    stale += 1
                    if stale > 1:
                        raise FrameError(str(exc.args[0]), reason=exc.reason, hint=exc.hint) from exc
                    log.debug("%s: %s; draining the line", self.key, exc)
                    await asyncio.sleep(timeout)  # the line's own pace: the late frame needs this long at most
                    continue
                except (DeviceTimeout, FrameError) as exc:
                    attempts += 1
                    if attempts <= retries:
                        continue
                    pause = self.unit_failed(state, exc, backoff, backoff_max)
                    if isinstance(exc, FrameError):
                        raise FrameError(f"{exc.args[0]} ({retries + 1} attempt(s)); skipping it for {pause:g}s",
                                         reason=exc.reason, hint=exc.hint) from None
                    raise DeviceTimeout(
                        f"unit {unit} on {self.key}: no answer to {table} {start}+{count} within {timeout:g}s"
                        f" ({retries + 1} attempt(s)); skipping it for {pause:g}s",
                        hint="check wiring (A/B), unit id, baud rate and parity" if self.rtu_framing else
                        "check the unit id; a gateway may not forward to that unit") from None
                state.failures, state.until, state.last = 0, 0.0, None
                if resp.isError():
                    code = int(getattr(resp, "exception_code", 0) or 0)
                    raise ExceptionResponse(code, f"unit {unit} answered {table} {start}+{count} with "
                                                  f"exception {code:02d}")
                return (resp.bits if table in ("coil", "discrete") else resp.registers)[:count]  # type: ignore[no-any-return]  # pymodbus is untyped here

    # -- the per-unit backoff, one for reads and writes ------------------------------------------

    def unit_state(self, unit: int) -> _Unit:
        """The unit's backoff state; raises while it lasts (nothing is sent to a unit in backoff).

        Raises:
            DeviceTimeout: the unit stopped answering; the error says when it is tried again.
            FrameError: its last answers were garbled (the same reason again).
        """
        state = self.units.setdefault(unit, _Unit())
        left = state.until - time.monotonic()
        if left > 0:
            last = state.last
            if isinstance(last, FrameError):
                raise FrameError(f"{last.args[0]}; next try in {left:.1f}s", reason=last.reason, hint=last.hint)
            raise DeviceTimeout(f"unit {unit} on {self.key} stopped answering; next try in {left:.1f}s")
        return state

    @staticmethod
    def unit_failed(state: _Unit, exc: DriverError, backoff: float, backoff_max: float) -> float:
        """Start (or double) the unit's backoff after a failed request; returns the pause in seconds."""
        state.failures += 1
        pause = min(backoff_max, backoff * 2 ** (state.failures - 1))
        state.until = time.monotonic() + pause
        state.last = exc if isinstance(exc, FrameError) else None
        return float(pause)

    # -- one exchange -------------------------------------------------------------------------

    def _packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's packet hook: time the request from its write; show the framer only our answer."""
        p = self._pending
        if sending:
            if p is not None and p.sent_at is None:
                p.sent_at = asyncio.get_running_loop().time()
                if not self.rtu_framing and len(data) >= 2:
                    p.expect = frames.Expect(p.expect.unit, p.expect.function, p.expect.count,
                                             tid=int.from_bytes(data[:2], "big"))
            return data
        if p is None or p.sent_at is None or p.failed.done():
            return b""  # nothing asked: a late or unsolicited answer, dropped
        p.received = data
        verdict = frames.check(p.expect, data)
        if verdict.kind == "answer":
            return data[verdict.start:verdict.end]
        if verdict.kind == "wait":
            p.note = verdict.note or p.note
            return b""
        cls = _StaleFrame if verdict.kind == "stale" else FrameError
        p.failed.set_result(self._frame_error(cls, p.expect, verdict.reason, verdict.detail))
        return b""

    def _connection(self, connected: bool) -> None:
        p = self._pending
        if not connected and p is not None and not p.failed.done():
            p.failed.set_result(DeviceUnreachable(f"connection to {self.key} lost", hint="the device closed it"))

    def _frame_error(self, cls: type[FrameError], expect: frames.Expect, reason: str, detail: str) -> FrameError:
        hint = _HINTS.get(reason, ("", ""))[1 if self.rtu_framing else 0] or None
        return cls(f"unit {expect.unit} on {self.key}: {detail}", reason=reason, hint=hint)

    async def _request(self, unit: int, table: str, start: int, count: int, timeout: float, *,
                       send: tuple[int, Callable[[], Awaitable[Any]]] | None = None) -> Any:
        """One exchange; ``send`` (function code, the client call) makes it a write (drivers/modbus/write.py)."""
        # Imported per request before: an import statement costs microseconds even when cached (issue 16).
        ConnectionException, ModbusIOException = _pymodbus_errors()  # exception classes

        if self.silence:
            await self._wait_silence()
        loop = asyncio.get_running_loop()
        # pymodbus's own timer is only a backstop: the answer is timed here, from the write.
        compat.set_answer_timeout(self.client, timeout * 2 + 1.0)
        function = send[0] if send is not None else frames.READ_FUNCTIONS[table]
        p = _Pending(frames.Expect(unit, function, count), loop)
        self._pending = p
        self.requests += 1
        created = loop.time()
        call = asyncio.ensure_future(send[1]() if send is not None else
                                     getattr(self.client, _READERS[table])(start, count=count, device_id=unit))
        try:
            while True:
                left = (p.sent_at if p.sent_at is not None else created) + timeout - loop.time()
                if left > 0:
                    await _first_of(loop, call, p.failed, left)
                else:
                    # The time is up, but the loop may have been busy elsewhere (a host stall) while the
                    # answer sat in the socket: let it read what is there before calling it a timeout.
                    for _ in range(2):
                        await asyncio.sleep(0)
                if call.done():
                    return call.result()
                if p.failed.done():
                    raise p.failed.result()
                if left <= 0:
                    reason, detail = frames.at_timeout(p.expect, p.received, p.note)
                    if reason == frames.TIMEOUT:
                        raise DeviceTimeout(f"unit {unit} on {self.key}: no answer within {timeout:g}s")
                    raise self._frame_error(FrameError, p.expect, reason, f"{detail} within {timeout:g}s")
        except ModbusIOException as exc:
            if self.client is not None and not self.client.connected:
                self.client = None
                raise DeviceUnreachable(f"connection to {self.key} lost", hint="the device closed it") from exc
            raise DeviceTimeout(str(exc)) from exc
        except (ConnectionException, DeviceUnreachable) as exc:
            self.client = None
            if isinstance(exc, DeviceUnreachable):
                raise
            raise DeviceUnreachable(f"connection to {self.key} lost: {exc}") from exc
        except FrameError as exc:
            if not self.rtu_framing and exc.reason in (frames.BAD_FRAME, frames.BAD_LENGTH, frames.INCOMPLETE):
                # The byte stream lost its frame boundaries: start the next request on a new connection.
                self.client.close()
                self.client = None
            raise
        finally:
            self._pending = None
            self._quiet_from = time.monotonic()
            await cancel_and_wait(call)

    async def broadcast_write(self, address: int, values: list[int]) -> None:
        """Write holding registers on every unit (unit id 0): no answer comes, so wait the turnaround delay."""
        async with self.lock.first():
            await self._connect()
            await self._wait_silence()
            try:
                await self.client.write_registers(address, values, device_id=0, no_response_expected=True)
            finally:
                self._quiet_from = time.monotonic()
            await asyncio.sleep(TURNAROUND_DELAY)

    async def _wait_silence(self) -> None:
        if self.silence:
            wait = self._quiet_from + self.silence - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)


async def _first_of(loop: asyncio.AbstractEventLoop, a: asyncio.Future[Any], b: asyncio.Future[Any],
                    timeout: float) -> None:
    """Wait until ``a`` or ``b`` is done or ``timeout`` passed: ``asyncio.wait(FIRST_COMPLETED)`` without
    its sets and per-call checks (it runs once per request; issue 16 measured it)."""
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_f: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    a.add_done_callback(wake)
    b.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        a.remove_done_callback(wake)
        b.remove_done_callback(wake)


@functools.cache
def _pymodbus_errors() -> tuple[type[Exception], type[Exception]]:
    """pymodbus's (ConnectionException, ModbusIOException), imported once (drivers import pymodbus lazily)."""
    from pymodbus.exceptions import ConnectionException, ModbusIOException

    return ConnectionException, ModbusIOException


def _check_serial_port(path: str) -> None:
    """Fail early, with a hint, on the two most common RS-485 setup errors."""
    if not os.path.exists(path):
        raise DeviceUnreachable(
            f"serial port {path} missing",
            hint="check the USB adapter is plugged in; prefer the stable /dev/serial/by-id/... name")
    if not os.access(path, os.R_OK | os.W_OK):
        raise DeviceUnreachable(
            f"permission denied on serial port {path}",
            hint="add the fieldgate user to the dialout group (sudo usermod -aG dialout fieldgate)")


async def _diagnose_tcp(host: str, port: int, timeout: float) -> DeviceUnreachable:
    """Why a TCP connect failed (pymodbus only says it did): one plain connect attempt."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        return DeviceUnreachable(f"{host}:{port} accepted a test connection but not the Modbus client",
                                 hint="the device may allow only one connection: is another client connected?")
    except ConnectionRefusedError:
        return DeviceUnreachable(f"{host}:{port} refused the connection",
                                 hint=f"port closed: check the Modbus TCP port, usually 502 (configured {port})")
    except TimeoutError:
        return DeviceUnreachable(f"no answer from {host}:{port} within {timeout:g}s",
                                 hint="check the IP address, cabling and firewall")
    except OSError as exc:
        hint = "check the host name" if exc.errno in (None, errno.ENOENT) or "Name" in str(exc) else \
            "check the IP address and network route"
        return DeviceUnreachable(f"cannot reach {host}:{port}: {exc.strerror or exc}", hint=hint)

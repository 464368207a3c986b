"""The bus: one owner per serial port or TCP endpoint, shared by its devices.

Every Modbus request of every device on one RS-485 line (or one TCP endpoint)
goes through one ``ModbusBus``: one pymodbus client, one ``asyncio.Lock``
(FIFO, so devices with different poll rates take turns fairly request by
request), the inter-frame silence the serial line spec requires before each
frame, and a per-unit backoff: a unit that stopped answering is skipped
without touching the line until its backoff expires, so a dead slave costs
its timeout once per backoff period instead of once per poll.

pymodbus is used with ``retries=0`` and no automatic reconnect; retries,
timeouts and reconnects are done here, per device, where they can be
reported with a reason and a hint.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable

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


class _StaleFrame(Exception):
    """An answer that does not belong to the request just sent."""


@dataclass(slots=True)
class _Unit:
    failures: int = 0
    until: float = 0.0


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
        self.lock = asyncio.Lock()
        self.client: Any = None
        self.units: dict[int, _Unit] = {}
        self._quiet_from = 0.0  # monotonic time the line went quiet
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

        c = self.conn
        if self.client is not None:
            self.client.close()
        if self.serial:
            assert c.serial_port is not None
            _check_serial_port(c.serial_port)
            self.client = AsyncModbusSerialClient(
                c.serial_port, framer=FramerType.RTU, baudrate=c.baudrate, bytesize=c.bytesize,
                parity=c.parity, stopbits=c.stopbits, timeout=c.timeout, retries=0, reconnect_delay=0,
                name=c.serial_port)
        else:
            framer = FramerType.RTU if self.rtu_framing else FramerType.SOCKET
            self.client = AsyncModbusTcpClient(
                c.host or "", port=c.tcp_port, framer=framer, timeout=c.timeout, retries=0, reconnect_delay=0,
                name=self.key)
        # A silent unit must not make pymodbus drop a connection shared with healthy units.
        self.client.set_max_no_responses(1_000_000)
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

        Raises:
            DeviceTimeout: no valid answer after the retries (a CRC error looks like a timeout),
                or the unit is in backoff.
            ExceptionResponse: the device answered with a Modbus exception.
            DeviceUnreachable: the port or connection is gone.
            DeviceProtocolError: the answer does not fit the request.
        """
        state = self.units.setdefault(unit, _Unit())
        left = state.until - time.monotonic()
        if left > 0:
            raise DeviceTimeout(f"unit {unit} on {self.key} stopped answering; next try in {left:.1f}s")
        async with self.lock:
            await self._connect()
            timeouts = stale = 0
            while True:
                try:
                    resp = await self._request(unit, table, start, count, timeout)
                except _StaleFrame as exc:
                    # A late answer to an earlier request (RTU frames carry no transaction id).
                    # Let the real answer arrive and be dropped, then ask again, once.
                    stale += 1
                    if stale > 1:
                        raise DeviceProtocolError(f"unit {unit} on {self.key}: {exc}", reason="decode_error") from exc
                    log.debug("%s: %s; draining the line", self.key, exc)
                    await asyncio.sleep(timeout)
                    continue
                except DeviceTimeout:
                    timeouts += 1
                    if timeouts <= retries:
                        continue
                    state.failures += 1
                    pause = min(backoff_max, backoff * 2 ** (state.failures - 1))
                    state.until = time.monotonic() + pause
                    raise DeviceTimeout(
                        f"unit {unit} on {self.key}: no answer to {table} {start}+{count} within {timeout:g}s"
                        f" ({retries + 1} attempt(s)); skipping it for {pause:g}s",
                        hint="check wiring (A/B), unit id, baud rate and parity" if self.rtu_framing else
                        "check the unit id; a gateway may not forward to that unit") from None
                state.failures, state.until = 0, 0.0
                if resp.isError():
                    code = int(getattr(resp, "exception_code", 0) or 0)
                    raise ExceptionResponse(code, f"unit {unit} answered {table} {start}+{count} with "
                                                  f"exception {code:02d}")
                return list(resp.bits if table in ("coil", "discrete") else resp.registers)[:count]

    async def _request(self, unit: int, table: str, start: int, count: int, timeout: float) -> Any:
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        await self._wait_silence()
        self.client.ctx.comm_params.timeout_connect = timeout  # per device, set under the lock
        self.requests += 1
        try:
            async with asyncio.timeout(timeout * 2 + 0.5):  # pymodbus's own timer should fire first
                resp = await getattr(self.client, _READERS[table])(start, count=count, device_id=unit)
        except ModbusIOException as exc:
            if "but received" in str(exc):  # pymodbus: answer from another unit or transaction
                raise _StaleFrame(str(exc)) from exc
            if self.client is not None and not self.client.connected:
                self.client = None
                raise DeviceUnreachable(f"connection to {self.key} lost", hint="the device closed it") from exc
            raise DeviceTimeout(str(exc)) from exc
        except TimeoutError as exc:
            if self.client is not None and not self.client.connected:
                self.client = None
                raise DeviceUnreachable(f"connection to {self.key} lost", hint="the device closed it") from exc
            raise DeviceTimeout(str(exc)) from exc
        except ConnectionException as exc:
            self.client = None
            raise DeviceUnreachable(f"connection to {self.key} lost: {exc}") from exc
        finally:
            self._quiet_from = time.monotonic()
        if not resp.isError():
            got = len(resp.bits) if table in ("coil", "discrete") else len(resp.registers)
            # Bits come padded to a multiple of 8; registers must match exactly.
            if got < count or (table in ("holding", "input") and got != count) or got >= count + 8:
                raise _StaleFrame(f"answer with {got} values to a request for {count}")
        return resp

    async def broadcast_write(self, address: int, values: list[int]) -> None:
        """Write holding registers on every unit (unit id 0): no answer comes, so wait the turnaround delay."""
        async with self.lock:
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

"""The Modbus write path's I/O: one request per point through the line's ``ModbusBus``.

``writeplan.py`` turns engineering values into requests (the inverse of the
read path's decoding, with the same codec); this module sends them: under the
bus lock, ahead of the reads waiting (next after the request in flight), timed
from the write like a read, with the bus's one per-unit backoff (a silent unit
is skipped for its backoff, by reads and writes alike). A write
is never retried: after a timeout the device may have applied it, and a
repeat would break "at most once".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fieldgate.errors import DeviceTimeout

from .bus import ExceptionResponse, FrameError, ModbusBus, _StaleFrame
from .frames import WRITE_FUNCTIONS
from .profile import ModbusConnection
from .writeplan import WriteRefused, WriteRequest, plan_write


async def send(bus: ModbusBus, conn: ModbusConnection, req: WriteRequest) -> None:
    """Send one write and wait for its answer, serialized with every request on the line.

    Raises:
        DeviceTimeout: no answer (or the unit is in its backoff: then nothing is sent).
        FrameError: an answer that is not the write's echo.
        ExceptionResponse: the device refused it (``exception:02`` illegal address, ``:03`` value).
        DeviceUnreachable: the port or connection is gone.
    """
    unit = conn.unit
    state = bus.unit_state(unit)  # a unit in its backoff is skipped, as by reads
    what = f"FC{req.function} at {req.address}"
    async with bus.lock.first():  # next after the request in flight: a command has a deadline
        await bus._connect()

        def call() -> Any:
            client, values = bus.client, list(req.values)
            if req.function == 5:
                return client.write_coil(req.address, bool(values[0]), device_id=unit)
            if req.function == 6:
                return client.write_register(req.address, int(values[0]), device_id=unit)
            if req.function == 15:
                return client.write_coils(req.address, [bool(v) for v in values], device_id=unit)
            return client.write_registers(req.address, [int(v) for v in values], device_id=unit)

        assert req.function in WRITE_FUNCTIONS
        try:
            resp = await bus._request(unit, "coil" if req.function in (5, 15) else "holding", req.address,
                                      len(req.values), conn.timeout, send=(req.function, call))
        except _StaleFrame as exc:
            # No drain-and-ask-again as for reads: asking again is writing again.
            raise FrameError(str(exc.args[0]), reason=exc.reason, hint=exc.hint) from exc
        except (DeviceTimeout, FrameError) as exc:
            # The unit's backoff, the one a failed read sets (bus.unit_failed): a silent unit costs its timeout once.
            pause = bus.unit_failed(state, exc, conn.backoff, conn.backoff_max)
            if isinstance(exc, FrameError):
                raise FrameError(f"{exc.args[0]} (write {what}); skipping it for {pause:g}s", reason=exc.reason,
                                 hint=exc.hint) from None
            raise DeviceTimeout(f"unit {unit} on {bus.key}: no answer to the write {what} within "
                                f"{conn.timeout:g}s; skipping it for {pause:g}s") from None
        state.failures, state.until, state.last = 0, 0.0, None
        if resp.isError():
            code = int(getattr(resp, "exception_code", 0) or 0)
            raise ExceptionResponse(code, f"unit {unit} answered the write {what} with exception {code:02d}")


async def write_points(bus: ModbusBus, conn: ModbusConnection, requests: Sequence[WriteRequest]) -> None:
    """Send the requests in order; the first failure stops the rest (its error names what was written)."""
    done: list[str] = []
    for req in requests:
        try:
            await send(bus, conn, req)
        except Exception as exc:
            if done and hasattr(exc, "args") and exc.args:
                exc.args = (f"{exc.args[0]} (already written: {', '.join(done)})", *exc.args[1:])
            raise
        done.append(req.point)


__all__ = ["WriteRefused", "WriteRequest", "plan_write", "send", "write_points"]

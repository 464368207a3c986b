"""One device's life: open, poll on a drift-free schedule, report state, back off, reopen.

Each device runs in its own task (``poll[<id>]``) on a drift-free monotonic schedule, with a
timeout around every poll (:func:`poll_deadline`, which does not charge a stalled event loop to
the device), capped jittered backoff while it fails, and a state (online / degraded / offline)
with its last error. Devices on one physical line share a bus lock and are polled strictly one at
a time. A device that hangs or whose driver has a bug costs only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .backoff import backoff_delay
from .clock import ClockMonitor
from .config import DeviceSpec
from .driver import (
    AnyDriver,
    DeviceContext,
    Driver,
    PointWrite,
    ServiceDriver,
    SharedResources,
    Writes,
    can_write,
    create_driver,
    driver_status,
)
from .errors import DriverError
from .fanout import Fanout, Output
from .normalize import Normalizer
from .schema import RawReading
from .turns import BusTurns

if TYPE_CHECKING:
    from .profile import BaseProfile

log = logging.getLogger(__name__)

ONLINE, DEGRADED, OFFLINE = "online", "degraded", "offline"

def _json_safe(value: Any) -> Any:
    """``value`` with only JSON types: non-finite floats become None, other objects their ``str``."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


class DeviceLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the device id (journald shows it per device)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("device", (self.extra or {}).get("device"))
        kwargs["extra"] = extra
        return f"[{extra['device']}] {msg}", kwargs


@dataclass(slots=True)
class DeviceStats:
    """What the status page and ``doctor`` show about a device."""

    state: str = OFFLINE
    last_error: str | None = None
    last_error_ts: float | None = None
    last_reading_ts: float | None = None
    polls: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    overruns: int = 0
    last_latency_s: float | None = None
    latency_sum_s: float = 0.0
    latest: dict[str, Any] = field(default_factory=dict)


class _Sink:
    __slots__ = ("errors", "last", "readings", "runner")

    def __init__(self, runner: DeviceRunner) -> None:
        self.runner = runner
        self.readings = 0
        self.errors: list[DriverError] = []
        self.last: RawReading | None = None  # a command's read-back compares it

    def add(self, reading: RawReading) -> None:
        self.readings += 1
        self.last = reading
        self.runner.emit(reading)
        if self.runner.pushing:
            self.runner.pushed_ok()

    def add_error(self, error: DriverError) -> None:
        self.errors.append(error)
        self.runner.log.warning("%s", error)
        if self.runner.pushing:
            # A push driver has no poll end to report at: a partial failure shows at once.
            self.runner._set_state(DEGRADED, str(error))


#: A deadline callback this late means the event loop itself was stalled (a busy or frozen host).
STALL_S = 0.02


@contextlib.asynccontextmanager
async def poll_deadline(seconds: float) -> AsyncIterator[None]:
    """``asyncio.timeout(seconds)`` that does not charge a stall of the event loop to the device.

    If the loop was stalled when the deadline came (its callback ran late by more than ``STALL_S``),
    the answer may be sitting in a socket, unread: the deadline moves on by the time lost, at most
    ``seconds`` in all, so a hung driver is still cancelled, but a device that answered while the
    host was frozen is not called timed out.

    Raises:
        TimeoutError: the body ran past the deadline.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as cm:
        extended = 0.0
        handle: asyncio.TimerHandle | None = None

        def check(when: float) -> None:
            nonlocal extended, handle
            late = loop.time() - when
            if late > STALL_S and extended < seconds:
                grant = min(late, seconds - extended)
                extended += grant
                handle = loop.call_at(loop.time() + grant, check, loop.time() + grant)
            else:
                cm.reschedule(loop.time())  # expire now

        handle = loop.call_at(loop.time() + seconds, check, loop.time() + seconds)
        try:
            yield
        finally:
            handle.cancel()


class DeviceRunner:
    """Runs one device: open, poll on schedule, report state, back off, reopen."""

    def __init__(self, spec: DeviceSpec, gateway_id: str, output: Output | Fanout, clock: ClockMonitor,
                 bus_lock: BusTurns | None, shared: SharedResources) -> None:
        self.spec = spec
        self.cfg = spec.config
        self.output = output
        self.clock = clock
        self.bus_lock = bus_lock
        self.shared = shared
        self.stats = DeviceStats()
        self.log = DeviceLog(logging.getLogger(f"fieldgate.device.{self.cfg.id}"), {"device": self.cfg.id})
        meta: dict[str, Any] = {"driver": spec.driver.name, "profile": spec.config.profile
                                if isinstance(spec.config.profile, str) else "inline"}
        if self.cfg.tags:
            meta["tags"] = dict(self.cfg.tags)
        self.normalizer = Normalizer(gateway_id, self.cfg.id, spec.profile, meta)
        self.rng = random.Random()
        self._reported: tuple[str, str | None] | None = None
        self.pushing = False  # a push driver's run() is active
        self.driver: AnyDriver | None = None  # the open driver instance, while it is open
        # Held around every poll and every command: a command's write and read-back never interleave
        # with a poll of this device (the bus lock keeps them apart from the line's other devices).
        self.io_lock = asyncio.Lock()
        self._open = asyncio.Event()  # set while ``driver`` is open

    def driver_status(self) -> dict[str, Any] | None:
        """What the open driver says about itself (its optional ``status()``), JSON-safe, or None."""
        if self.driver is None:
            return None
        try:
            doc = driver_status(self.driver)
        except Exception as exc:  # a driver's report must not break the status page
            self.log.debug("driver status() failed: %r", exc)
            return None
        return _json_safe(doc) if isinstance(doc, dict) else None

    @property
    def profile(self) -> BaseProfile:
        """The device's profile (what a command may write)."""
        return self.spec.profile

    def writable(self) -> bool | None:
        """Whether the open driver offers the ``write`` hook; None while no driver is open."""
        return None if self.driver is None else can_write(self.driver)

    async def run_command(self, writes: Sequence[PointWrite]) -> tuple[RawReading | None, str | None]:
        """Write ``writes`` (if any), then poll now, between two polls of the schedule (which goes on).

        A write failure counts as a failed poll (device state, log) and the driver's own per-unit
        backoff applies to it as to a read. The read-back poll is an extra poll: its reading is
        published as usual.

        Returns:
            The read-back raw reading (None for a push driver, which cannot be polled) and the
            reason when the read-back failed after a successful write.

        Raises:
            DriverError: the write did not happen or failed (reason ``offline`` when the device is
                not open within its poll timeout, ``not_supported`` without a write hook).
        """
        if self.driver is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.poll_timeout):
                    await self._open.wait()
        # The line first, with a write's priority (next after the poll in flight), then the device: in the
        # polls' order (bus, then device), so the device's own poll never waits for the line holding it.
        async with (self.bus_lock.first() if self.bus_lock is not None else contextlib.nullcontext()), self.io_lock:
            driver = self.driver
            if driver is None:
                raise DriverError(f"{self.cfg.id} is not connected", reason="offline")
            if writes:
                if not isinstance(driver, Writes):
                    raise DriverError(f"driver {self.spec.driver.name!r} cannot write", reason="not_supported")
                try:
                    async with poll_deadline(self.cfg.poll_timeout):
                        await driver.write(writes)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error, reason = self._describe(exc)
                    self._failed(f"write: {error}", reason)
                    raise DriverError(error, reason=reason) from exc
            if isinstance(driver, ServiceDriver) or not isinstance(driver, Driver):
                return None, None
            sink = _Sink(self)
            started = time.monotonic()
            try:
                async with poll_deadline(self.cfg.poll_timeout):
                    await driver.poll(sink)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error, reason = self._describe(exc)
                self._failed(error, reason)
                return None, reason
            self._ok(sink, started)
            return sink.last, None

    def emit(self, raw: RawReading) -> None:
        """Normalize a raw reading and hand it to the output."""
        msg = self.normalizer.normalize(raw, self.clock.synced)
        self.stats.last_reading_ts = raw.ts
        if msg is not None:
            self.stats.latest.update(msg["metrics"])
            self.output.submit(self.cfg.id, msg)

    def _set_state(self, state: str, error: str | None) -> None:
        self.stats.state = state
        if error:
            self.stats.last_error, self.stats.last_error_ts = error, time.time()
        if self._reported != (state, error):
            self._reported = (state, error)
            self.output.device_status(self.cfg.id, state, error)

    def pushed_ok(self) -> None:
        """A push driver delivered data: the device is online and its failures are over."""
        s = self.stats
        s.polls += 1
        self._recovered(ONLINE)
        s.consecutive_failures = 0
        if s.state != ONLINE:
            self._set_state(ONLINE, None)

    def _ok(self, sink: _Sink, started: float) -> None:
        s = self.stats
        s.polls += 1
        s.last_latency_s = time.monotonic() - started
        s.latency_sum_s += s.last_latency_s
        self._recovered(DEGRADED if sink.errors else ONLINE)
        s.consecutive_failures = 0
        if sink.errors:
            self._set_state(DEGRADED, str(sink.errors[-1]))
        else:
            self._set_state(ONLINE, None)

    def _failed(self, error: str, reason: str) -> float:
        s = self.stats
        s.polls += 1
        s.failures += 1
        s.consecutive_failures += 1
        state = OFFLINE if s.consecutive_failures >= self.cfg.offline_after else DEGRADED
        delay = max(self.cfg.poll_interval if s.consecutive_failures == 1 else 0.0,
                    backoff_delay(s.consecutive_failures, self.cfg.poll_interval, self.cfg.backoff_max, self.rng))
        # The retry time said is the one this runner sleeps: drivers' own pauses are theirs to word.
        n = s.consecutive_failures
        polls = "1 failed poll" if n == 1 else f"{n} failed polls in a row"
        level = logging.WARNING if n == 1 or state != s.state else logging.DEBUG
        self.log.log(level, "%s (%s); %s after %s; next try in %.1fs", error, reason, state, polls, delay)
        self._set_state(state, error)
        return delay

    def _recovered(self, state: str) -> None:
        n = self.stats.consecutive_failures
        if n:
            self.log.info("answering again after %d failed poll%s: %s", n, "" if n == 1 else "s", state)

    def _describe(self, exc: BaseException) -> tuple[str, str]:
        if isinstance(exc, DriverError):
            return str(exc), exc.reason
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.cfg.poll_timeout:g}s", "timeout"
        # A driver bug: log the traceback once, keep the gateway and the other devices running.
        self.log.error("driver bug, device isolated: %r", exc, exc_info=exc)
        return f"internal error: {type(exc).__name__}: {exc}", "internal_error"

    async def run(self) -> None:
        """Until cancelled."""
        ctx = DeviceContext(self.cfg.id, self.spec.profile, self.spec.connection, self.cfg.poll_timeout,
                            self.log, self.shared, event=self.output.event)
        loop = asyncio.get_running_loop()
        while True:
            delay = self.cfg.poll_interval
            driver = create_driver(self.spec.driver, ctx)
            opened = False
            try:
                async with asyncio.timeout(self.cfg.poll_timeout):
                    await driver.__aenter__()
                opened = True
                self.driver = driver
                self._open.set()
                if isinstance(driver, ServiceDriver):
                    # Online on the first data, not when the port opens.
                    self.pushing = True
                    try:
                        await driver.run(_Sink(self))
                    finally:
                        self.pushing = False
                    raise DriverError("push driver stopped")
                await self._poll_loop(driver, loop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error, reason = self._describe(exc)
                delay = self._failed(error, reason)
            finally:
                self.driver = None
                self._open.clear()
                if opened:
                    await self._close(driver)
            await asyncio.sleep(delay)

    async def _close(self, driver: AnyDriver) -> None:
        try:
            async with asyncio.timeout(self.cfg.poll_timeout):
                await driver.__aexit__(None, None, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.debug("close failed: %r", exc)

    async def _poll_loop(self, driver: Driver, loop: asyncio.AbstractEventLoop) -> None:
        interval = self.cfg.poll_interval
        start = loop.time()
        k = 0
        while True:
            sink = _Sink(self)
            started = time.monotonic()
            if self.bus_lock is not None:
                async with self.bus_lock, self.io_lock, poll_deadline(self.cfg.poll_timeout):
                    await driver.poll(sink)
            else:
                async with self.io_lock, poll_deadline(self.cfg.poll_timeout):
                    await driver.poll(sink)
            self._ok(sink, started)
            k += 1
            now = loop.time()
            due = start + k * interval
            if due < now:
                # Late (a long poll, or the host stalled): poll now, for the latest slot that has begun,
                # and skip (count) only the slots before it. Skipping a slot that is merely late, as this
                # loop did, lost a reading to every stall as long as the interval.
                missed = int((now - due) // interval)
                self.stats.overruns += missed
                k += missed
                due = now
            await asyncio.sleep(due - now)


"""The supervisor: one task group, one poll loop per device, nothing shared but locks.

Each device runs in its own task (``poll[<id>]``) on a drift-free monotonic
schedule, with a timeout around every poll, capped jittered backoff while it
fails, and a state (online / degraded / offline) with its last error. Devices
on one physical line share a bus lock and are polled strictly one at a time.
A device that hangs or whose driver has a bug costs only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from . import __version__
from .backoff import backoff_delay
from .clock import ClockMonitor
from .config import DeviceSpec, GatewayConfig, LoadedConfig
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
from .normalize import Normalizer
from .reload import RELOAD_TIME_LIMIT_S, ReloadPlan, plan_reload, read_config
from .schema import RawReading, iso_ms
from .sdnotify import notify, watchdog_task
from .turns import BusTurns

if TYPE_CHECKING:
    from .commands import CommandExecutor
    from .profile import BaseProfile

log = logging.getLogger(__name__)

ONLINE, DEGRADED, OFFLINE = "online", "degraded", "offline"


class Output(Protocol):
    """Where normalized readings, device states and events go (stdout, buffer+MQTT)."""

    def submit(self, device: str, message: dict[str, Any]) -> None:
        """Accept one reading message (without ``seq``)."""

    def device_status(self, device: str, state: str, error: str | None) -> None:
        """A device changed state."""

    def event(self, kind: str, **fields: Any) -> None:
        """Something operators should know about (reloads, clock, drops)."""

    async def run(self) -> None:
        """Background work until cancelled."""

    async def close(self) -> None:
        """Flush and release on shutdown."""


@runtime_checkable
class DescribedOutput(Protocol):
    """What an output may tell the status page: its ``kind`` (``mqtt``, ``stdout``, ``memory``) and,
    for the buffered uplink, a ``snapshot()`` of its connection and buffer figures.
    """

    kind: str

    def snapshot(self) -> dict[str, Any]: ...


@runtime_checkable
class Announces(Protocol):
    """An output that tells followers every event, those it makes itself included (the uplink's
    buffer drops): the gateway follows it, so the status page sees them too."""

    def follow(self, callback: Callable[..., None]) -> Callable[[], None]: ...


@runtime_checkable
class Reconfigurable(Protocol):
    """An output that takes a reloaded configuration's changes it can apply live (the uplink's)."""

    def reconfigure(self, cfg: GatewayConfig) -> None: ...


@runtime_checkable
class NamedOutput(Protocol):
    """An output that says what kind it is (every output of this package does)."""

    kind: str


class GatewayListener(Protocol):
    """Follows what the gateway tells its output (the status page subscribes one): called after the
    output, on the event loop; an exception is logged and never reaches the gateway.
    """

    def device_status(self, device: str, state: str, error: str | None) -> None:
        """A device changed state."""

    def reading(self, device: str, message: dict[str, Any]) -> None:
        """A reading message was handed to the output."""

    def event(self, kind: str, **fields: Any) -> None:
        """An event was announced."""


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """One running device as the status page and metrics read it (a copy: reading it changes nothing)."""

    id: str
    spec: DeviceSpec
    state: str
    last_error: str | None
    last_error_ts: float | None
    last_reading_ts: float | None
    polls: int
    failures: int
    consecutive_failures: int
    overruns: int
    last_latency_s: float | None
    latency_sum_s: float
    latest: dict[str, Any]
    pushing: bool  # a push driver's run() is active


class _Fanout:
    """The output as the runners see it: the real output first, then every listener."""

    def __init__(self, output: Output, listeners: list[GatewayListener]) -> None:
        self.output = output
        self.listeners = listeners
        # An output that announces its events tells the listeners itself, its own events included.
        self._announced = isinstance(output, Announces)
        if isinstance(output, Announces):
            output.follow(self._tell_event)

    def _tell_event(self, kind: str, **fields: Any) -> None:
        self._tell(f"event {kind}", lambda lst: lst.event(kind, **fields))

    def _tell(self, what: str, call: Callable[[GatewayListener], None]) -> None:
        for listener in list(self.listeners):
            try:
                call(listener)
            except Exception:  # a listener's bug must not reach a poller
                log.exception("gateway listener failed on %s", what)

    def submit(self, device: str, message: dict[str, Any]) -> None:
        self.output.submit(device, message)
        self._tell("a reading", lambda lst: lst.reading(device, message))

    def device_status(self, device: str, state: str, error: str | None) -> None:
        self.output.device_status(device, state, error)
        self._tell("a device state", lambda lst: lst.device_status(device, state, error))

    def event(self, kind: str, **fields: Any) -> None:
        self.output.event(kind, **fields)
        if not self._announced:
            self._tell_event(kind, **fields)


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

    def __init__(self, spec: DeviceSpec, gateway_id: str, output: Output | _Fanout, clock: ClockMonitor,
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


class Gateway:
    """Runs the devices of a configuration and applies reloads."""

    def __init__(self, loaded: LoadedConfig, output: Output, clock: ClockMonitor | None = None,
                 loader: Callable[[], LoadedConfig] | None = None) -> None:
        self.loaded = loaded
        self.gateway_id = loaded.config.gateway.id
        self.output = output
        self._listeners: list[GatewayListener] = []
        self._out = _Fanout(output, self._listeners)  # what runners and the gateway's own events go to
        self.clock = clock or ClockMonitor(loaded.config.gateway.clock_check)
        self.loader = loader
        self.shared = SharedResources()
        self.runners: dict[str, DeviceRunner] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.bus_locks: dict[str, BusTurns] = {}
        self.started = time.time()
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._read_wanted = False  # a reload was requested: (re-)read the file
        #: The command executor (runtime.build sets it when ``commands.enabled``); None: commands are off.
        self.commands: CommandExecutor | None = None

    def request_stop(self) -> None:
        """Ask for a clean shutdown (SIGTERM)."""
        log.info("shutdown requested")
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read and apply the configuration (SIGHUP); a bad one is refused.

        Reading (in a worker thread: a big or hostile file must not stall the polls) and applying
        run as one task with time limits (the loader's own, ``RELOAD_TIME_LIMIT_S``), so a signal
        handler or an HTTP request never waits. A request during a reload reads the file again right
        after it (the newest wins).
        """
        if self.loader is None:
            log.warning("reload requested but this gateway has no config file to re-read")
            return
        if self._stop.is_set():  # the stop cancelled any reload; a new one would outlive the task group
            log.info("reload requested while stopping: ignored")
            return
        self._read_wanted = True
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self._apply_next(), name="reload")
            self._reloading.add_done_callback(self._reload_done)

    async def reload(self) -> None:
        """Re-read the configuration and wait until it is applied or refused (the status page's button).

        Bounded by the apply's own time limit, so an HTTP request never waits longer than a reload may take.
        """
        self.request_reload()
        task = self._reloading
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=RELOAD_TIME_LIMIT_S + 1.0)

    @staticmethod
    def _reload_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A bug in applying: the running configuration goes on, the traceback is logged once.
            log.error("reload failed: %r", task.exception(), exc_info=task.exception())

    async def _apply_next(self) -> None:
        from .errors import ConfigError

        while self._read_wanted and self.loader is not None:
            self._read_wanted = False
            try:
                new = await read_config(self.loader)
            except ConfigError as exc:
                errors = [d for d in exc.diagnostics if d.severity == "error"]
                for d in exc.diagnostics:
                    log.error("reload refused: %s", d)
                log.error("new configuration has %d error(s); keeping the running one", len(errors))
                self._out.event("config_rejected", errors=[str(d) for d in errors][:20])
                continue
            try:
                async with asyncio.timeout(RELOAD_TIME_LIMIT_S):
                    await self.apply(new)
            except TimeoutError:
                log.error("reload did not finish within %.0f s; send SIGHUP again to retry the devices not "
                          "restarted", RELOAD_TIME_LIMIT_S)
                self._out.event("config_rejected", errors=[f"reload timed out after {RELOAD_TIME_LIMIT_S:g} s"])

    async def apply(self, new: LoadedConfig) -> ReloadPlan:
        """Start, stop and restart devices to match ``new``, hand the rest to the output; say what waits.

        A changed device's old runner is awaited (bounded by its poll timeout) before the new one
        starts, so the two never hold the same serial port or UDP port at once.
        """
        old_cfg = self.loaded.config
        plan = plan_reload(old_cfg, new.config)
        old = {d.config.id: d for d in self.loaded.devices}
        fresh = {d.config.id: d for d in new.devices}
        removed = [i for i in old if i not in fresh]
        changed = [i for i in fresh if i in old and fresh[i].fingerprint() != old[i].fingerprint()]
        added = [i for i in fresh if i not in old]
        stopping = [t for t in (self._stop_device(dev_id) for dev_id in removed + changed) if t is not None]
        if stopping:
            # Bounded well inside the reload's limit: a device that will not close costs only itself.
            limit = min(max(old[i].config.poll_timeout for i in removed + changed) + 1.0, RELOAD_TIME_LIMIT_S / 3)
            _, pending = await asyncio.wait(stopping, timeout=limit)
            if pending:
                log.warning("reload: still closing after %.1f s: %s", limit, ", ".join(t.get_name() for t in pending))
        # What needs a restart is not read from self.loaded after the start (the gateway id, the clock
        # monitor, the buffer and the status page keep their own), so taking the whole file is safe.
        self.loaded = new
        for dev_id in changed + added:
            if fresh[dev_id].config.enabled:
                self._start_device(fresh[dev_id])
        if isinstance(self.output, Reconfigurable):
            self.output.reconfigure(new.config)
        if self.commands is not None:
            self.commands.reconfigure(new.config.commands)
        if plan.restart_required:
            log.warning("reload: %s changed but take(s) effect only after a restart "
                        "(`sudo systemctl restart fieldgate`)", ", ".join(plan.restart_required))
        log.info("configuration reloaded: %d added, %d changed, %d removed%s", len(added), len(changed),
                 len(removed), f"; applied {', '.join(plan.applied)}" if plan.applied else "")
        self._out.event("config_reloaded", added=added, changed=changed, removed=removed, applied=plan.applied,
                          restart_required=plan.restart_required)
        return plan

    def _start_device(self, spec: DeviceSpec) -> None:
        assert self._tg is not None
        lock = self.bus_locks.setdefault(spec.bus, BusTurns()) if spec.bus else None
        runner = DeviceRunner(spec, self.gateway_id, self._out, self.clock, lock, self.shared)
        self.runners[spec.config.id] = runner
        self.tasks[spec.config.id] = self._tg.create_task(runner.run(), name=f"poll[{spec.config.id}]")

    def _stop_device(self, dev_id: str) -> asyncio.Task[None] | None:
        task = self.tasks.pop(dev_id, None)
        if task is not None:
            task.cancel()
        self.runners.pop(dev_id, None)
        return task

    async def _clock_task(self) -> None:
        last_wall, last_mono = time.time(), time.monotonic()
        while True:
            await asyncio.sleep(5.0)
            wall, mono = time.time(), time.monotonic()
            jump = (wall - last_wall) - (mono - last_mono)
            last_wall, last_mono = wall, mono
            if abs(jump) > 2.0:
                log.warning("system clock jumped by %.1f s", jump)
                self._out.event("clock_jump", seconds=round(jump, 3))
            if self.clock.refresh():
                log.info("system clock is now %s", "synchronized" if self.clock.synced else "NOT synchronized")
                self._out.event("clock_sync", synced=self.clock.synced)

    async def run(self) -> None:
        """Run until ``request_stop``; then shut down within the configured time limit."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            output_task = tg.create_task(self.output.run(), name="uplink")
            clock_task = tg.create_task(self._clock_task(), name="clock")
            watchdog = tg.create_task(watchdog_task(), name="watchdog")
            for spec in self.loaded.devices:
                if spec.config.enabled:
                    self._start_device(spec)
            log.info("fieldgate %s running: gateway %s, %d device(s)", __version__, self.gateway_id,
                     len(self.tasks))
            self.ready.set()
            notify(f"READY=1\nSTATUS=polling {len(self.tasks)} device(s)")
            self._out.event("started", version=__version__, devices=len(self.tasks))
            await self._stop.wait()
            notify("STOPPING=1")
            limit = self.loaded.config.gateway.shutdown_timeout  # read now: a reload may have changed it
            if self._reloading is not None:
                self._reloading.cancel()
            watchdog.cancel()
            deadline = time.monotonic() + limit
            pollers = list(self.tasks.values())
            for t in pollers:
                t.cancel()
            clock_task.cancel()
            if pollers:
                _, pending = await asyncio.wait(pollers, timeout=limit / 2)
                if pending:
                    log.error("still busy after %.1fs: %s", limit / 2, ", ".join(t.get_name() for t in pending))
            try:
                async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                    await self.output.close()
            except TimeoutError:
                log.error("output did not close within the shutdown limit")
            output_task.cancel()
            _, pending = await asyncio.wait([output_task, *pollers],
                                            timeout=max(0.1, deadline - time.monotonic()))
            if pending:
                names = ", ".join(t.get_name() for t in pending)
                log.critical("shutdown time limit (%.0fs) exceeded; still busy: %s; exiting anyway", limit, names)
                logging.shutdown()
                os._exit(3)

    def announce(self, kind: str, **fields: Any) -> None:
        """Put an event on the events topic (and tell the listeners), as the gateway's own events go."""
        self._out.event(kind, **fields)

    def subscribe(self, listener: GatewayListener) -> Callable[[], None]:
        """Follow device states, readings and events from now on; returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def device_snapshot(self, dev_id: str) -> DeviceSnapshot | None:
        """The running device ``dev_id`` (None when it is not running: disabled, or not started yet)."""
        r = self.runners.get(dev_id)
        if r is None:
            return None
        s = r.stats
        return DeviceSnapshot(dev_id, r.spec, s.state, s.last_error, s.last_error_ts, s.last_reading_ts, s.polls,
                              s.failures, s.consecutive_failures, s.overruns, s.last_latency_s, s.latency_sum_s,
                              dict(s.latest), r.pushing)

    def device_snapshots(self) -> dict[str, DeviceSnapshot]:
        """Every running device, by id (devices still running from before a reload included)."""
        return {i: snap for i in list(self.runners) if (snap := self.device_snapshot(i)) is not None}

    def driver_status(self, dev_id: str) -> dict[str, Any] | None:
        """What the open driver of ``dev_id`` reports about itself (its ``status()`` hook), or None."""
        r = self.runners.get(dev_id)
        return r.driver_status() if r is not None else None

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view of the gateway for the status page and doctor."""
        return {
            "gateway": self.gateway_id,
            "version": __version__,
            "started": iso_ms(self.started),
            "clock_synced": self.clock.synced,
            "devices": {
                dev_id: {
                    "state": r.stats.state, "last_error": r.stats.last_error, "polls": r.stats.polls,
                    "failures": r.stats.failures, "overruns": r.stats.overruns,
                    "last_reading": iso_ms(r.stats.last_reading_ts) if r.stats.last_reading_ts else None,
                    "latency_ms": round(r.stats.last_latency_s * 1000, 1) if r.stats.last_latency_s else None,
                    "driver": r.spec.driver.name, "metrics": r.stats.latest,
                }
                for dev_id, r in self.runners.items()
            },
        }

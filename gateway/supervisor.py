"""The supervisor: one task group for every device runner, the output and the clock; reloads; shutdown.

:class:`Gateway` starts a :class:`~fieldgate.runner.DeviceRunner` per enabled device, applies a
reloaded configuration (start, stop, restart what changed, within a time limit), shuts down on
request within ``gateway.shutdown_timeout`` and says what was still busy, and gives the status
page and ``doctor`` copies of what each device is doing (:class:`DeviceSnapshot`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import __version__
from .clock import ClockMonitor
from .config import DeviceSpec, LoadedConfig
from .driver import SharedResources
from .fanout import Fanout, GatewayListener, Output, Reconfigurable
from .reload import RELOAD_TIME_LIMIT_S, ReloadPlan, plan_reload, read_config
from .runner import DeviceRunner
from .schema import iso_ms
from .sdnotify import notify, watchdog_task
from .turns import BusTurns

if TYPE_CHECKING:
    from .commands import CommandExecutor

log = logging.getLogger(__name__)


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


class Gateway:
    """Runs the devices of a configuration and applies reloads."""

    def __init__(self, loaded: LoadedConfig, output: Output, clock: ClockMonitor | None = None,
                 loader: Callable[[], LoadedConfig] | None = None) -> None:
        self.loaded = loaded
        self.gateway_id = loaded.config.gateway.id
        self.output = output
        self._listeners: list[GatewayListener] = []
        self._out = Fanout(output, self._listeners)  # what runners and the gateway's own events go to
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

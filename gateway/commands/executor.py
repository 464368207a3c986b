"""The command executor: one command in, one result out, every safety rule on the way.

The order of the checks is the safety story (docs/commands.md):

1. the message (``bad_message``), commands on for the device (``not_allowed``),
   the device known (``unknown_device``), not retained (``retained``);
2. a repeated id answers the stored result with ``duplicate: true``;
3. ``expires`` passed: ``expired`` (``clock_unsynced`` while the clock cannot tell);
4. every point known (``unknown_point``), writable (``read_only``), its value
   valid and inside ``write_range`` (``bad_value``, ``out_of_range``), the
   driver able to write (``not_supported``);
5. the device's queue and token bucket (``busy``, ``rate_limited``);
6. only then: recorded ``executing`` (committed), written, read back, the
   result recorded.

Steps 1 to 5 touch no device. Whatever arrives, ``execute`` answers a result
message and never raises. Every command and its result also go to the
audit trail (``output.event("command", ...)``, buffered like readings).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..config import CommandsConfig
from ..driver import PointWrite
from ..errors import DriverError
from ..normalize import Normalizer
from ..profile import BaseProfile
from ..ratelimit import TokenBucket
from ..schema import RawReading
from .message import BadCommand, Command, command_id_of, parse, result
from .store import AlreadyKnown, CommandStore, StoreUnavailable

log = logging.getLogger(__name__)

ORIGINS = ("mqtt", "local-api", "cli", "page", "sparkplug")
#: Commands and results kept in memory per device for the status page (rejected ones included).
RECENT_KEEP = 50


class CommandTarget(Protocol):
    """What the executor needs of a running device (the supervisor's ``DeviceRunner`` is one)."""

    @property
    def profile(self) -> BaseProfile: ...

    def writable(self) -> bool | None:
        """Whether the open driver has the ``write`` hook; None while no driver is open."""

    async def run_command(self, writes: Sequence[PointWrite]) -> tuple[RawReading | None, str | None]:
        """Write (when ``writes``) and poll now, serialized with the polls.

        Returns:
            The fresh raw reading (None when the driver cannot be polled: a push driver) and,
            when the read-back poll failed after the write, its reason.

        Raises:
            DriverError: the write failed (``reason``: timeout, exception:NN, offline, ...).
        """


class CommandExecutor:
    """Runs commands (contract ``fieldgate.command/1``) against the gateway's devices.

    Args:
        gateway_id: this gateway's id (results carry it).
        cfg: the ``commands`` section.
        store: the opened persistent store.
        target: device id → its running device, or None when it does not run.
        event: the audit trail (``output.event``).
        clock: monotonic seconds for the rate limit (tests may drive it).
        clock_synced: whether the system clock is synchronized; while it is not, a command with
            ``expires`` is refused (``clock_unsynced``): its deadline cannot be judged.
    """

    def __init__(self, gateway_id: str, cfg: CommandsConfig, store: CommandStore,
                 target: Callable[[str], CommandTarget | None], event: Callable[..., None],
                 clock: Callable[[], float] = time.monotonic,
                 clock_synced: Callable[[], bool] = lambda: True) -> None:
        self.gateway_id = gateway_id
        self.cfg = cfg
        self.store = store
        self._target = target
        self._event = event
        self._clock = clock
        self._clock_synced = clock_synced
        self._buckets: dict[str, TokenBucket] = {}
        self._queued: dict[str, int] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._recent: dict[str, collections.deque[dict[str, Any]]] = {}
        self.executed = 0  # commands that reached a device (for tests and the page)

    # --- the interface -----------------------------------------------------------------------

    async def execute(self, device: str, command: Mapping[str, Any], *, origin: str,
                      retained: bool = False) -> dict[str, Any]:
        """Run one command (contract fieldgate.command/1) and return its result message (fieldgate.command-result/1).

        Never raises for bad input: bad messages are answered 'rejected' with a reason.
        origin: 'mqtt', 'local-api', 'cli', 'page'. ``retained``: it came as a retained MQTT message
        (refused: a retained command would run again on every reconnect).
        """
        try:
            return await self._execute(device, command, origin, retained)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must answer, not leave the sender waiting
            log.error("command for %s failed inside the gateway: %r", device, exc, exc_info=exc)
            out = self._result(device, command_id_of(command), "failed", reason="internal_error")
            self._remember(device, origin, command, out)
            return out

    def reconfigure(self, cfg: CommandsConfig) -> None:
        """Take a reloaded ``commands`` section: allow list, rates and queue bound apply to the next command.

        ``enabled`` and the store's bounds are kept (they need a restart; the reload says so).
        """
        old = self.cfg
        self.cfg = cfg.model_copy(update={"enabled": old.enabled, "remember": old.remember,
                                          "remember_max": old.remember_max})
        # A device whose rate changed starts a new bucket; the others keep theirs (a reload must not
        # refill every bucket, or reloading would lift the limit).
        for device in [d for d in self._buckets if old.rate_of(d) != self.cfg.rate_of(d)]:
            del self._buckets[device]

    def refuse(self, device: str, reason: str, *, origin: str, command_id: str = "") -> dict[str, Any]:
        """Answer ``rejected`` to a message that never became a command (not JSON, too large, a flood),
        audited like every other answer."""
        self._event("command", stage="command", origin=origin, device=device, id=command_id, command=None)
        return self._answer(device, origin, None, self._result(device, command_id, "rejected", reason=reason))

    def recent(self, device: str, limit: int = 20) -> list[dict[str, Any]]:
        """The latest commands and results of a device, newest first, for the status page.

        Each entry: ``{"origin", "received" (epoch s), "command", "result"}``. Executed commands
        come from the store (they survive restarts); rejected ones from memory since the start.
        """
        def key(e: dict[str, Any]) -> tuple[Any, ...]:
            res = e.get("result") or {}
            return res.get("id"), res.get("ts"), res.get("status"), res.get("duplicate", False)

        entries = list(self._recent.get(device, ()))
        seen = {key(e) for e in entries}
        # Executed commands of earlier runs (the memory holds this run's, the same result objects).
        entries += [e for e in self.store.recent(device, limit) if key(e) not in seen]
        entries.sort(key=lambda e: e["received"], reverse=True)
        return entries[:limit]

    # --- startup ------------------------------------------------------------------------------

    def settle_unfinished(self, unfinished: list[dict[str, Any]]) -> None:
        """Answer the commands a killed process left ``executing``: ``failed``, ``unknown_outcome``.

        The write may have reached the device or not; reading the point now could not tell (another
        actor may have set it), and writing again would break "at most once". So the id is spent
        and a repeat is told exactly that.
        """
        for row in unfinished:
            out = self._result(row["device"], row["id"], "failed", reason="unknown_outcome")
            try:
                self.store.finish(row["device"], row["id"], out)
            except StoreUnavailable as exc:
                log.error("%s", exc)  # it stays executing: the next start settles it again
                continue
            log.warning("command %s of %s was executing when the gateway stopped: its outcome is unknown "
                        "(it is not executed again)", row["id"], row["device"])
            self._event("command", stage="result", origin="restart", device=row["device"], id=row["id"],
                        status=out["status"], result=out)

    # --- the steps ----------------------------------------------------------------------------

    def _result(self, device: str, command_id: str, status: str, *, reason: str | None = None,
                metrics: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        return result(self.gateway_id, device, command_id, status, time.time(), reason=reason, metrics=metrics)

    def _remember(self, device: str, origin: str, command: Any, out: dict[str, Any]) -> None:
        q = self._recent.setdefault(device, collections.deque(maxlen=RECENT_KEEP))
        cmd = _audit_copy(command)
        q.appendleft({"origin": origin, "received": time.time(), "command": cmd, "result": out})

    def _answer(self, device: str, origin: str, command: Any, out: dict[str, Any]) -> dict[str, Any]:
        """A result that touched no device: audited and kept for the page."""
        self._event("command", stage="result", origin=origin, device=device, id=out["id"], status=out["status"],
                    result=out)
        self._remember(device, origin, command, out)
        if out["status"] != "ok":
            log.info("command %s for %s: %s (%s)", out["id"] or "?", device, out["status"], out.get("reason"))
        return out

    async def _execute(self, device: str, command: Mapping[str, Any], origin: str,
                       retained: bool) -> dict[str, Any]:
        cid = command_id_of(command)
        self._event("command", stage="command", origin=origin, device=device, id=cid, command=_audit_copy(command))
        try:
            cmd = parse(command)
        except BadCommand as exc:
            return self._answer(device, origin, command, self._result(device, exc.id, "rejected", reason=exc.reason))
        rejected = self._precheck(device, cmd, retained)
        if rejected is not None:
            return self._answer(device, origin, command, rejected)
        key = (device, cmd.id)
        running = self._inflight.get(key)
        if running is not None:
            # The same id again while it runs (a QoS 1 redelivery): the first one's result, once.
            try:
                first = await asyncio.shield(running)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are stopping too
                # The first one ended without a result (a bug, logged there): its row stays executing.
                first = self._result(device, cmd.id, "failed", reason="unknown_outcome")
            return self._answer(device, origin, command, {**first, "duplicate": True})
        try:
            known = self.store.lookup(device, cmd.id)
        except StoreUnavailable as exc:
            log.error("%s", exc)
            return self._answer(device, origin, command, self._result(device, cmd.id, "failed",
                                                                      reason="store_unavailable"))
        if known is not None:
            _state, stored = known  # executing without a result: a start that failed to settle it
            previous = stored or self._result(device, cmd.id, "failed", reason="unknown_outcome")
            return self._answer(device, origin, command, {**previous, "duplicate": True})
        if cmd.expires is not None and not self._clock_synced():
            return self._answer(device, origin, command, self._result(device, cmd.id, "rejected",
                                                                      reason="clock_unsynced"))
        if cmd.expires is not None and time.time() > cmd.expires:
            return self._answer(device, origin, command, self._result(device, cmd.id, "expired", reason="expired"))
        target = self._target(device)
        assert target is not None  # _precheck said it runs
        checked = self._check_points(device, cmd, target)
        if isinstance(checked, dict):
            return self._answer(device, origin, command, checked)
        if cmd.op == "write" and target.writable() is False:
            return self._answer(device, origin, command, self._result(device, cmd.id, "rejected",
                                                                      reason="not_supported"))
        if self._queued.get(device, 0) >= self.cfg.max_queued:
            return self._answer(device, origin, command, self._result(device, cmd.id, "rejected", reason="busy"))
        if not self._bucket(device).take(self._clock()):
            return self._answer(device, origin, command, self._result(device, cmd.id, "rejected",
                                                                      reason="rate_limited"))
        # From here on the id is spent: register it before the first await, so a redelivery that
        # arrives while the store commits waits for this one instead of running too.
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        self._queued[device] = self._queued.get(device, 0) + 1
        out: dict[str, Any] | None = None
        try:
            out = await self._run(device, cmd, origin, target, checked)
            return out
        finally:
            self._queued[device] -= 1
            del self._inflight[key]
            if out is None:  # cancelled (shutdown): the row stays executing and is settled at the next start
                future.cancel()
            else:
                future.set_result(out)
                self._remember(device, origin, command, out)

    def _precheck(self, device: str, cmd: Command, retained: bool) -> dict[str, Any] | None:
        if not self.cfg.enabled or device not in self.cfg.allow:
            return self._result(device, cmd.id, "rejected", reason="not_allowed")
        if self._target(device) is None:
            return self._result(device, cmd.id, "rejected", reason="unknown_device")
        if retained:
            return self._result(device, cmd.id, "rejected", reason="retained")
        return None

    def _check_points(self, device: str, cmd: Command,
                      target: CommandTarget) -> list[PointWrite] | dict[str, Any]:
        """The writes of a command, or its ``rejected`` result naming every refused point."""
        points = {p.name: p for p in target.profile.points}
        refused: dict[str, dict[str, Any]] = {}
        writes: list[PointWrite] = []
        asked = cmd.values.items() if cmd.op == "write" else ((n, None) for n in cmd.names or ())
        for name, value in asked:
            point = points.get(name)
            if point is None:
                problem: str | None = "unknown_point"
            elif cmd.op == "read":
                problem = None
            else:
                problem = point.write_problem(value)
            if problem is not None:
                entry: dict[str, Any] = {"value": _json_value(value), "quality": "bad", "reason": problem}
                if point is not None and point.unit:
                    entry["unit"] = point.unit
                refused[name] = entry
            elif cmd.op == "write":
                assert isinstance(value, bool | int | float)
                writes.append(PointWrite(name, value))
        if refused:
            # The first problem in the order of the safety rules names the whole command's reason.
            order = ("unknown_point", "read_only", "not_supported", "bad_value", "out_of_range")
            reasons = [m["reason"] for m in refused.values()]
            reason = min(reasons, key=lambda r: order.index(r) if r in order else len(order))
            return self._result(device, cmd.id, "rejected", reason=reason, metrics=refused)
        return writes

    def _bucket(self, device: str) -> TokenBucket:
        bucket = self._buckets.get(device)
        if bucket is None:
            rate = self.cfg.rate_of(device)
            bucket = self._buckets[device] = TokenBucket(rate.rate, rate.burst, self._clock())
        return bucket

    async def _run(self, device: str, cmd: Command, origin: str, target: CommandTarget,
                   writes: list[PointWrite]) -> dict[str, Any]:
        try:
            await asyncio.to_thread(self.store.begin, device, cmd.id, cmd.as_dict(), origin)
        except (AlreadyKnown, StoreUnavailable) as exc:
            # Not recorded as executing: it must not run. AlreadyKnown means another process (a second
            # gateway on the same data_dir) recorded the id between our lookup and now.
            log.error("%s; command %s for %s refused", exc, cmd.id, device)
            early = self._result(device, cmd.id, "failed" if isinstance(exc, StoreUnavailable) else "rejected",
                                 reason="store_unavailable" if isinstance(exc, StoreUnavailable) else "duplicate_id")
            self._event("command", stage="result", origin=origin, device=device, id=cmd.id,
                        status=early["status"], result=early)
            return early
        self.executed += 1
        log.info("command %s for %s (%s): %s %s", cmd.id, device, origin, cmd.op,
                 ", ".join(f"{w.name}={w.value!r}" for w in writes) or "")
        try:
            raw, readback_error = await target.run_command(writes if cmd.op == "write" else [])
        except DriverError as exc:
            out = self._result(device, cmd.id, "failed", reason=exc.reason)
        else:
            out = self._outcome(device, cmd, target.profile, writes, raw, readback_error)
        try:
            await asyncio.to_thread(self.store.finish, device, cmd.id, out)
        except StoreUnavailable as exc:
            log.error("%s: a repeat of command %s for %s will answer unknown_outcome", exc, cmd.id, device)
        self._event("command", stage="result", origin=origin, device=device, id=cmd.id, status=out["status"],
                    result=out)
        log.info("command %s for %s: %s%s", cmd.id, device, out["status"],
                 f" ({out['reason']})" if "reason" in out else "")
        return out

    def _outcome(self, device: str, cmd: Command, profile: BaseProfile, writes: list[PointWrite],
                 raw: RawReading | None, readback_error: str | None) -> dict[str, Any]:
        if raw is None:
            # A push driver: written, but nothing can be polled to read it back (its next report will tell).
            if readback_error is not None:
                return self._result(device, cmd.id, "mismatch", reason="readback_failed")
            return self._result(device, cmd.id, "ok", reason="not_read_back" if writes else None)
        msg = Normalizer(self.gateway_id, device, profile).normalize(raw)  # a fresh one: no deadband state
        metrics: dict[str, dict[str, Any]] = dict((msg or {}).get("metrics", {}))
        if cmd.op == "read":
            wanted = cmd.names if cmd.names is not None else tuple(metrics)
            shown = {n: metrics.get(n, {"value": None, "quality": "bad", "reason": "not_read"}) for n in wanted}
            bad = [m.get("reason") for m in shown.values() if m["quality"] == "bad"]
            if readback_error is not None:
                return self._result(device, cmd.id, "failed", reason=readback_error, metrics=shown)
            return self._result(device, cmd.id, "ok", metrics=shown, reason=None if not bad else "partial")
        points = {p.name: p for p in profile.points}
        shown = {}
        differ = False
        for w in writes:
            m = metrics.get(w.name)
            if m is None:
                m = {"value": None, "quality": "bad", "reason": readback_error or "not_read_back"}
            shown[w.name] = m
            if not _equal(m.get("value"), w.value, points[w.name].readback_tolerance):
                differ = True
        if readback_error is not None:
            return self._result(device, cmd.id, "mismatch", reason="readback_failed", metrics=shown)
        if differ:
            return self._result(device, cmd.id, "mismatch", reason="readback_differs", metrics=shown)
        return self._result(device, cmd.id, "ok", metrics=shown)


def _equal(read: Any, wanted: float | int | bool, tolerance: Callable[[float], float]) -> bool:
    if isinstance(wanted, bool) or isinstance(read, bool):
        return isinstance(read, bool) and isinstance(wanted, bool) and read == wanted
    if not isinstance(read, int | float) or not math.isfinite(read):
        return False
    return abs(read - wanted) <= tolerance(float(wanted))


def _audit_copy(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of what arrived, for the audit trail and the page: Python's parser takes
    ``NaN`` and ``Infinity``, which JSON (and the events topic) does not; deep nesting is cut."""
    if depth > 8:
        return "..."
    if isinstance(value, Mapping):
        return {_text(str(k)[:64]): _audit_copy(v, depth + 1) for k, v in list(value.items())[:64]}
    if isinstance(value, list | tuple):
        return [_audit_copy(v, depth + 1) for v in value[:64]]
    if isinstance(value, str):
        return _text(value[:256])
    return _json_value(value)


def _text(value: str) -> str:
    """``value`` with lone surrogates (JSON may escape them, UTF-8 cannot carry them) shown as ``\\udcdf``."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)

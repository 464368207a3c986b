"""Remote configuration over MQTT: validate, apply atomically, watch a probation, roll back.

A change arrives on ``{prefix}/{gw}/config/set`` as JSON (``config.schema.json`` in the
contract): ``{"id": ..., "version": ..., "config": <YAML or JSON text, or an object>}``.
Each step is announced on ``events`` and answered on ``config/result``; the retained
``config/current`` carries the running configuration's hash and version.

1. A change whose ``id`` was seen before is answered ``duplicate`` and not applied again;
   one identical to the running file is ``unchanged``.
2. It is validated exactly as ``fieldgate validate`` and ``provision`` validate (the same
   loader, the same diagnostics), and every file it names (CA, password file, profile)
   must already exist on the gateway: secrets are never sent inline (the loader refuses an
   inline secret anyway).
3. It is applied atomically: the running file is kept as ``<config>.prev``, the new one
   written beside it, fsynced and renamed over the config; then the running gateway
   reloads it with the same machinery as SIGHUP (:meth:`fieldgate.app.Gateway.reload`).
4. Probation: within ``remote_config.probation`` the uplink must be connected with the
   new settings and at least ``min_online`` of the devices that were online before (and
   are still configured) must be online again. Otherwise ``<config>.prev`` is restored
   the same way and reloaded: the change is ``rolled_back``.

A ``kill -9`` at any moment leaves either the old or the new file in place (the rename
is the only switch), and the state file (``remote_config.json`` in the data folder) says
which change was on probation: after the restart a probation interrupted by the crash
starts again, and a change that had not landed is answered ``failed``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .config import LoadedConfig, load_config_text
from .errors import ConfigError
from .provision import _atomic_write
from .schema import iso_ms
from .service_check import referenced_files
from .tasks import cancel_and_wait
from .yamlsrc import Budget, Diagnostic, load_yaml

if TYPE_CHECKING:
    from .app import Gateway
    from .mqtt import Inbound
    from .uplink import BufferedUplink

log = logging.getLogger(__name__)

STATE_FILE = "remote_config.json"
PREVIOUS_SUFFIX = ".prev"
_SEEN_MAX = 200  # ids remembered for the duplicate check
_CHECK_S = 0.2  # how often the probation looks at the uplink and the devices
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def config_hash(data: bytes) -> str:
    """The hash ``config/current`` and the results carry: of the file's bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(slots=True)
class Change:
    """One config/set message, decoded."""

    id: str
    version: str | None
    text: str


class BadRequest(ValueError):
    """A config/set message that is not a change (not JSON, no id, no config): refused with this text.

    Attributes:
        id: the change's id when the message has a readable one (the refusal is answered under it,
            so the sender waiting for that id learns of it), else None.
    """

    def __init__(self, text: str, change_id: str | None = None) -> None:
        super().__init__(text)
        self.id = change_id


def decode_change(payload: bytes, max_bytes: int) -> Change:
    """The change in a config/set payload.

    Raises:
        BadRequest: with what is wrong, in words for the sender.
    """
    if len(payload) > max_bytes:
        raise BadRequest(f"the message has {len(payload)} bytes, more than remote_config.max_bytes ({max_bytes})")
    try:
        # UTF-8 strictly: json.loads of bytes would also take UTF-16 and UTF-32, which JSON on the
        # wire (RFC 8259) is not.
        doc = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the message is not JSON: {exc}") from exc
    except RecursionError:
        # Nesting deeper than the parser goes: it raised from inside the MQTT callback, and the
        # change was dropped without an answer.
        raise BadRequest("the message is not JSON: nested deeper than the parser goes") from None
    raw_id = doc.get("id") if isinstance(doc, dict) else None
    readable = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 and not _not_text(raw_id) else None
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # JSON may escape a lone UTF-16 surrogate ("\\udcdf"); such text has no UTF-8 form, so it can be
        # neither written as the file nor answered (it failed later as an "internal error").
        raise BadRequest("the message holds text that is not UTF-8 (a lone UTF-16 surrogate escape)",
                         readable) from None
    except (RecursionError, ValueError) as exc:
        raise BadRequest(f"the message cannot be read: {exc}", readable) from None
    if not isinstance(doc, dict):
        raise BadRequest('the message is a JSON object: {"id": ..., "version": ..., "config": ...}')
    change_id, version, config = doc.get("id"), doc.get("version"), doc.get("config")
    if not isinstance(change_id, str) or not change_id or len(change_id) > 128:
        raise BadRequest("'id' is required: a string of 1..128 characters naming this change")
    if version is not None and not isinstance(version, str | int | float):
        raise BadRequest("'version' is a string (a label for people)", change_id)
    if isinstance(config, dict):
        # JSON is YAML: written out with one key per line, so errors point at useful lines.
        try:
            text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        except (RecursionError, ValueError) as exc:
            raise BadRequest(f"'config' cannot be written out as a file: {exc}", change_id) from None
    elif isinstance(config, str) and config.strip():
        text = config
    else:
        raise BadRequest("'config' is required: the whole configuration, as YAML or JSON text or as an object",
                         change_id)
    return Change(change_id, None if version is None else str(version), text)


def _not_text(value: str) -> bool:
    """Whether ``value`` has no UTF-8 form (JSON can escape a lone UTF-16 surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def validate_text(text: str, file: str) -> tuple[LoadedConfig | None, list[Diagnostic]]:
    """Validate as ``validate``/``provision`` do, and check that every file it names exists here.

    Returns the loaded configuration (None when refused) and every diagnostic.
    """
    budget = Budget()
    try:
        loaded = load_config_text(text, file, budget)
    except ConfigError as exc:
        return None, [d for d in exc.diagnostics if isinstance(d, Diagnostic)]
    diags = list(loaded.warnings)
    _, smap, _ = load_yaml(text, file, Budget(budget.limits, time_limit=None))
    for where, path, kind in referenced_files(loaded):
        is_dir = kind == "folder"
        if not (path.is_dir() if is_dir else path.is_file()):
            line, col = smap.position(where)
            what = "folder" if is_dir else "file"
            diags.append(Diagnostic(file, line, col, ".".join(str(k) for k in where),
                                    f"{what} not found: {path} (it must exist on the gateway: files are not "
                                    "sent with a remote change)"))
    if any(d.severity == "error" for d in diags):
        return None, diags
    return loaded, diags


class RemoteConfig:
    """Listens on ``config/set`` and applies changes one at a time (see the module docstring).

    Args:
        gateway: the running supervisor (its reload applies the new file).
        uplink: the MQTT uplink (inbound subscription, results, events).
        path: the configuration file the gateway runs.
    """

    def __init__(self, gateway: Gateway, uplink: BufferedUplink, path: Path) -> None:
        self.gateway = gateway
        self.uplink = uplink
        self.path = path
        self.settings = gateway.loaded.config.remote_config
        self.state_path = gateway.loaded.config.gateway.data_dir / STATE_FILE
        self._queue: asyncio.Queue[Change | BadRequest] = asyncio.Queue(maxsize=8)
        self._unsent: list[dict[str, Any]] = []  # results waiting for a connection
        self._state: dict[str, Any] = {"seen": [], "last": None, "probation": None, "current": None}
        self._task: asyncio.Task[None] | None = None
        self._resumed: asyncio.Task[None] | None = None  # a probation resumed after a restart
        self._stops: list[Callable[[], None]] = []

    # --- lifetime ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the state, finish what a crash interrupted, subscribe, and start the worker."""
        self._state.update(await asyncio.to_thread(self._read_state))
        running = config_hash(await asyncio.to_thread(self.path.read_bytes))
        current = self._state.get("current") or {}
        if current.get("hash") != running:
            # Edited by hand (or provisioned) since: the running file is a local one.
            self._state["current"] = {"hash": running, "version": None, "id": None, "source": "local"}
        last = self._state.get("last")
        if last and not self._state.get("probation"):
            # Results go out beside the buffer: one published just before a crash may never have
            # left. The last one is said again after every start (at least once; match on id).
            self._unsent.append(last)
        self._stops.append(self.uplink.listen("config/set", self._on_message))
        self._stops.append(self.uplink.on_connected.add(lambda _kind, **_f: self._on_connected()))
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="remote-config")
        probation = self._state.get("probation")
        if probation:
            await self._resume(probation, running)

    async def close(self) -> None:
        for stop in self._stops:
            stop()
        for task in (self._task, self._resumed):
            if task is not None:
                await cancel_and_wait(task)

    # --- inbound -----------------------------------------------------------------------------

    def _on_message(self, msg: Inbound) -> None:
        # On the loop thread, must not block: decode here, work in the worker task.
        try:
            item: Change | BadRequest = decode_change(msg.payload, self.settings.max_bytes)
        except BadRequest as exc:
            item = exc
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._answer(item.id, "refused", errors=["busy: 8 changes are waiting; send it again later"])

    def _on_connected(self) -> None:
        current = self._state.get("current")
        if current:
            self.uplink.send("config/current", _DUMPS({**current, "ts": iso_ms(time.time())}), retain=True)
        unsent, self._unsent = self._unsent, []
        for result in unsent:
            self._publish_result(result)

    # --- answers -----------------------------------------------------------------------------

    def _answer(self, change_id: str | None, status: str, **fields: Any) -> dict[str, Any]:
        result = {"id": change_id, "status": status, "ts": iso_ms(time.time()), **fields}
        self._publish_result(result)
        return result

    def _publish_result(self, result: dict[str, Any]) -> None:
        if not self.uplink.send("config/result", _DUMPS(result)):
            self._unsent = [*self._unsent[-19:], result]  # sent at the next connect

    def _event(self, kind: str, **fields: Any) -> None:
        self.uplink.event(kind, **fields)

    # --- the worker --------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            if isinstance(item, BadRequest):
                log.warning("remote config %s refused: %s", item.id or "(no id)", item)
                self._event("config_remote_refused", id=item.id, errors=[str(item)])
                self._answer(item.id, "refused", errors=[str(item)])
                continue
            try:
                await self._handle(item)
            except OSError as exc:
                log.error("remote config %s: cannot write the configuration: %s", item.id, exc)
                self._event("config_remote_failed", id=item.id, error=str(exc))
                self._answer(item.id, "failed", errors=[f"cannot write {self.path}: {exc}"])
            except Exception as exc:  # a bug costs this change, not the listener (and is logged once)
                log.exception("remote config %s failed", item.id)
                self._event("config_remote_failed", id=item.id, error=repr(exc))
                self._answer(item.id, "failed", errors=[f"internal error: {exc!r}"])

    async def _handle(self, change: Change) -> None:
        log.info("remote config %s (version %s) received", change.id, change.version)
        self._event("config_remote_received", id=change.id, version=change.version)
        seen = self._state["seen"]
        if change.id in seen:
            last = self._state.get("last") or {}
            first = last.get("status") if last.get("id") == change.id else None
            self._answer(change.id, "duplicate", first_status=first, hash=(self._state["current"] or {}).get("hash"))
            log.info("remote config %s: already handled (%s); not applied again", change.id, first or "earlier")
            return
        self._state["seen"] = [*seen[-(_SEEN_MAX - 1):], change.id]
        new_bytes = change.text.encode("utf-8")
        new_hash = config_hash(new_bytes)
        if self._state.get("probation"):
            await self._finish_state(change, "refused", errors=["another change is on probation; send it again "
                                                                "once its result came"])
            return
        if new_hash == (self._state["current"] or {}).get("hash"):
            await self._finish_state(change, "unchanged", hash=new_hash)
            return
        # Named like the file it replaces: relative paths in it are taken from that folder.
        loaded, diags = await asyncio.to_thread(validate_text, change.text, f"{self.path} (remote {change.id})")
        warnings = [str(d) for d in diags if d.severity != "error"]
        if loaded is None:
            errors = [str(d) for d in diags if d.severity == "error"]
            log.warning("remote config %s refused: %d error(s)", change.id, len(errors))
            for text in errors:
                log.warning("remote config %s: %s", change.id, text)
            self._event("config_remote_refused", id=change.id, version=change.version, errors=errors[:20])
            await self._finish_state(change, "refused", errors=errors, warnings=warnings)
            return
        if loaded.config.gateway.id != self.gateway.gateway_id:
            errors = [f"gateway.id is {loaded.config.gateway.id!r}, this gateway is {self.gateway.gateway_id!r}: "
                      "a change for another gateway"]
            self._event("config_remote_refused", id=change.id, version=change.version, errors=errors)
            await self._finish_state(change, "refused", errors=errors, warnings=warnings)
            return
        before = self._online()
        old_bytes = await asyncio.to_thread(self.path.read_bytes)
        probation = {"id": change.id, "version": change.version, "hash": new_hash,
                     "prev_hash": config_hash(old_bytes), "online_before": sorted(before)}
        log.info("remote config %s: applying (previous kept as %s%s)", change.id, self.path.name, PREVIOUS_SUFFIX)
        # Order matters for a crash: the previous file and the record first, the switch (rename) last.
        await asyncio.to_thread(self._write, self.path.with_name(self.path.name + PREVIOUS_SUFFIX), old_bytes)
        self._state["probation"] = probation
        await asyncio.to_thread(self._save_state)
        await asyncio.to_thread(self._write, self.path, new_bytes)
        await self._reload()
        self._event("config_remote_applied", id=change.id, version=change.version, hash=new_hash,
                    probation_s=self.settings.probation)
        self._answer(change.id, "probation", version=change.version, hash=new_hash, warnings=warnings,
                     probation_s=self.settings.probation)
        await self._probation(probation)

    async def _resume(self, probation: dict[str, Any], running: str) -> None:
        """After a restart: the change on probation landed (probation again) or did not (failed)."""
        if running == probation.get("hash"):
            log.info("remote config %s: was on probation when the gateway stopped; probation again", probation["id"])
            self._event("config_remote_resumed", id=probation["id"], version=probation.get("version"))
            self._resumed = asyncio.get_running_loop().create_task(
                self._probation(probation), name="remote-config-probation")
        else:
            log.warning("remote config %s: interrupted before it was applied; the previous configuration runs",
                        probation["id"])
            self._state["probation"] = None
            # Sent again, the same id must be applied, not answered "duplicate".
            self._state["seen"] = [i for i in self._state["seen"] if i != probation["id"]]
            change = Change(probation["id"], probation.get("version"), "")
            self._event("config_remote_failed", id=change.id, error="interrupted before it was applied")
            await self._finish_state(change, "failed", errors=["the gateway stopped before the change was applied; "
                                                               "the previous configuration runs"])

    async def _probation(self, probation: dict[str, Any]) -> None:
        deadline = time.monotonic() + self.settings.probation
        online_before = set(probation.get("online_before") or [])
        change = Change(probation["id"], probation.get("version"), "")
        while True:
            configured = {s.config.id for s in self.gateway.loaded.devices if s.config.enabled}
            expected = online_before & configured
            need = math.ceil(self.settings.min_online * len(expected))
            online = self._online() & expected
            uplink_ok = (self.uplink.state.state == "connected"
                         and self.uplink.mqtt == self.gateway.loaded.config.mqtt)
            if uplink_ok and len(online) >= need:
                log.info("remote config %s: probation passed (uplink connected, %d/%d device(s) online)",
                         change.id, len(online), len(expected))
                self._state["probation"] = None
                self._state["current"] = {"hash": probation["hash"], "version": change.version, "id": change.id,
                                          "source": "remote"}
                self._event("config_remote_committed", id=change.id, version=change.version, hash=probation["hash"])
                await self._finish_state(change, "applied", hash=probation["hash"], version=change.version)
                self._on_connected()  # the retained current config
                return
            if time.monotonic() >= deadline:
                why = [] if uplink_ok else [f"the uplink did not connect with the new settings "
                                            f"({self.uplink.state.last_error or self.uplink.state.state})"]
                if len(online) < need:
                    missing = sorted(expected - online)
                    why.append(f"{len(online)} of {len(expected)} device(s) online, {need} needed "
                               f"(not online: {', '.join(missing[:10])})")
                await self._roll_back(change, probation, why)
                return
            await asyncio.sleep(_CHECK_S)  # a monitor's pace: nothing signals "all devices online"

    async def _roll_back(self, change: Change, probation: dict[str, Any], why: list[str]) -> None:
        log.error("remote config %s: probation failed (%s); restoring the previous configuration",
                  change.id, "; ".join(why))
        prev = self.path.with_name(self.path.name + PREVIOUS_SUFFIX)
        await asyncio.to_thread(self._write, self.path, await asyncio.to_thread(prev.read_bytes))
        self._state["probation"] = None
        await self._reload()
        self._event("config_remote_rolled_back", id=change.id, version=change.version, reasons=why)
        await self._finish_state(change, "rolled_back", errors=why, hash=probation.get("prev_hash"))
        self._on_connected()

    # --- helpers -----------------------------------------------------------------------------

    def _online(self) -> set[str]:
        return {i for i, snap in self.gateway.device_snapshots().items() if snap.state == "online"}

    async def _reload(self) -> None:
        await self.gateway.reload()

    async def _finish_state(self, change: Change, status: str, **fields: Any) -> None:
        # Recorded first, told after: a result someone saw is never undone by a crash (and one lost
        # in the crash is said again after the restart).
        result = {"id": change.id, "status": status, "ts": iso_ms(time.time()), "version": change.version, **fields}
        self._state["last"] = {k: v for k, v in result.items() if k != "warnings"}
        await asyncio.to_thread(self._save_state)
        self._publish_result(result)

    def _write(self, path: Path, data: bytes) -> None:
        mode = self.path.stat().st_mode & 0o777 if self.path.exists() else 0o640
        _atomic_write(path, data, mode)

    def _read_state(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s cannot be read (%s): starting without the record of earlier remote changes",
                        self.state_path, exc)
            return {}
        return doc if isinstance(doc, dict) else {}

    def _save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.state_path, json.dumps(self._state, indent=1).encode(), 0o640)


def last_change(data_dir: Path) -> dict[str, Any] | None:
    """The last remote change recorded in ``data_dir`` (for ``doctor``), or None."""
    try:
        doc = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    last = doc.get("last") if isinstance(doc, dict) else None
    return last if isinstance(last, dict) else None


def describe_last_change(data_dir: Path) -> tuple[Literal["ok", "warn"], str] | None:
    """``doctor``'s line about the last remote change: (status, summary), or None when there was none."""
    last = last_change(data_dir)
    if last is None:
        return None
    status = last.get("status")
    words = f"last remote change: {last.get('id')} (version {last.get('version') or '-'}) {status} at {last.get('ts')}"
    if last.get("errors"):
        words += f": {'; '.join(str(e) for e in last['errors'][:3])}"
    return ("warn" if status in ("rolled_back", "failed") else "ok"), words

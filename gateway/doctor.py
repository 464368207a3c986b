"""``fieldgate doctor``: one command that checks the gateway and explains what is wrong.

For the technician who comes to a cabinet months after the installer left:
every check ends in a finding in plain words, with what to do about it.

Checks, in order: the configuration and profile libraries; a provisioning
file refused or still waiting on the boot partition; the systemd unit;
the clock (NTP); disk space for the buffer; the buffer's depth and age (the
database is opened read-only); each installed driver's own host checks, through
its ``doctor()`` hook (serial ports present and permitted, the BLE adapter and
BlueZ: core names neither); the broker reached,
TLS and the login accepted (with a clean session, no last will, and its own
client id, so a running gateway is not disturbed); and each enabled device
answering, through the same driver, profile and timeouts as ``fieldgate
run`` (``--no-devices`` skips this).

Beside the running service: when the service runs this configuration, its
status API (``web.listen``, with ``web.password`` as a bearer token) answers
with its gateway id; doctor then reads each device's state from it ("held by
the running service, which reports it online") instead of opening ports the
service holds, and a device the service reports offline is still a FAIL. The
status API was chosen over a pid file: it answers only while the service
runs, names the gateway, and carries the states. The service is also found by
its process (a ``fieldgate run`` of this configuration in ``/proc``, however the
path was written): a page on port 0 is then asked at the port that process
listens on, and with the page off its devices are named as held by it (pid)
and not opened a second time. With no service running the devices are probed
directly, and a port another program holds is reported as busy.

Statuses: ``ok``, ``n/a`` (not applicable), ``warn`` (works, needs attention)
and ``fail`` (broken). Exit code: 0 nothing failed (warnings are printed;
``--strict`` turns them into 3), 1 the configuration is missing or invalid,
3 at least one check failed. ``--json`` prints the same for machines.

The clock and ``statvfs`` are parameters of :class:`Doctor` so tests can
simulate an unsynchronized clock or a full disk where the real ones cannot be
changed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .checks import DoctorDevice, Finding, Status
from .clock import clock_synced
from .config import DEFAULT_CONFIG, DeviceSpec, LoadedConfig, MqttConfig, load_config, load_profile_file
from .driver import HasDoctor, available_drivers, load_driver
from .errors import ConfigError, DeviceBusy, DriverError, DriverUnavailable, GatewayError
from .listen import ListenAddress
from .schema import PointError
from .yamlsrc import Diagnostic

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INVALID, EXIT_FAILED = 0, 1, 3

_RANK: dict[str, int] = {"ok": 0, "n/a": 0, "warn": 1, "fail": 2}

STATE_DIR = Path("/var/lib/fieldgate")
BOOT_DIRS = (Path("/boot/firmware"), Path("/boot"))
UNIT_PATH = Path("/etc/systemd/system/fieldgate.service")
UNIT_LINK = Path("/etc/systemd/system/multi-user.target.wants/fieldgate.service")

MIB = 1024 * 1024
DISK_FAIL_BYTES = 32 * MIB  # below this the buffer soon cannot commit
DISK_FAIL_SHARE = 0.02
DISK_WARN_SHARE = 0.10
BACKLOG_WARN_S = 15 * 60.0  # readings older than this are not "in flight" any more


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds / size
            return f"{n:.0f} {unit}{'s' if round(n) != 1 else ''}"
    return f"{seconds:.0f} s"


def _size(n: float) -> str:
    for unit in ("GB", "MB", "kB"):
        scale = {"GB": 1e9, "MB": 1e6, "kB": 1e3}[unit]
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


class Doctor:
    """Runs every check against one configuration file.

    Args:
        config_path: the configuration (``/etc/fieldgate/fieldgate.yaml``).
        root: where ``/boot`` and ``/etc/systemd`` are looked for (``/`` on the gateway).
        clock: returns True/False for "synchronized", None when it cannot be known.
        statvfs: ``os.statvfs`` or a stand-in.
        now: the wall clock.
        timeout: seconds for the broker and for each device (at least the device's own poll timeout).
        devices: whether to poll the devices.
    """

    def __init__(self, config_path: Path, *, root: Path = Path("/"),
                 clock: Callable[[], bool | None] = clock_synced,
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
                 now: Callable[[], float] = time.time, timeout: float = 10.0, devices: bool = True) -> None:
        self.config_path = config_path
        self.root = root
        self.clock = clock
        self.statvfs = statvfs
        self.now = now
        self.timeout = timeout
        self.poll_devices = devices
        self.findings: list[Finding] = []
        self.loaded: LoadedConfig | None = None
        self.service: ServiceProcess | None = None

    def _on_root(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    def add(self, check: str, status: Status, summary: str, fix: str | None = None, **details: Any) -> Finding:
        finding = Finding(check, status, summary, fix, details)
        self.findings.append(finding)
        return finding

    async def run(self) -> list[Finding]:
        """Every check; returns the findings (also in ``self.findings``)."""
        self.check_config()
        self.check_provisioning()
        self.check_unit()
        self.check_clock()
        data_dir = self.loaded.config.gateway.data_dir if self.loaded else STATE_DIR
        self.check_disk(data_dir)
        self.check_buffer(data_dir)
        from .remote_config import describe_last_change  # issue 21: the last remote configuration change

        if (last := describe_last_change(data_dir)) is not None:
            self.add("remote_config", *last)
        if self.loaded is not None:
            await self.check_drivers(self.loaded.devices)
            await self.check_broker(self.loaded)
            service = await self.check_running_service(self.loaded)
            if service is not None:
                self.check_devices_of_service(self.loaded, service)
            elif self.service is not None:
                self.check_devices_held(self.loaded, self.service)
            elif self.poll_devices:
                await self.check_devices(self.loaded)
            else:
                self.add("devices", "n/a", "devices were not polled (--no-devices)")
        return self.findings

    # --- configuration -----------------------------------------------------------------------

    def check_config(self) -> None:
        path = self.config_path
        if not path.exists():
            self.add("config", "fail", f"there is no configuration at {path}: the service does not start without it",
                     "put fieldgate.yaml on the boot partition and reboot (or run `sudo fieldgate provision`), "
                     f"or write {path} by hand; see docs/installing.md", path=str(path))
            return
        try:
            loaded = load_config(path)
        except ConfigError as exc:
            diags = [str(d) for d in exc.diagnostics if d.severity == "error"]
            shown = "\n".join(diags[:10]) + (f"\n... and {len(diags) - 10} more" if len(diags) > 10 else "")
            self.add("config", "fail", f"the configuration has {len(diags)} error(s); the service refuses to start "
                     f"with it:\n{shown}",
                     f"correct each line named (file:line:column: key), check with `fieldgate validate {path}`, "
                     "then `sudo systemctl restart fieldgate`", errors=diags, path=str(path))
            return
        self.loaded = loaded
        enabled = [d for d in loaded.devices if d.config.enabled]
        if loaded.warnings:
            self.add("config", "warn", f"the configuration is valid ({len(enabled)} device(s)) but has "
                     f"{len(loaded.warnings)} warning(s):\n" + "\n".join(str(w) for w in loaded.warnings[:10]),
                     "address the warnings (renamed keys stop working in a later release)",
                     warnings=[str(w) for w in loaded.warnings], path=str(path))
        else:
            self.add("config", "ok", f"configuration {path} is valid: {len(enabled)} enabled device(s), "
                     "every profile valid", path=str(path), devices=len(enabled))
        if loaded.config.mqtt is None:
            self.add("config.mqtt", "fail", "the configuration has no 'mqtt' section: the service refuses to start "
                     "(it would have nowhere to send readings)", "add an mqtt section with the broker's host")
        self._check_profile_dirs(loaded)

    def _check_profile_dirs(self, loaded: LoadedConfig) -> None:
        for directory in loaded.config.gateway.profile_dirs:
            if not directory.is_dir():
                self.add("profiles", "fail", f"profile folder {directory} (gateway.profile_dirs) does not exist",
                         "create it, or remove it from gateway.profile_dirs", folder=str(directory))
                continue
            errors: list[str] = []
            files = sorted(directory.rglob("*.yaml"))
            for p in files:
                _, diags = load_profile_file(p)
                errors += [str(d) for d in diags if isinstance(d, Diagnostic) and d.severity == "error"]
            if errors:
                self.add("profiles", "fail", f"{len(errors)} error(s) in the profiles of {directory}:\n"
                         + "\n".join(errors[:10]),
                         "correct the lines named, check with `fieldgate validate --profile FILE`",
                         folder=str(directory), errors=errors)
            else:
                self.add("profiles", "ok", f"{len(files)} profile(s) in {directory} are valid", folder=str(directory))

    def check_provisioning(self) -> None:
        for boot in BOOT_DIRS:
            d = self._on_root(boot)
            errors = d / "fieldgate.yaml.errors.txt"
            if errors.is_file():
                try:
                    text = errors.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    text = ""
                lines = [ln for ln in text.splitlines() if ln.strip()]
                self.add("provisioning", "fail", f"the configuration placed on the boot partition ({boot}) was "
                         "refused, so the gateway still runs its previous one:\n" + "\n".join(lines[3:13]),
                         f"fix {boot / 'fieldgate.yaml'} as {errors.name} says, then reboot "
                         "(or `sudo fieldgate provision`)", errors_file=str(boot / errors.name))
                return
            if (d / "fieldgate.yaml").is_file():
                self.add("provisioning", "warn", f"{boot / 'fieldgate.yaml'} waits to be applied",
                         "reboot, or apply it now: `sudo fieldgate provision`")
                return

    def check_unit(self) -> None:
        unit, link = self._on_root(UNIT_PATH), self._on_root(UNIT_LINK)
        if not unit.is_file():
            self.add("service", "warn", "fieldgate.service is not installed: nothing starts the gateway at boot",
                     "`sudo fieldgate install` (see docs/installing.md)")
        elif not (link.is_symlink() or link.exists()):
            self.add("service", "warn", "fieldgate.service is installed but not enabled: it does not start at boot",
                     "`sudo systemctl enable --now fieldgate`")
        else:
            self.add("service", "ok", "fieldgate.service is installed and enabled")

    # --- system ------------------------------------------------------------------------------

    def check_clock(self) -> None:
        try:
            synced = self.clock()
        except Exception as exc:
            synced = None
            log.debug("clock check failed: %s", exc)
        if synced is None:
            self.add("clock", "n/a", "the kernel cannot be asked whether the clock is synchronized here")
        elif synced:
            self.add("clock", "ok", "the system clock is synchronized (NTP)")
        else:
            self.add("clock", "fail", "the system clock is NOT synchronized: readings carry a guessed time and are "
                     "flagged clock=unsynced (a Raspberry Pi has no battery clock)",
                     "give the gateway a network path to an NTP server (UDP port 123), check `timedatectl` and "
                     "`systemctl status systemd-timesyncd`; set NTP= in /etc/systemd/timesyncd.conf for a "
                     "site-local server")

    def check_disk(self, data_dir: Path) -> None:
        probe = data_dir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            st = self.statvfs(str(probe))
        except OSError as exc:
            self.add("disk", "fail", f"cannot measure free space at {probe}: {exc.strerror or exc}",
                     "check that the data folder's filesystem is mounted")
            return
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        share = free / total if total else 0.0
        details: dict[str, Any] = {"path": str(probe), "free_bytes": free, "total_bytes": total}
        where = f"{_size(free)} free of {_size(total)} at {probe}"
        limit = self.loaded.config.buffer.max_bytes if self.loaded else None
        if free < DISK_FAIL_BYTES or share < DISK_FAIL_SHARE:
            self.add("disk", "fail", f"the disk is (almost) full: {where}. The buffer cannot store new readings; "
                     "they wait in memory and are lost on a restart",
                     "free space: `sudo journalctl --vacuum-size=50M`, remove old files; or use a larger SD card",
                     **details)
        elif share < DISK_WARN_SHARE or (limit is not None and free < limit - self._buffer_bytes(data_dir)):
            why = f"less than buffer.max_bytes ({_size(limit)})" if limit and free < limit else "under 10 %"
            self.add("disk", "warn", f"disk space is short: {where}, {why}: a long broker outage would fill it "
                     "before the buffer's own limit drops old readings",
                     "free space, or lower buffer.max_bytes below the free space", **details)
        else:
            self.add("disk", "ok", f"disk space for the buffer: {where}", **details)

    @staticmethod
    def _buffer_bytes(data_dir: Path) -> int:
        total = 0
        for name in ("buffer.db", "buffer.db-wal"):
            try:
                total += (data_dir / name).stat().st_size
            except OSError:
                pass
        return total

    def check_buffer(self, data_dir: Path) -> None:
        db = data_dir / "buffer.db"
        if not db.exists():
            self.add("buffer", "n/a", f"no buffer at {db} yet: the gateway has not stored a reading there")
            return
        try:
            depth, oldest_ms, last_seq = _read_buffer(db)
        except PermissionError:
            self.add("buffer", "warn", f"cannot read {db} as this user", "run `sudo fieldgate doctor`")
            return
        except sqlite3.Error as exc:
            self.add("buffer", "fail", f"cannot read the buffer {db}: {exc}",
                     "the gateway moves a corrupt buffer aside by itself at its next start; "
                     "if this stays, stop the service and move buffer.db away", path=str(db))
            return
        hwm = _read_int(data_dir / "seq.hwm")
        size = self._buffer_bytes(data_dir)
        details: dict[str, Any] = {"path": str(db), "depth": depth, "last_seq": last_seq,
                                   "seq_reserved": hwm, "bytes": size}
        if depth == 0:
            self.add("buffer", "ok", f"the buffer is empty: every reading was delivered (last seq {last_seq})",
                     **details)
            return
        age = self.now() - oldest_ms / 1000.0
        details["oldest_age_s"] = round(age, 1)
        max_age = self.loaded.config.buffer.max_age if self.loaded else None
        max_bytes = self.loaded.config.buffer.max_bytes if self.loaded else None
        waiting = f"{depth} reading(s) wait in the buffer, the oldest from {_age(age)} ago"
        if max_age and age > 0.8 * max_age:
            self.add("buffer", "fail", f"{waiting}: readings older than {_age(max_age)} (buffer.max_age) are "
                     f"dropped, the first in {_age(max_age - age)}",
                     "get the broker connection working (see the broker finding); raise buffer.max_age to wait "
                     "longer", **details)
        elif max_bytes and size > 0.8 * max_bytes:
            self.add("buffer", "warn", f"{waiting}, {_size(size)} of {_size(max_bytes)} "
                     "(buffer.max_bytes): beyond the limit the oldest are dropped",
                     "get the broker connection working (see the broker finding)", **details)
        elif age > BACKLOG_WARN_S:
            self.add("buffer", "warn", f"{waiting}: the broker has not acknowledged them",
                     "see the broker finding; buffered readings are sent by themselves, in order, once it is "
                     "reachable", **details)
        else:
            self.add("buffer", "ok", f"{depth} reading(s) in flight, the oldest from {_age(age)} ago", **details)

    # --- hardware (each driver's own checks) -------------------------------------------------------

    async def check_drivers(self, devices: Sequence[DeviceSpec]) -> None:
        """Every installed driver's ``doctor()`` hook, with its enabled devices (serial ports, BlueZ, ...)."""
        for name in available_drivers():
            try:
                cls = load_driver(name)
            except DriverUnavailable:
                continue  # not usable here; a configured one already failed the configuration check
            if not isinstance(cls, HasDoctor):
                continue
            mine = [DoctorDevice(d.config.id, d.connection) for d in devices if d.config.enabled and d.driver is cls]
            try:
                self.findings += await cls.doctor(mine, self.timeout)
            except Exception as exc:  # a driver's bug costs its own checks, not the report
                self.add(f"driver:{name}", "fail", f"the {name} driver's checks failed: {exc!r}",
                         "report this with the output of `fieldgate doctor --json`")

    # --- uplink and devices --------------------------------------------------------------------

    async def check_broker(self, loaded: LoadedConfig) -> None:
        """Reach every broker of the list (DNS, TCP, TLS, login) and say which of them work.

        The uplink fails over in list order (``mqtt.hosts``), so one working broker keeps the gateway
        delivering: then a broker that fails is a warning (the failover has lost a spare), and only
        when none works is each one a failure.
        """
        cfg = loaded.config.mqtt
        if cfg is None:
            return
        from .mqtt import broker_url, for_endpoint

        endpoints = cfg.endpoints
        each = [for_endpoint(cfg, ep) for ep in endpoints] if cfg.hosts else [cfg]
        # Concurrently: each is bounded by the doctor's timeout, so a list of dead brokers costs one.
        results = await asyncio.gather(*(self._try_broker(loaded, one, i) for i, one in enumerate(each)))
        works = any(r is None for r in results)
        tls_word = "TLS" if cfg.tls else "plain"
        login = f"login as {cfg.username!r} accepted" if cfg.username else "no login configured"
        for i, (one, failure) in enumerate(zip(each, results, strict=True)):
            url = broker_url(one)
            which = f" ({i + 1} of {len(endpoints)} in mqtt.hosts)" if len(endpoints) > 1 else ""
            if failure is None:
                self.add("broker", "ok", f"broker {url}{which} reached ({tls_word}"
                         f"{', certificate verified' if cfg.tls else ''}), {login}", url=url)
                continue
            stage, fix, msg = failure
            status: Status = "warn" if works else "fail"
            spare = "; the gateway fails over to a broker that works" if works else ""
            self.add(f"broker.{stage}", status, _STAGE_WORDS[stage].format(url=url) + f"{which}: {msg}{spare}",
                     fix, url=url, stage=stage)

    async def _try_broker(self, loaded: LoadedConfig, cfg: MqttConfig, index: int) -> tuple[str, str, str] | None:
        """Connect to one broker and leave; None when it worked, else (stage, fix, what happened)."""
        from .mqtt import MqttLink

        fast = cfg.model_copy(update={"connect_timeout": min(cfg.connect_timeout, self.timeout)})
        link = MqttLink(fast, f"fieldgate-doctor-{loaded.config.gateway.id}-{os.getpid()}-{index}",
                        ("fieldgate-doctor/unused", ""), on_ack=lambda _mid: None)
        link.client.will_clear()  # a doctor that goes away must not announce the gateway offline
        try:
            await link.connect()
        except GatewayError as exc:
            link.abort()
            stage, fix = _broker_stage(exc)
            return stage, fix + (f" ({exc.hint})" if exc.hint else ""), exc.args[0] if exc.args else str(exc)
        await link.disconnect()
        return None

    async def check_running_service(self, loaded: LoadedConfig) -> dict[str, dict[str, Any]] | None:
        """The devices of the gateway running with this configuration, as its status page reports them.

        The running instance is found through its status API at ``web.listen`` (with ``web.password``
        as a bearer token when one is set): it answers only while the service runs, it says which
        gateway it is, and it carries each device's state, so nothing is opened a second time and
        a stale pid file cannot mislead. Returns None when no instance of this gateway answers there
        (the devices are then probed directly).
        """
        web = loaded.config.web
        self.service = find_service(self.config_path)
        pid = f"pid {self.service.pid}, " if self.service else ""
        if web.enabled:
            addr = ListenAddress.parse(web.listen)
            # Port 0: the page took a free port at start, which only the running process knows.
            ports = [addr.port] if addr.port else (listening_ports(self.service.pid) if self.service else [])
            for port in ports[:MAX_PAGE_PORTS]:
                found = await self._ask_page(loaded, addr.host, port)
                if found is not None:
                    status, base, by_id = found
                    self.add("service.running", "ok", f"fieldgate {status.get('version', '')} is running this "
                             f"configuration ({pid}up {_age(float(status.get('uptime_s') or 0))}); its devices "
                             f"are read from its status page {base.removesuffix('/api/v1')}/, not opened a second "
                             "time", url=base, uptime_s=status.get("uptime_s"),
                             pid=self.service.pid if self.service else None)
                    return by_id
        if self.service is not None:
            why = ("its status page is off (web.enabled: false)" if not web.enabled else
                   "its status page did not answer here")
            self.add("service.running", "ok", f"fieldgate is running this configuration ({pid}up "
                     f"{_age(self.service.uptime_s)}); {why}, so the state of its devices cannot be read from it, "
                     "and they are not opened a second time", pid=self.service.pid, uptime_s=self.service.uptime_s)
        return None

    async def _ask_page(self, loaded: LoadedConfig, host: str,
                        port: int) -> tuple[dict[str, Any], str, dict[str, dict[str, Any]]] | None:
        """(status, API base, devices by id) from the status page at host:port if it is this gateway's."""
        web = loaded.config.web
        # The page may listen on every address; it is asked on loopback, which it always serves.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        base = f"http://{ListenAddress(host, port)}/api/v1"
        headers = {"Accept": "application/json"}
        if web.password is not None:
            try:
                headers["Authorization"] = f"Bearer {web.password.reveal()}"
            except (OSError, KeyError):
                return None  # this user cannot read the password: probe as before
        try:
            status = await asyncio.to_thread(_get_json, f"{base}/status", headers, min(self.timeout, 3.0))
            if not isinstance(status, dict) or status.get("gateway") != loaded.config.gateway.id:
                return None
            devices = await asyncio.to_thread(_get_json, f"{base}/devices", headers, min(self.timeout, 3.0))
        except (OSError, ValueError) as exc:
            log.debug("no running service at %s: %s", base, exc)
            return None
        docs = devices.get("devices", devices) if isinstance(devices, dict) else devices
        by_id = {str(d["id"]): d for d in docs if isinstance(d, dict) and "id" in d} if isinstance(docs, list) else {}
        return status, base, by_id

    def check_devices_held(self, loaded: LoadedConfig, service: ServiceProcess) -> None:
        """Devices of a service found by its process, with no status page to ask: named, not opened."""
        for spec in loaded.devices:
            if spec.config.enabled:
                self.add(f"device:{spec.config.id}", "n/a", f"device {spec.config.id}: held by the running service "
                         f"(pid {service.pid}); not opened a second time",
                         "to see its state here, turn the status page on (web.enabled, on 127.0.0.1 it needs no "
                         "password), or stop the service for a direct check (`sudo systemctl stop fieldgate`)",
                         driver=spec.driver.name, pid=service.pid)

    def check_devices_of_service(self, loaded: LoadedConfig, service: dict[str, dict[str, Any]]) -> None:
        """One finding per enabled device from what the running service reports about it."""
        for spec in loaded.devices:
            if not spec.config.enabled:
                continue
            dev_id = spec.config.id
            check = f"device:{dev_id}"
            details: dict[str, Any] = {"driver": spec.driver.name, "from": "service"}
            doc = service.get(dev_id)
            if doc is None:
                self.add(check, "warn", f"device {dev_id} is in the configuration but the running service does "
                         "not run it: the file changed since it started",
                         "apply the file: `sudo systemctl reload fieldgate` (or restart it)", **details)
                continue
            state, error = str(doc.get("state")), doc.get("last_error")
            details.update(state=state, last_reading=doc.get("last_reading"), last_error=error)
            held = f"device {dev_id}: held by the running service, which reports it {state}"
            seen = f" (last reading {doc['last_reading']})" if doc.get("last_reading") else ""
            if state == "online":
                self.add(check, "ok", held + seen, **details)
            elif state == "starting":
                self.add(check, "ok", held + ": it has just started", **details)
            elif state == "offline" and not error and not doc.get("last_reading"):
                # Nothing failed, nothing arrived: a device that reports on its own (a sleeping push
                # device) has not reported since the service started; the direct check says the same.
                self.add(check, "ok", f"device {dev_id}: held by the running service, which listens for it; "
                         "no report from it since the service started", "its last report time is on the status page",
                         **details)
            elif state == "degraded":
                self.add(check, "warn", f"{held}: {error or 'some points fail'}{seen}",
                         f"`fieldgate probe {dev_id}` shows each point (stop the service for it if the port is "
                         "exclusive); check the profile's addresses", **details)
            else:
                self.add(check, "fail", f"{held}: {error or 'no answer'}{seen}",
                         "check power, wiring and the address in the configuration; the status page shows "
                         "when it last answered", **details)

    async def check_devices(self, loaded: LoadedConfig) -> None:
        groups: dict[str, list[DeviceSpec]] = {}
        for spec in loaded.devices:
            if spec.config.enabled:
                groups.setdefault(spec.bus or f"device:{spec.config.id}", []).append(spec)

        async def one_bus(specs: list[DeviceSpec]) -> None:
            for spec in specs:  # devices sharing a line are asked one at a time, as the gateway does
                self.findings.append(await self._probe(spec))

        async with asyncio.TaskGroup() as tg:
            for name, specs in groups.items():
                tg.create_task(one_bus(specs), name=f"doctor[{name}]")

    async def _probe(self, spec: DeviceSpec) -> Finding:
        from .app import DeviceLog
        from .driver import DeviceContext, SharedResources, create_driver, is_passive
        from .probe import endpoint_of, read_once
        from .testing.sink import RecordingSink

        dev_id = spec.config.id
        check = f"device:{dev_id}"
        limit = max(spec.config.poll_timeout, self.timeout)
        dlog = DeviceLog(logging.getLogger(f"fieldgate.device.{dev_id}"), {"device": dev_id})
        ctx = DeviceContext(dev_id, spec.profile, spec.connection, spec.config.poll_timeout, dlog, SharedResources())
        sink = RecordingSink()
        started = time.monotonic()
        busy = ("; fieldgate.service holds this port while it runs: run doctor with --no-devices, or stop the "
                "service for a moment (`sudo systemctl stop fieldgate`)")
        try:
            driver = create_driver(spec.driver, ctx)
            async with asyncio.timeout(limit):
                await driver.__aenter__()
                try:
                    if is_passive(driver):
                        return Finding(check, "ok", f"device {dev_id} reports when it wakes; the gateway can "
                                       f"receive it at {endpoint_of(driver)}",
                                       "its last report time is on the status page",
                                       {"driver": spec.driver.name, "passive": True})
                    await read_once(driver, sink)
                finally:
                    await driver.__aexit__(None, None, None)
        except TimeoutError:
            return Finding(check, "fail", f"device {dev_id} did not answer within {limit:g} s",
                           "check power, wiring and the address in the configuration; `fieldgate probe "
                           f"{dev_id}` shows the exchange", {"driver": spec.driver.name})
        except DriverError as exc:
            msg = exc.args[0] if exc.args else str(exc)
            return Finding(check, "fail", f"device {dev_id} does not answer: {msg}",
                           (exc.hint or "check power, wiring and the address in the configuration")
                           + (busy if isinstance(exc, DeviceBusy) else ""),
                           {"driver": spec.driver.name, "reason": exc.reason})
        except Exception as exc:
            return Finding(check, "fail", f"device {dev_id}: the {spec.driver.name} driver failed: {exc!r}",
                           "report this with the output of `fieldgate probe " + dev_id + "`",
                           {"driver": spec.driver.name})
        took_ms = round((time.monotonic() - started) * 1000)
        points = sum(len(r.values) for r in sink.readings)
        bad = sorted({name for r in sink.readings for name, v in r.values.items() if isinstance(v, PointError)})
        if sink.errors or bad:
            what = "; ".join(str(e) for e in sink.errors[:3]) or f"points without a value: {', '.join(bad)}"
            return Finding(check, "warn", f"device {dev_id} answered in {took_ms} ms, partly: {what}",
                           f"`fieldgate probe {dev_id}` shows each point; check the profile's addresses",
                           {"driver": spec.driver.name, "ms": took_ms, "bad_points": bad})
        return Finding(check, "ok", f"device {dev_id} answered: {points} value(s) in {took_ms} ms",
                       details={"driver": spec.driver.name, "ms": took_ms, "points": points})


_STAGE_WORDS = {
    "network": "the broker {url} cannot be reached",
    "tls": "TLS with the broker {url} failed",
    "login": "the broker {url} refused the login",
}


def _broker_stage(exc: GatewayError) -> tuple[str, str]:
    import socket
    import ssl

    cause, text = exc.__cause__, str(exc).lower()
    if isinstance(cause, ssl.SSLError) or "tls" in text:
        return "tls", "check mqtt.tls.ca_file (it must be the CA that signed the broker's certificate), that " \
                      "mqtt.host is the name in that certificate, and the client certificate for mutual TLS"
    if "password" in text or "login" in text or "authori" in text or "credentials" in text:
        return "login", "check mqtt.username and the password file (mqtt.password) against the broker's accounts"
    if isinstance(cause, socket.gaierror):
        return "network", "check mqtt.host and the DNS settings"
    return "network", "check that the broker runs, mqtt.host and mqtt.port, and the network path (firewall, VPN)"


def _read_buffer(db: Path) -> tuple[int, int, int]:
    """(depth, oldest ts_ms, last seq) of a buffer database, opened read-only."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
    try:
        depth = int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
        # By time, not seq: max_age drops by ts_ms, and a device with a lagging clock can be older.
        row = conn.execute("SELECT min(ts_ms) FROM readings").fetchone()
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
    finally:
        conn.close()
    return depth, int(row[0]) if row and row[0] is not None else 0, int(seq[0]) if seq else 0


# --- the running service, found by its process ---------------------------------------------

#: Listening ports of the service tried for its status page (it has one, and CoAP listens on UDP).
MAX_PAGE_PORTS = 8
PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ServiceProcess:
    """A ``fieldgate run`` of the configuration doctor checks."""

    pid: int
    uptime_s: float


def _run_config(argv: list[str]) -> str | None:
    """The configuration a ``fieldgate run`` command line names (its default if none), else None."""
    for i, arg in enumerate(argv):
        # `.../bin/fieldgate run ...` (the unit's ExecStart) or `python -m fieldgate.cli run ...`
        if arg == "run" and i > 0 and (Path(argv[i - 1]).name == "fieldgate" or argv[i - 1] == "fieldgate.cli"):
            rest = argv[i + 1:]
            for j, opt in enumerate(rest):
                if opt in ("-c", "--config") and j + 1 < len(rest):
                    return rest[j + 1]
                if opt.startswith("--config="):
                    return opt.partition("=")[2]
                if opt.startswith("-c") and len(opt) > 2:
                    return opt[2:]
            return str(DEFAULT_CONFIG)
    return None


def find_service(config_path: Path, proc: Path = PROC) -> ServiceProcess | None:
    """The oldest ``fieldgate run`` process of ``config_path`` (however the path was written), or None.

    Read from ``/proc``: a process of another user is seen where ``/proc`` lets this one see it
    (doctor runs with sudo on a gateway; the unit's ProtectProc hides nothing from root).
    """
    want = os.path.realpath(config_path)
    found: list[ServiceProcess] = []
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit() and int(e) != os.getpid()]
    except OSError:
        return None
    for entry in entries:
        try:
            argv = (proc / entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            named = _run_config([a for a in argv if a])
            if named is None:
                continue
            if not os.path.isabs(named):
                named = os.path.join(os.readlink(proc / entry / "cwd"), named)
            if os.path.realpath(named) != want:
                continue
            found.append(ServiceProcess(int(entry), _process_uptime(proc, entry)))
        except OSError:
            continue  # gone meanwhile, or not ours to look at
    return max(found, key=lambda p: p.uptime_s) if found else None


def _process_uptime(proc: Path, pid: str) -> float:
    stat_text = (proc / pid / "stat").read_text()
    fields = stat_text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5): start time after boot
    return max(0.0, float((proc / "uptime").read_text().split()[0]) - started)


def listening_ports(pid: int, proc: Path = PROC) -> list[int]:
    """TCP ports process ``pid`` listens on, from its sockets and /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(proc / str(pid) / "fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(proc / str(pid) / "fd" / fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return []
    ports: list[int] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                port = int(cols[1].rpartition(":")[2], 16)
                if port not in ports:
                    ports.append(port)
    return ports


def _get_json(url: str, headers: dict[str, str], timeout: float) -> Any:
    """GET ``url`` and parse its JSON (blocking; run in a thread).

    Raises:
        OSError: no answer, refused, or an HTTP error status.
        ValueError: the body is not JSON.
    """
    import urllib.request

    req = urllib.request.Request(url, headers=headers)  # an http URL built from web.listen
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read(1_000_000))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


# --- report and command line ---------------------------------------------------------------


def worst(findings: Sequence[Finding]) -> Status:
    """The most severe status among ``findings``."""
    top: Status = "ok"
    for f in findings:
        if _RANK[f.status] > _RANK[top]:
            top = f.status
    return top


def exit_code(findings: Sequence[Finding], strict: bool = False) -> int:
    """1 configuration missing/invalid, 3 a check failed (or warned, with ``strict``), else 0."""
    if any(f.check in ("config", "config.mqtt") and f.status == "fail" for f in findings):
        return EXIT_INVALID
    top = worst(findings)
    if top == "fail" or (strict and top == "warn"):
        return EXIT_FAILED
    return EXIT_OK


_LABEL = {"ok": "OK", "n/a": "n/a", "warn": "WARN", "fail": "FAIL"}


def render_text(findings: Sequence[Finding], config_path: Path) -> str:
    """The report for a person."""
    lines = [f"fieldgate doctor: {config_path}", ""]
    for f in findings:
        first, *rest = f.summary.splitlines() or [""]
        lines.append(f"{_LABEL[f.status]:<5} {f.check:<22} {first}")
        lines += [f"{'':<29}{ln}" for ln in rest]
        if f.fix and f.status in ("warn", "fail"):
            lines.append(f"{'':<29}fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.status == s) for s in ("fail", "warn", "ok", "n/a")}
    lines += ["", f"{counts['fail']} problem(s), {counts['warn']} warning(s), {counts['ok']} ok, "
              f"{counts['n/a']} not applicable"]
    return "\n".join(lines)


def render_json(findings: Sequence[Finding], config_path: Path, strict: bool = False) -> str:
    """The report for machines."""
    return json.dumps({"config": str(config_path), "worst": worst(findings),
                       "exit_code": exit_code(findings, strict),
                       "findings": [asdict(f) for f in findings]}, indent=2, default=str)


def cmd_doctor(args: argparse.Namespace) -> int:
    """``fieldgate doctor``."""
    from .logs import setup_logging

    setup_logging("CRITICAL" if args.json else "ERROR")
    path = Path(args.config)
    doctor = Doctor(path, root=Path(args.root), timeout=args.timeout, devices=not args.no_devices)
    findings = asyncio.run(doctor.run())
    if args.json:
        print(render_json(findings, path, args.strict))
    else:
        print(render_text(findings, path))
    return exit_code(findings, args.strict)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``doctor``."""
    p = sub.add_parser(
        "doctor", help="check the gateway and explain what is wrong, with a fix for each finding",
        description="Check the configuration and profiles, provisioning, the service, the clock, disk space, the "
        "buffer, serial ports, BLE/BlueZ, the broker (reachability, TLS, login) and each device.",
        epilog="exit codes: 0 nothing failed (warnings allowed), 1 configuration missing or invalid, "
        "3 a check failed (with --strict: or warned)")
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="configuration file (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--no-devices", action="store_true",
                   help="do not poll the devices (a running service holds its serial ports)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for the broker and each device (default 10)")
    p.add_argument("--strict", action="store_true", help="warnings make the exit code 3 too")
    p.add_argument("--root", default="/", help="look for /boot and /etc/systemd below this folder")
    p.set_defaults(func=cmd_doctor)

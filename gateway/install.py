"""``fieldgate install`` / ``fieldgate uninstall``: put the gateway under systemd.

An installer runs ``sudo fieldgate install`` once per gateway (or once per
golden image). It creates, each step idempotent and reported on one line:

* the system user ``fieldgate`` (no login, no home; the unit adds ``dialout``
  and ``bluetooth`` at run time, so the account itself is in no extra group);
* ``/etc/fieldgate`` (root:fieldgate 0750), ``/var/lib/fieldgate`` (the buffer
  and ``seq.hwm``) and ``/var/log/fieldgate`` (fieldgate:fieldgate 0750);
* a virtual environment under ``/opt/fieldgate`` with fieldgate installed by
  pip, or, with ``--use-current``, the installation that runs this command;
* ``fieldgate.service`` and ``fieldgate-provision.service`` in
  ``/etc/systemd/system`` (rendered from the packaged ``systemd/`` files, the one
  source of their text), enabled for ``multi-user.target``;
* ``/etc/modules-load.d/fieldgate.conf`` loading ``usbserial`` and ``cdc_acm``
  at boot, so the device allow-list of the unit (``DevicePolicy=closed``)
  knows the USB-serial major numbers even before an adapter is plugged in.

Running it again changes nothing that is already right; running it with a
newer ``--from`` upgrades the software and leaves configuration, buffer and
``seq`` continuity alone (they live in /etc and /var/lib, never under /opt).
``fieldgate uninstall`` removes the units, the venv and the module list and
keeps configuration, data and the user unless ``--purge`` is given.

Everything takes a ``root`` (default ``/``): with another root (a test folder,
a mounted SD card) files are written below it, and what only makes sense on
the live system (``useradd``, ``chown``, ``systemctl``) is reported as skipped
with the command to run instead. Units are then enabled the way
``systemctl enable`` does it offline: a symlink in ``multi-user.target.wants``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from . import __version__

EXIT_OK, EXIT_FAILED = 0, 3

SERVICE_USER = "fieldgate"
SERVICE_GROUPS = ("dialout", "bluetooth")
SERVICE_UNIT = "fieldgate.service"
PROVISION_UNIT = "fieldgate-provision.service"
PREFIX = Path("/opt/fieldgate")
ETC_DIR = Path("/etc/fieldgate")
STATE_DIR = Path("/var/lib/fieldgate")
LOGS_DIR = Path("/var/log/fieldgate")
UNIT_DIR = Path("/etc/systemd/system")
WANTS_DIR = UNIT_DIR / "multi-user.target.wants"
MODULES_LOAD = Path("/etc/modules-load.d/fieldgate.conf")
DEFAULT_EXECUTABLE = PREFIX / "bin" / "fieldgate"

# The unit files are package data (gateway/systemd/, which the repository's systemd/
# links to): the one source of their text. Rendering changes only these lines.
_EXEC_PREFIX = f"ExecStart={DEFAULT_EXECUTABLE} "
_GROUPS_LINE = "SupplementaryGroups=" + " ".join(SERVICE_GROUPS)

MODULES_TEXT = """\
# fieldgate: load the USB-serial drivers at boot, so that fieldgate.service's
# DeviceAllow=char-ttyUSB / char-ttyACM resolve even before an adapter is plugged in.
usbserial
cdc_acm
"""


class InstallError(Exception):
    """A step cannot be done; the message says what to do instead."""


def render_units(executable: Path = DEFAULT_EXECUTABLE, groups: Sequence[str] = SERVICE_GROUPS) -> dict[str, str]:
    """The unit files by name, for ``executable`` and the supplementary ``groups``.

    Raises:
        InstallError: the executable's path has whitespace (systemd would split ``ExecStart=`` there).
    """
    if any(c.isspace() for c in str(executable)):
        raise InstallError(f"{executable}: the path has a space, which ExecStart= cannot hold unquoted; "
                           "install under a path without spaces (e.g. /opt/fieldgate)")
    folder = resources.files(__package__ or "fieldgate") / "systemd"
    units = {}
    for name in (SERVICE_UNIT, PROVISION_UNIT):
        lines = (folder / name).read_text(encoding="utf-8").splitlines(keepends=True)
        out = []
        for line in lines:
            if line.startswith(_EXEC_PREFIX):
                line = f"ExecStart={executable} " + line[len(_EXEC_PREFIX):]
            elif line.rstrip("\n") == _GROUPS_LINE:
                line = "SupplementaryGroups=" + " ".join(groups) + "\n"
            out.append(line)
        units[name] = "".join(out)
    return units


@dataclass(frozen=True, slots=True)
class Step:
    """One line of the install report: what was done to what."""

    action: str  # created | updated | unchanged | removed | kept | skipped | ran
    target: str
    note: str = ""

    def __str__(self) -> str:
        return f"{self.action:<9} {self.target}" + (f"  ({self.note})" if self.note else "")


Runner = Callable[[Sequence[str]], None]


def _run(cmd: Sequence[str]) -> None:
    try:
        subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        raise InstallError(f"{' '.join(cmd)} failed (exit {exc.returncode}): "
                           f"{(exc.stderr or exc.stdout or '').strip()[-2000:]}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"cannot run {cmd[0]}: {exc}") from exc


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def default_spec() -> str:
    """What ``pip install`` gets by default: this checkout if run from one, else this version."""
    try:
        dist = metadata.distribution("fieldgate")
        direct = dist.read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        direct = None
    if direct:
        url = str(json.loads(direct).get("url", ""))
        if url.startswith("file://"):
            return f"{url.removeprefix('file://')}[all]"
    return f"fieldgate[all]=={__version__}"


class Installer:
    """Installs and removes fieldgate below ``root``.

    Args:
        root: the filesystem root to install into (``/`` for this machine).
        run: runs one command, raising ``InstallError`` on failure (tests record instead).
        systemd_running: whether to call ``systemctl``; default: ``root`` is ``/``
            and systemd is PID 1 (``/run/systemd/system`` exists).
    """

    def __init__(self, root: Path = Path("/"), run: Runner = _run, systemd_running: bool | None = None) -> None:
        self.root = Path(root)
        self.live = self.root.resolve() == Path("/")
        self.run = run
        self.systemd = (self.live and Path("/run/systemd/system").is_dir()) if systemd_running is None \
            else systemd_running
        self.steps: list[Step] = []

    def at(self, path: Path) -> Path:
        """``path`` (absolute on the target) as seen from here."""
        return self.root / path.relative_to("/")

    def _step(self, action: str, target: Path | str, note: str = "") -> None:
        self.steps.append(Step(action, str(target), note))

    # --- install ----------------------------------------------------------------------

    def install(self, *, use_current: bool = False, spec: str | None = None, start: bool = False) -> list[Step]:
        """Install (or bring up to date) everything; returns the steps taken.

        Raises:
            InstallError: a step failed; the steps before it stay done (re-run to finish).
        """
        self._user()
        self._dirs()
        executable = self._software(use_current, spec)
        self._write(MODULES_LOAD, MODULES_TEXT, 0o644)
        groups = self._groups()
        for name, text in render_units(executable, groups).items():
            self._write(UNIT_DIR / name, text, 0o644)
        self._enable(start)
        return self.steps

    def _user(self) -> None:
        cmd = ["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR), "--no-create-home",
               "--shell", "/usr/sbin/nologin", "--comment", "fieldgate edge gateway", SERVICE_USER]
        if not self.live:
            self._step("skipped", f"user {SERVICE_USER}", f"not the live system; on the gateway: {shlex.join(cmd)}")
        elif _user_exists(SERVICE_USER):
            self._step("unchanged", f"user {SERVICE_USER}")
        else:
            self.run(cmd)
            self._step("created", f"user {SERVICE_USER}", "system user, no login, no home")

    def _dirs(self) -> None:
        for path, owner in ((ETC_DIR, "root"), (STATE_DIR, SERVICE_USER), (LOGS_DIR, SERVICE_USER)):
            target = self.at(path)
            existed = target.is_dir()
            target.mkdir(parents=True, exist_ok=True)
            changed = (target.stat().st_mode & 0o7777) != 0o750
            target.chmod(0o750)
            note = f"{owner}:{SERVICE_USER} 0750"
            if self.live and os.geteuid() == 0 and _user_exists(SERVICE_USER):
                pw = pwd.getpwnam(SERVICE_USER)
                uid = 0 if owner == "root" else pw.pw_uid
                st = target.stat()
                if (st.st_uid, st.st_gid) != (uid, pw.pw_gid):
                    os.chown(target, uid, pw.pw_gid)
                    changed = True
            elif self.live:
                note += "; ownership not set: run as root"
            self._step("created" if not existed else "updated" if changed else "unchanged", path, note)

    def _software(self, use_current: bool, spec: str | None) -> Path:
        if use_current:
            exe = Path(sys.prefix) / "bin" / "fieldgate"
            if not exe.exists():
                found = shutil.which("fieldgate")
                if found is None:
                    raise InstallError("no `fieldgate` executable in this installation: install with --venv")
                exe = Path(found)
            exe = exe.absolute()
            if exe.is_relative_to("/home") or exe.is_relative_to("/root"):
                raise InstallError(f"{exe} is under a home folder, which the service cannot see (ProtectHome=yes): "
                                   "install into /opt with `fieldgate install` (without --use-current)")
            if exe.parent.parent == self.at(PREFIX):
                self._step("kept", PREFIX, "the virtual environment this command runs from")
            else:
                self._step("kept", exe.parent.parent, "the installation this command runs from; no venv under /opt")
            return exe
        prefix = self.at(PREFIX)
        python = prefix / "bin" / "python"
        if not python.exists():
            self.run([sys.executable, "-m", "venv", str(prefix)])
            self._step("created", PREFIX, "virtual environment")
        want = spec or default_spec()
        self.run([str(prefix / "bin" / "pip"), "install", "--quiet", "--upgrade", want])
        self._step("ran", f"pip install --upgrade {want}", f"into {PREFIX}")
        return DEFAULT_EXECUTABLE

    def _groups(self) -> list[str]:
        """The supplementary groups that exist on the target (a missing one would stop the unit)."""
        group_file = self.at(Path("/etc/group"))
        try:
            names = {line.split(":", 1)[0] for line in group_file.read_text().splitlines() if line}
        except OSError:
            return list(SERVICE_GROUPS)
        present = [g for g in SERVICE_GROUPS if g in names]
        for g in SERVICE_GROUPS:
            if g not in names:
                self._step("skipped", f"group {g}", "not on this system; left out of SupplementaryGroups= "
                           "(install bluez and re-run `fieldgate install` to add it)")
        return present

    def _write(self, path: Path, text: str, mode: int) -> None:
        target = self.at(path)
        try:
            old: str | None = target.read_text()
        except FileNotFoundError:
            old = None
        if old == text:
            self._step("unchanged", path)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        os.replace(tmp, target)
        self._step("created" if old is None else "updated", path)

    def _enable(self, start: bool) -> None:
        units = [SERVICE_UNIT, PROVISION_UNIT]
        if self.systemd:
            self.run(["systemctl", "daemon-reload"])
            self.run(["systemctl", "enable", *(["--now"] if start else []), *units])
            self._step("ran", f"systemctl enable {'--now ' if start else ''}{' '.join(units)}")
            return
        for unit in units:
            link = self.at(WANTS_DIR / unit)
            want = UNIT_DIR / unit
            if link.is_symlink() and Path(os.readlink(link)) == want:
                self._step("unchanged", WANTS_DIR / unit)
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(want)
            self._step("created", WANTS_DIR / unit, "enabled; systemd is not running here, so it starts at boot")

    # --- uninstall --------------------------------------------------------------------

    def uninstall(self, *, purge: bool = False) -> list[Step]:
        """Remove units, venv and module list; configuration, data and user too with ``purge``."""
        units = [SERVICE_UNIT, PROVISION_UNIT]
        if self.systemd:
            self.run(["systemctl", "disable", "--now", *units])
            self._step("ran", f"systemctl disable --now {' '.join(units)}")
        for path in [*(WANTS_DIR / u for u in units), *(UNIT_DIR / u for u in units), MODULES_LOAD]:
            target = self.at(path)
            if target.is_symlink() or target.exists():
                target.unlink()
                self._step("removed", path)
        prefix = self.at(PREFIX)
        if prefix.is_symlink():
            prefix.unlink()
            self._step("removed", PREFIX, "symlink")
        elif (prefix / "pyvenv.cfg").exists():
            shutil.rmtree(prefix)
            self._step("removed", PREFIX, "virtual environment")
        elif prefix.exists():
            self._step("kept", PREFIX, "not a virtual environment made by fieldgate install; remove it by hand")
        for path, what in ((ETC_DIR, "configuration"), (STATE_DIR, "buffer and seq"), (LOGS_DIR, "logs")):
            target = self.at(path)
            if not target.exists():
                continue
            if purge:
                shutil.rmtree(target)
                self._step("removed", path, what)
            else:
                self._step("kept", path, f"{what}; --purge removes it")
        if purge and self.live and _user_exists(SERVICE_USER):
            self.run(["userdel", SERVICE_USER])
            self._step("removed", f"user {SERVICE_USER}")
        elif self.live and _user_exists(SERVICE_USER):
            self._step("kept", f"user {SERVICE_USER}", "--purge removes it")
        if self.systemd:
            self.run(["systemctl", "daemon-reload"])
        return self.steps


# --- command line --------------------------------------------------------------------------


def _needs_root(root: Path) -> str | None:
    if root.resolve() == Path("/") and os.geteuid() != 0:
        return "run as root: sudo fieldgate ..."
    return None


def _report(steps: Sequence[Step]) -> None:
    for step in steps:
        print(step)


def cmd_install(args: argparse.Namespace) -> int:
    """``fieldgate install``."""
    root = Path(args.root)
    if (problem := _needs_root(root)) is not None:
        print(f"fieldgate install: {problem}", file=sys.stderr)
        return EXIT_FAILED
    installer = Installer(root)
    try:
        installer.install(use_current=args.use_current, spec=args.spec, start=args.now)
    except (InstallError, OSError) as exc:
        _report(installer.steps)
        print(f"fieldgate install: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _report(installer.steps)
    conf = installer.at(ETC_DIR / "fieldgate.yaml")
    if not conf.exists():
        print(f"next: put fieldgate.yaml on the boot partition and reboot, or run "
              f"`sudo fieldgate provision --boot-dir DIR` (the service waits for {ETC_DIR / 'fieldgate.yaml'})")
    return EXIT_OK


def cmd_uninstall(args: argparse.Namespace) -> int:
    """``fieldgate uninstall``."""
    root = Path(args.root)
    if (problem := _needs_root(root)) is not None:
        print(f"fieldgate uninstall: {problem}", file=sys.stderr)
        return EXIT_FAILED
    installer = Installer(root)
    try:
        installer.uninstall(purge=args.purge)
    except (InstallError, OSError) as exc:
        _report(installer.steps)
        print(f"fieldgate uninstall: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _report(installer.steps)
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``install`` and ``uninstall``."""
    p = sub.add_parser(
        "install", help="install as a systemd service (run as root)",
        description="Create the fieldgate user, /etc/fieldgate, /var/lib/fieldgate, a venv under /opt/fieldgate, "
        "the systemd units, and enable them. Safe to run again; with a newer --from it upgrades and keeps "
        "configuration and buffered data.",
        epilog="exit codes: 0 done, 3 a step failed (the message says which; re-run when fixed)")
    p.add_argument("--root", default="/", help="install below this folder instead of / (images, tests)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--use-current", action="store_true",
                     help="run the fieldgate that runs this command instead of a venv under /opt/fieldgate")
    how.add_argument("--from", dest="spec", metavar="SPEC",
                     help="what pip installs into /opt/fieldgate (a wheel, a folder, fieldgate[all]==X.Y); "
                     "default: this version, or this checkout")
    p.add_argument("--now", action="store_true", help="also start the service (when systemd runs)")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser(
        "uninstall", help="remove the systemd service (keeps configuration and data)",
        description="Stop and disable the units, remove them and /opt/fieldgate. Configuration, buffered data "
        "and the user stay unless --purge is given.",
        epilog="exit codes: 0 done, 3 a step failed")
    p.add_argument("--root", default="/", help="uninstall below this folder instead of /")
    p.add_argument("--purge", action="store_true",
                   help="also delete /etc/fieldgate, /var/lib/fieldgate (unsent readings!) and the user")
    p.set_defaults(func=cmd_uninstall)

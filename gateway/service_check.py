"""What ``fieldgate.service`` needs of a configuration beyond its being valid.

``fieldgate validate --for-service`` and ``fieldgate provision`` run these checks;
``fieldgate validate`` alone does not, because a configuration written on a PC
names files that exist only on the gateway. A configuration that passes them
starts under the shipped unit:

* every file it names (password and key files, TLS files, profiles, profile
  folders) exists, is a regular file (or a folder where one is meant), is not
  hidden by the unit's sandbox (``ProtectHome=``, ``PrivateTmp=``), can be read
  by the service user, and is safe: no secret readable by every user, nothing
  that every user may replace;
* the ``mqtt`` section is present (without it the service has nowhere to send);
* ``gateway.data_dir`` is writable by the service user and lies where the unit
  lets the service write (``ProtectSystem=strict``: its ``StateDirectory=`` and
  ``ReadWritePaths=``, drop-ins included);
* the status page's port can be bound without privileges (the unit has an empty
  ``CapabilityBoundingSet=``); that it asks for a password off loopback is the
  configuration's own rule, so plain ``validate`` says it too.

Nothing is opened: a FIFO named as a CA file would block OpenSSL, and here it is
only looked at (``stat``). The rules are read from the unit file fieldgate ships,
so they change with it.

Each problem is a :class:`Diagnostic` at the key that names the file, like every
other configuration error.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel

from .checks import SERVICE_GROUPS, SERVICE_USER
from .config import LoadedConfig
from .listen import ListenAddress
from .secret import Secret
from .yamlsrc import Budget, Diagnostic, Path_, SourceMap, format_path, load_yaml, read_source

Kind = Literal["file", "secret", "folder"]

#: Field names whose file is a secret although it is not a ``Secret`` (a TLS private key).
SECRET_FILE_FIELDS = frozenset({"key_file"})

_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}

UNIT_NAME = "fieldgate.service"
DROPIN_DIR = PurePosixPath("/etc/systemd/system/fieldgate.service.d")


class Ref(NamedTuple):
    """A file or folder a configuration names: its key path, its path and what it is."""

    where: Path_
    path: Path
    kind: Kind


# --- what the configuration names ------------------------------------------------------------


def _walk(value: Any, where: Path_, field_name: str = "") -> Iterator[Ref]:
    if isinstance(value, Secret):
        if value.file is not None:
            yield Ref((*where, "file"), value.file, "secret")
    elif isinstance(value, Path):
        yield Ref(where, value, "secret" if field_name in SECRET_FILE_FIELDS else "file")
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name), (*where, name), name)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, (*where, i), field_name)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*where, str(key)), field_name)


def _secrets(value: Any, where: Path_) -> Iterator[tuple[Path_, Secret]]:
    if isinstance(value, Secret):
        yield where, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets(getattr(value, name), (*where, name))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _secrets(item, (*where, i))


def referenced_files(loaded: LoadedConfig) -> list[Ref]:
    """Every file and folder a configuration names, its devices' connections and profiles included.

    ``gateway.data_dir`` is state, not something named to be read: it is left out
    (:func:`service_diagnostics` checks it on its own). A path inside a profile file
    is reported at the device's ``profile`` key.
    """
    out: list[Ref] = []
    cfg = loaded.config
    for name in type(cfg).model_fields:
        if name == "devices":
            continue
        for ref in _walk(getattr(cfg, name), (name,), name):
            if ref.where == ("gateway", "data_dir"):
                continue
            kind: Kind = "folder" if ref.where[:2] == ("gateway", "profile_dirs") else ref.kind
            out.append(ref._replace(kind=kind))
    base = loaded.path.parent
    by_id = {spec.config.id: spec for spec in loaded.devices}
    for i, dev in enumerate(cfg.devices):
        named = dev.profile
        if isinstance(named, str) and (named.endswith((".yaml", ".yml")) or named.startswith((".", "/"))):
            p = Path(named)
            out.append(Ref(("devices", i, "profile"), p if p.is_absolute() else base / p, "file"))
        spec = by_id.get(dev.id)
        if spec is None:
            continue
        out.extend(_walk(spec.connection, ("devices", i, "connection")))
        at = ("devices", i, "profile")
        out.extend(r._replace(where=at if isinstance(named, str) else (*at, *r.where))
                   for r in _walk(spec.profile, ()))
    return out


# --- the service account ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The user the service runs as, with the groups the unit gives it."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def lookup(cls, name: str = SERVICE_USER, root: Path = Path("/")) -> ServiceAccount | None:
        """The account on the system at ``root`` (its /etc/passwd and /etc/group), or None if it has none."""
        if root == Path("/"):
            try:
                user = pwd.getpwnam(name)
            except KeyError:
                return None
            uid, gid = user.pw_uid, user.pw_gid
            groups = {g.gr_name: g.gr_gid for g in grp.getgrall()}
            members = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        else:
            users = _colon_file(root / "etc/passwd")
            if name not in users:
                return None
            uid, gid = int(users[name][1]), int(users[name][2])
            table = _colon_file(root / "etc/group")
            groups = {g: int(f[1]) for g, f in table.items()}
            members = {int(f[1]) for f in table.values() if name in f[2].split(",")}
        gids = {gid, *members, *(groups[g] for g in SERVICE_GROUPS if g in groups)}
        return cls(name, uid, frozenset(gids))

    def may(self, st: os.stat_result, want: int) -> bool:
        """Whether this account has the ``want`` bits (``os.R_OK | os.X_OK``, ...) on a file with ``st``."""
        if self.uid == 0:
            return True
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid == self.uid:
            bits = mode >> 6
        elif st.st_gid in self.gids:
            bits = mode >> 3
        else:
            bits = mode
        return bits & want == want


def _colon_file(path: Path) -> dict[str, list[str]]:
    """``name:x:field:...`` lines (passwd, group) by name; an unreadable file is empty."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isdigit():
            out[fields[0]] = fields[1:]
    return out


# --- the unit's sandbox ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sandbox:
    """What the unit lets the service see and write (from the shipped unit and its drop-ins)."""

    writable: tuple[PurePosixPath, ...]
    state_dirs: tuple[PurePosixPath, ...]
    hidden: tuple[tuple[PurePosixPath, str], ...]
    can_bind_low_ports: bool
    environment: frozenset[str] = frozenset()
    environment_files: bool = False

    @classmethod
    def of_unit(cls, root: Path = Path("/")) -> Sandbox:
        """The sandbox of the shipped ``fieldgate.service``, with the drop-ins installed at ``root``."""
        texts = [(resources.files(__package__ or "fieldgate") / "systemd" / UNIT_NAME).read_text(encoding="utf-8")]
        dropins = root / DROPIN_DIR.relative_to("/")
        if dropins.is_dir():
            texts += [p.read_text(encoding="utf-8", errors="replace") for p in sorted(dropins.glob("*.conf"))
                      if p.is_file()]
        settings: dict[str, list[str]] = {}
        for text in texts:
            for key, value in _service_settings(text):
                if value == "" and key != "CapabilityBoundingSet":
                    settings.pop(key, None)  # an empty assignment resets a list setting
                else:
                    settings.setdefault(key, []).append(value)
        state = tuple(PurePosixPath("/var/lib") / d for v in settings.get("StateDirectory", []) for d in v.split())
        logs = tuple(PurePosixPath("/var/log") / d for v in settings.get("LogsDirectory", []) for d in v.split())
        extra = tuple(PurePosixPath(p.lstrip("-+")) for v in settings.get("ReadWritePaths", []) for p in v.split())
        strict = (settings.get("ProtectSystem") or ["no"])[-1] == "strict"
        writable = (*state, *logs, *extra) if strict else (PurePosixPath("/"),)
        hidden: list[tuple[PurePosixPath, str]] = []
        if (settings.get("ProtectHome") or ["no"])[-1] in ("yes", "true", "tmpfs"):
            hidden += [(PurePosixPath(p), "ProtectHome=yes") for p in ("/home", "/root", "/run/user")]
        if (settings.get("PrivateTmp") or ["no"])[-1] in ("yes", "true"):
            hidden += [(PurePosixPath(p), "PrivateTmp=yes") for p in ("/tmp", "/var/tmp")]
        caps = settings.get("CapabilityBoundingSet", [])
        ambient = " ".join(settings.get("AmbientCapabilities", []))
        low = "CAP_NET_BIND_SERVICE" in ambient and not (caps and caps[-1] == "")
        names = {item.partition("=")[0].strip('"') for v in settings.get("Environment", []) for item in v.split()}
        return cls(writable, state, tuple(hidden), low, frozenset(names), bool(settings.get("EnvironmentFile")))


def _service_settings(text: str) -> Iterator[tuple[str, str]]:
    """``(key, value)`` of a unit's ``[Service]`` section, in order, repeated keys included."""
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()


def _unprivileged_port_start(root: Path) -> int:
    try:
        return int((root / "proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip())
    except (OSError, ValueError):
        return 1024  # the kernel's default


# --- the checks ------------------------------------------------------------------------------


class ServiceCheck:
    """Checks one loaded configuration for the service.

    Args:
        loaded: the configuration, already valid.
        smap: positions in its file (for file:line:col).
        root: the system the service runs on (``/``, or an image's root).
        account: the service user there; None where it does not exist (a PC): who may read
            and write is then not judged, and one warning says so.
        account_name: its name, for that warning.
        exempt: paths not to check (provision: the companions it installs itself).
    """

    def __init__(self, loaded: LoadedConfig, smap: SourceMap, *, root: Path = Path("/"),
                 account: ServiceAccount | None, account_name: str = SERVICE_USER,
                 exempt: Callable[[Path], bool] = lambda _p: False) -> None:
        self.loaded = loaded
        self.smap = smap
        self.root = root
        self.account = account
        self.account_name = account_name
        self.exempt = exempt
        self.sandbox = Sandbox.of_unit(root)
        self.out: list[Diagnostic] = []

    def add(self, where: Path_, message: str, severity: str = "error") -> None:
        line, col = self.smap.position(where)
        self.out.append(Diagnostic(self.smap.file, line, col, format_path(where), message, severity))

    def on_system(self, path: Path) -> tuple[PurePosixPath, Path]:
        """``(path as the service sees it, path to look at here)``."""
        path = Path(os.path.abspath(path))
        if self.root != Path("/") and path.is_relative_to(self.root):
            return PurePosixPath("/") / path.relative_to(self.root).as_posix(), path
        if self.root == Path("/"):
            return PurePosixPath(path.as_posix()), path
        return PurePosixPath(path.as_posix()), self.root / path.relative_to("/")

    def run(self) -> list[Diagnostic]:
        """Every check; the diagnostics (also in ``self.out``)."""
        cfg = self.loaded.config
        if self.account is None:
            self.add((), f"user {self.account_name} does not exist here, so who may read and write the files "
                     "was not checked: run this on the gateway after `fieldgate install`", "warning")
        if cfg.mqtt is None:
            self.out.append(Diagnostic(self.smap.file, 1, 1, "mqtt", "no 'mqtt' section: the service needs a broker "
                                       "to send readings to (`fieldgate run --stdout` is for trials without one)"))
        self.check_file((), self.loaded.path, "file", what="the configuration")
        for ref in referenced_files(self.loaded):
            if not self.exempt(ref.path):
                self.check_file(ref.where, ref.path, ref.kind)
        self.check_environment()
        self.check_data_dir()
        self.check_web()
        return self.out

    def _hidden_by(self, seen: PurePosixPath) -> str | None:
        for base, setting in self.sandbox.hidden:
            if seen == base or seen.is_relative_to(base):
                return f"{setting} in {UNIT_NAME} hides {base} from the service"
        return None

    def check_file(self, where: Path_, path: Path, kind: Kind, what: str = "") -> None:
        """One named file or folder: there, of the right kind, visible, readable and safe."""
        seen, here = self.on_system(path)
        noun = "folder" if kind == "folder" else "file"
        hidden = self._hidden_by(seen)
        if hidden:
            self.add(where, f"{seen}: {hidden}: put the {noun} in /etc/fieldgate")
            return
        try:
            st = os.stat(here)  # never open(): a FIFO would block, a device may act on being opened
        except FileNotFoundError:
            self.add(where, f"{noun} not found: {seen}")
            return
        except OSError as exc:
            self.add(where, f"cannot look at {seen}: {exc.strerror}")
            return
        fmt = stat.S_IFMT(st.st_mode)
        if kind == "folder" and fmt != stat.S_IFDIR:
            self.add(where, f"{seen} is {_KINDS.get(fmt, 'not a folder')}, not a folder")
            return
        if kind != "folder" and fmt != stat.S_IFREG:
            self.add(where, f"{seen} is {_KINDS.get(fmt, 'not a regular file')}, not a file: the service would "
                     "block or fail reading it; name the file itself")
            return
        mode = stat.S_IMODE(st.st_mode)
        if kind == "secret" and mode & 0o007:
            self.add(where, f"{seen} holds a secret and every user of the gateway may read it (mode {mode:04o}): "
                     f"chmod 640 {seen} and chgrp {self.account_name} {seen}")
        elif mode & 0o002 and not (fmt == stat.S_IFDIR and mode & stat.S_ISVTX):
            self.add(where, f"every user of the gateway may change {seen} (mode {mode:04o}): chmod o-w {seen}")
        if self.account is None:
            return
        want = os.R_OK | os.X_OK if kind == "folder" else os.R_OK
        if not self.account.may(st, want):
            bits = "g+rx" if kind == "folder" else "g+r"
            self.add(where, f"the service user {self.account.name} cannot read it: {seen} is "
                     f"{_owner(st)} with mode {mode:04o}; chgrp {self.account_name} {seen} and chmod {bits} {seen}")
            return
        self._check_parents(where, seen)

    def _check_parents(self, where: Path_, seen: PurePosixPath) -> None:
        assert self.account is not None
        for parent in reversed(seen.parents[:-1]):  # from the top down, "/" itself left out
            _, here = self.on_system(Path(parent))
            try:
                st = os.stat(here)
            except OSError:
                return
            if not self.account.may(st, os.X_OK):
                self.add(where, f"the service user {self.account.name} cannot reach {seen}: folder {parent} is "
                         f"{_owner(st)} with mode {stat.S_IMODE(st.st_mode):04o}")
                return

    def check_environment(self) -> None:
        """Secrets read from the environment: the service has only what its unit gives it."""
        if self.sandbox.environment_files:
            return  # an EnvironmentFile= may hold anything: not ours to read
        found = list(_secrets(self.loaded.config, ()))
        by_id = {spec.config.id: spec for spec in self.loaded.devices}
        for i, dev in enumerate(self.loaded.config.devices):
            if dev.id in by_id:  # the connection's secrets (a BLE bind key) live in the driver's model
                found += _secrets(by_id[dev.id].connection, ("devices", i, "connection"))
        for where, secret in found:
            if secret.env is not None and secret.env not in self.sandbox.environment:
                self.add((*where, "env"), f"the service's environment has no {secret.env} (its unit sets none): add "
                         f"it in a drop-in, `systemctl edit fieldgate`: [Service] Environment={secret.env}=... or "
                         "EnvironmentFile=/etc/fieldgate/env (mode 0640), or use {file: ...}", "warning")

    def check_data_dir(self) -> None:
        """``gateway.data_dir``: where the unit lets the service write, and writable by its user."""
        where: Path_ = ("gateway", "data_dir")
        seen, here = self.on_system(self.loaded.config.gateway.data_dir)
        allowed = self.sandbox.writable
        if not any(seen == w or seen.is_relative_to(w) for w in allowed):
            self.add(where, f"the service may write only below {', '.join(map(str, allowed))} ({UNIT_NAME} has "
                     f"ProtectSystem=strict): put data_dir there (the default is /var/lib/fieldgate), or allow "
                     f"{seen} in a drop-in: `systemctl edit fieldgate`, [Service] ReadWritePaths={seen}")
            return
        if self.account is None:
            return
        # The nearest folder that exists is the one the service writes in (the buffer makes the rest).
        probe, probe_here = seen, here
        while not os.path.lexists(probe_here):
            if probe in self.sandbox.state_dirs:
                return  # systemd creates the StateDirectory, owned by the service user, when it starts
            probe, probe_here = probe.parent, probe_here.parent
        try:
            st = os.stat(probe_here)
        except OSError as exc:
            self.add(where, f"cannot look at {probe}: {exc.strerror}")
            return
        if not stat.S_ISDIR(st.st_mode):
            self.add(where, f"{probe} is {_KINDS.get(stat.S_IFMT(st.st_mode), 'not a folder')}, not a folder")
        elif not self.account.may(st, os.W_OK | os.X_OK):
            self.add(where, f"the service user {self.account.name} cannot write in {probe}: it is {_owner(st)} "
                     f"with mode {stat.S_IMODE(st.st_mode):04o}; chown {self.account_name} {probe}")

    def check_web(self) -> None:
        """The status page's port, which the service binds without any capability."""
        web = self.loaded.config.web
        if not web.enabled:
            return
        port = ListenAddress.parse(web.listen).port
        start = _unprivileged_port_start(self.root)
        if 0 < port < start and not self.sandbox.can_bind_low_ports:
            self.add(("web", "listen"), f"port {port} needs a privilege the service does not have (ports below "
                     f"{start}; {UNIT_NAME} has an empty CapabilityBoundingSet=): use 8080, or put a reverse "
                     "proxy in front")


def service_diagnostics(loaded: LoadedConfig, *, root: Path = Path("/"), user: str = SERVICE_USER,
                        exempt: Callable[[Path], bool] = lambda _p: False) -> list[Diagnostic]:
    """The checks above for a loaded configuration (its file is read once more for positions)."""
    root = Path(os.path.abspath(root))
    text, unreadable = read_source(loaded.path, Budget(), "configuration")
    if text is None:
        assert unreadable is not None
        return [unreadable]
    _, smap, _ = load_yaml(text, str(loaded.path), Budget())
    return ServiceCheck(loaded, smap, root=root, account=ServiceAccount.lookup(user, root), account_name=user,
                        exempt=exempt).run()


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"owned by {user}:{group}"


__all__ = ["Ref", "Sandbox", "ServiceAccount", "ServiceCheck", "referenced_files", "service_diagnostics"]

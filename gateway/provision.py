"""First-boot provisioning: apply ``fieldgate.yaml`` from the boot partition.

An installer flashes an SD card, copies ``fieldgate.yaml`` (and the files it
names, such as a CA certificate or a password file) onto the boot partition,
which every PC can write (it shows up as ``bootfs``), or lets cloud-init's
``write_files`` put it there. At the next boot ``fieldgate-provision.service``
runs ``fieldgate provision`` before ``fieldgate.service`` starts:

1. find ``fieldgate.yaml`` in ``/boot/firmware`` (Raspberry Pi OS since
   Bookworm), else in ``/boot``; none: nothing to do (exit 0);
2. validate it with the same loader as ``fieldgate run`` (all errors at once),
   check that every file it names exists, and run the checks of ``fieldgate
   validate --for-service`` (gateway/service_check.py) on what it names on the
   gateway: regular files the service user may read, no secret readable by
   every user, an ``mqtt`` section, a ``data_dir`` the service may write; the loader refuses hostile files
   (a billion laughs, a FIFO, binary junk) by name, and the whole reading and
   validation has a time limit (``--time-limit``), so no file holds up the boot;
   symbolic links (the source, a companion, or inside a companion folder) are
   refused: FAT has none, and elsewhere one could copy any file of the gateway
   into ``/etc/fieldgate``;
3. refused: write every diagnostic to ``fieldgate.yaml.errors.txt`` next to it
   and to the journal, leave the file in place to be fixed, and change nothing
   in ``/etc/fieldgate``: the previous configuration keeps running (exit 1);
4. accepted: copy the files it names that lie beside it (keeping their
   relative paths) into ``/etc/fieldgate``, keep the current configuration as
   ``fieldgate.yaml.previous``, and replace ``/etc/fieldgate/fieldgate.yaml``
   atomically (a temporary file in the same folder, fsync, ``os.replace``);
5. rename the source to ``fieldgate.yaml.applied-<UTC time>`` so the next boot
   does not apply it again, and delete the copied companion files from the boot
   partition (FAT has no permissions: a key left there is readable by anyone).

A file left in place because the rename failed is applied again at the next
boot, which is harmless: the result is the same.
"""

from __future__ import annotations

import argparse
import grp
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import load_config_text
from .errors import ConfigError
from .service_check import ServiceAccount, ServiceCheck, referenced_files
from .yamlsrc import (
    DEFAULT_TIME_LIMIT,
    Budget,
    Diagnostic,
    Path_,
    SourceMap,
    format_path,
    load_yaml,
    read_regular_file,
    read_source,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INVALID, EXIT_FAILED = 0, 1, 3

CONFIG_NAME = "fieldgate.yaml"
COMPANION_MAX_BYTES = 16 * 1024 * 1024  # a CA bundle is ~250 KB; a companion is never a disk image
ERRORS_SUFFIX = ".errors.txt"
APPLIED_INFIX = ".applied-"
PREVIOUS_SUFFIX = ".previous"
BOOT_DIRS = (Path("/boot/firmware"), Path("/boot"))
ETC_DIR = Path("/etc/fieldgate")
SERVICE_GROUP = SERVICE_USER = "fieldgate"


@dataclass(slots=True)
class Outcome:
    """What ``provision`` did.

    Attributes:
        status: ``none`` (no file), ``applied``, ``refused`` (invalid) or ``failed`` (I/O).
        source: the file found on the boot partition, if any.
        diagnostics: every error and warning found in it.
        copied: companion files installed next to the configuration.
        renamed_to: the source's new name once applied.
        message: one line for people.
    """

    status: str
    source: Path | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    copied: list[Path] = field(default_factory=list)
    renamed_to: Path | None = None
    message: str = ""

    @property
    def exit_code(self) -> int:
        """0 applied or nothing to do, 1 refused, 3 failed."""
        return {"none": EXIT_OK, "applied": EXIT_OK, "refused": EXIT_INVALID}.get(self.status, EXIT_FAILED)


def find_source(boot_dirs: list[Path]) -> Path | None:
    """The first ``fieldgate.yaml`` waiting in ``boot_dirs``.

    Anything by that name counts, not only a file: a folder, a FIFO or a link
    loop someone put there is refused by name (in the errors file beside it)
    rather than passed over in silence.
    """
    for d in boot_dirs:
        candidate = d / CONFIG_NAME
        if os.path.lexists(candidate):
            return candidate
    return None


def _raw_at(data: Any, where: Path_) -> Any:
    """The value at ``where`` in parsed YAML, or None."""
    for key in where:
        found = (isinstance(data, dict) and key in data) or (
            isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data))
        if found:
            data = data[key]
        else:
            return None
    return data


def _diag(source: Path, smap: SourceMap, where: Path_, message: str) -> Diagnostic:
    line, col = smap.position(where)
    return Diagnostic(str(source), line, col, format_path(where), message)


class Provisioner:
    """Applies a configuration from a boot folder to an /etc folder.

    Args:
        boot_dirs: where to look, in order.
        etc_dir: where the configuration lives (``/etc/fieldgate``).
        root: absolute paths named in the file are checked below this root.
        now: the wall clock (for the ``applied-<time>`` name).
        time_limit: seconds reading and validating the file (with its profiles) may take. A file
            that takes longer is refused like an invalid one: the errors file says so and where the
            loader was, nothing in ``etc_dir`` changes, and the service starts on the previous
            configuration. No file can hold up the boot longer than this.
    """

    def __init__(self, boot_dirs: list[Path], etc_dir: Path, root: Path = Path("/"),
                 now: Any = time.time, time_limit: float = DEFAULT_TIME_LIMIT) -> None:
        self.boot_dirs = boot_dirs
        self.etc_dir = etc_dir
        self.root = root
        self.now = now
        self.time_limit = time_limit

    def _on_target(self, path: Path) -> Path:
        return self.root / path.relative_to("/") if path.is_absolute() else path

    def run(self) -> Outcome:
        """Look for a file and apply or refuse it (see the module docstring)."""
        source = find_source(self.boot_dirs)
        if source is None:
            where = " or ".join(str(d) for d in self.boot_dirs)
            return Outcome("none", message=f"nothing to provision: no {CONFIG_NAME} in {where}")
        errors_file = source.with_name(source.name + ERRORS_SUFFIX)
        if source.is_symlink():  # FAT has none; elsewhere a link would apply (and quote errors of) any file
            return self._refuse(source, errors_file, [Diagnostic(
                str(source), 1, 1, "", f"{source.name} is a symbolic link: put the file itself on the boot partition")])
        budget = Budget(time_limit=self.time_limit)
        text, unreadable = read_source(source, budget, "configuration")
        if text is None:
            assert unreadable is not None
            return self._refuse(source, errors_file, [unreadable])
        diags, companions = self._validate(source, text, budget)
        if any(d.severity == "error" for d in diags):
            return self._refuse(source, errors_file, diags)
        try:
            copied = self._install(source, text, companions)
        except OSError as exc:
            return Outcome("failed", source, diags, message=f"cannot install {source} into {self.etc_dir}: {exc}")
        outcome = Outcome("applied", source, diags, copied)
        outcome.renamed_to, problem = self._retire(source, errors_file, companions)
        outcome.message = f"applied {source} to {self.etc_dir / CONFIG_NAME}" + (
            f" ({len(copied)} file(s) copied along)" if copied else "")
        if problem:
            outcome.status, outcome.message = "failed", f"{outcome.message}, but {problem}"
        return outcome

    def _validate(self, source: Path, text: str, budget: Budget) -> tuple[list[Diagnostic], list[tuple[Path, bool]]]:
        try:
            loaded = load_config_text(text, str(source), budget)
        except ConfigError as exc:
            return [d for d in exc.diagnostics if isinstance(d, Diagnostic)], []
        diags = list(loaded.warnings)
        boot = source.parent
        # Parsed once more (it was valid, so this is quick) for the raw values and positions.
        raw, smap, _ = load_yaml(text, str(source), Budget(budget.limits, time_limit=None))
        companions: list[tuple[Path, bool]] = []
        for where, path, kind in referenced_files(loaded):
            inside = path.is_relative_to(boot)
            if not inside:
                continue  # on the gateway already: the service checks below judge it where it is
            is_dir = kind == "folder"
            written = _raw_at(raw, where)
            if inside and isinstance(written, str) and Path(written).is_absolute():
                # The copy on the boot partition is deleted once applied; an absolute name would then dangle.
                rel = path.relative_to(boot).as_posix()
                diags.append(_diag(source, smap, where, f"{written} points into the boot partition, which is "
                                   f"cleared after provisioning: write it relative to {source.name}, as {rel!r}"))
            elif not (path.is_dir() if is_dir else path.is_file()):
                what = "folder" if is_dir else "file"
                diags.append(_diag(source, smap, where, f"{what} not found: {path} "
                                   f"(copy it next to {source.name} on the boot partition)"))
            elif (link := _link_at_or_below(path, boot, is_dir)) is not None:
                diags.append(_diag(source, smap, where, f"{link} is a symbolic link: put the file itself next to "
                                   f"{source.name} (a link could copy any file of the gateway into {self.etc_dir})"))
            else:
                companions.append((path.relative_to(boot), is_dir))
        # What the service needs, as `validate --for-service` checks it, of everything that is not a
        # companion: provision installs those itself, with the service's group and mode 0640.
        diags += ServiceCheck(loaded, smap, root=self.root, account=ServiceAccount.lookup(SERVICE_USER, self.root),
                              exempt=lambda p: p.is_relative_to(boot)).run()
        return diags, companions

    def _refuse(self, source: Path, errors_file: Path, diags: list[Diagnostic]) -> Outcome:
        errors = [d for d in diags if d.severity == "error"]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.now()))
        lines = [
            f"fieldgate refused {source.name} at {stamp}: {len(errors)} error(s).",
            f"Nothing was changed: the gateway keeps its previous configuration ({self.etc_dir / CONFIG_NAME}).",
            f"Fix the lines below in {source.name}, then reboot (or run: sudo fieldgate provision).",
            "",
            *(str(d) for d in diags),
        ]
        for d in errors:
            log.error("%s", d)
        log.error("refused %s: %d error(s); the previous configuration stays in use; details in %s",
                  source, len(errors), errors_file)
        message = f"refused {source}: {len(errors)} error(s), written to {errors_file}"
        try:
            _atomic_write(errors_file, ("\n".join(lines) + "\n").encode(), 0o644)
        except OSError as exc:
            message += f" (could not write it: {exc})"
        return Outcome("refused", source, diags, message=message)

    def _install(self, source: Path, text: str, companions: list[tuple[Path, bool]]) -> list[Path]:
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        gid = _service_gid()
        copied: list[Path] = []
        # Companions first, the configuration last: it never names a file that is not there yet.
        for rel, is_dir in companions:
            files = sorted(p for p in (source.parent / rel).rglob("*") if p.is_file()) if is_dir \
                else [source.parent / rel]
            for f in files:
                dest = self.etc_dir / f.relative_to(source.parent)
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
                _atomic_write(dest, read_regular_file(f, COMPANION_MAX_BYTES), 0o640, gid)
                copied.append(dest)
        final = self.etc_dir / CONFIG_NAME
        if final.exists():
            _atomic_write(final.with_name(CONFIG_NAME + PREVIOUS_SUFFIX), final.read_bytes(), 0o640, gid)
        _atomic_write(final, text.encode("utf-8"), 0o640, gid)
        log.info("applied %s to %s", source, final)
        return copied

    def _retire(self, source: Path, errors_file: Path,
                companions: list[tuple[Path, bool]]) -> tuple[Path | None, str | None]:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.now()))  # no ':' (FAT)
        renamed = source.with_name(f"{source.name}{APPLIED_INFIX}{stamp}")
        try:
            os.replace(source, renamed)
        except OSError as exc:
            log.error("cannot rename %s (%s): it will be applied again at the next boot", source, exc)
            return None, f"could not rename it ({exc}): it will be applied again at the next boot"
        errors_file.unlink(missing_ok=True)
        for rel, is_dir in companions:
            path = source.parent / rel
            try:
                if is_dir:
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError as exc:
                log.warning("cannot remove %s from the boot partition: %s", path, exc)
            for parent in path.parents:  # folders the companions came in, once empty
                if parent == source.parent or not parent.is_relative_to(source.parent):
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break
        return renamed, None


def _link_at_or_below(path: Path, boot: Path, is_dir: bool) -> Path | None:
    """A symbolic link on the way from ``boot`` to ``path``, or below ``path`` if it is a folder."""
    for p in [path, *path.parents]:
        if p == boot or not p.is_relative_to(boot):
            break
        if p.is_symlink():
            return p
    if is_dir:
        for p in sorted(path.rglob("*")):
            if p.is_symlink():
                return p
    return None


def _service_gid() -> int | None:
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return None


def _atomic_write(path: Path, data: bytes, mode: int, gid: int | None = None) -> None:
    """Write ``path`` via a temporary file in the same folder, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        if gid is not None:
            os.fchown(fd, 0, gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some filesystems (FAT on some kernels) refuse fsync on folders
    finally:
        os.close(dfd)


# --- command line --------------------------------------------------------------------------


def cmd_provision(args: argparse.Namespace) -> int:
    """``fieldgate provision``."""
    from .logs import setup_logging

    setup_logging("INFO")
    root = Path(args.root)
    boot_dirs = [Path(d) for d in args.boot_dir] if args.boot_dir else [root / d.relative_to("/") for d in BOOT_DIRS]
    etc_dir = Path(args.etc_dir) if args.etc_dir else root / ETC_DIR.relative_to("/")
    outcome = Provisioner(boot_dirs, etc_dir, root, time_limit=args.time_limit).run()
    if outcome.status == "failed":
        print(outcome.message, file=sys.stderr)
    elif outcome.status == "refused":
        pass  # every error and the verdict are log lines already (the journal under systemd): not twice
    else:
        print(outcome.message)
        if outcome.status == "applied":
            print("the service picks it up when it starts; if it is running already: sudo systemctl restart fieldgate")
    return outcome.exit_code


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``provision``."""
    p = sub.add_parser(
        "provision", help="apply fieldgate.yaml from the boot partition (first boot)",
        description="Validate fieldgate.yaml from the boot partition and move it, with the files it names, "
        "into /etc/fieldgate atomically; the source is renamed fieldgate.yaml.applied-<time>. "
        "A file with errors is refused: they are written to fieldgate.yaml.errors.txt next to it and "
        "the previous configuration stays. fieldgate-provision.service runs this at boot.",
        epilog="exit codes: 0 applied or nothing to do, 1 refused (invalid), 3 failed (I/O)")
    p.add_argument("--boot-dir", action="append", default=[], metavar="DIR",
                   help="where to look (repeatable; default: /boot/firmware, then /boot)")
    p.add_argument("--etc-dir", help="where the configuration goes (default: /etc/fieldgate)")
    p.add_argument("--root", default="/", help="treat this folder as / (images, tests)")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="S",
                   help="refuse a file whose reading and validation take longer than this (default: %(default)s s)")
    p.set_defaults(func=cmd_provision)

"""Doctor findings and the host checks drivers' ``doctor()`` hooks share (a seam module).

``fieldgate doctor`` (gateway/doctor.py) runs the checks that belong to the gateway
itself (configuration, clock, disk, buffer, broker, devices answering). What a
protocol needs from the host (a serial device node the service may open, BlueZ
and an adapter) is the driver's to know: each driver's ``doctor()`` hook returns
``Finding`` objects built here, so core never names BlueZ or a serial port.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel

Status = Literal["ok", "n/a", "warn", "fail"]

#: Who the service runs as and with which groups (the installer creates both; install.py says why).
SERVICE_USER = "fieldgate"
SERVICE_GROUPS = ("dialout", "bluetooth")


@dataclass(slots=True)
class Finding:
    """One result: what was checked, how it is, in plain words, and what to do.

    Attributes:
        check: short name (``config``, ``clock``, ``serial:/dev/ttyUSB0``, ``device:meter-1``, ...).
        status: ``ok``, ``n/a``, ``warn`` or ``fail``.
        summary: one or two sentences for a person.
        fix: what to do, for ``warn`` and ``fail``.
        details: figures for machines (``--json``).
    """

    check: str
    status: Status
    summary: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class DoctorDevice(NamedTuple):
    """An enabled device of the driver whose ``doctor()`` hook is asked: its id and connection."""

    id: str
    connection: BaseModel


def serial_port_findings(ports: dict[str, list[str]]) -> list[Finding]:
    """For each serial device node (with the ids of the devices on it): present, a tty, and openable."""
    out: list[Finding] = []
    for port, ids in ports.items():
        who = ", ".join(ids)
        check = f"serial:{port}"
        try:
            st = os.stat(port)
        except FileNotFoundError:
            out.append(Finding(check, "fail", f"serial port {port} (used by {who}) does not exist",
                               "plug the USB adapter in and check its cable; `ls -l /dev/serial/by-id/` lists the "
                               "adapters present: use that stable name in the configuration",
                               {"port": port, "devices": ids}))
            continue
        except OSError as exc:
            out.append(Finding(check, "fail", f"cannot look at {port}: {exc.strerror}", None,
                               {"port": port, "devices": ids}))
            continue
        if not stat.S_ISCHR(st.st_mode):
            out.append(Finding(check, "fail", f"{port} (used by {who}) is not a serial device",
                               "name the device node, e.g. /dev/serial/by-id/usb-...", {"port": port, "devices": ids}))
            continue
        problem = service_cannot_open(port, st)
        if problem:
            out.append(Finding(check, "fail", f"serial port {port} is present but {problem}",
                               "allow group dialout: a udev rule `SUBSYSTEM==\"tty\", GROUP=\"dialout\", "
                               "MODE=\"0660\"` for this adapter, then replug it", {"port": port, "devices": ids}))
        else:
            out.append(Finding(check, "ok", f"serial port {port} is present and the service may open it "
                               f"(used by {who})", None, {"port": port, "devices": ids}))
    return out


def service_cannot_open(port: str, st: os.stat_result) -> str | None:
    """Why the service user (with the unit's groups) could not open a device node, or None."""
    mode = st.st_mode
    if mode & stat.S_IROTH and mode & stat.S_IWOTH:
        return None
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        # No service user here (not installed, a developer machine): judge by whoever runs doctor.
        return None if os.access(port, os.R_OK | os.W_OK) else "this user cannot open it for reading and writing"
    gids = {user.pw_gid}
    for name in SERVICE_GROUPS:
        try:
            gids.add(grp.getgrnam(name).gr_gid)
        except KeyError:
            pass
    if st.st_uid == user.pw_uid and mode & stat.S_IRUSR and mode & stat.S_IWUSR:
        return None
    if st.st_gid in gids and mode & stat.S_IRGRP and mode & stat.S_IWGRP:
        return None
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return (f"the service user cannot open it: it belongs to group {group} with mode "
            f"{stat.S_IMODE(mode):04o}, and the service runs with groups {', '.join(SERVICE_GROUPS)}")

"""systemd readiness and watchdog notifications, from the event loop itself.

``READY=1`` is sent once every device task has started and the uplink runs.
``WATCHDOG=1`` is sent from a task on the asyncio loop at half of
``WatchdogSec``: if the loop blocks, the pings stop and systemd restarts the
service. No dependency: the protocol is one datagram on ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one notification; False when not under systemd (no NOTIFY_SOCKET)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), addr)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", addr, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between pings (half of WatchdogSec), or None if no watchdog is set for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 1e6 / 2)
    except ValueError:
        return None


async def watchdog_task() -> None:
    """Ping the watchdog until cancelled; a blocked loop stops the pings."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)

"""Is the system clock right? A Raspberry Pi has no RTC.

Until NTP (or GPS) has disciplined the clock, a Pi boots with the time it
last saved, so readings are stamped with a plausible but wrong time. The
kernel knows: ``adjtimex(2)`` returns ``TIME_ERROR`` while the clock is not
synchronized (STA_UNSYNC set), which is what ``timedatectl`` shows as
"System clock synchronized: no". We ask the kernel read-only (modes = 0).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

TIME_ERROR = 5  # adjtimex(2): clock not synchronized
_TIMEX_SIZE = 512  # struct timex is 208 bytes on 64-bit Linux; room to spare


def _adjtimex_state() -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(_TIMEX_SIZE)  # zeroed: modes = 0 reads only
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state


def clock_synced() -> bool | None:
    """True/False as the kernel says, or None where it cannot be asked."""
    state = _adjtimex_state()
    if state is None:
        return None
    return state != TIME_ERROR


class ClockMonitor:
    """Tracks sync state; a test or a platform without adjtimex can inject a probe.

    Args:
        mode: ``auto`` asks the kernel; ``off`` always says synchronized.
        probe: replaces the kernel query (returns True/False/None).
    """

    def __init__(self, mode: str = "auto", probe: object = None) -> None:
        self.mode = mode
        self._probe = probe if callable(probe) else clock_synced
        self.synced = True
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the state; returns True when it changed."""
        if self.mode == "off":
            return False
        state = self._probe()
        new = True if state is None else bool(state)
        changed = new != self.synced
        self.synced = new
        return changed

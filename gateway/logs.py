"""Logging set-up: journald-friendly under systemd, timestamps on a terminal.

Under systemd, stderr is a stream into journald, which stamps every line
itself and reads an optional ``<N>`` syslog priority prefix from the start of
each line (``sd-daemon(3)``). So under systemd we print no timestamp and put
the priority mapped from the log level on *every* line, continuation lines of
a traceback included: journald splits a stream at newlines, and a line
without a prefix would be stored at the default priority (info), so
``journalctl -p warning`` would show the first line of a traceback and hide
the rest.

"Under systemd" means: ``$JOURNAL_STREAM`` names the device and inode of our
stderr (``systemd.exec(5)``). A shell started from a service inherits the
variable with a different stderr; then we format for a person.

Per-device context: device loggers (``DeviceLog`` in ``app.py``) put
``[device-id]`` before the message and the id in the record's ``device``
attribute; a record that carries only the attribute gets the prefix here, so
``journalctl -u fieldgate | grep '\\[meter-1\\]'`` finds every line of a device.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

# syslog priorities (RFC 5424): 2 crit, 3 err, 4 warning, 5 notice, 6 info, 7 debug.
_THRESHOLDS = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a logging level (custom levels fall to the next lower one)."""
    for threshold, prio in _THRESHOLDS:
        if levelno >= threshold:
            return prio
    return 7


def _with_device(record: logging.LogRecord, text: str) -> str:
    device = getattr(record, "device", None)
    if device and not text.startswith(f"[{device}]"):
        return f"[{device}] {text}"
    return text


class JournalFormatter(logging.Formatter):
    """``<N>logger: message`` on every line; no timestamp (journald adds its own)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = f"{record.name}: {_with_device(record, super().format(record))}"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: [device] message`` for a terminal or a file."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _with_device(record, record.message)
        return super().formatMessage(record)


def under_journald(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is the journal stream systemd gave us."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    stream = stream or sys.stderr
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter("%(message)s") if under_journald(sys.stderr) else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("asyncio", "pymodbus"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

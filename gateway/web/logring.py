"""Recent log lines and events for the status page, kept in memory with secrets removed.

:func:`install_log_ring` adds a :class:`LogRing` handler to the root logger at
startup so the page can show the last few hundred lines even from before the
web server started. Nothing from it is written anywhere; it is a ring buffer.

fieldgate never logs credentials on purpose. As a second line of defence the
ring replaces every registered secret value (the status page password, and
whatever else the caller registers) and ``password=...``-shaped text with
``***`` before a line is stored, so no page or API response can show one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from typing import Any

from ..schema import iso_ms

_PASSWORD_LIKE = re.compile(r"(?i)\b(password|passwd|secret|token)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)")


class Redactor:
    """Removes known secret values and ``password=...`` text from strings."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, value: str | None) -> None:
        """Register a secret; values shorter than 4 characters would redact too much."""
        if value and len(value) >= 4:
            self._secrets.add(value)

    def __call__(self, text: str) -> str:
        for value in sorted(self._secrets, key=len, reverse=True):
            if value in text:
                text = text.replace(value, "***")
        return _PASSWORD_LIKE.sub(r"\1\2***", text)


class LogRing(logging.Handler):
    """A logging handler keeping the last ``capacity`` records as plain dicts.

    Args:
        capacity: how many records to keep (the oldest are forgotten).
        level: the lowest level kept.
    """

    def __init__(self, capacity: int = 500, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.records: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.redact = Redactor()
        self._seq = 0
        self._lock_ring = threading.Lock()  # records may arrive from the buffer's worker thread

    def emit(self, record: logging.LogRecord) -> None:
        """Store one record (redacted); never raises."""
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message += f" [{type(exc).__name__}: {exc}]"
            entry: dict[str, Any] = {
                "ts": iso_ms(record.created), "level": record.levelname, "logger": record.name,
                "message": self.redact(message),
            }
            with self._lock_ring:
                self._seq += 1
                entry["id"] = self._seq
                self.records.append(entry)
        except Exception:  # a log handler must never break the code that logs
            self.handleError(record)

    def recent(self, limit: int = 200, min_level: int = logging.DEBUG) -> list[dict[str, Any]]:
        """The newest ``limit`` records at or above ``min_level``, newest first."""
        with self._lock_ring:
            items = list(self.records)
        out = [r for r in reversed(items) if logging.getLevelName(r["level"]) >= min_level]
        return out[:limit]


_ring: LogRing | None = None


def install_log_ring(capacity: int = 500, level: int = logging.INFO) -> LogRing:
    """Attach the status page's log ring to the root logger (once; later calls return it)."""
    global _ring  # noqa: PLW0603 - one ring per process, like the root logger it hangs on
    if _ring is None:
        _ring = LogRing(capacity, level)
        logging.getLogger().addHandler(_ring)
    return _ring


def current_log_ring() -> LogRing | None:
    """The installed ring, or None before :func:`install_log_ring`."""
    return _ring


class EventLog:
    """The last events: what the output was told (reloads, clock, drops) and device state changes."""

    def __init__(self, capacity: int = 200, redact: Redactor | None = None) -> None:
        self.items: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.redact = redact or Redactor()
        self._seq = 0

    def add(self, kind: str, ts: float | None = None, **fields: Any) -> dict[str, Any]:
        """Record an event; string fields are redacted."""
        self._seq += 1
        clean = {k: self._clean(v) for k, v in fields.items()}
        event = {"id": self._seq, "ts": iso_ms(ts if ts is not None else time.time()), "kind": kind, **clean}
        self.items.append(event)
        return event

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self._clean(v) for k, v in value.items()}
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.redact(str(value))

    @property
    def last_id(self) -> int:
        """The id of the newest event (0 before the first)."""
        return self._seq

    def recent(self, limit: int = 100, device: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` events (optionally of one device), newest first."""
        out = [e for e in reversed(self.items) if device is None or e.get("device") == device]
        return out[:limit]

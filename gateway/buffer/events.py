"""Events for the ``events`` topic, stored in the buffer's database (the newest ``EVENTS_KEEP``), or in
memory with negative ids while the disk is full.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from .base import _ACK_CHUNK, EVENTS_KEEP, BufferBase, _dumps
from .txn import Transaction

log = logging.getLogger(__name__)


class EventStore(BufferBase):
    """The events of :class:`~.queue.Buffer` (see the module docstring)."""

    def add_event(self, event: dict[str, Any]) -> int:
        """Store an event for the events topic (the newest ``EVENTS_KEEP`` are kept).

        Returns:
            Its id; negative when it could only be kept in memory (disk full).
        """
        text = _dumps(event)
        if self._episode_full:
            # The space the reserve gave back is for deletes and checkpoints only (see the module docstring).
            return self._add_event_memory(text)
        try:
            return self._guarded(lambda: self._add_event_db(text))
        except sqlite3.OperationalError as exc:
            log.debug("buffer: event kept in memory: %s", exc)
            return self._add_event_memory(text)

    def read_events(self, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` unsent events as ``(id, json text)``, oldest first."""
        if limit <= 0:
            return []
        rows: list[tuple[int, str]] = []
        try:
            # Acknowledged events within their window (kept.py) are not sent again on this connection.
            skip = len(self._kept_event_ids)
            rows = self._guarded(lambda: self._db().execute(
                "SELECT id, body FROM events ORDER BY id LIMIT ?", (limit + skip,)).fetchall())
            if skip:
                rows = [r for r in rows if r[0] not in self._kept_event_ids][:limit]
        except sqlite3.OperationalError as exc:
            log.debug("buffer: cannot read events: %s", exc)
        rows.extend(itertools.islice(self._event_spill, max(0, limit - len(rows))))
        return rows

    def ack_events(self, ids: Iterable[int]) -> None:
        """Forget events the broker has acknowledged (stored ones after ``keep_acked_s``, like readings)."""
        ids = set(ids)
        memory = {i for i in ids if i < 0}
        if memory:
            self._event_spill = deque(e for e in self._event_spill if e[0] not in memory)
        self._delete_acked_events(self._hold_events(sorted(i for i in ids if i > 0)))

    def _delete_acked_events(self, stored: list[int]) -> None:
        if not stored:
            return
        try:
            self._guarded(lambda: self._delete_events(stored))
        except sqlite3.OperationalError as exc:
            log.log(logging.DEBUG if self._episode else logging.WARNING,
                    "buffer: cannot delete %d sent event(s) (%s); they may be sent again", len(stored), exc)

    def _insert_event(self, conn: sqlite3.Connection, event: dict[str, Any] | str) -> int:
        text = event if isinstance(event, str) else _dumps(event)
        event_id = conn.execute("INSERT INTO events (body) VALUES (?)", (text,)).lastrowid
        assert event_id is not None
        trimmed = conn.execute("DELETE FROM events WHERE id <= ?", (event_id - EVENTS_KEEP,)).rowcount
        if trimmed > 0:
            # A flood (2000 commands in 4 s audit 4000 events) would log a line per event: once per 10 s.
            self._events_trimmed += trimmed
            now = time.monotonic()
            if now - self._events_trim_said >= 10.0:
                log.warning("buffer: %d unsent event(s) dropped: only the newest %d are kept", self._events_trimmed,
                            EVENTS_KEEP)
                self._events_trimmed, self._events_trim_said = 0, now
        return event_id

    def _add_event_db(self, text: str) -> int:
        conn = self._db()
        with Transaction(conn):
            event_id = self._insert_event(conn, text)
        return event_id

    def _add_event_memory(self, text: str) -> int:
        event_id = self._next_memory_event_id
        self._next_memory_event_id -= 1
        self._event_spill.append((event_id, text))
        if len(self._event_spill) > EVENTS_KEEP:
            self._event_spill.popleft()
            log.warning("buffer: an unsent event held in memory was dropped: only the newest %d are kept",
                        EVENTS_KEEP)
        return event_id

    def _flush_event_spill(self) -> None:
        if not self._event_spill:
            return
        conn = self._db()
        with Transaction(conn):
            for _, text in self._event_spill:
                self._insert_event(conn, text)
        self._event_spill.clear()

    def _delete_events(self, ids: list[int]) -> None:
        conn = self._db()
        with Transaction(conn):
            for i in range(0, len(ids), _ACK_CHUNK):
                chunk = ids[i:i + _ACK_CHUNK]
                conn.execute(f"DELETE FROM events WHERE id IN ({','.join('?' * len(chunk))})", chunk)

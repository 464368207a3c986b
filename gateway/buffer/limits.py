"""The limits: ``max_age_s`` and ``max_bytes`` drop the oldest readings, counted and announced in
the same transaction as the delete.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from typing import Any

from .base import _AGE_SLACK_MAX_S, _DROP_TO, _OLDEST, _SET_META, BufferBase
from .txn import Transaction, is_full

log = logging.getLogger(__name__)


class Limits(BufferBase):
    """The age and size limits of :class:`~.queue.Buffer`."""

    def enforce_limits(self) -> int:
        """Drop the oldest readings beyond ``max_age_s`` and ``max_bytes``; every drop is announced.

        Returns:
            The number of readings dropped.
        """
        if self.max_age_s is None and self.max_bytes is None:
            return 0
        try:
            return self._guarded(self._enforce)
        except sqlite3.OperationalError as exc:
            if is_full(exc):
                self._write_failed(exc)
            # While writes fail (disk full) that has been said loudly once already.
            log.log(logging.DEBUG if self._episode else logging.WARNING,
                    "buffer: cannot enforce the limits now: %s", exc)
            return 0

    def _enforce(self) -> int:
        dropped = 0
        if self.max_age_s is not None:
            dropped += self._drop_by_age(self.max_age_s)
        if self.max_bytes is not None:
            dropped += self._drop_by_bytes(self.max_bytes)
        return dropped

    def _drop_by_age(self, max_age_s: float) -> int:
        conn = self._db()
        oldest = conn.execute(_OLDEST).fetchone()
        if oldest is None:
            return 0
        now_ms = self._now() * 1000
        cutoff = int(now_ms - max_age_s * 1000)
        slack_ms = min(max_age_s * 0.05, _AGE_SLACK_MAX_S) * 1000
        if oldest[1] >= cutoff - slack_ms:
            return 0
        if self._kept:
            self._release_kept()  # delivered rows go first, unannounced: a drop is of undelivered ones
            return self._drop_by_age(max_age_s)
        with Transaction(conn):
            n, first, last = conn.execute(
                "SELECT count(*), min(seq), max(seq) FROM readings WHERE ts_ms < ?", (cutoff,)).fetchone()
            conn.execute("DELETE FROM readings WHERE ts_ms < ?", (cutoff,))
            event = self._record_drop(conn, "max_age", n, first, last)
        self._dropped(event)
        return int(n)

    def _drop_by_bytes(self, max_bytes: int) -> int:
        conn = self._db()
        if self._data_bytes(conn) + self._wal_bytes() <= max_bytes or self._depth == 0:
            return 0
        self._checkpoint("TRUNCATE")  # the WAL counts: empty it first, perhaps that is enough
        wal = self._wal_bytes()
        if self._data_bytes(conn) + wal <= max_bytes:
            return 0
        if self._kept:
            self._release_kept()  # as in _drop_by_age; the size is measured again
            return self._drop_by_bytes(max_bytes)
        target = max_bytes * _DROP_TO
        dropped, first, last = 0, 0, 0
        with Transaction(conn):
            first = int(conn.execute(_OLDEST).fetchone()[0])
            # Free pages show at once inside the transaction, so estimate, delete, measure, repeat.
            while (left := self._depth - dropped) > 0:
                used = self._data_bytes(conn) + wal
                if used <= target:
                    break
                n = min(left, math.ceil((used - target) / (used / left)))
                bound = (conn.execute("SELECT seq FROM readings ORDER BY seq LIMIT 1 OFFSET ?", (n - 1,)).fetchone()
                         or conn.execute("SELECT max(seq) FROM readings").fetchone())
                if bound is None or bound[0] is None:
                    break
                last = int(bound[0])
                dropped += conn.execute("DELETE FROM readings WHERE seq <= ?", (last,)).rowcount
            event = self._record_drop(conn, "max_bytes", dropped, first, last) if dropped else None
        if event is None:
            return 0
        self._dropped(event)
        self._checkpoint("TRUNCATE")
        return dropped

    def _record_drop(self, conn: sqlite3.Connection, reason: str, n: int, first: int, last: int) -> dict[str, Any]:
        conn.execute(_SET_META, ("dropped_total", self._dropped_total + n))
        event = self._event("buffer_drop", reason=reason, dropped=n, first_seq=first, last_seq=last)
        self._insert_event(conn, event)
        return event

    def _dropped(self, event: dict[str, Any]) -> None:
        n = int(event["dropped"])
        self._dropped_total += n
        self._depth -= n
        log.warning("buffer over its %s limit: dropped the %d oldest reading(s), seq %d..%d (%d dropped in total)",
                    event["reason"], n, event["first_seq"], event["last_seq"], self._dropped_total)
        self._notify(event)

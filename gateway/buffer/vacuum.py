"""Periodic upkeep: pending deletes retried, the spill committed, free pages returned to the
filesystem in steps a full disk can still write, the WAL checkpointed, the floor recorded.
"""

from __future__ import annotations

import logging
import sqlite3

from .base import _OLDEST, _SET_META, _VACUUM_PAGES, BufferBase
from .txn import Transaction, is_full

log = logging.getLogger(__name__)


class Upkeep(BufferBase):
    """The upkeep of :class:`~.queue.Buffer`."""

    def maintenance(self) -> None:
        """Periodic upkeep: retry what waits in memory, return free pages, checkpoint the WAL.

        Commits the spill (oldest first) and memory events, retries pending
        deletes, runs ``incremental_vacuum`` on up to ``_VACUUM_PAGES`` free
        pages, and checkpoints: ``TRUNCATE`` when nothing was appended since
        the last call, ``PASSIVE`` otherwise (never waits for a writer).
        """
        if self._pending_acks:
            self.ack(())
        self._announce_spill_loss()
        try:
            self._guarded(self._maintain)
        except (sqlite3.OperationalError, OSError) as exc:
            if is_full(exc) or self._spill or self._episode:
                self._write_failed(exc)
            else:
                log.warning("buffer maintenance failed: %s", exc)

    def _maintain(self) -> None:
        conn = self._db()
        todo = min(int(conn.execute("PRAGMA freelist_count").fetchone()[0]), _VACUUM_PAGES)
        # Always in steps the reserve can hold, with a checkpoint between them: every page the vacuum
        # moves goes through the WAL first, and on a nearly full disk one big step (it used to be 8 MB)
        # cannot be written at all, so the file would never shrink (the disk stays at 100 %).
        step = self._tight_pages() or self._vacuum_step()
        retried = False
        while todo > 0:
            # Python's sqlite3 steps this pragma once, and each step frees one page: so one
            # execute per page, in one transaction (one commit, one sync).
            try:
                with Transaction(conn):  # rolled back on any error
                    for _ in range(min(todo, step)):
                        conn.execute("PRAGMA incremental_vacuum(1)")
            except sqlite3.OperationalError as exc:
                if is_full(exc) and not retried:
                    retried = True  # the reserve is for this: release it and go on in small steps
                    self._write_failed(exc)
                    step = self._tight_pages() or step
                    continue
                log.debug("buffer: incremental vacuum failed: %s", exc)
                break
            todo -= step
            self._checkpoint_quietly()  # the file shrinks now, and the next step reuses the WAL
        # The checkpoint writes the vacuum through (the file shrinks); on a full disk it frees the WAL.
        idle = not self._appended_since_maintenance or self._episode_full
        self._checkpoint("TRUNCATE" if idle else "PASSIVE")
        self._appended_since_maintenance = 0
        if self._episode_full and not self._room_to_resume():
            return
        if self._session_pending or self._spill or self._episode:
            self._ensure_session()
            if not self._spill and not self._event_spill:
                conn.execute(_SET_META, ("probe_ts", int(self._now())))  # proves that writing works again
            self._flush_spill()
            if self._wal_stopped():
                return
            self._flush_event_spill()
            self._write_ok()
        elif self._event_spill:
            self._flush_event_spill()
        if not self._episode:
            self._ensure_reserve()
            self._write_floor(conn)

    def _write_floor(self, conn: sqlite3.Connection) -> None:
        """Record the lowest waiting seq (at upkeep: one small commit per 10 s at most, only on change).

        A damaged file's salvage reads it to tell which seqs were waiting, and so which were lost.
        """
        oldest = conn.execute(_OLDEST).fetchone()
        floor = int(oldest[0]) if oldest else self._last_seq + 1
        if floor != self._floor_written:
            conn.execute(_SET_META, ("floor", floor))
            self._floor_written = floor

    def _vacuum_step(self) -> int:
        return max(8, min(_VACUUM_PAGES, self._reserve_size // 4 // self._page_size))

"""A corrupt database: moved aside, its readable rows copied into a new one with their seqs (SQL,
then page by page), and the seqs that could not be saved announced as ranges.
"""

from __future__ import annotations

import logging
import mmap
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from .base import (
    _BUSY_TIMEOUT_S,
    _LAST_SEQ,
    _LOST_RANGES_PER_EVENT,
    _SALVAGE_CHUNK,
    _SEQ_MAX,
    DB_NAME,
    BufferBase,
)
from .pages import PageFile
from .seqguard import _seq_value
from .txn import Transaction, fsync_dir

log = logging.getLogger(__name__)

_INSERT_WITH_SEQ = "INSERT OR IGNORE INTO readings (seq, device, ts_ms, body) VALUES (?, ?, ?, ?)"


class _SalvageStopped(Exception):
    """The new database cannot take the rows recovered from the corrupt one."""


def _plausible(row: tuple[Any, ...]) -> bool:
    seq, device, ts_ms, body = row
    return (isinstance(seq, int) and seq > 0 and isinstance(device, str) and isinstance(ts_ms, int)
            and isinstance(body, str) and body.startswith("{") and len(body) > 2)


class Salvage(BufferBase):
    """The salvage of a corrupt database for :class:`~.queue.Buffer`."""

    def _recover_corrupt(self, exc: sqlite3.DatabaseError, *, at_open: bool) -> None:
        log.error("buffer database %s is corrupt (%s): moving it aside and starting a new one", self.path, exc)
        self._close_quietly()
        moved = self._move_aside()
        saved: set[int] = set()
        floor: int | None = None
        old_last = 0
        try:
            self._reopen()
            saved, floor, old_last = self._salvage(moved)
        except sqlite3.Error as exc2:
            self._close_quietly()
            if at_open:
                raise
            log.error("buffer: cannot create a new database in %s: %s; will retry", self.data_dir, exc2)
        if saved:
            log.warning("buffer: recovered %d reading(s) from %s", len(saved), moved)
        event = self._event("buffer_corrupt", moved_to=str(moved), error=str(exc), salvaged=len(saved),
                            next_seq=self._last_seq + 1)
        self.add_event(event)
        self._notify(event)
        self._announce_corruption_loss(saved, floor, old_last)

    def _announce_corruption_loss(self, saved: set[int], floor: int | None, old_last: int) -> None:
        """Announce, as seq ranges, the readings that were waiting in the damaged file and were not saved.

        What was waiting is ``floor..old_last``: the lowest waiting seq the file recorded (meta ``floor``,
        written at upkeep, so up to ~10 s of readings acknowledged since then are counted as lost too)
        and its last seq. Without a readable floor, the lowest seq saved stands in, and without either
        everything up to the file's last seq is announced.
        """
        if floor is None:
            floor = min(saved) if saved else 1
        if old_last < floor:
            return
        lost: list[tuple[int, int]] = []
        start = floor
        for seq in sorted(s for s in saved if floor <= s <= old_last):
            if seq > start:
                lost.append((start, seq - 1))
            start = seq + 1
        if start <= old_last:
            lost.append((start, old_last))
        if not lost:
            return
        count = sum(b - a + 1 for a, b in lost)
        log.warning("buffer: %d waiting reading(s) could not be recovered from the damaged database: seq %s%s",
                    count, ", ".join(f"{a}..{b}" for a, b in lost[:5]), ", ..." if len(lost) > 5 else "")
        for i in range(0, len(lost), _LOST_RANGES_PER_EVENT):
            part = lost[i:i + _LOST_RANGES_PER_EVENT]
            event = self._event("buffer_lost", reason="corrupt", first_seq=part[0][0], last_seq=part[-1][1],
                                lost=sum(b - a + 1 for a, b in part), ranges=[list(r) for r in part])
            self.add_event(event)
            self._notify(event)

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._now()))
        dest = self.path.with_name(f"{DB_NAME}.corrupt-{stamp}")
        n = 1
        while dest.exists():
            dest = self.path.with_name(f"{DB_NAME}.corrupt-{stamp}-{n}")
            n += 1
        # The -wal and -shm files follow under the names SQLite expects beside the moved file.
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, f"{dest}{suffix}")
        fsync_dir(self.data_dir)
        return dest

    def _salvage(self, moved: Path) -> tuple[set[int], int | None, int]:
        """Copy the readings still readable in a corrupt database, with their seqs (best effort).

        First SQL (it sees the WAL too): forward until the damage, then backward down to it. Then the
        file's pages one by one (``pages.PageFile``): a cut or overwritten interior page hides every
        intact leaf below it from SQL, not from a page scan.

        Returns:
            The seqs saved, the lowest seq that was waiting (``None`` if unknown) and the highest seq
            the damaged file had handed out (0 if unknown).
        """
        saved: set[int] = set()
        floor: int | None = None
        old_last = 0
        try:
            src = sqlite3.connect(moved, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            src = None
        if src is not None:
            try:
                src.execute("PRAGMA query_only = 1")
                for sql in ("SELECT value FROM meta WHERE key = 'floor'", _LAST_SEQ):
                    try:
                        row = src.execute(sql).fetchone()
                    except sqlite3.Error:
                        continue
                    value = _seq_value(row[0]) if row else None
                    if value is not None and sql == _LAST_SEQ:
                        old_last = value
                    elif value is not None:
                        floor = value
                high = 0
                for order in ("ASC", "DESC"):
                    # Row by row (not fetchmany) so that the rows read before the damage are kept.
                    chunk: list[tuple[Any, ...]] = []
                    try:
                        for row in src.execute(
                                f"SELECT seq, device, ts_ms, body FROM readings WHERE seq > ? ORDER BY seq {order}",
                                (high,)):
                            if _plausible(row) and row[0] <= _SEQ_MAX:
                                chunk.append(row)
                                if order == "ASC":
                                    high = row[0]
                            if len(chunk) >= _SALVAGE_CHUNK:
                                saved |= self._store_salvaged(chunk)
                                chunk = []
                    except sqlite3.DatabaseError as exc:
                        log.debug("buffer: salvage (%s) stopped: %s", order, exc)
                    saved |= self._store_salvaged(chunk)
            except (_SalvageStopped, sqlite3.Error) as exc:
                log.debug("buffer: salvage stopped: %s", exc)
            finally:
                src.close()
        try:
            old_last = max(old_last, self._salvage_pages(moved, saved))
        except _SalvageStopped as exc:
            log.debug("buffer: page salvage stopped: %s", exc)
        conn = self._db()
        self._last_seq = max(self._last_seq, self._db_last_seq(conn))
        self._depth = int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
        return saved, floor, max(old_last, max(saved, default=0))

    def _salvage_pages(self, moved: Path, saved: set[int]) -> int:
        """The page scan of the salvage: store readings SQL could not reach; the file's last seq if found."""
        try:
            with moved.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                old_last = 0
                chunk: list[tuple[Any, ...]] = []
                for rowid, values in PageFile(data).table_rows():
                    if len(values) == 2 and values[0] == "readings" and isinstance(values[1], int):
                        old_last = max(old_last, _seq_value(values[1]) or 0)  # a sqlite_sequence row
                        continue
                    if len(values) != 4 or values[0] is not None or rowid in saved or not 0 < rowid <= _SEQ_MAX:
                        continue
                    row = (rowid, *values[1:])
                    if _plausible(row):
                        chunk.append(row)
                    if len(chunk) >= _SALVAGE_CHUNK:
                        saved |= self._store_salvaged(chunk)
                        chunk = []
                saved |= self._store_salvaged(chunk)
                return old_last
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            log.debug("buffer: page salvage of %s failed: %s", moved, exc)
            return 0

    def _store_salvaged(self, rows: list[tuple[Any, ...]]) -> set[int]:
        """Store recovered rows with their own seqs; the seqs stored (one reading per seq, never two)."""
        if not rows:
            return set()
        conn = self._db()
        stored: set[int] = set()
        try:
            with Transaction(conn):
                for row in rows:
                    if conn.execute(_INSERT_WITH_SEQ, row).rowcount > 0:
                        stored.add(row[0])
        except sqlite3.Error as exc:
            log.warning("buffer: cannot store the readings recovered from a corrupt database: %s", exc)
            raise _SalvageStopped from exc
        return stored

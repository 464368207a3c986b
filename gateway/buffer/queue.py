"""The durable store-and-forward queue between the pollers and the uplink.

Every accepted reading is committed here and gets its ``seq`` in the same
transaction; it stays until the broker acknowledges it (``ack``) or a
configured limit drops it (``enforce_limits``, always announced). After its
acknowledgement it stays ``keep_acked_s`` longer and a new connection sends it
again, for a broker that crashed before it saved what it acknowledged
(``kept``). One SQLite
database, ``<data_dir>/buffer.db``, in WAL mode. The class is synchronous and
not thread-safe: the uplink drives it from one worker thread.

Durability (``buffer.durability``):

* ``full`` (``PRAGMA synchronous=FULL``): the WAL is fsynced at every commit
  of readings and events (deletes of acknowledged readings are not synced: one
  a power cut takes back only means a resend, and the next synced commit syncs
  it too). A committed batch survives a crash, ``kill -9`` and a power cut, on storage
  that honours fsync (some SD cards and USB sticks acknowledge writes they
  have not made; no software setting helps there).
* ``normal`` (``PRAGMA synchronous=NORMAL``): commits are not fsynced; the WAL
  is synced at each checkpoint (automatic every half reserve of WAL, at most
  2 MB, see below, and at every ``maintenance()``, which the gateway calls every
  10 s). A crash or ``kill -9`` loses nothing committed (it is in the kernel's
  page cache). A power cut or kernel panic can lose the commits since the last
  checkpoint: up to the last ~10 s of readings (at most ~2 MB, some 6 000
  readings). Those readings may already have been published; their seqs are
  never handed out again (below), so a consumer sees an announced gap.

Sequence numbers (the contract's ``seq``) are the readings table's ``INTEGER
PRIMARY KEY AUTOINCREMENT``: strictly increasing and never reused after
deletes. A sidecar file ``seq.hwm`` holds a reservation: before a commit hands
out a seq above it, it is raised to that seq + 100 000 and written atomically
(fsynced) first; the same transaction keeps a copy in the database (meta
``hwm``). Every seq ever handed out is at most the reservation. Seqs jump
above it (announced, ``buffer_seq_jump``) whenever the database cannot be
trusted to remember its last seq:

* a new database (deleted, or moved aside as corrupt);
* any unclean start, whatever the durability and with or without a reboot:
  which file a kill or a power cut left whole is not known. The clean flag is
  checkpointed into the database file at every start, so a WAL lost later
  (an SD card that dropped its last writes) still shows ``clean=0``. When the
  WAL is missing (``wal_lost``), or the machine rebooted in ``normal`` mode
  (``power_loss``), readings past the database's last seq may be gone: the
  seqs ``last+1..reservation`` are announced as ``buffer_lost`` (a range:
  the readings among them not delivered before are lost). A kill -9 costs
  one jump of up to 100 000 seqs and re-sends the readings not yet acked.
* a damaged sidecar: anything that is not one decimal number in
  ``1..2^53-1`` (random bytes, 2^63, a value near it). It is moved aside
  (``seq.hwm.damaged-<UTC time>``), announced (``buffer_sidecar_damaged``,
  WARNING) and replaced before the next seq by one above the database's own
  copy and last seq. Only a damaged sidecar *and* a lost WAL at once can
  repeat seqs.

Limits: ``max_bytes`` (live pages plus WAL) and ``max_age_s`` drop the oldest
readings, count them (``dropped_total``, persisted) and announce each drop as
a ``buffer_drop`` event, stored in the same transaction as the delete.

Disk full (or any write failure): ``append_many`` does not raise; readings
wait in a bounded in-memory spill (oldest spilled lost first, counted and
announced while it happens: ``buffer_spill_lost`` and a WARNING at once, then
at most every 10 s) and are committed first, in order, once writing works;
``buffer_disk_full`` and ``buffer_disk_ok`` (with the counts) are announced.

What a delete needs on a full disk, and why it always has it. In WAL mode a
delete writes the pages it changes to the WAL (new blocks if the WAL has to
grow) and the checkpoint copies them into the database file; a delete never
adds pages to the file, but a checkpoint of *appended* pages does. So:

1. A reserve file (``buffer.reserve``, 5 % of the filesystem, 256 KiB to
   4 MiB, real blocks, not counted in ``bytes_on_disk``) is released when a
   write fails for lack of space. Its space is for deletes, checkpoints and
   the vacuum only: appends, spilled readings and events (held in memory
   meanwhile) resume only once the reserve has been made again, which needs
   the reserve twice over free.
2. What the reserve must checkpoint is bounded: appends commit in
   transactions of at most a quarter of the reserve, the automatic
   checkpoint runs every half reserve of WAL, and because its failures are
   silent, a WAL grown past that is checkpointed after the commit, where a
   full disk is heard and the episode begins.
3. While the disk is full, deletes (acks, drops) and the incremental vacuum
   run in transactions of a quarter of the reserve with a checkpoint between
   them, so one WAL's worth of space is reused again and again; the vacuum
   always runs in such steps (one big step could never be written on a
   nearly full disk, and the file would never shrink).

Corruption: the file is moved aside as ``buffer.db.corrupt-<UTC time>``; the
readable rows are copied into a new database with their seqs, first by SQL
(forward, then backward), then page by page (``pages``), skipping the
freelist. The readings that were waiting (from meta ``floor``, recorded at
upkeep, to the file's last seq) and not saved are announced as seq ranges
(``buffer_lost``, reason ``corrupt``). The gateway goes on.

Events for the ``events`` topic wait in the same database (the newest 1000);
events that cannot be stored (disk full) wait in memory with negative ids.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence

from .base import (
    _ACK_CHUNK,
    _BUSY_TIMEOUT_S,
    _LAST_SEQ,
    _RESERVE_MAX,
    _RESERVE_MIN,
    _RESERVE_SHARE,
    _SET_META,
    SEQ_RESERVE,
    BufferStats,
    BufferUnavailable,
    Row,
    _size_of,
)
from .diskfull import DiskFull
from .events import EventStore
from .kept import KeptAcks
from .limits import Limits
from .salvage import Salvage
from .seqguard import SeqGuard
from .txn import Corrupt, Transaction, is_corrupt, is_full
from .vacuum import Upkeep

log = logging.getLogger(__name__)

_ACK_WARN_EVERY_S = 60.0  # failing deletes are said at WARNING at most this often
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS readings (seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, "
    "ts_ms INTEGER NOT NULL, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
)

_INSERT = "INSERT INTO readings (device, ts_ms, body) VALUES (?, ?, ?)"
# Rows per INSERT statement: every SQLite step releases and retakes the GIL, so one statement for
# many rows keeps a busy event loop from convoying the buffer's thread (3 x 200 = 600 parameters,
# far below SQLite's limit). Rows of one multi-row INSERT get consecutive seqs in VALUES order.
_ROWS_PER_INSERT = 200
_READ = "SELECT seq, device, ts_ms, body FROM readings WHERE seq > ? ORDER BY seq LIMIT ?"


@functools.lru_cache(maxsize=256)
def _insert_rows_sql(n: int) -> str:
    return "INSERT INTO readings (device, ts_ms, body) VALUES " + ",".join(["(?,?,?)"] * n)


def _insert_rows(conn: sqlite3.Connection, items: Sequence[tuple[str, int, str]]) -> None:
    """Insert ``items`` in order, ``_ROWS_PER_INSERT`` rows per statement."""
    k = _ROWS_PER_INSERT
    full = len(items) - len(items) % k
    if full:
        conn.executemany(_insert_rows_sql(k),
                         (tuple(itertools.chain.from_iterable(items[i:i + k])) for i in range(0, full, k)))
    rest = items[full:]
    if len(rest) > 1:
        conn.execute(_insert_rows_sql(len(rest)), tuple(itertools.chain.from_iterable(rest)))
    elif rest:
        conn.execute(_INSERT, rest[0])


def _runs(seqs: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Split sorted unique seqs into ranges (3 or more consecutive) and single seqs."""
    ranges: list[tuple[int, int]] = []
    singles: list[int] = []
    i = 0
    while i < len(seqs):
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        if j - i >= 2:
            ranges.append((seqs[i], seqs[j]))
        else:
            singles.extend(seqs[i:j + 1])
        i = j + 1
    return ranges, singles


class Buffer(Upkeep, Salvage, Limits, DiskFull, EventStore, SeqGuard, KeptAcks):
    """The durable queue of readings waiting for the broker (see the module docstring).

    Args:
        data_dir: folder for ``buffer.db`` and ``seq.hwm``; created if missing.
        max_bytes: drop the oldest readings beyond this many bytes on disk.
        max_age_s: drop readings whose ``ts_ms`` is older than this.
        durability: ``full`` (every commit survives a power cut) or ``normal``
            (every commit survives a crash).
        spill_max: readings held in memory while the database cannot be written.
        on_event: called (on the buffer's thread) with each event the buffer
            raises itself; the event is already stored for the events topic.
        now: the wall clock, for ages and event timestamps (injectable for tests).
        keep_acked_s: acknowledged readings and events stay this long, and a new connection sends
            them again (see ``kept``): a broker that crashed before its next save lost them.
        monotonic: the clock of that window (injectable for tests).
    """

    def open(self) -> None:
        """Open (or create) the database; a corrupt one is moved aside and replaced.

        Raises:
            BufferUnavailable: the folder or a new database cannot be created
                (permissions, a read-only or full filesystem).
        """
        if self._opened:
            return
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BufferUnavailable(f"cannot create the buffer folder {self.data_dir}: {exc}",
                                    hint="check gateway.data_dir and its permissions") from exc
        self._reserved, self._hwm_damage = self._read_hwm()
        # After a kill or a power cut SQLite keeps the -wal file; one missing then was lost (an SD card).
        self._wal_at_open = os.path.exists(f"{self.path}-wal")
        try:
            st = os.statvfs(self.data_dir)
            self._reserve_size = int(min(_RESERVE_MAX, max(_RESERVE_MIN, st.f_blocks * st.f_frsize * _RESERVE_SHARE)))
        except OSError:
            self._reserve_size = _RESERVE_MIN
        self._opened = True
        try:
            try:
                self._reopen()
            except sqlite3.DatabaseError as exc:
                if not is_corrupt(exc):
                    raise
                self._recover_corrupt(exc, at_open=True)
        except (sqlite3.Error, OSError) as exc:
            self._opened = False
            self._close_quietly()
            raise BufferUnavailable(f"cannot open the buffer {self.path}: {exc}",
                                    hint=f"check free space and permissions in {self.data_dir}") from exc
        if not self._episode and not self._ensure_reserve():
            log.warning("buffer: no room for the %d-byte reserve in %s: a full disk may need space freed by hand",
                        self._reserve_size, self.data_dir)
        log.debug("buffer %s open: %d reading(s), last seq %d", self.path, self._depth, self._last_seq)

    def close(self) -> None:
        """Commit what is still in memory if possible, mark a clean shutdown, checkpoint and close."""
        if not self._opened:
            return
        try:
            # Stopping cleanly: the window's rows go (the broker on this host stops cleanly too, and saves).
            self._release_kept()
            if self._spill or self._pending_acks or self._event_spill or self._episode:
                self.maintenance()
            if self._spill:
                log.error("buffer closing with %d reading(s) that could not be written (%s): they are lost",
                          len(self._spill), self._episode)
                self._spill_dropped_total += len(self._spill)
                self._spill_unannounced += len(self._spill)
                self._spill.clear()
            self._announce_spill_loss(final=True)  # stored if the disk lets it; the ERROR above says it anyway
            conn = self._conn
            if conn is not None:
                try:
                    conn.execute(_SET_META, ("clean", 1))
                    # Syncs the WAL (and so the flag) into the database file and empties the WAL.
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except sqlite3.Error as exc:
                    log.warning("buffer: closing without a clean checkpoint: %s", exc)
        finally:
            self._close_quietly()
            self._opened = False

    def __enter__(self) -> Buffer:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append_many(self, items: Sequence[tuple[str, int, str]]) -> list[int]:
        """Commit readings in one transaction and return their seqs.

        Readings spilled earlier are committed first, so order is kept. When
        the database cannot be written (disk full) nothing is raised: the items
        join the in-memory spill and no seqs are returned.

        Args:
            items: ``(device, ts_ms, body)`` tuples; ``body`` is a JSON object
                text without ``seq``.

        Returns:
            The seqs assigned to ``items``, in order, or ``[]`` if they were spilled.
        """
        if not items and not self._spill:
            return []
        if self._episode_full and not self._room_to_resume():
            self._spill_items(items)  # no write attempts until there is room again: see _room_to_resume
            return []
        try:
            return self._guarded(lambda: self._append(items))
        except (sqlite3.OperationalError, OSError) as exc:
            self._write_failed(exc)
            self._spill_items(items)
            return []

    def read(self, after_seq: int, limit: int) -> list[Row]:
        """Readings with ``seq > after_seq``, oldest first (a primary-key range scan).

        Returns ``[]`` (and logs) when the database cannot be read at the moment.
        """
        if limit <= 0:
            return []
        try:
            rows = self._guarded(lambda: self._db().execute(_READ, (after_seq, limit)).fetchall())
        except sqlite3.OperationalError as exc:
            if not self._read_failing:
                log.error("buffer: cannot read %s: %s; will retry", self.path, exc)
            self._read_failing = True
            return []
        self._read_failing = False
        return [Row(*r) for r in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged readings (after ``keep_acked_s``: until then they are kept, see ``kept``).

        Readings acknowledged earlier whose window is over are deleted too; ``ack(())`` deletes
        only those. Contiguous seqs are deleted as ranges, the rest in chunks of
        ``DELETE ... WHERE seq IN (...)``, in one transaction (several small
        ones on a full disk). A delete that cannot be written is kept and
        retried (the readings may be sent again meanwhile: delivery is at
        least once).

        Returns:
            The number of readings deleted.
        """
        if self._kept_events:
            self._delete_acked_events(self._hold_events([]))  # events whose window is over
        return self._delete_acked(self._hold(sorted(seqs)))

    def _release_kept(self) -> None:
        """Delete every kept row and event now (a clean close, a limit about to drop readings)."""
        self._delete_acked(self._take_due(self._kept, 0.0, everything=True))
        ids = self._take_due(self._kept_events, 0.0, everything=True)
        self._kept_event_ids.clear()
        self._delete_acked_events(ids)

    def _delete_acked(self, seqs: list[int]) -> int:
        wanted = sorted(set(seqs) | self._pending_acks)
        if not wanted:
            return 0
        self._pending_acks.clear()
        step = self._rows_per_tight_commit(self._row_bytes) or len(wanted)
        done = 0
        for i in range(0, len(wanted), step):
            part = wanted[i:i + step]
            try:
                done += self._guarded(functools.partial(self._delete_seqs, part))
            except sqlite3.OperationalError as exc:
                if is_full(exc):
                    self._write_failed(exc)  # releases the reserve: the retry can delete
                # Deletes that keep failing are how a locked-up buffer shows: said at WARNING, once a minute.
                now = time.monotonic()
                quiet = self._ack_warned_at is not None and now - self._ack_warned_at < _ACK_WARN_EVERY_S
                if not quiet:
                    self._ack_warned_at = now
                log.log(logging.DEBUG if quiet else logging.WARNING,
                        "buffer: cannot delete %d acknowledged reading(s) yet (%s); will retry",
                        len(wanted) - i, exc)
                self._pending_acks.update(wanted[i:])
                break
            if step < len(wanted):
                self._checkpoint_quietly()
        if not self._pending_acks:
            self._ack_warned_at = None
        return done

    def stats(self) -> BufferStats:
        """Depth, sizes and counters (cheap: no table scan)."""
        oldest: int | None = None
        size = 0
        try:
            oldest, size = self._guarded(self._measure)
        except sqlite3.OperationalError as exc:
            log.debug("buffer: stats incomplete: %s", exc)
        return BufferStats(
            depth=max(0, self._depth - self._kept_count), oldest_ts_ms=oldest, newest_seq=self._handed_out,
            bytes_on_disk=size,
            dropped_total=self._dropped_total, spilled=len(self._spill),
            spill_dropped_total=self._spill_dropped_total, disk_full=self._episode_full,
            write_error=self._episode, kept=self._kept_count,
        )

    def _connect(self) -> bool:
        """Open ``buffer.db``, configure and check it, create the schema; True if it is new."""
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._conn = conn
        try:
            # auto_vacuum takes effect only before the first table: set it before anything else.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("buffer: %s does not support WAL (journal mode %s): commits will be slower", self.path,
                            mode)
            conn.execute(f"PRAGMA synchronous = {self._sync}")
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise Corrupt("quick_check: " + "; ".join(problems[:3]))
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            auto = max(16, self._reserve_size // 2 // self._page_size)
            conn.execute(f"PRAGMA wal_autocheckpoint = {auto}")
            # The WAL reaches the automatic checkpoint's size plus one transaction (at most a quarter of
            # the reserve); it is cut back to that when it restarts, so a larger one means that
            # checkpoints fail (a full disk): _commit then checkpoints itself and hears the error.
            self._wal_alarm = auto * self._page_size + self._reserve_size // 4 + 64 * 1024
            conn.execute(f"PRAGMA journal_size_limit = {self._wal_alarm}")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            new = "readings" not in tables
            if not {"readings", "events", "meta"} <= tables:
                with Transaction(conn):
                    for stmt in _SCHEMA:
                        conn.execute(stmt)
        except BaseException:
            self._close_quietly()
            raise
        return new

    def _reopen(self) -> None:
        new = self._connect()
        self._start_session(new)

    def _append(self, items: Sequence[tuple[str, int, str]]) -> list[int]:
        self._ensure_session()
        if self._spill:
            self._flush_spill()
            if self._wal_stopped():
                self._spill_items(items)
                return []
        # Transactions of at most a quarter of the reserve: the WAL a full disk leaves behind is then
        # always small enough for the reserve to checkpoint it (see the module docstring).
        limit = self._reserve_size // 4
        total = _size_of(items)
        if total < limit:  # the hot path: one transaction, no per-row sizing
            seqs = self._commit(items, total)
            if self._wal_stopped():
                return seqs
            self._write_ok()
            return seqs
        seqs = []
        start = 0
        while start < len(items):
            end, size = start, 0
            while end < len(items) and (end == start or size < limit):
                size += 64 + len(items[end][2])
                end += 1
            try:
                seqs += self._commit(items[start:end])
            except (sqlite3.DatabaseError, OSError) as exc:
                if not seqs:
                    raise
                # Part of the batch has its seqs: the rest waits in the spill, in order, and nothing twice
                # (not even after a corrupt database, which the next call recovers: it must not rerun this).
                if not is_corrupt(exc):
                    self._write_failed(exc)
                self._spill_items(items[start:])
                return seqs
            start = end
            if self._wal_stopped():  # the WAL check in _commit found the disk full: the rest waits
                self._spill_items(items[start:])
                return seqs
        self._write_ok()
        return seqs

    def _commit(self, items: Sequence[tuple[str, int, str]], nbytes: int | None = None) -> list[int]:
        if not items:
            return []
        self._wal_unchecked += _size_of(items) if nbytes is None else nbytes
        conn = self._db()
        with Transaction(conn):
            _insert_rows(conn, items)
            last = int(conn.execute(_LAST_SEQ).fetchone()[0])
            if last > self._reserved:
                self._write_hwm(last + SEQ_RESERVE)
                # A copy in the database: the reservation survives a damaged sidecar (see _start_session).
                conn.execute(_SET_META, ("hwm", last + SEQ_RESERVE))
        n = len(items)
        self._last_seq = self._handed_out = last
        self._depth += n
        self._appended_since_maintenance += n
        # One stat per eighth of a reserve appended, not per commit: the WAL can outgrow the automatic
        # checkpoint only by what was appended meanwhile.
        if self._wal_unchecked >= self._reserve_size // 8:
            self._wal_unchecked = 0
            if self._wal_bytes() > self._wal_alarm:
                self._checkpoint_after_commit()
        # AUTOINCREMENT with one writer hands out consecutive seqs within a transaction.
        return list(range(last - n + 1, last + 1))

    def _delete_seqs(self, seqs: list[int]) -> int:
        conn = self._db()
        ranges, singles = _runs(seqs)
        before = conn.total_changes
        # Deletes are not synced, even with durability full: one a power cut takes back only means
        # those readings are sent again (at least once), while a synced one costs an fsync per ack,
        # and at light load (a commit per poll) the next reading's commit waits behind it. The WAL is
        # written in order, so the next synced commit syncs the delete too.
        unsynced = self._sync != "NORMAL"
        if unsynced:
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with Transaction(conn):
                if ranges:
                    conn.executemany("DELETE FROM readings WHERE seq BETWEEN ? AND ?", ranges)
                for i in range(0, len(singles), _ACK_CHUNK):
                    chunk = singles[i:i + _ACK_CHUNK]
                    conn.execute(f"DELETE FROM readings WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
        finally:
            if unsynced:
                try:
                    conn.execute(f"PRAGMA synchronous = {self._sync}")
                except sqlite3.Error:
                    self._close_quietly()  # never commit readings unsynced on it: the next use reopens
                    raise
        n = conn.total_changes - before
        self._depth -= n
        return n

    def _limit_pages(self, pages: int | None) -> None:
        """Test hook: cap the database at ``pages`` pages (``None``: lift the cap).

        Past the cap SQLite reports SQLITE_FULL, as on a full disk. The tests
        use a small tmpfs when they can mount one and fall back to this.
        """
        conn = self._db()
        value = pages if pages is not None else 0xFFFFFFFE
        conn.execute(f"PRAGMA max_page_count = {int(value)}").fetchall()

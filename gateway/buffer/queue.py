"""The durable store-and-forward queue between the pollers and the uplink.

Every accepted reading is committed here and gets its ``seq`` in the same
transaction; it stays until the broker acknowledges it (``ack``) or a
configured limit drops it (``enforce_limits``, always announced). One SQLite
database, ``<data_dir>/buffer.db``, in WAL mode. The class is synchronous and
not thread-safe: the uplink drives it from one worker thread.

Durability (``buffer.durability``):

* ``full`` (``PRAGMA synchronous=FULL``): the WAL is fsynced at every commit.
  A committed batch survives a crash, ``kill -9`` and a power cut, on storage
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

import errno
import functools
import itertools
import json
import logging
import math
import mmap
import operator
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..errors import GatewayError
from ..schema import iso_ms
from .pages import PageFile

log = logging.getLogger(__name__)

T = TypeVar("T")

DB_NAME = "buffer.db"
HWM_NAME = "seq.hwm"
RESERVE_NAME = "buffer.reserve"
# The largest seq or reservation believed: JSON consumers read numbers as doubles (exact to 2^53), and at
# 1000 readings/s that is 285 000 years. Beyond it a stored value is damage, not a count (2^63 overflowed
# SQLite's counter; a value near it left no seqs to hand out, which then looked like a full disk).
_SEQ_MAX = 2**53 - 1
SEQ_RESERVE = 100_000  # seqs reserved per sidecar write: one fsync'd rename per 100k readings
EVENTS_KEEP = 1000  # events kept unsent, in the database and in memory each

_ACK_CHUNK = 500  # ids per DELETE ... IN (...): well under SQLite's variable limit
_SPILL_CHUNK = 1000  # spilled readings per commit when draining the spill
_SALVAGE_CHUNK = 1000
_LOST_RANGES_PER_EVENT = 100  # seq ranges per buffer_lost event: keeps one event well under a broker's packet limit
_DROP_TO = 0.95  # a full buffer drops down to 95 % of max_bytes: one drop (and event) per 5 %, not per tick
_AGE_SLACK_MAX_S = 600.0  # age drops wait for this much (or 5 % of max_age) extra: at most one event per 10 min
_VACUUM_PAGES = 2048  # free pages returned to the filesystem per maintenance() (8 MB at 4 KiB pages)
# The reserve file: 5 % of the filesystem, 256 KiB to 4 MiB. The WAL is checkpointed every half reserve,
# so that the reserve, released when the disk is full, always holds what a checkpoint must add to the file.
_RESERVE_SHARE = 0.05
_RESERVE_MIN = 256 * 1024
_RESERVE_MAX = 4 * 1024 * 1024
_ACK_WARN_EVERY_S = 60.0  # failing deletes are said at WARNING at most this often
_LOSS_EVERY_S = 10.0  # readings lost from the spill are announced at most this often (the first loss at once)
_BUSY_TIMEOUT_S = 5.0  # another process (a backup, `sqlite3` in a shell) may hold the lock briefly
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

# SQLite primary result codes (the low byte of an extended code).
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26

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
_INSERT_WITH_SEQ = "INSERT OR IGNORE INTO readings (seq, device, ts_ms, body) VALUES (?, ?, ?, ?)"
_LAST_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = 'readings'"
_READ = "SELECT seq, device, ts_ms, body FROM readings WHERE seq > ? ORDER BY seq LIMIT ?"
_OLDEST = "SELECT seq, ts_ms FROM readings ORDER BY seq LIMIT 1"
_SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"

_BODY = operator.itemgetter(2)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str).encode


class BufferUnavailable(GatewayError):
    """The buffer database cannot be opened or created at all (at start-up)."""


class _Corrupt(sqlite3.DatabaseError):
    """The database failed ``quick_check``: treated like SQLITE_CORRUPT."""


class _SalvageStopped(Exception):
    """The new database cannot take the rows recovered from the corrupt one."""


@dataclass(frozen=True, slots=True)
class Row:
    """One buffered reading.

    Attributes:
        seq: the contract's sequence number, assigned when the reading was committed.
        device: the device id.
        ts_ms: measurement time, ms since the epoch.
        body: the reading message as JSON object text without ``seq``.
    """

    seq: int
    device: str
    ts_ms: int
    body: str

    def message(self) -> str:
        """The reading message with ``seq`` spliced in as its first key."""
        return f'{{"seq":{self.seq},' + self.body[1:]


@dataclass(frozen=True, slots=True)
class BufferStats:
    """What the status page and ``doctor`` show about the buffer.

    Attributes:
        depth: readings waiting in the database.
        oldest_ts_ms: ``ts_ms`` of the oldest waiting reading, or ``None``.
        newest_seq: highest seq ever assigned (0 if none).
        bytes_on_disk: live database pages plus the WAL file, in bytes.
        dropped_total: readings dropped by the limits since this database was created.
        spilled: readings held in memory because the database cannot be written.
        spill_dropped_total: readings lost from the full spill (this process).
        disk_full: the disk (or the database's page limit) is full.
        write_error: why writes fail at the moment (disk full or another error), or ``None``.
    """

    depth: int
    oldest_ts_ms: int | None
    newest_seq: int
    bytes_on_disk: int
    dropped_total: int
    spilled: int
    spill_dropped_total: int
    disk_full: bool
    write_error: str | None = None


class Buffer:
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
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        max_bytes: int | None = None,
        max_age_s: float | None = None,
        durability: Literal["full", "normal"] = "full",
        spill_max: int = 10_000,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.durability: Literal["full", "normal"] = durability
        self.spill_max = max(0, spill_max)
        self._on_event = on_event
        self._now = now
        self._sync = "FULL" if durability == "full" else "NORMAL"
        self._conn: sqlite3.Connection | None = None
        self._opened = False
        self._page_size = 4096
        self._reserve_size = _RESERVE_MIN
        self._wal_alarm = _RESERVE_MIN  # WAL bytes beyond which the automatic checkpoint has not worked
        self._wal_full: BaseException | None = None  # a checkpoint after a commit found the disk full
        self._wal_unchecked = 0  # bytes appended since the WAL's size was last looked at
        self._reserved = 0  # the sidecar's value: no seq above it has been handed out
        self._hwm_damage: tuple[str, str] | None = None  # (why, moved to) of a sidecar that could not be trusted
        self._lost_range: tuple[int, int, str] | None = None  # seqs a lost file may have taken, to announce
        self._wal_at_open = True
        self._floor_written = 0
        self._last_seq = 0
        self._depth = 0
        self._dropped_total = 0
        self._session_pending = False  # the clean=0 / boot id / seed commit is still to be made
        self._seed: tuple[int, str] | None = None  # (seq to continue above, why)
        self._spill: deque[tuple[str, int, str]] = deque()
        self._spill_dropped_total = 0
        self._spill_unannounced = 0  # readings lost from the spill, not yet announced
        self._loss_announced_at: float | None = None  # monotonic time of the last buffer_spill_lost
        self._episode: str | None = None  # why writes fail, while they do
        self._episode_full = False
        self._episode_recovered = 0
        self._episode_lost = 0
        self._event_spill: deque[tuple[int, str]] = deque()
        self._next_memory_event_id = -1
        self._pending_acks: set[int] = set()
        self._ack_warned_at: float | None = None  # monotonic time of the last "cannot delete" WARNING
        self._appended_since_maintenance = 0
        self._read_failing = False

    # --- lifecycle --------------------------------------------------------------

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
                if not _is_corrupt(exc):
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

    # --- readings ---------------------------------------------------------------

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
        """Delete acknowledged readings.

        Contiguous seqs are deleted as ranges, the rest in chunks of
        ``DELETE ... WHERE seq IN (...)``, in one transaction (several small
        ones on a full disk). A delete that cannot be written is kept and
        retried (the readings may be sent again meanwhile: delivery is at
        least once).

        Returns:
            The number of readings deleted.
        """
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
                if _is_full(exc):
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
            if _is_full(exc):
                self._write_failed(exc)
            # While writes fail (disk full) that has been said loudly once already.
            log.log(logging.DEBUG if self._episode else logging.WARNING,
                    "buffer: cannot enforce the limits now: %s", exc)
            return 0

    def stats(self) -> BufferStats:
        """Depth, sizes and counters (cheap: no table scan)."""
        oldest: int | None = None
        size = 0
        try:
            oldest, size = self._guarded(self._measure)
        except sqlite3.OperationalError as exc:
            log.debug("buffer: stats incomplete: %s", exc)
        return BufferStats(
            depth=self._depth, oldest_ts_ms=oldest, newest_seq=self._last_seq, bytes_on_disk=size,
            dropped_total=self._dropped_total, spilled=len(self._spill),
            spill_dropped_total=self._spill_dropped_total, disk_full=self._episode_full,
            write_error=self._episode,
        )

    # --- events -----------------------------------------------------------------

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
            rows = self._guarded(
                lambda: self._db().execute("SELECT id, body FROM events ORDER BY id LIMIT ?", (limit,)).fetchall())
        except sqlite3.OperationalError as exc:
            log.debug("buffer: cannot read events: %s", exc)
        rows.extend(itertools.islice(self._event_spill, max(0, limit - len(rows))))
        return rows

    def ack_events(self, ids: Iterable[int]) -> None:
        """Forget events the broker has acknowledged."""
        ids = set(ids)
        stored = sorted(i for i in ids if i > 0)
        memory = {i for i in ids if i < 0}
        if memory:
            self._event_spill = deque(e for e in self._event_spill if e[0] not in memory)
        if not stored:
            return
        try:
            self._guarded(lambda: self._delete_events(stored))
        except sqlite3.OperationalError as exc:
            log.log(logging.DEBUG if self._episode else logging.WARNING,
                    "buffer: cannot delete %d sent event(s) (%s); they may be sent again", len(stored), exc)

    # --- maintenance ------------------------------------------------------------

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
            if _is_full(exc) or self._spill or self._episode:
                self._write_failed(exc)
            else:
                log.warning("buffer maintenance failed: %s", exc)

    # --- internals: connection ----------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self._opened:
                raise RuntimeError("the buffer is not open")
            self._reopen()
        assert self._conn is not None
        return self._conn

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
                raise _Corrupt("quick_check: " + "; ".join(problems[:3]))
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
                with _Transaction(conn):
                    for stmt in _SCHEMA:
                        conn.execute(stmt)
        except BaseException:
            self._close_quietly()
            raise
        return new

    def _start_session(self, new: bool) -> None:
        """Load counters, decide whether seqs must jump, and mark the session as running."""
        conn = self._db()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self._dropped_total = int(meta.get("dropped_total", 0))
        self._last_seq = self._db_last_seq(conn)
        self._depth = int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
        self._seed = None
        self._lost_range = None
        # Every seq ever handed out is at most the reservation: the sidecar's, or the database's own copy
        # of it (a sidecar found damaged is not used; a database rolled back may hold an older copy).
        reserved = max(self._reserved, _seq_value(meta.get("hwm")) or 0)
        if new:
            self._seed = (reserved, "new_database")
        elif meta.get("clean", 1) == 0:
            # Which of its files an unclean stop left whole is not known: a lost WAL (an SD card that
            # dropped its last writes) or, in normal mode, a power cut takes back commits whose seqs
            # were handed out and perhaps published. So seqs always continue above the reservation.
            rebooted = not _boot_id() or meta.get("boot_id") != _boot_id()
            if not self._wal_at_open:
                reason = "wal_lost"
            elif rebooted and meta.get("durability") == "normal":
                reason = "power_loss"
            else:
                reason = "unclean_shutdown"
            self._seed = (reserved, reason)
            if reason != "unclean_shutdown" and reserved > self._last_seq:
                self._lost_range = (self._last_seq + 1, reserved, reason)
        elif self._hwm_damage is not None:
            self._seed = (max(reserved, self._last_seq), "sidecar_damaged")
        self._session_pending = True
        self._wal_at_open = True  # a later reopen (after a failed recovery) finds this session's own WAL
        try:
            self._ensure_session()
        except (sqlite3.OperationalError, OSError) as exc:
            self._write_failed(exc)

    def _ensure_session(self) -> None:
        """Commit, synced even in normal mode, the unclean flag, boot id and any seq jump."""
        if not self._session_pending:
            return
        conn = self._db()
        jump: dict[str, Any] | None = None
        conn.execute("PRAGMA synchronous = FULL")
        try:
            with _Transaction(conn):
                conn.executemany(_SET_META, [("clean", 0), ("boot_id", _boot_id()),
                                             ("durability", self.durability)])
                last = self._db_last_seq(conn)
                if self._seed is not None and self._seed[0] > last:
                    seed, reason = self._seed
                    if conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'readings'",
                                    (seed,)).rowcount == 0:
                        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('readings', ?)", (seed,))
                    jump = self._event("buffer_seq_jump", reason=reason, last_seq=last, next_seq=seed + 1)
                    self._insert_event(conn, jump)
                if self._hwm_damage is not None or (self._seed is not None and self._seed[0] > self._reserved):
                    # A sound sidecar again (and its copy in the database) before any seq is handed out.
                    base = max(last, self._seed[0] if self._seed is not None else 0)
                    self._write_hwm(base + SEQ_RESERVE)
                    conn.execute(_SET_META, ("hwm", base + SEQ_RESERVE))
        finally:
            try:
                conn.execute(f"PRAGMA synchronous = {self._sync}")
            except sqlite3.Error:
                pass
        self._session_pending = False
        self._seed = None
        # The unclean flag goes into the database file itself now: were the WAL lost later, the file
        # would otherwise still say "closed cleanly" and the next start would trust it.
        try:
            self._checkpoint("PASSIVE")
        except sqlite3.OperationalError as exc:
            log.debug("buffer: checkpoint after the session start failed: %s", exc)
        if jump is not None:
            self._last_seq = jump["next_seq"] - 1
            log.warning("buffer: seq continues at %d, not %d (%s): the gap is announced as an event",
                        jump["next_seq"], jump["last_seq"] + 1, jump["reason"])
            self._notify(jump)
        self._announce_start_damage()

    def _reopen(self) -> None:
        new = self._connect()
        self._start_session(new)

    def _close_quietly(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _guarded(self, op: Callable[[], T]) -> T:
        """Run ``op``; on corruption replace the database and run it once more."""
        try:
            return op()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            self._recover_corrupt(exc, at_open=False)
        return op()

    # --- internals: corruption ------------------------------------------------------

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
        _fsync_dir(self.data_dir)
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
            with _Transaction(conn):
                for row in rows:
                    if conn.execute(_INSERT_WITH_SEQ, row).rowcount > 0:
                        stored.add(row[0])
        except sqlite3.Error as exc:
            log.warning("buffer: cannot store the readings recovered from a corrupt database: %s", exc)
            raise _SalvageStopped from exc
        return stored

    # --- internals: writing ---------------------------------------------------------

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
                if not _is_corrupt(exc):
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
        with _Transaction(conn):
            _insert_rows(conn, items)
            last = int(conn.execute(_LAST_SEQ).fetchone()[0])
            if last > self._reserved:
                self._write_hwm(last + SEQ_RESERVE)
                # A copy in the database: the reservation survives a damaged sidecar (see _start_session).
                conn.execute(_SET_META, ("hwm", last + SEQ_RESERVE))
        n = len(items)
        self._last_seq = last
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

    def _wal_stopped(self) -> bool:
        """True (and the disk-full episode begun) if a checkpoint after a commit found the disk full."""
        exc, self._wal_full = self._wal_full, None
        if exc is None:
            return False
        self._write_failed(exc)
        return True

    def _checkpoint_after_commit(self) -> None:
        """The WAL outgrew what the automatic checkpoint lets it reach: checkpoint now and hear why not.

        SQLite's automatic checkpoint fails silently (the commit still succeeds), and on a filling disk
        the WAL then grows into all the space left, past what the reserve could ever checkpoint. Heard
        here instead, the disk-full episode starts while the WAL is still small.
        """
        try:
            self._checkpoint("PASSIVE")
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                log.debug("buffer: checkpoint failed: %s", exc)
                return
            self._wal_full = exc  # the commit stands; the caller stops appending (see _append)

    def _flush_spill(self) -> None:
        step = self._rows_per_tight_commit(self._spill_row_bytes) or _SPILL_CHUNK
        while self._spill:
            chunk = list(itertools.islice(self._spill, min(step, _SPILL_CHUNK)))
            self._commit(chunk)
            for _ in chunk:
                self._spill.popleft()
            self._episode_recovered += len(chunk)
            if self._wal_full is not None:
                return
            if step < _SPILL_CHUNK:
                self._checkpoint_quietly()

    def _spill_items(self, items: Sequence[tuple[str, int, str]]) -> None:
        overflow = len(self._spill) + len(items) - self.spill_max
        if overflow > 0:
            from_spill = min(overflow, len(self._spill))
            for _ in range(from_spill):
                self._spill.popleft()
            items = items[overflow - from_spill:]
            if not self._episode_lost:
                log.error("buffer: the in-memory spill is full (%d readings): losing the oldest spilled readings",
                          self.spill_max)
            self._spill_dropped_total += overflow
            self._episode_lost += overflow
            self._spill_unannounced += overflow
            self._announce_spill_loss()
        self._spill.extend(items)

    def _announce_spill_loss(self, *, final: bool = False) -> None:
        """Announce readings lost from the spill while it happens: at once, then at most every ``_LOSS_EVERY_S``.

        A loss nobody hears of until the disk has room again (hours later, or never) is a silent loss:
        the events topic and the log say it as it goes on, with counts, rate-limited.
        """
        if not self._spill_unannounced:
            return
        now = time.monotonic()
        if not final and self._loss_announced_at is not None and now - self._loss_announced_at < _LOSS_EVERY_S:
            return
        since = None if self._loss_announced_at is None else now - self._loss_announced_at
        n, self._spill_unannounced = self._spill_unannounced, 0
        self._loss_announced_at = now
        log.warning("buffer: %d reading(s) lost in memory %s (the disk cannot be written and the in-memory spill "
                    "holds %d; %d lost in total): free disk space in %s", n,
                    "so far" if since is None else f"in the last {since:.0f} s", self.spill_max,
                    self._spill_dropped_total, self.data_dir)
        event = self._event("buffer_spill_lost", lost=n, lost_total=self._spill_dropped_total,
                            spill_max=self.spill_max, error=self._episode)
        self.add_event(event)
        self._notify(event)

    def _write_failed(self, exc: BaseException) -> None:
        full = _is_full(exc)
        if full:
            self._use_reserve()
        if self._episode is not None:
            if full and not self._episode_full:
                self._episode, self._episode_full = f"disk full: {exc}", True
            log.debug("buffer: still cannot write: %s", exc)
            return
        self._episode = f"disk full: {exc}" if full else str(exc)
        self._episode_full = full
        self._episode_recovered = 0
        self._episode_lost = 0
        log.error("buffer: cannot write to %s (%s): keeping up to %d reading(s) in memory until it can; %s",
                  self.path, exc, self.spill_max,
                  f"free disk space in {self.data_dir}" if full else "check the disk and the file's permissions")
        event = self._event("buffer_disk_full" if full else "buffer_write_failed", error=str(exc),
                            spill_max=self.spill_max)
        self.add_event(event)
        self._notify(event)

    def _write_ok(self) -> None:
        if self._episode is None:
            return
        self._announce_spill_loss(final=True)
        recovered, lost = self._episode_recovered, self._episode_lost
        self._episode = None
        self._loss_announced_at = None
        self._episode_full = False
        log.warning("buffer: writable again: %d spilled reading(s) committed, %d lost", recovered, lost)
        try:
            self._flush_event_spill()
        except sqlite3.OperationalError as exc:
            log.debug("buffer: memory events stay in memory: %s", exc)
        self._ensure_reserve()
        event = self._event("buffer_disk_ok", recovered=recovered, lost=lost)
        self.add_event(event)
        self._notify(event)

    def _delete_seqs(self, seqs: list[int]) -> int:
        conn = self._db()
        ranges, singles = _runs(seqs)
        before = conn.total_changes
        with _Transaction(conn):
            if ranges:
                conn.executemany("DELETE FROM readings WHERE seq BETWEEN ? AND ?", ranges)
            for i in range(0, len(singles), _ACK_CHUNK):
                chunk = singles[i:i + _ACK_CHUNK]
                conn.execute(f"DELETE FROM readings WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
        n = conn.total_changes - before
        self._depth -= n
        return n

    # --- internals: limits ------------------------------------------------------------

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
        with _Transaction(conn):
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
        target = max_bytes * _DROP_TO
        dropped, first, last = 0, 0, 0
        with _Transaction(conn):
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

    # --- internals: events, upkeep, measures --------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"kind": kind, **fields, "ts": iso_ms(self._now())}

    def _notify(self, event: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("buffer: the on_event callback failed for %s", event.get("kind"))

    def _insert_event(self, conn: sqlite3.Connection, event: dict[str, Any] | str) -> int:
        text = event if isinstance(event, str) else _dumps(event)
        event_id = conn.execute("INSERT INTO events (body) VALUES (?)", (text,)).lastrowid
        assert event_id is not None
        trimmed = conn.execute("DELETE FROM events WHERE id <= ?", (event_id - EVENTS_KEEP,)).rowcount
        if trimmed > 0:
            log.warning("buffer: %d unsent event(s) dropped: only the newest %d are kept", trimmed, EVENTS_KEEP)
        return event_id

    def _add_event_db(self, text: str) -> int:
        conn = self._db()
        with _Transaction(conn):
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
        with _Transaction(conn):
            for _, text in self._event_spill:
                self._insert_event(conn, text)
        self._event_spill.clear()

    def _delete_events(self, ids: list[int]) -> None:
        conn = self._db()
        with _Transaction(conn):
            for i in range(0, len(ids), _ACK_CHUNK):
                chunk = ids[i:i + _ACK_CHUNK]
                conn.execute(f"DELETE FROM events WHERE id IN ({','.join('?' * len(chunk))})", chunk)

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
            conn.execute("BEGIN IMMEDIATE")
            try:
                for _ in range(min(todo, step)):
                    conn.execute("PRAGMA incremental_vacuum(1)")
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                _rollback(conn)
                if _is_full(exc) and not retried:
                    retried = True  # the reserve is for this: release it and go on in small steps
                    self._write_failed(exc)
                    step = self._tight_pages() or step
                    continue
                log.debug("buffer: incremental vacuum failed: %s", exc)
                break
            except BaseException:
                _rollback(conn)
                raise
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

    # --- internals: the reserve (a full disk must not lock the buffer up) ---------------------
    #
    # The module docstring says what a delete needs on a full disk and why it always has it.

    def _vacuum_step(self) -> int:
        return max(8, min(_VACUUM_PAGES, self._reserve_size // 4 // self._page_size))

    def _tight_pages(self) -> int | None:
        """Pages one transaction should write while the disk is full (``None``: no limit).

        Every page a transaction changes goes to the WAL (a delete touches every page it empties),
        and a checkpoint between small transactions lets the next one reuse the same WAL space.
        """
        if not self._episode_full:
            return None
        return max(8, self._reserve_size // 4 // self._page_size)

    def _rows_per_tight_commit(self, row_bytes: Callable[[], int]) -> int | None:
        pages = self._tight_pages()
        if pages is None:
            return None
        return max(1, pages * self._page_size // max(64, row_bytes()))

    def _row_bytes(self) -> int:
        try:
            return self._data_bytes(self._db()) // max(1, self._depth)
        except sqlite3.Error:
            return 4096

    def _spill_row_bytes(self) -> int:
        sample = list(itertools.islice(self._spill, 100))
        return 64 + sum(len(b) for _, _, b in sample) // max(1, len(sample))

    def _checkpoint_quietly(self) -> None:
        try:
            self._checkpoint("PASSIVE")
        except sqlite3.Error as exc:
            log.debug("buffer: checkpoint failed: %s", exc)

    def _fs_free(self) -> int | None:
        try:
            st = os.statvfs(self.data_dir)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _room_to_resume(self) -> bool:
        """Appends resume only once the reserve is in place again: its space is never theirs."""
        return self._ensure_reserve()

    def _ensure_reserve(self) -> bool:
        path = self.data_dir / RESERVE_NAME
        try:
            if path.stat().st_size >= self._reserve_size:
                return True
        except FileNotFoundError:
            pass
        except OSError:
            return False
        free = self._fs_free()
        if free is not None and free < 2 * self._reserve_size:
            return False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                try:
                    os.posix_fallocate(fd, 0, self._reserve_size)  # real blocks: a sparse file would reserve nothing
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    block = b"\0" * 65536
                    for _ in range(0, self._reserve_size, len(block)):
                        os.write(fd, block)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("buffer: cannot make the reserve %s: %s", path, exc)
            try:
                path.unlink()
            except OSError:
                pass
            return False
        return True

    def _use_reserve(self) -> None:
        path = self.data_dir / RESERVE_NAME
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.debug("buffer: cannot remove the reserve %s: %s", path, exc)
        else:
            log.warning("buffer: disk full: released the %d-byte reserve so that acknowledged readings can still "
                        "be deleted", self._reserve_size)
        try:
            self._checkpoint("TRUNCATE")
        except sqlite3.Error as exc:
            log.debug("buffer: checkpoint on a full disk failed: %s", exc)

    def _checkpoint(self, mode: Literal["PASSIVE", "TRUNCATE"]) -> None:
        self._db().execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    def _measure(self) -> tuple[int | None, int]:
        conn = self._db()
        oldest = conn.execute(_OLDEST).fetchone()
        return (None if oldest is None else int(oldest[1])), self._data_bytes(conn) + self._wal_bytes()

    def _data_bytes(self, conn: sqlite3.Connection) -> int:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page_size

    def _wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            return 0

    @staticmethod
    def _db_last_seq(conn: sqlite3.Connection) -> int:
        row = conn.execute(_LAST_SEQ).fetchone()
        return 0 if row is None else int(row[0])

    # --- internals: the sidecar -----------------------------------------------------------

    def _read_hwm(self) -> tuple[int, tuple[str, str] | None]:
        """The sidecar's reservation, and (why, where it was moved) when it is there but cannot be trusted.

        A damaged sidecar must not stop the gateway (a crash loop under systemd): any content that is
        not one decimal number in ``1.._SEQ_MAX`` counts as damage, including absurd values near 2^63
        that would overflow SQLite's counter or leave no seqs to hand out.
        """
        path = self.data_dir / HWM_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0, None
        except OSError as exc:
            return 0, (f"cannot be read: {exc}", "")
        value = _seq_value(raw)
        if value is not None:
            return value, None
        # Kept for a post-mortem; a sound sidecar is written before the next seq is handed out.
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._now()))
        moved = self.data_dir / f"{HWM_NAME}.damaged-{stamp}"
        try:
            os.replace(path, moved)
        except OSError as exc:
            log.debug("buffer: cannot move the damaged sidecar aside: %s", exc)
            moved = path
        return 0, (f"holds no usable seq: {raw[:24]!r}", str(moved))

    def _announce_start_damage(self) -> None:
        """Move a damaged sidecar aside, and announce it and any seqs a lost file took with it."""
        if self._hwm_damage is not None:
            why, moved = self._hwm_damage
            self._hwm_damage = None
            src = self.data_dir / HWM_NAME
            log.warning("buffer: the seq sidecar %s was damaged (%s): kept as %s; seqs continue above %d "
                        "(from the database)", src, why, moved, self._last_seq)
            event = self._event("buffer_sidecar_damaged", path=str(src), error=why, moved_to=str(moved),
                                next_seq=self._last_seq + 1)
            self.add_event(event)
            self._notify(event)
        if self._lost_range is not None:
            first, last, reason = self._lost_range
            self._lost_range = None
            log.warning("buffer: readings with seq %d..%d may be lost (%s): those not delivered before are "
                        "gone; the range is announced as an event", first, last, reason)
            event = self._event("buffer_lost", reason=reason, first_seq=first, last_seq=last)
            self.add_event(event)
            self._notify(event)

    def _write_hwm(self, value: int) -> None:
        """Atomically replace the sidecar: write a temporary file, fsync, rename, fsync the folder."""
        final = self.data_dir / HWM_NAME
        tmp = self.data_dir / (HWM_NAME + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                data = f"{value}\n".encode()
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
        _fsync_dir(self.data_dir)
        self._reserved = value

    # --- test hooks -------------------------------------------------------------------------

    def _limit_pages(self, pages: int | None) -> None:
        """Test hook: cap the database at ``pages`` pages (``None``: lift the cap).

        Past the cap SQLite reports SQLITE_FULL, as on a full disk. The tests
        use a small tmpfs when they can mount one and fall back to this.
        """
        conn = self._db()
        value = pages if pages is not None else 0xFFFFFFFE
        conn.execute(f"PRAGMA max_page_count = {int(value)}").fetchall()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception (which goes on).

    A class, not ``contextlib.contextmanager``: it is on the append hot path, and a generator-based
    manager costs several times more per commit.
    """

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                _rollback(self.conn)
                raise
        else:
            _rollback(self.conn)


def _rollback(conn: sqlite3.Connection) -> None:
    # After SQLITE_FULL or an I/O error SQLite may already have rolled back.
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.debug("buffer: rollback failed: %s", exc)


def _size_of(items: Sequence[tuple[str, int, str]]) -> int:
    """About what ``items`` add to the WAL, in bytes (a row's overhead counted as 64)."""
    return 64 * len(items) + sum(map(len, map(_BODY, items)))


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


def _is_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, _Corrupt):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return type(exc) is sqlite3.DatabaseError


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == _SQLITE_FULL)
    return "full" in str(exc)


def _plausible(row: tuple[Any, ...]) -> bool:
    seq, device, ts_ms, body = row
    return (isinstance(seq, int) and seq > 0 and isinstance(device, str) and isinstance(ts_ms, int)
            and isinstance(body, str) and body.startswith("{") and len(body) > 2)


def _seq_value(value: object) -> int | None:
    """A stored seq or reservation as an int in ``1.._SEQ_MAX``; ``None`` for anything else (damage)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii").strip()
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        if not value.isdigit() or len(value) > 20:
            return None
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _SEQ_MAX:
        return None
    return value


def _boot_id() -> str:
    """The kernel's id of this boot ('' where unknown): it changes when the machine restarts."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("buffer: cannot fsync %s: %s", path, exc)
    finally:
        os.close(fd)

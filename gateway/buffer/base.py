"""The buffer's state and the helpers every job uses: the connection, checkpoints, sizes, events.

:class:`BufferBase` holds all state (one ``__init__``); each job is a mixin on it in a module of
its own, and :class:`~.queue.Buffer` combines them. Methods one job calls in another are declared
here for the type checker only.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..errors import GatewayError
from ..schema import iso_ms
from .txn import is_corrupt

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
_ACK_CHUNK = 500  # ids per DELETE ... IN (...): well under SQLite's variable limit
EVENTS_KEEP = 1000  # events kept unsent, in the database and in memory each
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
_LOSS_EVERY_S = 10.0  # readings lost from the spill are announced at most this often (the first loss at once)
_BUSY_TIMEOUT_S = 5.0  # another process (a backup, `sqlite3` in a shell) may hold the lock briefly
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_LAST_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = 'readings'"
_OLDEST = "SELECT seq, ts_ms FROM readings ORDER BY seq LIMIT 1"
_SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
_BODY = operator.itemgetter(2)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str).encode


class BufferUnavailable(GatewayError):
    """The buffer database cannot be opened or created at all (at start-up)."""


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
        newest_seq: the highest seq given to a reading (0 if none); a seq jump does not raise it.
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
    kept: int = 0


def _size_of(items: Sequence[tuple[str, int, str]]) -> int:
    """About what ``items`` add to the WAL, in bytes (a row's overhead counted as 64)."""
    return 64 * len(items) + sum(map(len, map(_BODY, items)))


class BufferBase:
    """The state of the durable queue, set up once for every job (arguments: :class:`~.queue.Buffer`)."""

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
        keep_acked_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
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
        self._last_seq = 0  # the readings table's counter: a jump raises it without handing out a seq
        self._handed_out = 0  # the highest seq given to a reading (what the status API calls last_seq)
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
        # Acknowledged rows kept for the broker's unsaved window (kept.py): (ack time, seqs), oldest first.
        self.keep_acked_s = max(0.0, keep_acked_s)
        self._monotonic = monotonic
        self._kept: deque[tuple[float, list[int]]] = deque()
        self._kept_count = 0
        self._kept_events: deque[tuple[float, list[int]]] = deque()
        self._kept_event_ids: set[int] = set()
        self._events_trimmed = 0  # unsent events dropped at the cap since it was last said
        self._events_trim_said = -1e9  # monotonic time it was last said

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self._opened:
                raise RuntimeError("the buffer is not open")
            self._reopen()
        assert self._conn is not None
        return self._conn

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
            if not is_corrupt(exc):
                raise
            self._recover_corrupt(exc, at_open=False)
        return op()

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"kind": kind, **fields, "ts": iso_ms(self._now())}

    def _notify(self, event: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("buffer: the on_event callback failed for %s", event.get("kind"))

    def _checkpoint(self, mode: Literal["PASSIVE", "TRUNCATE"]) -> None:
        self._db().execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    def _checkpoint_quietly(self) -> None:
        try:
            self._checkpoint("PASSIVE")
        except sqlite3.Error as exc:
            log.debug("buffer: checkpoint failed: %s", exc)

    def _measure(self) -> tuple[int | None, int]:
        conn = self._db()
        oldest = conn.execute(_OLDEST).fetchone()
        if oldest is not None and self._kept:
            # The oldest row may be one acknowledged and kept (kept.py): the oldest *waiting* one is
            # below every kept seq, or above them (rows still in flight among them count as above).
            lo = min(seqs[0] for _, seqs in self._kept)
            if oldest[0] >= lo:
                hi = max(seqs[-1] for _, seqs in self._kept)
                oldest = conn.execute("SELECT seq, ts_ms FROM readings WHERE seq > ? ORDER BY seq LIMIT 1",
                                      (hi,)).fetchone()
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

    if TYPE_CHECKING:  # defined by the jobs' mixins; declared for the type checker only

        def _start_session(self, new: bool) -> None:
            raise NotImplementedError

        def _ensure_session(self) -> None:
            raise NotImplementedError

        def _read_hwm(self) -> tuple[int, tuple[str, str] | None]:
            raise NotImplementedError

        def _announce_start_damage(self) -> None:
            raise NotImplementedError

        def _write_hwm(self, value: int) -> None:
            raise NotImplementedError

        def add_event(self, event: dict[str, Any]) -> int:
            raise NotImplementedError

        def read_events(self, limit: int) -> list[tuple[int, str]]:
            raise NotImplementedError

        def ack_events(self, ids: Iterable[int]) -> None:
            raise NotImplementedError

        def _insert_event(self, conn: sqlite3.Connection, event: dict[str, Any] | str) -> int:
            raise NotImplementedError

        def _add_event_db(self, text: str) -> int:
            raise NotImplementedError

        def _add_event_memory(self, text: str) -> int:
            raise NotImplementedError

        def _flush_event_spill(self) -> None:
            raise NotImplementedError

        def _delete_events(self, ids: list[int]) -> None:
            raise NotImplementedError

        def enforce_limits(self) -> int:
            raise NotImplementedError

        def _enforce(self) -> int:
            raise NotImplementedError

        def _drop_by_age(self, max_age_s: float) -> int:
            raise NotImplementedError

        def _drop_by_bytes(self, max_bytes: int) -> int:
            raise NotImplementedError

        def _record_drop(self, conn: sqlite3.Connection, reason: str, n: int, first: int, last: int) -> dict[str, Any]:
            raise NotImplementedError

        def _dropped(self, event: dict[str, Any]) -> None:
            raise NotImplementedError

        def _wal_stopped(self) -> bool:
            raise NotImplementedError

        def _checkpoint_after_commit(self) -> None:
            raise NotImplementedError

        def _flush_spill(self) -> None:
            raise NotImplementedError

        def _spill_items(self, items: Sequence[tuple[str, int, str]]) -> None:
            raise NotImplementedError

        def _announce_spill_loss(self, *, final: bool = False) -> None:
            raise NotImplementedError

        def _write_failed(self, exc: BaseException) -> None:
            raise NotImplementedError

        def _write_ok(self) -> None:
            raise NotImplementedError

        def _tight_pages(self) -> int | None:
            raise NotImplementedError

        def _hold(self, seqs: list[int]) -> list[int]:
            raise NotImplementedError

        def _hold_events(self, ids: list[int]) -> list[int]:
            raise NotImplementedError

        def _release_kept(self) -> None:
            raise NotImplementedError

        def _delete_acked_events(self, stored: list[int]) -> None:
            raise NotImplementedError

        def _take_due(self, kept: deque[tuple[float, list[int]]], now: float, everything: bool = False) -> list[int]:
            raise NotImplementedError

        def _rows_per_tight_commit(self, row_bytes: Callable[[], int]) -> int | None:
            raise NotImplementedError

        def _row_bytes(self) -> int:
            raise NotImplementedError

        def _spill_row_bytes(self) -> int:
            raise NotImplementedError

        def _fs_free(self) -> int | None:
            raise NotImplementedError

        def _room_to_resume(self) -> bool:
            raise NotImplementedError

        def _ensure_reserve(self) -> bool:
            raise NotImplementedError

        def _use_reserve(self) -> None:
            raise NotImplementedError

        def _recover_corrupt(self, exc: sqlite3.DatabaseError, *, at_open: bool) -> None:
            raise NotImplementedError

        def _announce_corruption_loss(self, saved: set[int], floor: int | None, old_last: int) -> None:
            raise NotImplementedError

        def _move_aside(self) -> Path:
            raise NotImplementedError

        def _salvage(self, moved: Path) -> tuple[set[int], int | None, int]:
            raise NotImplementedError

        def _salvage_pages(self, moved: Path, saved: set[int]) -> int:
            raise NotImplementedError

        def _store_salvaged(self, rows: list[tuple[Any, ...]]) -> set[int]:
            raise NotImplementedError

        def maintenance(self) -> None:
            raise NotImplementedError

        def _maintain(self) -> None:
            raise NotImplementedError

        def _write_floor(self, conn: sqlite3.Connection) -> None:
            raise NotImplementedError

        def _vacuum_step(self) -> int:
            raise NotImplementedError

        def open(self) -> None:
            raise NotImplementedError

        def close(self) -> None:
            raise NotImplementedError

        def append_many(self, items: Sequence[tuple[str, int, str]]) -> list[int]:
            raise NotImplementedError

        def read(self, after_seq: int, limit: int) -> list[Row]:
            raise NotImplementedError

        def ack(self, seqs: Iterable[int]) -> int:
            raise NotImplementedError

        def stats(self) -> BufferStats:
            raise NotImplementedError

        def _connect(self) -> bool:
            raise NotImplementedError

        def _reopen(self) -> None:
            raise NotImplementedError

        def _append(self, items: Sequence[tuple[str, int, str]]) -> list[int]:
            raise NotImplementedError

        def _commit(self, items: Sequence[tuple[str, int, str]], nbytes: int | None = None) -> list[int]:
            raise NotImplementedError

        def _delete_seqs(self, seqs: list[int]) -> int:
            raise NotImplementedError

        def _limit_pages(self, pages: int | None) -> None:
            raise NotImplementedError

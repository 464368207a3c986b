"""The command store: what makes "at most once per (device, id)" survive ``kill -9``.

A command is recorded as ``executing`` in a committed transaction (SQLite,
WAL, ``synchronous=FULL``: fsynced) *before* the device is touched, and its
result after. A repeated id finds the row and is answered from it; a row
still ``executing`` when the store opens belongs to a process that died
between the write and its result: the write may or may not have reached the
device, so it becomes ``failed`` with reason ``unknown_outcome`` and is never
executed again.

Where: its own file, ``<data_dir>/commands.db``, beside the buffer's
``buffer.db``, not in it. The buffer moves its file aside and rebuilds it when
the file is damaged, drops its oldest rows when the disk budget is reached,
and runs its own worker thread; a command row lost to any of those would let a
redelivered command write a second time. Apart, the store has one job and one
rule: an ``executing`` row is never deleted.

Bounded: finished rows older than ``remember`` seconds, and beyond the newest
``remember_max``, are deleted at open and after every 100 commands.

The class is synchronous and thread-safe (one lock); the executor calls the
committing methods from a worker thread so an fsync never stalls polling.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import GatewayError

log = logging.getLogger(__name__)

DB_NAME = "commands.db"
PRUNE_EVERY = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    device   TEXT NOT NULL,
    id       TEXT NOT NULL,
    state    TEXT NOT NULL,          -- executing | done
    received REAL NOT NULL,          -- epoch seconds
    origin   TEXT NOT NULL,
    command  TEXT NOT NULL,          -- the command as JSON
    result   TEXT,                   -- the result as JSON, once done
    PRIMARY KEY (device, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS commands_received ON commands (received);
"""


class StoreUnavailable(GatewayError):
    """The command store cannot be opened or written (disk full, read-only, damaged)."""


class AlreadyKnown(GatewayError):
    """``begin`` found the (device, id) already recorded (another process or a race)."""


class CommandStore:
    """The persistent record of commands by (device, id).

    Args:
        data_dir: the gateway's data folder (``commands.db`` goes there).
        remember: seconds a finished command is kept.
        remember_max: most finished commands kept.
    """

    def __init__(self, data_dir: Path, *, remember: float = 7 * 86400.0, remember_max: int = 100_000) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.remember = remember
        self.remember_max = remember_max
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._since_prune = 0

    def open(self) -> list[dict[str, Any]]:
        """Open (creating) the store and settle what a dead process left ``executing``.

        Returns:
            The results made for those rows (``failed``, ``unknown_outcome``), for the audit trail.

        Raises:
            StoreUnavailable: the file cannot be opened or written.
        """
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = FULL")
                    conn.executescript(_SCHEMA)
                except BaseException:
                    conn.close()
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"cannot open the command store {self.path}: {exc}",
                                       hint="check that the data_dir is writable and the disk not full") from exc
            self._conn = conn
            try:
                pending = conn.execute("SELECT device, id, command FROM commands WHERE state = 'executing'").fetchall()
                self._prune(time.time())
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot read the command store {self.path}: {exc}") from exc
        return [{"device": d, "id": i, "command": json.loads(c)} for d, i, c in pending]

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the command store is not open")
        return self._conn

    def lookup(self, device: str, command_id: str) -> tuple[str, dict[str, Any] | None] | None:
        """``(state, result)`` of a known command, None for an id never seen (or forgotten).

        Raises:
            StoreUnavailable: the file cannot be read.
        """
        with self._lock:
            try:
                row = self._db().execute("SELECT state, result FROM commands WHERE device = ? AND id = ?",
                                         (device, command_id)).fetchone()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot read the command store: {exc}") from exc
        if row is None:
            return None
        return row[0], (json.loads(row[1]) if row[1] else None)

    def begin(self, device: str, command_id: str, command: dict[str, Any], origin: str) -> None:
        """Record a command as ``executing``; committed (and fsynced) when this returns.

        Raises:
            AlreadyKnown: the id is recorded already.
            StoreUnavailable: the commit failed (the command must then not run).
        """
        with self._lock:
            try:
                self._db().execute(
                    "INSERT INTO commands (device, id, state, received, origin, command) "
                    "VALUES (?, ?, 'executing', ?, ?, ?)",
                    (device, command_id, time.time(), origin, json.dumps(command, separators=(",", ":"))))
            except sqlite3.IntegrityError as exc:
                raise AlreadyKnown(f"command {command_id!r} of {device} is recorded already") from exc
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot record the command: {exc}",
                                       hint="check free space in the data_dir") from exc

    def finish(self, device: str, command_id: str, result: dict[str, Any]) -> None:
        """Record the result; the command is ``done``.

        Raises:
            StoreUnavailable: the commit failed (the row stays ``executing``: after a restart it
                answers ``unknown_outcome``, never a second write).
        """
        with self._lock:
            try:
                self._db().execute("UPDATE commands SET state = 'done', result = ? WHERE device = ? AND id = ?",
                                   (json.dumps(result, separators=(",", ":")), device, command_id))
                self._since_prune += 1
                if self._since_prune >= PRUNE_EVERY:
                    self._prune(time.time())
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot record the result: {exc}") from exc

    def recent(self, device: str, limit: int) -> list[dict[str, Any]]:
        """The newest executed commands of a device, newest first: ``{origin, received, command, result}``."""
        with self._lock:
            try:
                rows = self._db().execute(
                    "SELECT origin, received, command, result FROM commands WHERE device = ? "
                    "ORDER BY received DESC LIMIT ?", (device, limit)).fetchall()
            except (sqlite3.Error, StoreUnavailable):
                return []
        return [{"origin": o, "received": r, "command": json.loads(c), "result": json.loads(res) if res else None}
                for o, r, c, res in rows]

    def count(self) -> int:
        """Rows held (for tests and the bound)."""
        with self._lock:
            return int(self._db().execute("SELECT count(*) FROM commands").fetchone()[0])

    def _prune(self, now: float) -> None:
        conn = self._db()
        self._since_prune = 0
        conn.execute("DELETE FROM commands WHERE state = 'done' AND received < ?", (now - self.remember,))
        conn.execute(
            "DELETE FROM commands WHERE state = 'done' AND (device, id) NOT IN "
            "(SELECT device, id FROM commands WHERE state = 'done' ORDER BY received DESC LIMIT ?)",
            (self.remember_max,))

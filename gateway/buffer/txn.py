"""SQLite plumbing every job of the buffer shares: the one ``BEGIN IMMEDIATE`` ... ``COMMIT`` block
(:class:`Transaction`), and what an error means (a full disk, a corrupt file).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

# SQLite primary result codes (the low byte of an extended code).
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26


class Transaction:
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
                rollback(self.conn)
                raise
        else:
            rollback(self.conn)


def rollback(conn: sqlite3.Connection) -> None:
    # After SQLITE_FULL or an I/O error SQLite may already have rolled back.
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.debug("buffer: rollback failed: %s", exc)


def is_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, Corrupt):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return type(exc) is sqlite3.DatabaseError


def is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == _SQLITE_FULL)
    return "full" in str(exc)


class Corrupt(sqlite3.DatabaseError):
    """The database failed ``quick_check``: treated like SQLITE_CORRUPT."""


def fsync_dir(path: Path) -> None:
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

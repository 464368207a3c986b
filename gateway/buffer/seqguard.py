"""The seq guard: seqs are never handed out twice, across restarts, kills, lost WALs and damaged
sidecars (the ``seq.hwm`` reservation; the design is in ``queue``'s module docstring).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import Any

from .base import _BOOT_ID, _SEQ_MAX, _SET_META, HWM_NAME, SEQ_RESERVE, BufferBase
from .txn import Transaction, fsync_dir

log = logging.getLogger(__name__)


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


class SeqGuard(BufferBase):
    """The seq guard of :class:`~.queue.Buffer` (see the module docstring)."""

    def _start_session(self, new: bool) -> None:
        """Load counters, decide whether seqs must jump, and mark the session as running."""
        conn = self._db()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self._dropped_total = int(meta.get("dropped_total", 0))
        self._last_seq = self._db_last_seq(conn)
        # A jump that no reading followed yet (killed right after the start) left the counter at its
        # target: the seqs below it were skipped, not handed out.
        jumped_to = _seq_value(meta.get("jumped_to"))
        self._handed_out = (_seq_value(meta.get("jumped_from")) or 0) if jumped_to == self._last_seq \
            else self._last_seq
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
            with Transaction(conn):
                conn.executemany(_SET_META, [("clean", 0), ("boot_id", _boot_id()),
                                             ("durability", self.durability)])
                last = self._db_last_seq(conn)
                if self._seed is not None and self._seed[0] > last:
                    seed, reason = self._seed
                    if conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'readings'",
                                    (seed,)).rowcount == 0:
                        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('readings', ?)", (seed,))
                    handed_out = min(self._handed_out, last)
                    jump = self._event("buffer_seq_jump", reason=reason, last_seq=handed_out, next_seq=seed + 1)
                    self._insert_event(conn, jump)
                    conn.executemany(_SET_META, [("jumped_from", handed_out), ("jumped_to", seed)])
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
        fsync_dir(self.data_dir)
        self._reserved = value

"""A full disk (or any write failure): the reserve file, the bounded in-memory spill, and the
episode's announcements (``buffer_disk_full``, ``buffer_spill_lost``, ``buffer_disk_ok``).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence

from .base import _LOSS_EVERY_S, _SPILL_CHUNK, RESERVE_NAME, BufferBase
from .txn import is_full

log = logging.getLogger(__name__)


class DiskFull(BufferBase):
    """What :class:`~.queue.Buffer` does while it cannot write (see the module docstring)."""

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
            if not is_full(exc):
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
        full = is_full(exc)
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

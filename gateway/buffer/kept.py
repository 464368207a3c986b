"""Acknowledged readings and events kept for the broker's unsaved window (``keep_acked_s``).

A broker acknowledges a message once it holds it in memory; it writes it to disk only at its
next save (mosquitto: ``autosave_interval``). If the broker is killed or loses power in between,
what it acknowledged since its last save is gone, and a gateway that deleted those readings at
their PUBACK cannot send them again. So an acknowledged reading stays in the database for
``keep_acked_s`` seconds after its PUBACK. It no longer counts as waiting (``depth``), and the
publisher does not send it again within the same connection; but a new connection sends it
again (:meth:`KeptAcks.requeue_kept`): duplicates, never loss. A consumer dedupes on
(gateway, seq), as it must for any QoS 1 delivery.

The window gives way to the disk: while writes fail (disk full) acknowledged rows are deleted at
once, and the age and size limits delete kept rows before they drop a waiting one. A clean
close deletes them all. After a crash of the gateway they are plain waiting rows and are sent
again at the next start.
"""

from __future__ import annotations

from collections import deque

from .base import BufferBase


class KeptAcks(BufferBase):
    """The acknowledged rows of :class:`~.queue.Buffer` that wait out ``keep_acked_s`` before their delete."""

    def _hold(self, seqs: list[int]) -> list[int]:
        """Keep ``seqs`` (just acknowledged) if the window applies; return the seqs to delete now."""
        now = self._monotonic()
        if self.keep_acked_s > 0 and not self._episode and seqs:
            self._kept.append((now, seqs))
            self._kept_count += len(seqs)
            seqs = []
        return seqs + self._take_due(self._kept, now)

    def _hold_events(self, ids: list[int]) -> list[int]:
        """Like :meth:`_hold`, for stored event ids (they are left out of ``read_events`` meanwhile)."""
        now = self._monotonic()
        if self.keep_acked_s > 0 and not self._episode and ids:
            self._kept_events.append((now, ids))
            self._kept_event_ids.update(ids)
            ids = []
        due = self._take_due(self._kept_events, now)
        self._kept_event_ids.difference_update(due)
        return ids + due

    def _take_due(self, kept: deque[tuple[float, list[int]]], now: float, everything: bool = False) -> list[int]:
        """Pop the entries of ``kept`` whose window is over (all of them with ``everything`` or a full disk)."""
        cutoff = now - self.keep_acked_s
        everything = everything or self.keep_acked_s <= 0 or self._episode is not None
        due: list[int] = []
        while kept and (everything or kept[0][0] <= cutoff):
            due += kept.popleft()[1]
        if kept is self._kept:
            self._kept_count -= len(due)
        return due

    def requeue_kept(self) -> int:
        """A new connection: the kept rows and events wait again (they are sent again); their number."""
        n = self._kept_count
        self._kept.clear()
        self._kept_count = 0
        self._kept_events.clear()
        self._kept_event_ids.clear()
        return n

"""The publisher's bookkeeping: which committed rows go out next, and which await their PUBACK.

Pure state, no I/O, so that its invariants are tested directly
(``tests/test_uplink_readahead.py``):

* ``ReadAhead``: within a session, the rows handed to the publisher are every
  committed row above the session's start, each once, in seq order. Rows reach
  it two ways: read back from the buffer (a backlog, a reconnect), or, while the
  publisher has everything older ("caught up"), straight from a commit (the live
  fast path: no read back from disk). A commit that does not follow on from the
  last row queued (a gap: a seq jump, spilled rows committed first, a read in
  flight) ends the fast path until a read has caught up again, and so does a
  queue of ``ready_max`` rows (a publisher behind its commits): memory holds
  at most that many, the rest is read back from the buffer when it is their turn.
* ``InFlight``: the messages awaiting their PUBACK (reading seqs and event ids by
  message id) and the acknowledged ones not yet deleted from the buffer. A lost
  connection forgets what was in flight (it is sent again from the buffer: at
  least once); what was acknowledged stays acknowledged. The buffer keeps an
  acknowledged row for ``buffer.keep_acked`` and the next session sends it
  again (a broker that crashed before its save lost it: buffer/kept.py).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from ..buffer import Row


class ReadAhead:
    """Rows queued for publishing in this session (see the module docstring).

    Attributes:
        ready: rows queued, oldest first.
        tail: the highest seq queued (or published) in this session; 0 at its start.
        caught_up: the buffer holds nothing above ``tail`` that is not queued.
        in_session: a connection is up and publishing.
        committed_max: the highest seq committed by this process.
    """

    __slots__ = ("caught_up", "committed_max", "in_session", "ready", "ready_max", "tail")

    def __init__(self, ready_max: int = 2000) -> None:
        self.ready: collections.deque[Row] = collections.deque()
        self.ready_max = ready_max
        self.tail = 0
        self.caught_up = False
        self.in_session = False
        self.committed_max = 0

    def start_session(self) -> None:
        """A new connection: everything not acknowledged is read again from the buffer, oldest first."""
        self.ready.clear()
        self.tail, self.caught_up, self.in_session = 0, False, True

    def end_session(self) -> None:
        self.in_session = False
        self.ready.clear()

    def committed(self, seqs: Sequence[int], batch: Sequence[tuple[str, int, str]]) -> None:
        """``batch`` was committed with ``seqs`` (``[]``: it was spilled, or only part of it has seqs)."""
        if seqs:
            self.committed_max = max(self.committed_max, seqs[-1])
        if self.in_session and seqs and len(seqs) == len(batch):
            if self.caught_up and seqs[0] == self.tail + 1 and len(self.ready) + len(seqs) <= self.ready_max:
                # Live fast path: the publisher has everything older, so it takes these rows
                # directly instead of reading them back from disk.
                self.ready.extend(Row(q, d, t, b) for q, (d, t, b) in zip(seqs, batch, strict=True))
                self.tail = seqs[-1]
            elif seqs[-1] > self.tail:
                self.caught_up = False
        elif seqs or batch:
            self.caught_up = False

    def committed_elsewhere(self, newest_seq: int) -> bool:
        """The buffer committed rows itself (a spill drained at upkeep); True if they are new to us."""
        if newest_seq <= self.committed_max:
            return False
        self.committed_max = newest_seq
        self.caught_up = False
        return True

    def wants_read(self) -> bool:
        """Nothing queued and the buffer may hold more: read from it (after ``tail``)."""
        return not self.ready and not self.caught_up

    def read(self, rows: Sequence[Row], limit: int) -> None:
        """Rows read from the buffer after ``tail`` with ``limit``."""
        self.ready.extend(rows)
        if rows:
            self.tail = rows[-1].seq
        # Caught up only if no commit landed after this read was taken; otherwise the next
        # turn reads again (the fast path needs no gap).
        self.caught_up = len(rows) < limit and self.committed_max <= self.tail

    def take(self, n: int) -> list[Row]:
        """The next ``n`` rows to publish (fewer if fewer are queued), oldest first."""
        ready = self.ready
        if n >= len(ready):
            rows = list(ready)
            ready.clear()
            return rows
        return [ready.popleft() for _ in range(n)]

    def drained(self) -> bool:
        """Everything this process committed has been handed to the publisher."""
        return not self.ready and self.caught_up and self.tail >= self.committed_max


class InFlight:
    """Messages awaiting their PUBACK, and acknowledgements not yet applied to the buffer.

    Attributes:
        readings: message id -> the seqs it carries.
        events: message id -> the event id it carries.
        acked: seqs acknowledged, to delete from the buffer.
        acked_events: event ids acknowledged, to delete from the buffer.
    """

    __slots__ = ("acked", "acked_events", "events", "readings")

    def __init__(self) -> None:
        self.readings: dict[int, list[int]] = {}
        self.events: dict[int, int] = {}
        self.acked: list[int] = []
        self.acked_events: list[int] = []

    def count(self) -> int:
        """Readings sent and not acknowledged."""
        return sum(len(v) for v in self.readings.values())

    def ack(self, mid: int) -> int:
        """A PUBACK for message ``mid``: the number of readings it acknowledged (0 for an event or a stranger)."""
        seqs = self.readings.pop(mid, None)
        if seqs is not None:
            self.acked.extend(seqs)
            return len(seqs)
        event_id = self.events.pop(mid, None)
        if event_id is not None:
            self.acked_events.append(event_id)
        return 0

    def lost(self) -> int:
        """The connection dropped: what was in flight is sent again; the number of readings among it."""
        n = self.count()
        self.readings.clear()
        self.events.clear()
        return n

    def take_acked(self) -> tuple[list[int], list[int]]:
        """The acknowledged seqs and event ids, to delete now (forgotten here)."""
        acked, self.acked = self.acked, []
        events, self.acked_events = self.acked_events, []
        return acked, events

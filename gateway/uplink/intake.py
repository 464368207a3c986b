"""Readings accepted from the pollers and waiting for their commit (the hot path's first half).

``submit`` only encodes and appends (no I/O); the uplink's committer takes what
waits whenever no commit is in flight (group commit, see the package
docstring). Memory is bounded by ``buffer.max_pending`` readings and
``buffer.max_pending_bytes`` of their JSON (a 100-register reading is ~4 KB:
the count alone let 50 000 of them take 200 MB): beyond either the oldest
uncommitted readings are shed, counted, and announced by the uplink.
"""

from __future__ import annotations

import asyncio
import time

#: Readings per commit: a bigger commit would hold the buffer's thread while acknowledgements and
#: reads wait behind it; what arrives meanwhile forms the next commit.
COMMIT_CHUNK = 2000

Item = tuple[str, int, str]  # (device, ts_ms at acceptance, JSON body without seq)


class Intake:
    """The readings waiting for their commit, and what overload shed.

    Attributes:
        pending: ``(device, ts_ms, body)`` in arrival order (one list, never replaced).
        waiting: set when readings wait (the committer's wake-up).
        max_pending: readings kept waiting at most.
        max_bytes: bytes of their bodies kept waiting at most.
        bytes: bytes of the bodies waiting now.
        committed: readings committed so far (the uplink's ``flushed``).
        commits: commits made (a commit takes all that waits, up to ``COMMIT_CHUNK``).
        dropped: readings shed before their commit (overload), in total.
        unannounced: of those, not yet announced.
    """

    __slots__ = ("announced_at", "bytes", "commits", "committed", "dropped", "max_bytes", "max_pending", "pending",
                 "unannounced", "waiting")

    def __init__(self, max_pending: int, max_bytes: int = 16_000_000) -> None:
        self.pending: list[Item] = []
        self.waiting = asyncio.Event()
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.bytes = 0
        self.committed = 0
        self.commits = 0
        self.dropped = 0
        self.unannounced = 0
        self.announced_at = 0.0

    def add(self, device: str, body: str) -> None:
        pending = self.pending
        pending.append((device, int(time.time() * 1000), body))
        self.bytes += len(body)
        if len(pending) == 1:
            self.waiting.set()
        elif len(pending) > self.max_pending or self.bytes > self.max_bytes:
            self.shed()

    def shed(self) -> None:
        """More readings arrive than the buffer commits: drop the oldest uncommitted tenth, counted."""
        n = max(1, len(self.pending) // 10)
        self.bytes -= sum(len(b) for _, _, b in self.pending[:n])
        del self.pending[:n]
        self.dropped += n
        self.unannounced += n
        self.waiting.set()

    def take(self) -> list[Item]:
        """The next commit's readings: all that wait, up to ``COMMIT_CHUNK``, oldest first."""
        pending = self.pending
        if len(pending) <= COMMIT_CHUNK:
            batch = pending[:]
            pending.clear()
            self.bytes = 0
        else:
            batch = pending[:COMMIT_CHUNK]
            del pending[:COMMIT_CHUNK]
            self.bytes -= sum(len(b) for _, _, b in batch)
        return batch

    def due_announcement(self, final: bool) -> int:
        """How many shed readings to announce now (every 10 s during a flood, and when it is over)."""
        now = time.monotonic()
        if self.unannounced and (final or now - self.announced_at >= 10.0 or not self.pending):
            n, self.unannounced, self.announced_at = self.unannounced, 0, now
            return n
        return 0

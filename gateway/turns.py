"""The one lock of a shared line: FIFO turns, except that a write goes next.

Used twice, at the two grains a line is shared: the supervisor's per-bus lock (whole polls of
the devices on one RS-485 line, and commands to them: ``app.DeviceRunner``) and a Modbus bus's
request lock (single requests: ``drivers/modbus/bus.py``). A command is a person's action with
a deadline; behind every poll queued on a slow line it could expire before its turn.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class BusTurns:
    """A lock with FIFO turns, where ``first()`` (a write, a command) goes next after the holder.

    ``async with turns`` takes a read's or a poll's turn; ``async with turns.first()`` a write's.
    """

    def __init__(self) -> None:
        self._held = False
        self._urgent: collections.deque[asyncio.Future[None]] = collections.deque()
        self._normal: collections.deque[asyncio.Future[None]] = collections.deque()

    def locked(self) -> bool:
        """Whether a request holds the bus."""
        return self._held

    async def acquire(self, urgent: bool = False) -> None:
        """Wait for the bus (writes, ``urgent``, before every read waiting)."""
        if not self._held and not self._urgent and not self._normal:
            self._held = True
            return
        waiter = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._normal).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed the bus just as it was cancelled: pass it on
            raise
        finally:
            for queue in (self._urgent, self._normal):
                if waiter in queue:
                    queue.remove(waiter)

    def _release(self) -> None:
        for queue in (self._urgent, self._normal):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the bus passes to it still held: nobody slips in between
                    return
        self._held = False

    def release(self) -> None:
        """Give the bus to the next waiter (a write first)."""
        assert self._held, "release of a bus that is not held"
        self._release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    @contextlib.asynccontextmanager
    async def first(self) -> AsyncIterator[None]:
        """A write's turn: next after the request in flight."""
        await self.acquire(urgent=True)
        try:
            yield
        finally:
            self.release()


__all__ = ["BusTurns"]

"""The recording reading sink: what a driver hands over, kept for a test or a probe to read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..errors import DriverError
from ..schema import RawReading


class RecordingSink:
    """Records readings and errors (Telegraf's ``testutil.Accumulator``).

    ``first`` is set by the first reading or error; ``wait`` waits for a
    condition on what was recorded, without sleeping.
    """

    def __init__(self) -> None:
        self.readings: list[RawReading] = []
        self.errors: list[DriverError] = []
        self.changed = asyncio.Event()
        self.first = asyncio.Event()

    def add(self, reading: RawReading) -> None:
        """Keep one reading (``ReadingSink.add``)."""
        self.readings.append(reading)
        self.changed.set()
        self.first.set()

    def add_error(self, error: DriverError) -> None:
        """Keep one partial failure (``ReadingSink.add_error``)."""
        self.errors.append(error)
        self.changed.set()
        self.first.set()

    async def wait(self, predicate: Callable[[RecordingSink], bool], timeout: float = 5.0) -> None:
        """Return once ``predicate(self)`` holds.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()


__all__ = ["RecordingSink"]

"""A reading sink for driver tests: records what a driver hands over; ``wait`` without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fieldgate.errors import DriverError
from fieldgate.schema import RawReading


class Sink:
    """Records readings and errors; ``wait`` for a condition on them without sleeping."""

    def __init__(self) -> None:
        self.readings: list[RawReading] = []
        self.errors: list[DriverError] = []
        self.changed = asyncio.Event()

    def add(self, reading: RawReading) -> None:
        self.readings.append(reading)
        self.changed.set()

    def add_error(self, error: DriverError) -> None:
        self.errors.append(error)
        self.changed.set()

    async def wait(self, predicate: Callable[[Sink], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()

"""``example-ticker``: a push-only driver; it reports by itself and has no ``poll``.

Push sources (BLE adverts, CoAP pushes) are like this: the gateway starts
``run(sink)`` once and cancels it at shutdown.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar, Literal, Self

from fieldgate.driver import DeviceContext, ReadingSink
from fieldgate.profile import BasePoint, BaseProfile, Model
from fieldgate.schema import RawReading
from fieldgate.units import PositiveDuration
from pydantic import Field


class TickerProfile(BaseProfile):
    """A profile for ``example-ticker``: one point, the tick count."""

    driver: Literal["example-ticker"]
    points: list[BasePoint] = Field(min_length=1, max_length=1)


class TickerConnection(Model):
    """How often the ticker reports."""

    interval: PositiveDuration = Field(1.0, description="seconds between reports")


class TickerDriver:
    """Reports its tick count every ``interval``."""

    name: ClassVar[str] = "example-ticker"
    Profile: ClassVar[type[TickerProfile]] = TickerProfile
    Connection: ClassVar[type[TickerConnection]] = TickerConnection

    def __init__(self, ctx: DeviceContext) -> None:
        assert isinstance(ctx.profile, TickerProfile) and isinstance(ctx.connection, TickerConnection)
        self.point = ctx.profile.points[0].name
        self.interval = ctx.connection.interval
        self.ticks = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def run(self, sink: ReadingSink) -> None:
        """Report until cancelled."""
        while True:
            self.ticks += 1
            sink.add(RawReading({self.point: self.ticks}, ts=time.time()))
            await asyncio.sleep(self.interval)  # the device's own pace, not a synchronization

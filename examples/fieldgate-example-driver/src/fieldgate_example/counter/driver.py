"""``example-counter``: a polled driver whose device is a counter in memory.

A real driver opens its port or socket in ``__aenter__`` and reads the device
in ``poll``; this one keeps the shape and none of the I/O.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from fieldgate.driver import DeviceContext, ReadingSink
from fieldgate.profile import BasePoint, BaseProfile, Model
from fieldgate.schema import RawReading
from pydantic import Field


class CounterProfile(BaseProfile):
    """A profile for ``example-counter``: its points are counters."""

    driver: Literal["example-counter"]
    points: list[BasePoint] = Field(min_length=1)


class CounterConnection(Model):
    """Where the counter starts and how fast it goes."""

    start: int = Field(0, description="the first value")
    step: int = Field(1, ge=1, description="increase per poll")


class CounterDriver:
    """Reads every point of the profile as the same counter."""

    name: ClassVar[str] = "example-counter"
    Profile: ClassVar[type[CounterProfile]] = CounterProfile
    Connection: ClassVar[type[CounterConnection]] = CounterConnection

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        assert isinstance(ctx.profile, CounterProfile) and isinstance(ctx.connection, CounterConnection)
        self.profile = ctx.profile
        self.conn = ctx.connection
        self.value = self.conn.start

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def poll(self, sink: ReadingSink) -> None:
        """One reading: every point at the counter's value."""
        sink.add(RawReading({p.name: self.value for p in self.profile.points}))
        self.value += self.conn.step

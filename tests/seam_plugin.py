"""Third-party-style drivers that use only the seam's required parts (tests only).

Loaded like any plugin, through a ``fieldgate.drivers`` entry point of an installed
distribution (``tests/test_seam.py`` writes the ``.dist-info``): ``pusher`` has ``run``
and no ``poll`` (a push driver need carry no dummy), and neither declares a
``Connection`` (the seam's default, ``NoConnection``, applies).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from fieldgate.driver import DeviceContext, NoConnection, ReadingSink
from fieldgate.profile import BasePoint, BaseProfile
from fieldgate.schema import RawReading


class PlainProfile(BaseProfile):
    """Plain numeric points."""

    driver: Literal["pusher", "bare"]
    points: list[BasePoint]  # type: ignore[assignment]  # narrower point type than BaseProfile's


class PushOnlyDriver:
    """Pushes one reading per 50 ms until cancelled; it has no ``poll``."""

    name: ClassVar[str] = "pusher"
    Profile: ClassVar[type[PlainProfile]] = PlainProfile

    def __init__(self, ctx: DeviceContext[PlainProfile, NoConnection]) -> None:
        self.ctx = ctx
        self.sent = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def run(self, sink: ReadingSink) -> None:
        while True:
            self.sent += 1
            sink.add(RawReading({p.name: float(self.sent) for p in self.ctx.profile.points}, ts=time.time()))
            await asyncio.sleep(0.05)  # the device's report interval, not a synchronization


class BareDriver:
    """Polled, without a ``Connection`` of its own."""

    name: ClassVar[str] = "bare"
    Profile: ClassVar[type[PlainProfile]] = PlainProfile

    def __init__(self, ctx: DeviceContext[PlainProfile, NoConnection]) -> None:
        self.ctx = ctx

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def poll(self, sink: ReadingSink) -> None:
        sink.add(RawReading({p.name: 1.0 for p in self.ctx.profile.points}, ts=time.time()))

    @classmethod
    async def doctor(cls, devices: Sequence[Any], timeout: float) -> list[Any]:
        """One finding naming the devices it was given: ``fieldgate doctor`` asks the hook."""
        from fieldgate.checks import Finding

        return [Finding("bare.host", "ok", f"bare host check for {', '.join(d.id for d in devices)}")]


def scan_main(argv: list[str]) -> int:
    """A bus scanner registered in ``fieldgate.scanners``: ``fieldgate scan bare ...`` calls it."""
    print(f"bare scan {' '.join(argv)}")
    return 0


class BareSimulator:
    """A ``fieldgate.simulators`` entry point: one simulated device for ``fieldgate demo``."""

    label = "bare simulators"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config: list[str] = []
        self.notes: list[str] = []
        self.stopped = False

    async def start(self) -> None:
        self.config.append("  - {id: bare-sim-1, driver: bare, profile: {schema_version: 1, driver: bare, "
                           "vendor: test, model: plain, points: [{name: count}]}}")
        self.notes.append(f"bare: one simulated device ({self.folder.name})")

    async def stop(self) -> None:
        self.stopped = True

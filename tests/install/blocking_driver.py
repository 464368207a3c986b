"""A third-party-style driver that blocks the event loop on demand (tests only).

The failure it reproduces is a real one: a driver that does blocking I/O (a
``serial.read()`` without timeout, ``time.sleep``, a synchronous HTTP call) in
``poll`` instead of awaiting. The whole asyncio loop then stands still, and
with it the watchdog task, which is what systemd's ``WatchdogSec=`` is for.

It is loaded the way any third-party driver is: through a ``fieldgate.drivers``
entry point of an installed distribution (the test writes a ``.dist-info`` for
it onto the subprocess's ``PYTHONPATH``), so no core code knows about it.
Writing ``block`` into the control file blocks the loop until the file says
something else (at most 60 s, so a broken test cannot leave a process stuck).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from fieldgate.driver import DeviceContext, ReadingSink
from fieldgate.profile import BasePoint, BaseProfile, Model
from fieldgate.schema import RawReading

MAX_BLOCK_S = 60.0


class BlockerProfile(BaseProfile):
    """Profile of the blocking driver: plain points."""

    driver: Literal["blocker"]
    points: list[BasePoint]  # type: ignore[assignment]


class BlockerConnection(Model):
    """Where the test says ``block``."""

    control_file: str


class BlockingDriver:
    """Polls instantly, or blocks the whole loop while the control file says ``block``."""

    name: ClassVar[str] = "blocker"
    Profile: ClassVar[type[BlockerProfile]] = BlockerProfile
    Connection: ClassVar[type[BlockerConnection]] = BlockerConnection

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.control = Path(ctx.connection.control_file)  # type: ignore[attr-defined]
        self.polls = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _wants_block(self) -> bool:
        try:
            return self.control.read_text().strip() == "block"
        except OSError:
            return False

    async def poll(self, sink: ReadingSink) -> None:
        self.polls += 1
        if self._wants_block():
            self.ctx.log.warning("blocking the event loop (test)")
            deadline = time.monotonic() + MAX_BLOCK_S
            while self._wants_block() and time.monotonic() < deadline:
                time.sleep(0.02)  # noqa: ASYNC251 - the bug being simulated: blocking calls on the loop thread
            self.ctx.log.warning("event loop released (test)")
        values: dict[str, Any] = {p.name: float(self.polls) for p in self.ctx.profile.points}
        sink.add(RawReading(values, ts=time.time()))

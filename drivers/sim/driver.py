"""The ``sim`` driver: generates values from a profile, with fault injection.

It makes the core runnable before any hardware driver and drives the demo
and the benchmarks. Faults (timeouts, unreachable device, hangs, bugs) are
injected from the connection settings, or live from a control file, so a
demo operator can break a device and watch the gateway react.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path
from typing import Any, ClassVar, Self

from fieldgate.driver import DeviceContext, ReadingSink
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from fieldgate.schema import PointError, RawReading

from .profile import SimConnection, SimPoint, SimProfile


class SimDriver:
    """Simulated device."""

    name: ClassVar[str] = "sim"
    Profile: ClassVar[type[SimProfile]] = SimProfile
    Connection: ClassVar[type[SimConnection]] = SimConnection

    def __init__(self, ctx: DeviceContext[SimProfile, SimConnection]) -> None:
        self.ctx = ctx
        self.profile = ctx.profile
        self.conn = ctx.connection
        self.rng = random.Random(self.conn.seed)
        self.t0 = time.monotonic()
        self.counters: dict[str, float] = {}
        self.polls = 0

    async def __aenter__(self) -> Self:
        if self._fault() == "unreachable":
            raise DeviceUnreachable("simulated device does not answer", hint="this is injected by the sim driver")
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def status(self) -> dict[str, Any]:
        """For the status page: polls since the device was opened, and the fault setting."""
        return {"polls": self.polls, "fault": self.conn.fail, "fault_rate": self.conn.fail_rate}

    def _fault(self) -> str:
        fail = self.conn.fail
        if self.conn.control_file:
            try:
                fail = Path(self.conn.control_file).read_text().strip() or "none"  # type: ignore[assignment]
            except OSError:
                pass
        if fail != "none" and self.rng.random() < self.conn.fail_rate:
            return fail
        return "none"

    async def poll(self, sink: ReadingSink) -> None:
        self.polls += 1
        fault = self._fault()
        if fault == "hang":
            await asyncio.Event().wait()  # never returns: the supervisor's timeout must act
        if self.conn.latency:
            await asyncio.sleep(self.conn.latency)
        if fault == "timeout":
            raise DeviceTimeout("simulated timeout")
        if fault == "unreachable":
            raise DeviceUnreachable("simulated device went away")
        if fault == "protocol":
            raise DeviceProtocolError("simulated garbage frame", reason="decode_error")
        if fault == "bug":
            raise ZeroDivisionError("simulated driver bug")
        now = time.time()
        values: dict[str, Any] = {}
        for point in self.profile.points:
            if point.name in self.conn.bad_points:
                values[point.name] = PointError("decode_error")
            else:
                values[point.name] = self._value(point, now)
        sink.add(RawReading(values, ts=now))

    def _value(self, point: SimPoint, now: float) -> Any:
        w = point.sim
        span = w.max - w.min
        phase = ((now - self.t0) % w.period) / w.period
        if w.shape == "sine":
            v = w.min + span * (0.5 + 0.5 * math.sin(2 * math.pi * phase)) + self.rng.uniform(-0.01, 0.01) * span
        elif w.shape == "ramp":
            v = w.min + span * phase
        elif w.shape == "random":
            v = self.rng.uniform(w.min, w.max)
        elif w.shape == "counter":
            v = self.counters.get(point.name, w.min) + w.step
            self.counters[point.name] = v
        elif w.shape == "toggle":
            return phase >= 0.5
        elif w.shape == "choice":
            return self.rng.choice(w.choices or ["ok"])
        else:
            v = w.min
        if point.type == "bool":
            return v > (w.min + span / 2)
        if point.type == "int":
            return round(v)
        if point.type == "string":
            return f"{v:.1f}"
        return v

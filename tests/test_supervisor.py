"""The supervisor: schedules, isolation of failing devices, bus locks, states, clock."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, ClassVar, Self

import pytest
from fieldgate.app import Gateway, backoff_delay
from fieldgate.clock import ClockMonitor
from fieldgate.config import load_config_text
from fieldgate.driver import DeviceContext, ReadingSink
from fieldgate.drivers.sim.driver import SimDriver
from fieldgate.outputs import MemoryOutput
from fieldgate.schema import RawReading

from .conftest import sim_device
from .support.contract import validate_reading


def config(*devices: str, extra: str = "") -> str:
    return "gateway: {id: gw-test, clock_check: off}\n" + extra + "devices:\n" + "".join(devices)


async def run_until(gw: Gateway, out: MemoryOutput, predicate: Any, timeout: float = 10.0) -> None:
    task = asyncio.create_task(gw.run())
    try:
        await out.wait_for(predicate, timeout)
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 10)


async def test_hanging_device_does_not_delay_the_others() -> None:
    loaded = load_config_text(config(
        sim_device("good", poll_interval="0.1s"),
        sim_device("hangs", poll_interval="0.1s", timeout="0.3s", connection="{fail: hang}"),
        sim_device("bug", poll_interval="0.1s", connection="{fail: bug}"),
    ), "t.yaml")
    out = MemoryOutput()
    gw = Gateway(loaded, out)
    await run_until(gw, out, lambda o: len(o.by_device("good")) >= 15, timeout=10)
    good = gw.runners["good"].stats
    stamps = [time.mktime(time.strptime(r["ts"][:19], "%Y-%m-%dT%H:%M:%S")) + int(r["ts"][20:23]) / 1000
              for r in out.by_device("good")]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # 0.1 s period: with generous bounds, no gap comes near the hanging device's 0.3 s timeout
    assert max(gaps) < 0.25, gaps
    assert abs(sum(gaps) / len(gaps) - 0.1) < 0.03, gaps
    assert good.state == "online" and good.failures == 0
    hangs = gw.runners["hangs"].stats
    assert hangs.failures >= 1 and "no answer within 0.3s" in (hangs.last_error or "")
    assert gw.runners["bug"].stats.last_error.startswith("internal error: ZeroDivisionError")
    assert out.by_device("hangs") == [] and out.by_device("bug") == []
    for r in out.readings:
        validate_reading(r)


async def test_states_go_degraded_then_offline_and_back_online(tmp_path: Any) -> None:
    control = tmp_path / "fault"
    control.write_text("none")
    loaded = load_config_text(config(sim_device(
        "d", poll_interval="0.05s", offline_after=2, backoff_max="0.1s", connection=f"{{control_file: {control}}}"
    )), "t.yaml")
    out = MemoryOutput()
    gw = Gateway(loaded, out)
    task = asyncio.create_task(gw.run())
    try:
        await out.wait_for(lambda o: ("d", "online", None) in o.statuses)
        control.write_text("timeout")
        await out.wait_for(lambda o: any(s[1] == "offline" for s in o.statuses))
        control.write_text("none")
        await out.wait_for(lambda o: o.statuses[-1] == ("d", "online", None))
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 10)
    states = [s[1] for s in out.statuses]
    assert states[:4] == ["online", "degraded", "offline", "online"], out.statuses
    assert out.statuses[1][2] == "simulated timeout"


class _BusProbe:
    """A driver that records overlapping polls on its bus."""

    name: ClassVar[str] = "sim"
    Profile = SimDriver.Profile
    Connection = SimDriver.Connection
    active: ClassVar[int] = 0
    max_active: ClassVar[int] = 0

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def poll(self, sink: ReadingSink) -> None:
        cls = type(self)
        cls.active += 1
        cls.max_active = max(cls.max_active, cls.active)
        try:
            await asyncio.sleep(0.01)
        finally:
            cls.active -= 1
        sink.add(RawReading({"voltage": 230.0}))


@pytest.mark.parametrize(("bus", "expect_max"), [("line-1", 1), (None, 2)])
async def test_devices_on_one_bus_are_polled_one_at_a_time(bus: str | None, expect_max: int) -> None:
    extra = {"bus": bus} if bus else {}
    loaded = load_config_text(config(*(sim_device(f"m{i}", poll_interval="0.02s", **extra) for i in range(3))),
                              "t.yaml")
    for spec in loaded.devices:
        spec.driver = _BusProbe  # type: ignore[assignment]
    _BusProbe.max_active = _BusProbe.active = 0
    out = MemoryOutput()
    await run_until(Gateway(loaded, out), out, lambda o: all(len(o.by_device(f"m{i}")) >= 5 for i in range(3)))
    # on one bus never two at once; without a bus the same schedule overlaps
    assert (_BusProbe.max_active == 1) if bus else (_BusProbe.max_active >= expect_max)


async def test_clock_unsynced_flag_follows_the_kernel_state() -> None:
    text = config(sim_device("d", poll_interval="0.05s")).replace("clock_check: off", "clock_check: auto")
    loaded = load_config_text(text, "t.yaml")
    synced = [False]
    clock = ClockMonitor("auto", probe=lambda: synced[0])
    out = MemoryOutput()
    gw = Gateway(loaded, out, clock=clock)
    task = asyncio.create_task(gw.run())
    try:
        await out.wait_for(lambda o: len(o.readings) >= 2)
        assert all(r["clock"] == "unsynced" for r in out.readings)
        synced[0] = True
        assert clock.refresh() is True
        n = len(out.readings)
        await out.wait_for(lambda o: len(o.readings) >= n + 2)
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 10)
    assert "clock" not in out.readings[-1]
    for r in out.readings:
        validate_reading(r)


def test_backoff_is_capped_and_jittered() -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 30.0, rng) for n in range(1, 12)]
    assert delays[0] == 1.0  # the first retry waits one poll interval
    assert all(1.0 <= d <= 30.0 for d in delays[6:])  # full jitter above the floor, capped (table: tests/core)
    assert len(set(delays)) == len(delays)


class _Exclusive:
    """A driver holding an exclusive resource (a serial line, a UDP port) that takes a moment to release."""

    name: ClassVar[str] = "sim"
    Profile = SimDriver.Profile
    Connection = SimDriver.Connection
    open_now: ClassVar[int] = 0
    max_open: ClassVar[int] = 0
    opens: ClassVar[int] = 0

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    async def __aenter__(self) -> Self:
        cls = type(self)
        cls.open_now += 1
        cls.opens += 1
        cls.max_open = max(cls.max_open, cls.open_now)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.05)  # closing a port is not instant (within the 0.2 s poll timeout)
        type(self).open_now -= 1

    async def poll(self, sink: ReadingSink) -> None:
        sink.add(RawReading({"voltage": 230.0}))


async def test_reload_closes_a_changed_device_before_opening_it_again() -> None:
    """Old and new runner of one device never hold its port at once (a second open would be refused)."""
    def load(interval: str) -> Any:
        loaded = load_config_text(config(sim_device("d", poll_interval=interval)), "t.yaml")
        for spec in loaded.devices:
            spec.driver = _Exclusive  # type: ignore[assignment]
        return loaded

    _Exclusive.open_now = _Exclusive.max_open = _Exclusive.opens = 0
    out = MemoryOutput()
    gw = Gateway(load("0.2s"), out)
    task = asyncio.create_task(gw.run())
    try:
        await out.wait_for(lambda o: len(o.readings) >= 3)
        plan = await gw.apply(load("0.3s"))
        assert plan.applied == ["devices"] and plan.restart_required == []
        await out.wait_for(lambda _o: _Exclusive.opens >= 2)
        n = len(out.readings)
        await out.wait_for(lambda o: len(o.readings) >= n + 3)
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 10)
    assert _Exclusive.max_open == 1, "the new runner opened the device while the old one still held it"
    event = next(e for e in out.events if e["kind"] == "config_reloaded")
    assert event["changed"] == ["d"] and event["restart_required"] == []

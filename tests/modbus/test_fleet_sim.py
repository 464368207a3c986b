"""The fleet simulator bench/fleet.py measures with: what its registers promise, read by the real driver."""

from __future__ import annotations

import time

from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.drivers.modbus.profile import ModbusProfile
from fieldgate.schema import PointError
from fieldgate_hwsim.fleet_sim import CLOCK_MOD, FleetSim

from tests.modbus.conftest import Sink, make_ctx


def _profile(registers: int) -> ModbusProfile:
    return ModbusProfile.model_validate({
        "schema_version": 1, "driver": "modbus", "vendor": "bench", "model": "fleet", "addressing_verified": True,
        "points": [{"name": f"r{a}", "address": a} for a in range(registers)]})


async def test_counter_clock_and_moving_registers() -> None:
    """Register 0 counts reads, 1-2 latch the clock in ms, each device on its own port."""
    sim = FleetSim(2, 10)
    ports = await sim.start()
    try:
        assert len(set(ports)) == 2
        sink = Sink()
        before = int(time.time() * 1000) % CLOCK_MOD
        async with ModbusDriver(make_ctx(_profile(10), host="127.0.0.1", port=ports[1])) as drv:
            for _ in range(3):
                await drv.poll(sink)
        after = int(time.time() * 1000) % CLOCK_MOD
        counts = [r.values["r0"] for r in sink.readings]
        assert counts == [1, 2, 3]
        clocks = [(r.values["r1"] << 16) | r.values["r2"] for r in sink.readings]
        assert all((c - before) % CLOCK_MOD <= (after - before) % CLOCK_MOD for c in clocks), (before, clocks, after)
        assert sim.devices[0].reads == 0  # the other device was not read
    finally:
        await sim.stop()


async def test_a_read_past_the_image_is_exception_02() -> None:
    """Beyond its ``registers`` the device says illegal address, as a real one does: the driver splits the
    merged read and only the point past the image fails."""
    sim = FleetSim(1, 5)
    ports = await sim.start()
    try:
        sink = Sink()
        async with ModbusDriver(make_ctx(_profile(6), host="127.0.0.1", port=ports[0])) as drv:
            await drv.poll(sink)
        values = sink.readings[0].values
        assert values["r5"] == PointError("exception:02")
        assert all(isinstance(values[f"r{a}"], int) for a in range(5))
        assert [e.reason for e in sink.errors] == ["exception:02"]
    finally:
        await sim.stop()

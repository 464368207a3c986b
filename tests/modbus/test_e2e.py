"""End to end through real pymodbus servers (hw-sim) over TCP, RTU on a pty, and RTU-over-TCP."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.driver import SharedResources
from fieldgate.drivers.modbus.bus import FrameError, ModbusBus
from fieldgate.drivers.modbus.decode import encode, hex_words
from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.drivers.modbus.profile import ModbusProfile
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from fieldgate.normalize import Normalizer
from fieldgate.outputs import MemoryOutput
from fieldgate.schema import PointError, RawReading
from fieldgate_hwsim.modbus_sim import ModbusSim

from tests.modbus.conftest import MODBUS_PROFILES, Sink, make_ctx, poll_once, profile, start, validate_reading


def flow(conn: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in conn.items()) + "}"


def config(*devices: str) -> str:
    return "gateway: {id: gw-test, clock_check: off}\ndevices:\n" + "".join(devices)


def device(dev_id: str, prof: str, conn: dict[str, Any], **extra: Any) -> str:
    parts = [f"id: {dev_id}", "driver: modbus", f"profile: {prof}", f"connection: {flow(conn)}"]
    parts += [f"{k}: {v}" for k, v in extra.items()]
    return "  - {" + ", ".join(parts) + "}\n"


async def run_until(gw: Gateway, out: MemoryOutput, predicate: Any, timeout: float = 15.0) -> None:
    task = asyncio.create_task(gw.run())
    try:
        await out.wait_for(predicate, timeout)
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 10)


def expected_metrics(prof: ModbusProfile, sim: ModbusSim, unit: int) -> dict[str, Any]:
    msg = Normalizer("gw-test", "x", prof).normalize(RawReading(sim.models[unit].expected()))
    assert msg is not None
    return msg["metrics"]


@pytest.mark.parametrize("name", MODBUS_PROFILES)
async def test_every_profile_end_to_end(name: str, transport: str, sims: list[ModbusSim]) -> None:
    """The published reading equals the simulated values, before and after they move."""
    prof = profile(name)
    sim, conn = await start(sims, transport, {7: prof})
    conn["unit"] = 7
    loaded = load_config_text(config(device("d1", name, conn, poll_interval="0.1s")), "t.yaml")
    out = MemoryOutput()
    first = expected_metrics(prof, sim, 7)
    moved: dict[str, Any] = {}

    def check(o: MemoryOutput) -> bool:
        if not o.readings:
            return False
        if not moved:
            sim.step()
            moved.update(expected_metrics(prof, sim, 7))
        # Points with `every: N` appear on every Nth poll only: compare what a reading carries.
        return any(r["metrics"] == {k: moved[k] for k in r["metrics"]} for r in o.readings[1:])

    await run_until(Gateway(loaded, out), out, check)
    assert out.readings[0]["metrics"] == first
    assert moved != first
    for r in out.readings:
        validate_reading(r)
        assert all(m["quality"] == "good" for m in r["metrics"].values()), r


async def test_raw_values_and_last_raw(transport: str, sims: list[ModbusSim]) -> None:
    prof = profile("eastron/sdm120")
    sim, conn = await start(sims, transport, {1: prof})
    sim.models[1].set_raw("voltage", 230.0)
    sink, drv = await poll_once(prof, **conn)
    assert sink.readings[0].values == sim.models[1].expected()
    raw = dict(drv.last_raw())
    assert raw["voltage"] == "0x4366 0x0000"
    assert raw["frequency"] == hex_words(encode(sim.models[1].raw["frequency"], "float32"))


async def test_poll_multipliers(sims: list[ModbusSim]) -> None:
    prof = profile("generic-rs485/xy-md02")
    _, conn = await start(sims, "tcp", {1: prof})
    sink = Sink()
    async with ModbusDriver(make_ctx(prof, **conn)) as drv:
        for _ in range(3):
            await drv.poll(sink)
    assert "device_address" in sink.readings[0].values
    assert set(sink.readings[1].values) == set(sink.readings[2].values) == {"temperature", "humidity"}


async def test_exception_fails_only_its_block(sims: list[ModbusSim]) -> None:
    prof = profile("generic-rs485/xy-md02")
    sim, conn = await start(sims, "tcp", {1: prof})
    sim.models[1].implemented["holding"].clear()  # this unit has no holding registers
    sink, _ = await poll_once(prof, **conn)
    values = sink.readings[0].values
    assert values["temperature"] == sim.models[1].raw["temperature"]
    assert values["device_address"] == PointError("exception:02")
    assert [e.reason for e in sink.errors] == ["exception:02"]  # one report per poll, not one per request
    assert "4 request(s)" in str(sink.errors[0])
    msg = Normalizer("gw", "d", prof).normalize(sink.readings[0])
    assert msg is not None
    msg["seq"] = 1
    validate_reading(msg)
    assert msg["metrics"]["device_address"] == {"value": None, "quality": "bad", "reason": "exception:02"}


async def test_nothing_readable_is_a_protocol_error(sims: list[ModbusSim]) -> None:
    prof = profile("eastron/sdm120")
    sim, conn = await start(sims, "tcp", {1: prof})
    sim.set_fault(1, "exception:04")
    with pytest.raises(DeviceProtocolError) as err:
        await poll_once(prof, **conn)
    assert err.value.reason == "exception:04"


async def test_rejected_merged_read_falls_back_and_is_remembered(transport: str, sims: list[ModbusSim]) -> None:
    prof = profile("eastron/sdm120")
    sim, conn = await start(sims, transport, {1: prof}, strict=True)  # gaps between points are not implemented
    sink = Sink()
    async with ModbusDriver(make_ctx(prof, **conn)) as drv:
        await drv.poll(sink)
        assert drv.bus is not None
        before = drv.bus.requests
        await drv.poll(sink)
        second = drv.bus.requests - before
    assert sink.readings[0].values == sim.models[1].expected()
    assert not sink.errors
    # Second poll: voltage..phase_angle one by one (7), the contiguous 0x46..0x4F block (1); no rejected request.
    assert second == 8


async def test_silent_unit_times_out_once_then_is_skipped(sims: list[ModbusSim]) -> None:
    prof = profile("generic-rs485/xy-md02")
    sim, conn = await start(sims, "rtu", {1: prof, 2: prof})
    sim.set_fault(2, "silent")
    shared = SharedResources()
    dead = ModbusDriver(make_ctx(prof, shared, "dead", **conn, unit=2, timeout=0.1, retries=1, backoff=30))
    async with dead:
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout, match="skipping it for 30s"):
            await dead.poll(Sink())
        assert 0.2 <= time.monotonic() - t0 < 1.5  # two attempts of 0.1 s
        assert dead.bus is not None
        sent = dead.bus.requests
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout, match="next try in"):
            await dead.poll(Sink())
        assert time.monotonic() - t0 < 0.05 and dead.bus.requests == sent  # nothing on the line
        alive = ModbusDriver(make_ctx(prof, shared, "alive", **conn, unit=1))
        async with alive:
            sink = Sink()
            await alive.poll(sink)
            assert sink.readings and alive.bus is dead.bus


@pytest.mark.parametrize("transport_", ["rtu", "rtu-over-tcp"])
async def test_corrupted_crc_is_named_and_recovers(transport_: str, sims: list[ModbusSim]) -> None:
    prof = profile("generic-rs485/xy-md02")
    sim, conn = await start(sims, transport_, {1: prof})
    sim.set_fault(1, "crc")
    ctx = make_ctx(prof, **conn, timeout=0.1, retries=0, backoff=0.05, backoff_max=0.05)
    async with ModbusDriver(ctx) as drv:
        with pytest.raises(FrameError) as err:
            await drv.poll(Sink())
        assert err.value.reason == "bad_crc" and "termination" in str(err.value)
        sim.set_fault(1, None)
        sink = Sink()
        deadline = time.monotonic() + 5
        while not sink.readings:
            assert time.monotonic() < deadline
            try:
                await drv.poll(sink)
            except FrameError:
                await asyncio.sleep(0.02)  # backoff period of 50 ms
        values, expected = sink.readings[0].values, sim.models[1].expected()
        assert values == {k: expected[k] for k in values} and "temperature" in values


async def test_slow_answer(transport: str, sims: list[ModbusSim]) -> None:
    prof = profile("senseair/s8")
    sim, conn = await start(sims, transport, {1: prof})
    sim.set_fault(1, "slow:0.3")
    with pytest.raises(DeviceTimeout):
        await poll_once(prof, **conn, timeout=0.1, retries=0)
    sink, _ = await poll_once(prof, **conn, timeout=0.6)
    assert sink.readings[0].values == sim.models[1].expected()


async def test_device_disappears_and_returns(transport: str, sims: list[ModbusSim]) -> None:
    prof_name = "carlo-gavazzi/em111"
    sim, conn = await start(sims, transport, {1: profile(prof_name)})
    conn.update(timeout="0.1s", retries=0, backoff="0.1s", backoff_max="0.2s")
    loaded = load_config_text(config(device("m1", prof_name, conn, poll_interval="0.1s", offline_after=2,
                                            backoff_max="0.3s")), "t.yaml")
    out = MemoryOutput()
    states: list[str] = []

    def follow(o: MemoryOutput) -> bool:
        states[:] = [s for _, s, _ in o.statuses]
        if states == ["online"]:
            sim.set_fault(1, "silent")
        elif "offline" in states:
            sim.set_fault(1, None)
        return "offline" in states and states[-1] == "online"

    await run_until(Gateway(loaded, out), out, follow)
    assert states[0] == "online" and "offline" in states and states[-1] == "online"
    timeouts = [e for _, s, e in out.statuses if s != "online"]
    assert all("no answer" in (e or "") or "next try" in (e or "") for e in timeouts)


async def test_connection_refused_has_a_hint() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DeviceUnreachable) as err:
        await poll_once(profile("eastron/sdm120"), host="127.0.0.1", port=port, timeout=1.0)
    assert "usually 502" in str(err.value)


async def test_missing_serial_port_has_a_hint(tmp_path: Any) -> None:
    with pytest.raises(DeviceUnreachable) as err:
        await poll_once(profile("eastron/sdm120"), transport="rtu", serial_port=str(tmp_path / "ttyUSB7"))
    assert "missing" in str(err.value) and "/dev/serial/by-id" in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may open anything")
async def test_serial_permission_denied_has_a_hint(tmp_path: Any) -> None:
    port = tmp_path / "ttyS9"
    port.write_text("")
    port.chmod(0)
    with pytest.raises(DeviceUnreachable) as err:
        await poll_once(profile("eastron/sdm120"), transport="rtu", serial_port=str(port))
    assert "dialout" in str(err.value)


async def test_units_on_one_endpoint_share_one_connection(transport: str, sims: list[ModbusSim]) -> None:
    prof = profile("senseair/s8")
    sim, conn = await start(sims, transport, {1: prof, 2: prof})
    shared = SharedResources()
    a = ModbusDriver(make_ctx(prof, shared, "a", **conn, unit=1))
    b = ModbusDriver(make_ctx(prof, shared, "b", **conn, unit=2))
    async with a, b:
        sa, sb = Sink(), Sink()
        await asyncio.gather(a.poll(sa), b.poll(sb))
        assert a.bus is b.bus and a.bus is not None and a.bus.client is not None
        assert sa.readings[0].values == sim.models[1].expected()
        assert sb.readings[0].values == sim.models[2].expected()
    assert shared.release(a.key) is None  # the last user closed and dropped the bus


async def test_mismatched_line_settings_are_refused(sims: list[ModbusSim]) -> None:
    prof = profile("senseair/s8")
    _, conn = await start(sims, "rtu", {1: prof})
    shared = SharedResources()
    async with ModbusDriver(make_ctx(prof, shared, "a", **conn)):
        other = {**conn, "baudrate": 9600}
        with pytest.raises(DeviceProtocolError, match="disagree on baudrate"):
            async with ModbusDriver(make_ctx(prof, shared, "b", **other)):
                pass


async def test_broadcast_is_tolerated(transport: str, sims: list[ModbusSim]) -> None:
    prof = profile("generic-rs485/xy-md02")
    sim, conn = await start(sims, transport, {1: prof, 2: prof})
    shared = SharedResources()
    async with ModbusDriver(make_ctx(prof, shared, **conn)) as drv:
        bus: ModbusBus = drv.bus  # type: ignore[assignment]
        await bus.broadcast_write(0x0103, [5])
        sink = Sink()
        await drv.poll(sink)
    assert sim.writes == 2  # both units applied it, neither answered
    assert sink.readings[0].values["temperature_correction"] == 5

"""A write on a busy RTU line goes next, right after the request in flight (not behind every queued read).

Real peers: one pty RS-485 line (hw-sim's ModbusSim, line time at 19200 baud) with six meters, one of
them slow (each answer 0.1 s late), each polled continuously by its own driver through the one shared
``ModbusBus``. While they poll, writes are sent to the first meter; for each, the test counts the
requests the bus sent between the write being asked for and its answer. Behind a FIFO lock that is
every read queued then (up to five); with the write's priority it is none (one at most, when a read
slips in between the write's answer and this coroutine running again).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from fieldgate.driver import SharedResources
from fieldgate.drivers.modbus.bus import ExceptionResponse, ModbusBus
from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.drivers.modbus.write import WriteRequest, send
from fieldgate.testing import RecordingSink as Sink
from fieldgate.testing import until
from fieldgate_hwsim.modbus_sim import ModbusSim, load_modbus_profile

from .conftest import make_ctx, start

UNITS = 6


async def test_a_write_goes_next_after_the_request_in_flight(sims: list[ModbusSim]) -> None:
    profile = load_modbus_profile("eastron/sdm120")
    sim, conn = await start(sims, "rtu", dict.fromkeys(range(1, UNITS + 1), profile), baudrate=19200)
    sim.set_fault(UNITS, "slow:0.1")
    shared = SharedResources()
    drivers = [ModbusDriver(make_ctx(profile, shared, device=f"m{u}", unit=u, timeout=1.0, **conn))
               for u in range(1, UNITS + 1)]
    stop = asyncio.Event()

    async def poll_forever(drv: ModbusDriver) -> None:
        while not stop.is_set():
            await drv.poll(Sink())

    for drv in drivers:
        await drv.__aenter__()
    tasks = [asyncio.create_task(poll_forever(d)) for d in drivers]
    try:
        bus = drivers[0].bus
        assert isinstance(bus, ModbusBus)
        first = drivers[0].conn
        await until(lambda: bus.requests >= 5 * UNITS, what="every driver polling (the queue full)")
        ahead: list[int] = []
        waited: list[float] = []
        for _ in range(8):
            before, t0 = bus.requests, time.monotonic()
            try:
                await send(bus, first, WriteRequest("p", 6, 0, (1,)))
            except ExceptionResponse:
                pass  # the meter refuses the address; the exchange is what is measured
            waited.append(time.monotonic() - t0)
            ahead.append(bus.requests - before - 1)
            await asyncio.sleep(0.05)  # the pace of the commands (a load generator), not a synchronization
        print(f"requests sent ahead of each write: {ahead}; write latency median "
              f"{statistics.median(waited) * 1000:.0f} ms, max {max(waited) * 1000:.0f} ms")
        assert max(ahead) <= 1, f"writes waited behind queued reads: {ahead}"
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for drv in drivers:
            await drv.__aexit__(None, None, None)


async def test_a_command_in_the_gateway_goes_next_on_a_busy_rs485_line(tmp_path: Path, sims: list[ModbusSim]) -> None:
    """The same line in the gateway (``runtime.running``, as ``fieldgate run`` builds it): six devices
    polling back to back, a command to the first. The supervisor's per-bus lock serializes whole polls;
    the command must get the line after the poll in flight, not after every device's queued poll."""
    from fieldgate.config import load_config_text
    from fieldgate.outputs import MemoryOutput
    from fieldgate.runtime import running

    from tests.commands.conftest import PROFILE, config

    prof = tmp_path / "boiler.yaml"
    prof.write_text(PROFILE)
    profile = load_modbus_profile(prof)
    sim, conn = await start(sims, "rtu", dict.fromkeys(range(1, UNITS + 1), profile), baudrate=19200)
    sim.set_fault(UNITS, "slow:0.1")
    devices = {f"b{u}": {**conn, "unit": u, "timeout": 1.0} for u in range(1, UNITS + 1)}
    out = MemoryOutput()
    text = config(tmp_path / "data", prof, devices, interval="0.01s", rate=100.0, burst=100)
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: all(len(o.by_device(d)) >= 2 for d in devices))
        ex = rt.gateway.commands
        assert ex is not None
        others: list[int] = []
        for i in range(6):
            before = sum(n for u, n in sim.requests.items() if u != 1)
            msg = {"schema": "fieldgate.command/1", "id": f"prio-{i}", "op": "write", "metrics": {"setpoint": 20.0 + i}}
            result = await ex.execute("b1", msg, origin="cli")
            assert result["status"] == "ok", result
            others.append(sum(n for u, n in sim.requests.items() if u != 1) - before)
            await asyncio.sleep(0.05)  # the pace of the commands (a load generator), not a synchronization
        per_poll = len({p.table for p in profile.points})  # the boiler's points: one block per table
        print(f"requests to other units during each command: {others} (one poll is {per_poll} requests)")
        # After the poll in flight (one other device's poll), nothing else: not five devices' polls.
        assert max(others) <= 2 * per_poll, others

"""Hostile Modbus devices against the real driver: every kind of garbage is named, none is a plain timeout.

The simulator (hw-sim) builds a correct answer with pymodbus's server and then
spoils its bytes the way a broken or hostile device does; the driver must
name the cause (``reason``), come back when the device heals, and never cost
a healthy device on another connection or unit more than the faulty unit's
own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from typing import Any

import pytest
from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.driver import SharedResources
from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DriverError
from fieldgate.outputs import MemoryOutput
from fieldgate.schema import PointError
from fieldgate_hwsim.modbus_sim import ModbusSim

from tests.modbus.conftest import Sink, make_ctx, poll_once, profile, start, validate_reading
from tests.modbus.test_bus import stamp as _stamp

PROFILE = "generic-rs485/xy-md02"  # input registers (FC4) and holding registers (FC3)
QUICK = {"timeout": 0.3, "retries": 0}

# (fault, transports it applies to, the reason the driver must give)
CASES = [
    ("junk", ("tcp", "rtu", "rtu-over-tcp"), "bad_frame"),
    ("wrong-unit", ("tcp", "rtu", "rtu-over-tcp"), "wrong_unit"),
    ("wrong-transaction", ("tcp",), "wrong_transaction"),
    ("bad-length", ("tcp", "rtu", "rtu-over-tcp"), "bad_length"),
    ("wrong-function", ("tcp", "rtu", "rtu-over-tcp"), "wrong_function"),
    ("slow-loris", ("tcp", "rtu", "rtu-over-tcp"), "incomplete_frame"),
    ("crc", ("rtu", "rtu-over-tcp"), "bad_crc"),
    ("exception:04", ("tcp", "rtu", "rtu-over-tcp"), "exception:04"),
    ("silent", ("tcp", "rtu", "rtu-over-tcp"), "timeout"),
]
PARAMS = [pytest.param(f, t, r, id=f"{f}-{t}") for f, ts, r in CASES for t in ts]


@pytest.fixture
def no_warnings(caplog: pytest.LogCaptureFixture) -> Any:
    """pymodbus's and asyncio's own error lines are findings: a named error is ours alone."""
    caplog.set_level(logging.WARNING)
    yield caplog
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.name.startswith(("pymodbus", "asyncio"))]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


@pytest.mark.parametrize(("fault", "transport_", "reason"), PARAMS)
async def test_each_fault_is_named(fault: str, transport_: str, reason: str, sims: list[ModbusSim],
                                   no_warnings: Any) -> None:
    prof = profile(PROFILE)
    sim, conn = await start(sims, transport_, {1: prof})
    sim.set_fault(1, fault)
    t0 = time.monotonic()
    with pytest.raises(DriverError) as err:
        await poll_once(prof, **conn, **QUICK)
    took = time.monotonic() - t0
    assert err.value.reason == reason, err.value
    if reason != "timeout":
        assert "no answer" not in str(err.value), err.value
        assert isinstance(err.value, DeviceProtocolError)
    else:
        assert isinstance(err.value, DeviceTimeout)
    assert took < 2.0 + 3.0, took  # one 0.3 s timeout at most; the rest is a busy machine's slack
    # The device heals: the next poll (after the unit's backoff) reads it.
    sim.set_fault(1, None)
    sink, _ = await poll_once(prof, **conn, **QUICK)
    assert sink.readings and not sink.errors
    assert sink.readings[0].values == {k: v for k, v in sim.models[1].expected().items()
                                       if k in sink.readings[0].values}


@pytest.mark.parametrize("transport_", ["tcp", "rtu"])
@pytest.mark.parametrize(("fault", "reason"), [("wrong-function@4", "wrong_function"), ("junk@4", "bad_frame"),
                                               ("bad-length@4", "bad_length")])
async def test_a_fault_in_one_block_is_the_quality_reason_of_its_points(
        fault: str, reason: str, transport_: str, sims: list[ModbusSim], no_warnings: Any) -> None:
    """The holding registers answer (read first), the input ones are garbage: the reading has both, each named."""
    prof = profile(PROFILE)
    sim, conn = await start(sims, transport_, {1: prof})
    sim.set_fault(1, fault)
    sink = Sink()
    async with ModbusDriver(make_ctx(prof, **conn, **QUICK)) as drv:
        await drv.poll(sink)
    values = sink.readings[0].values
    assert values["device_address"] == sim.models[1].raw["device_address"]
    assert values["temperature"] == values["humidity"] == PointError(reason)
    assert [e.reason for e in sink.errors] == [reason]
    from fieldgate.normalize import Normalizer

    msg = Normalizer("gw", "d", prof).normalize(sink.readings[0])
    assert msg is not None
    msg["seq"] = 1
    validate_reading(msg)
    assert msg["metrics"]["temperature"] == {"value": None, "unit": "Cel", "quality": "bad", "reason": reason}


async def test_wrong_function_is_never_taken_for_data(sims: list[ModbusSim]) -> None:
    """An FC4 answer to an FC3 request has registers of the right count: pymodbus alone would accept it."""
    prof = profile(PROFILE)
    sim, conn = await start(sims, "tcp", {1: prof})
    sim.set_fault(1, "wrong-function")
    with pytest.raises(DeviceProtocolError, match="function") as err:
        await poll_once(prof, **conn, **QUICK)
    assert err.value.reason == "wrong_function"


async def test_hostile_unit_on_a_shared_rtu_line_costs_only_its_timeout(sims: list[ModbusSim]) -> None:
    """Three healthy units and one answering junk on one RS-485 line: the healthy ones never fail."""
    prof = profile(PROFILE)
    sim, conn = await start(sims, "rtu", {u: prof for u in range(1, 5)}, baudrate=38400)
    sim.set_fault(4, "junk")
    path = conn["serial_port"]
    devices = "".join(
        f"  - {{id: th{u}, driver: modbus, profile: {PROFILE}, poll_interval: 0.3s, backoff_max: 1s, "
        f"connection: {{transport: rtu, serial_port: {path}, baudrate: 38400, unit: {u}, timeout: 0.2s, "
        f"retries: 0, backoff: 0.5s, backoff_max: 1s}}}}\n" for u in range(1, 5))
    loaded = load_config_text("gateway: {id: gw-bus, clock_check: off}\ndevices:\n" + devices, "t.yaml")
    out = MemoryOutput()
    gw = Gateway(loaded, out)
    task = asyncio.create_task(gw.run())
    try:
        await out.wait_for(lambda o: all(len(o.by_device(f"th{u}")) >= 10 for u in range(1, 4))
                           and gw.runners["th4"].stats.failures >= 3, 30)
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 10)
    for u in range(1, 4):
        assert gw.runners[f"th{u}"].stats.failures == 0, gw.runners[f"th{u}"].stats
        # From the second reading (the first cycle reads the every: 60 points too): on average the
        # period, plus at most the hostile unit's 0.2 s timeout, plus a busy machine's slack.
        times = [_stamp(r["ts"]) for r in out.by_device(f"th{u}")][1:]
        mean = (times[-1] - times[0]) / (len(times) - 1)
        assert mean < 0.3 + 0.2 + 0.15, (u, mean)
    errors = [e for d, s, e in out.statuses if d == "th4" and s != "online"]
    assert errors and all("bad_frame" in (e or "") or "not a Modbus" in (e or "") or "next try" in (e or "")
                          for e in errors), errors
    for r in out.readings:
        validate_reading(r)


async def test_hostile_endpoints_leave_healthy_ones_on_schedule(sims: list[ModbusSim]) -> None:
    """One gateway, one healthy TCP endpoint, one endpoint per hostile mode: all named, none stops the healthy."""
    prof = profile(PROFILE)
    modes = ["junk", "wrong-unit", "wrong-transaction", "bad-length", "wrong-function", "slow-loris", "silent",
             "exception:04"]
    _, good = await start(sims, "tcp", {1: prof})
    devs = [("good", good)]
    for mode in modes:
        sim, conn = await start(sims, "tcp", {1: prof})
        sim.set_fault(1, mode)
        devs.append((mode.replace(":", "-"), conn))
    text = "gateway: {id: gw-hostile, clock_check: off}\ndevices:\n" + "".join(
        f"  - {{id: {name}, driver: modbus, profile: {PROFILE}, poll_interval: 0.2s, backoff_max: 1s, "
        f"connection: {{transport: tcp, host: 127.0.0.1, port: {c['port']}, timeout: 0.3s, retries: 0, "
        f"backoff: 0.5s}}}}\n" for name, c in devs)
    out = MemoryOutput()
    gw = Gateway(load_config_text(text, "t.yaml"), out)
    task = asyncio.create_task(gw.run())
    try:
        await out.wait_for(lambda o: len(o.by_device("good")) >= 15 and all(
            gw.runners[n].stats.failures >= 2 for n, _ in devs[1:]), 30)
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 10)
    assert gw.runners["good"].stats.failures == 0
    # The status line a technician reads names the cause in words.
    named = {"junk": "not a Modbus TCP answer", "wrong-unit": "answer from unit 2",
             "wrong-transaction": "transaction id", "bad-length": "byte count", "wrong-function": "function code 4",
             "slow-loris": "incomplete", "silent": "no answer", "exception-04": "exception 04"}
    for name, word in named.items():
        first = next(e for d, s, e in out.statuses if d == name and s != "online")
        assert word in (first or ""), (name, first)
        assert "internal error" not in (first or "")


def test_simulator_cli_serves_a_hostile_unit_and_refuses_bad_faults() -> None:
    """The fault campaign starts hostile devices with the CLI; a typo is one line, exit 2, no traceback."""
    run = [sys.executable, "-m", "fieldgate_hwsim.modbus_sim", "--profile", PROFILE]
    for bad in (["--fault", "1=jnk"], ["--fault", "x=junk"], ["--fault", "2=junk"], ["--fault", "1=exception:zz"]):
        res = subprocess.run([*run, *bad], capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 2 and "Traceback" not in res.stderr and "modbus_sim:" in res.stderr, (bad, res)
    proc = subprocess.Popen([*run, "--tcp", "127.0.0.1:0", "--unit", "1", "--unit", "2", "--fault", "*=junk"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.split()[2].rsplit(":", 1)[1])
        with pytest.raises(DeviceProtocolError) as err:
            asyncio.run(_poll(port))
        assert err.value.reason == "bad_frame"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def _poll(port: int) -> None:
    prof = profile(PROFILE)
    async with ModbusDriver(make_ctx(prof, SharedResources(), host="127.0.0.1", port=port, unit=2,
                                     **QUICK)) as drv:
        await drv.poll(Sink())


async def test_scan_names_a_garbled_unit_and_goes_on(sims: list[ModbusSim]) -> None:
    import io

    from fieldgate.drivers.modbus.profile import ModbusConnection
    from fieldgate.drivers.modbus.scan import scan

    prof = profile("senseair/s8")
    sim, conn = await start(sims, "rtu", {3: prof, 5: prof})
    sim.set_fault(3, "junk")
    out = io.StringIO()
    found = await scan(ModbusConnection(**conn, timeout=0.1), [2, 3, 4, 5], out)
    assert found == [5]
    assert "unit 3: bad answer (bad_frame)" in out.getvalue(), out.getvalue()



def test_the_gateway_process_survives_every_hostile_mode(tmp_path: Any, mosquitto: Any) -> None:
    """`fieldgate run` with one healthy and eight hostile Modbus TCP devices: all named, the healthy one
    keeps its period, SIGTERM ends it cleanly, no traceback."""
    from tests.modbus.stall_rig import SimThread
    from tests.support.collector import Collector

    modes = ["junk", "wrong-unit", "wrong-transaction", "bad-length", "wrong-function", "slow-loris", "silent",
             "exception:04"]
    words = ["not a Modbus TCP answer", "answer from unit 2", "transaction id", "byte count", "function code 4",
             "incomplete", "no answer", "exception 04"]
    sims = SimThread()
    ports = sims.start(1 + len(modes), [None, *modes], profile=PROFILE)
    names = ["good"] + [m.replace(":", "-") for m in modes]
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-h, data_dir: {tmp_path / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\ndevices:\n" + "".join(
            f"  - {{id: {n}, driver: modbus, profile: {PROFILE}, poll_interval: 0.2s, backoff_max: 1s, "
            f"connection: {{transport: tcp, host: 127.0.0.1, port: {p}, timeout: 0.3s, retries: 0, "
            f"backoff: 0.5s}}}}\n" for n, p in zip(names, ports, strict=True)))
    col = Collector(mosquitto.host, mosquitto.port).connect()
    log = (tmp_path / "gateway.log").open("w")
    gw = subprocess.Popen([sys.executable, "-m", "fieldgate.cli", "run", "-c", str(cfg)], stdout=log,
                          stderr=subprocess.STDOUT)
    try:
        def errors(dev: str) -> list[str]:
            return [s.get("error") or "" for s in col.statuses(f"fieldgate/gw-h/{dev}/status")
                    if s.get("state") != "online"]

        col.wait_for(lambda: len([r for r in col.readings() if r["device"] == "good"]) >= 15
                     and all(errors(n) for n in names[1:]), timeout=60, what="good readings, every fault named")
        for name, word in zip(names[1:], words, strict=True):
            assert word in errors(name)[0], (name, errors(name))
        assert errors("good") == []
        gw.send_signal(15)
        assert gw.wait(30) == 0
        err = (tmp_path / "gateway.log").read_text()
        assert "Traceback" not in err and "internal error" not in err, err
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
        log.close()
        col.disconnect()
        sims.stop()

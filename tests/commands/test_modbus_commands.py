"""Commands against real Modbus peers: the pymodbus simulator over TCP and over RTU on a pty.

The gateway is the real one (``runtime.running``, as ``fieldgate run`` builds it) with a memory
output; commands go through ``gateway.commands``, the executor every surface uses. Device I/O is
counted at the simulator: ``requests`` (every request that reached a unit) and ``writes`` (every
write applied, with its function code, address and raw words). Every result is validated against
the shipped ``command.schema.json``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from fieldgate.commands import CommandExecutor
from fieldgate.config import load_config_text
from fieldgate.outputs import MemoryOutput
from fieldgate.runtime import running
from fieldgate_hwsim.modbus_sim import ModbusSim

from ..support.contract import validate_command, validate_command_result, validate_event, validate_reading
from .conftest import config, start_sim

CMD = "fieldgate.command/1"


def write(cid: str, **metrics: Any) -> dict[str, Any]:
    msg = {"schema": CMD, "id": cid, "op": "write", "metrics": metrics}
    validate_command(msg)
    return msg


async def run(ex: CommandExecutor, device: str, msg: Any, **kw: Any) -> dict[str, Any]:
    out = await ex.execute(device, msg, origin=kw.pop("origin", "cli"), **kw)
    validate_command_result(out)
    return out


def audit_checked(out: MemoryOutput) -> list[dict[str, Any]]:
    """The audit events (kind command), each a valid event, each result in it a valid result."""
    events = [e for e in out.events if e["kind"] == "command"]
    for e in events:
        validate_event({"ts": "2026-12-02T00:00:00.000Z", **e})
        if e["stage"] == "result":
            validate_command_result(e["result"])
    return events


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_writes_give_the_right_raw_words_read_back_ok_and_a_new_reading_follows(
        tmp_path: Path, profile_path: Path, sims: list[ModbusSim], transport: str) -> None:
    sim, conn = await start_sim(sims, profile_path, transport)
    out = MemoryOutput()
    text = config(tmp_path / "data", profile_path, {"boiler": conn}, interval="3600s")
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: len(o.by_device("boiler")) >= 1)
        ex = rt.gateway.commands
        assert ex is not None
        before = len(out.by_device("boiler"))
        res = await run(ex, "boiler", write("c-1", setpoint=21.5, flow_setpoint=45.3, relay=True,
                                            counter_preset=70000, pump=True))
        assert res["status"] == "ok", res
        assert "duplicate" not in res
        assert {k: v["value"] for k, v in res["metrics"].items()} == pytest.approx(
            {"setpoint": 21.5, "flow_setpoint": 45.3, "relay": True, "counter_preset": 70000, "pump": True})
        assert sim.models[1].writes == [
            (16, 0, [0x41AC, 0x0000]),   # float32 21.5, ABCD, two registers: FC 16
            (6, 2, [453]),               # int16 with scale 0.1: 45.3 -> 453, one register: FC 6
            (5, 0, [1]),                 # a coil: FC 5
            (16, 3, [0x1170, 0x0001]),   # int32 70000, word order little (CDAB)
            (15, 1, [1]),                # a coil with write_function 15
        ]
        # The read-back poll's reading is published as usual, after the write.
        fresh = out.by_device("boiler")[before:]
        assert fresh, "no reading followed the write"
        validate_reading({k: v for k, v in fresh[0].items() if k != "seq"} | {"seq": fresh[0]["seq"]})
        assert fresh[0]["metrics"]["setpoint"]["value"] == 21.5
        assert fresh[0]["metrics"]["relay"]["value"] is True
        stages = [(e["stage"], e["id"]) for e in audit_checked(out)]
        assert stages == [("command", "c-1"), ("result", "c-1")]


async def test_refused_commands_send_zero_frames(tmp_path: Path, profile_path: Path, sims: list[ModbusSim]) -> None:
    sim, conn = await start_sim(sims, profile_path)
    out = MemoryOutput()
    text = config(tmp_path / "data", profile_path, {"boiler": conn, "meter": conn}, allow=["boiler"],
                  interval="3600s")
    past = "2020-01-01T00:00:00.000Z"
    cases: list[tuple[str, Any, dict[str, Any], str, str]] = [
        ("out of range", "boiler", write("r1", setpoint=80.5), "rejected", "out_of_range"),
        ("out of range, whole command", "boiler", write("r2", relay=True, setpoint=4.9), "rejected", "out_of_range"),
        ("read-only point", "boiler", write("r3", mode=1), "rejected", "read_only"),
        ("input register", "boiler", write("r4", temperature=20.0), "rejected", "read_only"),
        ("unknown point", "boiler", write("r5", setpont=20.0), "rejected", "unknown_point"),
        ("a number to a coil", "boiler", write("r6", relay=1), "rejected", "bad_value"),
        ("a string", "boiler", write("r7", setpoint="20"), "rejected", "bad_value"),
        ("expired", "boiler", {"schema": CMD, "id": "r9", "op": "write", "metrics": {"setpoint": 20},
                               "expires": past}, "expired", "expired"),
        ("device not allowed", "meter", write("r10", setpoint=20.0), "rejected", "not_allowed"),
        ("unknown device", "nobody", write("r11", setpoint=20.0), "rejected", "not_allowed"),
    ]
    bad_schema: list[tuple[str, Any, str]] = [
        ("not an object", [1, 2], "a command is a JSON object"),
        ("wrong schema", {"schema": "fieldgate.command/2", "id": "b1", "op": "write", "metrics": {"setpoint": 1}},
         "schema must be"),
        ("no id", {"schema": CMD, "op": "write", "metrics": {"setpoint": 1}}, "id must be"),
        ("bad id", {"schema": CMD, "id": "a b", "op": "write", "metrics": {"setpoint": 1}}, "id must be"),
        ("bad op", {"schema": CMD, "id": "b2", "op": "erase"}, "op must be"),
        ("no metrics", {"schema": CMD, "id": "b3", "op": "write"}, "a write needs metrics"),
        ("bad expires", {"schema": CMD, "id": "b4", "op": "write", "metrics": {"setpoint": 1}, "expires": "soon"},
         "expires"),
        ("misspelt key", {"schema": CMD, "id": "b5", "op": "write", "metrics": {"setpoint": 1}, "expire": past},
         "unknown key 'expire'"),
        ("a null value", {"schema": CMD, "id": "b6", "op": "write", "metrics": {"setpoint": None}}, "metrics.setpoint"),
    ]
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: len(o.by_device("boiler")) >= 1 and len(o.by_device("meter")) >= 1)
        ex = rt.gateway.commands
        assert ex is not None
        frames = dict(sim.requests)
        for what, device, msg, status, reason in cases:
            res = await run(ex, device, msg)
            assert (res["status"], res["reason"]) == (status, reason), what
        for what, msg, detail in bad_schema:
            res = await run(ex, "boiler", msg)
            assert res["status"] == "rejected", what
            assert res["reason"].startswith("bad_message: ") and detail in res["reason"], (what, res["reason"])
        res = await run(ex, "boiler", write("r12", setpoint=20.0), retained=True)
        assert (res["status"], res["reason"]) == ("rejected", "retained")
        assert sim.requests == frames, "a refused command touched a device"
        assert sim.models[1].writes == []
        results = [e for e in audit_checked(out) if e["stage"] == "result"]
        assert len(results) == len(cases) + len(bad_schema) + 1


async def test_a_value_the_register_cannot_hold_is_refused_before_any_frame(
        tmp_path: Path, sims: list[ModbusSim]) -> None:
    profile = tmp_path / "narrow.yaml"
    profile.write_text("schema_version: 1\ndriver: modbus\nvendor: t\nmodel: narrow\npoints:\n"
                       "  - {name: level, table: holding, address: 0, type: int16, scale: 0.001, writable: true, "
                       "write_range: [0, 100]}\n")
    sim, conn = await start_sim(sims, profile)
    out = MemoryOutput()
    text = config(tmp_path / "data", profile, {"tank": conn}, interval="3600s")
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: len(o.by_device("tank")) >= 1)
        assert rt.gateway.commands is not None
        frames = dict(sim.requests)
        res = await run(rt.gateway.commands, "tank", write("n1", level=40.0))  # raw 40000 > 32767
        assert (res["status"], res["reason"]) == ("rejected", "out_of_range")
        assert sim.requests == frames
        res = await run(rt.gateway.commands, "tank", write("n2", level=30.0))
        assert res["status"] == "ok"
        assert sim.models[1].writes == [(6, 0, [30000])]


async def test_the_same_command_three_times_is_executed_once(tmp_path: Path, profile_path: Path,
                                                             sims: list[ModbusSim]) -> None:
    sim, conn = await start_sim(sims, profile_path)
    out = MemoryOutput()
    text = config(tmp_path / "data", profile_path, {"boiler": conn}, interval="3600s")
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: len(o.by_device("boiler")) >= 1)
        ex = rt.gateway.commands
        assert ex is not None
        msg = write("same-1", setpoint=30.0)
        # Two at once (a redelivery while the first runs), a third after it finished.
        first, second = await asyncio.gather(run(ex, "boiler", msg), run(ex, "boiler", msg))
        third = await run(ex, "boiler", msg)
        assert sim.models[1].writes == [(16, 0, [0x41F0, 0x0000])]
        statuses = [(r["status"], r.get("duplicate", False)) for r in (first, second, third)]
        assert sorted(statuses) == [("ok", False), ("ok", True), ("ok", True)]
        assert {r["ts"] for r in (first, second, third)} == {first["ts"]}  # the first result, again


async def test_a_write_that_times_out_fails_and_the_unit_backs_off_as_for_polls(
        tmp_path: Path, profile_path: Path, sims: list[ModbusSim]) -> None:
    sim, conn = await start_sim(sims, profile_path)
    out = MemoryOutput()
    conn = {**conn, "timeout": 0.3, "retries": 0, "backoff": 60}
    text = config(tmp_path / "data", profile_path, {"boiler": conn}, interval="3600s")
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: len(o.by_device("boiler")) >= 1)
        ex = rt.gateway.commands
        assert ex is not None
        sim.set_fault(1, "silent")
        res = await run(ex, "boiler", write("t-1", setpoint=25.0))
        assert (res["status"], res["reason"]) == ("failed", "timeout")
        snap = rt.gateway.device_snapshot("boiler")
        assert snap is not None
        assert (snap.state, snap.consecutive_failures) == ("degraded", 1)
        assert "write" in (snap.last_error or "")
        # In its backoff the unit is skipped: the next command fails at once, without a frame.
        frames = dict(sim.requests)
        res = await run(ex, "boiler", write("t-2", setpoint=26.0))
        assert (res["status"], res["reason"]) == ("failed", "timeout")
        assert sim.requests == frames
        assert sim.models[1].writes == []  # a silent unit applied nothing
        assert ("boiler", "degraded", snap.last_error) in out.statuses


async def test_a_burst_of_100_commands_respects_the_rate_limit(tmp_path: Path, profile_path: Path,
                                                              sims: list[ModbusSim]) -> None:
    sim, conn = await start_sim(sims, profile_path)
    out = MemoryOutput()
    text = config(tmp_path / "data", profile_path, {"boiler": conn}, interval="3600s", rate=0.5, burst=5,
                  max_queued=100)
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: len(o.by_device("boiler")) >= 1)
        ex = rt.gateway.commands
        assert ex is not None
        started = time.monotonic()
        results = await asyncio.gather(*(run(ex, "boiler", write(f"burst-{i}", setpoint=20.0 + i / 10))
                                         for i in range(100)))
        elapsed = time.monotonic() - started
        done = [r for r in results if r["status"] == "ok"]
        refused = [r for r in results if r["status"] != "ok"]
        allowed = 5 + int(elapsed * 0.5) + 1  # the burst, plus what the bucket refilled meanwhile
        assert 5 <= len(done) <= allowed, (len(done), elapsed)
        assert {(r["status"], r["reason"]) for r in refused} == {("rejected", "rate_limited")}
        assert len(sim.models[1].writes) == len(done)
        # Nothing waits: every command was answered, none is queued behind the device.
        assert ex._queued == {"boiler": 0}  # the executor's own bound, read by its test


async def test_a_shared_rs485_line_keeps_both_schedules_while_one_unit_is_written(
        tmp_path: Path, profile_path: Path, sims: list[ModbusSim], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    sim, conn = await start_sim(sims, profile_path, "rtu", units=(1, 2), baudrate=38400)
    out = MemoryOutput()
    devices = {"boiler-1": {**conn, "unit": 1}, "boiler-2": {**conn, "unit": 2}}
    text = config(tmp_path / "data", profile_path, devices, interval="0.5s")
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: all(len(o.by_device(d)) >= 1 for d in devices))
        ex = rt.gateway.commands
        assert ex is not None
        results = []
        for i in range(8):
            target = "boiler-1" if i % 2 == 0 else "boiler-2"
            results.append(await run(ex, target, write(f"bus-{i}", setpoint=10.0 + i, relay=i % 3 == 0)))
            await asyncio.sleep(0.2)  # commands spread over the polls (the load's pace, not a synchronization)
        assert [r["status"] for r in results] == ["ok"] * 8, results
        for dev in devices:
            snap = rt.gateway.device_snapshot(dev)
            assert snap is not None
            assert (snap.failures, snap.overruns, snap.state) == (0, 0, "online"), dev
        assert len(sim.models[1].writes) == 8 and len(sim.models[2].writes) == 8
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []  # no CRC error, no timeout


async def test_an_expiring_command_is_refused_while_the_clock_is_not_synchronized(
        tmp_path: Path, profile_path: Path, sims: list[ModbusSim]) -> None:
    """A Pi without RTC boots in 1970 (or wherever the fake-hwclock left it): ``expires`` cannot be
    judged, and running an expired setpoint would be the harm ``expires`` is there to prevent."""
    sim, conn = await start_sim(sims, profile_path)
    out = MemoryOutput()
    text = config(tmp_path / "data", profile_path, {"boiler": conn}, interval="3600s")
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: len(o.by_device("boiler")) >= 1)
        ex = rt.gateway.commands
        assert ex is not None
        rt.gateway.clock.synced = False
        frames = dict(sim.requests)
        msg = {**write("clk-1", setpoint=25.0), "expires": "2999-01-01T00:00:00.000Z"}
        res = await run(ex, "boiler", msg)
        assert (res["status"], res["reason"]) == ("rejected", "clock_unsynced")
        assert sim.requests == frames
        # Without expires there is nothing to judge: it runs.
        assert (await run(ex, "boiler", write("clk-2", setpoint=25.0)))["status"] == "ok"


async def test_a_point_read_every_nth_poll_is_read_back_after_its_write(tmp_path: Path, sims: list[ModbusSim]) -> None:
    profile = tmp_path / "slow.yaml"
    profile.write_text("schema_version: 1\ndriver: modbus\nvendor: t\nmodel: slow\npoints:\n"
                       "  - {name: temperature, table: input, address: 0, type: float32}\n"
                       "  - {name: limit, table: holding, address: 0, type: uint16, every: 10, writable: true, "
                       "write_range: [0, 500]}\n")
    _sim, conn = await start_sim(sims, profile)
    out = MemoryOutput()
    text = config(tmp_path / "data", profile, {"tank": conn}, interval="3600s")
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: len(o.by_device("tank")) >= 1)  # poll 0 reads every point; poll 1 would not
        assert rt.gateway.commands is not None
        res = await run(rt.gateway.commands, "tank", write("slow-1", limit=300))
        assert res["status"] == "ok", res
        assert res["metrics"]["limit"]["value"] == 300


async def test_a_driver_without_the_write_hook_answers_not_supported(tmp_path: Path) -> None:
    sim_profile = tmp_path / "sim.yaml"
    sim_profile.write_text("schema_version: 1\ndriver: sim\nvendor: t\nmodel: t\npoints:\n"
                           "  - {name: voltage, writable: true, range: [0, 300], sim: {shape: random, min: 1, max: 2}}"
                           "\n"
                           "  - {name: current, sim: {shape: random, min: 1, max: 2}}\n")
    text = (f"gateway: {{id: gw-t, data_dir: {tmp_path / 'data'}, clock_check: off}}\nweb: {{enabled: false}}\n"
            "commands: {enabled: true, allow: [m1]}\n"
            f"devices:\n  - {{id: m1, driver: sim, profile: {sim_profile}, poll_interval: 3600s}}\n")
    out = MemoryOutput()
    async with running(load_config_text(text, str(tmp_path / "c.yaml")), output=out) as rt:
        await out.wait_for(lambda o: len(o.by_device("m1")) >= 1)
        assert rt.gateway.commands is not None
        res = await run(rt.gateway.commands, "m1", write("ns-1", voltage=230.0))
        assert (res["status"], res["reason"]) == ("rejected", "not_supported")
        read = await run(rt.gateway.commands, "m1", {"schema": CMD, "id": "ns-2", "op": "read",
                                                     "metrics": ["voltage"]})
        assert read["status"] == "ok" and set(read["metrics"]) == {"voltage"}  # a read needs no write hook

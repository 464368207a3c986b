"""Hostile command payloads against the real gateway process: each refused by name, none executed.

The payloads are hw-sim's (``fieldgate_hwsim.command_hostile``), the same the fault campaign
sends (bench/faults.py, row "commands: hostile, flood"). The gateway runs as ``fieldgate run``
against a real mosquitto and the Modbus simulator, which records every write it applies: a
hostile command that reached the device would show there. Every result is validated against the
contract (``command.schema.json``).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fieldgate_hwsim.command_hostile import hostile_commands
from fieldgate_hwsim.modbus_sim import ModbusSim

from ..conftest import Proc
from ..support.broker import Mosquitto
from ..support.collector import Collector
from ..support.contract import validate_message
from .conftest import config, start_sim

PREFIX = "fieldgate/gw-t"


def _results(col: Collector) -> list[tuple[float, dict[str, Any]]]:
    out = []
    for m in col.on("/cmd/result"):
        assert validate_message(m.topic, m.payload) == "command result"
        out.append((m.at, m.json()))
    return out


async def _gateway(tmp_path: Path, profile_path: Path, sims: list[ModbusSim], mosquitto: Mosquitto,
                   fieldgate_proc: Callable[..., Proc], col: Collector) -> ModbusSim:
    sim, conn = await start_sim(sims, profile_path)
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(config(tmp_path / "data", profile_path, {"boiler": conn}, mqtt_port=mosquitto.port,
                          interval="1s"))
    fieldgate_proc("run", "-c", str(cfg))
    # A reading delivered means the uplink connected, and so the command topics are subscribed.
    await asyncio.to_thread(col.wait_readings, 1, 30)
    return sim


async def test_live_retained_command_is_refused(tmp_path: Path, profile_path: Path, sims: list[ModbusSim],
                                                mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]) -> None:
    # The contract: a retained command is refused, never executed. One published retained while the gateway
    # is subscribed reaches it live; without "retain as published" the broker clears the flag on the way.
    col = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port).connect)
    pub = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port, topic="nobody/here",
                                            clean_session=True).connect)
    try:
        sim = await _gateway(tmp_path, profile_path, sims, mosquitto, fieldgate_proc, col)
        cmd = {"schema": "fieldgate.command/1", "id": "live-ret", "op": "write", "metrics": {"setpoint": 30.0}}
        await asyncio.to_thread(pub.publish, f"{PREFIX}/boiler/cmd", cmd, retain=True)
        await asyncio.to_thread(pub.publish, f"{PREFIX}/boiler/cmd", b"", retain=True)  # clear it at the broker
        got = await asyncio.to_thread(col.wait_for, lambda: [r for _, r in _results(col) if r["id"] == "live-ret"],
                                      20, "the answer to the retained command")
        assert [(r["status"], r.get("reason")) for r in got] == [("rejected", "retained")]
        assert sim.models[1].writes == []
    finally:
        await asyncio.to_thread(pub.disconnect)
        await asyncio.to_thread(col.disconnect)


async def test_hostile_commands_refused_by_name_none_executed(
        tmp_path: Path, profile_path: Path, sims: list[ModbusSim], mosquitto: Mosquitto,
        fieldgate_proc: Callable[..., Proc]) -> None:
    col = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port).connect)
    pub = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port, topic="nobody/here",
                                            clean_session=True).connect)
    try:
        sim = await _gateway(tmp_path, profile_path, sims, mosquitto, fieldgate_proc, col)
        wrong: list[str] = []
        for h in hostile_commands(random.Random(7), "boiler", "t"):
            seen = len(_results(col))
            await asyncio.to_thread(pub.publish, f"{PREFIX}/{h.device}/cmd", h.payload, retain=h.retain)
            if h.retain:
                await asyncio.to_thread(pub.publish, f"{PREFIX}/{h.device}/cmd", b"", retain=True)
            # One answer each, in order: wait for the next one and check it is this command's.
            got = await asyncio.to_thread(col.wait_for, lambda: _results(col)[seen:], 20,  # noqa: B023
                                          f"the answer to {h.kind}")
            res = got[0][1]
            if res["id"] != h.cid or res["status"] not in ("rejected", "expired") or \
                    not re.search(h.reason, res.get("reason", "")):
                wrong.append(f"{h.kind}: {res['id']!r} {res['status']} {res.get('reason', '')[:80]!r}")
        assert wrong == []
        assert sim.models[1].writes == []
    finally:
        await asyncio.to_thread(pub.disconnect)
        await asyncio.to_thread(col.disconnect)


async def test_a_burst_beyond_the_listener_s_limit_is_answered_under_each_id(
        tmp_path: Path, profile_path: Path, sims: list[ModbusSim], mosquitto: Mosquitto,
        fieldgate_proc: Callable[..., Proc]) -> None:
    # More commands at once than the listener runs (MAX_TASKS, 256): the extra ones are refused as
    # busy before they are parsed. The campaign's flood row found those answered with "id": null,
    # which the sender cannot match: 286 of 2000 commands without a final result.
    col = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port).connect)
    pub = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port, topic="nobody/here",
                                            clean_session=True).connect)
    n = 600
    try:
        sim = await _gateway(tmp_path, profile_path, sims, mosquitto, fieldgate_proc, col)
        def burst() -> None:
            # All at once (no wait for each PUBACK): they reach the gateway faster than it answers.
            infos = [pub.client.publish(f"{PREFIX}/boiler/cmd", json.dumps(
                {"schema": "fieldgate.command/1", "id": f"burst-{i}", "op": "write", "metrics": {"setpoint": 30.0}}),
                qos=1) for i in range(n)]
            for info in infos:
                info.wait_for_publish(30)

        await asyncio.to_thread(burst)

        def answered() -> set[str]:
            return {r["id"] for _, r in _results(col) if str(r.get("id", "")).startswith("burst-")}

        await asyncio.to_thread(col.wait_for, lambda: len(_results(col)) >= n, 60, f"{n} answers")
        await asyncio.to_thread(col.sync)
        nameless = [r for _, r in _results(col) if not r.get("id")]
        assert not nameless, f"{len(nameless)} answer(s) without the command's id, e.g. {nameless[:2]}"
        assert answered() == {f"burst-{i}" for i in range(n)}
        assert len(sim.models[1].writes) <= 20, "the rate limit (burst 10) let a flood through"
    finally:
        await asyncio.to_thread(pub.disconnect)
        await asyncio.to_thread(col.disconnect)

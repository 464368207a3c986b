"""``kill -9`` between the device write and its result, then a restart and the command redelivered.

The gateway runs as a real process (``fieldgate run``) against a real mosquitto and the Modbus
simulator. The simulator applies the write and holds its answer (fault ``hold-write``), so the
gateway is killed exactly between the write and the result. After the restart the same command
is published again: it must not write a second time, and it is answered ``failed`` with reason
``unknown_outcome`` and ``duplicate: true`` (docs/commands.md says why not the stored result:
there is none, and reading the point back could not tell who set it).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fieldgate_hwsim.modbus_sim import ModbusSim

from ..conftest import Proc
from ..support.broker import Mosquitto
from ..support.collector import Collector
from ..support.contract import validate_message
from .conftest import config, start_sim

TOPIC = "fieldgate/gw-t/boiler/cmd"
CMD = {"schema": "fieldgate.command/1", "id": "kill-1", "op": "write", "metrics": {"setpoint": 42.0}}


def _answers(col: Collector) -> list[dict[str, Any]]:
    out = []
    for m in col.on("/boiler/cmd/result"):
        validate_message(m.topic, m.payload)
        out.append(m.json())
    return out


def _rows(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, state FROM commands").fetchall()


async def test_sigkill_between_write_and_result_never_writes_again(
        tmp_path: Path, profile_path: Path, sims: list[ModbusSim], mosquitto: Mosquitto,
        fieldgate_proc: Callable[..., Proc]) -> None:
    sim, conn = await start_sim(sims, profile_path)
    # The held answer must outlast the kill: the gateway's own timeouts are longer than the test.
    conn = {**conn, "timeout": 60}
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(config(tmp_path / "data", profile_path, {"boiler": conn}, mqtt_port=mosquitto.port,
                          interval="3600s", device_extra="timeout: 90s, "))
    col = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port).connect)
    pub = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port, topic="nobody/here",
                                            clean_session=True).connect)
    try:
        gw = fieldgate_proc("run", "-c", str(cfg))
        await asyncio.to_thread(col.wait_readings, 1, 30)  # connected, subscribed, polled once
        sim.set_fault(1, "hold-write")
        await asyncio.to_thread(pub.publish, TOPIC, CMD)
        async with asyncio.timeout(30):
            await sim.wrote.wait()  # the device has it; its answer is held
        assert _rows(tmp_path / "data" / "commands.db") == [("kill-1", "executing")]  # committed before the write
        gw.popen.send_signal(signal.SIGKILL)
        await asyncio.to_thread(gw.popen.wait, 10)
        sim.set_fault(1, None)
        assert _answers(col) == []

        col.clear()
        again = fieldgate_proc("run", "-c", str(cfg))
        await asyncio.to_thread(col.wait_readings, 1, 30)
        await asyncio.to_thread(pub.publish, TOPIC, CMD)  # the sender's redelivery
        got = await asyncio.to_thread(col.wait_for, lambda: _answers(col), 30, "the answer after the restart")
        assert [(a["status"], a["reason"], a.get("duplicate")) for a in got] == [("failed", "unknown_outcome", True)]
        assert sim.models[1].writes == [(16, 0, [0x4228, 0x0000])]  # once, before the kill
        settled = await asyncio.to_thread(
            col.wait_for, lambda: [e for e in col.events() if e["kind"] == "command" and e["stage"] == "result"
                                   and e.get("origin") == "restart"], 30, "the settled command on the events topic")
        assert settled[0]["result"]["reason"] == "unknown_outcome"
        assert _rows(tmp_path / "data" / "commands.db") == [("kill-1", "done")]
        again.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(again.popen.wait, 20) == 0
    finally:
        await asyncio.to_thread(pub.disconnect)
        await asyncio.to_thread(col.disconnect)

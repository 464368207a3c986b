"""A damaged ``commands.db``: the gateway runs on, commands stay off (fail closed), and it says so on ``events``.

The real gateway process against a real mosquitto. Without the store "at most once" cannot be kept,
so commands stay off; a site must learn that from the gateway's events, not only from its log.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from fieldgate_hwsim.modbus_sim import ModbusSim

from ..conftest import Proc
from ..support.broker import Mosquitto
from ..support.collector import Collector
from ..support.contract import validate_message
from .conftest import config, start_sim


async def test_a_damaged_command_store_is_announced(tmp_path: Path, profile_path: Path, sims: list[ModbusSim],
                                                    mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]) -> None:
    _sim, conn = await start_sim(sims, profile_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "commands.db").write_bytes(os.urandom(20_000))  # an SD card's damage: not a database any more
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(config(data, profile_path, {"boiler": conn}, mqtt_port=mosquitto.port, interval="0.2s"))
    col = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port).connect)
    try:
        fieldgate_proc("run", "-c", str(cfg))
        await asyncio.to_thread(col.wait_readings, 3, 30)  # it runs and forwards readings
        events = await asyncio.to_thread(
            col.wait_for, lambda: [e for e in col.events() if e["kind"] == "commands_unavailable"], 30,
            "an event naming the damaged command store")
        for m in col.on("/events"):
            validate_message(m.topic, m.payload)
        assert str(data / "commands.db") in events[0]["file"]
        assert "not a database" in events[0]["error"]
    finally:
        await asyncio.to_thread(col.disconnect)

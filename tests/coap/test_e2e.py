"""A whole gateway: a push device and a polled device deliver schema-valid readings to a real mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fieldgate_hwsim.coap_sim import ObservableSensor, SleepyDevice, free_udp_port

from tests.support.broker import Mosquitto
from tests.support.collector import Collector
from tests.support.contract import validate_reading
from tests.support.gateway import running_gateway, until

from .conftest import profile


async def test_push_and_polled_devices_reach_the_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    push_port = free_udp_port()
    async with ObservableSensor(profile("generic/senml"), seed=5) as sensor:
        text = (
            f"gateway: {{id: gw-coap, data_dir: {tmp_path / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, reconnect_min: 0.05s, reconnect_max: 0.2s}}\n"
            "buffer: {flush_interval: 50ms}\n"
            "devices:\n"
            f"  - {{id: bin-1, driver: coap, profile: dragino/ndds75, connection: {{mode: push, "
            f"listen: '127.0.0.1:{push_port}'}}}}\n"
            f"  - {{id: climate-1, driver: coap, profile: generic/senml, poll_interval: 0.2s, "
            f"connection: {{host: 127.0.0.1, port: {sensor.port}}}}}\n"
        )
        col = Collector(mosquitto.host, mosquitto.port)
        await asyncio.to_thread(col.connect)
        try:
            async with running_gateway(text, str(tmp_path / "t.yaml")):
                async with SleepyDevice(("127.0.0.1", push_port), "/t/bin-1", profile("dragino/ndds75"), seed=6,
                                        ack_timeout=0.2) as dev:
                    # the push server binds when the device's driver opens: the device retransmits meanwhile
                    for _ in range(3):
                        assert await dev.push(duplicates=1) == "2.04 Changed"
                        sensor.update()
                await until(lambda: len([r for r in col.readings() if r["device"] == "bin-1"]) >= 3
                            and len([r for r in col.readings() if r["device"] == "climate-1"]) >= 3,
                            what="readings of both devices")
        finally:
            await asyncio.to_thread(col.disconnect)
    readings = col.readings()
    for r in readings:
        validate_reading(r)
    pushed = [r for r in readings if r["device"] == "bin-1"]
    assert len(pushed) == 3  # duplicates were answered from the cache, not read twice
    assert all(r["meta"]["driver"] == "coap" for r in readings)
    assert pushed[0]["metrics"]["distance"]["unit"] == "mm"
    assert any("humidity" in r["metrics"] for r in readings if r["device"] == "climate-1")
    col.check_contract()

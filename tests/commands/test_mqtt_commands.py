"""Commands over a real mosquitto: ``{prefix}/{gw}/+/cmd`` in, ``.../cmd/result`` and the events topic out.

Retained commands are refused, the same id published three times writes once, an expired or
unreadable one is answered without touching the device, MQTT 5 Response Topic and Correlation
Data are honoured, every answer and audit event is validated against the contract; with
commands off (the default) nothing is subscribed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fieldgate.config import load_config_text
from fieldgate.runtime import running
from fieldgate_hwsim.modbus_sim import ModbusSim
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..support.broker import Mosquitto
from ..support.collector import Collector
from ..support.contract import validate_message
from ..support.mqtt5 import V5Client
from .conftest import config, start_sim

TOPIC = "fieldgate/gw-t/boiler/cmd"


def command(cid: str, **extra: Any) -> dict[str, Any]:
    return {"schema": "fieldgate.command/1", "id": cid, "op": "write", "metrics": {"setpoint": 30.0}, **extra}


def results(col: Collector, cid: str) -> list[dict[str, Any]]:
    out = []
    for m in col.on("/boiler/cmd/result"):
        assert validate_message(m.topic, m.payload) == "command result"
        if m.json()["id"] == cid:
            out.append(m.json())
    return out


def audit(col: Collector) -> list[dict[str, Any]]:
    found = []
    for m in col.on("gw-t/events"):
        assert validate_message(m.topic, m.payload) == "event"
        if m.json()["kind"] == "command":
            found.append(m.json())
    return found


async def test_commands_over_mqtt(tmp_path: Path, profile_path: Path, sims: list[ModbusSim],
                                  mosquitto: Mosquitto) -> None:
    sim, conn = await start_sim(sims, profile_path)
    col = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port).connect)
    pub = await asyncio.to_thread(Collector(mosquitto.host, mosquitto.port, topic="nobody/here",
                                            clean_session=True).connect)
    try:
        # Retained before the gateway subscribes: delivered on subscribe, flagged retained: refused.
        await asyncio.to_thread(pub.publish, TOPIC, command("kept"), retain=True)
        text = config(tmp_path / "data", profile_path, {"boiler": conn}, mqtt_port=mosquitto.port, interval="3600s")
        async with running(load_config_text(text, str(tmp_path / "c.yaml"))):
            got = await asyncio.to_thread(col.wait_for, lambda: results(col, "kept"), 20, "the retained answer")
            assert [(r["status"], r["reason"]) for r in got] == [("rejected", "retained")]
            await asyncio.to_thread(pub.publish, TOPIC, b"", retain=True)  # clear it at the broker
            for _ in range(3):
                await asyncio.to_thread(pub.publish, TOPIC, command("thrice"))
            got = await asyncio.to_thread(col.wait_for, lambda: len(results(col, "thrice")) >= 3 and
                                          results(col, "thrice"), 20, "three answers")
            assert sorted((r["status"], r.get("duplicate", False)) for r in got) == [
                ("ok", False), ("ok", True), ("ok", True)]
            assert sim.models[1].writes == [(16, 0, [0x41F0, 0x0000])]
            await asyncio.to_thread(pub.publish, TOPIC, command("late", expires="2021-01-01T00:00:00Z"))
            await asyncio.to_thread(pub.publish, TOPIC, b"{not json")
            await asyncio.to_thread(pub.publish, TOPIC, b"[" * 10_000)  # nesting deeper than the parser goes
            # Python's parser takes NaN (not JSON): refused as a value, and the audit trail still written.
            await asyncio.to_thread(pub.publish, TOPIC, b'{"schema": "fieldgate.command/1", "id": "nan", '
                                                        b'"op": "write", "metrics": {"setpoint": NaN}}')
            got = await asyncio.to_thread(col.wait_for, lambda: results(col, "late") and len(results(col, "")) >= 2,
                                          20, "the expired and the unreadable answers")
            assert [(r["status"], r["reason"]) for r in results(col, "late")] == [("expired", "expired")]
            nan = await asyncio.to_thread(col.wait_for, lambda: results(col, "nan"), 20, "the NaN answer")
            assert [(r["status"], r["reason"]) for r in nan] == [("rejected", "bad_message: metrics.setpoint: "
                                                                  "not a finite number")]
            # Two: the empty message that deleted the retained command was no command and got no answer.
            assert [r["reason"] for r in results(col, "")] == ["bad_message: the payload is not JSON"] * 2
            assert len(sim.models[1].writes) == 1
            trail = await asyncio.to_thread(col.wait_for, lambda: len(audit(col)) >= 16 and audit(col), 20,
                                            "the audit trail")
            assert {(e["stage"], e["id"]) for e in trail} >= {("command", "thrice"), ("result", "thrice"),
                                                              ("result", "kept"), ("result", "late")}
    finally:
        await asyncio.to_thread(pub.disconnect)
        await asyncio.to_thread(col.disconnect)


async def test_mqtt5_response_topic_and_correlation_data(tmp_path: Path, profile_path: Path, sims: list[ModbusSim],
                                                         mosquitto: Mosquitto) -> None:
    _sim, conn = await start_sim(sims, profile_path)
    c5 = await asyncio.to_thread(V5Client(mosquitto.host, mosquitto.port, "app/replies/#", "v5-app").__enter__)
    received, arrived, c = c5.received, c5.arrived, c5.client
    try:
        text = config(tmp_path / "data", profile_path, {"boiler": conn}, mqtt_port=mosquitto.port, interval="3600s")
        async with running(load_config_text(text, str(tmp_path / "c.yaml"))) as rt:
            assert rt.listener is not None
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = "app/replies/7"
            props.CorrelationData = b"\x00req-7"
            # Until the gateway's subscription is there a command is not delivered: send again (same id).
            for _ in range(100):
                c.publish(TOPIC, json.dumps(command("v5-1")), qos=1, properties=props)
                if await asyncio.to_thread(arrived.wait, 0.3):
                    break
        assert received, "no answer on the response topic"
        msg = received[0]
        assert msg.topic == "app/replies/7"
        assert msg.properties.CorrelationData == b"\x00req-7"
        answer = json.loads(msg.payload)
        validate_message("fieldgate/gw-t/boiler/cmd/result", answer)
        assert answer["id"] == "v5-1" and answer["status"] == "ok"
    finally:
        c5.__exit__(None, None, None)


async def test_commands_are_off_by_default_and_nothing_is_subscribed(tmp_path: Path, profile_path: Path,
                                                                     sims: list[ModbusSim],
                                                                     mosquitto: Mosquitto) -> None:
    _sim, conn = await start_sim(sims, profile_path)
    text = config(tmp_path / "data", profile_path, {"boiler": conn}, mqtt_port=mosquitto.port, interval="3600s")
    text = text.replace("commands: {enabled: true, ", "commands: {")  # allow given, enabled left out
    loaded = load_config_text(text, str(tmp_path / "c.yaml"))
    assert loaded.config.commands.enabled is False
    async with running(loaded) as rt:
        assert rt.gateway.commands is None and rt.listener is None
        assert rt.output._listening == {}  # type: ignore[attr-defined]  # the uplink subscribes nothing
    assert not (tmp_path / "data" / "commands.db").exists()

"""Home Assistant discovery from the real gateway process: retained configs on a real mosquitto.

The configs are decoded with a schema written from HA's documentation (tests/fleet/hass_schema.py),
and their templates rendered with Jinja2 (HA's template engine) on the gateway's real readings
and statuses: the entity shows the reading's value with no second publish stream.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from fieldgate.config import load_profile_file
from jsonschema import Draft202012Validator

from ..conftest import REPO, SIM_PROFILES, Proc
from ..support.broker import Mosquitto, free_port
from ..support.collector import Collector
from .hass_schema import DISCOVERY_TOPIC, SENSOR_DISCOVERY, semantic_problems

GW = "gw-h"
NODE = f"fieldgate_{GW}"
PROFILES = {"m1": "eastron/sdm120", "p1": "plantower/pms5003", "d0": None}


def config(tmp: Path, port: int, devices: list[str]) -> str:
    lines = {
        "m1": f"  - {{id: m1, driver: modbus, profile: eastron/sdm120, poll_interval: 1s, "
              f"connection: {{host: 127.0.0.1, port: {free_port()}, unit: 1}}}}\n",
        "p1": f"  - {{id: p1, driver: serial, profile: plantower/pms5003, connection: {{port: {tmp}/no-tty}}}}\n",
        "d0": f"  - {{id: d0, driver: sim, profile: {SIM_PROFILES / 'energy-meter.yaml'}, poll_interval: 0.1s}}\n",
    }
    return (
        f"gateway: {{id: {GW}, data_dir: {tmp / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {port}, reconnect_min: 0.1s, reconnect_max: 0.5s}}\n"
        "web: {enabled: false}\n"
        "homeassistant: {enabled: true}\n"
        "devices:\n" + "".join(lines[d] for d in devices)
    )


def points(device: str) -> list[str]:
    ref = PROFILES[device]
    path = SIM_PROFILES / "energy-meter.yaml" if ref is None else REPO / "profiles" / f"{ref}.yaml"
    profile, diags = load_profile_file(path)
    assert profile is not None, diags
    return [p.name for p in profile.points]


def render(template: str, payload: bytes, this_state: str = "previous") -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(value_json=json.loads(payload), this={"state": this_state})


def test_discovery_configs_follow_the_profiles_and_clear_on_removal(
        tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]) -> None:
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(config(tmp_path, mosquitto.port, ["m1", "p1", "d0"]))
    expected = {d: points(d) for d in PROFILES}
    total = sum(len(v) for v in expected.values())
    with Collector.for_broker(mosquitto, topic="homeassistant/#") as ha, \
            Collector.for_broker(mosquitto, topic=f"fieldgate/{GW}/#") as fg:
        ha.connect()
        fg.connect()
        gw = fieldgate_proc("run", "-c", str(cfg))
        ha.wait_for(lambda: len({m.topic for m in ha.messages if m.payload}) >= total, timeout=30,
                    what=f"{total} discovery configs")
        configs = ha.retained_map("homeassistant/#")
        assert len(configs) == total
        validator = Draft202012Validator(SENSOR_DISCOVERY)
        by_device: dict[str, dict[str, dict[str, Any]]] = {}
        for topic, msg in configs.items():
            m = DISCOVERY_TOPIC.match(topic)
            assert m and m["node"] == NODE, topic
            doc = msg.json()
            errors = [e.message for e in validator.iter_errors(doc)] + semantic_problems(doc)
            assert not errors, (topic, errors)
            dev = doc["device"]["name"]
            by_device.setdefault(dev, {})[doc["value_template"]] = doc
        # An entity for every point of both shipped profiles (and of the sim one), one HA device each.
        for dev, names in expected.items():
            docs = list(by_device[dev].values())
            assert len(docs) == len(names), dev
            assert len({json.dumps(d["device"], sort_keys=True) for d in docs}) == 1
        sdm = {d["unique_id"].removeprefix(f"fieldgate_{GW}_m1_"): d for d in by_device["m1"].values()}
        assert set(sdm) == set(expected["m1"])
        assert sdm["voltage"]["device_class"] == "voltage" and sdm["voltage"]["unit_of_measurement"] == "V"
        assert sdm["energy_import"]["device_class"] == "energy"
        assert sdm["energy_import"]["state_class"] == "total_increasing"
        assert sdm["power_factor_total"]["device_class"] == "power_factor"
        assert sdm["voltage"]["device"]["manufacturer"] == "Eastron"
        pms = {d["unique_id"].removeprefix(f"fieldgate_{GW}_p1_"): d for d in by_device["p1"].values()}
        assert pms["pm2_5"]["device_class"] == "pm25" and pms["pm10"]["device_class"] == "pm10"
        assert pms["pm1_0"]["device_class"] == "pm1" and pms["pm2_5"]["unit_of_measurement"] == "µg/m³"

        # State: the templates on the gateway's own reading topic give the reading's values.
        reading_msg = fg.wait_count("/d0/reading", 1)[0]
        reading = reading_msg.json()
        for doc in by_device["d0"].values():
            assert doc["state_topic"] == reading_msg.topic
            name = doc["unique_id"].removeprefix(f"fieldgate_{GW}_d0_")
            assert render(doc["value_template"], reading_msg.payload) == str(reading["metrics"][name]["value"])
            assert render(doc["value_template"], b'{"metrics": {}}') == "previous"  # a poll without it
        # Availability: the device's retained status and the gateway's.
        voltage = next(d for d in by_device["m1"].values() if d["unique_id"].endswith("_voltage"))
        states = {}
        for av in voltage["availability"]:
            msg = fg.wait_for(lambda av=av: next((m for m in fg.messages if m.topic == av["topic"]), None),
                              what=av["topic"])
            states[av["topic"]] = render(av["value_template"], msg.payload)
        assert states[f"fieldgate/{GW}/status"] == "online"
        def m1_offline() -> Any:
            return next((m for m in fg.messages
                         if m.topic == f"fieldgate/{GW}/m1/status" and m.json()["state"] == "offline"), None)
        offline = fg.wait_for(m1_offline, timeout=30, what="m1 offline (no Modbus server)")
        assert render(voltage["availability"][1]["value_template"], offline.payload) == "offline"

        # Removing a device (reload) clears its retained configs.
        cfg.write_text(config(tmp_path, mosquitto.port, ["p1", "d0"]))
        gw.popen.send_signal(signal.SIGHUP)
        try:
            ha.wait_for(lambda: sum(1 for m in ha.messages if not m.payload and "/m1_" in m.topic)
                        >= len(expected["m1"]), timeout=30, what="empty retained configs for m1")
        finally:
            print("".join(gw.stderr_lines[-30:]))
        left = ha.retained_map("homeassistant/#")
        assert len(left) == total - len(expected["m1"])
        assert not any(f"/{NODE}/m1_" in t for t in left)
        gw.popen.send_signal(signal.SIGTERM)
        assert gw.popen.wait(30) == 0


def test_configs_of_devices_removed_while_the_gateway_was_down_are_cleared(
        tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]) -> None:
    cfg = tmp_path / "fieldgate.yaml"
    with Collector.for_broker(mosquitto, topic="homeassistant/#") as ha:
        ha.connect()
        # Left over from an earlier run with a device 'gone'.
        stale = f"homeassistant/sensor/{NODE}/gone_voltage/config"
        ha.publish(stale, json.dumps({"state_topic": "x", "unique_id": "u", "device": {"identifiers": ["g"]}}),
                   retain=True)
        cfg.write_text(config(tmp_path, mosquitto.port, ["d0"]))
        gw = fieldgate_proc("run", "-c", str(cfg))
        ha.wait_for(lambda: any(m.topic == stale and not m.payload for m in ha.messages), timeout=30,
                    what="the stale config cleared")
        assert stale not in ha.retained_map("homeassistant/#")
        gw.popen.send_signal(signal.SIGTERM)
        assert gw.popen.wait(30) == 0

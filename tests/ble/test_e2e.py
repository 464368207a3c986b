"""End to end: ``fieldgate run`` with BLE devices fed by the replay simulator, readings at a real mosquitto.

The gateway is a separate process with no radio and no D-Bus: its devices select hw-sim's
``ReplayScanner`` through the connection (``backend: replay``), exactly as ``make demo`` does
with the lines of ``ble_sim.demo_devices``. The replay includes a phone and a stranger's
RuuviTag; they must not appear at the broker.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fieldgate_hwsim.ble_sim import DEMO_NOTE, demo_devices

from tests.conftest import Proc
from tests.support.broker import Mosquitto
from tests.support.collector import Collector
from tests.support.contract import validate_message, validate_reading

DEMO_IDS = {"ble-thermo-bthome", "ble-ruuvi", "ble-lywsd03mmc", "ble-asset-tag"}


def test_gateway_process_publishes_replayed_ble_sensors(tmp_path: Path, mosquitto: Mosquitto,
                                                        fieldgate_proc: Callable[..., Proc]) -> None:
    lines = demo_devices(tmp_path / "demo", rate=20, rssi=-72)
    assert len(lines) == len(DEMO_IDS) and "sensors" in DEMO_NOTE
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-ble, data_dir: {tmp_path / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.port}, reconnect_min: 0.05s, reconnect_max: 0.2s}}\n"
        "buffer: {flush_interval: 50ms}\n"
        "web: {enabled: false}\n"
        "devices:\n" + "\n".join(lines) + "\n")
    with Collector.for_broker(mosquitto) as col:
        proc = fieldgate_proc("run", "-c", str(cfg))
        col.wait_for(lambda: {r["device"] for r in col.readings()} >= DEMO_IDS
                     and len(col.readings()) >= 12, timeout=20, what="readings of every BLE device")
        proc.popen.send_signal(signal.SIGTERM)  # a clean shutdown stops the shared scanner in time
        assert proc.popen.wait(15) == 0
    readings = col.readings()
    for msg in readings:
        validate_reading(msg)
        assert all(m["quality"] == "good" for m in msg["metrics"].values()), msg
        assert msg["metrics"]["rssi"]["value"] == -72
    assert {r["device"] for r in readings} == DEMO_IDS  # the phone and the stranger's tag never arrive
    for m in col.messages:
        validate_message(m.topic, m.payload)
        assert b"5E:11:22:33:44:55" not in m.payload and b"C1:00:00:00:00:99" not in m.payload
    temps = {r["metrics"]["temperature"]["value"] for r in readings if r["device"] == "ble-thermo-bthome"}
    assert 25.06 in temps and len(temps) > 1  # the published vector, then re-encrypted rounds with new counters
    assert not any("Traceback" in line or "still busy" in line for line in proc.stderr_lines)
    assert not any("54:48:E6:8F:80:A5" in line for line in proc.stderr_lines)  # addresses masked in logs
    assert any("xx:xx:xx:xx:80:A5" in line for line in proc.stderr_lines)


def test_simulator_cli(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "fieldgate_hwsim.ble_sim"]
    assert "--rssi" in subprocess.run([*run, "--help"], capture_output=True, text=True, check=True).stdout
    out = subprocess.run([*run, "--count", "2", "--rate", "100", "--rssi", "-80", "--only", "ruuvi,bthome-encrypted"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 4 and all('"rssi": -80' in line for line in out)
    assert '"ad": "0201061bff9904' in out[0]  # flags, then the manufacturer-data AD structure of 0x0499
    bad = subprocess.run([*run, "--only", "nope"], check=False, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown recording" in bad.stderr
    demo = subprocess.run([*run, "--demo-config", str(tmp_path)], capture_output=True, text=True, check=True)
    assert demo.stdout.count("driver: ble") == 4 and (tmp_path / "ble-bthome.key").stat().st_mode & 0o077 == 0

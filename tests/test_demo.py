"""`fieldgate demo` as a new user runs it: every simulated device comes online and the page answers."""

from __future__ import annotations

import json
import signal
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .conftest import Proc


def test_demo_runs_every_simulated_device_and_serves_the_status_page(
    tmp_path: Path, fieldgate_proc: Callable[..., Proc]
) -> None:
    p = fieldgate_proc("demo", "--dir", str(tmp_path / "demo"), env={"FIELDGATE_DEMO_WEB_PORT": "0"})
    lines: list[str] = []
    while not any(line.startswith("  stop:") for line in lines):
        lines.append(p.next_line(timeout=30))
    text = "".join(lines)
    assert "mosquitto_sub -h 127.0.0.1 -p " in text
    url = next(line.split(": ", 1)[1].strip() for line in lines if line.startswith("  status page:"))

    def devices() -> dict[str, dict[str, object]]:
        with urllib.request.urlopen(url + "api/v1/devices", timeout=5) as r:
            body = json.load(r)
        items = body["devices"] if isinstance(body, dict) else body
        return {d["id"]: d for d in items}

    # every device, of every driver, comes online (the report lines show it too)
    expected = {"energy-meter-1", "air-quality-1", "gully-level-1", "meter-tcp-1", "meter-rtu-1",
                "climate-rtu-2", "pm-1", "gnss-1", "ble-thermo-bthome", "ble-ruuvi", "ble-lywsd03mmc",
                "ble-asset-tag", "bin-level-1", "manhole-1", "climate-coap-1"}
    seen_online: set[str] = set()
    while seen_online != expected:
        line = p.next_line(timeout=30)
        parts = line.split()
        if len(parts) >= 2 and parts[0] in expected and parts[1] == "online":
            seen_online.add(parts[0])
    states = {k: v["state"] for k, v in devices().items()}
    assert set(states) == expected
    p.popen.send_signal(signal.SIGINT if sys.platform != "win32" else signal.SIGTERM)
    rc = p.popen.wait(20)
    assert rc == 0, "".join(p.stderr_lines[-60:])

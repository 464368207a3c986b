"""What the fleet tests share: a gateway config naming several brokers, and the status API's uplink."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from ..conftest import sim_device
from ..support.broker import Mosquitto


def fleet_config(data_dir: Path, brokers: list[Mosquitto], *, web_port: int, devices: int = 2,
                 interval: str = "0.05s", gw: str = "gw-f", extra: str = "", mqtt_extra: str = "") -> str:
    """A gateway with sim devices whose uplink lists ``brokers`` in ``mqtt.hosts``."""
    hosts = ", ".join(f"'{b.host}:{b.port}'" for b in brokers)
    return (
        f"gateway: {{id: {gw}, data_dir: {data_dir}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{hosts: [{hosts}], reconnect_min: 0.1s, reconnect_max: 0.5s, connect_timeout: 3s, keepalive: 5s"
        f"{mqtt_extra}}}\n"
        "buffer: {flush_interval: 50ms}\n"
        f"web: {{listen: '127.0.0.1:{web_port}'}}\n"
        f"{extra}"
        "devices:\n" + "".join(sim_device(f"d{i}", poll_interval=interval) for i in range(devices))
    )


def status_uplink(web_port: int) -> dict[str, Any] | None:
    """The running gateway's uplink as its status API reports it (None while the page is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/api/v1/status", timeout=5) as resp:
            doc: dict[str, Any] = json.load(resp)
    except OSError:
        return None
    return doc.get("uplink")

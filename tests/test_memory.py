"""Memory guards that are not timing tests: what the gateway imports, and when (issue 16's RSS target).

A module imported is memory kept for the life of the process: aiohttp alone is ~12 MiB of a
50 MB budget. So the run path imports nothing a configuration does not use, and the status page,
on by default, loads its HTTP server only when someone first connects to it; its history records
from the start, so the first visit still shows the time before it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Proc
from tests.support.broker import Mosquitto
from tests.support.collector import Collector
from tests.web.conftest import process_yaml, start_gateway_process

#: Modules that only some configurations need: never imported by the run path's own modules.
OPTIONAL = ("aiohttp", "google.protobuf", "fieldgate.sparkplug", "fieldgate.commands", "fieldgate.hass",
            "fieldgate.remote_config", "fieldgate.web.app", "fieldgate.uplink", "fieldgate.buffer")


def test_the_run_paths_modules_import_no_optional_part() -> None:
    code = ("import sys, fieldgate.app, fieldgate.runtime, fieldgate.cli, fieldgate.supervisor\n"
            f"print([m for m in {OPTIONAL!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == [], out.stdout


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as resp:  # the first request imports the server
        assert resp.status == 200
        doc: dict[str, object] = json.loads(resp.read())
        return doc


def test_the_status_page_loads_its_server_on_the_first_visit_and_shows_the_time_before_it(
        tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]) -> None:
    gw = start_gateway_process(fieldgate_proc, tmp_path / "gw", process_yaml(tmp_path / "gw", mqtt_port=mosquitto.port))
    col = Collector(mosquitto.host, mosquitto.port)
    col.connect()
    try:
        # Readings are flowing (and the page's history records them) before anyone looks.
        col.wait_for(lambda: len(col.readings()) >= 5, timeout=30, what="readings before the first visit")
        pid = gw.proc.popen.pid
        assert "aiohttp" not in _maps(pid), "aiohttp was loaded with nobody on the page"
        first_visit = time.time()
        doc = _get(f"{gw.url}/api/v1/devices/meter-1/history")
        assert "aiohttp" in _maps(pid)
        times = [t for m in doc["metrics"] for t in m["points"]["t"]]  # type: ignore[attr-defined]
        assert times and min(times) < first_visit - 0.1, "the history did not record before the first visit"
        status = _get(f"{gw.url}/api/v1/status")
        assert status["gateway"] == "gw-web"
        assert not any("Traceback" in line for line in gw.proc.stderr_lines), gw.lines()
    finally:
        col.disconnect()

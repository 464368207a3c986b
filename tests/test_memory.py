"""Memory guards that are not timing tests: what the gateway imports, and when (issue 16's RSS target).

A module imported is memory kept for the life of the process: aiohttp alone is ~12 MiB of a
50 MB budget. So the run path imports nothing a configuration does not use, and the status page,
on by default, loads its HTTP server only when someone first connects to it; its history records
from the start, so the first visit still shows the time before it.
"""

from __future__ import annotations

import json
import signal
import socket
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
    def start(*args: str) -> Proc:  # warnings shown: an unclosed socket of the deferred page is a finding
        return fieldgate_proc(*args, env={"PYTHONWARNINGS": "default"})

    gw = start_gateway_process(start, tmp_path / "gw", process_yaml(tmp_path / "gw", mqtt_port=mosquitto.port))
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
        gw.proc.popen.send_signal(signal.SIGTERM)
        assert gw.proc.popen.wait(30) == 0
        gw.proc.stop()  # joins the pipes' readers: every line is in
        assert not any("Traceback" in line or "Warning" in line for line in gw.proc.stderr_lines), gw.lines()
    finally:
        col.disconnect()


def test_a_taken_port_is_still_reported_at_start_up_and_the_gateway_runs_on(
        tmp_path: Path, fieldgate_proc: Callable[..., Proc]) -> None:
    # The page binds at start-up though its server loads later: the operator hears of it at once.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        folder = tmp_path / "gw"
        cfg = folder / "fieldgate.yaml"
        cfg.write_text(process_yaml(folder, web=f"{{listen: '127.0.0.1:{port}'}}"))
        p = fieldgate_proc("run", "-c", str(cfg), "--stdout")
        line = p.wait_stderr("status page cannot listen", timeout=30)
        assert f"127.0.0.1:{port}" in line and "another program uses this port" in "".join(p.stderr_lines)
        assert json.loads(p.next_line(timeout=30))["device"] in ("meter-1", "air-1")  # it runs on
        assert not any("Traceback" in x for x in p.stderr_lines)


def test_a_page_nobody_visited_closes_cleanly(tmp_path: Path, fieldgate_proc: Callable[..., Proc]) -> None:
    folder = tmp_path / "gw"
    gw = start_gateway_process(lambda *a: fieldgate_proc(*a, env={"PYTHONWARNINGS": "default"}), folder,
                               process_yaml(folder), stdout=True)
    assert json.loads(gw.proc.next_line(timeout=30))["device"] in ("meter-1", "air-1")
    assert "aiohttp" not in _maps(gw.proc.popen.pid)
    gw.proc.popen.send_signal(signal.SIGTERM)
    assert gw.proc.popen.wait(30) == 0
    gw.proc.stop()
    assert not any("Traceback" in line or "Warning" in line for line in gw.proc.stderr_lines), gw.lines()

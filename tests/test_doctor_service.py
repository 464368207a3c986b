"""``fieldgate doctor`` finds the running service without a fixed status-page port (issue 15).

Before: doctor looked for the service only at ``web.listen``, parsed with ``rpartition``; with
the page on port 0 (a port picked at start) or switched off it did not see the service at all
and opened the devices a second time, which for an exclusive serial port or a push endpoint
reads as a broken device. Now the service is found by its process (a ``fieldgate run`` of this
configuration, whatever the path was written as), and a page on port 0 by the port that
process listens on.

Real peers: the gateway runs as its own process (``fieldgate run``); doctor runs in the test
with the real clock check replaced (the kernel's sync state is not the test's to set).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

from fieldgate.doctor import Doctor, Finding

from tests.conftest import SIM_PROFILES, Proc

METER = SIM_PROFILES / "energy-meter.yaml"


def _config(tmp_path: Path, web: str) -> Path:
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-svc, data_dir: {tmp_path / 'data'}, clock_check: off}}\n"
        f"web: {web}\n"
        "devices:\n"
        f"  - {{id: meter-1, driver: sim, profile: {METER}, poll_interval: 0.2s}}\n")
    return cfg


def _doctor(cfg: Path, tmp_path: Path) -> dict[str, Finding]:
    findings = asyncio.run(Doctor(cfg, root=tmp_path, clock=lambda: True, timeout=3.0).run())
    return {f.check: f for f in findings}


def test_a_status_page_on_port_0_is_found_through_the_service_process(
        tmp_path: Path, fieldgate_proc: Callable[..., Proc]) -> None:
    cfg = _config(tmp_path, "{listen: '127.0.0.1:0'}")
    service = fieldgate_proc("run", "-c", str(cfg), "--stdout")
    line = service.wait_stderr("status page on", timeout=30)
    port = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert port, line
    service.next_line(timeout=30)  # a first reading: meter-1 is polled

    found = _doctor(cfg, tmp_path)
    running = found["service.running"]
    assert running.status == "ok", running
    assert f"pid {service.popen.pid}" in running.summary, running
    assert running.details["url"] == f"http://127.0.0.1:{port.group(1)}/api/v1", running
    meter = found["device:meter-1"]
    assert "held by the running service" in meter.summary and meter.details["from"] == "service", meter


def test_with_the_status_page_off_the_service_is_found_and_its_devices_left_alone(
        tmp_path: Path, fieldgate_proc: Callable[..., Proc]) -> None:
    cfg = _config(tmp_path, "{enabled: false}")
    # Started from its folder with a relative path: the same file, written another way.
    service = fieldgate_proc("run", "-c", cfg.name, "--stdout", cwd=tmp_path)
    service.next_line(timeout=30)

    found = _doctor(cfg, tmp_path)
    running = found["service.running"]
    assert running.status == "ok", running
    assert f"pid {service.popen.pid}" in running.summary and "status page is off" in running.summary, running
    meter = found["device:meter-1"]
    assert meter.status == "n/a", meter
    assert f"held by the running service (pid {service.popen.pid})" in meter.summary, meter
    assert meter.fix and "web" in meter.fix, meter


def test_no_service_running_means_the_devices_are_probed(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "{enabled: false}")
    found = _doctor(cfg, tmp_path)
    assert "service.running" not in found
    meter = found["device:meter-1"]
    assert meter.status == "ok" and "answered" in meter.summary, meter

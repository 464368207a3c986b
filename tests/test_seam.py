"""The driver seam as a third party meets it: only the required parts, loaded through entry points.

Real ``fieldgate`` subprocesses load ``tests/seam_plugin.py`` through a ``.dist-info`` on their
``PYTHONPATH``, as an installed plugin is loaded; the in-process tests ask the seam's hooks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fieldgate import driver as seam

from tests.conftest import REPO, Proc
from tests.seam_plugin import BareDriver, PushOnlyDriver


def _plugin_env(tmp_path: Path) -> dict[str, str]:
    dist = tmp_path / "site" / "fieldgate_test_seam-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fieldgate-test-seam\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[fieldgate.drivers]\npusher = tests.seam_plugin:PushOnlyDriver\nbare = tests.seam_plugin:BareDriver\n"
        "[fieldgate.scanners]\nbare = tests.seam_plugin:scan_main\n"
        "[fieldgate.simulators]\nbare = tests.seam_plugin:BareSimulator\n")
    return {"PYTHONPATH": os.pathsep.join([str(dist.parent), str(REPO)])}


def _config(tmp_path: Path, driver: str, connection: str = "") -> Path:
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(f"""\
gateway: {{id: gw-seam, data_dir: {tmp_path / 'data'}, clock_check: off}}
web: {{enabled: false}}
devices:
  - id: {driver}-1
    driver: {driver}
    poll_interval: 0.05
{connection}    profile:
      schema_version: 1
      driver: {driver}
      vendor: test
      model: plain
      points: [{{name: count}}]
""")
    return cfg


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fieldgate.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env}, cwd=REPO, check=False)


def test_a_push_only_driver_without_poll_runs(tmp_path: Path, fieldgate_proc: Callable[..., Proc]) -> None:
    proc = fieldgate_proc("run", "-c", str(_config(tmp_path, "pusher")), "--stdout", env=_plugin_env(tmp_path),
                          cwd=REPO)
    first = json.loads(proc.next_line(timeout=30))
    second = json.loads(proc.next_line(timeout=30))
    assert first["device"] == "pusher-1"
    assert second["metrics"]["count"]["value"] > first["metrics"]["count"]["value"]
    assert not [line for line in proc.stderr_lines if "Traceback" in line]


def test_validate_a_driver_without_connection(tmp_path: Path) -> None:
    env = _plugin_env(tmp_path)
    done = _cli("validate", str(_config(tmp_path, "bare")), env=env)
    assert done.returncode == 0, done.stderr
    assert "valid:" in done.stdout and "Traceback" not in done.stderr
    # Keys under `connection:` of a driver that takes none are a named error, not ignored.
    done = _cli("validate", str(_config(tmp_path, "bare", "    connection: {host: x}\n")), env=env)
    assert done.returncode == 1
    assert "connection.host" in done.stderr and "Traceback" not in done.stderr


def test_doctor_asks_each_drivers_own_checks(tmp_path: Path) -> None:
    """Host checks come from the driver's ``doctor()`` hook; core names no protocol."""
    done = _cli("doctor", "--json", "--no-devices", "--root", str(tmp_path), "-c", str(_config(tmp_path, "bare")),
                env=_plugin_env(tmp_path))
    assert "Traceback" not in done.stderr, done.stderr
    findings = {f["check"]: f for f in json.loads(done.stdout)["findings"]}
    assert findings["bare.host"]["summary"] == "bare host check for bare-1"
    assert findings["ble"]["status"] == "n/a"  # the BLE driver's hook, asked with no devices


def test_scan_finds_scanners_through_entry_points(tmp_path: Path) -> None:
    """``fieldgate scan NAME`` loads the ``fieldgate.scanners`` entry point; core imports no scanner by name."""
    env = _plugin_env(tmp_path)
    done = _cli("scan", "bare", "--port", "/dev/null", env=env)
    assert (done.returncode, done.stdout.strip()) == (0, "bare scan --port /dev/null"), done.stderr
    done = _cli("scan", "nothing", env=env)
    assert done.returncode == 2 and "no scanner for 'nothing'" in done.stderr and "bare, modbus" in done.stderr
    done = _cli("scan", "--help", env=env)
    assert done.returncode == 0 and "bare, modbus" in done.stdout


async def test_demo_devices_come_from_simulator_entry_points(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's devices are every installed ``fieldgate.simulators`` entry point's; core names none."""
    from fieldgate.demo import DemoDevices

    monkeypatch.syspath_prepend(_plugin_env(tmp_path)["PYTHONPATH"].split(os.pathsep)[0])
    sims = DemoDevices(tmp_path)
    await sims.start()
    try:
        assert any("bare-sim-1" in line for line in sims.config)
        assert f"bare: one simulated device ({tmp_path.name})" in sims.notes
        assert any("meter-tcp-1" in line for line in sims.config)  # the project's own, from hw-sim's entry points
    finally:
        await sims.stop()


def test_the_hooks_have_defaults_for_a_driver_that_offers_none() -> None:
    assert seam.connection_model(BareDriver) is seam.NoConnection
    assert seam.bus_key(BareDriver, seam.NoConnection()) is None
    assert not seam.is_passive(BareDriver)


def test_the_factory_picks_the_mode_class() -> None:
    """Drivers with modes declare a factory (``create``); core calls it, no ``__new__`` tricks."""
    from fieldgate.drivers.coap.driver import CoapDriver, CoapPollDriver, CoapPushDriver

    from tests.coap.conftest import make_ctx

    push = seam.create_driver(CoapDriver, make_ctx("dragino/ndds75", mode="push", listen="127.0.0.1:0"))
    poll = seam.create_driver(CoapDriver, make_ctx("dragino/ndds75", host="127.0.0.1", port=5683))
    assert type(push) is CoapPushDriver and isinstance(push, seam.ServiceDriver) and seam.is_passive(push)
    assert type(poll) is CoapPollDriver and not isinstance(poll, seam.ServiceDriver)
    assert not hasattr(push, "poll"), "a push driver carries no dummy poll"
    assert seam.raw_values(poll) == {} and seam.driver_status(BareDriver.__new__(BareDriver)) is None


def test_push_only_class_is_a_service_driver() -> None:
    assert isinstance(PushOnlyDriver.__new__(PushOnlyDriver), seam.ServiceDriver)

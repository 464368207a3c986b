"""The `fieldgate` command as a user runs it: exit codes, signals, reload."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import REPO, Proc, sim_device
from .support.contract import validate_reading


def fieldgate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fieldgate.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, check=False)


def test_validate_exit_codes_and_no_traceback(write_config: Callable[..., Path]) -> None:
    good = fieldgate("validate", str(REPO / "drivers" / "sim" / "example.yaml"))
    assert good.returncode == 0, good.stderr
    assert "valid:" in good.stdout
    bad = write_config("gateway: {id: g}\ndevices:\n  - {id: d, driver: simm, profile: x}\n  - {id: e}\n")
    r = fieldgate("validate", str(bad))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:3:27: devices[0].driver: unknown driver 'simm', did you mean 'sim'?") or \
        any("unknown driver 'simm', did you mean 'sim'?" in x for x in lines)
    assert any(x.startswith(f"{bad}:4:5: devices[1].driver: required key is missing") for x in lines), lines
    assert lines[-1].startswith("3 error(s)") or lines[-1].endswith(str(bad)), lines
    missing = fieldgate("validate", "/nonexistent/fieldgate.yaml")
    assert missing.returncode == 1
    assert "cannot read configuration" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_validate_profiles_on_their_own(tmp_path: Path) -> None:
    prof = tmp_path / "p.yaml"
    prof.write_text("schema_version: 1\ndriver: sim\nvendor: v\nmodel: m\npoints:\n  - {name: a, unit: degC}\n")
    r = fieldgate("validate", str(prof))
    assert r.returncode == 0, r.stderr
    assert "'degC' is not a SenML unit symbol" in r.stderr
    prof.write_text("schema_version: 2\ndriver: sim\nvendor: v\nmodel: m\npoints: []\n")
    r = fieldgate("validate", str(prof))
    assert r.returncode == 1
    assert f"{prof}:1:17: schema_version: unknown value 2" in r.stderr
    assert f"{prof}:5:9: points: " in r.stderr


def test_usage_errors_exit_2_and_help_everywhere() -> None:
    assert fieldgate("frobnicate").returncode == 2
    for cmd in ("run", "validate", "schema", "demo"):
        r = fieldgate(cmd, "--help")
        assert r.returncode == 0
        assert "usage: fieldgate" in r.stdout
    assert fieldgate("--version").stdout.startswith("fieldgate ")


def test_schema_commands_print_json_schema() -> None:
    cfg = json.loads(fieldgate("schema", "config").stdout)
    assert cfg["title"] == "fieldgate configuration"
    assert "devices" in cfg["properties"]
    prof = json.loads(fieldgate("schema", "profile").stdout)
    assert prof["title"] == "fieldgate device profile"
    assert "sim" in json.dumps(prof)


def _readings(p: Proc, n: int, device: str | None = None) -> list[dict[str, Any]]:
    out = []
    while len(out) < n:
        msg = json.loads(p.next_line(timeout=15))
        validate_reading(msg)
        if device is None or msg["device"] == device:
            out.append(msg)
    return out


def test_sigterm_stops_cleanly(write_config: Callable[..., Path], fieldgate_proc: Callable[..., Proc]) -> None:
    cfg = write_config("gateway: {id: gw1, clock_check: off}\ndevices:\n" + sim_device("a", poll_interval="0.1s")
                       + sim_device("stuck", poll_interval="0.1s", connection="{fail: hang}"))
    p = fieldgate_proc("run", "-c", str(cfg), "--stdout")
    _readings(p, 2)
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(15) == 0
    p.wait_stderr("stopped")
    assert not any("Traceback" in line for line in p.stderr_lines)


def test_sighup_applies_a_good_config_and_refuses_a_bad_one(
    write_config: Callable[..., Path], fieldgate_proc: Callable[..., Proc]
) -> None:
    head = "gateway: {id: gw1, clock_check: off}\ndevices:\n"
    cfg = write_config(head + sim_device("a", poll_interval="0.1s"))
    p = fieldgate_proc("run", "-c", str(cfg), "--stdout")
    _readings(p, 1, "a")
    cfg.write_text(head + sim_device("a", poll_interval="0.1s") + sim_device("b", poll_interval="0.1s"))
    p.popen.send_signal(signal.SIGHUP)
    _readings(p, 1, "b")
    p.wait_stderr("configuration reloaded: 1 added, 0 changed, 0 removed")
    cfg.write_text(head + sim_device("a", poll_interval="0.1s") + "  - {id: c, driver: sim, profil: x}\n")
    p.popen.send_signal(signal.SIGHUP)
    p.wait_stderr("keeping the running one")
    assert any("unknown key 'profil', did you mean 'profile'?" in line for line in p.stderr_lines)
    # both devices keep running on the old configuration
    _readings(p, 3, "a")
    _readings(p, 3, "b")
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(15) == 0

"""``fieldgate validate --for-service``: what fieldgate.service needs beyond a valid file.

Each test lays out a gateway's files in a temporary root (``--root``) and checks it
as the service user would meet it. The service user is ``nobody`` here (``--service-user``):
it exists on every Debian system, and it is not the user the tests run as (root), so
"the service user cannot read it" is a real permission check, not a guess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SIM_PROFILES

NOBODY_GID = 65534

GOOD = """\
gateway: {id: gw-1}
mqtt:
  host: broker.example.net
  username: gw-1
  password: {file: mqtt-password}
  tls: {ca_file: ca.crt}
devices:
  - {id: meter-1, driver: sim, profile: meter.yaml}
"""


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A gateway's files as ``fieldgate install`` and ``provision`` leave them, readable by the service user."""
    etc = tmp_path / "etc/fieldgate"
    etc.mkdir(parents=True)
    os.chmod(tmp_path / "etc", 0o755)
    # The image's own accounts: the service user is looked up there, not on the machine running the check.
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                         "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    os.chown(etc, 0, NOBODY_GID)
    os.chmod(etc, 0o750)
    state = tmp_path / "var/lib/fieldgate"
    state.mkdir(parents=True)
    os.chown(state, 65534, NOBODY_GID)
    os.chmod(state, 0o750)
    _write(etc / "fieldgate.yaml", GOOD, 0o640)
    _write(etc / "mqtt-password", "s3cret\n", 0o640)
    _write(etc / "ca.crt", "-----BEGIN CERTIFICATE-----\n", 0o644)
    _write(etc / "meter.yaml", (SIM_PROFILES / "energy-meter.yaml").read_text(), 0o640)
    return tmp_path


def _write(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    os.chown(path, 0, NOBODY_GID)
    os.chmod(path, mode)


def _validate(root: Path, *more: str) -> subprocess.CompletedProcess[str]:
    # A generous limit: a FIFO that blocks the check shows up as this timeout, not as a slow pass.
    return subprocess.run(
        [sys.executable, "-m", "fieldgate.cli", "validate", "--for-service", "--root", str(root),
         "--service-user", "nobody", *more, str(root / "etc/fieldgate/fieldgate.yaml")],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def test_a_good_layout_is_ready_for_the_service(root: Path) -> None:
    res = _validate(root)
    assert res.returncode == 0, res.stderr
    assert "ready for fieldgate.service" in res.stdout
    assert "Traceback" not in res.stderr


def test_every_problem_is_reported_at_once_with_file_and_line(root: Path) -> None:
    etc = root / "etc/fieldgate"
    text = GOOD.replace("gateway: {id: gw-1}", "gateway: {id: gw-1, data_dir: /opt/gw-data}") + (
        "web:\n  listen: 0.0.0.0:80\n  password: {file: web-password}\n")
    _write(etc / "fieldgate.yaml", text, 0o640)
    (etc / "ca.crt").unlink()
    os.chmod(etc / "mqtt-password", 0o644)  # a secret every user of the gateway may read
    _write(etc / "web-password", "hunter2\n", 0o640)

    res = _validate(root)
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr
    conf = str(etc / "fieldgate.yaml")
    ca = f"{conf}:{_line_of(text, 'ca_file')}:"
    assert any(ln.startswith(ca) and "mqtt.tls.ca_file" in ln and "not found" in ln for ln in err.splitlines()), err
    pw = f"{conf}:{_line_of(text, 'password: {file: mqtt-password}')}:"
    assert any(ln.startswith(pw) and "mqtt.password.file" in ln and "every user" in ln and "chmod" in ln
               for ln in err.splitlines()), err
    dd = f"{conf}:{_line_of(text, 'data_dir')}:"
    assert any(ln.startswith(dd) and "gateway.data_dir" in ln and "/var/lib/fieldgate" in ln
               for ln in err.splitlines()), err
    web = f"{conf}:{_line_of(text, 'listen')}:"
    assert any(ln.startswith(web) and "web.listen" in ln and "port 80" in ln for ln in err.splitlines()), err
    assert "4 error(s)" in err
    assert "s3cret" not in err + res.stdout and "hunter2" not in err + res.stdout  # secrets never printed


def test_a_fifo_named_as_ca_file_is_refused_not_waited_on(root: Path) -> None:
    ca = root / "etc/fieldgate/ca.crt"
    ca.unlink()
    os.mkfifo(ca)
    res = _validate(root)  # opening it would block: the check must only look at what it is
    assert res.returncode == 1
    assert "mqtt.tls.ca_file" in res.stderr and "named pipe (FIFO)" in res.stderr


def test_no_mqtt_section_is_refused(root: Path) -> None:
    text = "gateway: {id: gw-1}\ndevices:\n  - {id: meter-1, driver: sim, profile: meter.yaml}\n"
    _write(root / "etc/fieldgate/fieldgate.yaml", text, 0o640)
    plain = subprocess.run([sys.executable, "-m", "fieldgate.cli", "validate",
                            str(root / "etc/fieldgate/fieldgate.yaml")],
                           capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert plain.returncode == 0, plain.stderr  # fine for `run --stdout` trials
    res = _validate(root)
    assert res.returncode == 1
    assert f"{root}/etc/fieldgate/fieldgate.yaml:1:1: mqtt: " in res.stderr
    assert "no 'mqtt' section" in res.stderr


def test_files_the_service_user_cannot_read_are_named(root: Path) -> None:
    os.chmod(root / "etc/fieldgate/meter.yaml", 0o600)  # root's only
    res = _validate(root)
    assert res.returncode == 1
    line = next(ln for ln in res.stderr.splitlines() if "devices[0].profile" in ln)
    assert "the service user nobody cannot read it" in line and "0600" in line


def test_data_dir_the_service_user_cannot_write(root: Path) -> None:
    state = root / "var/lib/fieldgate"
    os.chown(state, 0, 0)
    os.chmod(state, 0o755)
    res = _validate(root)
    assert res.returncode == 1
    assert "gateway.data_dir" in res.stderr and "nobody cannot write" in res.stderr


def test_data_dir_not_yet_created_is_fine_below_the_state_directory(root: Path) -> None:
    # systemd creates StateDirectory=fieldgate owned by the service user when the service starts.
    (root / "var/lib/fieldgate").rmdir()
    res = _validate(root)
    assert res.returncode == 0, res.stderr


def test_files_the_sandbox_hides_are_refused(root: Path) -> None:
    home = root / "home/pi/profiles"
    home.mkdir(parents=True)
    text = GOOD.replace("gateway: {id: gw-1}", "gateway: {id: gw-1, profile_dirs: [/home/pi/profiles]}")
    _write(root / "etc/fieldgate/fieldgate.yaml", text, 0o640)
    res = _validate(root)
    assert res.returncode == 1
    assert "gateway.profile_dirs[0]" in res.stderr and "ProtectHome" in res.stderr


def test_a_missing_service_user_is_said_not_guessed(root: Path) -> None:
    res = _validate(root, "--service-user", "fieldgate-nonexistent")
    assert res.returncode == 0, res.stderr
    assert "user fieldgate-nonexistent does not exist here" in res.stderr and "warning:" in res.stderr


def test_for_service_needs_a_configuration(root: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "fieldgate.cli", "validate", "--for-service",
                          "--profile", str(SIM_PROFILES / "energy-meter.yaml")],
                         capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert res.returncode == 2
    assert "--for-service checks a configuration" in res.stderr


def test_a_secret_from_the_environment_needs_it_in_the_unit(root: Path) -> None:
    text = GOOD.replace("password: {file: mqtt-password}", "password: {env: FG_MQTT_PASSWORD}")
    _write(root / "etc/fieldgate/fieldgate.yaml", text, 0o640)
    res = _validate(root)
    assert res.returncode == 0, res.stderr  # a warning: the variable may come from elsewhere
    line = next(ln for ln in res.stderr.splitlines() if "mqtt.password.env" in ln)
    assert "warning:" in line and "FG_MQTT_PASSWORD" in line and "systemctl edit fieldgate" in line, line

    dropin = root / "etc/systemd/system/fieldgate.service.d"
    dropin.mkdir(parents=True)
    (dropin / "secrets.conf").write_text("[Service]\nEnvironment=FG_MQTT_PASSWORD=from-the-drop-in\n")
    res = _validate(root)
    assert res.returncode == 0 and "FG_MQTT_PASSWORD" not in res.stderr, res.stderr
    assert "from-the-drop-in" not in res.stderr + res.stdout


def test_a_status_page_off_loopback_without_a_password_is_refused(root: Path) -> None:
    text = GOOD + "web: {listen: '0.0.0.0:8080'}\n"
    _write(root / "etc/fieldgate/fieldgate.yaml", text, 0o640)
    res = _validate(root)
    assert res.returncode == 1
    line = next(ln for ln in res.stderr.splitlines() if ": web" in ln)
    assert line.startswith(f"{root}/etc/fieldgate/fieldgate.yaml:{_line_of(text, 'web:')}:"), line
    assert "set web.password" in line, line

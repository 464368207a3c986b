"""``fieldgate provision`` refuses what the service would refuse (the checks of ``validate --for-service``).

A temporary root stands for the gateway: ``boot/firmware`` (the FAT partition), its
``etc`` (with the image's own passwd and group, where the service user is looked up)
and ``var/lib``. The files on the boot partition are installed by provision itself,
with safe modes, so only what the file names elsewhere on the gateway is judged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SIM_PROFILES

# The tests run as root; the service user must be someone else for "may it read this" to mean anything.
PASSWD = "root:x:0:0:root:/root:/bin/sh\nfieldgate:x:998:998::/var/lib/fieldgate:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nfieldgate:x:998:\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "boot/firmware").mkdir(parents=True)
    etc = tmp_path / "etc/fieldgate"
    etc.mkdir(parents=True)
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/group").write_text(GROUP)
    os.chown(etc, 0, 998)
    os.chmod(etc, 0o750)
    return tmp_path


def _provision(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fieldgate.cli", "provision", "--root", str(root)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def _place(root: Path, text: str) -> Path:
    boot = root / "boot/firmware"
    (boot / "fieldgate.yaml").write_text(text)
    (boot / "meter.yaml").write_bytes((SIM_PROFILES / "energy-meter.yaml").read_bytes())
    return boot


def test_what_the_service_would_refuse_is_refused_at_provisioning(root: Path) -> None:
    """No mqtt section, a FIFO as CA and a world-readable key on the gateway: refused, all three named."""
    etc = root / "etc/fieldgate"
    os.mkfifo(etc / "ca.crt")
    (etc / "client.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    os.chmod(etc / "client.key", 0o644)
    (etc / "fieldgate.yaml").write_text("gateway: {id: old}\nmqtt: {host: old.example}\n")
    text = ("gateway: {id: cabinet-7}\n"
            "web:\n  listen: 127.0.0.1:8080\n"
            "devices:\n  - {id: meter-1, driver: sim, profile: meter.yaml}\n")
    boot = _place(root, text)
    res = _provision(root)
    assert res.returncode == 1, res.stdout + res.stderr
    errors = (boot / "fieldgate.yaml.errors.txt").read_text()
    assert "fieldgate.yaml:1:1: mqtt: no 'mqtt' section" in errors

    # The same file with an mqtt section naming files on the gateway: the two TLS problems are named.
    text = text.replace("web:", "mqtt:\n  host: broker.example\n  tls: {ca_file: /etc/fieldgate/ca.crt, "
                        "cert_file: /etc/fieldgate/ca.crt, key_file: /etc/fieldgate/client.key}\nweb:")
    (boot / "fieldgate.yaml").write_text(text)
    res = _provision(root)
    assert res.returncode == 1, res.stdout + res.stderr
    errors = (boot / "fieldgate.yaml.errors.txt").read_text()
    assert "mqtt.tls.ca_file: /etc/fieldgate/ca.crt is a named pipe (FIFO)" in errors
    assert "mqtt.tls.key_file: /etc/fieldgate/client.key holds a secret and every user" in errors
    # Nothing changed on the gateway; the source waits to be fixed.
    assert (etc / "fieldgate.yaml").read_text() == "gateway: {id: old}\nmqtt: {host: old.example}\n"
    assert (boot / "fieldgate.yaml").exists()


def test_a_data_dir_the_service_user_cannot_write_is_refused(root: Path) -> None:
    data = root / "var/lib/fieldgate"
    data.mkdir(parents=True)
    os.chmod(data, 0o755)  # root's, as a hand-made folder would be
    boot = _place(root, "gateway: {id: cabinet-7}\nmqtt: {host: broker.example}\n"
                  "devices:\n  - {id: meter-1, driver: sim, profile: meter.yaml}\n")
    res = _provision(root)
    assert res.returncode == 1
    errors = (boot / "fieldgate.yaml.errors.txt").read_text()
    assert "gateway.data_dir: the service user fieldgate cannot write in /var/lib/fieldgate" in errors

    os.chown(data, 998, 998)
    res = _provision(root)
    assert res.returncode == 0, (boot / "fieldgate.yaml.errors.txt").read_text()
    assert (root / "etc/fieldgate/fieldgate.yaml").exists()

"""docs/installing.md, followed as written: its example files provision cleanly in a temporary root."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

DOC = REPO / "docs" / "installing.md"


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)


def _provision(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fieldgate.cli", "provision", "--root", str(root)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def test_boot_partition_example_is_applied(tmp_path: Path) -> None:
    boot = tmp_path / "boot/firmware"
    (boot / "certs").mkdir(parents=True)
    (tmp_path / "etc/fieldgate").mkdir(parents=True)
    (boot / "fieldgate.yaml").write_text(_yaml_blocks()[0])
    (boot / "mqtt-password").write_text("pw\n")  # as the tree in the doc shows
    (boot / "certs/ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    res = _provision(tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "etc/fieldgate/certs/ca.crt").exists()
    assert (tmp_path / "etc/fieldgate/mqtt-password").exists()


def test_cloud_init_example_is_applied(tmp_path: Path) -> None:
    cloud = yaml.safe_load(_yaml_blocks()[1])
    for item in cloud["write_files"]:
        target = tmp_path / item["path"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(item["content"])
    (tmp_path / "etc/fieldgate").mkdir(parents=True)
    res = _provision(tmp_path)
    assert res.returncode == 0, res.stderr
    assert "cabinet-7" in (tmp_path / "etc/fieldgate/fieldgate.yaml").read_text()
    assert not (tmp_path / "boot/firmware/mqtt-password").exists()


def test_documented_commands_exist() -> None:
    text = DOC.read_text()
    help_text = subprocess.run([sys.executable, "-m", "fieldgate.cli", "--help"], capture_output=True, text=True,
                               timeout=60, cwd=REPO, check=False).stdout
    for cmd in ("install", "uninstall", "provision", "doctor"):
        assert f"fieldgate {cmd}" in text and cmd in help_text
    assert re.search(r"rates it\s+\*\*\d\.\d OK\*\*", text)

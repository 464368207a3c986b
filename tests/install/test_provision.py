"""First-boot provisioning in a temporary root: a good file, a bad file, a repeated boot.

The root holds ``boot/firmware`` (the FAT partition an installer writes) and ``etc/fieldgate``;
``fieldgate provision --root`` runs as fieldgate-provision.service runs it at boot.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fieldgate.provision import Provisioner

from tests.conftest import REPO, SIM_PROFILES

GOOD = """\
gateway: {id: cabinet-7}
mqtt:
  host: broker.example.net
  username: cabinet-7
  password: {file: mqtt-password}
  tls: {ca_file: certs/ca.crt}
devices:
  - {id: meter-1, driver: sim, profile: profiles/meter.yaml}
"""

BAD = """\
gateway: {id: cabinet-7}
mqtt:
  host: broker.example.net
  prot: 1883
devices:
  - {id: meter-1, driver: simm, profile: x/y}
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "boot/firmware").mkdir(parents=True)
    (tmp_path / "etc/fieldgate").mkdir(parents=True)
    return tmp_path


def _provision(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fieldgate.cli", "provision", "--root", str(root)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def _place_good(root: Path) -> Path:
    boot = root / "boot/firmware"
    (boot / "fieldgate.yaml").write_text(GOOD)
    (boot / "mqtt-password").write_text("s3cret\n")
    (boot / "certs").mkdir()
    (boot / "certs/ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (boot / "profiles").mkdir()
    (boot / "profiles/meter.yaml").write_bytes((SIM_PROFILES / "energy-meter.yaml").read_bytes())
    return boot


def test_good_file_is_applied_atomically_and_renamed(root: Path) -> None:
    old = root / "etc/fieldgate/fieldgate.yaml"
    old.write_text("gateway: {id: old}\n")
    boot = _place_good(root)

    res = _provision(root)
    assert res.returncode == 0, res.stderr
    etc = root / "etc/fieldgate"
    assert (etc / "fieldgate.yaml").read_text() == GOOD
    assert (etc / "fieldgate.yaml.previous").read_text() == "gateway: {id: old}\n"
    # Companions moved: installed with the same relative names, gone from the world-readable FAT partition.
    assert (etc / "mqtt-password").read_text() == "s3cret\n"
    assert (etc / "certs/ca.crt").exists() and (etc / "profiles/meter.yaml").exists()
    assert (etc / "mqtt-password").stat().st_mode & 0o777 == 0o640
    assert not (boot / "mqtt-password").exists() and not (boot / "certs").exists()
    # The source renamed, so the next boot does not apply it again; no temporary files left anywhere.
    assert not (boot / "fieldgate.yaml").exists()
    applied = list(boot.glob("fieldgate.yaml.applied-*"))
    assert len(applied) == 1 and applied[0].read_text() == GOOD
    assert not list(root.rglob(".*.tmp"))
    # What landed in /etc is a valid configuration whose relative names resolve there.
    check = subprocess.run([sys.executable, "-m", "fieldgate.cli", "validate", str(etc / "fieldgate.yaml")],
                           capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert check.returncode == 0, check.stderr


def test_bad_file_is_refused_with_errors_next_to_it_and_config_untouched(root: Path) -> None:
    current = root / "etc/fieldgate/fieldgate.yaml"
    current.write_text("gateway: {id: running}\n")
    boot = root / "boot/firmware"
    (boot / "fieldgate.yaml").write_text(BAD)

    res = _provision(root)
    assert res.returncode == 1
    assert current.read_text() == "gateway: {id: running}\n"
    assert not (root / "etc/fieldgate/fieldgate.yaml.previous").exists()
    assert (boot / "fieldgate.yaml").read_text() == BAD  # left in place to be fixed
    errors = (boot / "fieldgate.yaml.errors.txt").read_text()
    src = boot / "fieldgate.yaml"
    assert f"{src}:4:3: mqtt.prot:" in errors  # file:line:col: key path
    assert f"{src}:6:" in errors and "simm" in errors and "did you mean 'sim'" in errors
    assert "keeps its previous configuration" in errors
    assert "refused" in res.stderr and f"{src}:4:3" in res.stderr  # also on stderr, i.e. the journal
    assert res.stderr.count(f"{src}:4:3") == 1  # once: the journal gets each error one time

    # Fixed and provisioned again: applied, and the stale error file goes away.
    _place_good(root)
    assert _provision(root).returncode == 0
    assert not (boot / "fieldgate.yaml.errors.txt").exists()
    assert current.read_text() == GOOD


def test_repeated_boot_does_not_apply_twice(root: Path) -> None:
    _place_good(root)
    assert _provision(root).returncode == 0
    etc_conf = root / "etc/fieldgate/fieldgate.yaml"
    etc_conf.write_text(GOOD + "# edited on the gateway after provisioning\n")

    again = _provision(root)  # the next boot
    assert again.returncode == 0 and "nothing to provision" in again.stdout
    assert etc_conf.read_text().endswith("# edited on the gateway after provisioning\n")
    assert len(list((root / "boot/firmware").glob("fieldgate.yaml.applied-*"))) == 1


def test_missing_companion_and_absolute_boot_path_are_refused(root: Path) -> None:
    boot = _place_good(root)
    (boot / "mqtt-password").unlink()
    text = GOOD.replace("certs/ca.crt", str(boot / "certs/ca.crt"))
    (boot / "fieldgate.yaml").write_text(text)  # mqtt-password not copied, CA named absolutely
    out = Provisioner([boot], root / "etc/fieldgate", root).run()
    assert out.status == "refused"
    messages = [d.message for d in out.diagnostics]
    assert any("file not found" in m and "mqtt-password" in m for m in messages)
    assert any("write it relative to fieldgate.yaml, as 'certs/ca.crt'" in m for m in messages)
    assert not (root / "etc/fieldgate/fieldgate.yaml").exists()


def test_failed_install_leaves_the_running_config_and_the_source(root: Path) -> None:
    """A companion that cannot be written stops before the configuration is replaced."""
    current = root / "etc/fieldgate/fieldgate.yaml"
    current.write_text("gateway: {id: running}\n")
    boot = _place_good(root)
    (root / "etc/fieldgate/mqtt-password").mkdir()  # in the way: the rename onto it fails
    out = Provisioner([boot], root / "etc/fieldgate", root).run()
    assert out.status == "failed" and out.exit_code == 3
    assert current.read_text() == "gateway: {id: running}\n"
    assert (boot / "fieldgate.yaml").exists() and (boot / "mqtt-password").exists()


def test_symbolic_links_on_the_boot_partition_are_refused(root: Path, tmp_path: Path) -> None:
    """A link there could copy any file of the gateway into /etc/fieldgate (or its errors onto the FAT)."""
    private = tmp_path / "private-key"
    private.write_text("-----BEGIN PRIVATE KEY-----\n")
    boot = _place_good(root)
    (boot / "mqtt-password").unlink()
    (boot / "mqtt-password").symlink_to(private)
    out = Provisioner([boot], root / "etc/fieldgate", root).run()
    assert out.status == "refused"
    assert any("mqtt-password" in d.message and "symbolic link" in d.message for d in out.diagnostics), out
    assert not (root / "etc/fieldgate/mqtt-password").exists()

    (boot / "mqtt-password").unlink()
    (boot / "mqtt-password").write_text("s3cret\n")
    (boot / "lib/acme").mkdir(parents=True)
    (boot / "lib/acme/meter.yaml").symlink_to(private)  # inside a companion folder
    (boot / "fieldgate.yaml").write_text(GOOD.replace("{id: cabinet-7}", "{id: cabinet-7, profile_dirs: [lib]}"))
    out = Provisioner([boot], root / "etc/fieldgate", root).run()
    assert out.status == "refused"
    assert any("lib/acme/meter.yaml" in d.message and "symbolic link" in d.message for d in out.diagnostics), out
    assert not (root / "etc/fieldgate/lib").exists()

    src = root / "boot/firmware/fieldgate.yaml"
    real = tmp_path / "elsewhere.yaml"
    real.write_text(GOOD)
    src.unlink(missing_ok=True)
    src.symlink_to(real)
    out = Provisioner([boot], root / "etc/fieldgate", root).run()
    assert out.status == "refused"
    assert any("symbolic link" in d.message for d in out.diagnostics), out

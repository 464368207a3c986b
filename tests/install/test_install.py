"""``fieldgate install`` / ``uninstall`` in a temporary root: idempotent, data kept, upgrades continue seq.

The venv and pip steps go through the installer's command seam (``Installer(run=...)``): the venv is
made for real (``python -m venv --without-pip``, fast, offline) and the pip step writes the
``fieldgate`` launcher a real ``pip install`` would, recording the requested spec, because a real
pip install of the package takes longer than this suite's budget. ``--use-current`` runs end to end
through the CLI with nothing stood in for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from fieldgate.buffer import Buffer
from fieldgate.install import Installer, render_units

from tests.conftest import REPO


class PipSeam:
    """Runs ``venv`` for real; stands in for ``pip install`` (records the spec, writes the launcher)."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, cmd: Sequence[str]) -> None:
        cmd = list(cmd)
        self.commands.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            subprocess.run([*cmd[:3], "--without-pip", *cmd[3:]], check=True, timeout=60)
        elif Path(cmd[0]).name == "pip" and "install" in cmd:
            prefix = Path(cmd[0]).parent.parent
            marker = prefix / "installed-spec"
            if marker.exists() and marker.read_text() == cmd[-1]:
                return  # pip: "Requirement already satisfied"
            launcher = prefix / "bin" / "fieldgate"
            launcher.write_text(f"#!{prefix}/bin/python\nfrom fieldgate.cli import main\nraise SystemExit(main())\n")
            launcher.chmod(0o755)
            marker.write_text(cmd[-1])
        else:
            raise AssertionError(f"unexpected command {cmd}")


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path below ``root`` with its kind, mode and content (or link target)."""
    out: dict[str, tuple[object, ...]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", st.st_mode)
        else:
            out[rel] = ("file", st.st_mode, p.read_bytes(), st.st_mtime_ns)
    return out


def test_install_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    seam = PipSeam()
    first = Installer(tmp_path, run=seam).install(spec="fieldgate[all]==1.0")
    assert {s.action for s in first} >= {"created", "skipped"}
    for name, text in render_units().items():  # exactly the files in systemd/
        assert (tmp_path / "etc/systemd/system" / name).read_text() == text
        assert (REPO / "systemd" / name).read_text() == text
        link = tmp_path / "etc/systemd/system/multi-user.target.wants" / name
        assert os.readlink(link) == f"/etc/systemd/system/{name}"
    for d in ("etc/fieldgate", "var/lib/fieldgate", "var/log/fieldgate"):
        assert (tmp_path / d).stat().st_mode & 0o777 == 0o750
    before = snapshot(tmp_path)

    second = Installer(tmp_path, run=seam).install(spec="fieldgate[all]==1.0")
    changed = [str(s) for s in second if s.action in ("created", "updated", "removed")]
    assert changed == []
    assert snapshot(tmp_path) == before


def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    Installer(tmp_path, run=PipSeam()).install(spec="fieldgate")
    (tmp_path / "etc/fieldgate/fieldgate.yaml").write_text("gateway: {id: gw-1}\n")
    (tmp_path / "var/lib/fieldgate/buffer.db").write_bytes(b"readings")

    steps = Installer(tmp_path).uninstall()
    assert not (tmp_path / "opt/fieldgate").exists()
    assert not list((tmp_path / "etc/systemd/system").rglob("fieldgate*"))
    assert not (tmp_path / "etc/modules-load.d/fieldgate.conf").exists()
    assert (tmp_path / "etc/fieldgate/fieldgate.yaml").read_text() == "gateway: {id: gw-1}\n"
    assert (tmp_path / "var/lib/fieldgate/buffer.db").read_bytes() == b"readings"
    assert any(s.action == "kept" and "--purge" in s.note for s in steps)

    again = Installer(tmp_path).uninstall()  # nothing left to remove
    assert [s for s in again if s.action == "removed"] == []

    Installer(tmp_path).uninstall(purge=True)
    for d in ("etc/fieldgate", "var/lib/fieldgate", "var/log/fieldgate"):
        assert not (tmp_path / d).exists()


def test_upgrade_keeps_config_buffer_and_seq_continuity(tmp_path: Path) -> None:
    seam = PipSeam()
    Installer(tmp_path, run=seam).install(spec="fieldgate[all]==1.0")
    config = tmp_path / "etc/fieldgate/fieldgate.yaml"
    config.write_text("gateway: {id: gw-1}\nmqtt: {host: broker.example}\n")
    (tmp_path / "etc/fieldgate/ca.crt").write_text("CA")
    data = tmp_path / "var/lib/fieldgate"
    events: list[dict[str, object]] = []
    with Buffer(data, on_event=events.append) as buf:
        seqs = buf.append_many([("m1", 1_700_000_000_000 + i, json.dumps({"i": i})) for i in range(5)])
        buf.ack(seqs[:2])
    hwm = (data / "seq.hwm").read_text()
    config_before = config.read_bytes()

    steps = Installer(tmp_path, run=seam).install(spec="fieldgate[all]==2.0")  # the upgrade
    assert (tmp_path / "opt/fieldgate/installed-spec").read_text() == "fieldgate[all]==2.0"
    assert any("pip install --upgrade fieldgate[all]==2.0" in s.target for s in steps)
    assert config.read_bytes() == config_before
    assert (tmp_path / "etc/fieldgate/ca.crt").read_text() == "CA"
    assert (data / "seq.hwm").read_text() == hwm

    with Buffer(data, on_event=events.append) as buf:
        waiting = buf.read(0, 100)
        assert [r.seq for r in waiting] == seqs[2:]
        assert [json.loads(r.body)["i"] for r in waiting] == [2, 3, 4]
        assert buf.append_many([("m1", 1_700_000_001_000, "{}")]) == [seqs[-1] + 1]  # no jump, no reuse
    assert not [e for e in events if e.get("event") == "buffer_seq_jump"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fieldgate.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, check=False)


def test_cli_install_use_current_is_idempotent_and_uninstall_keeps_data(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = _cli("install", "--root", str(root), "--use-current")
    assert first.returncode == 0, first.stderr
    assert "created   /etc/systemd/system/fieldgate.service" in first.stdout
    assert "next: put fieldgate.yaml on the boot partition" in first.stdout
    exe = Path(sys.prefix) / "bin" / "fieldgate"
    unit = (root / "etc/systemd/system/fieldgate.service").read_text()
    assert f"ExecStart={exe} run -c /etc/fieldgate/fieldgate.yaml" in unit
    before = snapshot(root)

    second = _cli("install", "--root", str(root), "--use-current")
    assert second.returncode == 0, second.stderr
    assert not [ln for ln in second.stdout.splitlines() if ln.startswith(("created", "updated", "removed"))]
    assert snapshot(root) == before

    (root / "var/lib/fieldgate/buffer.db").write_bytes(b"x")
    out = _cli("uninstall", "--root", str(root))
    assert out.returncode == 0, out.stderr
    assert (root / "var/lib/fieldgate/buffer.db").exists()
    assert not (root / "etc/systemd/system/fieldgate.service").exists()
    assert exe.exists()  # --use-current: the installation in use is not removed


def test_install_on_the_live_system_needs_root() -> None:
    """Without ``--root``, a user who is not root is told to use sudo and nothing is touched."""
    cmd = [sys.executable, "-m", "fieldgate.cli", "install"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert res.returncode == 3 and "run as root: sudo fieldgate" in res.stderr, res.stderr

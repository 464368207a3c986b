"""The unit files: the same text in systemd/ and in ``fieldgate install``, valid, hardened.

``systemd-analyze verify`` needs every ExecStart binary to exist, so the units are checked as
``fieldgate install --root`` writes them for an executable that does exist (the test's
interpreter's ``fieldgate``); the hardening is rated on systemd/fieldgate.service itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fieldgate.install import PROVISION_UNIT, SERVICE_UNIT, render_units

from tests.conftest import REPO

ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
needs_analyze = pytest.mark.skipif(not Path(ANALYZE).exists(),
                                   reason="systemd-analyze missing: apt-get install systemd")
RATINGS = ("PERFECT", "SAFE", "OK")  # systemd's words for an exposure up to 4.9


def test_repository_units_equal_what_install_writes() -> None:
    for name, text in render_units().items():
        assert (REPO / "systemd" / name).read_text() == text, f"systemd/{name} differs from fieldgate.install"
    assert sorted(p.name for p in (REPO / "systemd").glob("*.service")) == sorted(render_units())


def test_unit_essentials() -> None:
    svc = render_units()[SERVICE_UNIT]
    for line in ("Type=notify", "WatchdogSec=30s", "Restart=always", "StartLimitBurst=10", "User=fieldgate",
                 "SupplementaryGroups=dialout bluetooth", "StateDirectory=fieldgate",
                 "ConfigurationDirectory=fieldgate",
                 "LogsDirectory=fieldgate", "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "CapabilityBoundingSet=",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK"):
        assert re.search(rf"^{re.escape(line)}$", svc, re.M), line
    # adjtimex (the read-only clock check) must come after the deny list that would remove it.
    filters = re.findall(r"^SystemCallFilter=(.*)$", svc, re.M)
    assert filters.index("adjtimex") > filters.index("~@privileged @resources")
    prov = render_units()[PROVISION_UNIT]
    assert "Before=fieldgate.service" in prov and "ExecStart=/opt/fieldgate/bin/fieldgate provision" in prov


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = Path(sys.prefix) / "bin" / "fieldgate"
    assert exe.exists()
    for name, text in render_units(exe).items():
        (tmp_path / name).write_text(text)
    units = [str(tmp_path / n) for n in render_units()]
    res = subprocess.run([ANALYZE, "verify", *units], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fieldgate" not in res.stderr, res.stderr  # no warnings about our units either

    # The check has teeth: a misspelt directive fails it.
    (tmp_path / SERVICE_UNIT).write_text(render_units(exe)[SERVICE_UNIT].replace("WatchdogSec=", "WatchDogSec="))
    bad = subprocess.run([ANALYZE, "verify", units[0]], capture_output=True, text=True, timeout=60, check=False)
    assert "WatchDogSec" in bad.stderr


def _exposure(unit: Path) -> tuple[float, str]:
    res = subprocess.run([ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                         timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", res.stdout)
    assert m, res.stdout[-2000:] + res.stderr
    return float(m.group(1)), m.group(2)


@needs_analyze
def test_security_exposure_rated_ok_or_better() -> None:
    score, rating = _exposure(REPO / "systemd" / SERVICE_UNIT)
    print(f"fieldgate.service exposure {score} {rating}")
    assert rating in RATINGS and score <= 2.0, (score, rating)
    # The number in the unit's comment is the measured one.
    assert f"rates this {score} {rating}" in render_units()[SERVICE_UNIT]
    assert f"**{score} {rating}**" in (REPO / "docs" / "installing.md").read_text()
    score, rating = _exposure(REPO / "systemd" / PROVISION_UNIT)
    assert rating in RATINGS, (score, rating)

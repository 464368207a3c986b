"""The example third-party package: built, installed beside fieldgate, loaded through entry points, conformant.

It is built from a copy (a build writes build/ and *.egg-info into its source) and installed with
``--target`` into a folder that only the subprocesses below put on their path, so this venv stays as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "fieldgate-example-driver"


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, cwd=cwd,
                         env={**os.environ, **(env or {})}, check=False)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a Python that sees fieldgate and the installed example package."""
    tmp = tmp_path_factory.mktemp("example")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ".", "-w", "dist", cwd=src)
    (built,) = (src / "dist").glob("*.whl")
    site = tmp / "site"
    _run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site, built, cwd=tmp)
    return {"PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}


def test_polled_driver_and_profile_pack_load_through_entry_points(installed: dict[str, str], tmp_path: Path) -> None:
    code = (
        "from fieldgate.driver import load_driver\n"
        "from fieldgate.config import library_profiles\n"
        "print(load_driver('example-counter').__module__)\n"
        "print('acme/counter-3000' in library_profiles())\n"
    )
    out = _run(sys.executable, "-c", code, cwd=tmp_path, env=installed).stdout.split()
    assert out == ["fieldgate_example.counter.driver", "True"]


def test_push_only_driver_loads_through_entry_points(installed: dict[str, str], tmp_path: Path) -> None:
    code = "from fieldgate.driver import load_driver\nprint(load_driver('example-ticker').__module__)\n"
    out = _run(sys.executable, "-c", code, cwd=tmp_path, env=installed).stdout.split()
    assert out == ["fieldgate_example.ticker.driver"]


def test_the_example_config_validates_with_the_pack_profile(installed: dict[str, str], tmp_path: Path) -> None:
    example = Path(installed["PYTHONPATH"]) / "fieldgate_example" / "counter" / "example.yaml"
    res = _run(sys.executable, "-m", "fieldgate.cli", "validate", example, cwd=tmp_path, env=installed)
    assert "acme/counter-3000" not in res.stderr, res.stderr


def _conformance(installed: dict[str, str], tmp_path: Path, cls: str) -> str:
    tests = EXAMPLE / "tests" / "test_conformance.py"
    return _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", tmp_path,
                f"{tests}::{cls}", cwd=tmp_path, env=installed).stdout


def test_the_polled_driver_passes_the_conformance_suite(installed: dict[str, str], tmp_path: Path) -> None:
    assert "5 passed" in _conformance(installed, tmp_path, "TestCounter")


def test_the_push_only_driver_passes_the_conformance_suite(installed: dict[str, str], tmp_path: Path) -> None:
    assert "5 passed" in _conformance(installed, tmp_path, "TestTicker")

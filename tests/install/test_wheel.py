"""The built wheel is a complete gateway: built from the checkout, installed into a fresh venv, it runs.

The README's wheel path, followed with pip (``pip wheel --no-deps . -w dist``; ``python -m build`` uses the
same setuptools backend). The fresh venv gets the wheel with ``--no-deps``; its dependencies come from this
test venv's site-packages through a ``.pth`` line, so nothing is downloaded but the build backend (from the
package index or pip's cache). This venv's editable install of fieldgate is not visible there: an editable
install works through a ``.pth`` file of this venv, which only this venv's site initialisation runs.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from fieldgate import __version__

from tests.conftest import REPO

# What the checkout has that the wheel must carry, as (folder in the checkout, folder in the wheel, pattern).
SHIPPED = [
    ("profiles", "fieldgate/profiles", "**/*.yaml"),
    ("gateway/contract", "fieldgate/contract", "*"),
    ("gateway/web/static", "fieldgate/web/static", "*"),
    ("drivers", "fieldgate/drivers", "*/*.yaml"),
    ("drivers", "fieldgate/drivers", "*/README.md"),
    ("drivers", "fieldgate/drivers", "*/profiles/*.yaml"),
]
_NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "demo-run",
                                     "test-artifacts", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis")


def _run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout (a build writes build/ and *.egg-info into its source)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCE)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", ".", "-w", "dist", cwd=src)
    (built,) = (src / "dist").glob("*.whl")
    assert built.name == f"fieldgate-{__version__}-py3-none-any.whl"
    return built


def test_wheel_contains_profiles_contract_static_files_and_units(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, inside, pattern in SHIPPED:
        expected = {f"{inside}/{p.relative_to(REPO / folder).as_posix()}"
                    for p in (REPO / folder).glob(pattern) if p.is_file() and "__pycache__" not in p.parts}
        assert expected, f"nothing in {folder}/{pattern}: the check checks nothing"
        assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    # the unit files are written by `fieldgate install` from fieldgate/install.py (compared below, installed)
    assert "fieldgate/install.py" in names
    assert "fieldgate/py.typed" in names
    assert any(n.startswith("fieldgate_hwsim/") for n in names)  # the demo's simulators
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for driver in ("sim", "modbus", "serial", "ble", "coap"):
        assert f"{driver} = fieldgate.drivers.{driver}.driver:" in text


def test_built_wheel_installs_and_works(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "opt-fieldgate"
    # `python3 -m venv /opt/fieldgate` (without pip: this venv's pip installs into it with --python)
    _run(getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv, timeout=120)
    py = venv / "bin" / "python"
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # `/opt/fieldgate/bin/pip install './dist/fieldgate-<version>-py3-none-any.whl[modbus]'`
    _run(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index",
         f"{wheel}[modbus]")
    where = _run(py, "-c", "import fieldgate; print(fieldgate.__file__)").stdout.strip()
    assert where.startswith(str(site)), f"fieldgate imported from {where}, not from the wheel"
    fieldgate = venv / "bin" / "fieldgate"
    assert _run(fieldgate, "--version").stdout.strip() == f"fieldgate {__version__}"

    # the shipped examples validate from the installed package (profiles found by relative path and library name)
    shipped = site / "fieldgate" / "drivers"
    for example in ("sim", "modbus"):
        res = _run(fieldgate, "validate", shipped / example / "example.yaml", cwd=tmp_path)
        assert res.stdout.startswith("valid: "), res.stdout
    assert "eastron/sdm120" in _run(py, "-c", "from fieldgate.config import library_profiles as l; "
                                    "print(sorted(l()))").stdout

    # the units `fieldgate install` writes from the wheel are the checkout's systemd/ ones (for this venv's path)
    root = tmp_path / "root"
    _run(fieldgate, "install", "--root", root, "--use-current", timeout=120)
    units = sorted((REPO / "systemd").glob("*.service"))
    assert len(units) == 2
    for unit in units:
        installed = (root / "etc/systemd/system" / unit.name).read_text().replace(str(venv), "/opt/fieldgate")
        assert installed == unit.read_text(), f"{unit.name} from the wheel differs from systemd/"


def _core_closure() -> set[str]:
    """The distributions fieldgate needs without any extra, and theirs (from the installed metadata)."""
    todo, seen = ["fieldgate"], set()
    while todo:
        name = todo.pop()
        for req in importlib.metadata.requires(name) or []:
            if "extra ==" in req:
                continue
            dep = re.match(r"[A-Za-z0-9._-]+", req)
            assert dep is not None
            if dep[0].lower() not in seen:
                seen.add(dep[0].lower())
                todo.append(dep[0])
    return seen


def _core_only_site(folder: Path) -> Path:
    """A site folder holding only fieldgate's core dependencies (links into this venv's site-packages)."""
    folder.mkdir()
    for name in _core_closure():
        dist = importlib.metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src = Path(str(dist.locate_file(top)))
            if src.exists() and not (folder / top).exists():
                (folder / top).symlink_to(src)
    return folder


# Each driver with a device that would be valid with its extra installed: (profile, connection).
DRIVERS_WITH_EXTRAS = {
    "modbus": ("eastron/sdm120", "{transport: tcp, host: 127.0.0.1, port: 502, unit: 1}"),
    "serial": ("plantower/pms5003", "{port: /dev/ttyUSB0}"),
    "ble": ("ruuvi/ruuvitag", "{address: 'C7:3A:10:5E:22:01'}"),
    "coap": ("dragino/ndds75", "{mode: push, listen: '127.0.0.1:5683'}"),
}


def test_a_missing_extra_is_refused_by_validate_and_run_with_the_one_command(wheel: Path, tmp_path: Path) -> None:
    """Installed without extras, a config naming any driver that needs one is refused, each with one command."""
    venv = tmp_path / "core-only"
    _run(getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv, timeout=120)
    py = venv / "bin" / "python"
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "core-deps.pth").write_text(f"{_core_only_site(tmp_path / 'core-deps')}\n")
    _run(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel)
    assert _run(py, "-c", "import importlib.util as u; print(u.find_spec('bleak'), u.find_spec('serial'))"
                ).stdout.split() == ["None", "None"], "the extras' packages are visible: the test tests nothing"

    sim = site / "fieldgate" / "drivers" / "sim" / "profiles" / "energy-meter.yaml"
    config = tmp_path / "fieldgate.yaml"
    devices = [f"  - {{id: {driver}-1, driver: {driver}, profile: {profile}, connection: {conn}}}\n"
               for driver, (profile, conn) in DRIVERS_WITH_EXTRAS.items()]
    devices.append(f"  - {{id: sim-1, driver: sim, profile: {sim}}}\n")
    config.write_text("gateway: {id: gw}\ndevices:\n" + "".join(devices))
    fieldgate = venv / "bin" / "fieldgate"
    for args in (["validate", str(config)], ["run", "-c", str(config), "--stdout"]):
        started = time.monotonic()
        res = subprocess.run([fieldgate, *args], capture_output=True, text=True, timeout=60, check=False)
        took = time.monotonic() - started
        assert res.returncode == 1, (args, res.returncode, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
        lines = res.stderr.splitlines()
        for i, driver in enumerate(DRIVERS_WITH_EXTRAS):
            line = next((x for x in lines if f"devices[{i}].driver:" in x), None)
            assert line is not None, f"{args[0]}: the {driver} device is not refused:\n{res.stderr}"
            assert line.count("pip install") == 1 and f"pip install 'fieldgate[{driver}]'" in line, line
        assert not any("devices[4]" in x for x in lines), res.stderr  # the sim device needs no extra
        print(f"{args[0]}: refused in {took:.2f} s")  # the named error must come within 2 s; figure printed

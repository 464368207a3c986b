"""README.md, docs/*.md and drivers/sim/README.md show what the software takes: YAML validated, commands run.

Each ```yaml block is a configuration (validated by ``fieldgate validate``, the code path a user runs), a
profile (validated by ``fieldgate validate`` as a profile), a cloud-init ``#cloud-config`` (its
``fieldgate.yaml`` validated as a configuration), or a fragment, marked ``<!-- docs: fragment -->`` on the line
before it; a block that is none of these fails. Each ```json block is a reading message checked against the
contract. Each command line of a ```sh block is in :data:`COMMANDS`: run here, run by a named test
elsewhere, or not runnable here, with the reason; a command shown that the table does not know fails.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.support.contract import validate_command, validate_command_result, validate_reading

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "drivers" / "sim" / "README.md"]
FENCE = re.compile(r"(?:<!-- docs: (?P<mark>[\w-]+) -->\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)
BIN = Path(sys.executable).parent


def _blocks(lang: str) -> list[tuple[str, str | None, str]]:
    """(where, mark, body) of every block of ``lang``; ``where`` is ``file:line``."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m["lang"] == lang:
                line = text.count("\n", 0, m.start("body"))
                out.append((f"{doc.relative_to(REPO)}:{line}", m["mark"], m["body"]))
    return out


def _fieldgate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fieldgate.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd or REPO, check=False)


def _kind(body: str) -> str:
    if body.startswith("#cloud-config"):
        return "cloud-config"
    data = yaml.safe_load(body)
    if isinstance(data, dict) and "schema_version" in data:
        return "profile"
    if isinstance(data, dict) and ("gateway" in data or "devices" in data):
        return "config"
    return "unknown"


def _validate(tmp_path: Path, body: str, name: str = "fieldgate.yaml") -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_text(body)
    return _fieldgate("validate", str(path))


@pytest.mark.parametrize(("where", "mark", "body"), [pytest.param(*b, id=b[0]) for b in _blocks("yaml")])
def test_yaml_block_is_valid(tmp_path: Path, where: str, mark: str | None, body: str) -> None:
    data = yaml.safe_load(body)  # every block is YAML at least, fragments too
    if mark == "fragment":
        assert data is not None, where
        return
    kind = _kind(body)
    assert kind != "unknown", f"{where}: neither a config, a profile nor cloud-init: mark it <!-- docs: fragment -->"
    if kind == "cloud-config":
        contents = [f["content"] for f in data["write_files"] if f["path"].endswith("/fieldgate.yaml")]
        assert contents, f"{where}: a cloud-config that writes no fieldgate.yaml"
        for content in contents:
            res = _validate(tmp_path, content)
            assert res.returncode == 0, f"{where}: {res.stderr}"
        return
    res = _validate(tmp_path, body, "profile.yaml" if kind == "profile" else "fieldgate.yaml")
    assert res.returncode == 0, f"{where}: {res.stderr}"
    assert res.stderr == "", f"{where}: warnings: {res.stderr}"
    assert f"(1 {'profile' if kind == 'profile' else 'device'}(s), 0 warning(s))" in res.stdout, res.stdout


@pytest.mark.parametrize(("where", "mark", "body"), [pytest.param(*b, id=b[0]) for b in _blocks("json")])
def test_json_block_is_a_contract_message(where: str, mark: str | None, body: str) -> None:
    msg = json.loads(body)
    check = {"fieldgate.reading/1": validate_reading, "fieldgate.command/1": validate_command,
             "fieldgate.command-result/1": validate_command_result}.get(msg.get("schema"))
    assert check is not None, f"{where}: a JSON block in the docs is a contract message ({msg.get('schema')!r})"
    check(msg)


# --- commands -------------------------------------------------------------------------------------------


def _commands() -> set[str]:
    out = set()
    for _, _, body in _blocks("sh"):
        for line in body.splitlines():
            cmd = re.sub(r"\s+#\s.*$", "", line).strip()
            if cmd:
                out.add(cmd)
    return out


def _readme_config() -> str:
    return next(body for _, _, body in _blocks("yaml") if _kind(body) == "config")


def _local(cmd: str, tmp_path: Path) -> list[str]:
    """A documented command made to run here: this venv for /opt/fieldgate, a temporary config for /etc's."""
    config = tmp_path / "fieldgate.yaml"
    config.write_text(_readme_config())
    cmd = cmd.replace("/opt/fieldgate/bin/", f"{BIN}/").replace("/etc/fieldgate/fieldgate.yaml", str(config))
    return shlex.split(cmd)


def _run_validate(cmd: str, tmp_path: Path) -> None:
    res = subprocess.run(_local(cmd, tmp_path), capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("valid: "), res.stdout


def _make_dry(target: str, extras: str, not_extras: tuple[str, ...]) -> Callable[[str, Path], None]:
    def check(cmd: str, tmp_path: Path) -> None:
        # -n: print what `make` would do for a fresh clone (a venv that does not exist yet), without doing it
        res = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True,
                             timeout=60, cwd=REPO, check=False)
        assert res.returncode == 0, res.stderr
        installs = [line for line in res.stdout.splitlines() if " install " in line and "pip" in line]
        assert installs == [f"{tmp_path / 'venv'}/bin/pip install -q -e '.[{extras}]'"], res.stdout
        for extra in not_extras:
            assert extra not in installs[0].split("[")[1].split(","), installs

    return check


Check = Callable[[str, Path], None]
WHEEL_TEST = "test: tests/install/test_wheel.py::test_built_wheel_installs_and_works"
# Every command the docs show, and how it is checked. "test:" names the test that runs it (with --root or a
# temporary venv instead of the live system); "not here:" says why it cannot run on a build machine.
COMMANDS: dict[str, Check | str] = {
    "make demo": _make_dry("demo", "modbus,serial,ble,coap,web", ("test", "all", "coap-dtls")),
    "make test": _make_dry("test", "all,test", ()),
    "/opt/fieldgate/bin/fieldgate validate /etc/fieldgate/fieldgate.yaml": _run_validate,
    "/opt/fieldgate/bin/fieldgate run -c /etc/fieldgate/fieldgate.yaml":
        "test: tests/test_uplink.py (the real gateway process against a real mosquitto)",
    "/opt/fieldgate/bin/fieldgate run -c fieldgate.yaml --stdout":
        "test: tests/test_cli.py::test_sigterm_stops_cleanly",
    "python3 -m venv /opt/fieldgate && /opt/fieldgate/bin/pip install '.[modbus]'":
        "test: tests/install/test_wheel.py (a fresh venv; pip builds the same wheel from the checkout)",
    "python3 -m pip install build && python3 -m build --wheel":
        "not here: the build package is not a test extra; test_wheel.py builds with pip wheel (same backend)",
    "python3 -m pip wheel --no-deps . -w dist": WHEEL_TEST,
    "/opt/fieldgate/bin/pip install './dist/fieldgate-0.1.0-py3-none-any.whl[modbus]'":
        WHEEL_TEST,
    "sudo apt install -y python3-venv bluez": "not here: changes the machine's Debian packages",
    "sudo python3 -m venv /opt/fieldgate": WHEEL_TEST,
    "sudo /opt/fieldgate/bin/pip install './fieldgate-0.1.0-py3-none-any.whl[all]'":
        WHEEL_TEST,
    "sudo /opt/fieldgate/bin/fieldgate install --use-current":
        "test: tests/install/test_install.py::test_cli_install_use_current_is_idempotent_and_uninstall_keeps_data",
    "sudo /opt/fieldgate/bin/fieldgate doctor --no-devices": "test: tests/install/test_doctor.py",
    "sudo systemctl stop fieldgate && sudo /opt/fieldgate/bin/fieldgate doctor; sudo systemctl start fieldgate":
        "not here: needs systemd as PID 1 and the installed service; doctor itself: tests/install/test_doctor.py",
    "sudo /opt/fieldgate/bin/pip install --upgrade './fieldgate-0.2.0-py3-none-any.whl[all]'":
        "test: tests/install/test_install.py::test_upgrade_keeps_config_buffer_and_seq_continuity",
    "sudo systemctl restart fieldgate": "not here: needs systemd as PID 1 and the installed service",
    "sudo /opt/fieldgate/bin/fieldgate uninstall":
        "test: tests/install/test_install.py::test_cli_install_use_current_is_idempotent_and_uninstall_keeps_data",
    "sudo /opt/fieldgate/bin/fieldgate uninstall --purge": "test: tests/install/test_install.py",
}


def test_every_shown_command_is_known() -> None:
    shown = _commands()
    assert not shown - set(COMMANDS), f"commands in the docs that this test does not check: {shown - set(COMMANDS)}"
    assert not set(COMMANDS) - shown, f"commands no longer in the docs: {set(COMMANDS) - shown}"


@pytest.mark.parametrize("cmd", [c for c, how in COMMANDS.items() if callable(how)])
def test_shown_command_runs(cmd: str, tmp_path: Path) -> None:
    how = COMMANDS[cmd]
    assert callable(how)
    how(cmd, tmp_path)


@pytest.mark.parametrize("cmd", [c for c, how in COMMANDS.items() if isinstance(how, str) and how.startswith("test:")])
def test_shown_command_is_run_by_the_named_test(cmd: str) -> None:
    where = str(COMMANDS[cmd]).removeprefix("test: ").split(" ")[0]
    file, _, name = where.partition("::")
    source = (REPO / file).read_text()
    assert not name or f"def {name}(" in source, f"{cmd}: {where} does not exist"


def test_every_command_of_the_command_table_answers_help() -> None:
    text = (REPO / "README.md").read_text()
    table = text.split("## Command line", 1)[1].split("\n\n", 2)[1]
    names = set(re.findall(r"`(?:sudo )?fieldgate ([a-z]+)", table))
    assert {"run", "validate", "schema", "demo", "probe", "scan", "doctor", "install", "provision"} <= names
    for name in sorted(names):
        res = _fieldgate(name, "--help")
        assert res.returncode == 0, f"fieldgate {name} --help: {res.stderr}"
        assert "usage: fieldgate" in res.stdout, res.stdout

"""The ``commands`` section and the write keys of profiles: defaults, and errors a person can act on."""

from __future__ import annotations

from pathlib import Path

import pytest
from fieldgate.config import load_config_text, load_profile_file
from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.errors import ConfigError

from ..support.contract import shipped_command_schema_matches_shared

DEVICE = "devices:\n  - {id: pump-1, driver: modbus, profile: eastron/sdm120, connection: {host: 127.0.0.1}}\n"


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "t.yaml")
    return [str(d) for d in exc.value.diagnostics if d.severity == "error"]


def test_commands_are_off_by_default() -> None:
    cfg = load_config_text("gateway: {id: g}\n" + DEVICE, "t.yaml").config
    assert (cfg.commands.enabled, cfg.commands.allow) == (False, [])
    assert (cfg.commands.rate.rate, cfg.commands.rate.burst) == (0.5, 5)


def test_allow_names_a_configured_device_at_its_line() -> None:
    errors = _errors("gateway: {id: g}\ncommands:\n  enabled: true\n  allow: [pump-1, pump-9]\n"
                     "  devices: {pmp-1: {rate: 1}}\n" + DEVICE)
    assert "t.yaml:4:19: commands.allow[1]: no device 'pump-9', did you mean 'pump-1'?" in errors, errors
    assert any(e.startswith("t.yaml:5:13: commands.devices.pmp-1: no device 'pmp-1'") for e in errors), errors


def test_a_misspelt_key_is_named() -> None:
    errors = _errors("gateway: {id: g}\ncommands: {enabeld: true}\n")
    assert errors == ["t.yaml:2:12: commands.enabeld: unknown key 'enabeld', did you mean 'enabled'?"]


def _profile(tmp_path: Path, point: str) -> list[str]:
    path = tmp_path / "p.yaml"
    path.write_text(f"schema_version: 1\ndriver: modbus\nvendor: t\nmodel: t\npoints:\n  - {point}\n")
    _profile_model, diags = load_profile_file(path, ModbusDriver)  # type: ignore[arg-type]
    return [f"{d.path}: {d.message}" for d in diags if d.severity == "error"]


@pytest.mark.parametrize(("point", "problem"), [
    ("{name: v, table: input, address: 0, writable: true}", "input points cannot be written"),
    ("{name: v, table: discrete, address: 0, writable: true}", "discrete points cannot be written"),
    ("{name: v, address: 0, type: string, count: 4, writable: true}", "type string points cannot be written"),
    ("{name: v, address: 0, type: bit, bit: 3, writable: true}", "type bit points cannot be written"),
    ("{name: v, address: 0, type: float32, writable: true}", "a writable number needs write_range"),
    ("{name: v, address: 0, type: float32, writable: true, range: [0, 1], write_function: 6}",
     "FC 6 writes one register; float32 takes 2: use 16"),
    ("{name: v, table: coil, address: 0, writable: true, write_function: 16}", "coils are written with FC 5 or 15"),
    ("{name: v, address: 0, writable: true, range: [0, 1], write_function: 5}",
     "holding registers are written with FC 6 or 16"),
    ("{name: v, address: 0, writable: true, write_range: [5, 1]}", "range minimum 5.0 is above its maximum 1.0"),
])
def test_profile_write_keys_are_checked(tmp_path: Path, point: str, problem: str) -> None:
    errors = _profile(tmp_path, point)
    assert any(problem in e for e in errors), errors


def test_a_writable_point_with_a_range_loads(tmp_path: Path) -> None:
    assert _profile(tmp_path, "{name: v, address: 0, type: int16, scale: 0.1, writable: true, range: [0, 50]}") == []
    assert _profile(tmp_path, "{name: v, table: coil, address: 0, writable: true}") == []


def test_the_shipped_command_schema_is_the_shared_one() -> None:
    assert shipped_command_schema_matches_shared() in (True, None)
    shipped = Path(__file__).resolve().parents[2] / "gateway" / "contract"
    shared = shipped.parents[2] / "shared" / "contract" / "CONTRACT.md"
    if shared.is_file():
        # The shipped copy is the shared contract as written, then only the project's own additions
        # (the remote configuration topics of issue 21) as sections after it.
        text, base = (shipped / "CONTRACT.md").read_text(), shared.read_text()
        assert text.startswith(base.rstrip("\n") + "\n"), "the shipped CONTRACT.md differs from the shared one"
        assert all(line.startswith("## ") for line in text[len(base):].splitlines()
                   if line.startswith("#")), "additions are whole sections"

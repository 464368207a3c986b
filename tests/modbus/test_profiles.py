"""Profiles and configs: shipped profiles are clean, mistakes are reported with position and hint."""

from __future__ import annotations

from pathlib import Path

import pytest
from fieldgate.config import load_config, load_config_text, load_profile
from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.drivers.modbus.profile import ModbusConnection
from fieldgate.errors import ConfigError
from fieldgate.yamlsrc import load_yaml

from tests.modbus.conftest import MODBUS_PROFILES, REPO


def check(text: str) -> list[str]:
    data, smap, _ = load_yaml(text, "p.yaml")
    _, diags = load_profile(data, smap, ModbusDriver)  # type: ignore[arg-type]
    return [str(d) for d in diags]


BASE = "schema_version: 1\ndriver: modbus\nvendor: v\nmodel: m\n"


def test_at_least_six_modbus_profiles_ship() -> None:
    assert len(MODBUS_PROFILES) >= 6


@pytest.mark.parametrize("name", MODBUS_PROFILES)
def test_shipped_profile_is_clean_and_cites_its_datasheet(name: str) -> None:
    text = (REPO / "profiles" / f"{name}.yaml").read_text()
    assert check(text) == []
    assert "datasheet:" in text


def test_modicon_numbers_warn() -> None:
    out = check(BASE + "points:\n  - {name: v, table: input, address: 30001, type: float32}\n"
                       "  - {name: f, table: input, address: 30071, type: float32}\n")
    assert len(out) == 1
    assert out[0].startswith("p.yaml:6:")
    assert "warning" in out[0] or "subtract 30001" in out[0]


def test_first_address_one_warns_unless_verified() -> None:
    text = BASE + "points:\n  - {name: t, table: input, address: 1}\n"
    assert any("first input address is 1" in d for d in check(text))
    assert check(text + "addressing_verified: true\n") == []


@pytest.mark.parametrize(("point", "needle"), [
    ("{name: x, address: 0, type: float23}", "did you mean 'float32'"),
    ("{name: x, address: 0, type: string}", "a string needs count"),
    ("{name: x, address: 0, type: bit}", "type bit needs bit"),
    ("{name: x, table: coil, address: 0, type: int16}", "use type bool"),
    ("{name: x, address: 0, type: bool}", "use type bit"),
    ("{name: x, address: 65535, type: float32}", "past address 65535"),
    ("{name: x, address: 70000}", "65535"),
    ("{name: x, address: 0, scale_factor_point: nope}", "must name an int16 point"),
    ("{name: x, adress: 0}", "did you mean 'address'"),
])
def test_profile_mistakes(point: str, needle: str) -> None:
    out = check(BASE + f"points:\n  - {point}\n")
    assert any(needle in d for d in out), out


def test_unreadable_range_cannot_hold_a_point() -> None:
    out = check(BASE + "unreadable: [{table: holding, start: 10, end: 20}]\n"
                       "points:\n  - {name: x, address: 12}\n")
    assert any("unreadable range" in d for d in out)


def test_max_registers_is_capped_at_125() -> None:
    out = check(BASE + "max_registers: 200\npoints:\n  - {name: x, address: 0}\n")
    assert any("max_registers" in d for d in out)


def test_connection_rules() -> None:
    assert ModbusConnection(transport="rtu", serial_port="/dev/ttyUSB0", parity="even").parity == "E"
    with pytest.raises(ValueError, match="needs serial_port"):
        ModbusConnection(transport="rtu")
    with pytest.raises(ValueError, match="needs host"):
        ModbusConnection(transport="tcp")
    with pytest.raises(ValueError, match=r"1\.\.247"):
        ModbusConnection(transport="rtu", serial_port="/dev/ttyUSB0", unit=250)
    assert ModbusConnection(host="h").tcp_port == 502


def test_bus_of() -> None:
    rtu = ModbusConnection(transport="rtu", serial_port="/dev/ttyUSB0")
    assert ModbusDriver.bus_of(rtu) == "/dev/ttyUSB0"
    assert ModbusDriver.bus_of(ModbusConnection(host="10.0.0.5")) == "tcp:10.0.0.5:502"
    assert ModbusDriver.bus_of(ModbusConnection(transport="rtu-over-tcp", host="gw", port=4001)) == "tcp:gw:4001"


def test_example_config_validates() -> None:
    loaded = load_config(REPO / "drivers" / "modbus" / "example.yaml")
    assert [d.config.id for d in loaded.devices] == [
        "meter-main", "room-climate-1", "co2-meeting-room", "pv-inverter", "submeter-kitchen"]
    assert not loaded.warnings
    buses = {d.config.id: d.bus for d in loaded.devices}
    assert buses["meter-main"] == buses["room-climate-1"] == buses["co2-meeting-room"]
    assert buses["pv-inverter"] == "tcp:192.168.10.40:1502"


def test_config_error_has_position(tmp_path: Path) -> None:
    text = ("gateway: {id: gw}\ndevices:\n  - id: m\n    driver: modbus\n    profile: eastron/sdm120\n"
            "    connection: {transport: rtu, baudrate: 9600}\n")
    with pytest.raises(ConfigError) as err:
        load_config_text(text, str(tmp_path / "c.yaml"))
    assert any("needs serial_port" in str(d) and "c.yaml:6:" in str(d) for d in err.value.diagnostics)

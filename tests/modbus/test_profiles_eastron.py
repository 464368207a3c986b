"""Eastron SDM630 V2 and SDM120: every register of the datasheets' tables is published, under one naming scheme."""

from __future__ import annotations

import pytest
from fieldgate.drivers.modbus.profile import ModbusProfile
from fieldgate_hwsim.modbus_sim import DeviceModel, load_modbus_profile

# (table, PDU address) of every parameter in the register tables of Eastron's
# "SDM630 Modbus Protocol" (input registers 30001.., holding 40001..) and
# "SDM120 Modbus Protocol" documents, each a float32 in two registers.
SDM630_INPUT = [
    *range(0x0000, 0x002A + 1, 2), 0x002E, 0x0030, 0x0034, 0x0038, 0x003C, 0x003E, 0x0042, 0x0046, 0x0048,
    0x004A, 0x004C, 0x004E, 0x0050, 0x0052, 0x0054, 0x0056, 0x0064, 0x0066, 0x0068, 0x006A, 0x00C8, 0x00CA,
    0x00CC, 0x00CE, 0x00E0, 0x00EA, 0x00EC, 0x00EE, 0x00F0, 0x00F2, 0x00F4, 0x00F8, 0x00FA,
    *range(0x0102, 0x010C + 1, 2), *range(0x014E, 0x016A + 1, 2),
]
SDM630_HOLDING = [0x0002, 0x000A, 0x0012, 0x0014, 0x001C]   # demand period, system type, parity, meter id, baud
SDM120_INPUT = [0x0000, 0x0006, 0x000C, 0x0012, 0x0018, 0x001E, 0x0024, 0x0046, 0x0048, 0x004A, 0x004C, 0x004E,
                0x0054, 0x0056, 0x0058, 0x005A, 0x005C, 0x005E, 0x0102, 0x0108, 0x0156, 0x0158]
# The SDM120's holding table (protocol V2.4, and the Eastron Europe edition) has no 40003 demand period:
# only the SDM630's has. Parity, meter id, baud.
SDM120_HOLDING = [0x0012, 0x0014, 0x001C]

# One scheme on both meters (profiles/README.md): what a dashboard charts the same way on either.
SHARED = ["power_total", "apparent_power_total", "reactive_power_total", "power_factor_total", "frequency",
          "energy_import", "energy_export", "energy_total", "reactive_energy_import", "reactive_energy_export",
          "reactive_energy_total", "power_demand_total", "power_demand_total_max", "meter_id", "baud_rate_code",
          "parity_code"]


def addresses(p: ModbusProfile, table: str) -> list[int]:
    return sorted(x.address for x in p.points if x.table == table)


@pytest.mark.parametrize(("name", "inputs", "holdings"), [
    ("eastron/sdm630", SDM630_INPUT, SDM630_HOLDING),
    ("eastron/sdm120", SDM120_INPUT, SDM120_HOLDING),
])
def test_every_documented_register_is_published(name: str, inputs: list[int], holdings: list[int]) -> None:
    p = load_modbus_profile(name)
    assert addresses(p, "input") == sorted(inputs)
    assert addresses(p, "holding") == sorted(holdings)
    assert all(x.kind == "float32" for x in p.points)


def test_one_naming_scheme_on_sdm120_and_sdm630() -> None:
    sdm120 = {x.name for x in load_modbus_profile("eastron/sdm120").points}
    sdm630 = {x.name for x in load_modbus_profile("eastron/sdm630").points}
    assert set(SHARED) <= sdm120 & sdm630
    assert {f"{q}_l{n}" for q in ("voltage", "current", "power", "apparent_power", "reactive_power",
                                  "power_factor", "phase_angle", "energy_import", "energy_export", "energy_total",
                                  "current_demand") for n in (1, 2, 3)} <= sdm630


@pytest.mark.parametrize("name", ["eastron/sdm630", "eastron/sdm120"])
def test_every_new_register_has_a_vector(name: str) -> None:
    p = load_modbus_profile(name)
    vectored = {v["point"] for v in p.test_vectors}
    # one vector per kind of register the maps gained: demand, per-phase energy, settings
    wanted = {"power_demand_total", "baud_rate_code", "meter_id", "parity_code"}
    if name.endswith("sdm630"):
        wanted |= {"demand_period", "apparent_power_l1", "reactive_power_l2", "phase_angle_l3", "current_avg",
                   "phase_angle_total", "reactive_energy_import", "apparent_energy_total", "charge_total",
                   "voltage_ll_avg",
                   "energy_import_l1", "energy_export_l2", "energy_total_l3", "current_demand_l1_max",
                   "system_type"}
    else:
        wanted |= {"power_demand_import_max", "current_demand", "current_demand_max"}
    assert wanted <= vectored, wanted - vectored


@pytest.mark.parametrize("name", ["eastron/sdm630", "eastron/sdm120"])
def test_simulator_serves_every_register_the_profile_reads(name: str) -> None:
    p = load_modbus_profile(name)
    model = DeviceModel(p, strict=True)
    for x in p.points:
        assert set(range(x.address, x.address + x.width)) <= model.implemented[x.table], x.name

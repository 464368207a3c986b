"""Every shipped meter names its electrical points by the one scheme of profiles/README.md."""

from __future__ import annotations

import re

import pytest
from fieldgate_hwsim.modbus_sim import load_modbus_profile

from tests.modbus.conftest import MODBUS_PROFILES

# quantity [ _demand ] [ _l1 | _l1_l2 | _total | _avg | _sum | _neutral | _import | _export ] [ _max ]
_QUANTITY = r"(voltage|current|power|apparent_power|reactive_power|power_factor|phase_angle|energy|reactive_energy|" \
            r"apparent_energy|charge|voltage_thd|current_thd)"
_WHERE = r"(_l[123](_l[123])?|_ln_avg|_ll_avg|_ln|_ll|_avg|_sum|_total|_neutral|_import|_export|_net)"
# qualifiers of profiles/README.md beyond the phases: tariff, partial counter, reactive quadrant, and
# where in a PV / storage system the value is measured (string, DC side, grid, battery, consumption)
_QUALIFIER = r"(_t[1-4]|_partial|_inductive|_capacitive|_pv[1-9][0-9]?|_dc|_yield|_today|_month|_year|_grid|_battery|" \
             r"_consumption|_genset|_pv_ac_output|_pv_ac_input|_pv_dc)"
# a single-phase meter's voltage and current need no suffix; a power or energy always says which one
SCHEME = re.compile(rf"^({_QUANTITY}(_demand)?({_WHERE}|{_QUALIFIER})+|(voltage|current)(_demand)?)(_max)?$")
ELECTRICAL_UNITS = {"V", "A", "W", "VA", "var", "kWh", "Wh", "kvarh", "varh", "kVAh", "Ah"}
METERS = [n for n in MODBUS_PROFILES if any(p.unit in {"kWh", "Wh"} for p in load_modbus_profile(n).points)
          and not n.startswith("solaredge/")]  # SunSpec models keep SunSpec's names


@pytest.mark.parametrize("name", METERS)
def test_meter_points_follow_the_naming_scheme(name: str) -> None:
    wrong = [p.name for p in load_modbus_profile(name).points
             if p.unit in ELECTRICAL_UNITS and not SCHEME.match(p.name)]
    assert not wrong, f"{name}: {wrong} do not follow profiles/README.md"


def test_the_meters_are_checked() -> None:
    assert {"eastron/sdm120", "eastron/sdm630", "carlo-gavazzi/em111"} <= set(METERS)

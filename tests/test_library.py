"""The device library's shared checks: unit symbols and the suggestions a technician gets for a wrong one."""

from __future__ import annotations

from pathlib import Path

import pytest
from fieldgate.units import SENML_UNITS, suggest_unit, unit_warning

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("written", "meant"), [
    # the cases of issue 20: difflib alone offered 'Sv' and 'deg'
    ("v", "V"), ("volt", "V"), ("Volts", "V"), ("VDC", "V"), ("degC", "Cel"), ("°C", "Cel"), ("C", "Cel"),
    ("deg C", "Cel"), ("℃", "Cel"), ("celsius", "Cel"), ("kwh", "kWh"), ("KWH", "kWh"), ("%rh", "%RH"),
    ("% RH", "%RH"), ("ug/m³", "ug/m3"), ("µg/m3", "ug/m3"), ("μg/m³", "ug/m3"), ("mg/m3", None),
    ("amps", "A"), ("mv", "mV"), ("ma", "mA"), ("watt", "W"), ("kw", "kW"), ("VAr", "var"), ("kVAr", "kvar"),
    ("kVArh", "kvarh"), ("kvah", "kVAh"), ("ah", "Ah"), ("hz", "Hz"), ("mbar", "hPa"), ("hpa", "hPa"),
    ("lux", "lx"), ("Ω", "Ohm"), ("ohms", "Ohm"), ("°", "deg"), ("degrees", "deg"), ("rpm", "1/min"),
    ("m³", "m3"), ("kmh", "km/h"), ("dbm", "dBm"), ("sec", "s"), ("PPM", "ppm"),
    # edit distance, last: a typo in a longer symbol
    ("kWhh", "kWh"), ("kvarhh", "kvarh"), ("Cell", "Cel"),
    # nothing plausible: no suggestion rather than a wrong one
    ("furlongs", None), ("x", None), ("degF", None),
])
def test_suggestions(written: str, meant: str | None) -> None:
    assert suggest_unit(written) == meant
    if meant is not None:
        assert meant in SENML_UNITS


def test_every_suggestion_is_a_senml_symbol() -> None:
    from fieldgate.units import UNIT_ALIASES

    assert set(UNIT_ALIASES.values()) <= SENML_UNITS


@pytest.mark.parametrize(("written", "needle"), [
    ("v", "'v' is not a SenML unit symbol, did you mean 'V'?"),
    ("degC", "'degC' is not a SenML unit symbol, did you mean 'Cel'?"),
    ("furlongs", "'furlongs' is not a SenML unit symbol"),
    # a valid symbol that is nearly always meant as another: C is the coulomb
    ("C", "'C' is the SenML symbol for coulomb; for degrees Celsius write 'Cel'"),
])
def test_unit_warning(written: str, needle: str) -> None:
    warning = unit_warning(written)
    assert warning is not None and warning.startswith(needle), warning


@pytest.mark.parametrize("unit", sorted(SENML_UNITS - {"C"}))
def test_senml_symbols_draw_no_warning(unit: str) -> None:
    assert unit_warning(unit) is None


def test_validate_suggests_the_right_unit(tmp_path: Path) -> None:
    from fieldgate.config import load_profile_file

    prof = tmp_path / "p.yaml"
    prof.write_text("schema_version: 1\ndriver: sim\nvendor: x\nmodel: y\npoints:\n"
                    "  - {name: a, unit: v}\n  - {name: b, unit: degC}\n")
    _, diags = load_profile_file(prof)
    text = [str(d) for d in diags]
    assert any("did you mean 'V'?" in t for t in text), text
    assert any("did you mean 'Cel'?" in t for t in text), text

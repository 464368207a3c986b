"""`fieldgate profiles` and `--coverage`: the library listed, each profile held to its datasheet facts."""

from __future__ import annotations

from pathlib import Path

import pytest
from fieldgate.cli import main

PROFILE = """schema_version: 1
driver: modbus
vendor: Acme
model: M1
datasheet: Acme M1 manual rev 3, table 4
points:
  - {name: voltage, table: input, address: 0, type: float32, unit: V}
  - {name: current, table: input, address: 2, type: float32, unit: A}
  - {name: power_total, table: input, address: 4, type: float32, unit: W}
test_vectors:
  - {point: voltage, registers: "0x4366 0x0000", raw: 230.0, value: 230.0}
"""


def test_the_shipped_library_is_consistent(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "--coverage"]) == 0
    out = capsys.readouterr()
    lines = {line.split(" ", 1)[0]: line for line in out.out.splitlines()}
    assert "documented 52: published 46 (23 verified), left out 6; points 46" in lines["abb/b23"]
    assert "simulated 46/46" in lines["abb/b23"]
    assert "documented ? (no datasheet facts)" in lines["generic/senml"]
    assert "vectors 17/18" in lines["nmea0183/gnss"]
    assert out.err == ""


def test_a_profile_that_contradicts_its_facts_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "acme"
    folder.mkdir()
    (folder / "m1.yaml").write_text(PROFILE)
    (folder / "m1.datasheet.toml").write_text(
        'document = "Acme M1 manual rev 3"\n'
        '[[register]]\ntable = "input"\naddress = 0\ntype = "float32"\npoint = "voltage"\n'
        '[[register]]\ntable = "input"\naddress = 3\ntype = "float32"\npoint = "current"\n'   # the profile reads 2
        '[[register]]\ntable = "input"\naddress = 6\ntype = "float32"\nquantity = "Hz"\n'     # neither point nor why
        '[[register]]\ntable = "input"\naddress = 8\ntype = "float32"\npoint = "frequency"\n'  # no such point
    )
    assert main(["profiles", "--coverage", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "acme/m1 [modbus]: documented 4: published 2 (0 verified), left out 0; points 3; vectors 1/3" in out.out
    err = out.err
    assert "register[1] (input 0x0003): point 'current' has address 2, the datasheet 3" in err
    assert "register[2] (input 0x0006): give either point (published as) or left_out (why not)" in err
    assert "register[3] (input 0x0008): point 'frequency' is not in the profile" in err
    assert "point 'power_total' of the profile is documented by no register" in err
    assert "4 disagreement(s)" in err


def test_a_broken_facts_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "m1.yaml").write_text(PROFILE)
    (tmp_path / "acme" / "m1.datasheet.toml").write_text("document = \n")
    assert main(["profiles", "--coverage", "--dir", str(tmp_path)]) == 1
    assert "m1.datasheet.toml: unreadable datasheet facts" in capsys.readouterr().err


def test_profiles_lists_vendor_model_driver_and_datasheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "m1.yaml").write_text(PROFILE)
    assert main(["profiles", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "acme/m1 [modbus] Acme M1: Acme M1 manual rev 3, table 4" in out
    assert 'huawei/sun2000 [modbus] Huawei SUN2000: Huawei "Solar Inverter Modbus Interface Definitions' in out

"""Register overlap validation: two points reading the same register are an error unless declared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.modbus.conftest import REPO
from tests.modbus.test_profiles import BASE, check


def points(*lines: str) -> str:
    return BASE + "points:\n" + "".join(f"  - {line}\n" for line in lines)


def test_float32_at_0_and_1_overlap_and_both_points_are_named() -> None:
    out = check(points("{name: a, table: input, address: 0x0000, type: float32}",
                       "{name: b, table: input, address: 0x0001, type: float32}"))
    [err] = [d for d in out if "overlap" in d]
    # file:line:col: key.path: message, on the second point's address
    assert err.startswith("p.yaml:7:"), err
    assert "points[1].address" in err
    assert "'b'" in err and "'a'" in err and "input" in err and "overlaps: a" in err


@pytest.mark.parametrize(("first", "second"), [
    ("{name: a, table: holding, address: 10, type: uint64}", "{name: b, table: holding, address: 13}"),
    ("{name: a, table: holding, address: 10, type: string, count: 8}",
     "{name: b, table: holding, address: 17, type: int32}"),
    ("{name: a, table: coil, address: 3}", "{name: b, table: coil, address: 3}"),
    ("{name: a, table: discrete, address: 3}", "{name: b, table: discrete, address: 3}"),
    ("{name: a, address: 5, type: bit, bit: 2}", "{name: b, address: 5, type: bit, bit: 2}"),
    ("{name: a, address: 5, type: uint16}", "{name: b, address: 5, type: bit, bit: 2}"),
])
def test_overlaps_are_found_in_every_register_space(first: str, second: str) -> None:
    out = check(points(first, second))
    assert any("overlap" in d for d in out), out


@pytest.mark.parametrize(("first", "second"), [
    # one address in different spaces is a different register
    ("{name: a, table: input, address: 0, type: float32}", "{name: b, table: holding, address: 0, type: float32}"),
    ("{name: a, table: coil, address: 0}", "{name: b, table: discrete, address: 0}"),
    ("{name: a, table: input, address: 0, type: float32}", "{name: b, table: input, address: 2, type: float32}"),
    # different bits of one register are different values
    ("{name: a, address: 5, type: bit, bit: 0}", "{name: b, address: 5, type: bit, bit: 1}"),
])
def test_adjacent_or_other_space_is_no_overlap(first: str, second: str) -> None:
    assert not [d for d in check(points(first, second)) if "overlap" in d]


def test_a_declared_overlap_is_accepted_from_either_side() -> None:
    a = "{name: raw, table: holding, address: 0, type: uint32}"
    b = "{name: signed, table: holding, address: 0, type: int32, overlaps: raw}"
    assert check(points(a, b)) == []
    assert check(points("{name: raw, table: holding, address: 0, type: uint32, overlaps: [signed]}",
                        "{name: signed, table: holding, address: 0, type: int32}")) == []


def test_a_declaration_does_not_excuse_a_third_point() -> None:
    out = check(points("{name: a, address: 0, type: uint32}", "{name: b, address: 0, type: int32, overlaps: a}",
                       "{name: c, address: 1}"))
    assert len([d for d in out if "overlap" in d]) == 2, out


@pytest.mark.parametrize(("decl", "needle"), [
    ("overlaps: nope", "'nope' is not a point of this profile"),
    ("overlaps: a", "does not overlap"),
])
def test_a_wrong_declaration_is_reported(decl: str, needle: str) -> None:
    out = check(points("{name: a, address: 0}", f"{{name: b, address: 4, {decl}}}"))
    assert any(needle in d for d in out), out


def test_validate_cli_reports_the_overlap(tmp_path: Path) -> None:
    profile = tmp_path / "meter.yaml"
    profile.write_text(points("{name: a, table: input, address: 0x0000, type: float32}",
                              "{name: b, table: input, address: 0x0001, type: float32}"))
    run = subprocess.run([str(Path(sys.executable).parent / "fieldgate"), "validate", "--profile", str(profile)],
                         check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    text = run.stdout + run.stderr
    assert f"{profile}:7:" in text and "overlap" in text and "Traceback" not in text, text


def test_the_library_readme_example_validates() -> None:
    text = (REPO / "profiles" / "README.md").read_text()
    example = text.split("Declare it on either point")[1].split("```yaml\n")[1].split("```")[0]
    assert check(BASE + "points:\n" + example) == []

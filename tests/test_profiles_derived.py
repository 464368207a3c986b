"""Derived points (issue 20): computed from other points of the same reading by a small expression
language (no eval): the sum of phases, a difference of counters; errors named at validate time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fieldgate.config import load_profile_file
from fieldgate.normalize import Normalizer
from fieldgate.schema import PointError, RawReading

PROFILE = """schema_version: 1
driver: modbus
vendor: x
model: y
points:
  - {name: power_l1, table: input, address: 0, type: float32, unit: W}
  - {name: power_l2, table: input, address: 2, type: float32, unit: W}
  - {name: power_l3, table: input, address: 4, type: float32, unit: W}
  - {name: energy_import, table: input, address: 6, type: float32, unit: kWh, every: 6}
  - {name: energy_export, table: input, address: 8, type: float32, unit: kWh, every: 6}
derived:
  - {name: power_total, expr: "power_l1 + power_l2 + power_l3", unit: W, decimals: 1}
  - {name: energy_net, expr: energy_import - energy_export, unit: kWh, decimals: 3}
  - {name: imbalance, expr: "(max(power_l1, power_l2, power_l3) - min(power_l1, power_l2, power_l3)) / power_total",
     decimals: 3}
"""


def load(tmp_path: Path, text: str) -> tuple[Any, list[str]]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    profile, diags = load_profile_file(path)
    return profile, [str(d) for d in diags]


def metrics(profile: Any, values: dict[str, Any]) -> dict[str, Any]:
    msg = Normalizer("gw", "dev", profile).normalize(RawReading(values, ts=1.8e9))
    assert msg is not None
    return msg["metrics"]


def test_derived_points_are_computed_from_the_same_reading(tmp_path: Path) -> None:
    profile, diags = load(tmp_path, PROFILE)
    assert diags == [] and profile is not None
    m = metrics(profile, {"power_l1": 1000.0, "power_l2": 1500.0, "power_l3": 500.25,
                          "energy_import": 120.5, "energy_export": 20.25})
    assert m["power_total"] == {"value": 3000.2, "quality": "good", "unit": "W"}
    assert m["energy_net"] == {"value": 100.25, "quality": "good", "unit": "kWh"}
    assert m["imbalance"]["value"] == pytest.approx(0.333)  # uses the derived power_total before it


def test_a_missing_input_publishes_nothing_and_a_bad_one_a_bad_value(tmp_path: Path) -> None:
    profile, _ = load(tmp_path, PROFILE)
    # energy_* are read every 6th poll: between those polls energy_net is not published, not made up
    m = metrics(profile, {"power_l1": 1.0, "power_l2": 2.0, "power_l3": 3.0})
    assert "energy_net" not in m and m["power_total"]["value"] == 6.0
    m = metrics(profile, {"power_l1": 1.0, "power_l2": PointError("exception:02"), "power_l3": 3.0})
    assert m["power_total"] == {"value": None, "quality": "bad", "unit": "W", "reason": "input_bad"}
    m = metrics(profile, {"power_l1": 0.0, "power_l2": 0.0, "power_l3": 0.0})
    assert m["imbalance"] == {"value": None, "quality": "bad", "reason": "math_error"}  # 0 / 0


@pytest.mark.parametrize(("expr", "needle"), [
    ("power_l1 + power_l4", "unknown name 'power_l4', did you mean 'power_l3'?"),
    ("power_l1 +", "not an expression"),
    ("__import__('os').system('true')", "not allowed"),
    ("power_l1.real", "not allowed"),
    ("open(power_l1)", "unknown function 'open' (abs, min, max, sqrt)"),
    ("power_l1 if power_l2 else 0", "not allowed"),
    ("9 ** 9 ** 9", "not allowed"),
    ("later + 1", "unknown name 'later'"),
    ("x" * 600, "longer than 500 characters"),
])
def test_bad_expressions_are_named_at_validate_time(tmp_path: Path, expr: str, needle: str) -> None:
    text = PROFILE + f'  - {{name: bad, expr: "{expr}"}}\n  - {{name: later, expr: "1"}}\n'
    started = time.monotonic()
    profile, diags = load(tmp_path, text)
    assert time.monotonic() - started < 2.0
    assert profile is None
    assert any(":16:" in d and "derived[3].expr" in d and needle in d for d in diags), diags


def test_a_derived_name_must_not_shadow_a_point(tmp_path: Path) -> None:
    _, diags = load(tmp_path, PROFILE + '  - {name: power_l1, expr: "1"}\n')
    assert any("derived[3].name" in d and "'power_l1' is already a point" in d for d in diags), diags

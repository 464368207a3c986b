"""The conformance suite decodes each profile's test vectors through the driver's ``decode_vector`` hook (issue 15).

Before: the suite only checked that a vector named a known point; no built-in driver offered
the hook, so a profile whose datasheet vector no longer decoded to its documented value passed.
Now every built-in driver with library vectors offers ``DecodesVectors``, the suite decodes each
vector and checks ``raw`` and, normalized, ``value`` / ``expect``; a vector that carries data
for a driver without the hook is named, not skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fieldgate.driver import DecodesVectors, load_driver
from fieldgate.testing import conformance

from tests.conftest import REPO

DRIVERS_WITH_VECTORS = ["modbus", "coap", "serial", "ble"]


@pytest.mark.parametrize("name", DRIVERS_WITH_VECTORS)
def test_built_in_drivers_decode_every_library_vector(name: str) -> None:
    driver = load_driver(name)
    assert isinstance(driver, DecodesVectors), f"{name} offers no decode_vector hook"
    paths = conformance.library_profiles_of(name)
    assert paths
    for path in paths:
        problems, count = conformance.vector_problems(driver, path)
        assert not problems, "\n".join(problems)
        vectors = yaml.safe_load(path.read_text()).get("test_vectors") or []
        assert count == len(vectors), f"{path}: {count} of {len(vectors)} vector(s) checked"


def _copy_with(tmp_path: Path, profile: str, old: str, new: str) -> Path:
    text = (REPO / "profiles" / profile).read_text()
    assert old in text
    path = tmp_path / Path(profile).name
    path.write_text(text.replace(old, new))
    return path


def test_a_vector_that_no_longer_decodes_to_its_raw_value_is_named(tmp_path: Path) -> None:
    # SDM120 voltage: 0x4366 0x0000 is 230.0 V; a vector claiming 231.0 is wrong.
    path = _copy_with(tmp_path, "eastron/sdm120.yaml", 'registers: "0x4366 0x0000", raw: 230.0, value: 230.0',
                      'registers: "0x4366 0x0000", raw: 231.0, value: 231.0')
    problems, _ = conformance.vector_problems(load_driver("modbus"), path)
    assert len(problems) == 2, problems  # the raw value and the normalized one
    assert all(p.startswith(f"{path}: test_vectors[0]") for p in problems), problems
    assert "raw 230.0, the vector says 231.0" in problems[0]


def test_a_wrong_expectation_after_normalizing_is_named(tmp_path: Path) -> None:
    path = _copy_with(tmp_path, "dragino/cpn01.yaml", "battery: 3.192", "battery: 3.9")
    problems, _ = conformance.vector_problems(load_driver("coap"), path)
    assert problems == [f"{path}: test_vectors[0]: battery is 3.192, the vector expects 3.9"]


def test_data_for_a_driver_without_the_hook_is_named(tmp_path: Path) -> None:
    path = tmp_path / "meter.yaml"
    path.write_text((REPO / "drivers/sim/profiles/energy-meter.yaml").read_text()
                    + 'test_vectors:\n  - {hex: "01 02", expect: {voltage: 230.0}}\n'
                    + "  - {point: energy, raw: 1000, value: 1.0}\n")
    problems, count = conformance.vector_problems(load_driver("sim"), path)
    assert count == 1  # the point/raw/value vector needs no decoding and is checked
    assert problems == [f"{path}: test_vectors[0]: carries data to decode (hex) but driver 'sim' has no "
                        "decode_vector hook (fieldgate.driver.DecodesVectors)"]

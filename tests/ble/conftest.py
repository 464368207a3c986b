"""Fixtures of the BLE tests: profiles, driver contexts, a recording sink, the simulated air."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.config import load_profile_file
from fieldgate.driver import DeviceContext, SharedResources
from fieldgate.drivers.ble.driver import BleDriver
from fieldgate.drivers.ble.profile import BleConnection, BleProfile
from fieldgate_hwsim import ble_sim

from tests.support.contract import validate_reading

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
FAKE = "fieldgate_hwsim.ble_sim:FakeScanner"

__all__ = ["FAKE", "PROFILES", "REPO", "ble_profiles", "context", "load_ble_profile", "validate_reading"]


def ble_profiles() -> list[Path]:
    """Every shipped profile written for the ble driver."""
    return sorted(p for p in PROFILES.rglob("*.yaml") if "driver: ble" in p.read_text())


def load_ble_profile(name: str | Path) -> BleProfile:
    """Load ``vendor/model`` (or a path), failing the test with its diagnostics."""
    path = name if isinstance(name, Path) else PROFILES / f"{name}.yaml"
    profile, diags = load_profile_file(path, BleDriver)  # type: ignore[arg-type]
    assert profile is not None, "\n".join(map(str, diags))
    assert not [d for d in diags if d.severity == "error"], diags
    return profile  # type: ignore[return-value]


def context(profile: str | BleProfile, shared: SharedResources | None = None, dev_id: str = "dev-1",
            **conn: Any) -> DeviceContext:
    """A device context for one BLE device (the fake scanner backend unless ``backend`` is given)."""
    conn.setdefault("backend", FAKE)
    prof = load_ble_profile(profile) if isinstance(profile, str) else profile
    return DeviceContext(dev_id, prof, BleConnection(**conn), 2.0,
                         logging.LoggerAdapter(logging.getLogger(f"test.ble.{dev_id}")),
                         shared or SharedResources())


@pytest.fixture(autouse=True)
def fresh_air() -> Iterator[None]:
    """Each test gets an empty simulated radio."""
    ble_sim.reset_air()
    yield
    ble_sim.reset_air()

"""Fixtures of the BLE tests: profiles, driver contexts, a recording sink, the simulated air."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.config import load_profile_file
from fieldgate.driver import DeviceContext, SharedResources
from fieldgate.drivers.ble.driver import BleDriver
from fieldgate.drivers.ble.profile import BleConnection, BleProfile
from fieldgate.errors import DriverError
from fieldgate.schema import RawReading
from fieldgate_hwsim import ble_sim

from tests.support.contract import validate_reading

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
FAKE = "fieldgate_hwsim.ble_sim:FakeScanner"

__all__ = ["FAKE", "PROFILES", "REPO", "Sink", "ble_profiles", "context", "load_ble_profile", "validate_reading"]


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


class Sink:
    """Records what a driver hands over; ``wait`` for a condition without sleeping."""

    def __init__(self) -> None:
        self.readings: list[RawReading] = []
        self.errors: list[DriverError] = []
        self.changed = asyncio.Event()

    def add(self, reading: RawReading) -> None:
        self.readings.append(reading)
        self.changed.set()

    def add_error(self, error: DriverError) -> None:
        self.errors.append(error)
        self.changed.set()

    async def wait(self, predicate: Callable[[Sink], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture(autouse=True)
def fresh_air() -> Iterator[None]:
    """Each test gets an empty simulated radio."""
    ble_sim.reset_air()
    yield
    ble_sim.reset_air()

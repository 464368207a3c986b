"""Fixtures for the Modbus driver suite: simulators on free ports and ptys, driver contexts, contract checks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fieldgate.driver import DeviceContext, SharedResources
from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.drivers.modbus.profile import ModbusConnection, ModbusProfile
from fieldgate.testing import RecordingSink as Sink
from fieldgate_hwsim.modbus_sim import ModbusSim, load_modbus_profile

REPO = Path(__file__).resolve().parents[2]
MODBUS_PROFILES = sorted(
    p.relative_to(REPO / "profiles").with_suffix("").as_posix()
    for p in (REPO / "profiles").rglob("*.yaml")
    if "driver: modbus" in p.read_text()
)



def _validator() -> Callable[[dict[str, Any]], None]:
    try:
        from tests.support.contract import validate_reading  # type: ignore[import-not-found]

        return validate_reading  # type: ignore[no-any-return]
    except ImportError:
        import jsonschema

        schema = json.loads((REPO / "gateway" / "contract" / "reading.schema.json").read_text())
        checker = jsonschema.Draft202012Validator(schema)
        return checker.validate


validate_reading = _validator()


def make_ctx(profile: ModbusProfile, shared: SharedResources | None = None, device: str = "dev-1",
             **conn: Any) -> DeviceContext:
    """A DeviceContext as the supervisor builds it."""
    log = logging.LoggerAdapter(logging.getLogger(f"test.{device}"), {"device": device})
    return DeviceContext(device, profile, ModbusConnection(**conn), 5.0, log, shared or SharedResources())


async def poll_once(profile: ModbusProfile, **conn: Any) -> tuple[Sink, ModbusDriver]:
    """Open a driver, poll once, close it."""
    sink = Sink()
    async with ModbusDriver(make_ctx(profile, **conn)) as drv:
        await drv.poll(sink)
    return sink, drv


@pytest.fixture
async def sims() -> AsyncIterator[list[ModbusSim]]:
    """Simulators a test starts go in this list; all are stopped at the end."""
    started: list[ModbusSim] = []
    yield started
    for sim in started:
        await sim.stop()


async def start(sims: list[ModbusSim], transport: str, devices: dict[int, ModbusProfile], baudrate: int = 115200,
                **kw: Any) -> tuple[ModbusSim, dict[str, Any]]:
    """Start a simulator for ``transport``; returns it and the matching connection settings."""
    sim = ModbusSim(devices, animate=False, **kw)
    sims.append(sim)
    if transport == "tcp":
        return sim, {"transport": "tcp", "host": "127.0.0.1", "port": await sim.start_tcp()}
    if transport == "rtu-over-tcp":
        return sim, {"transport": "rtu-over-tcp", "host": "127.0.0.1", "port": await sim.start_tcp(rtu_framing=True)}
    path = await sim.start_rtu(baudrate)
    return sim, {"transport": "rtu", "serial_port": path, "baudrate": baudrate}


@pytest.fixture(params=["tcp", "rtu", "rtu-over-tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every end-to-end test runs over each transport."""
    return str(request.param)


def profile(name: str) -> ModbusProfile:
    """A library profile by name."""
    return load_modbus_profile(name)

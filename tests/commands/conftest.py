"""Fixtures of the command tests: a writable Modbus profile, simulators on free ports and ptys, configs."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from fieldgate_hwsim.command_hostile import BOILER_PROFILE
from fieldgate_hwsim.modbus_sim import ModbusSim, load_modbus_profile

from ..modbus.conftest import sims, start

__all__ = ["PROFILE", "config", "sims", "start_sim"]  # sims: the Modbus suite's fixture, shared

#: The boiler controller of hw-sim (the fault campaign's commandable device too): a float32 setpoint,
#: an int16 setpoint with scale, an int32, relay coils, and read-only points.
PROFILE = BOILER_PROFILE


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    path = tmp_path / "boiler.yaml"
    path.write_text(PROFILE)
    return path


async def start_sim(sims: list[ModbusSim], profile_path: Path, transport: str = "tcp",
                    units: tuple[int, ...] = (1,), baudrate: int = 38400) -> tuple[ModbusSim, dict[str, Any]]:
    """A simulator serving ``units`` over ``transport`` (the Modbus suite's ``start``), values held still."""
    return await start(sims, transport, dict.fromkeys(units, load_modbus_profile(profile_path)), baudrate)


def config(data_dir: Path, profile_path: Path, devices: dict[str, dict[str, Any]], *, mqtt_port: int | None = None,
           enabled: bool = True, allow: list[str] | None = None, rate: float = 50.0, burst: int = 50,
           max_queued: int = 4, interval: str = "1s", device_extra: str = "", extra: str = "") -> str:
    """A configuration with ``devices`` (id → connection) on the boiler profile and commands on."""
    # clock_check off: this host may have no NTP; the clock test sets the monitor itself.
    lines = [f"gateway: {{id: gw-t, data_dir: {data_dir}, clock_check: off}}", "web: {enabled: false}"]
    if mqtt_port is not None:
        lines.append(f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, reconnect_min: 0.1, reconnect_max: 0.5}}")
        lines.append("buffer: {flush_interval: 0.05}")
    allow_list = list(devices) if allow is None else allow
    lines.append(f"commands: {{enabled: {str(enabled).lower()}, allow: [{', '.join(allow_list)}], "
                 f"rate: {{rate: {rate}, burst: {burst}}}, max_queued: {max_queued}}}")
    lines.append("devices:")
    for dev, conn in devices.items():
        conn_text = ", ".join(f"{k}: {v}" for k, v in conn.items())
        lines.append(f"  - {{id: {dev}, driver: modbus, profile: {profile_path}, poll_interval: {interval}, "
                     f"{device_extra}connection: {{{conn_text}}}}}")
    return "\n".join(lines) + "\n" + textwrap.dedent(extra)

"""SunSpec by model: a simulator serving a real chain (common 1, inverter 103, MPPT 160, meter 203, end
marker) is discovered at each usual base, its models read with their scale factors applied, and published
end to end through the real gateway process to a real mosquitto, contract-valid."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.drivers.modbus.driver import ModbusDriver
from fieldgate.drivers.modbus.profile import ModbusProfile
from fieldgate.errors import DeviceProtocolError
from fieldgate.normalize import Normalizer
from fieldgate.testing import RecordingSink
from fieldgate_hwsim.modbus_sim import ModbusSim, load_modbus_profile
from fieldgate_hwsim.sunspec_sim import SunSpecDevice, SunSpecSim
from pydantic import ValidationError

from tests.modbus.conftest import make_ctx, validate_reading
from tests.modbus.stall_rig import SimThread

PROFILE = "sunspec/inverter"


async def _poll(profile: ModbusProfile, port: int) -> tuple[RecordingSink, ModbusDriver]:
    sink = RecordingSink()
    async with ModbusDriver(make_ctx(profile, host="127.0.0.1", port=port)) as drv:
        await drv.poll(sink)
    return sink, drv


def _published(profile: ModbusProfile, sink: RecordingSink) -> dict[str, dict[str, Any]]:
    msg = Normalizer("gw-test", "inv-1", profile).normalize(sink.readings[0])
    assert msg is not None
    validate_reading({"seq": 1, **msg})
    metrics: dict[str, dict[str, Any]] = msg["metrics"]
    return metrics


def _check_operating_point(m: dict[str, dict[str, Any]]) -> None:
    """The simulator's operating point, read back through scale factors of -2, -1, 0 and +1."""
    v = {k: x["value"] for k, x in m.items()}
    assert v["current_l1"] == pytest.approx(4.35)  # A_SF -2
    assert v["voltage_l1"] == pytest.approx(230.1)  # V_SF -1
    assert v["frequency"] == pytest.approx(50.01)
    assert v["power_factor_total"] == pytest.approx(99.5) and m["power_factor_total"]["unit"] == "%"
    assert m["inverter_tmp_cab"] == {"value": pytest.approx(41.2), "quality": "good", "unit": "Cel"}
    per_phase = sum(v[f"voltage_l{p}"] * v[f"current_l{p}"] for p in "123") * v["power_factor_total"] / 100
    assert v["power_total"] == pytest.approx(per_phase, abs=1.0)
    assert v["energy_yield_total"] == 1234567 and m["energy_yield_total"]["unit"] == "Wh"
    assert v["power_dc"] > v["power_total"]
    assert v["power_pv1"] + v["power_pv2"] == pytest.approx(v["power_dc"], abs=1.0)
    assert v["voltage_pv1"] == pytest.approx(620.5)
    assert v["energy_pv1"] == 700000 and v["energy_pv2"] == 530000  # DCWH_SF +1
    assert v["current_grid_l1"] == pytest.approx(-2.1)  # signed int16, exporting
    assert v["power_grid_total"] == v["power_grid_l1"] + v["power_grid_l2"] + v["power_grid_l3"] < 0
    assert v["energy_grid_import"] == 1_200_000 and v["energy_grid_export"] == 2_500_000  # TotWh_SF +1
    assert v["apparent_energy_grid_export"] == pytest.approx(2600.0)  # VAh published as kVAh
    assert m["apparent_energy_grid_export"]["unit"] == "kVAh"
    # SunSpec's "not implemented" (0x8000) is no value, not -3276.8 degrees
    assert m["inverter_tmp_trns"] == {"value": None, "quality": "bad", "reason": "not_implemented", "unit": "Cel"}
    assert not any(k.endswith("_sf") for k in m), "scale factors are read, not published"


@pytest.mark.parametrize("base", [40000, 0, 50000])
async def test_chain_discovered_at_each_base_and_scaled(base: int, sims: list[ModbusSim]) -> None:
    sim = SunSpecSim({1: SunSpecDevice(base)})
    sims.append(sim)
    port = await sim.start_tcp()
    profile = load_modbus_profile(PROFILE)
    sink, drv = await _poll(profile, port)
    assert not sink.errors, sink.errors
    assert drv.chain is not None and drv.chain.base == base
    assert [m[0] for m in drv.chain.models] == [1, 103, 160, 203]
    assert drv.chain.common["manufacturer"] == "fieldgate" and drv.chain.common["serial"] == "SIM-0001"
    _check_operating_point(_published(profile, sink))


async def test_chain_with_one_mppt_module_and_no_meter(sims: list[ModbusSim]) -> None:
    """The device's chain, not the profile, decides: absent models and modules are not published."""
    dev = SunSpecDevice(40000, models=(1, 103))
    sim = SunSpecSim({1: dev})
    sims.append(sim)
    port = await sim.start_tcp()
    profile = load_modbus_profile(PROFILE)
    sink, _ = await _poll(profile, port)
    m = _published(profile, sink)
    assert "power_total" in m and not any(k.startswith("mppt") or "_grid" in k or k.endswith("_pv1") for k in m)


async def test_no_marker_is_a_named_error_in_time(sims: list[ModbusSim]) -> None:
    """A plain Modbus meter is no SunSpec device: one clear error, within 2 s, no traceback."""
    sim = ModbusSim({1: load_modbus_profile("eastron/sdm120")}, animate=False)
    sims.append(sim)
    port = await sim.start_tcp()
    started = time.monotonic()
    with pytest.raises(DeviceProtocolError) as info:
        await _poll(load_modbus_profile(PROFILE), port)
    assert time.monotonic() - started < 2.0
    assert info.value.reason == "sunspec_not_found"
    assert "40000, 0, 50000" in str(info.value)


def test_unknown_model_is_a_named_profile_error() -> None:
    with pytest.raises(ValidationError, match="no SunSpec model 999"):
        ModbusProfile.model_validate({"schema_version": 1, "driver": "modbus", "vendor": "x", "model": "y",
                                      "sunspec": {"models": [103, 999]}, "points": []})


def test_generated_profile_validates_clean() -> None:
    out = subprocess.run([sys.executable, "-m", "fieldgate.cli", "validate",
                          str(Path(__file__).resolve().parents[2] / "profiles" / f"{PROFILE}.yaml")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and "0 warning(s)" in out.stdout, out


@pytest.fixture
def sim_port() -> Iterator[int]:
    """The SunSpec simulator on stall_rig's simulator thread (the gateway under test is another process)."""
    t = SimThread()
    sim = SunSpecSim({1: SunSpecDevice(40000)})
    t.sims.append(sim)
    try:
        yield asyncio.run_coroutine_threadsafe(sim.start_tcp(), t.loop).result(30)
    finally:
        t.stop()


def _config(tmp_path: Path, broker_port: int, port: int) -> Path:
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-sunspec, data_dir: {tmp_path / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker_port}}}\ndevices:\n"
        f"  - {{id: inv-1, driver: modbus, profile: {PROFILE}, poll_interval: 0.2s, "
        f"connection: {{transport: tcp, host: 127.0.0.1, port: {port}, unit: 1}}}}\n")
    return cfg


def test_sunspec_through_the_gateway_process(tmp_path: Path, mosquitto: Any, sim_port: int) -> None:
    """`fieldgate run`: the chain is discovered and its models published, scaled and contract-valid."""
    from tests.support.collector import Collector

    cfg = _config(tmp_path, mosquitto.port, sim_port)
    col = Collector(mosquitto.host, mosquitto.port).connect()
    log = (tmp_path / "gateway.log").open("w")
    gw = subprocess.Popen([sys.executable, "-m", "fieldgate.cli", "run", "-c", str(cfg)], stdout=log,
                          stderr=subprocess.STDOUT)
    try:
        col.wait_for(lambda: len([r for r in col.readings() if r["device"] == "inv-1"]) >= 2, timeout=60,
                     what="two readings of the SunSpec inverter")
        col.check_contract()
        reading = next(r for r in col.readings() if r["device"] == "inv-1")
        _check_operating_point(reading["metrics"])
        assert all(math.isfinite(m["value"]) for m in reading["metrics"].values() if m["value"] is not None)
        gw.send_signal(15)
        assert gw.wait(30) == 0
        text = (tmp_path / "gateway.log").read_text()
        assert "Traceback" not in text and "WARNING" not in text, text
        assert "SunSpec at 40000: fieldgate SunSpec sim 3P (serial SIM-0001), models 1 103 160 203" in text, text
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
        log.close()
        col.disconnect()


def test_probe_lists_the_models_found(tmp_path: Path, sim_port: int) -> None:
    cfg = _config(tmp_path, 1883, sim_port)  # probe never connects to the broker
    out = subprocess.run([sys.executable, "-m", "fieldgate.cli", "probe", "-c", str(cfg), "inv-1"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out
    for line in ("SunSpec model 1 (common) at 40002, 66 registers",
                 "SunSpec model 103 (inverter_three_phase) at 40070, 50 registers",
                 "SunSpec model 160 (mppt) at 40122",
                 "SunSpec model 203 (ac_meter_abcn)"):
        assert f"found: {line}" in out.stdout, out.stdout
    assert "power_total" in out.stdout


def test_a_scale_factor_adds_no_binary_noise() -> None:
    """1304 with SF -2 was published as 13.040000000000001 (``1304 * 10.0 ** -2``)."""
    from fieldgate.drivers.modbus.decode import apply_scale_factor

    assert apply_scale_factor(1304, -2) == 13.04
    assert apply_scale_factor(2301, -1) == 230.1
    assert apply_scale_factor(-7, 3) == -7000
    assert apply_scale_factor(15, 0) == 15

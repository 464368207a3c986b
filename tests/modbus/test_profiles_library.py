"""The meters and inverters of issue 20: each profile agrees with its datasheet facts, its vectors
decode to contract-valid readings, and its simulator serves a site whose values agree with each other."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.drivers.modbus.decode import decode, parse_hex_words
from fieldgate.normalize import Normalizer
from fieldgate.schema import RawReading
from fieldgate_hwsim.modbus_sim import load_modbus_profile
from fieldgate_hwsim.site_sim import SIMULATED, SiteModel, SiteSim

from tests.modbus.conftest import MODBUS_PROFILES, REPO, validate_reading

#: The devices added for issue 20, each with a datasheet facts file beside its profile.
NEW = ["abb/b23", "carlo-gavazzi/em24", "carlo-gavazzi/em340", "janitza/umg604", "siemens/pac3200",
       "schneider/iem3155", "huawei/sun2000", "kostal/plenticore", "growatt/tl3-x", "victron/gx-system"]
FACTS = sorted(p.relative_to(REPO / "profiles").as_posix().removesuffix(".datasheet.toml")
               for p in (REPO / "profiles").rglob("*.datasheet.toml"))


def facts(name: str) -> dict[str, Any]:
    return tomllib.loads((REPO / "profiles" / f"{name}.datasheet.toml").read_text())


def test_the_new_devices_ship_with_facts() -> None:
    assert set(NEW) <= set(FACTS) and set(NEW) <= set(MODBUS_PROFILES) and set(NEW) <= set(SIMULATED)


@pytest.mark.parametrize("name", FACTS)
def test_profile_agrees_with_its_datasheet_facts(name: str) -> None:
    """Every point is a documented register with the document's address, type and resolution;
    every documented register is published or left out with a reason."""
    p = load_modbus_profile(name)
    doc = facts(name)
    assert doc["document"]
    points = {x.name: x for x in p.points}
    published = set()
    for reg in doc["register"]:
        assert ("point" in reg) != ("left_out" in reg), reg
        if "left_out" in reg:
            assert len(reg["left_out"]) > 10, reg
            continue
        pt = points.get(reg["point"])
        assert pt is not None, f"{name}: facts name {reg['point']!r}, the profile has no such point"
        assert (pt.table, pt.address, pt.kind) == (reg["table"], reg["address"], reg["type"]), (reg, pt)
        assert pt.scale == pytest.approx(reg.get("resolution", 1.0)) or reg.get("unit") != pt.unit, (reg, pt)
        published.add(pt.name)
    assert published == set(points), f"{name}: points without a datasheet register: {set(points) - published}"


#: Modbus profiles of the library that need no facts file: their map is the SunSpec models'
#: own definitions (pysunspec2's data), walked at run time, not a register table of ours.
MODEL_DRIVEN = {"sunspec/inverter"}


def test_every_library_modbus_profile_has_datasheet_facts() -> None:
    """A register map without facts beside it is a map nobody checked against a document."""
    assert set(MODBUS_PROFILES) - MODEL_DRIVEN == set(FACTS)


@pytest.mark.parametrize("name", FACTS)
def test_every_point_is_verified_or_marked_unverified(name: str) -> None:
    """Issue 20's follow-up: each published register says whether its address, table, type, word
    order and scale were checked against the cited source (``verified = true``), or what was not
    (``verified = false`` and ``unverified = "..."``); the file names the source it was checked
    against, so a map written from memory cannot pass as a checked one."""
    doc = facts(name)
    source = doc.get("source")
    assert isinstance(source, dict), f"{name}: no [source] table (title, revision, section, checked)"
    for key in ("title", "revision", "section", "checked"):
        assert isinstance(source.get(key), str) and source[key].strip(), f"{name}: [source] lacks {key}"
    unmarked, unexplained = [], []
    for reg in doc["register"]:
        if "point" not in reg:
            continue
        mark = reg.get("verified")
        if not isinstance(mark, bool):
            unmarked.append(reg["point"])
        elif not mark and len(str(reg.get("unverified", "")).strip()) < 10:
            unexplained.append(reg["point"])
    assert not unmarked, f"{name}: points neither verified nor marked unverified: {unmarked}"
    assert not unexplained, f"{name}: unverified points without saying what is unverified: {unexplained}"
    if any(reg.get("verified") is True for reg in doc["register"]):
        # a verified point needs a source that says where it was looked up
        assert source.get("verified") is not False, f"{name}: points verified against a source marked unverified"


@pytest.mark.parametrize("name", NEW)
def test_vectors_become_contract_valid_readings(name: str) -> None:
    """Golden: the vectors' raw words through the decoder and the normalizer give the documented values."""
    p = load_modbus_profile(name)
    points = {x.name: x for x in p.points}
    raw: dict[str, Any] = {}
    want: dict[str, float] = {}
    for vec in p.test_vectors or []:
        pt = points[vec["point"]]
        raw[pt.name] = decode(parse_hex_words(vec["registers"]), pt.kind, *p.order_of(pt))
        # published rounded to the point's decimals
        want[pt.name] = vec["value"] if pt.decimals is None else round(vec["value"], pt.decimals)
    assert len(want) >= 8, f"{name}: too few vectors"
    msg = Normalizer("gw-test", "dev-1", p).normalize(RawReading(raw))
    assert msg is not None
    validate_reading({"seq": 1, **msg})  # the buffer numbers a reading; the rest is the normalizer's
    got = {k: m["value"] for k, m in msg["metrics"].items()}
    assert got == pytest.approx(want), name
    assert all(m["quality"] == "good" for m in msg["metrics"].values()), msg


def _values(name: str, steps: int) -> list[dict[str, float]]:
    """What a correct driver would publish from a SiteModel after each of ``steps`` steps."""
    p = load_modbus_profile(name)
    model = SiteModel(p, seed=3)
    out = []
    for _ in range(steps):
        model.step()
        msg = Normalizer("gw-test", "dev-1", p).normalize(RawReading(model.expected()))
        assert msg is not None
        assert all(m["quality"] == "good" for m in msg["metrics"].values()), msg
        out.append({k: m["value"] for k, m in msg["metrics"].items()})
    return out


@pytest.mark.parametrize("name", ["abb/b23", "carlo-gavazzi/em24", "carlo-gavazzi/em340", "janitza/umg604",
                                  "siemens/pac3200", "eastron/sdm630", "schneider/iem3155"])
def test_meter_simulator_is_physically_consistent(name: str) -> None:
    for v in _values(name, 5):
        for k in (1, 2, 3):
            p = v[f"power_l{k}"]
            if f"power_factor_l{k}" in v:  # a meter that publishes per-phase PF and powers (iEM3155 does not)
                s = v[f"apparent_power_l{k}"]
                assert p == pytest.approx(v[f"voltage_l{k}"] * v[f"current_l{k}"] * v[f"power_factor_l{k}"], rel=0.01)
                assert s == pytest.approx(v[f"voltage_l{k}"] * v[f"current_l{k}"], rel=0.01)
                assert math.hypot(p, v[f"reactive_power_l{k}"]) == pytest.approx(s, rel=0.01)
            else:
                assert p <= v[f"voltage_l{k}"] * v[f"current_l{k}"] * 1.001
        assert v["power_total"] == pytest.approx(sum(v[f"power_l{k}"] for k in (1, 2, 3)), rel=0.01)
        assert v["voltage_l1_l2"] == pytest.approx(math.sqrt(3) * v["voltage_l1"], rel=0.02)
        assert 49.9 <= v["frequency"] <= 50.1
    series = _values(name, 4)
    energy = [v[k] for v in series for k in v if k.startswith("energy_import")]
    assert energy and all(b >= a for a, b in zip(series[0].items(), series[-1].items(), strict=True)
                          if a[0].startswith(("energy_", "reactive_energy_import")))


@pytest.mark.parametrize(("name", "strings"), [("huawei/sun2000", 4), ("kostal/plenticore", 3), ("growatt/tl3-x", 2)])
def test_inverter_simulators_convert_their_strings(name: str, strings: int) -> None:
    for v in _values(name, 3):
        if "efficiency" in v:
            assert v["power_total"] == pytest.approx(v["power_dc_total"] * v["efficiency"] / 100, rel=0.01)
        else:
            assert 0.9 * v["power_dc_total"] < v["power_total"] < v["power_dc_total"]
        if name != "huawei/sun2000":  # SUN2000 has 4 strings modelled but reads every string it has
            total = sum(v[f"voltage_pv{k}"] * v[f"current_pv{k}"] for k in range(1, strings + 1))
            assert total <= v["power_dc_total"] * 1.01
        else:
            total = sum(v[f"voltage_pv{k}"] * v[f"current_pv{k}"] for k in range(1, 5))
            assert v["power_dc_total"] == pytest.approx(total, rel=0.01)
        if "voltage_l1" in v and "current_l1" in v:
            per_phase = v["voltage_l1"] * v["current_l1"] * v.get("power_factor_total", 0.995)
            assert per_phase == pytest.approx(v["power_total"] / 3, rel=0.02)
    series = _values(name, 3)
    assert series[-1]["energy_yield_total"] > series[0]["energy_yield_total"]


def test_gx_simulator_balances() -> None:
    for v in _values("victron/gx-system", 3):
        battery_to_ac = v["power_pv_dc"] - v["power_battery"]
        for k in (1, 2, 3):
            supply = v[f"power_grid_l{k}"] + v[f"power_pv_ac_output_l{k}"] + battery_to_ac / 3
            assert v[f"power_consumption_l{k}"] == pytest.approx(supply, abs=2.0)
        # the profile's derived totals, computed by the normalizer from the same reading
        assert v["power_consumption_total"] == sum(v[f"power_consumption_l{k}"] for k in (1, 2, 3))
        assert v["power_grid_total"] == sum(v[f"power_grid_l{k}"] for k in (1, 2, 3))
        assert v["power_battery"] == pytest.approx(v["voltage_battery"] * v["current_battery"], rel=0.01)
        assert v["battery_state"] == (1 if v["power_battery"] > 0 else 2)


class _SiteThread:
    """A SiteSim serving every new device (one unit each) from an event loop of its own thread."""

    def __init__(self, names: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="site-sim", daemon=True)
        self.thread.start()
        self.sim = SiteSim({u: load_modbus_profile(n) for u, n in enumerate(names, start=1)})
        self.port = asyncio.run_coroutine_threadsafe(self.sim.start_tcp(), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def site() -> Iterator[_SiteThread]:
    s = _SiteThread(NEW)
    yield s
    s.stop()


def test_every_new_device_through_the_gateway_process(tmp_path: Path, mosquitto: Any, site: _SiteThread) -> None:
    """`fieldgate run` against the simulated site: every new device publishes contract-valid, good,
    consistent readings on the broker, and its counters do not run backwards."""
    from tests.support.collector import Collector

    ids = [n.replace("/", "-") for n in NEW]
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-lib, data_dir: {tmp_path / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\ndevices:\n" + "".join(
            f"  - {{id: {d}, driver: modbus, profile: {n}, poll_interval: 0.2s, "
            f"connection: {{transport: tcp, host: 127.0.0.1, port: {site.port}, unit: {u}}}}}\n"
            for u, (d, n) in enumerate(zip(ids, NEW, strict=True), start=1)))
    validated = subprocess.run([sys.executable, "-m", "fieldgate.cli", "validate", str(cfg)],
                               capture_output=True, text=True, timeout=60, check=False)
    assert validated.returncode == 0 and "0 warning(s)" in validated.stdout, validated
    col = Collector(mosquitto.host, mosquitto.port).connect()
    log = (tmp_path / "gateway.log").open("w")
    gw = subprocess.Popen([sys.executable, "-m", "fieldgate.cli", "run", "-c", str(cfg)], stdout=log,
                          stderr=subprocess.STDOUT)
    try:
        def full(dev: str) -> list[dict[str, Any]]:
            # the readings that carry the every-6th-poll counters too
            prof = load_modbus_profile(NEW[ids.index(dev)])
            size = len(prof.points) + len(prof.derived)
            return [r for r in col.readings() if r["device"] == dev and len(r["metrics"]) == size]

        col.wait_for(lambda: all(len(full(d)) >= 2 for d in ids), timeout=60, what="two full readings per device")
        col.check_contract()
        for dev in ids:
            readings = full(dev)
            assert all(m["quality"] == "good" for r in readings for m in r["metrics"].values()), dev
            first, last = readings[0]["metrics"], readings[-1]["metrics"]
            for key, m in first.items():
                # counters (by unit) never run backwards; a net counter may
                if m.get("unit") in {"kWh", "Wh", "kvarh", "varh", "kVAh"} and "_net" not in key:
                    assert last[key]["value"] >= m["value"], (dev, key)
            m = last
            if "power_l1" in m and "power_factor_l1" in m:
                assert m["power_l1"]["value"] == pytest.approx(
                    m["voltage_l1"]["value"] * m["current_l1"]["value"] * m["power_factor_l1"]["value"], rel=0.02)
        gw.send_signal(15)
        assert gw.wait(30) == 0
        text = (tmp_path / "gateway.log").read_text()
        assert "Traceback" not in text and "WARNING" not in text, text
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
        log.close()
        col.disconnect()

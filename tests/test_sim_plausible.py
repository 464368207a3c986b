"""The simulators show values an operator would believe (issue 22).

Before: an SDM120 whose power factor read -0.06 while active power was about the apparent
power, an XY-MD02 on unit 2 whose address register said 49, a CPN01 in ``mode = 20`` whose
clock read 20 s after 1970. Each check below is a law of the quantity, not a copy of the
simulator: P = V·I·PF, S = V·I, S² = P² + Q², cos(phase angle) = PF, the address register is
the unit that answered, a device's clock is about now.

Modbus goes through the real stack: hw-sim servers (their CLI), the gateway (``run --stdout``)
polling them over TCP, and the reading messages it prints. The CoAP sensor's report is
decoded by the driver's own decoder.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Proc


@pytest.fixture
def modbus_sim() -> Iterator[Callable[[str, int], int]]:
    """Start ``python -m fieldgate_hwsim.modbus_sim`` for one profile and unit; returns its TCP port."""
    procs: list[subprocess.Popen[str]] = []

    def start(profile: str, unit: int) -> int:
        proc = subprocess.Popen([sys.executable, "-m", "fieldgate_hwsim.modbus_sim", "--profile", profile,
                                 "--unit", str(unit), "--tcp", "127.0.0.1:0"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "modbus tcp 127.0.0.1:PORT units N": printed once it listens
        assert line.startswith("modbus tcp "), line
        return int(line.split()[2].rpartition(":")[2])

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _first_readings(proc: Proc, devices: set[str], timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while set(out) != devices:
        msg = json.loads(proc.next_line(timeout=max(0.1, deadline - time.monotonic())))
        if msg.get("device") in devices and msg["device"] not in out:
            out[msg["device"]] = {k: m["value"] for k, m in msg["metrics"].items()}
    return out


def test_modbus_meters_and_sensors_read_like_real_ones(
        modbus_sim: Callable[[str, int], int], tmp_path: Path, write_config: Callable[[str], Path],
        fieldgate_proc: Callable[..., Proc]) -> None:
    meter_port = modbus_sim("eastron/sdm120", 1)
    climate_port = modbus_sim("generic-rs485/xy-md02", 2)
    cfg = write_config(
        f"gateway: {{id: gw-sim, data_dir: {tmp_path / 'data'}}}\n"
        "web: {enabled: false}\n"
        "devices:\n"
        "  - {id: meter, driver: modbus, profile: eastron/sdm120, poll_interval: 1s,"
        f" connection: {{transport: tcp, host: 127.0.0.1, port: {meter_port}, unit: 1}}}}\n"
        "  - {id: climate, driver: modbus, profile: generic-rs485/xy-md02, poll_interval: 1s,"
        f" connection: {{transport: tcp, host: 127.0.0.1, port: {climate_port}, unit: 2}}}}\n")
    proc = fieldgate_proc("run", "-c", str(cfg), "--stdout")
    got = _first_readings(proc, {"meter", "climate"})

    m = got["meter"]
    v, i, p, s, q, pf = (m[k] for k in ("voltage", "current", "power_total", "apparent_power_total",
                                        "reactive_power_total", "power_factor_total"))
    assert 207 <= v <= 253  # 230 V ± 10 %
    assert 0.5 <= pf <= 1.0, m  # a building's load imports, mostly resistive
    assert s == pytest.approx(v * i, rel=0.01), m
    assert p == pytest.approx(v * i * pf, rel=0.01), m
    assert s * s == pytest.approx(p * p + q * q, rel=0.02), m
    assert math.cos(math.radians(m["phase_angle_total"])) == pytest.approx(pf, abs=0.01), m
    assert m["meter_id"] == 1  # the unit the gateway asked
    assert m["parity_code"] == 0, m  # the SDM120 has no demand-period register (protocol V2.4)

    c = got["climate"]
    assert c["device_address"] == 2, c
    assert c["temperature_correction"] == 0 and c["humidity_correction"] == 0, c
    assert c["baud_code"] == 0, c  # 9600, the device's default
    assert -40 <= c["temperature"] <= 60 and 0 <= c["humidity"] <= 100


def test_the_cpn01_reports_its_mode_and_a_clock_near_now() -> None:
    from fieldgate.drivers.coap.payload import PayloadDecoder
    from fieldgate_hwsim.coap_sim import Model, encode, load_coap_profile

    profile = load_coap_profile("dragino/cpn01")
    model = Model(profile, seed=3)
    decoder = PayloadDecoder(profile)
    counts = []
    for _ in range(20):
        model.step()
        payload, cf = encode(profile, model)
        values = decoder.decode(payload, cf)[0].values
        assert values["mode"] == 1, values  # MOD=1, the open/close mode the datasheet's example reports
        assert values["firmware_version"] == 100, values
        assert abs(values["device_time"] - time.time()) < 3600, values  # Unix seconds, not 20 s after 1970
        counts.append(values["open_count"])
    assert counts == sorted(counts), counts  # a total of openings never goes down

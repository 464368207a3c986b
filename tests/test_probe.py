"""`fieldgate probe DEVICE`: a technician's one-off read of a configured device, as the CLI runs it.

Polled devices are polled once; devices that report on their own (BLE adverts, CoAP observe, a
sleeping NB-IoT device pushing) are run until their first report. Every failure is one clear line
and exit code 3, never a traceback.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, SIM_PROFILES


def probe(config: Path, device: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fieldgate.cli", "probe", device, "-c", str(config), *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)


def config(tmp_path: Path, *devices: str) -> Path:
    path = tmp_path / "fieldgate.yaml"
    path.write_text("gateway: {id: gw-probe, clock_check: off}\ndevices:\n" + "".join(d + "\n" for d in devices))
    return path


def sim(dev_id: str, **conn: str) -> str:
    c = ", ".join(f"{k}: {v}" for k, v in conn.items())
    return (f"  - {{id: {dev_id}, driver: sim, profile: {SIM_PROFILES / 'energy-meter.yaml'}, timeout: 1s, "
            f"connection: {{{c}}}}}")


def assert_clean(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_a_polled_device_prints_raw_and_normalized_values(tmp_path: Path) -> None:
    res = probe(config(tmp_path, sim("meter-1")), "meter-1")
    assert res.returncode == 0, res.stdout + res.stderr
    header, *rows = res.stdout.splitlines()
    assert header.split() == ["point", "raw", "value", "unit", "quality"]
    voltage = next(r.split() for r in rows if r.startswith("voltage "))
    assert voltage[3] == "V" and voltage[4] == "good" and 180 < float(voltage[2]) < 280
    assert rows[-1].startswith("meter-1: 6 point(s) in ")


def test_unknown_dead_and_buggy_devices_get_one_clear_line(tmp_path: Path) -> None:
    cfg = config(tmp_path, sim("gone-1", fail="unreachable"), sim("bug-1", fail="bug"), sim("hung-1", fail="hang"))
    unknown, gone, bug, hung = (probe(cfg, d, *x) for d, x in
                                (("nope", ()), ("gone-1", ()), ("bug-1", ()), ("hung-1", ("--wait", "0.5"))))
    assert unknown.returncode == 1 and "no device 'nope'" in unknown.stdout
    assert "gone-1, bug-1, hung-1" in unknown.stdout
    assert gone.returncode == 3 and gone.stdout.startswith("gone-1: simulated device does not answer")
    assert bug.returncode == 3 and "the sim driver failed: ZeroDivisionError" in bug.stdout
    assert hung.returncode == 3 and hung.stdout.strip() == "hung-1: no answer within 0.5s"
    for res in (unknown, gone, bug, hung):
        assert_clean(res)


def test_ble_devices_are_read_from_their_first_advert(tmp_path: Path) -> None:
    pytest.importorskip("bleak")
    from fieldgate_hwsim.ble_sim import demo_devices

    res = probe(config(tmp_path, *demo_devices(tmp_path)), "ble-thermo-bthome")  # encrypted, key from a file
    assert res.returncode == 0, res.stdout + res.stderr
    assert "waiting up to 30 s for ble-thermo-bthome to report" in res.stderr
    temperature = next(r.split() for r in res.stdout.splitlines() if r.startswith("temperature "))
    assert temperature[3:] == ["Cel", "good"]


async def test_a_sleeping_push_device_is_read_when_it_wakes(tmp_path: Path) -> None:
    pytest.importorskip("aiocoap")
    from fieldgate_hwsim.coap_sim import SleepyDevice, free_udp_port, load_coap_profile

    port = free_udp_port()
    cfg = config(tmp_path, f"  - {{id: bin-1, driver: coap, profile: dragino/ndds75, "
                           f"connection: {{mode: push, listen: '127.0.0.1:{port}'}}}}")
    # nobody pushes: the probe says how long it waited, and where it listened
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fieldgate.cli", "probe", "bin-1", "-c", str(cfg), "--wait", "0.5", cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 3 and out.decode().strip() == "bin-1: no report within 0.5s"
    assert f"report at coap://127.0.0.1:{port}/t/bin-1; wake it" in err.decode()
    # the device wakes while the probe listens (it retransmits until the probe's endpoint answers)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fieldgate.cli", "probe", "bin-1", "-c", str(cfg), "--wait", "30", cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with SleepyDevice(("127.0.0.1", port), "/t/bin-1", load_coap_profile("dragino/ndds75"), seed=3,
                            ack_timeout=0.2, max_retransmit=50) as device:
        code = await device.push(timeout=30)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert code.startswith("2.04"), code
    assert proc.returncode == 0, out.decode() + err.decode()
    distance = next(r.split() for r in out.decode().splitlines() if r.startswith("distance "))
    assert distance[3] == "mm" and 0 <= float(distance[2]) <= 7500

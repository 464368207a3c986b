"""Benchmark: BLE adverts decoded per second on one core, per decoder; import cost of the decoders.

Run: .venv/bin/python bench/ble.py
For each decoder, decodes hw-sim's published vectors in a loop and prints adverts/s of CPU time
(decoder only, then through the driver's handle and the core's normalizer: what one advert costs
the gateway). Then the time and memory a fresh interpreter needs to import the decoders, and the
same for ``bthome_ble`` if it is installed (the issue measured it at ~30 MiB, 212 ms).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from fieldgate.config import load_profile_file
from fieldgate.driver import DeviceContext, SharedResources
from fieldgate.drivers.ble.decode import DECODERS
from fieldgate.drivers.ble.driver import BleDriver, read_bind_key
from fieldgate.drivers.ble.profile import BleConnection, BleProfile
from fieldgate.drivers.ble.scanner import Advert
from fieldgate.normalize import Normalizer
from fieldgate.schema import RawReading
from fieldgate_hwsim.ble_sim import BTHOME_EXAMPLE_KEY, RECORDINGS

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
N = 20_000
CASES = {  # name: (recording, profile, bind key)
    "bthome (plain)": ("bthome", "bthome/thermometer", None),
    "bthome (AES-CCM)": ("bthome-encrypted", "bthome/thermometer", BTHOME_EXAMPLE_KEY),
    "ruuvi": ("ruuvi", "ruuvi/ruuvitag", None),
    "pvvx": ("pvvx", "xiaomi/lywsd03mmc-pvvx", None),
    "ibeacon": ("ibeacon", "beacon/ibeacon", None),
    "eddystone": ("eddystone-uid", "beacon/eddystone-uid", None),
}


class _Null:
    def __init__(self, norm: Normalizer) -> None:
        self.norm = norm

    def add(self, reading: RawReading) -> None:
        self.norm.normalize(reading)

    def add_error(self, error: object) -> None:
        raise AssertionError(error)


def load_ble_profile(name: str) -> BleProfile:
    profile, diags = load_profile_file(PROFILES / f"{name}.yaml", BleDriver)  # type: ignore[arg-type]
    assert isinstance(profile, BleProfile), diags
    return profile


def rate(fn: Callable[[], object], n: int = N) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return n / (time.process_time() - start)


def import_cost(module: str) -> tuple[float, float] | None:
    code = ("import resource, time; r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; t = time.perf_counter(); "
            f"import {module}; dt = time.perf_counter() - t; "
            "print(dt * 1000, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode:
        return None
    ms, mib = map(float, out.stdout.split())
    return ms, mib


def main() -> None:
    print(f"{'decoder':18} {'decode/s':>12} {'advert→reading/s':>18}")
    for label, (rec_name, profile_name, key) in CASES.items():
        rec = RECORDINGS[rec_name]
        dec = DECODERS[load_ble_profile(profile_name).decoder or ""]
        payload = dec.payload(rec.service_data, rec.manufacturer_data)
        assert payload is not None
        raw_key = bytes.fromhex(key) if key else None
        decode_rate = rate(partial(dec.decode, payload, rec.address, raw_key))
        profile = load_ble_profile(profile_name)
        conn = BleConnection(address=rec.address, dedupe_window=0, backend="replay")
        driver = BleDriver(DeviceContext("bench", profile, conn, 1.0, logging.LoggerAdapter(logging.getLogger("b")),
                                         SharedResources()))
        driver.key = raw_key if key else read_bind_key(conn)
        sink = _Null(Normalizer("gw", "bench", profile))
        advert = Advert(rec.address, -60, rec.service_data, rec.manufacturer_data)
        full_rate = rate(partial(driver.handle, advert, sink))  # type: ignore[arg-type]
        print(f"{label:18} {decode_rate:12,.0f} {full_rate:18,.0f}")
    print()
    for module in ("fieldgate.drivers.ble.decode", "bthome_ble"):
        cost = import_cost(module)
        print(f"import {module}: " + ("not installed" if cost is None else f"{cost[0]:.0f} ms, +{cost[1]:.1f} MiB RSS"))


if __name__ == "__main__":
    main()

"""Fuzzing every decoder: random and mutated payloads raise nothing but ``DecodeError``.

The seeds are the published vectors (see test_decode.py); mutations flip, insert, delete and
truncate bytes. The driver's ``handle`` on top must not raise either: an advertiser can send
anything, and nothing it sends may stop the device.
"""

from __future__ import annotations

from typing import Any

from fieldgate.drivers.ble.decode import DECODERS, DecodeError
from fieldgate.drivers.ble.driver import BleDriver
from fieldgate.drivers.ble.scanner import Advert
from fieldgate.testing import RecordingSink as Sink
from fieldgate_hwsim.ble_sim import RECORDINGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import context

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = "54:48:E6:8F:80:A5"
SEEDS: dict[str, list[bytes]] = {name: [] for name in DECODERS}
for rec in RECORDINGS.values():
    for name, dec in DECODERS.items():
        payload = dec.payload(rec.service_data, rec.manufacturer_data)
        if payload is not None:
            SEEDS[name].append(payload)
SEEDS["bthome"] += [bytes.fromhex("40 002e 0164 1e01 2e34 451601"), bytes.fromhex("40 53 03 616263 54 02 ffee")]
SEEDS["eddystone"] += [bytes.fromhex("20 00 0bb8 1780 0000002a 00000064")]
SEEDS["pvvx"] += [bytes.fromhex("A4C138ABCDEF 00D5 30 5B 0BC3 07")]

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "extend"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
        elif op == "extend":
            data += draw(st.binary(max_size=8))
    return bytes(data)


def _decode_all(data: bytes) -> None:
    for name, dec in DECODERS.items():
        for mac, key in ((None, None), (MAC, KEY), (MAC, None), ("bad", KEY)):
            try:
                out = dec.decode(data, mac, key)
            except DecodeError:
                continue
            assert isinstance(out, dict), name


@FUZZ
@given(st.binary(max_size=64))
def test_random_payloads(data: bytes) -> None:
    _decode_all(data)


def _mutation_test(name: str) -> Any:
    @FUZZ
    @given(mutated(SEEDS[name]))
    def check(data: bytes) -> None:
        _decode_all(data)

    return check


test_mutated_bthome = _mutation_test("bthome")
test_mutated_ruuvi = _mutation_test("ruuvi")
test_mutated_pvvx = _mutation_test("pvvx")
test_mutated_ibeacon = _mutation_test("ibeacon")
test_mutated_eddystone = _mutation_test("eddystone")


def test_every_decoder_has_seeds() -> None:
    assert all(SEEDS.values()), {k: len(v) for k, v in SEEDS.items()}


@FUZZ
@given(st.sampled_from(["bthome/thermometer", "ruuvi/ruuvitag", "xiaomi/lywsd03mmc-pvvx", "beacon/ibeacon",
                        "beacon/eddystone-uid", "shelly/blu-door-window"]),
       st.dictionaries(st.sampled_from(list({u for r in RECORDINGS.values() for u in r.service_data})),
                       st.binary(max_size=40), max_size=2),
       st.dictionaries(st.sampled_from([0x0499, 0x004C, 0x0059]), st.binary(max_size=40), max_size=2),
       st.one_of(st.none(), st.integers(-127, 20)))
def test_driver_handle_never_raises(profile: str, service: dict[str, bytes], manufacturer: dict[int, bytes],
                                    rssi: int | None) -> None:
    driver = BleDriver.create(context(profile, address=MAC))
    sink = Sink()
    driver.handle(Advert(MAC, rssi, service, manufacturer), sink)
    assert len(sink.readings) + len(sink.errors) <= 1

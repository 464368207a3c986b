"""Golden tests: datasheet frames of every shipped profile → the contract's reading message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fieldgate.codecs.fields import BinaryDecoder, TextDecoder
from fieldgate.codecs.frames import make_framer
from fieldgate.config import load_config
from fieldgate.drivers.serial import nmea
from fieldgate.drivers.serial.profile import SerialProfile
from fieldgate.normalize import Normalizer
from fieldgate.schema import RawReading
from fieldgate_hwsim.serial_sim import nmea_sentence

from .conftest import REPO, load_serial_profile, serial_profiles

TS = 1_795_000_000.25  # a fixed measurement time for whole-message comparisons


def decode_vector(profile: SerialProfile, vector: dict[str, Any], byte_by_byte: bool = False) -> list[dict[str, Any]]:
    """Raw bytes of a test vector → framer → decoder → normalized messages."""
    data = bytes.fromhex(vector["hex"]) if "hex" in vector else vector["text"].encode("latin-1")
    framer = make_framer(profile.frame)
    points = [(p.name, p) for p in profile.points]
    decoder = (TextDecoder(profile.frame.patterns, points) if profile.frame.is_text
               else BinaryDecoder(points, profile.frame.byte_order))
    frames = ([f for b in data for f in framer.feed(bytes([b]))] if byte_by_byte else framer.feed(data))
    norm = Normalizer("gw-test", "dev-1", profile, {"driver": "serial"})
    out = []
    for frame in frames:
        values = decoder.decode(frame)
        assert values is not None, f"no pattern matches {frame!r}"
        if profile.nmea is not None:
            nmea.apply(profile.nmea, values)  # as the driver does for each frame
        msg = norm.normalize(RawReading(values, ts=TS))
        assert msg is not None
        out.append({"seq": 1, **msg})
    return out


def test_every_serial_profile_is_shipped_with_a_datasheet_and_vectors() -> None:
    names = {p.relative_to(REPO / "profiles").with_suffix("").as_posix() for p in serial_profiles()}
    assert {"novafitness/sds011", "plantower/pms5003", "nmea0183/gnss", "vaisala/hmp155"} <= names
    for path in serial_profiles():
        profile = load_serial_profile(path)
        assert profile.datasheet and profile.test_vectors, path


@pytest.mark.parametrize("path", serial_profiles(), ids=lambda p: p.parent.name + "/" + p.stem)
@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "bytewise"])
def test_datasheet_vectors(path: Path, byte_by_byte: bool, validate_reading: Callable[[dict[str, Any]], None]) -> None:
    profile = load_serial_profile(path)
    assert profile.test_vectors
    for vector in profile.test_vectors:
        [msg] = decode_vector(profile, vector, byte_by_byte)
        validate_reading(msg)
        got = {name: m["value"] for name, m in msg["metrics"].items()}
        for name, expected in vector["expect"].items():
            if isinstance(expected, float):
                assert got[name] == pytest.approx(expected, abs=1e-6), name
            else:
                assert got[name] == expected, name
        assert all(m["quality"] == "good" for m in msg["metrics"].values())


def test_sds011_golden_message(validate_reading: Callable[[dict[str, Any]], None]) -> None:
    profile = load_serial_profile(REPO / "profiles/novafitness/sds011.yaml")
    [msg] = decode_vector(profile, {"hex": "AA C0 D4 04 3A 0A A1 60 1D AB"})
    assert msg == {
        "seq": 1,
        "schema": "fieldgate.reading/1",
        "gateway": "gw-test",
        "device": "dev-1",
        "ts": "2026-11-18T11:06:40.250Z",
        "metrics": {
            "pm2_5": {"value": 123.6, "quality": "good", "unit": "ug/m3"},
            "pm10": {"value": 261.8, "quality": "good", "unit": "ug/m3"},
            "device_id": {"value": 41312, "quality": "good"},
        },
        "meta": {"driver": "serial"},
    }
    validate_reading(msg)


def test_gnss_without_fix_reports_no_fix(validate_reading: Callable[[dict[str, Any]], None]) -> None:
    profile = load_serial_profile(REPO / "profiles/nmea0183/gnss.yaml")
    sentence = nmea_sentence("GPGGA,002153.000,,,,,0,00,,,M,,M,,").decode()
    [msg] = decode_vector(profile, {"text": sentence})
    validate_reading(msg)
    m = msg["metrics"]
    assert m["fix_quality"] == {"value": 0, "quality": "good"}
    # quality 0 says why the fields are empty: no_fix, not merely no_value
    assert m["latitude"] == {"value": None, "quality": "bad", "unit": "lat", "reason": "no_fix"}


def test_out_of_range_value_is_flagged(validate_reading: Callable[[dict[str, Any]], None]) -> None:
    profile = load_serial_profile(REPO / "profiles/novafitness/sds011.yaml")
    frame = bytearray.fromhex("AA C0 FF FF 3A 0A A1 60 00 AB")   # PM2.5 6553.5: beyond 999.9
    frame[8] = sum(frame[2:8]) & 0xFF
    [msg] = decode_vector(profile, {"hex": frame.hex()})
    validate_reading(msg)
    assert msg["metrics"]["pm2_5"]["reason"] == "out_of_range"


def test_example_config_validates() -> None:
    loaded = load_config(REPO / "drivers" / "serial" / "example.yaml")
    assert {d.driver.name for d in loaded.devices} == {"serial"}
    assert not [w for w in loaded.warnings if w.severity == "error"]


# A receiver that lost its fix keeps sending its last position: GGA quality 0
# (u-blox and SiRF do this) or RMC status V. Those coordinates must not reach
# the broker as good values.
NO_FIX = [
    pytest.param("GPGGA,123520,4807.038,N,01131.000,E,0,00,99.9,545.4,M,46.9,M,,", id="gga-quality-0"),
    pytest.param("GPRMC,123520,V,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W", id="rmc-status-v"),
]


@pytest.mark.parametrize("body", NO_FIX)
def test_gnss_stale_position_without_fix_is_bad_no_fix(body: str,
                                                       validate_reading: Callable[[dict[str, Any]], None]) -> None:
    profile = load_serial_profile(REPO / "profiles/nmea0183/gnss.yaml")
    [msg] = decode_vector(profile, {"text": nmea_sentence(body).decode()})
    validate_reading(msg)
    m = msg["metrics"]
    for name in ("latitude", "longitude", "altitude", "speed", "course"):
        if name in m:
            assert m[name]["quality"] == "bad" and m[name]["reason"] == "no_fix", (name, m[name])
            assert m[name]["value"] is None, (name, m[name])
    assert "latitude" in m and "longitude" in m
    # the fix indicators themselves are good readings: they say why
    if "fix_quality" in m:
        assert m["fix_quality"] == {"value": 0, "quality": "good"}
    if "fix_valid" in m:
        assert m["fix_valid"] == {"value": False, "quality": "good"}

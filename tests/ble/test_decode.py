"""Golden tests of the advertisement decoders against the formats' published test vectors.

Vectors: bthome.io's format and encryption examples (also used by bthome-ble's and ble_monitor's
tests), Ruuvi's published RAWv2 vectors (docs.ruuvi.com, data format 5), Apple's AirLocate
iBeacon UUID, the Eddystone specification's URL example, and frames built from the published
pvvx/atc1441 layouts. Each goes through the driver to the schema-validated reading message.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from fieldgate.config import load_config, load_profile
from fieldgate.drivers.ble.decode import (
    BTHOME_UUID,
    DECODERS,
    DecodeError,
    bthome_encrypt,
    decode_bthome,
    decode_eddystone,
    decode_ibeacon,
    decode_pvvx,
    decode_ruuvi,
    uuid16,
)
from fieldgate.drivers.ble.driver import BleDriver, read_bind_key, unpack_point
from fieldgate.drivers.ble.profile import BleConnection, BleProfile
from fieldgate.drivers.ble.scanner import Advert
from fieldgate.errors import DeviceProtocolError, DriverError
from fieldgate.normalize import Normalizer
from fieldgate.schema import RawReading
from fieldgate.testing import RecordingSink as Sink
from fieldgate.yamlsrc import load_yaml

from .conftest import REPO, ble_profiles, context, load_ble_profile, validate_reading

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")  # bthome.io's example key (public)
MAC = "54:48:E6:8F:80:A5"


# --- BTHome v2 ---------------------------------------------------------------

@pytest.mark.parametrize(("hexdata", "mac", "key", "expected"), [
    # bthome.io/format example objects: temperature 0x02 CA09 = 25.06, humidity 0x03 BF13 = 50.55
    ("4002ca0903bf13", None, None, {"temperature": 25.06, "humidity": 50.55, "encrypted": False}),
    # bthome-ble: pressure 0x04 138A01 = 1008.83 hPa; with and without the MAC in the payload
    ("40 04 13 8a 01", None, None, {"pressure": 1008.83, "encrypted": False}),
    ("42 b2188d38c1a4 04 138a01", None, None, {"pressure": 1008.83, "encrypted": False}),
    # bthome-ble: Shelly BLU H&T Display ZB: packet id 46, battery 100, light on, humidity 52 %, temp 27.8
    ("40 002e 0164 1e01 2e34 451601", None, None,
     {"packet_id": 46, "battery": 100, "light": True, "humidity": 52, "temperature": 27.8, "encrypted": False}),
    # bthome.io/encryption example: key 231d39c1..., MAC 5448E68F80A5, counter 00112233
    ("41a47266c95f730011223378237214", MAC, KEY,
     {"temperature": 25.06, "humidity": 50.55, "encrypted": True, "counter": 0x33221100}),
    # the same with the MAC carried in the payload (device information bit 1)
    ("43a5808fe64854f196c06ffb4900112233f08ecbde", None, KEY,
     {"temperature": 25.06, "humidity": 50.55, "encrypted": True, "counter": 0x33221100}),
])
def test_bthome_vectors(hexdata: str, mac: str | None, key: bytes | None, expected: dict[str, Any]) -> None:
    assert decode_bthome(bytes.fromhex(hexdata), mac, key) == expected


def test_bthome_repeated_objects_get_suffixes_and_text() -> None:
    data = bytes.fromhex("40 02 6400 02 c800 1a 01 53 03 616263")
    assert decode_bthome(data) == {"temperature": 1.0, "temperature_2": 2.0, "door": True, "text": "abc",
                                   "encrypted": False}


def test_bthome_encrypt_round_trip_matches_the_published_vector() -> None:
    sealed = bthome_encrypt(bytes.fromhex("02ca0903bf13"), MAC, KEY, 0x33221100)
    assert sealed.hex() == "41a47266c95f730011223378237214"
    assert bthome_encrypt(bytes.fromhex("02ca0903bf13"), MAC, KEY, 0x33221100, mac_in_payload=True).hex() == \
        "43a5808fe64854f196c06ffb4900112233f08ecbde"


@pytest.mark.parametrize(("hexdata", "mac", "key", "reason", "match"), [
    # bthome-ble's wrong-key vector: encrypted with another key
    ("41d2fcefe52eb212d600112233bc38c966", "A4:C1:38:8D:18:B2", KEY, "decrypt_error", "does not decrypt"),
    ("41a47266c95f730011223378237214", MAC, bytes(16), "decrypt_error", "does not decrypt"),
    ("41a47266c95f730011223378237214", "54:48:E6:8F:80:A6", KEY, "decrypt_error", "does not decrypt"),
    ("41a47266c95f730011223378237214", MAC, None, "decrypt_error", "no bind key"),
    # downgrade: a device with a key that suddenly sends in clear (bthome-ble's downgrade vector)
    ("40 04 13 8a 01", MAC, KEY, "unencrypted", "unencrypted"),
    # bthome-ble: version 7 does not exist
    ("e1 02 00 0c 04 04 13 8a 01", None, None, "decode_error", "version 7"),
    ("40 02 ca", None, None, "decode_error", "cut short"),
    ("40 ff 01", None, None, "decode_error", "unknown"),
    ("", None, None, "decode_error", "empty"),
])
def test_bthome_rejections(hexdata: str, mac: str | None, key: bytes | None, reason: str, match: str) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        decode_bthome(bytes.fromhex(hexdata), mac, key)
    assert info.value.reason == reason


# --- Ruuvi RAWv2 -------------------------------------------------------------

RUUVI_VALID = "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"


def test_ruuvi_published_vectors() -> None:
    assert decode_ruuvi(bytes.fromhex(RUUVI_VALID)) == {
        "temperature": 24.3, "humidity": 53.49, "pressure": 100044, "acceleration_x": 0.004,
        "acceleration_y": -0.004, "acceleration_z": 1.036, "battery_voltage": 2.977, "tx_power": 4,
        "movement_counter": 66, "measurement_sequence": 205, "mac": "CB:B8:33:4C:88:4F"}
    assert decode_ruuvi(bytes.fromhex("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F")) == {
        "temperature": 163.835, "humidity": 163.835, "pressure": 115534, "acceleration_x": 32.767,
        "acceleration_y": 32.767, "acceleration_z": 32.767, "battery_voltage": 3.646, "tx_power": 20,
        "movement_counter": 254, "measurement_sequence": 65534, "mac": "CB:B8:33:4C:88:4F"}
    assert decode_ruuvi(bytes.fromhex("058001000000008001800180010000000000CBB8334C884F")) == {
        "temperature": -163.835, "humidity": 0.0, "pressure": 50000, "acceleration_x": -32.767,
        "acceleration_y": -32.767, "acceleration_z": -32.767, "battery_voltage": 1.6, "tx_power": -40,
        "movement_counter": 0, "measurement_sequence": 0, "mac": "CB:B8:33:4C:88:4F"}
    # the "invalid values" vector: every field is marked not available
    invalid = decode_ruuvi(bytes.fromhex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF"))
    assert set(invalid.values()) == {None}


@pytest.mark.parametrize(("hexdata", "match"), [
    ("03291A1ECE1EFC18F94202CA0B53", "not RAWv2"),  # data format 3 (RAWv1)
    (RUUVI_VALID[:-2], "24 bytes"),
    ("", "not RAWv2"),
])
def test_ruuvi_rejections(hexdata: str, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_ruuvi(bytes.fromhex(hexdata))


# --- pvvx / atc1441 ------------------------------------------------------------

def test_pvvx_and_atc1441_layouts() -> None:
    assert decode_pvvx(bytes.fromhex("563412 38C1A4 2909 D711 A90B 57 1C 05")) == {
        "temperature": 23.45, "humidity": 45.67, "battery": 87, "battery_voltage": 2.985, "counter": 28,
        "flags": 5, "mac": "A4:C1:38:12:34:56"}
    # negative temperature: int16 0xFF38 = -200 → -2.00 °C
    assert decode_pvvx(bytes.fromhex("563412 38C1A4 38FF D711 A90B 57 1C 05"))["temperature"] == -2.0
    assert decode_pvvx(bytes.fromhex("A4C138ABCDEF 00D5 30 5B 0BC3 07")) == {
        "temperature": 21.3, "humidity": 48.0, "battery": 91, "battery_voltage": 3.011, "counter": 7,
        "mac": "A4:C1:38:AB:CD:EF"}
    with pytest.raises(DecodeError, match="neither pvvx"):
        decode_pvvx(bytes(14))


# --- iBeacon / Eddystone ---------------------------------------------------------

def test_ibeacon() -> None:
    assert decode_ibeacon(bytes.fromhex("0215 e2c56db5dffb48d2b060d0f5a71096e0 0001 0002 c5")) == {
        "uuid": "e2c56db5-dffb-48d2-b060-d0f5a71096e0", "major": 1, "minor": 2, "tx_power": -59, "present": True}
    with pytest.raises(DecodeError, match="not an iBeacon"):
        decode_ibeacon(bytes.fromhex("10063b1d4f2a9c61"))  # a phone's nearby-info advert


def test_eddystone_frames() -> None:
    assert decode_eddystone(bytes.fromhex("00 ec edd1ebeac04e5defa017 0123456789ab 0000")) == {
        "frame": "uid", "tx_power": -20, "namespace": "edd1ebeac04e5defa017", "instance": "0123456789ab",
        "present": True}
    # the specification's URL example: 0x00 "http://www." + "google" + 0x07 ".com"
    assert decode_eddystone(bytes.fromhex("10f800676f6f676c6507"))["url"] == "http://www.google.com"
    assert decode_eddystone(bytes.fromhex("20 00 0bb8 1780 0000002a 00000064")) == {
        "frame": "tlm", "battery_voltage": 3.0, "temperature": 23.5, "adv_count": 42, "uptime": 10.0,
        "present": True}
    for bad in ("30 00", "00 ec 00", "20 01 0bb8 1780 0000002a 00000064", "10 f8 09 41", "10 f8 00 80"):
        with pytest.raises(DecodeError):
            decode_eddystone(bytes.fromhex(bad))


# --- through the driver to the reading message --------------------------------------

def _advert(vector: dict[str, Any], address: str) -> Advert:
    service = {uuid16(int(k, 16)): bytes.fromhex(v) for k, v in (vector.get("service_data") or {}).items()}
    manufacturer = {int(k, 16): bytes.fromhex(v) for k, v in (vector.get("manufacturer_data") or {}).items()}
    return Advert(address, -67, service, manufacturer, ts=1_700_000_000.0)


def _vectors() -> list[Any]:
    out = []
    for path in ble_profiles():
        name = path.relative_to(REPO / "profiles").with_suffix("").as_posix()
        for i, vector in enumerate(load_ble_profile(path).test_vectors or []):
            out.append(pytest.param(name, vector, id=f"{name}[{i}]"))
    return out


@pytest.mark.parametrize(("name", "vector"), _vectors())
def test_profile_vectors_become_schema_valid_readings(name: str, vector: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_ble_profile(name)
    if profile.gatt:
        raw = {}
        for p in profile.points:
            assert p.characteristic is not None
            short = p.characteristic[4:8]
            raw[p.name] = unpack_point(p, bytes.fromhex(vector["characteristics"][short]))
        values = raw
    else:
        address = vector.get("address", "F0:0D:00:00:00:09")
        conn: dict[str, Any] = {"address": address}
        if "bind_key" in vector:
            monkeypatch.setenv("TEST_BLE_KEY", vector["bind_key"])
            conn["bind_key"] = {"env": "TEST_BLE_KEY"}
        driver = BleDriver.create(context(profile, **conn))
        driver.key = read_bind_key(driver.conn)
        sink = Sink()
        driver.handle(_advert(vector, address), sink)
        assert not sink.errors, sink.errors
        [reading] = sink.readings
        assert reading.values["rssi"] == -67 if any(p.source == "rssi" for p in profile.points) else True
        values = reading.values
    msg = Normalizer("gw-test", "dev-1", profile, {"driver": "ble", "profile": name}).normalize(
        RawReading(values, ts=1_700_000_000.0))
    assert msg is not None
    validate_reading({"seq": 1, **msg})  # the uplink adds seq
    for key, want in vector["expect"].items():
        got = msg["metrics"][key]["value"]
        assert got == want or (isinstance(want, float) and math.isclose(got, want, abs_tol=1e-6)), (key, got, want)


def test_every_profile_has_test_vectors_and_every_decoder_is_covered() -> None:
    profiles = [load_ble_profile(p) for p in ble_profiles()]
    assert all(p.test_vectors for p in profiles)
    assert {p.decoder for p in profiles} >= set(DECODERS) | {None}


# --- bind keys: a bad key is a clear error and no reading; keys never appear in messages ---------

async def test_bad_bind_key_gives_a_clear_error_and_no_reading(tmp_path: Path) -> None:
    key_file = tmp_path / "sensor.key"
    key_file.write_text("00112233445566778899aabbccddeeff\n")
    driver = BleDriver.create(context("bthome/thermometer", address=MAC, bind_key={"file": str(key_file)}))
    driver.key = read_bind_key(driver.conn)
    sink = Sink()
    advert = Advert(MAC, -60, {BTHOME_UUID: bytes.fromhex("41a47266c95f730011223378237214")}, {})
    driver.handle(advert, sink)
    driver.handle(Advert(MAC, -60, advert.service_data, {}, ts=advert.ts + 30), sink)  # same streak
    assert sink.readings == []
    [err] = sink.errors  # one report per streak, not one per advert
    assert isinstance(err, DeviceProtocolError) and err.reason == "decrypt_error"
    assert "does not decrypt with the configured bind key" in str(err)
    assert "bind key" in str(err.hint)
    assert "00112233445566778899aabbccddeeff" not in str(err) and "54:48:E6:8F" not in str(err)
    assert driver.counts["errors"] == 2 and driver.counts["readings"] == 0


def test_bind_key_from_file_and_env_and_malformed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "k"
    f.write_text(KEY.hex() + "\n")
    assert read_bind_key(BleConnection(address=MAC, bind_key={"file": str(f)})) == KEY
    monkeypatch.setenv("BLE_KEY", KEY.hex().upper())
    assert read_bind_key(BleConnection(address=MAC, bind_key={"env": "BLE_KEY"})) == KEY
    monkeypatch.setenv("BLE_KEY", "not-a-key-but-secret-text")
    with pytest.raises(DriverError, match="not 32 hex digits") as info:
        read_bind_key(BleConnection(address=MAC, bind_key={"env": "BLE_KEY"}))
    assert "secret-text" not in str(info.value)
    monkeypatch.delenv("BLE_KEY")
    with pytest.raises(DriverError, match="cannot read the bind key"):
        read_bind_key(BleConnection(address=MAC, bind_key={"env": "BLE_KEY"}))
    with pytest.raises(ValueError, match="not written inline"):
        BleConnection(address=MAC, bind_key=KEY.hex())


# --- profile and connection validation --------------------------------------------

def _profile_errors(text: str) -> list[str]:
    data, smap, _ = load_yaml(text, "p.yaml")
    _profile, diags = load_profile(data, smap, BleDriver)  # type: ignore[arg-type]
    return [str(d) for d in diags if d.severity == "error"]


def test_profile_errors_are_clear() -> None:
    head = "schema_version: 1\ndriver: ble\nvendor: x\nmodel: y\n"
    [err] = _profile_errors(head + "decoder: ruuvi\npoints:\n  - {name: temprature}\n")
    assert "yields no field 'temprature'" in err and "did you mean 'temperature'" in err
    [err] = _profile_errors(head + "points:\n  - {name: t}\n")
    assert "read over GATT" in err
    [err] = _profile_errors(head + "points:\n  - {name: t, characteristic: 2a6e, format: h}\n")
    assert "byte order" in err
    [err] = _profile_errors(head + "points:\n  - {name: t, characteristic: nope, format: '<h'}\n")
    assert "not a Bluetooth UUID" in err
    [err] = _profile_errors(head + "decoder: pvvx\npoints:\n  - {name: temperature, format: '<h'}\n")
    assert "reads no characteristics" in err


def test_connection_models() -> None:
    assert BleConnection(address="a4-c1-38-12-34-56").address == "A4:C1:38:12:34:56"
    with pytest.raises(ValueError, match="say which device"):
        BleConnection()
    with pytest.raises(ValueError, match="not a Bluetooth address"):
        BleConnection(address="A4:C1:38")
    beacon = BleConnection(beacon={"uuid": "E2C56DB5DFFB48D2B060D0F5A71096E0", "major": 1}).beacon
    assert beacon is not None and beacon.uuid == "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
    assert beacon.matches({"uuid": "e2c56db5-dffb-48d2-b060-d0f5a71096e0", "major": 1, "minor": 9})
    assert not beacon.matches({"uuid": "e2c56db5-dffb-48d2-b060-d0f5a71096e0", "major": 2})


def test_example_config_validates() -> None:
    loaded = load_config(REPO / "drivers" / "ble" / "example.yaml")
    assert {d.config.driver for d in loaded.devices} == {"ble"}
    assert not [w for w in loaded.warnings if w.severity == "error"]
    assert any(isinstance(d.profile, BleProfile) and d.profile.gatt for d in loaded.devices)


@pytest.mark.parametrize(("tx_bits", "dbm"), [(0, -40), (1, -38), (22, 4), (30, 20), (31, None)])
def test_ruuvi_tx_power_is_the_low_5_bits_of_power_info(tx_bits: int, dbm: int | None) -> None:
    """RAWv2 bytes 13-14: 11 bits battery (mV over 1600), then 5 bits tx power (2 dBm over -40; 31 = invalid)."""
    frame = bytearray.fromhex(RUUVI_VALID)
    frame[13:15] = ((1377 << 5) | tx_bits).to_bytes(2, "big")
    decoded = decode_ruuvi(bytes(frame))
    assert decoded["tx_power"] == dbm
    assert decoded["battery_voltage"] == 2.977  # the other 11 bits are untouched


def test_ruuvi_profile_publishes_tx_power_and_reports_31_as_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_ble_profile("ruuvi/ruuvitag")
    [point] = [p for p in profile.points if p.name == "tx_power"]
    assert point.unit == "dBm"
    frame = bytearray.fromhex(RUUVI_VALID)
    frame[14] |= 0x1F  # tx power field 31: not available
    vector = {"address": "CB:B8:33:4C:88:4F", "manufacturer_data": {"0x0499": frame.hex()}}
    driver = BleDriver.create(context(profile, address=vector["address"]))
    sink = Sink()
    driver.handle(_advert(vector, vector["address"]), sink)
    [reading] = sink.readings
    msg = Normalizer("gw-test", "dev-1", profile, {"driver": "ble"}).normalize(reading)
    assert msg is not None
    validate_reading({"seq": 1, **msg})
    assert msg["metrics"]["tx_power"] == {"value": None, "quality": "bad", "unit": "dBm", "reason": "no_value"}

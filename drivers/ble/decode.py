"""Pure, table-driven decoders of BLE advertisement payloads.

Each decoder takes the bytes of one advertisement field (a service-data value
or a manufacturer-data value, as bleak hands them: without the UUID or company
id) and returns a flat ``dict`` of values in the format's own units, or raises
``DecodeError``. Nothing here does I/O or imports bleak, so the decoders are
fuzzed and benchmarked on their own and load on any machine.

Formats (the facts come from the published specifications):

* BTHome v2 (https://bthome.io/format/, /encryption/): service data UUID
  0xFCD2, a device-information byte, then (object id, value) pairs whose
  sizes and factors are fixed by the object table below; optionally AES-CCM
  encrypted with a per-device 16-byte bind key.
* Ruuvi RAWv2, data format 5 (docs.ruuvi.com, "Data format 5"): manufacturer
  data of company 0x0499, 24 bytes, big endian.
* pvvx custom format and the older atc1441 format of Xiaomi LYWSD03MMC
  thermometers with custom firmware (github.com/pvvx/ATC_MiThermometer):
  service data UUID 0x181A, 15 bytes little endian (pvvx) or 13 bytes big
  endian (atc1441).
* iBeacon (Apple, manufacturer data of company 0x004C, type 0x02 length 0x15)
  and Eddystone UID/URL/TLM (service data UUID 0xFEAA).

Why not a library: ``bthome-ble`` (with its dependencies ~30 MiB, 212 ms to
import) is too heavy for a Pi gateway; it serves as a reference in tests only.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BTHOME_OBJECTS",
    "DECODERS",
    "DecodeError",
    "Decoder",
    "bthome_encrypt",
    "decode_bthome",
    "decode_eddystone",
    "decode_ibeacon",
    "decode_pvvx",
    "decode_ruuvi",
    "uuid16",
]

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    """The 128-bit UUID string bleak uses as a service-data key for a 16-bit UUID."""
    return f"0000{short:04x}{BASE_UUID_SUFFIX}"


class DecodeError(ValueError):
    """A payload of a known format that cannot be decoded (short, bad version, bad key).

    Attributes:
        reason: a short machine word for the reading quality (``decode_error``,
            ``decrypt_error``, ``unencrypted``).
    """

    def __init__(self, message: str, reason: str = "decode_error") -> None:
        super().__init__(message)
        self.reason = reason


# --- BTHome v2 ---------------------------------------------------------------

# object id -> (name, struct code of the little-endian value, factor).
# "?" marks binary sensors (one byte, 0/1 → bool). Sizes and factors are the
# BTHome v2 object table; a later object of the same name gets a suffix _2, _3...
BTHOME_OBJECTS: dict[int, tuple[str, str, float]] = {
    0x00: ("packet_id", "B", 1), 0x01: ("battery", "B", 1), 0x02: ("temperature", "h", 0.01),
    0x03: ("humidity", "H", 0.01), 0x04: ("pressure", "u24", 0.01), 0x05: ("illuminance", "u24", 0.01),
    0x06: ("mass_kg", "H", 0.01), 0x07: ("mass_lb", "H", 0.01), 0x08: ("dewpoint", "h", 0.01),
    0x09: ("count", "B", 1), 0x0A: ("energy", "u24", 0.001), 0x0B: ("power", "u24", 0.01),
    0x0C: ("voltage", "H", 0.001), 0x0D: ("pm2_5", "H", 1), 0x0E: ("pm10", "H", 1),
    0x0F: ("generic_boolean", "?", 1), 0x10: ("power_on", "?", 1), 0x11: ("opening", "?", 1),
    0x12: ("co2", "H", 1), 0x13: ("tvoc", "H", 1), 0x14: ("moisture", "H", 0.01),
    0x15: ("battery_low", "?", 1), 0x16: ("battery_charging", "?", 1), 0x17: ("carbon_monoxide", "?", 1),
    0x18: ("cold", "?", 1), 0x19: ("connectivity", "?", 1), 0x1A: ("door", "?", 1),
    0x1B: ("garage_door", "?", 1), 0x1C: ("gas_detected", "?", 1), 0x1D: ("heat", "?", 1),
    0x1E: ("light", "?", 1), 0x1F: ("lock", "?", 1), 0x20: ("moisture_detected", "?", 1),
    0x21: ("motion", "?", 1), 0x22: ("moving", "?", 1), 0x23: ("occupancy", "?", 1),
    0x24: ("plug", "?", 1), 0x25: ("presence", "?", 1), 0x26: ("problem", "?", 1),
    0x27: ("running", "?", 1), 0x28: ("safety", "?", 1), 0x29: ("smoke", "?", 1),
    0x2A: ("sound", "?", 1), 0x2B: ("tamper", "?", 1), 0x2C: ("vibration", "?", 1),
    0x2D: ("window", "?", 1), 0x2E: ("humidity", "B", 1), 0x2F: ("moisture", "B", 1),
    0x3A: ("button", "B", 1), 0x3C: ("dimmer", "H", 1), 0x3D: ("count", "H", 1),
    0x3E: ("count", "I", 1), 0x3F: ("rotation", "h", 0.1), 0x40: ("distance_mm", "H", 1),
    0x41: ("distance_m", "H", 0.1), 0x42: ("duration", "u24", 0.001), 0x43: ("current", "H", 0.001),
    0x44: ("speed", "H", 0.01), 0x45: ("temperature", "h", 0.1), 0x46: ("uv_index", "B", 0.1),
    0x47: ("volume", "H", 0.1), 0x48: ("volume_ml", "H", 1), 0x49: ("volume_flow_rate", "H", 0.001),
    0x4A: ("voltage", "H", 0.1), 0x4B: ("gas", "u24", 0.001), 0x4C: ("gas", "I", 0.001),
    0x4D: ("energy", "I", 0.001), 0x4E: ("volume", "I", 0.001), 0x4F: ("water", "I", 0.001),
    0x50: ("timestamp", "I", 1), 0x51: ("acceleration", "H", 0.001), 0x52: ("gyroscope", "H", 0.001),
    0x55: ("volume_storage", "I", 0.001), 0x56: ("conductivity", "H", 1), 0x57: ("temperature", "b", 1),
    0x58: ("temperature", "b", 0.35), 0x59: ("count", "b", 1), 0x5A: ("count", "h", 1),
    0x5B: ("count", "i", 1), 0x5C: ("power", "i", 0.01), 0x5D: ("current", "h", 0.001),
    0x5E: ("direction", "H", 0.01), 0x5F: ("precipitation", "H", 0.1), 0x60: ("channel", "B", 1),
    0x61: ("rotational_speed", "H", 1),
    0xF0: ("device_type_id", "H", 1), 0xF1: ("firmware_version", "I", 1), 0xF2: ("firmware_version", "u24", 1),
}
_BTHOME_TEXT = {0x53: "text", 0x54: "raw"}  # length-prefixed values
_SIZES = {"B": 1, "b": 1, "?": 1, "H": 2, "h": 2, "u24": 3, "I": 4, "i": 4}
BTHOME_UUID = uuid16(0xFCD2)
BTHOME_FIELDS: frozenset[str] = frozenset(
    {n for n, _, _ in BTHOME_OBJECTS.values()} | set(_BTHOME_TEXT.values()) | {"encrypted", "counter", "mac"}
)


def _bthome_objects(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    n = len(data)
    while i < n:
        oid = data[i]
        i += 1
        if oid in _BTHOME_TEXT:
            if i >= n:
                raise DecodeError(f"BTHome object 0x{oid:02x} is cut short")
            size = data[i]
            value: Any = data[i + 1:i + 1 + size]
            if len(value) != size:
                raise DecodeError(f"BTHome object 0x{oid:02x} is cut short")
            value = value.decode("utf-8", "replace") if oid == 0x53 else value.hex()
            name = _BTHOME_TEXT[oid]
            i += 1 + size
        else:
            spec = BTHOME_OBJECTS.get(oid)
            if spec is None:
                # Sizes are known only from the table: nothing after an unknown id can be parsed.
                raise DecodeError(f"BTHome object id 0x{oid:02x} is unknown (a newer BTHome version?)")
            name, code, factor = spec
            size = _SIZES[code]
            raw = data[i:i + size]
            if len(raw) != size:
                raise DecodeError(f"BTHome object 0x{oid:02x} ({name}) is cut short")
            i += size
            if code == "u24":
                value = int.from_bytes(raw, "little")
            elif code == "?":
                value = raw[0] != 0
            else:
                value = struct.unpack("<" + code, raw)[0]
            if factor != 1:
                value = round(value * factor, 6)
        key, k = name, 2
        while key in out:
            key, k = f"{name}_{k}", k + 1
        out[key] = value
    return out


def decode_bthome(data: bytes, mac: str | None = None, key: bytes | None = None) -> dict[str, Any]:
    """Decode a BTHome v2 service-data value (UUID 0xFCD2).

    Args:
        data: the service data, starting with the device-information byte.
        mac: the advertiser's address ``AA:BB:CC:DD:EE:FF``; needed to decrypt
            when the payload does not carry the MAC itself.
        key: the 16-byte bind key of an encrypted device, or None.

    Returns:
        Object values by name (``temperature``, ``humidity``, ``battery``, ...),
        plus ``encrypted`` and, when encrypted, ``counter``.

    Raises:
        DecodeError: not BTHome v2, cut short, unknown object id, a wrong key
            (reason ``decrypt_error``), an encrypted payload without a key, or
            a plain payload from a device that has a key (reason ``unencrypted``).
    """
    if not data:
        raise DecodeError("BTHome payload is empty")
    info = data[0]
    version = info >> 5
    if version != 2:
        raise DecodeError(f"BTHome version {version} is not supported (only v2)")
    encrypted = bool(info & 0x01)
    body = data[1:]
    payload_mac: bytes | None = None
    if info & 0x02:
        if len(body) < 6:
            raise DecodeError("BTHome payload announces a MAC but is too short")
        payload_mac, body = body[:6][::-1], body[6:]
    if not encrypted:
        if key is not None:
            # A device with a key that suddenly sends in clear is spoofed or reset: never accept it.
            raise DecodeError("unencrypted BTHome advert from a device configured with a bind key",
                              reason="unencrypted")
        out = _bthome_objects(body)
        out["encrypted"] = False
        return out
    if key is None:
        raise DecodeError("encrypted BTHome advert but no bind key is configured", reason="decrypt_error")
    if len(body) < 8:
        raise DecodeError("encrypted BTHome payload is too short")
    if payload_mac is None:
        if mac is None:
            raise DecodeError("encrypted BTHome payload without a MAC: the advertiser address is needed")
        payload_mac = _mac_bytes(mac)
    ciphertext, counter, mic = body[:-8], body[-8:-4], body[-4:]
    nonce = payload_mac + b"\xd2\xfc" + bytes([info]) + counter
    plain = _aes_ccm_open(key, nonce, ciphertext + mic)
    out = _bthome_objects(plain)
    out["encrypted"] = True
    out["counter"] = int.from_bytes(counter, "little")
    return out


def _mac_bytes(mac: str) -> bytes:
    try:
        raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    except ValueError as exc:
        raise DecodeError(f"{mac!r} is not a MAC address") from exc
    if len(raw) != 6:
        raise DecodeError(f"{mac!r} is not a MAC address")
    return raw


def _aes_ccm_open(key: bytes, nonce: bytes, sealed: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    if len(key) != 16:
        raise DecodeError("a BTHome bind key is 16 bytes (32 hex digits)", reason="decrypt_error")
    try:
        return AESCCM(key, tag_length=4).decrypt(nonce, sealed, None)
    except InvalidTag:
        raise DecodeError("BTHome advert does not decrypt with the configured bind key "
                          "(wrong key, or the device was re-keyed)", reason="decrypt_error") from None


def bthome_encrypt(objects: bytes, mac: str, key: bytes, counter: int, mac_in_payload: bool = False) -> bytes:
    """Build an encrypted BTHome v2 service-data value (for simulators and tests).

    Args:
        objects: the plain object bytes, e.g. ``02 CA 09`` (temperature 25.06).
        mac: the device address, ``AA:BB:CC:DD:EE:FF``.
        key: the 16-byte bind key.
        counter: the replay counter (u32).
        mac_in_payload: also carry the MAC in the payload (device-info bit 1).
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    info = 0x41 | (0x02 if mac_in_payload else 0)
    raw_mac = _mac_bytes(mac)
    ctr = counter.to_bytes(4, "little")
    sealed = AESCCM(key, tag_length=4).encrypt(raw_mac + b"\xd2\xfc" + bytes([info]) + ctr, objects, None)
    return bytes([info]) + (raw_mac[::-1] if mac_in_payload else b"") + sealed[:-4] + ctr + sealed[-4:]


# --- Ruuvi RAWv2 (data format 5) ---------------------------------------------

RUUVI_COMPANY = 0x0499
_RUUVI = struct.Struct(">BhHHhhhHBH6s")
RUUVI_FIELDS = frozenset({"temperature", "humidity", "pressure", "acceleration_x", "acceleration_y",
                          "acceleration_z", "battery_voltage", "tx_power", "movement_counter",
                          "measurement_sequence", "mac"})


def decode_ruuvi(data: bytes) -> dict[str, Any]:
    """Decode Ruuvi RAWv2 (manufacturer data of 0x0499, first byte 0x05).

    Values the tag marks as not available (the format's reserved maxima and
    minima) are ``None``. Units: °C, %RH, Pa, g, V, dBm.

    Raises:
        DecodeError: not data format 5, or not 24 bytes.
    """
    if not data or data[0] != 0x05:
        raise DecodeError(f"Ruuvi data format {data[0] if data else None} is not RAWv2 (5)")
    if len(data) != _RUUVI.size:
        raise DecodeError(f"Ruuvi RAWv2 is {_RUUVI.size} bytes, got {len(data)}")
    _, t, h, p, ax, ay, az, power, movement, seq, mac = _RUUVI.unpack(data)
    volt, tx = power >> 5, power & 0x1F
    return {
        "temperature": None if t == -0x8000 else round(t * 0.005, 3),
        "humidity": None if h == 0xFFFF else round(h * 0.0025, 4),
        "pressure": None if p == 0xFFFF else p + 50000,
        "acceleration_x": None if ax == -0x8000 else ax / 1000,
        "acceleration_y": None if ay == -0x8000 else ay / 1000,
        "acceleration_z": None if az == -0x8000 else az / 1000,
        "battery_voltage": None if volt == 0x7FF else (volt + 1600) / 1000,
        "tx_power": None if tx == 0x1F else tx * 2 - 40,
        "movement_counter": None if movement == 0xFF else movement,
        "measurement_sequence": None if seq == 0xFFFF else seq,
        "mac": None if mac == b"\xff" * 6 else ":".join(f"{b:02X}" for b in mac),
    }


# --- pvvx / atc1441 (Xiaomi LYWSD03MMC custom firmware) ----------------------

PVVX_UUID = uuid16(0x181A)
_PVVX = struct.Struct("<6shHHBBB")
_ATC = struct.Struct(">6shBBHB")
PVVX_FIELDS = frozenset({"temperature", "humidity", "battery", "battery_voltage", "counter", "flags", "mac"})


def decode_pvvx(data: bytes) -> dict[str, Any]:
    """Decode the pvvx custom format (15 bytes, little endian) or atc1441 (13 bytes, big endian).

    Units: °C, %RH, % (battery), V (battery_voltage). ``flags`` is pvvx only.

    Raises:
        DecodeError: neither 15 nor 13 bytes.
    """
    if len(data) == _PVVX.size:
        mac, t, h, mv, batt, counter, flags = _PVVX.unpack(data)
        return {"temperature": t / 100, "humidity": h / 100, "battery": batt, "battery_voltage": mv / 1000,
                "counter": counter, "flags": flags, "mac": ":".join(f"{b:02X}" for b in mac[::-1])}
    if len(data) == _ATC.size:
        mac, t, h, batt, mv, counter = _ATC.unpack(data)
        return {"temperature": t / 10, "humidity": float(h), "battery": batt, "battery_voltage": mv / 1000,
                "counter": counter, "mac": ":".join(f"{b:02X}" for b in mac)}
    raise DecodeError(f"0x181A service data of {len(data)} bytes is neither pvvx (15) nor atc1441 (13)")


# --- iBeacon / Eddystone -----------------------------------------------------

APPLE_COMPANY = 0x004C
IBEACON_FIELDS = frozenset({"uuid", "major", "minor", "tx_power", "present"})


def decode_ibeacon(data: bytes) -> dict[str, Any]:
    """Decode an iBeacon (Apple manufacturer data: 02 15, UUID, major, minor, measured power).

    Raises:
        DecodeError: other Apple data (AirDrop, Find My, ...) or a wrong length.
    """
    if len(data) != 23 or data[0] != 0x02 or data[1] != 0x15:
        raise DecodeError("Apple manufacturer data is not an iBeacon")
    u = data[2:18].hex()
    major, minor, power = struct.unpack(">HHb", data[18:23])
    return {"uuid": f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}", "major": major, "minor": minor,
            "tx_power": power, "present": True}


EDDYSTONE_UUID = uuid16(0xFEAA)
EDDYSTONE_FIELDS = frozenset({"frame", "namespace", "instance", "url", "tx_power", "battery_voltage",
                              "temperature", "adv_count", "uptime", "present"})
_URL_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
_URL_CODES = (".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/",
              ".com", ".org", ".edu", ".net", ".info", ".biz", ".gov")


def decode_eddystone(data: bytes) -> dict[str, Any]:
    """Decode an Eddystone frame: UID (0x00), URL (0x10) or unencrypted TLM (0x20).

    Raises:
        DecodeError: an unknown frame type or a wrong length.
    """
    if not data:
        raise DecodeError("Eddystone payload is empty")
    kind = data[0]
    if kind == 0x00:
        if len(data) not in (18, 20):  # the two RFU bytes are often left out
            raise DecodeError(f"Eddystone-UID is 18 or 20 bytes, got {len(data)}")
        return {"frame": "uid", "tx_power": struct.unpack("b", data[1:2])[0], "namespace": data[2:12].hex(),
                "instance": data[12:18].hex(), "present": True}
    if kind == 0x10:
        if len(data) < 3 or len(data) > 20 or data[2] >= len(_URL_SCHEMES):
            raise DecodeError("Eddystone-URL has a bad length or URL scheme")
        parts = [_URL_SCHEMES[data[2]]]
        for b in data[3:]:
            if b < len(_URL_CODES):
                parts.append(_URL_CODES[b])
            elif 0x21 <= b <= 0x7E:
                parts.append(chr(b))
            else:
                raise DecodeError(f"Eddystone-URL has a non-printable byte 0x{b:02x}")
        return {"frame": "url", "tx_power": struct.unpack("b", data[1:2])[0], "url": "".join(parts),
                "present": True}
    if kind == 0x20:
        if len(data) != 14 or data[1] != 0x00:
            raise DecodeError("only unencrypted Eddystone-TLM (version 0, 14 bytes) is supported")
        mv, temp, count, secs = struct.unpack(">HhII", data[2:14])
        return {"frame": "tlm", "battery_voltage": None if mv == 0 else mv / 1000,
                "temperature": None if temp == -0x8000 else temp / 256, "adv_count": count,
                "uptime": secs / 10, "present": True}
    raise DecodeError(f"Eddystone frame type 0x{kind:02x} is not supported")


# --- the registry ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decoder:
    """How to find a format in an advertisement and decode it.

    Attributes:
        name: the profile's ``decoder`` value.
        service_uuid: service-data key (128-bit UUID string), or None.
        company: manufacturer-data company id, or None.
        decode: payload (and MAC, key) → values.
        fields: the value names the decoder can yield (``rssi`` comes from the radio).
        encrypted: whether a bind key applies.
        prefix: for BlueZ passive scanning: the AD type and the first bytes of
            the AD structure that identify the format.
    """

    name: str
    service_uuid: str | None
    company: int | None
    decode: Callable[[bytes, str | None, bytes | None], dict[str, Any]]
    fields: frozenset[str]
    prefix: tuple[int, bytes]
    encrypted: bool = False

    def payload(self, service_data: dict[str, bytes], manufacturer_data: dict[int, bytes]) -> bytes | None:
        """This format's bytes in an advertisement, or None when the advert carries none."""
        if self.service_uuid is not None:
            return service_data.get(self.service_uuid)
        assert self.company is not None
        return manufacturer_data.get(self.company)


DECODERS: dict[str, Decoder] = {
    "bthome": Decoder("bthome", BTHOME_UUID, None, decode_bthome, BTHOME_FIELDS, (0x16, b"\xd2\xfc"), True),
    "ruuvi": Decoder("ruuvi", None, RUUVI_COMPANY, lambda d, _m, _k: decode_ruuvi(d), RUUVI_FIELDS,
                     (0xFF, b"\x99\x04\x05")),
    "pvvx": Decoder("pvvx", PVVX_UUID, None, lambda d, _m, _k: decode_pvvx(d), PVVX_FIELDS, (0x16, b"\x1a\x18")),
    "ibeacon": Decoder("ibeacon", None, APPLE_COMPANY, lambda d, _m, _k: decode_ibeacon(d), IBEACON_FIELDS,
                       (0xFF, b"\x4c\x00\x02\x15")),
    "eddystone": Decoder("eddystone", EDDYSTONE_UUID, None, lambda d, _m, _k: decode_eddystone(d),
                         EDDYSTONE_FIELDS, (0x16, b"\xaa\xfe")),
}

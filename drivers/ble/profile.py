"""Profile and connection models of the ``ble`` driver.

A BLE profile is one of two kinds. An advertisement profile names the
format (``decoder``) and the values it keeps (``points``, each naming a
decoder ``field``, by default its own name). A GATT profile has no decoder;
each point names a ``characteristic`` (UUID), the ``format`` of its value
(Python ``struct`` codes) and, through the common ``scale``/``offset``, its
unit: the gateway connects, reads, and disconnects on every poll. The
connection says which device this is (its ``address``, or for a device with
changing addresses its bind key or beacon identity), which adapter listens,
and how the shared scanner behaves. No bleak here: the models load on any
machine.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Literal

from fieldgate.profile import BasePoint, BaseProfile, Model
from fieldgate.secret import Secret
from fieldgate.units import Duration, PositiveDuration
from fieldgate.validation import did_you_mean
from pydantic import Field, field_validator, model_validator

from .decode import DECODERS, uuid16

DecoderName = Literal["bthome", "ruuvi", "pvvx", "ibeacon", "eddystone"]
RADIO_FIELDS = frozenset({"rssi"})
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_UUID128 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def normalize_address(value: str) -> str:
    """``aa-bb-cc-dd-ee-ff`` → ``AA:BB:CC:DD:EE:FF`` (bleak's form on Linux)."""
    if not _MAC.match(value):
        raise ValueError(f"{value!r} is not a Bluetooth address like AA:BB:CC:DD:EE:FF")
    return value.replace("-", ":").upper()


def normalize_uuid(value: str) -> str:
    """``2a6e`` / ``0x2A6E`` / a 128-bit UUID → the lower-case 128-bit form bleak uses."""
    v = value.strip().lower().removeprefix("0x")
    if re.fullmatch(r"[0-9a-f]{4}", v):
        return uuid16(int(v, 16))
    if _UUID128.match(v):
        return v
    raise ValueError(f"{value!r} is not a Bluetooth UUID (2a6e, or 0000xxxx-0000-1000-8000-00805f9b34fb)")


class BlePoint(BasePoint):
    """A value taken from the decoded advertisement (or ``rssi`` from the radio), or read over GATT."""

    field: str | None = Field(None, description="decoder field holding the value; default: the point name")
    characteristic: str | None = Field(
        None, description="GATT profiles: the characteristic to read (2a6e or a 128-bit UUID)")
    format: str | None = Field(
        None, description="GATT profiles: Python struct format of the value, e.g. '<h' (int16 little endian)")
    index: int = Field(0, ge=0, description="GATT profiles: which value of the unpacked format this point takes")
    write_characteristic: str | None = Field(
        None, description="GATT profiles, writable points: the characteristic writes go to, when the device "
                          "takes them elsewhere than where the value is read; default: 'characteristic'")
    write_response: bool = Field(
        True, description="GATT profiles, writable points: write with response (the device acknowledges; "
                          "false: a write command, for characteristics that only offer write-without-response)")

    @field_validator("write_characteristic")
    @classmethod
    def _write_uuid(cls, v: str | None) -> str | None:
        return normalize_uuid(v) if v is not None else None

    @field_validator("characteristic")
    @classmethod
    def _uuid(cls, v: str | None) -> str | None:
        return normalize_uuid(v) if v is not None else None

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v[:1] not in "<>!=":
            raise ValueError(f"say the byte order first: '<{v}' (little endian, as GATT uses) or '>{v}'")
        try:
            struct.calcsize(v)
        except struct.error as exc:
            raise ValueError(f"{v!r} is not a struct format ({exc}); e.g. '<h', '<H', '<B', '<i'") from None
        return v

    @model_validator(mode="after")
    def _index_in_format(self) -> BlePoint:
        fmt = self.format
        if fmt is not None and self.index >= len(struct.unpack(fmt, bytes(struct.calcsize(fmt)))):
            raise ValueError(f"index {self.index} is beyond the values of format {self.format!r}")
        return self

    @property
    def source(self) -> str:
        """The decoder field this point reads."""
        return self.field or self.name

    def write_problem(self, value: object) -> str | None:
        """The core's checks, then whether the point's GATT format can hold the value (no radio traffic)."""
        problem = super().write_problem(value)
        if problem is not None:
            return problem
        if self.characteristic is None or self.format is None:
            return "not_supported"  # an advertisement value: adverts are broadcast, nothing to write to
        from fieldgate.errors import DriverError

        from .gatt import pack_point

        try:
            pack_point(self, value)  # type: ignore[arg-type]  # the core checked: a number or a boolean
        except DriverError as exc:
            return exc.reason
        return None

    def readback_tolerance(self, value: float) -> float:
        """The core's tolerance plus half a raw step of the point's format."""
        from .gatt import resolution

        return super().readback_tolerance(value) + resolution(self, value)


class BleProfile(BaseProfile):
    """A profile for the ``ble`` driver: advertisements (``decoder``) or GATT reads (no decoder)."""

    driver: Literal["ble"]
    decoder: DecoderName | None = Field(
        None, description="advertisement format: bthome, ruuvi, pvvx, ibeacon, eddystone; "
                          "absent: a GATT profile (points name characteristics)")
    points: list[BlePoint] = Field(min_length=1)  # type: ignore[assignment]  # narrows BaseProfile.points; list is invariant to mypy, pydantic validates the narrower type

    @property
    def gatt(self) -> bool:
        """Whether this profile is read over GATT (connect, read, disconnect) rather than from adverts."""
        return self.decoder is None

    def checks(self) -> list[tuple[tuple[str | int, ...], str, str]]:
        """Base checks, plus: every point names a field the decoder yields, or a characteristic and format."""
        out = super().checks()
        if self.decoder is None:
            for i, p in enumerate(self.points):
                if p.characteristic is None or p.format is None:
                    out.append((("points", i), "a profile without 'decoder' is read over GATT: every point "
                                "needs 'characteristic' and 'format' (or set the profile's decoder)", "error"))
                elif p.writable and len(struct.unpack(p.format, bytes(struct.calcsize(p.format)))) != 1:
                    out.append((("points", i, "writable"), f"format {p.format!r} holds several values: writing one "
                                "would need the others (give the written value its own characteristic)", "error"))
                if not p.writable and (p.write_characteristic is not None or not p.write_response):
                    key = "write_characteristic" if p.write_characteristic is not None else "write_response"
                    out.append((("points", i, key), f"{key} has no effect without writable: true", "warning"))
            return out
        for i, p in enumerate(self.points):
            if p.writable:
                out.append((("points", i, "writable"), "advertisement values cannot be written (adverts are "
                            "broadcast); a writable point needs a GATT profile", "error"))
        known = DECODERS[self.decoder].fields | RADIO_FIELDS
        for i, p in enumerate(self.points):
            if p.characteristic is not None or p.format is not None:
                out.append((("points", i, "characteristic" if p.characteristic else "format"),
                            f"an advertisement profile (decoder {self.decoder!r}) reads no characteristics; "
                            "remove the key, or drop 'decoder' for a GATT profile", "error"))
            if p.source not in known and p.source.rsplit("_", 1)[0] not in known:
                where = ("points", i, "field" if p.field else "name")
                out.append((where, f"decoder {self.decoder!r} yields no field {p.source!r}"
                                   f"{did_you_mean(p.source, sorted(known))}", "error"))
        return out


class BeaconId(Model):
    """A beacon's identity, for tags whose address changes (iBeacon, Eddystone-UID)."""

    uuid: str | None = Field(None, description="iBeacon proximity UUID")
    major: int | None = Field(None, ge=0, le=0xFFFF, description="iBeacon major")
    minor: int | None = Field(None, ge=0, le=0xFFFF, description="iBeacon minor")
    namespace: str | None = Field(None, pattern=r"^[0-9a-fA-F]{20}$", description="Eddystone-UID namespace (hex)")
    instance: str | None = Field(None, pattern=r"^[0-9a-fA-F]{12}$", description="Eddystone-UID instance (hex)")

    @field_validator("namespace", "instance")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        return v.lower() if v else v

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, v: str | None) -> str | None:
        if v is None:
            return v
        h = v.strip().lower().replace("-", "")
        if not re.fullmatch(r"[0-9a-f]{32}", h):
            raise ValueError(f"{v!r} is not a 128-bit UUID (32 hex digits, dashes optional)")
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    @model_validator(mode="after")
    def _some(self) -> BeaconId:
        if self.uuid is None and self.namespace is None:
            raise ValueError("give an iBeacon 'uuid' (with major/minor) or an Eddystone 'namespace' (with instance)")
        return self

    def matches(self, values: dict[str, Any]) -> bool:
        """Whether decoded beacon values are this beacon."""
        want = {k: v for k, v in self.model_dump().items() if v is not None}
        return all(values.get(k) == v for k, v in want.items())


class BleConnection(Model):
    """Which device this is and how the adapter's shared scanner listens."""

    address: str | None = Field(None, description="the device's Bluetooth address (privacy: only it is read)")
    bind_key: Secret | None = Field(
        None, description="BTHome bind key (32 hex digits) from {file: ...} or {env: ...}; never inline")
    beacon: BeaconId | None = Field(None, description="match a beacon by identity instead of address")
    adapter: str = Field("hci0", pattern=r"^[A-Za-z0-9_]+$", description="BlueZ adapter that listens")
    scanning: Literal["active", "passive"] = Field(
        "active", description="passive sends no scan requests (BlueZ >= 5.56 with experimental features)")
    dedupe_window: Duration = Field(10.0, description="identical adverts within this time count once (0: off)")
    silence_timeout: Duration = Field(
        120.0, description="no advert from any device for this long: restart the scanner, then the adapter "
                           "(0: off)")
    mask_addresses: bool = Field(True, description="show addresses as xx:xx:xx:xx:EE:FF in logs and status")
    backend: str = Field(
        "bleak", description="bleak (the platform's: BlueZ on Linux), replay (hw-sim's recorded adverts), "
                             "or module:Class of a bleak scanner backend", pattern=r"^(bleak|replay|[\w.]+:\w+)$")
    client_backend: str = Field(
        "bleak", description="GATT profiles: bleak (the platform's client), or module:Class of a bleak client "
                             "backend", pattern=r"^(bleak|[\w.]+:\w+)$")
    connect_attempts: int = Field(3, ge=1, le=10, description="GATT profiles: connection attempts per poll")
    retry_delay: Duration = Field(0.5, description="GATT profiles: pause between connection attempts")
    replay_rate: float = Field(1.0, gt=0, description="backend replay: adverts per second per recorded device")
    replay_rssi: int = Field(-60, ge=-127, le=20, description="backend replay: the RSSI the adverts carry")
    start_timeout: PositiveDuration = Field(10.0, description="give up starting the scanner after this long")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return normalize_address(v) if v is not None else None

    @model_validator(mode="after")
    def _identified(self) -> BleConnection:
        if self.address is None and self.bind_key is None and self.beacon is None:
            raise ValueError("say which device this is: 'address', or 'bind_key' (BTHome with changing "
                             "addresses), or 'beacon' (iBeacon/Eddystone identity); unknown advertisers "
                             "are never read")
        return self

    @property
    def hub_key(self) -> str:
        """Devices on one adapter share one scanner: the key of that shared scanner."""
        return f"ble-scanner:{self.adapter}:{self.backend}"

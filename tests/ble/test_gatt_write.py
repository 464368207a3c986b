"""GATT writes through bleak's real BlueZ backend, against python-dbusmock's ``bluez5`` on a private bus.

The characteristic objects record every ``WriteValue`` call (dbusmock's call log), so the tests
assert the bytes that reached the peer, the write type (request / command), and that a write
refused before I/O sent nothing at all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fieldgate.driver import PointWrite, Writes
from fieldgate.drivers.ble.driver import BleDriver, BleGattDriver, pack_point, unpack_point
from fieldgate.drivers.ble.profile import BleProfile
from fieldgate.errors import DeviceProtocolError, DeviceUnreachable, DriverError
from fieldgate_hwsim.ble_sim import Recording

from .conftest import context
from .test_bluez import BLUEZ, FakeBluez, bluez, dbus, dbusmock  # noqa: F401  # bluez: its module fixture

THERMOSTAT = "D4:7C:44:00:20:01"
SETPOINT = "0000fe01-0000-1000-8000-00805f9b34fb"   # vendor characteristic: sint16, 0.01 degC
MODE = "0000fe02-0000-1000-8000-00805f9b34fb"       # uint8 enum, written without response
LOCKED = "0000fe03-0000-1000-8000-00805f9b34fb"     # bool, the device refuses writes (ATT 0x03)
TEMPERATURE = "00002a6e-0000-1000-8000-00805f9b34fb"

_CONNECT = ("self.UpdateProperties('org.bluez.Device1', {'Connected': dbus.Boolean(True), "
            "'ServicesResolved': dbus.Boolean(True)})")
_DISCONNECT = ("self.UpdateProperties('org.bluez.Device1', {'Connected': dbus.Boolean(False), "
               "'ServicesResolved': dbus.Boolean(False)})")


def thermostat_profile(**extra: Any) -> BleProfile:
    """A radiator thermostat over GATT: a writable setpoint and mode, a locked child lock, a read-only temperature."""
    return BleProfile.model_validate({
        "schema_version": 1, "driver": "ble", "vendor": "Test", "model": "GATT thermostat",
        "points": [
            {"name": "setpoint", "characteristic": SETPOINT, "format": "<h", "scale": 0.01, "unit": "Cel",
             "range": [5, 30], "writable": True},
            {"name": "mode", "characteristic": MODE, "format": "<B", "writable": True, "write_response": False},
            {"name": "child_lock", "characteristic": LOCKED, "format": "<?", "writable": True},
            {"name": "temperature", "characteristic": "2a6e", "format": "<h", "scale": 0.01, "unit": "Cel"},
        ], **extra})


def add_thermostat(bz: FakeBluez, address: str = THERMOSTAT, connect: str = _CONNECT) -> dict[str, str]:
    """The device, one service, four characteristics; returns the object path of each characteristic by UUID."""
    rec = Recording("thermostat", address, local_name="TRV")
    bz.add_device(rec, methods=[("Connect", "", "", connect), ("Disconnect", "", "", _DISCONNECT)], announce=False)
    dev = bz.path(address)
    svc = dev + "/service0020"
    svc_props = {"UUID": dbus.String("0000fe00-0000-1000-8000-00805f9b34fb"), "Device": dbus.ObjectPath(dev),
                 "Primary": dbus.Boolean(True)}
    bz.root.AddObject(svc, "org.bluez.GattService1", svc_props, [])
    bz._added(svc, "org.bluez.GattService1", svc_props)
    # value hex, flags, WriteValue body: the stored value follows the writes so a read-back sees them
    chars = [(SETPOINT, "d007", ["read", "write"], "self.value = bytes(args[0])"),
             (MODE, "00", ["read", "write-without-response"], "self.value = bytes(args[0])"),
             (LOCKED, "00", ["read", "write"],
              "raise dbus.exceptions.DBusException('Write not permitted', name='org.bluez.Error.NotPermitted')"),
             (TEMPERATURE, "2909", ["read"], "pass")]
    paths = {}
    for i, (uuid, value, flags, on_write) in enumerate(chars):
        path = f"{svc}/char{0x21 + i:04x}"
        props = {"UUID": dbus.String(uuid), "Service": dbus.ObjectPath(svc), "Flags": dbus.Array(flags, signature="s")}
        bz.root.AddObject(path, "org.bluez.GattCharacteristic1", props, [
            ("ReadValue", "a{sv}", "ay",
             f"ret = dbus.ByteArray(getattr(self, 'value', bytes.fromhex('{value}')))"),
            ("WriteValue", "aya{sv}", "", on_write)])
        bz._added(path, "org.bluez.GattCharacteristic1", props)
        paths[uuid] = path
    return paths


def writes_at(bz: FakeBluez, path: str) -> list[tuple[bytes, str]]:
    """What reached one characteristic: (bytes, write type) per WriteValue call."""
    mock = dbus.Interface(bz.conn.get_object(BLUEZ, path), dbusmock.MOCK_IFACE)
    return [(bytes(args[0]), str(args[1].get("type", ""))) for _ts, args in mock.GetMethodCalls("WriteValue")]


async def _opened(bz: FakeBluez, address: str, **conn: Any) -> BleGattDriver:
    drv = BleDriver.create(context(thermostat_profile(), backend="bleak", address=address, retry_delay=0, **conn))
    assert isinstance(drv, BleGattDriver) and isinstance(drv, Writes)
    await drv.__aenter__()
    assert drv.hub is not None
    drv.hub.seen.clear()
    bz.advertise_again(Recording("thermostat", address, local_name="TRV"), rssi=-50)  # BlueZ knows it
    await asyncio.wait_for(drv.hub.seen.wait(), 5)
    return drv


async def test_gatt_write_reaches_the_peer_with_the_right_bytes(bluez: FakeBluez) -> None:  # noqa: F811
    paths = add_thermostat(bluez)
    drv = await _opened(bluez, THERMOSTAT)
    try:
        await asyncio.wait_for(drv.write([PointWrite("setpoint", 21.5), PointWrite("mode", 2)]), 20)
        # the read-back after the write sees the device's new value
        from fieldgate.testing import RecordingSink

        sink = RecordingSink()
        await asyncio.wait_for(drv.poll(sink), 20)
    finally:
        await drv.__aexit__(None, None, None)
    # 21.5 degC / 0.01 = 2150 = 0x0866, little endian; mode 2 as one byte, written as a command
    assert writes_at(bluez, paths[SETPOINT]) == [(b"\x66\x08", "request")]
    assert writes_at(bluez, paths[MODE]) == [(b"\x02", "command")]
    assert writes_at(bluez, paths[TEMPERATURE]) == []
    assert sink.readings[0].values["setpoint"] == 2150 and sink.readings[0].values["mode"] == 2


async def test_gatt_write_refused_by_the_device_names_the_att_error(bluez: FakeBluez) -> None:  # noqa: F811
    paths = add_thermostat(bluez, "D4:7C:44:00:20:02")
    drv = await _opened(bluez, "D4:7C:44:00:20:02")
    try:
        with pytest.raises(DeviceProtocolError) as info:
            await asyncio.wait_for(drv.write([PointWrite("child_lock", True)]), 20)
    finally:
        await drv.__aexit__(None, None, None)
    assert info.value.reason == "att_error:03"  # Write Not Permitted (Core spec Vol 3 Part F 3.4.1.1)
    assert "child_lock" in str(info.value)
    assert writes_at(bluez, paths[LOCKED]) == [(b"\x01", "request")]  # it was sent once, never retried


async def test_gatt_write_of_an_unencodable_value_sends_nothing(bluez: FakeBluez) -> None:  # noqa: F811
    paths = add_thermostat(bluez, "D4:7C:44:00:20:03")
    drv = await _opened(bluez, "D4:7C:44:00:20:03")
    try:
        with pytest.raises(DriverError) as info:  # 400 degC is 40000 raw: beyond sint16
            await asyncio.wait_for(drv.write([PointWrite("mode", 1), PointWrite("setpoint", 400.0)]), 20)
    finally:
        await drv.__aexit__(None, None, None)
    assert info.value.reason == "encode_error" and "setpoint" in str(info.value)
    assert writes_at(bluez, paths[SETPOINT]) == [] and writes_at(bluez, paths[MODE]) == []


async def test_gatt_write_to_an_unreachable_device_fails_after_the_connection_attempts(bluez: FakeBluez) -> None:  # noqa: F811
    refuse = "raise dbus.exceptions.DBusException('Page Timeout', name='org.bluez.Error.Failed')"
    paths = add_thermostat(bluez, "D4:7C:44:00:20:04", connect=refuse)
    drv = await _opened(bluez, "D4:7C:44:00:20:04", connect_attempts=2)
    try:
        with pytest.raises(DeviceUnreachable, match="after 2 attempt"):
            await asyncio.wait_for(drv.write([PointWrite("setpoint", 20.0)]), 20)
    finally:
        await drv.__aexit__(None, None, None)
    assert writes_at(bluez, paths[SETPOINT]) == []


@pytest.mark.parametrize(("fmt", "scale", "offset", "value", "raw"), [
    ("<h", 0.01, 0.0, 21.5, b"\x66\x08"),
    ("<h", 0.01, 0.0, -40.0, b"\x60\xf0"),
    ("<H", 0.1, -10.0, 0.0, b"\x64\x00"),      # (0 - -10) / 0.1 = 100
    ("<B", 1.0, 0.0, 255, b"\xff"),
    (">i", 1.0, 0.0, -2, b"\xff\xff\xff\xfe"),
    ("<f", 1.0, 0.0, 1.5, b"\x00\x00\xc0\x3f"),
    ("<?", 1.0, 0.0, True, b"\x01"),
    ("<e", 0.5, 0.0, 3.0, b"\x00\x46"),        # half float 6.0
])
def test_pack_point_is_the_inverse_of_unpack_point(fmt: str, scale: float, offset: float, value: Any,
                                                   raw: bytes) -> None:
    prof = BleProfile.model_validate({"schema_version": 1, "driver": "ble", "vendor": "T", "model": "m", "points": [
        {"name": "p", "characteristic": "fe01", "format": fmt, "scale": scale, "offset": offset}]})
    point = prof.points[0]
    assert pack_point(point, value) == raw
    back = unpack_point(point, raw)
    assert (back * scale + offset if not isinstance(back, bool) else back) == pytest.approx(value)


@pytest.mark.parametrize(("fmt", "value", "why"), [
    ("<B", 256, "beyond"), ("<B", -1, "beyond"), ("<h", 1e6, "beyond"), ("<?", 1.5, "true or false"),
    ("<B", True, "a number"), ("<hh", 1, "several values"),
])
def test_pack_point_refuses_what_the_format_cannot_hold(fmt: str, value: Any, why: str) -> None:
    prof = BleProfile.model_validate({"schema_version": 1, "driver": "ble", "vendor": "T", "model": "m", "points": [
        {"name": "p", "characteristic": "fe01", "format": fmt}]})
    with pytest.raises(DriverError, match=why) as info:
        pack_point(prof.points[0], value)
    assert info.value.reason in ("encode_error", "not_supported")


def test_profile_checks_of_writable_points() -> None:
    def checks(points: list[dict[str, Any]], decoder: str | None = None) -> list[tuple[Any, str, str]]:
        doc: dict[str, Any] = {"schema_version": 1, "driver": "ble", "vendor": "T", "model": "m", "points": points}
        if decoder:
            doc["decoder"] = decoder
        return BleProfile.model_validate(doc).checks()

    [(where, message, severity)] = checks([{"name": "t", "characteristic": "fe01", "format": "<hh", "writable": True}])
    assert where == ("points", 0, "writable") and "several values" in message and severity == "error"
    [(where, message, severity)] = checks([{"name": "temperature", "writable": True}], decoder="bthome")
    assert "advertisement values cannot be written" in message and severity == "error"
    [(where, _, severity)] = checks([{"name": "t", "characteristic": "fe01", "format": "<h",
                                      "write_response": False}])
    assert where == ("points", 0, "write_response") and severity == "warning"


def test_write_problem_refuses_what_the_format_cannot_hold_before_any_io() -> None:
    prof = thermostat_profile()
    setpoint, mode, lock, temperature = prof.points
    assert setpoint.write_problem(21.5) is None and setpoint.write_problem(31) == "out_of_range"
    assert mode.write_problem(300) == "encode_error" and mode.write_problem(True) == "encode_error"
    assert lock.write_problem(True) is None and lock.write_problem(1) == "encode_error"
    assert temperature.write_problem(20) == "read_only"
    assert setpoint.readback_tolerance(21.5) == pytest.approx(0.005, rel=1e-3)  # half of 0.01 per raw step

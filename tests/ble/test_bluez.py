"""Seam 2: bleak's real BlueZ backend against python-dbusmock's ``bluez5`` template on a private bus.

A private ``dbus-daemon`` (dbusmock's ``PrivateDBus``, a unix socket in a temporary folder) stands
in for the system bus; ``DBUS_SYSTEM_BUS_ADDRESS`` points at it. Devices are added with
``AddObject`` and announced with ``InterfacesAdded``, carrying ServiceData (``a{sv}`` of ``ay``) and
ManufacturerData (``a{qv}`` of ``ay``) as BlueZ types them (the template's ``AddDevice`` sends
ManufacturerData with the wrong type). Everything from D-Bus to the reading is bleak's and ours.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from fieldgate.driver import SharedResources
from fieldgate.drivers.ble.driver import BleDriver, BleGattDriver
from fieldgate.drivers.ble.scanner import bluez_adapter_state, bluez_power_cycle
from fieldgate.errors import DeviceUnreachable
from fieldgate.schema import PointError
from fieldgate.testing import RecordingSink as Sink
from fieldgate_hwsim.ble_sim import BTHOME_EXAMPLE_KEY, RECORDINGS, Recording

from .conftest import context

dbus = pytest.importorskip("dbus")
dbusmock = pytest.importorskip("dbusmock")
from dbusmock.testcase import BusType, PrivateDBus, SpawnedMock  # type: ignore[import-untyped]  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None,
                                reason="dbus-daemon missing: apt-get install dbus")

BLUEZ = "org.bluez"
DEVICE = "org.bluez.Device1"
ESS_ADDRESS = "D4:7C:44:00:12:AB"


class FakeBluez:
    """The bluez5 template on a private system bus, with helpers that type properties as BlueZ does."""

    def __init__(self) -> None:
        self._saved = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        self.bus = PrivateDBus(BusType.SYSTEM)
        self.bus.start()  # sets DBUS_SYSTEM_BUS_ADDRESS for this process
        self.mock = SpawnedMock.spawn_with_template("bluez5", {}, bustype=BusType.SYSTEM)
        self.conn = dbus.bus.BusConnection(self.bus.address)
        root = self.conn.get_object(BLUEZ, "/")
        self.bluez = dbus.Interface(root, "org.bluez.Mock")
        self.root = dbus.Interface(root, dbusmock.MOCK_IFACE)
        self.bluez.AddAdapter("hci0", "fieldgate-test")

    def close(self) -> None:
        self.mock.terminate()
        self.bus.stop()
        if self._saved is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self._saved

    @staticmethod
    def path(address: str, adapter: str = "hci0") -> str:
        return f"/org/bluez/{adapter}/dev_" + address.replace(":", "_")

    def _added(self, path: str, iface: str, props: dict[str, Any]) -> None:
        self.root.EmitSignal("org.freedesktop.DBus.ObjectManager", "InterfacesAdded", "oa{sa{sv}}", [
            dbus.ObjectPath(path),
            dbus.Dictionary({iface: dbus.Dictionary(props, signature="sv")}, signature="sa{sv}")])

    @staticmethod
    def _adv_props(rec: Recording, rssi: int) -> dict[str, Any]:
        return {
            "RSSI": dbus.Int16(rssi),
            "ServiceData": dbus.Dictionary(
                {k: dbus.Array(v, signature="y") for k, v in rec.service_data.items()}, signature="sv"),
            "ManufacturerData": dbus.Dictionary(
                {dbus.UInt16(k): dbus.Array(v, signature="y") for k, v in rec.manufacturer_data.items()},
                signature="qv"),
        }

    def add_device(self, rec: Recording, rssi: int = -60, methods: list[tuple[str, str, str, str]] | None = None,
                   announce: bool = True) -> str:
        """A device object with an advert's data, announced with InterfacesAdded as BlueZ does."""
        path = self.path(rec.address)
        props = {
            "Address": dbus.String(rec.address), "AddressType": dbus.String("public"),
            "Alias": dbus.String(rec.local_name or rec.address.replace(":", "-")),
            "Adapter": dbus.ObjectPath("/org/bluez/hci0"), "Paired": dbus.Boolean(False),
            "Connected": dbus.Boolean(False), "Trusted": dbus.Boolean(False), "Blocked": dbus.Boolean(False),
            "ServicesResolved": dbus.Boolean(False), "UUIDs": dbus.Array(list(rec.service_data), signature="s"),
            **self._adv_props(rec, rssi),
        }
        if rec.local_name:
            props["Name"] = dbus.String(rec.local_name)
        self.root.AddObject(path, DEVICE, props, methods or [])
        if announce:
            self._added(path, DEVICE, props)
        return path

    def advertise_again(self, rec: Recording, rssi: int = -60) -> None:
        """A later advert of a known device: BlueZ sends PropertiesChanged."""
        obj = dbus.Interface(self.conn.get_object(BLUEZ, self.path(rec.address)), dbusmock.MOCK_IFACE)
        obj.UpdateProperties(DEVICE, self._adv_props(rec, rssi))

    def add_gatt(self, address: str, service: str, chars: dict[str, str]) -> None:
        """A GATT service with readable characteristics (value hex) under a device."""
        dev = self.path(address)
        svc = dev + "/service0010"
        self.root.AddObject(svc, "org.bluez.GattService1", {
            "UUID": dbus.String(service), "Device": dbus.ObjectPath(dev), "Primary": dbus.Boolean(True)}, [])
        self._added(svc, "org.bluez.GattService1", {"UUID": dbus.String(service), "Device": dbus.ObjectPath(dev),
                                                      "Primary": dbus.Boolean(True)})
        for i, (uuid, value) in enumerate(chars.items()):
            path = f"{svc}/char{0x11 + i:04x}"
            props = {"UUID": dbus.String(uuid), "Service": dbus.ObjectPath(svc),
                     "Flags": dbus.Array(["read"], signature="s")}
            self.root.AddObject(path, "org.bluez.GattCharacteristic1", props, [
                ("ReadValue", "a{sv}", "ay", f"ret = dbus.ByteArray(bytes.fromhex('{value}'))")])
            self._added(path, "org.bluez.GattCharacteristic1", props)


@pytest.fixture(scope="module")
def bluez() -> Iterator[FakeBluez]:
    fake = FakeBluez()
    try:
        yield fake
    finally:
        fake.close()


async def test_configured_devices_read_through_the_real_bluez_backend(bluez: FakeBluez, monkeypatch:
                                                                      pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THERMO_KEY", BTHOME_EXAMPLE_KEY)
    shared = SharedResources()
    ruuvi = BleDriver.create(context("ruuvi/ruuvitag", shared, "ruuvi", backend="bleak",
                              address=RECORDINGS["ruuvi"].address, dedupe_window=0))
    thermo = BleDriver.create(context("bthome/thermometer", shared, "thermo", backend="bleak",
                               address=RECORDINGS["bthome-encrypted"].address, bind_key={"env": "THERMO_KEY"}))
    r_sink, t_sink = Sink(), Sink()
    async with ruuvi, thermo:
        tasks = [asyncio.create_task(ruuvi.run(r_sink)), asyncio.create_task(thermo.run(t_sink))]
        try:
            assert ruuvi.hub is not None and ruuvi.hub.adapter_state["powered"] is True
            for rec in (RECORDINGS["phone"], RECORDINGS["ruuvi"], RECORDINGS["stranger-ruuvi"],
                        RECORDINGS["bthome-encrypted"]):
                bluez.add_device(rec, rssi=-58)
            await r_sink.wait(lambda s: len(s.readings) == 1)
            await t_sink.wait(lambda s: len(s.readings) == 1)
            # A later advert arrives as PropertiesChanged of the device object.
            moved = Recording("ruuvi", RECORDINGS["ruuvi"].address, manufacturer_data={
                0x0499: bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CECBB8334C884F")})
            bluez.advertise_again(moved, rssi=-70)
            await r_sink.wait(lambda s: len(s.readings) == 2)
            status = ruuvi.hub.status()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    first, second = r_sink.readings
    assert first.values["temperature"] == 24.3 and first.values["rssi"] == -58
    assert second.values["measurement_sequence"] == 206 and second.values["rssi"] == -70
    assert t_sink.readings[0].values == {"temperature": 25.06, "humidity": 50.55, "rssi": -58}
    assert not r_sink.errors and not t_sink.errors
    assert status["counts"]["unknown"] >= 2 and status["state"] == "scanning"
    assert status["adapter_state"]["address"].startswith("xx:xx:xx:xx:")  # masked on the status page


async def test_adapter_power_cycle_through_bluez(bluez: FakeBluez) -> None:
    state = await bluez_power_cycle("hci0")
    assert state["powered"] is True
    assert (await bluez_adapter_state("hci0"))["powered"] is True
    with pytest.raises(DeviceUnreachable, match="refused to power"):
        await bluez_power_cycle("hci7")


async def test_missing_adapter_is_a_clear_error(bluez: FakeBluez) -> None:
    drv = BleDriver(context("ruuvi/ruuvitag", backend="bleak", adapter="hci7", address=RECORDINGS["ruuvi"].address))
    with pytest.raises(DeviceUnreachable, match="hci7") as info:
        await drv.__aenter__()
    assert "bluetoothctl" in str(info.value.hint)


async def test_gatt_read_with_a_retry_through_bluez(bluez: FakeBluez) -> None:
    # Connect fails once (as a sleepy sensor's first connection often does), then works.
    connect = ("self.tries = getattr(self, 'tries', 0) + 1\n"
               "if self.tries == 1:\n"
               "    raise dbus.exceptions.DBusException('le-connection-abort', name='org.bluez.Error.Failed')\n"
               "self.UpdateProperties('org.bluez.Device1', {'Connected': dbus.Boolean(True), "
               "'ServicesResolved': dbus.Boolean(True)})")
    disconnect = ("self.UpdateProperties('org.bluez.Device1', {'Connected': dbus.Boolean(False), "
                  "'ServicesResolved': dbus.Boolean(False)})")
    rec = Recording("ess", ESS_ADDRESS, local_name="ESS")
    bluez.add_device(rec, methods=[("Connect", "", "", connect), ("Disconnect", "", "", disconnect)],
                     announce=False)
    bluez.add_gatt(ESS_ADDRESS, "0000181a-0000-1000-8000-00805f9b34fb", {
        "00002a6e-0000-1000-8000-00805f9b34fb": "2909", "00002a6f-0000-1000-8000-00805f9b34fb": "d711"})
    drv = BleDriver.create(context("bluetooth-sig/environmental-sensing", backend="bleak", address=ESS_ADDRESS,
                            retry_delay=0))
    assert isinstance(drv, BleGattDriver)
    async with drv:
        assert drv.hub is not None
        drv.hub.seen.clear()
        bluez.advertise_again(rec, rssi=-55)  # the sensor advertises: BlueZ (and the hub) know it
        await asyncio.wait_for(drv.hub.seen.wait(), 5)
        sink = Sink()
        await asyncio.wait_for(drv.poll(sink), 20)
    [reading] = sink.readings
    assert reading.values == {"temperature": 2345, "humidity": 4567, "battery": PointError("no_characteristic")}
    assert drv.counts == {"polls": 1, "attempts": 2, "failed_attempts": 1}


async def test_gatt_unreachable_after_every_attempt(bluez: FakeBluez) -> None:
    refuse = "raise dbus.exceptions.DBusException('Page Timeout', name='org.bluez.Error.Failed')"
    rec = Recording("gone", "D4:7C:44:00:12:AC")
    bluez.add_device(rec, methods=[("Connect", "", "", refuse), ("Disconnect", "", "", "pass")], announce=False)
    drv = BleDriver.create(context("bluetooth-sig/environmental-sensing", backend="bleak", address=rec.address,
                            connect_attempts=2, retry_delay=0))
    async with drv:
        assert drv.hub is not None
        drv.hub.seen.clear()
        bluez.advertise_again(rec)
        await asyncio.wait_for(drv.hub.seen.wait(), 5)
        with pytest.raises(DeviceUnreachable, match="after 2 attempt") as info:
            await asyncio.wait_for(drv.poll(Sink()), 20)
    assert "out of range" in str(info.value.hint) and rec.address not in str(info.value)

"""The shared scanner through seam 1: bleak's ``BleakScanner(..., backend=FakeScanner)``.

``FakeScanner`` subclasses bleak's ``BaseBleakScanner`` and delivers adverts through bleak's own
``create_or_update_device`` and ``call_detection_callbacks``; the adverts are the published
vectors of hw-sim. Shown here: configured devices produce readings, unknown advertisers produce
nothing and are not logged, duplicates within the window collapse, the watchdog restarts a silent
scanner and then power-cycles the adapter (with events), and a missing D-Bus is a clear error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.driver import SharedResources
from fieldgate.drivers.ble.driver import BleDriver
from fieldgate.drivers.ble.scanner import ScannerHub
from fieldgate.errors import DeviceTimeout, DeviceUnreachable, DriverError
from fieldgate.outputs import MemoryOutput
from fieldgate.testing import RecordingSink as Sink
from fieldgate_hwsim.ble_sim import BTHOME_EXAMPLE_KEY, RECORDINGS, Recording, air

from .conftest import FAKE, context, validate_reading

STRANGERS = [RECORDINGS["phone"], RECORDINGS["stranger-ruuvi"]]


@asynccontextmanager
async def running(driver: BleDriver) -> AsyncIterator[tuple[BleDriver, Sink, asyncio.Task[None]]]:
    """An opened driver with ``run`` going; cancelled and closed at the end."""
    sink = Sink()
    async with driver:
        task = asyncio.create_task(driver.run(sink))
        try:
            yield driver, sink, task
        finally:
            task.cancel()
            with pytest.raises((asyncio.CancelledError, DriverError)):
                await task


def hub_of(driver: BleDriver) -> ScannerHub:
    assert driver.hub is not None
    return driver.hub


async def test_configured_devices_read_and_strangers_are_neither_forwarded_nor_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    shared = SharedResources()
    ruuvi = BleDriver.create(context("ruuvi/ruuvitag", shared, "ruuvi", address=RECORDINGS["ruuvi"].address))
    pvvx = BleDriver.create(context("xiaomi/lywsd03mmc-pvvx", shared, "pvvx", address=RECORDINGS["pvvx"].address))
    async with running(ruuvi) as (_, r_sink, _t1), running(pvvx) as (_, p_sink, _t2):
        assert air().starts == 1  # one scan per adapter, shared by both devices
        for rec in [*STRANGERS, RECORDINGS["ruuvi"], *STRANGERS, RECORDINGS["pvvx"]]:
            assert air().advertise(rec, rssi=-71) == 1
        await r_sink.wait(lambda s: bool(s.readings))
        await p_sink.wait(lambda s: bool(s.readings))
        hub = hub_of(ruuvi)
        assert hub.counts["adverts"] == 6 and hub.counts["unknown"] == 4
        status = hub.status()
    [r] = r_sink.readings
    assert r.values["temperature"] == 24.3 and r.values["rssi"] == -71
    assert p_sink.readings[0].values["battery"] == 87
    assert not r_sink.errors and not p_sink.errors
    assert RECORDINGS["ruuvi"].address not in str(status)
    log = caplog.text
    for rec in STRANGERS:
        assert rec.address not in log and rec.address[-5:] not in log
    assert RECORDINGS["ruuvi"].address not in log  # masked by default ...
    assert "xx:xx:xx:xx:88:4F" in log  # ... to its last two bytes
    assert air().starts == 1 and not air().scanners  # the last device left: scanning stopped


async def test_duplicates_within_the_window_collapse() -> None:
    rec = RECORDINGS["pvvx"]
    async with running(BleDriver.create(context("xiaomi/lywsd03mmc-pvvx", address=rec.address,
                                         dedupe_window="1h"))) as (drv, sink, _):
        for _ in range(5):
            air().advertise(rec)
        changed = Recording("pvvx", rec.address, {k: v[:-3] + b"\x57\x1d\x05" for k, v in rec.service_data.items()})
        air().advertise(changed)
        air().advertise(changed)
        await sink.wait(lambda s: len(s.readings) == 2)
        assert drv.counts["duplicates"] >= 5  # settle: every advert has been handled
    assert len(sink.readings) == 2 and drv.counts["duplicates"] == 5


async def test_window_zero_keeps_every_advert() -> None:
    rec = RECORDINGS["ruuvi"]
    async with running(BleDriver(context("ruuvi/ruuvitag", address=rec.address, dedupe_window=0))) as (_, sink, _t):
        for _ in range(3):
            air().advertise(rec)
        await sink.wait(lambda s: len(s.readings) == 3)


async def test_match_by_bind_key_and_by_beacon_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THERMO_KEY", BTHOME_EXAMPLE_KEY)
    shared = SharedResources()
    thermo = BleDriver.create(context("bthome/thermometer", shared, "thermo", bind_key={"env": "THERMO_KEY"}))
    tag = BleDriver.create(context("beacon/ibeacon", shared, "tag",
                            beacon={"uuid": "e2c56db5-dffb-48d2-b060-d0f5a71096e0", "major": 1, "minor": 2}))
    other_tag = BleDriver.create(context("beacon/ibeacon", shared, "other",
                                  beacon={"uuid": "e2c56db5-dffb-48d2-b060-d0f5a71096e0", "major": 9}))
    async with running(thermo) as (_, t_sink, _1), running(tag) as (_, b_sink, _2), \
            running(other_tag) as (_, o_sink, _3):
        for rec in (RECORDINGS["bthome"], RECORDINGS["phone"], RECORDINGS["bthome-encrypted"],
                    RECORDINGS["ibeacon"]):
            air().advertise(rec)
        await t_sink.wait(lambda s: bool(s.readings))
        await b_sink.wait(lambda s: bool(s.readings))
    assert [r.values["temperature"] for r in t_sink.readings] == [25.06]  # the plain BTHome stranger is not it
    assert b_sink.readings[0].values == {"present": True, "rssi": -60, "tx_power": -59}
    assert not o_sink.readings and not o_sink.errors and not t_sink.errors


async def test_watchdog_restarts_a_silent_scanner_then_power_cycles_the_adapter() -> None:
    rec = RECORDINGS["ruuvi"]
    ctx = context("ruuvi/ruuvitag", address=rec.address, silence_timeout="300ms", dedupe_window=0)
    announced: list[tuple[str, dict[str, object]]] = []
    ctx.event = lambda kind, **fields: announced.append((kind, fields))
    async with running(BleDriver.create(ctx)) as (drv, sink, task):
        hub = hub_of(drv)
        air().advertise(rec)
        await sink.wait(lambda s: len(s.readings) == 1)
        # 1. BlueZ goes quiet without an error: the watchdog restarts the scan, adverts flow again.
        air().stall()
        assert air().advertise(rec) == 0
        await sink.wait(lambda s: len(s.errors) == 1)
        assert air().starts == 2 and air().resets == 0
        [err] = sink.errors
        assert isinstance(err, DeviceTimeout) and err.reason == "scanner_silent" and "restarted" in str(err)
        assert air().advertise(rec) == 1
        await sink.wait(lambda s: len(s.readings) == 2)
        # 2. The controller is wedged: a restart does not help, a power cycle through BlueZ does.
        air().stall(wedge=True)
        await sink.wait(lambda s: len(s.errors) == 3)
        assert air().resets == 1 and air().starts == 4
        assert "power-cycled" in str(sink.errors[-1])
        assert air().advertise(rec) == 1
        await sink.wait(lambda s: len(s.readings) == 3)
        kinds = [e["kind"] for e in hub.status()["events"]]
        assert kinds == ["ble_scanner_restarted", "ble_scanner_restarted", "ble_adapter_reset"]
        # ...and the gateway's events topic hears each step, naming the device
        assert [k for k, _ in announced] == kinds
        assert all(f["device"] == "dev-1" and f["message"] for _, f in announced)
        assert hub.counts["restarts"] == 2 and hub.counts["resets"] == 1
        assert not task.done()


async def test_a_dead_adapter_fails_the_device_so_the_supervisor_reopens_it() -> None:
    rec = RECORDINGS["ruuvi"]
    air().reset_heals = False
    drv = BleDriver.create(context("ruuvi/ruuvitag", address=rec.address, silence_timeout="200ms"))
    async with drv:
        air().stall(wedge=True)
        with pytest.raises(DeviceUnreachable, match="even after restarting the scanner and power-cycling") as info:
            await asyncio.wait_for(drv.run(Sink()), 10)
        assert "bluetoothctl" in str(info.value.hint)
        assert hub_of(drv).state == "failed"


async def test_no_dbus_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # bleak's real BlueZ backend, with no system bus socket: bleak raises FileNotFoundError.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-such-socket'}")
    drv = BleDriver.create(context("ruuvi/ruuvitag", address=RECORDINGS["ruuvi"].address, backend="bleak"))
    with pytest.raises(DeviceUnreachable, match="no D-Bus system bus") as info:
        await drv.__aenter__()
    assert "bluetooth" in str(info.value.hint) and "system_bus_socket" in str(info.value.hint)
    assert drv.hub is None  # nothing left subscribed
    # the same through the fake backend, and the next open after the fault works
    air().fail_start = FileNotFoundError(2, "No such file or directory")
    drv = BleDriver.create(context("ruuvi/ruuvitag", address=RECORDINGS["ruuvi"].address))
    with pytest.raises(DeviceUnreachable, match="no D-Bus"):
        await drv.__aenter__()
    air().fail_start = None
    async with BleDriver.create(context("ruuvi/ruuvitag", address=RECORDINGS["ruuvi"].address)):
        assert air().starts == 1


async def test_unknown_backend_is_a_clear_error() -> None:
    drv = BleDriver(context("ruuvi/ruuvitag", address=RECORDINGS["ruuvi"].address, backend="nowhere.mod:Scanner"))
    with pytest.raises(DeviceUnreachable, match="cannot be loaded") as info:
        await drv.__aenter__()
    assert "module:Class" in str(info.value.hint)


def _device(dev_id: str, profile: str, **conn: Any) -> str:
    parts = ", ".join(f"{k}: {v}" for k, v in {"backend": FAKE, **conn}.items())
    return f"  - {{id: {dev_id}, driver: ble, profile: {profile}, connection: {{{parts}}}}}\n"


async def test_gateway_publishes_only_configured_devices(tmp_path: Path) -> None:
    text = ("gateway: {id: gw-ble, clock_check: off}\ndevices:\n"
            + _device("ruuvi", "ruuvi/ruuvitag", address=f"'{RECORDINGS['ruuvi'].address}'")
            + _device("pvvx", "xiaomi/lywsd03mmc-pvvx", address=f"'{RECORDINGS['pvvx'].address}'"))
    out = MemoryOutput()
    gw = Gateway(load_config_text(text, str(tmp_path / "c.yaml")), out)
    task = asyncio.create_task(gw.run())
    try:
        await asyncio.wait_for(gw.ready.wait(), 5)
        while len(air().scanners) == 0:  # both devices open on the gateway's own schedule
            await asyncio.wait_for(air().started.wait(), 5)
        for rec in RECORDINGS.values():
            air().advertise(rec)
        await out.wait_for(lambda o: o.by_device("ruuvi") and o.by_device("pvvx"), 5)
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 10)
    assert {r["device"] for r in out.readings} == {"ruuvi", "pvvx"}
    for msg in out.readings:
        validate_reading({"seq": 1, **msg} if "seq" not in msg else msg)
        assert all(m["quality"] == "good" for m in msg["metrics"].values())

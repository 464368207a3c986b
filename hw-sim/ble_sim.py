"""Simulated BLE sensors: a bleak scanner backend fed by recorded advertisements.

There is no radio in CI or in ``make demo``; bleak's backend seam stands in
for one. ``FakeScanner`` subclasses bleak's ``BaseBleakScanner`` and is
passed as ``BleakScanner(..., backend=FakeScanner)``, so the driver's code
path through bleak is the real one (device table, detection callbacks). The
adverts come from an ``Air`` per adapter: tests call ``air().advertise(...)``
or replay ``RECORDINGS``; ``air().stall()`` makes running scanners go quiet
as a wedged BlueZ does, until they are restarted.

``ReplayScanner`` (the driver's ``backend: replay``) replays ``RECORDINGS``
on its own at ``replay_rate`` per device with ``replay_rssi``: that is what
the demo uses.

The recordings are published test vectors of each format (BTHome's format and
encryption pages, Ruuvi's RAWv2 examples) or built here from the published
layout (pvvx, atc1441, iBeacon, Eddystone), plus adverts of strangers (a phone,
an unconfigured tag) that must never become readings.

Library use::

    from fieldgate_hwsim.ble_sim import FakeScanner, air, RECORDINGS
    # device connection: {address: ..., backend: "fieldgate_hwsim.ble_sim:FakeScanner"}
    air("hci0").replay(RECORDINGS["ruuvi"])

Command line: replay the recordings as JSON lines (one advert each, with the
raw advertising-data bytes a radio would carry), at a rate and RSSI::

    python -m fieldgate_hwsim.ble_sim --rate 2 --rssi -70 --count 3 --only ruuvi,pvvx
    python -m fieldgate_hwsim.ble_sim --list
    python -m fieldgate_hwsim.ble_sim --demo-config FOLDER   # the demo's device lines

Demo (``make demo``): ``demo_devices(folder)`` returns configuration lines of
simulated BLE devices served by ``backend: replay`` in the gateway process
itself; ``DEMO_NOTE`` says what they are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from fieldgate.drivers.ble.decode import bthome_encrypt
from fieldgate.tasks import cancel_and_wait

BTHOME = "0000fcd2-0000-1000-8000-00805f9b34fb"
ENV_SENSING = "0000181a-0000-1000-8000-00805f9b34fb"
EDDYSTONE = "0000feaa-0000-1000-8000-00805f9b34fb"

# The bind key of bthome.io's encryption example (public: a test key, not a secret).
BTHOME_EXAMPLE_KEY = "231d39c1d7cc1ab1aee224cd096db932"


@dataclass(frozen=True, slots=True)
class Recording:
    """One advertisement as a device sends it."""

    name: str
    address: str
    service_data: dict[str, bytes] = field(default_factory=dict)
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    local_name: str | None = None
    source: str = ""


def _pvvx(mac: str, temp_c: float, rh: float, mv: int, pct: int, count: int, flags: int) -> bytes:
    """pvvx custom format: MAC reversed, int16 0.01 °C, uint16 0.01 %, uint16 mV, uint8 %, counter, flags (LE)."""
    raw = bytes.fromhex(mac.replace(":", ""))[::-1]
    return raw + struct.pack("<hHHBBB", round(temp_c * 100), round(rh * 100), mv, pct, count, flags)


def _atc(mac: str, temp_c: float, rh: int, pct: int, mv: int, count: int) -> bytes:
    """atc1441 format: MAC, int16 0.1 °C, uint8 %, uint8 %, uint16 mV, counter (big endian)."""
    return bytes.fromhex(mac.replace(":", "")) + struct.pack(">hBBHB", round(temp_c * 10), rh, pct, mv, count)


RECORDINGS: dict[str, Recording] = {r.name: r for r in [
    Recording("bthome", "A4:C1:38:8D:18:B2", {BTHOME: bytes.fromhex("4002ca0903bf13")},
              source="bthome.io/format: temperature 25.06 °C, humidity 50.55 %"),
    Recording("bthome-encrypted", "54:48:E6:8F:80:A5", {BTHOME: bytes.fromhex("41a47266c95f730011223378237214")},
              local_name="SBHT-003C",
              source="bthome.io/encryption example (also bthome-ble's test): key 231d39c1..., counter 00112233, "
                     "temperature 25.06, humidity 50.55"),
    Recording("bthome-encrypted-mac", "54:48:E6:8F:80:A5",
              {BTHOME: bytes.fromhex("43a5808fe64854f196c06ffb4900112233f08ecbde")},
              source="the same example with the MAC in the payload (device info 0x43)"),
    Recording("bthome-pressure-mac", "A4:C1:38:8D:18:B2", {BTHOME: bytes.fromhex("42b2188d38c1a404138a01")},
              source="bthome-ble test vector: MAC in payload, pressure 1008.83 hPa"),
    Recording("shelly-door", "3C:2E:F5:00:00:01",
              {BTHOME: bytes.fromhex("4400120164050000002d013f0000")}, local_name="SBDW-002C",
              source="Shelly BLU Door/Window layout: packet id, battery, illuminance, window, rotation"),
    Recording("ruuvi", "CB:B8:33:4C:88:4F",
              manufacturer_data={0x0499: bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")},
              source="docs.ruuvi.com data format 5, valid data test vector"),
    Recording("pvvx", "A4:C1:38:12:34:56", {ENV_SENSING: _pvvx("A4:C1:38:12:34:56", 23.45, 45.67, 2985, 87, 28, 5)},
              local_name="ATC_123456", source="pvvx custom format layout"),
    Recording("atc1441", "A4:C1:38:AB:CD:EF", {ENV_SENSING: _atc("A4:C1:38:AB:CD:EF", 21.3, 48, 91, 3011, 7)},
              local_name="ATC_ABCDEF", source="atc1441 format layout"),
    Recording("ibeacon", "F0:0D:00:00:00:01",
              manufacturer_data={0x004C: bytes.fromhex("0215e2c56db5dffb48d2b060d0f5a71096e000010002c5")},
              source="iBeacon layout: UUID e2c56db5-..., major 1, minor 2, measured power -59"),
    Recording("eddystone-uid", "F0:0D:00:00:00:02",
              {EDDYSTONE: bytes.fromhex("00ecedd1ebeac04e5defa0170123456789ab0000")},
              source="Eddystone-UID layout: tx -20, namespace edd1ebeac04e5defa017, instance 0123456789ab"),
    Recording("eddystone-url", "F0:0D:00:00:00:03", {EDDYSTONE: bytes.fromhex("10f800676f6f676c6507")},
              source="Eddystone-URL spec example: http://www.google.com"),
    # Strangers: must never become readings.
    Recording("phone", "5E:11:22:33:44:55", manufacturer_data={0x004C: bytes.fromhex("10063b1d4f2a9c61")},
              source="an iPhone's nearby-info advert (random address)"),
    Recording("stranger-ruuvi", "C1:00:00:00:00:99",
              manufacturer_data={0x0499: bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDC10000000099")},
              source="somebody else's RuuviTag"),
]}


def advertisement(rec: Recording, rssi: int = -60) -> AdvertisementData:
    """bleak's ``AdvertisementData`` for a recording."""
    uuids = list(rec.service_data)
    return AdvertisementData(rec.local_name, dict(rec.manufacturer_data), dict(rec.service_data), uuids, None,
                             rssi, ())


class Air:
    """The simulated radio around one adapter: scanners listening, adverts sent, faults."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self.scanners: list[FakeScanner] = []
        self.starts = 0
        self.resets = 0
        self.sent = 0
        self.fail_start: BaseException | None = None  # raised by the next scanner start(s)
        self.wedged = False  # the controller is stuck: even fresh scanners hear nothing until a power cycle
        self.reset_heals = True  # whether a power cycle unwedges it
        self.started = asyncio.Event()  # set whenever a scanner starts (tests: wait for a restart)

    def advertise(self, rec: Recording, rssi: int = -60) -> int:
        """Send one advert; returns how many running (not stalled) scanners heard it."""
        self.sent += 1
        heard = 0
        for scanner in list(self.scanners):
            if scanner.inject(rec, rssi):
                heard += 1
        return heard

    def stall(self, wedge: bool = False) -> None:
        """Running scanners go quiet without an error, as a wedged BlueZ does, until restarted.

        Args:
            wedge: also new scanners stay quiet, until the adapter is power-cycled.
        """
        self.wedged = wedge
        for scanner in self.scanners:
            scanner.stuck = True

    async def replay(self, recs: list[Recording] | Recording, rate: float = 1.0, rssi: int = -60,
                     count: int | None = None) -> None:
        """Send the recordings ``rate`` times per second each (``count`` rounds, or until cancelled)."""
        recs = [recs] if isinstance(recs, Recording) else recs
        n = 0
        while count is None or n < count:
            for rec in recs:
                self.advertise(rec, rssi)
            n += 1
            await asyncio.sleep(1.0 / rate)


_AIRS: dict[str, Air] = {}


def air(adapter: str = "hci0") -> Air:
    """The simulated radio of an adapter (created on first use)."""
    if adapter not in _AIRS:
        _AIRS[adapter] = Air(adapter)
    return _AIRS[adapter]


def reset_air() -> None:
    """Forget every adapter's scanners and counters (between tests)."""
    _AIRS.clear()


class FakeScanner(BaseBleakScanner):
    """A bleak scanner backend without a radio: hears what ``air(adapter)`` sends.

    bleak constructs it as ``backend(detection_callback, service_uuids, scanning_mode, bluez=..., cb=...)``;
    ``cb`` is bleak's own CoreBluetooth argument, so it is taken (and ignored) by ``**kwargs``.
    """

    def __init__(self, detection_callback: Any, service_uuids: list[str] | None,
                 scanning_mode: str = "active", *, bluez: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self.adapter = (bluez or {}).get("adapter", "hci0")
        self.scanning_mode = scanning_mode
        self.stuck = False

    async def start(self) -> None:
        """Start listening (a fresh scanner is never stuck)."""
        a = air(self.adapter)
        if a.fail_start is not None:
            raise a.fail_start
        self.seen_devices = {}
        self.stuck = a.wedged
        if self not in a.scanners:
            a.scanners.append(self)
        a.starts += 1
        a.started.set()
        a.started = asyncio.Event()

    async def stop(self) -> None:
        """Stop listening."""
        with contextlib.suppress(ValueError):
            air(self.adapter).scanners.remove(self)

    def inject(self, rec: Recording, rssi: int) -> bool:
        """Deliver one advert through bleak's device table and callbacks, unless stuck."""
        if self.stuck:
            return False
        adv = advertisement(rec, rssi)
        if not self.is_allowed_uuid(adv.service_uuids) and self._service_uuids:
            return False
        device = self.create_or_update_device(rec.address, rec.address, rec.local_name, None, adv)
        self.call_detection_callbacks(device, adv)
        return True

    @classmethod
    async def reset_adapter(cls, adapter: str) -> dict[str, Any]:
        """The hub's adapter power cycle, simulated: counted, and stuck scanners come back."""
        a = air(adapter)
        a.resets += 1
        if a.reset_heals:
            a.wedged = False
            for scanner in a.scanners:
                scanner.stuck = False
        return {"powered": True, "discovering": False, "address": "00:00:00:00:00:00"}


DEMO_RECORDINGS = ("bthome-encrypted", "ruuvi", "pvvx", "ibeacon", "phone", "stranger-ruuvi")


class ReplayScanner(FakeScanner):
    """The driver's ``backend: replay``: replays ``DEMO_RECORDINGS`` while started (no radio, no D-Bus).

    Args:
        replay_rate: adverts per second per recording.
        replay_rssi: the RSSI they carry.
        replay: recording names (default ``DEMO_RECORDINGS``).
    """

    def __init__(self, detection_callback: Any, service_uuids: list[str] | None, scanning_mode: str = "active",
                 *, replay_rate: float = 1.0, replay_rssi: int = -60, replay: tuple[str, ...] = DEMO_RECORDINGS,
                 **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids, scanning_mode, **kwargs)
        self.rate, self.rssi = replay_rate, replay_rssi
        self.rounds = 0
        self.recs = [RECORDINGS[n] for n in replay]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start listening and replaying; the counter of the pvvx/Ruuvi frames moves on each round."""
        await super().start()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._replay(), name="ble-replay")

    accepts_replay_options = True  # the hub passes replay_rate / replay_rssi from the connection

    async def _replay(self) -> None:
        while True:
            for rec in self.recs:
                self.inject(_tick(rec, self.rounds), self.rssi)
            self.rounds += 1
            await asyncio.sleep(1.0 / self.rate)  # the replay's pace, not a synchronization

    async def stop(self) -> None:
        """Stop replaying and listening."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        await super().stop()


def _tick(rec: Recording, n: int) -> Recording:
    """Vary a recording per round so the demo shows moving values.

    Round 0 is the published vector itself; later rounds are built with the
    same layout (pvvx) or re-encrypted with the example key and a new counter
    (BTHome), which is exactly what the real devices do.
    """
    if n == 0:
        return rec
    if rec.name == "pvvx":
        data = _pvvx(rec.address, 23.45 + (n % 10) * 0.1, 45.67, 2985, 87, n % 256, 5)
        return replace(rec, service_data={ENV_SENSING: data})
    if rec.name == "bthome-encrypted":
        temp = round((2506 + (n % 20) * 5) / 100, 2)
        objects = struct.pack("<BhBH", 0x02, round(temp * 100), 0x03, 5055)
        data = bthome_encrypt(objects, rec.address, bytes.fromhex(BTHOME_EXAMPLE_KEY), 0x33221100 + n)
        return replace(rec, service_data={BTHOME: data})
    return rec


DEMO_NOTE = ("BLE: 4 simulated sensors replayed without a radio (BTHome encrypted thermometer with a key file, "
             "RuuviTag, LYWSD03MMC/pvvx, iBeacon asset tag); a phone and a stranger's tag advertise too and "
             "never become readings")


def demo_devices(folder: Path, adapter: str = "hci0", rate: float = 1.0, rssi: int = -60) -> list[str]:
    """Configuration lines for ``make demo``: simulated BLE sensors through ``backend: replay``.

    The lines work in a separate gateway process: the replay backend runs in
    that process and needs no radio and no D-Bus. Writes the BTHome example
    bind key to ``folder/ble-bthome.key`` (a key file, as in the field).

    Args:
        folder: the demo's folder.
        adapter: the adapter name the devices use (nothing opens it).
        rate: adverts per second per simulated device.
        rssi: the RSSI the adverts carry.

    Returns:
        ``devices:`` list items in flow style, e.g.
        ``  - {id: ble-ruuvi, driver: ble, profile: ruuvi/ruuvitag, connection: {...}}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "ble-bthome.key"
    key.write_text(BTHOME_EXAMPLE_KEY + "\n")
    key.chmod(0o600)
    conn = f"adapter: {adapter}, backend: replay, replay_rate: {rate:g}, replay_rssi: {rssi}, silence_timeout: 60s"
    beacon = "{uuid: e2c56db5-dffb-48d2-b060-d0f5a71096e0, major: 1, minor: 2}"
    return [
        f"  - {{id: ble-thermo-bthome, driver: ble, profile: bthome/thermometer, connection: {{{conn}, "
        f"address: '{RECORDINGS['bthome-encrypted'].address}', bind_key: {{file: '{key}'}}}}}}",
        f"  - {{id: ble-ruuvi, driver: ble, profile: ruuvi/ruuvitag, connection: {{{conn}, "
        f"address: '{RECORDINGS['ruuvi'].address}'}}}}",
        f"  - {{id: ble-lywsd03mmc, driver: ble, profile: xiaomi/lywsd03mmc-pvvx, connection: {{{conn}, "
        f"address: '{RECORDINGS['pvvx'].address}'}}}}",
        f"  - {{id: ble-asset-tag, driver: ble, profile: beacon/ibeacon, connection: {{{conn}, beacon: {beacon}}}}}",
    ]


def ad_bytes(rec: Recording) -> bytes:
    """The advertising data a radio carries for a recording: flags, name, service and manufacturer data."""
    out = bytearray(b"\x02\x01\x06")
    for uuid, data in rec.service_data.items():
        body = int(uuid[4:8], 16).to_bytes(2, "little") + data
        out += bytes([len(body) + 1, 0x16]) + body
    for company, data in rec.manufacturer_data.items():
        body = company.to_bytes(2, "little") + data
        out += bytes([len(body) + 1, 0xFF]) + body
    if rec.local_name:
        name = rec.local_name.encode()
        out += bytes([len(name) + 1, 0x09]) + name
    return bytes(out)


def _record_json(rec: Recording, rssi: int) -> str:
    return json.dumps({"name": rec.name, "address": rec.address, "rssi": rssi, "local_name": rec.local_name,
                       "service_data": {k: v.hex() for k, v in rec.service_data.items()},
                       "manufacturer_data": {f"0x{k:04x}": v.hex() for k, v in rec.manufacturer_data.items()},
                       "ad": ad_bytes(rec).hex(), "source": rec.source})


def main(argv: list[str] | None = None) -> int:
    """Replay the recordings as JSON lines at a rate, list them, or print the demo's device lines."""
    ap = argparse.ArgumentParser(
        prog="python -m fieldgate_hwsim.ble_sim",
        description="Replay published/captured BLE advertisements of each format (BTHome, Ruuvi RAWv2, "
                    "pvvx/atc1441, iBeacon, Eddystone) as JSON lines, with the raw advertising data.")
    ap.add_argument("--rate", type=float, default=1.0, help="rounds per second (each round: every recording)")
    ap.add_argument("--rssi", type=int, default=-60, help="RSSI the adverts carry (dBm)")
    ap.add_argument("--count", type=int, default=1, help="rounds to replay (0: until interrupted)")
    ap.add_argument("--only", help="comma-separated recording names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the recordings and where they come from")
    ap.add_argument("--demo-config", type=Path, metavar="FOLDER",
                    help="write the demo's key file into FOLDER and print the demo's device lines")
    args = ap.parse_args(argv)
    if args.rate <= 0:
        ap.error("--rate must be above 0")
    if args.demo_config:
        print("\n".join(demo_devices(args.demo_config, rate=args.rate, rssi=args.rssi)))
        return 0
    if args.list:
        for rec in RECORDINGS.values():
            print(f"{rec.name:22} {rec.address}  {rec.source}")
        return 0
    names = args.only.split(",") if args.only else list(RECORDINGS)
    unknown = [n for n in names if n not in RECORDINGS]
    if unknown:
        ap.error(f"unknown recording(s) {', '.join(unknown)}; known: {', '.join(RECORDINGS)}")
    try:
        n = 0
        while args.count == 0 or n < args.count:
            started = time.monotonic()
            for name in names:
                print(_record_json(_tick(RECORDINGS[name], n), args.rssi), flush=True)
            n += 1
            if args.count == 0 or n < args.count:
                time.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - started)))  # the replay's pace
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

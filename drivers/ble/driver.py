"""The ``ble`` driver: a BLE sensor's advertisements (pushed) or its GATT characteristics (polled).

One instance serves one device. ``BleDriver(ctx)`` returns a ``BleGattDriver``
for a GATT profile (one without ``decoder``): the supervisor runs push drivers
(those with ``run``) and polls the others, so the two kinds are two classes
behind the one entry point.

Advertisements: Opening it subscribes to its adapter's shared
``ScannerHub`` (one scan per adapter, started by the first device); ``run``
then turns each advertisement the hub hands over into a reading: find the
profile's format in the advert, collapse duplicates within ``dedupe_window``,
decode (decrypting BTHome with the device's bind key), keep the profile's
points, add ``rssi``. A payload that does not decode (a wrong bind key, a
truncated frame) is reported as a partial failure once per streak and gives
no reading. Nothing an advertiser sends can raise out of ``run``; only the
hub's failure does (as a ``DriverError``), so the supervisor reopens.

GATT: each poll connects, reads the profile's characteristics, and
disconnects (a sensor serves one connection at a time, and holding it
drains its battery), with ``connect_attempts`` tries per poll because the
first connection attempt to a sleepy sensor often fails. A command's write
(``write``, the seam's write hook) does the same: every value is encoded
before any radio traffic (a value the format cannot hold sends nothing),
the connection is retried, the writes are not: a write whose answer was
lost may have happened, so it is reported, never repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from fieldgate.checks import DoctorDevice, Finding
from fieldgate.driver import DeviceContext, ReadingSink
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable, DriverError
from fieldgate.schema import PointError, RawReading

from .decode import DECODERS, DecodeError, uuid16
from .gatt import pack_point, unpack_point
from .profile import BleConnection, BlePoint, BleProfile
from .scanner import Advert, ScannerHub, load_backend, mask_address, scan_error

if TYPE_CHECKING:
    from fieldgate.driver import PointWrite

_QUEUE = 64  # adverts waiting for this device; beyond, the oldest are dropped (a stalled device)


def read_bind_key(conn: BleConnection) -> bytes | None:
    """The bind key as 16 bytes, read now (files can be rotated between reopens).

    Raises:
        DriverError: the secret cannot be read or is not 32 hex digits.
    """
    if conn.bind_key is None:
        return None
    try:
        text = conn.bind_key.reveal().strip()
    except (OSError, KeyError) as exc:
        raise DriverError(f"cannot read the bind key ({conn.bind_key!r}): {exc}", reason="config",
                          hint="the file must be readable by the gateway, or the variable set") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 16:
        raise DriverError(f"the bind key in {conn.bind_key!r} is not 32 hex digits", reason="config",
                          hint="copy the key shown by the device's app or firmware (16 bytes as hex)")
    return key


class _HubMember:
    """A device on its adapter's shared ``ScannerHub``: joins it on open, leaves (closing it last) on close.

    It joins as a ``Subscriber`` (scanner.py), so it declares what one has; each driver defines them.
    """

    ctx: DeviceContext[BleProfile, BleConnection]
    conn: BleConnection
    hub: ScannerHub | None
    address: str | None

    if TYPE_CHECKING:  # declared for the type checker only: each driver below defines them
        def deliver(self, advert: Advert) -> None:
            """Take one advert (see ``Subscriber.deliver``)."""

        def hub_event(self, kind: str, message: str, error: DriverError | None) -> None:
            """The hub started, failed or went silent (see ``Subscriber.hub_event``)."""

    async def _join(self) -> ScannerHub:
        hub = self.ctx.shared.acquire(self.conn.hub_key, lambda: ScannerHub(self.conn))
        self.hub = hub
        hub.subscribe(self, self.conn)
        try:
            await hub.ensure_started()
        except BaseException:
            await self._leave()
            raise
        return hub

    async def __aexit__(self, *exc: object) -> None:
        await self._leave()

    async def _leave(self) -> None:
        hub, self.hub = self.hub, None
        if hub is None:
            return
        hub.unsubscribe(self)
        last = self.ctx.shared.release(self.conn.hub_key)
        if last is not None:
            await last.close()


class BleDriver(_HubMember):
    """A BLE sensor read from its advertisements (BTHome, Ruuvi, pvvx, iBeacon, Eddystone)."""

    name: ClassVar[str] = "ble"
    Profile: ClassVar[type[BleProfile]] = BleProfile
    Connection: ClassVar[type[BleConnection]] = BleConnection

    @staticmethod
    def decode_vector(profile: BleProfile, vector: Mapping[str, Any]) -> dict[str, Any]:
        """Conformance hook (``DecodesVectors``): one datasheet test vector → raw values by point.

        An advertisement vector (``address``, ``service_data: {uuid16: hex}`` or
        ``manufacturer_data: {company: hex}``, ``bind_key``) goes through the profile's decoder as an
        advert does; a GATT one (``characteristics: {uuid16: hex}``) through ``unpack_point``.
        ``rssi`` comes from the radio, not from a vector: it is left out.
        """
        if profile.decoder is None:
            chars = {str(k).lower(): bytes.fromhex(v) for k, v in vector["characteristics"].items()}
            # Kept as 128-bit UUIDs; a SIG one is 0000xxxx-..., and vectors name the xxxx.
            return {p.name: unpack_point(p, chars[p.characteristic[4:8]])
                    for p in profile.points if p.characteristic is not None}
        decoder = DECODERS[profile.decoder]
        service = {uuid16(int(k, 16)): bytes.fromhex(v) for k, v in (vector.get("service_data") or {}).items()}
        maker = {int(k, 16): bytes.fromhex(v) for k, v in (vector.get("manufacturer_data") or {}).items()}
        payload = decoder.payload(service, maker)
        if payload is None:
            raise DecodeError(f"the vector carries no {decoder.name} data")
        key = bytes.fromhex(vector["bind_key"]) if vector.get("bind_key") else None
        values = decoder.decode(payload, vector.get("address"), key)
        return {p.name: values[p.source] for p in profile.points if p.source != "rssi" and p.source in values}

    @classmethod
    def create(cls, ctx: DeviceContext[BleProfile, BleConnection]) -> BleDriver | BleGattDriver:
        """The declared factory: a ``BleGattDriver`` for a GATT profile, else an advertisement driver."""
        return BleGattDriver(ctx) if ctx.profile.decoder is None else BleDriver(ctx)

    def __init__(self, ctx: DeviceContext[BleProfile, BleConnection]) -> None:
        self.ctx = ctx
        self.profile = ctx.profile
        self.conn = ctx.connection
        assert self.profile.decoder is not None
        self.decoder = DECODERS[self.profile.decoder]
        self.address = self.conn.address
        self.label = mask_address(self.address, self.conn.mask_addresses) if self.address else "by-match"
        self.points = [(p.name, p.source) for p in self.profile.points]
        self.hub: ScannerHub | None = None
        self.key: bytes | None = None
        self.queue: asyncio.Queue[Advert] = asyncio.Queue(_QUEUE)
        self.failure: asyncio.Future[DriverError] | None = None
        self._sink: ReadingSink | None = None
        self._last_payload: bytes | None = None
        self._last_ts = 0.0
        self._error_streak: str | None = None
        self.counts = {"adverts": 0, "duplicates": 0, "readings": 0, "errors": 0, "other": 0, "dropped": 0}

    @staticmethod
    def bus_of(connection: Any) -> str | None:
        """Adverts need no bus lock: the shared scanner is not polled."""
        return None

    @classmethod
    async def doctor(cls, devices: Sequence[DoctorDevice], timeout: float) -> list[Finding]:
        """``fieldgate doctor``: BlueZ runs and each adapter the devices use is known and powered."""
        from .doctor import ble_findings

        return await ble_findings(devices, timeout)

    # --- open / close -------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.key = read_bind_key(self.conn)
        self.failure = asyncio.get_running_loop().create_future()
        hub = await self._join()
        self.ctx.log.info("listening for %s adverts from %s on %s", self.decoder.name, self.label, hub.adapter)
        return self

    # --- hub callbacks (event loop, non-blocking) ---------------------------

    def deliver(self, advert: Advert) -> None:
        """Queue one advert; a full queue drops the oldest (the newest value matters most)."""
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.counts["dropped"] += 1
        self.queue.put_nowait(advert)

    def hub_event(self, kind: str, message: str, error: DriverError | None) -> None:
        """A watchdog step or failure of the shared scanner."""
        self.ctx.event(kind, device=self.ctx.device_id, message=message)
        if kind == "ble_scanner_failed" and error is not None:
            if self.failure is not None and not self.failure.done():
                self.failure.set_result(error)
        elif error is not None and self._sink is not None:
            self._sink.add_error(error)

    # --- run ----------------------------------------------------------------

    async def run(self, sink: ReadingSink) -> None:
        """Until cancelled: one reading per new advert of this device.

        Raises:
            DriverError: the shared scanner failed (the supervisor reopens with backoff).
        """
        assert self.failure is not None
        self._sink = sink
        failed = self.failure
        getter: asyncio.Future[Advert] | None = None
        try:
            while True:
                while not self.queue.empty():
                    self.handle(self.queue.get_nowait(), sink)
                getter = asyncio.ensure_future(self.queue.get())
                waiting: list[asyncio.Future[Any]] = [getter, failed]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    raise failed.result()
                self.handle(getter.result(), sink)
                getter = None
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            self._sink = None

    def handle(self, advert: Advert, sink: ReadingSink) -> None:
        """Decode one advert and hand the reading (or one error per streak) to ``sink``."""
        self.counts["adverts"] += 1
        payload = self.decoder.payload(advert.service_data, advert.manufacturer_data)
        if payload is None:
            self.counts["other"] += 1  # this device also sends other frames (names, other formats)
            return
        window = self.conn.dedupe_window
        if window > 0 and payload == self._last_payload and advert.ts - self._last_ts < window:
            self.counts["duplicates"] += 1
            return
        try:
            values = self.decoder.decode(payload, advert.address, self.key)
        except DecodeError as exc:
            if self.address is None:
                return  # a match-by-key/beacon device: someone else's advert, not an error of ours
            self._report(sink, exc)
            return
        except Exception as exc:  # a decoder bug must not stop the device; the fuzz tests hunt these
            self._report(sink, DecodeError(f"decoder {self.decoder.name} failed: {exc!r}"))
            return
        if self.conn.beacon is not None and not self.conn.beacon.matches(values):
            return
        self._last_payload, self._last_ts = payload, advert.ts
        self._error_streak = None
        out: dict[str, Any] = {}
        for name, source in self.points:
            if source == "rssi":
                out[name] = advert.rssi
            elif source in values:
                out[name] = values[source]
        if not any(src != "rssi" and src in values for _, src in self.points):
            self.counts["other"] += 1  # e.g. an Eddystone TLM frame for a profile of UID points
            return
        self.counts["readings"] += 1
        sink.add(RawReading(out, ts=advert.ts))

    def _report(self, sink: ReadingSink, exc: DecodeError) -> None:
        self.counts["errors"] += 1
        message = str(exc)
        if message == self._error_streak:
            return  # one report per streak: a device with a wrong key adverts every second
        self._error_streak = message
        hint = ("check the bind key: it is the one shown when the device was paired/encrypted"
                if exc.reason in ("decrypt_error", "unencrypted") else
                f"the device may send another format than {self.decoder.name!r}; check the profile's decoder")
        sink.add_error(DeviceProtocolError(f"advert from {self.label}: {message}", reason=exc.reason, hint=hint))

    def status(self) -> dict[str, Any]:
        """Per-device counters and the adapter's state (addresses masked)."""
        return {"address": self.label, "decoder": self.decoder.name, "counts": dict(self.counts),
                "last_advert": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._last_ts))
                if self._last_ts else None,
                "adapter": self.hub.status() if self.hub is not None else None}


class BleGattDriver(_HubMember):
    """A BLE sensor read over GATT: connect, read the profile's characteristics, disconnect."""

    name: ClassVar[str] = "ble"
    Profile: ClassVar[type[BleProfile]] = BleProfile
    Connection: ClassVar[type[BleConnection]] = BleConnection

    def __init__(self, ctx: DeviceContext[BleProfile, BleConnection]) -> None:
        self.ctx = ctx
        self.profile = ctx.profile
        self.conn = ctx.connection
        self.address = self.conn.address
        self.label = mask_address(self.address, self.conn.mask_addresses) if self.address else "?"
        self.by_char: dict[str, list[BlePoint]] = defaultdict(list)
        for p in self.profile.points:
            assert p.characteristic is not None
            self.by_char[p.characteristic].append(p)
        self.hub: ScannerHub | None = None
        self.client_backend: type[Any] | None = None
        self.counts = {"polls": 0, "attempts": 0, "failed_attempts": 0}

    async def __aenter__(self) -> Self:
        if self.address is None:
            raise DriverError("a GATT profile needs the device's 'address' in the connection", reason="config",
                              hint="GATT reads connect to one device: give connection.address")
        self.client_backend = load_backend(self.conn.client_backend)
        # The shared scanner keeps the device's latest BLEDevice: BlueZ connects only to devices it has seen.
        await self._join()
        self.ctx.log.info("reading %d characteristic(s) of %s over GATT", len(self.by_char), self.label)
        return self

    def deliver(self, advert: Advert) -> None:
        """Adverts of a GATT device only tell that it is in range (the hub keeps its BLEDevice)."""

    def hub_event(self, kind: str, message: str, error: DriverError | None) -> None:
        """Scanner restarts do not concern a polled device; the next poll shows whether it is reachable."""

    async def poll(self, sink: ReadingSink) -> None:
        """Connect, read every characteristic of the profile, disconnect; retried ``connect_attempts`` times.

        Raises:
            DeviceUnreachable: no attempt connected (out of range, asleep, or connected elsewhere).
        """
        self.counts["polls"] += 1
        last: BaseException | None = None
        for attempt in range(self.conn.connect_attempts):
            if attempt:
                await asyncio.sleep(self.conn.retry_delay)  # a pause between tries, not a synchronization
            self.counts["attempts"] += 1
            try:
                values = await self._read_once()
            except FileNotFoundError as exc:
                raise scan_error(self.conn.adapter, exc) from exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # BleakError, BleakDBusError, TimeoutError, OSError: retried
                self.counts["failed_attempts"] += 1
                last = exc
                self.ctx.log.debug("GATT attempt %d to %s failed: %r", attempt + 1, self.label, exc)
                continue
            sink.add(RawReading(values))
            return
        raise DeviceUnreachable(
            f"cannot read {self.label} over GATT after {self.conn.connect_attempts} attempt(s): "
            f"{type(last).__name__}: {last}",
            hint="the sensor may be out of range, asleep, or connected to a phone app; "
                 "check `bluetoothctl info <address>`") from last

    def _client(self) -> Any:
        from bleak import BleakClient

        assert self.address is not None
        target = self.hub.devices.get(self.address) if self.hub is not None else None
        return BleakClient(target or self.address, timeout=self.ctx.timeout, backend=self.client_backend,
                           bluez={"adapter": self.conn.adapter})

    async def write(self, writes: Sequence[PointWrite]) -> None:
        """Connect and write each point's characteristic, in order; then disconnect.

        Raises:
            DriverError: reason ``encode_error`` / ``not_supported`` (nothing was sent), or the
                characteristic is not on the device (``no_characteristic``).
            DeviceUnreachable: no connection after ``connect_attempts`` tries (nothing was sent).
            DeviceProtocolError: the device refused a write (reason ``att_error:XX``, the ATT error code).
            DeviceTimeout: no answer to a write within the device timeout (it may have happened).
        """
        by_name = {p.name: p for p in self.profile.points}
        planned: list[tuple[str, str, bytes, bool]] = []
        for w in writes:
            point = by_name.get(w.name)
            if point is None:
                raise DriverError(f"no point {w.name!r} in the profile", reason="unknown_point")
            uuid = point.write_characteristic or point.characteristic
            assert uuid is not None
            planned.append((w.name, uuid, pack_point(point, w.value), point.write_response))
        from bleak.exc import BleakCharacteristicNotFoundError, BleakGATTProtocolError

        last: BaseException | None = None
        for attempt in range(self.conn.connect_attempts):
            if attempt:
                await asyncio.sleep(self.conn.retry_delay)  # a pause between tries, not a synchronization
            client = self._client()
            try:
                await client.connect()
            except FileNotFoundError as exc:
                raise scan_error(self.conn.adapter, exc) from exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # BleakError, BleakDBusError, TimeoutError, OSError: nothing written yet
                last = exc
                self.ctx.log.debug("GATT connect %d to %s for a write failed: %r", attempt + 1, self.label, exc)
                continue
            done: list[str] = []
            try:
                for name, uuid, data, response in planned:
                    try:
                        async with asyncio.timeout(self.ctx.timeout):
                            await client.write_gatt_char(uuid, data, response=response)
                    except BleakGATTProtocolError as exc:
                        raise DeviceProtocolError(
                            f"{self.label} refused the write of {name!r}: {exc.code.name.lower()}"
                            + _written(done), reason=f"att_error:{int(exc.code):02x}") from exc
                    except BleakCharacteristicNotFoundError as exc:
                        raise DriverError(f"{self.label} has no characteristic {uuid} for {name!r}" + _written(done),
                                          reason="no_characteristic",
                                          hint="check the profile's characteristic UUIDs against the device's "
                                               "services (bluetoothctl: menu gatt, list-attributes)") from exc
                    except TimeoutError as exc:
                        raise DeviceTimeout(f"no answer from {self.label} to the write of {name!r} within "
                                            f"{self.ctx.timeout:g}s; it may have happened" + _written(done)) from exc
                    except DriverError:
                        raise
                    except Exception as exc:  # the link dropped mid-write: the outcome of this one is unknown
                        raise DeviceUnreachable(f"the connection to {self.label} failed during the write of "
                                                f"{name!r}: {type(exc).__name__}: {exc}" + _written(done)) from exc
                    done.append(name)
            finally:
                try:
                    await client.disconnect()
                except Exception as exc:  # a disconnect failure does not undo the writes
                    self.ctx.log.debug("GATT disconnect from %s: %r", self.label, exc)
            self.ctx.log.info("wrote %s to %s over GATT", ", ".join(done), self.label)
            return
        raise DeviceUnreachable(
            f"cannot connect to {self.label} to write after {self.conn.connect_attempts} attempt(s): "
            f"{type(last).__name__}: {last}",
            hint="the device may be out of range, asleep, or connected to a phone app") from last

    async def _read_once(self) -> dict[str, Any]:
        from bleak.exc import BleakCharacteristicNotFoundError

        client = self._client()
        out: dict[str, Any] = {}
        async with client:
            for uuid, points in self.by_char.items():
                try:
                    data = bytes(await client.read_gatt_char(uuid))
                except BleakCharacteristicNotFoundError:
                    out.update({p.name: PointError("no_characteristic") for p in points})
                    continue
                for p in points:
                    out[p.name] = unpack_point(p, data)
        return out


def _written(done: list[str]) -> str:
    return f" (already written: {', '.join(done)})" if done else ""

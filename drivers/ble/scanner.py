"""One shared scanner per adapter: dispatch, privacy filter, silence watchdog.

Every BLE device on an adapter subscribes to the same ``ScannerHub`` (shared
through ``ctx.shared``), so a gateway with fifty tags runs one BlueZ scan, not
fifty. The hub hands each advertisement only to the subscribers that claim
its address (or that match by bind key / beacon identity); everything else
is counted and dropped without being logged, which is how unknown phones
walking by never reach the uplink or the logs.

BlueZ scanners are known to go quiet without an error (peers' gateways stop
reading until ``bluetoothd`` is restarted). The hub's watchdog notices when
no advertisement at all arrives for ``silence_timeout`` while devices are
expected: it restarts the scan, then power-cycles the adapter through BlueZ,
and if the adapter is still silent, fails the subscribers so the supervisor
reports them and reopens them with backoff. Each step is an event.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from fieldgate.errors import DeviceTimeout, DeviceUnreachable, DriverError
from fieldgate.tasks import cancel_and_wait

from .decode import DECODERS
from .profile import BleConnection

log = logging.getLogger(__name__)

#: Scanner backends by name (``connection.backend: replay``), registered as entry points, so the
#: driver names no simulator module; ``module:Class`` still loads a backend that is not registered.
BACKENDS_GROUP = "fieldgate.ble_backends"


def mask_address(address: str, mask: bool = True) -> str:
    """``AA:BB:CC:DD:EE:FF`` → ``xx:xx:xx:xx:EE:FF`` (enough to tell tags apart, not to track them)."""
    if not mask or len(address) != 17:
        return address
    return "xx:xx:xx:xx:" + address[-5:]


@dataclass(frozen=True, slots=True)
class Advert:
    """One advertisement as the hub hands it to a device (bleak-independent)."""

    address: str
    rssi: int | None
    service_data: dict[str, bytes]
    manufacturer_data: dict[int, bytes]
    name: str | None = None
    ts: float = field(default_factory=time.time)


class Subscriber(Protocol):
    """A device listening on the hub."""

    address: str | None  # None: wants every advert of its format (bind key / beacon match)

    def deliver(self, advert: Advert) -> None:
        """Take one advert (called in the event loop, must not block)."""

    def hub_event(self, kind: str, message: str, error: DriverError | None) -> None:
        """The hub restarted, reset or failed; ``error`` is set for a failure."""


def scan_error(adapter: str, exc: BaseException) -> DriverError:
    """Turn what bleak/BlueZ raise when scanning cannot start into an error a technician can act on."""
    text = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        # bleak raises FileNotFoundError (not a BleakError) when the D-Bus socket is missing.
        return DeviceUnreachable(
            f"cannot start BLE scanning on {adapter}: no D-Bus system bus ({text})",
            hint="install and start D-Bus and BlueZ (apt install bluez; systemctl start bluetooth); "
                 "in a container, mount /run/dbus/system_bus_socket")
    if isinstance(exc, PermissionError):
        return DeviceUnreachable(f"cannot start BLE scanning on {adapter}: {text}",
                                 hint="the gateway's user may not talk to BlueZ: add it to the 'bluetooth' group")
    low = text.lower()
    if "not found" in low or "no bluetooth adapters" in low:
        return DeviceUnreachable(f"no Bluetooth adapter {adapter}: {text}",
                                 hint="check `bluetoothctl list`; a USB dongle may be unplugged; "
                                      "`rfkill unblock bluetooth` if it is blocked")
    if "notready" in low or "not ready" in low or "powered" in low:
        return DeviceUnreachable(f"Bluetooth adapter {adapter} is not ready: {text}",
                                 hint="power it on: `bluetoothctl power on`, and check `rfkill list`")
    if "or_patterns" in low or "advertisementmonitor" in low or "experimental" in low:
        return DeviceUnreachable(f"passive scanning is not available on {adapter}: {text}",
                                 hint="start bluetoothd with --experimental (BlueZ >= 5.56), "
                                      "or set scanning: active")
    if isinstance(exc, TimeoutError):
        return DeviceTimeout(f"BlueZ did not start scanning on {adapter} in time",
                             hint="check `systemctl status bluetooth` and `journalctl -u bluetooth`")
    return DeviceUnreachable(f"cannot start BLE scanning on {adapter}: {text}",
                             hint="check `systemctl status bluetooth` and `bluetoothctl show`")


def load_backend(spec: str) -> type[Any] | None:
    """``bleak`` → None (bleak picks the platform's); ``replay`` or ``module:Class`` → the class.

    Raises:
        DeviceUnreachable: the backend cannot be imported.
    """
    if spec == "bleak":
        return None
    named = {ep.name: ep for ep in entry_points(group=BACKENDS_GROUP)}
    try:
        if spec in named:
            return named[spec].load()  # type: ignore[no-any-return]  # an entry point's object is Any
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]  # a backend class named by config: untyped by nature
    except (ImportError, AttributeError) as exc:
        raise DeviceUnreachable(f"BLE scanner backend {spec!r} cannot be loaded: {exc}",
                                hint="backend is bleak, replay, or module:Class of a bleak scanner backend") from exc


async def bluez_adapter_state(adapter: str) -> dict[str, Any]:
    """The adapter's ``powered``, ``discovering`` and ``address`` as BlueZ reports them (D-Bus)."""
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(
            destination="org.bluez", path=f"/org/bluez/{adapter}", interface="org.freedesktop.DBus.Properties",
            member="GetAll", signature="s", body=["org.bluez.Adapter1"]))
        props = reply.body[0] if reply is not None and reply.message_type != MessageType.ERROR else {}
        return {k.lower(): v.value for k, v in props.items() if k in ("Powered", "Discovering", "Address")}
    finally:
        bus.disconnect()


async def bluez_power_cycle(adapter: str) -> dict[str, Any]:
    """Power the adapter off and on through BlueZ (D-Bus), and return its state.

    Raises:
        DeviceUnreachable: BlueZ refused or is not there.
    """
    from dbus_fast import BusType, Message, MessageType, Variant
    from dbus_fast.aio import MessageBus

    path = f"/org/bluez/{adapter}"
    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, ValueError) as exc:
        raise scan_error(adapter, exc) from exc
    try:
        for on in (False, True):
            reply = await bus.call(Message(
                destination="org.bluez", path=path, interface="org.freedesktop.DBus.Properties", member="Set",
                signature="ssv", body=["org.bluez.Adapter1", "Powered", Variant("b", on)]))
            if reply is None or reply.message_type == MessageType.ERROR:
                detail = reply.body if reply is not None else "no reply"
                raise DeviceUnreachable(f"BlueZ refused to power {'on' if on else 'off'} {adapter}: {detail}",
                                        hint="check `rfkill list` and `bluetoothctl show`")
    finally:
        bus.disconnect()
    return await bluez_adapter_state(adapter)


class ScannerHub:
    """The scanner of one adapter, shared by every BLE device on it.

    Args:
        conn: the first device's connection (adapter, backend, scanning mode,
            silence timeout); later devices with other values get a warning.
        clock: monotonic time source (tests may replace it).
    """

    def __init__(self, conn: BleConnection, clock: Callable[[], float] = time.monotonic) -> None:
        self.conn = conn
        self.adapter = conn.adapter
        self.clock = clock
        self.backend = load_backend(conn.backend)
        self.silence = conn.silence_timeout
        self._subs_by_address: dict[str, list[Subscriber]] = {}
        self.devices: dict[str, Any] = {}  # address → bleak BLEDevice, for configured addresses only (GATT)
        self.seen = asyncio.Event()  # set on every advert of a configured address (tests and GATT wait on it)
        self._subs_any: list[Subscriber] = []
        self._scanner: Any = None
        self._start_lock = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        self.state = "stopped"  # stopped | scanning | restarting | resetting | failed
        self.error: str | None = None
        self.last_advert: float | None = None
        self.started_at: float | None = None
        self.adapter_state: dict[str, Any] = {}
        self.counts = collections.Counter[str]()  # adverts, forwarded, unknown, restarts, resets, failures
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._steps = 0  # watchdog escalation since the last advert
        self._first_start = clock()

    # --- subscribers --------------------------------------------------------

    def subscribe(self, sub: Subscriber, conn: BleConnection) -> None:
        """Add a device; it gets the adverts its address (or its match rule) claims."""
        if (conn.scanning, conn.silence_timeout) != (self.conn.scanning, self.conn.silence_timeout):
            log.warning("BLE devices on %s disagree on scanning/silence_timeout; the first device's "
                        "(%s, %gs) apply to all", self.adapter, self.conn.scanning, self.conn.silence_timeout)
        if sub.address is None:
            self._subs_any.append(sub)
        else:
            self._subs_by_address.setdefault(sub.address, []).append(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Remove a device (idempotent)."""
        if sub.address is None:
            with contextlib.suppress(ValueError):
                self._subs_any.remove(sub)
        else:
            subs = self._subs_by_address.get(sub.address, [])
            with contextlib.suppress(ValueError):
                subs.remove(sub)
            if not subs:
                self._subs_by_address.pop(sub.address, None)
                self.devices.pop(sub.address, None)

    @property
    def subscribers(self) -> int:
        """How many devices listen."""
        return len(self._subs_any) + sum(len(s) for s in self._subs_by_address.values())

    # --- bleak callback -----------------------------------------------------

    def on_advert(self, device: Any, adv: Any) -> None:
        """bleak's detection callback: count, filter by address, hand over (never blocks)."""
        self.counts["adverts"] += 1
        self.last_advert = self.clock()
        self._steps = 0
        address = str(device.address).upper()
        subs = self._subs_by_address.get(address)
        if not subs and not self._subs_any:
            self.counts["unknown"] += 1  # privacy: neither forwarded nor logged
            return
        if subs:
            self.devices[address] = device
            self.seen.set()
        advert = Advert(address, getattr(adv, "rssi", None), dict(adv.service_data or {}),
                        dict(adv.manufacturer_data or {}), getattr(adv, "local_name", None))
        for sub in (*(subs or ()), *self._subs_any):
            sub.deliver(advert)
        self.counts["dispatched"] += 1

    # --- start / stop -------------------------------------------------------

    def _bleak_scanner(self) -> Any:
        from bleak import BleakScanner

        bluez: dict[str, Any] = {"adapter": self.adapter}
        kwargs: dict[str, Any] = {}
        if self.conn.scanning == "passive" and self.backend is None:
            from bleak.args.bluez import OrPattern
            from bleak.assigned_numbers import AdvertisementDataType

            # BlueZ passive scanning needs patterns: the AD structures of the formats we decode.
            bluez["or_patterns"] = [OrPattern(0, AdvertisementDataType(d.prefix[0]), d.prefix[1])
                                    for d in DECODERS.values()]
        if getattr(self.backend, "accepts_replay_options", False):
            kwargs = {"replay_rate": self.conn.replay_rate, "replay_rssi": self.conn.replay_rssi}
        return BleakScanner(self.on_advert, None, self.conn.scanning, bluez=bluez,  # type: ignore[arg-type]  # bleak types bluez as its TypedDict; ours is the same keys built as a dict
                            backend=self.backend, **kwargs)

    async def ensure_started(self) -> None:
        """Start scanning unless it already runs (the first device starts it; a failed hub retries).

        Raises:
            DriverError: scanning cannot start (no D-Bus, no adapter, ...), with a hint.
        """
        async with self._start_lock:
            if self.state in ("scanning", "restarting", "resetting"):
                return
            self._steps = 0
            await self._start()
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.get_running_loop().create_task(
                    self._watch(), name=f"ble-watchdog[{self.adapter}]")

    async def _start(self) -> None:
        try:
            async with asyncio.timeout(self.conn.start_timeout):
                scanner = self._bleak_scanner()
                await scanner.start()
        except asyncio.CancelledError:
            raise
        except DriverError:
            self.state = "failed"
            raise
        except Exception as exc:  # bleak raises BleakError, BleakDBusError, OSError, TimeoutError, ...
            err = scan_error(self.adapter, exc)
            self.state, self.error = "failed", str(err)
            raise err from exc
        self._scanner = scanner
        self.state, self.error = "scanning", None
        self.started_at = self.clock()
        if self.backend is None:
            try:
                async with asyncio.timeout(self.conn.start_timeout):
                    self.adapter_state = await bluez_adapter_state(self.adapter)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the state is for the status page; scanning already runs
                log.debug("cannot read the state of %s: %r", self.adapter, exc)
        log.info("BLE scanning on %s (%s, backend %s)", self.adapter, self.conn.scanning, self.conn.backend)

    async def _stop_scanner(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            try:
                async with asyncio.timeout(self.conn.start_timeout):
                    await scanner.stop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a wedged BlueZ may refuse to stop; the restart goes on
                log.debug("stopping the scanner on %s failed: %r", self.adapter, exc)

    async def close(self) -> None:
        """Stop scanning and the watchdog (the last device left)."""
        task, self._watchdog = self._watchdog, None
        if task is not None:
            await cancel_and_wait(task)
        await self._stop_scanner()
        self.state = "stopped"

    # --- watchdog -----------------------------------------------------------

    def _event(self, kind: str, message: str, error: DriverError | None = None, **fields: Any) -> None:
        self.events.append({"ts": time.time(), "kind": kind, "adapter": self.adapter, **fields})
        log.warning("%s", message)
        for sub in (*self._subs_any, *(s for subs in self._subs_by_address.values() for s in subs)):
            sub.hub_event(kind, message, error)

    async def _watch(self) -> None:
        """Until cancelled: escalate while no advert arrives for ``silence`` seconds."""
        if self.silence <= 0:
            return
        while True:
            ref = max(self.last_advert or 0.0, self.started_at or 0.0)
            due = ref + self.silence - self.clock()
            if due > 0:
                await asyncio.sleep(due)  # a schedule, not a synchronization: re-checked on waking
                continue
            if self.subscribers == 0:
                self.started_at = self.clock()
                continue
            self._steps += 1
            silent_for = self.clock() - (self.last_advert if self.last_advert is not None else self._first_start)
            if self._steps == 1:
                await self._restart_scanner(silent_for)
            elif self._steps == 2:
                await self._reset_adapter(silent_for)
            else:
                self._fail(silent_for)
                return

    async def _restart_scanner(self, silent_for: float) -> None:
        self.state = "restarting"
        self.counts["restarts"] += 1
        self._event("ble_scanner_restarted",
                    f"no BLE advert on {self.adapter} for {silent_for:.0f}s while {self.subscribers} device(s) "
                    "are expected: restarting the scanner", DeviceTimeout(
                        f"no BLE advert on {self.adapter} for {silent_for:.0f}s; scanner restarted",
                        reason="scanner_silent"), silent_s=round(silent_for, 1))
        await self._stop_scanner()
        await self._restart()

    async def _reset_adapter(self, silent_for: float) -> None:
        self.state = "resetting"
        self.counts["resets"] += 1
        self._event("ble_adapter_reset",
                    f"still no BLE advert on {self.adapter} after a scanner restart: power-cycling the adapter",
                    DeviceTimeout(f"no BLE advert on {self.adapter} for {silent_for:.0f}s; adapter power-cycled",
                                  reason="scanner_silent"), silent_s=round(silent_for, 1))
        await self._stop_scanner()
        reset = getattr(self.backend, "reset_adapter", None) if self.backend is not None else None
        try:
            self.adapter_state = await (reset(self.adapter) if reset is not None
                                        else bluez_power_cycle(self.adapter))
        except DriverError as exc:
            log.warning("%s", exc)
        except Exception as exc:  # the power cycle is best effort; the restart below still runs
            log.warning("power-cycling %s failed: %r", self.adapter, exc)
        await self._restart()

    async def _restart(self) -> None:
        try:
            await self._start()
        except DriverError as exc:
            self._fail(None, exc)
            return

    def _fail(self, silent_for: float | None, exc: DriverError | None = None) -> None:
        self.state = "failed"
        self.counts["failures"] += 1
        err = exc or DeviceUnreachable(
            f"no BLE advert on {self.adapter} for {silent_for:.0f}s, even after restarting the scanner and "
            "power-cycling the adapter",
            hint="check the adapter (`bluetoothctl show`, `rfkill list`, `journalctl -u bluetooth`) and that "
                 "the devices have battery")
        self.error = str(err)
        self._event("ble_scanner_failed", str(err), err)

    # --- status -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the status page and ``doctor`` show about this adapter (addresses masked)."""
        now = self.clock()
        return {
            "adapter": self.adapter,
            "state": self.state,
            "error": self.error,
            "scanning": self.conn.scanning,
            "backend": self.conn.backend,
            "devices": self.subscribers,
            "last_advert_age_s": None if self.last_advert is None else round(now - self.last_advert, 1),
            "adapter_state": {k: mask_address(v, self.conn.mask_addresses) if k == "address" else v
                              for k, v in self.adapter_state.items()},
            "counts": dict(self.counts),
            "events": list(self.events)[-10:],
        }

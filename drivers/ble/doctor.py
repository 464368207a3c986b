"""The ``ble`` driver's ``doctor()`` checks: BlueZ on the system bus, each adapter known and powered.

Asked by ``fieldgate doctor`` through the driver's hook; dbus-fast (the ble extra)
is imported only here, when the checks run.
"""

from __future__ import annotations

import asyncio
import grp
from collections.abc import Sequence
from typing import Any

from fieldgate.checks import DoctorDevice, Finding

from .profile import BleConnection


async def ble_findings(devices: Sequence[DoctorDevice], timeout: float) -> list[Finding]:
    """Findings about the host's Bluetooth for the enabled BLE devices (``n/a`` without real ones)."""
    adapters: dict[str, list[str]] = {}
    simulated: list[str] = []
    for dev in devices:
        conn = dev.connection
        if not isinstance(conn, BleConnection) or conn.backend == "bleak":
            adapter = conn.adapter if isinstance(conn, BleConnection) else "hci0"
            adapters.setdefault(str(adapter), []).append(dev.id)
        else:
            simulated.append(dev.id)
    if not adapters:
        if simulated:
            return [Finding("ble", "n/a", f"the BLE devices ({', '.join(simulated)}) are simulated (backend "
                            "replay): BlueZ and the adapter are not needed")]
        return [Finding("ble", "n/a", "no Bluetooth LE device is configured: BlueZ and the adapter are not needed")]
    try:
        state = await asyncio.wait_for(bluez_state(), timeout)
    except ImportError:
        return [Finding("ble", "fail", "BLE devices are configured but the ble extra is not installed",
                        "pip install 'fieldgate[ble]' into the gateway's environment (`sudo fieldgate install` does)")]
    except (OSError, TimeoutError, ValueError) as exc:
        return [Finding("ble", "fail", f"the D-Bus system bus cannot be reached ({exc}); BLE goes through BlueZ on "
                        "it", "`systemctl status dbus`; the package is dbus (Raspberry Pi OS has it)")]
    if state is None:
        return [Finding("ble", "fail", "BlueZ (bluetoothd) is not running: BLE devices cannot be heard",
                        "`sudo apt install bluez && sudo systemctl enable --now bluetooth`")]
    out: list[Finding] = []
    for adapter, ids in adapters.items():
        props = state.get(adapter)
        if props is None:
            found = ", ".join(sorted(state)) or "none"
            out.append(Finding(f"ble:{adapter}", "fail", f"Bluetooth adapter {adapter} (used by {', '.join(ids)}) "
                               f"is not known to BlueZ (adapters: {found})",
                               "check `bluetoothctl list` and `rfkill list`; a USB dongle may need replugging; "
                               "or set connection.adapter to one that exists",
                               {"adapter": adapter, "adapters": sorted(state)}))
        elif not props.get("Powered", False):
            out.append(Finding(f"ble:{adapter}", "fail", f"Bluetooth adapter {adapter} is switched off",
                               "`rfkill unblock bluetooth` and `bluetoothctl power on`", {"adapter": adapter}))
        else:
            out.append(Finding(f"ble:{adapter}", "ok", f"Bluetooth adapter {adapter} is on and BlueZ runs "
                               f"(used by {', '.join(ids)})", None,
                               {"adapter": adapter, "address": props.get("Address")}))
    try:
        grp.getgrnam("bluetooth")
    except KeyError:
        out.append(Finding("ble.group", "warn", "there is no 'bluetooth' group: BlueZ's D-Bus policy may refuse the "
                           "service user", "install bluez, then re-run `sudo fieldgate install`"))
    return out


async def bluez_state() -> dict[str, dict[str, Any]] | None:
    """Adapters BlueZ knows with their properties, or None when BlueZ is not on the system bus.

    Raises:
        ImportError: dbus-fast (the ble extra) is not installed.
        OSError: no system bus.
    """
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member="NameHasOwner", signature="s", body=["org.bluez"]))
        if reply is None or reply.message_type == MessageType.ERROR or not reply.body[0]:
            return None
        reply = await bus.call(Message(
            destination="org.bluez", path="/", interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects"))
        if reply is None or reply.message_type == MessageType.ERROR:
            return None
        out: dict[str, dict[str, Any]] = {}
        for path, ifaces in reply.body[0].items():
            props = ifaces.get("org.bluez.Adapter1")
            if props is not None:
                out[str(path).rsplit("/", 1)[-1]] = {k: v.value for k, v in props.items()}
        return out
    finally:
        bus.disconnect()

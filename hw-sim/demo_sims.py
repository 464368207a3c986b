"""The demo's simulated devices, one class per protocol, registered as ``fieldgate.simulators`` entry points.

``fieldgate demo`` loads every installed entry point of that group and knows
none of these modules by name: a third-party driver package can ship its own
simulator the same way. Each class takes the demo's folder and offers
``start()``, ``stop()``, ``config`` (device entries for the demo configuration,
as YAML flow lines) and ``notes`` (one console line each). A missing optional
dependency raises ``ImportError`` from ``start()``; the demo then says which
extra to install and goes on without those devices.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from fieldgate.tasks import cancel_and_wait


class ModbusDemo:
    """A Modbus TCP meter and an RTU line (on a pty) with two units, each breakable by a fault file.

    Writing ``silent``, ``crc``, ``exception:02`` or ``slow:2`` into ``<folder>/<device>.fault``
    breaks the unit; ``none`` heals it.
    """

    label = "Modbus simulators"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config: list[str] = []
        self.notes: list[str] = []
        self._sims: list[Any] = []
        self._faults: dict[str, tuple[Any, int]] = {}
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from fieldgate_hwsim.modbus_sim import ModbusSim, load_modbus_profile

        tcp = ModbusSim({1: load_modbus_profile("eastron/sdm630")})
        port = await tcp.start_tcp("127.0.0.1", 0)
        rtu = ModbusSim({1: load_modbus_profile("eastron/sdm120"), 2: load_modbus_profile("generic-rs485/xy-md02")})
        pty = await rtu.start_rtu(9600)
        self._sims += [tcp, rtu]
        self._faults = {"meter-tcp-1": (tcp, 1), "meter-rtu-1": (rtu, 1), "climate-rtu-2": (rtu, 2)}
        self.config += [
            "  - {id: meter-tcp-1, driver: modbus, profile: eastron/sdm630, poll_interval: 5s,"
            f" connection: {{transport: tcp, host: 127.0.0.1, port: {port}, unit: 1}}, tags: {{site: depot}}}}",
            "  - {id: meter-rtu-1, driver: modbus, profile: eastron/sdm120, poll_interval: 5s, timeout: 4s,"
            f" connection: {{transport: rtu, serial_port: {pty}, baudrate: 9600, unit: 1}}}}",
            "  - {id: climate-rtu-2, driver: modbus, profile: generic-rs485/xy-md02, poll_interval: 10s,"
            f" timeout: 4s, connection: {{transport: rtu, serial_port: {pty}, baudrate: 9600, unit: 2}}}}",
        ]
        for dev in self._faults:
            (self.folder / f"{dev}.fault").write_text("none\n")
        self.notes.append(f"Modbus TCP meter on 127.0.0.1:{port}; RTU line (9600 baud) on {pty} with 2 units")
        self._watch = asyncio.create_task(self._watch_faults(), name="demo-modbus-faults")

    async def _watch_faults(self) -> None:
        current: dict[str, str] = {}
        while True:
            for dev, (sim, unit) in self._faults.items():
                try:
                    text = (self.folder / f"{dev}.fault").read_text().strip()
                except OSError:
                    continue
                if current.get(dev) != text:
                    current[dev] = text
                    sim.set_fault(unit, None if text in ("", "none") else text)
            await asyncio.sleep(1.0)  # a person edits the file: polling it once a second is soon enough

    async def stop(self) -> None:
        if self._watch is not None:
            await cancel_and_wait(self._watch)
        for sim in self._sims:
            with contextlib.suppress(Exception):
                await sim.stop()


class SerialDemo:
    """A PMS5003 particulate sensor and an NMEA GNSS receiver, each streaming on a pty."""

    label = "serial simulators"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config: list[str] = []
        self.notes: list[str] = []
        self._sims: list[Any] = []

    async def start(self) -> None:
        from fieldgate_hwsim.serial_sim import SerialSim

        for dev_id, prof, extra in (("pm-1", "plantower/pms5003", "min_interval: 10s"),
                                    ("gnss-1", "nmea0183/gnss", "min_interval: 5s")):
            sim = SerialSim(prof, interval=1.0, link=self.folder / f"{dev_id}.tty")
            port_path = await asyncio.to_thread(sim.start)
            self._sims.append(sim)
            self.config.append(f"  - {{id: {dev_id}, driver: serial, profile: {prof}, poll_interval: 5s,"
                               f" connection: {{port: {port_path}, {extra}}}}}")
        self.notes.append("serial: PMS5003 particulate sensor and NMEA GNSS on ptys")

    async def stop(self) -> None:
        for sim in self._sims:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(sim.stop)


class BleDemo:
    """BLE sensors replayed without a radio (``backend: replay`` in the gateway's own process)."""

    label = "BLE sensors"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config: list[str] = []
        self.notes: list[str] = []

    async def start(self) -> None:
        from fieldgate_hwsim.ble_sim import DEMO_NOTE, demo_devices

        self.config += demo_devices(self.folder)
        self.notes.append(DEMO_NOTE)

    async def stop(self) -> None:
        return None


class CoapDemoDevices:
    """NB-IoT devices pushing to the gateway and observed over CoAP."""

    label = "NB-IoT (CoAP) devices"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config: list[str] = []
        self.notes: list[str] = []
        self._demo: Any = None

    async def start(self) -> None:
        from fieldgate_hwsim.coap_sim import CoapDemo

        self._demo = CoapDemo()
        self.config += await self._demo.start(self.folder)
        self.notes += self._demo.notes

    async def stop(self) -> None:
        if self._demo is not None:
            with contextlib.suppress(Exception):
                await self._demo.stop()

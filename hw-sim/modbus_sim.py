"""Modbus device simulator: serves any ``modbus`` profile over TCP, RTU-over-TCP and RTU on a pty.

Values move plausibly (within each point's ``range``, energy counters grow)
and are encoded with the profile's own types and byte/word orders. Faults
can be injected per unit at run time (``FAULTS``): ``silent`` (no answer: a
dead or unplugged slave, one that disappears and later returns, or, on every
unit, a server that accepts connections and never answers),
``exception:NN`` (every read answered with exception NN), ``crc`` (answers
with a corrupted CRC; RTU framings only), ``slow:S`` (answer after S
seconds), and the hostile answers a fault campaign needs: ``junk`` (random
bytes instead of the answer), ``wrong-unit`` (the answer carries another
unit id), ``wrong-transaction`` (Modbus TCP: another transaction id; RTU has
none, so it is served normally there), ``bad-length`` (the byte count
contradicts the data that follows), ``wrong-function`` (FC3 answered as FC4,
FC1 as FC2 and back), ``slow-loris`` (the answer trickles out a byte every
0.1 s and its last byte never comes), ``hold-write`` (a write is applied at once
but its answer waits until the fault is changed or cleared: a device that
took it while its answer is late or lost, e.g. for killing the gateway
between the write and its result). A byte-level fault may name one
function code, ``junk@3``: then only answers to FC3 are hit.

Design choices:

* The protocol side is pymodbus's own server. The datastore is a small
  ``ModbusServerContext`` subclass so every read goes through this module:
  that is where values move, faults fire, and unknown or silent units raise
  ``NoSuchIdException``, which pymodbus (``ignore_missing_devices``) answers
  with silence, as a real RS-485 slave would.
* RTU on a serial port is a pty whose other end is a small byte bridge to an
  RTU-framed pymodbus TCP server (the same thing a serial device server
  does). The bridge delays each chunk by its line time at the configured
  baud rate (11 bits per character), so timing tests and the benchmark see a
  real line's speed. It avoids running pymodbus's serial server on a pty and
  gives RTU-over-TCP a test peer for free.
* Byte-level faults (CRC, junk, wrong ids, lengths and functions, the
  trickle) are made in each connection's outgoing-packet hook, after
  pymodbus built a correct answer, so every framing gets them from one place.

Importing this module imports ``pymodbus.server`` (and with it aiohttp);
drivers never do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import random
import re
import struct
import sys
import time
import tty
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fieldgate.drivers.modbus.decode import apply_scale_factor, encode
from fieldgate.drivers.modbus.profile import ModbusPoint, ModbusProfile
from fieldgate.tasks import cancel_and_wait
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU
from pymodbus.server import ModbusTcpServer

#: Faults ``ModbusSim.set_fault`` accepts (``exception:NN`` and ``slow:SECONDS`` take a value).
FAULTS = ("silent", "crc", "junk", "wrong-unit", "wrong-transaction", "bad-length", "wrong-function",
          "slow-loris", "exception:NN", "slow:SECONDS", "hold-write")
_BYTE_FAULTS = {"crc", "junk", "wrong-unit", "wrong-transaction", "bad-length", "wrong-function", "slow-loris"}
#: Seconds between the bytes of a ``slow-loris`` answer.
TRICKLE = 0.1

_FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input", 5: "coil", 6: "holding", 15: "coil",
             16: "holding"}
_LIMITS = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}
#: Engineering ranges by unit for points without a ``range``.
_DEFAULT_RANGE = {
    "V": (225.0, 235.0), "A": (0.5, 12.0), "W": (100.0, 2500.0), "kW": (0.1, 2.5), "VA": (100.0, 2600.0),
    "var": (-300.0, 300.0), "Hz": (49.9, 50.1), "Cel": (18.0, 26.0), "%RH": (35.0, 60.0), "ppm": (420.0, 1200.0),
    "deg": (-30.0, 30.0), "/": (0.9, 1.0),
}
_COUNTER_UNITS = {"Wh", "kWh", "varh", "kvarh", "VAh", "kVAh", "m3", "l"}
#: Setting registers that hold the unit's own Modbus address: they read back the unit that answers.
_ADDRESS_NAMES = {"device_address", "meter_id", "unit_id", "slave_id", "slave_address", "modbus_address"}
#: "0 = 2400 (default)" or "(default 60)" in a point's description: what a device fresh from the box holds.
_DEFAULT_IN_TEXT = re.compile(r"(-?\d+(?:\.\d+)?)\s*=[^,;(]*\(default\)|\(default (-?\d+(?:\.\d+)?)\)")
#: A building's load: mostly resistive, a little inductive (motors, power supplies).
_PF_MID, _PF_AMP = 0.93, 0.05


def _is_setting(p: ModbusPoint) -> bool:
    """A configuration register (a holding register read rarely): a constant, not a measurement."""
    return p.table == "holding" and p.every >= 60


def _single_phase_roles(points: Sequence[ModbusPoint]) -> dict[str, str]:
    """Point name → role (v, i, p, s, q, pf, angle) of a single-phase meter's instantaneous values, or {}.

    Only a profile with exactly one voltage, current, active and apparent power and power factor
    (demand and maximum values left out) is modelled as one circuit, so that P = V·I·PF holds.
    """
    by_role: dict[str, list[str]] = {}
    units = {"V": "v", "A": "i", "W": "p", "VA": "s", "var": "q", "deg": "angle"}
    for p in points:
        if "demand" in p.name or p.name.endswith("_max") or p.kind in ("bit", "bool", "string"):
            continue
        role = "pf" if p.unit is None and "power_factor" in p.name else units.get(p.unit or "")
        if role:
            by_role.setdefault(role, []).append(p.name)
    if any(len(by_role.get(r, [])) != 1 for r in ("v", "i", "p", "s", "pf")):
        return {}
    return {names[0]: role for role, names in by_role.items() if len(names) == 1}


def load_modbus_profile(ref: str | Path) -> ModbusProfile:
    """A profile by library name (``eastron/sdm120``) or path, validated by the driver's model.

    Raises:
        ValueError: not found or invalid (with every diagnostic).
    """
    from fieldgate.config import library_profiles, load_profile_file
    from fieldgate.drivers.modbus.driver import ModbusDriver

    path = Path(ref)
    if not path.suffix:
        found = library_profiles().get(str(ref))
        if found is None:
            raise ValueError(f"no profile {ref!r} in the library")
        path = found
    profile, diags = load_profile_file(path, ModbusDriver)  # type: ignore[arg-type]
    if profile is None:
        raise ValueError("\n".join(str(d) for d in diags) or f"cannot load {path}")
    return profile  # type: ignore[return-value]


class DeviceModel:
    """One simulated unit: its register image and the raw values behind it.

    Args:
        profile: what the device exposes.
        seed: for reproducible values.
        strict: implement only the points' own addresses, so merged reads
            spanning gaps get exception 02 (like many real devices).
        unit: the unit id it answers as (its address registers read it back).
    """

    def __init__(self, profile: ModbusProfile, seed: int = 0, strict: bool = False, unit: int | None = None) -> None:
        self.profile = profile
        self.unit = unit
        self.rng = random.Random(seed)
        self.phase = self.rng.uniform(0, 2 * math.pi)
        self.t0 = time.monotonic()
        self.steps = 0
        self.image: dict[str, dict[int, int]] = {t: {} for t in ("holding", "input", "coil", "discrete")}
        self.implemented: dict[str, set[int]] = {t: set() for t in self.image}
        self.raw: dict[str, Any] = {}
        self.reads = 0
        #: Every request that reached this unit (reads and writes, answered or not): "zero frames" checks.
        self.requests = 0
        #: Every write applied, in order: (function code, address, values).
        self.writes: list[tuple[int, int, list[int]]] = []
        self.fault: str | None = None
        points = profile.points
        self._sf_of = {p.scale_factor_point: p for p in points if p.scale_factor_point}
        vectors = {v.get("point"): v for v in profile.test_vectors or [] if isinstance(v, dict)}
        # Scale factors, identity strings and markers are constants on a real device: serve the datasheet's.
        self._fixed = {p.name: vectors[p.name]["raw"] for p in points if p.name in vectors
                       and "raw" in vectors[p.name] and (p.name in self._sf_of or p.kind == "string" or not p.report)}
        self._roles = _single_phase_roles(points)
        self._circuit: dict[str, float] = {}
        holes = [(r.table, r.start, r.end) for r in profile.unreadable]
        for p in points:
            self.implemented[p.table].update(range(p.address, p.address + p.width))
        if not strict:
            for table, used in self.implemented.items():
                if used:
                    used.update(a for a in range(min(used), max(used) + 1)
                                if not any(t == table and s <= a <= e for t, s, e in holes))
        for table, used in self.implemented.items():
            for a in used:
                self.image[table].setdefault(a, 0)
        self.step()

    def step(self) -> None:
        """Move every value to its next plausible state."""
        self.steps += 1
        t = time.monotonic() - self.t0
        self._circuit = self._next_circuit(t) if self._roles else {}
        for p in sorted(self.profile.points, key=lambda p: p.name not in self._sf_of):  # scale factors first
            self.set_raw(p.name, self._next(p, t))

    def _next_circuit(self, t: float) -> dict[str, float]:
        """One circuit's V, I and PF, and what follows from them: P = V·I·PF, S = V·I, Q = √(S² - P²)."""
        by_role = {role: next(p for p in self.profile.points if p.name == name) for name, role in self._roles.items()}
        v, i = self._drift(by_role["v"], t), self._drift(by_role["i"], t)
        pf = _PF_MID + _PF_AMP * math.sin(self.phase * 1.7 + t / 90.0 + self.steps * 0.03)
        pf = min(0.99, max(0.5, pf + self.rng.uniform(-0.005, 0.005)))
        s = v * i
        p = s * pf
        return {"v": v, "i": i, "pf": pf, "s": s, "p": p, "q": math.sqrt(max(0.0, s * s - p * p)),
                "angle": math.degrees(math.acos(pf))}

    def _setting(self, p: ModbusPoint) -> float:
        """What a configuration register holds: the unit's address, the documented default, else the low end."""
        if p.name in _ADDRESS_NAMES:
            return float(self.unit if self.unit is not None else 1)
        m = _DEFAULT_IN_TEXT.search(p.description or "")
        if m:
            return float(m.group(1) or m.group(2))
        if p.range and p.range[0] <= 0.0 <= p.range[1]:
            return 0.0  # a correction or offset register: none, as delivered
        return float(p.range[0]) if p.range else 0.0

    def _next(self, p: ModbusPoint, t: float) -> Any:
        kind = p.kind
        if p.name in self._fixed:
            return self._fixed[p.name]
        if p.name in self._sf_of:
            return -1
        if kind in ("bit", "bool"):
            return (self.steps + p.address + (p.bit or 0)) % 3 == 0
        if kind == "string":
            return f"FG{self.profile.model}"[: (p.count or 1) * 2]
        if p.name in self._roles:
            eng = self._circuit[self._roles[p.name]]
        elif _is_setting(p):
            eng = self._setting(p)
        elif p.unit in _COUNTER_UNITS and p.range is None:
            eng = 1000.0 + 0.5 * self.steps + self.rng.uniform(0, 0.01)
        else:
            eng = self._drift(p, t)
        raw = (eng - p.offset) / p.scale
        if p.scale_factor_point:
            raw /= 10.0 ** self.raw.get(p.scale_factor_point, 0)
        return raw

    def _drift(self, p: ModbusPoint, t: float) -> float:
        """A measurement: a slow drift with a little noise around what such a quantity usually reads."""
        typical = _DEFAULT_RANGE.get(p.unit or "")
        if typical and (p.range is None or (p.range[0] <= typical[0] and typical[1] <= p.range[1])):
            lo, hi, share = typical[0], typical[1], 0.4  # what such a quantity usually reads
        else:
            lo, hi = (p.range[0], p.range[1]) if p.range else (0.0, 100.0)
            share = 0.08
        # a slow drift with a little noise: a sensor, not a random number generator
        mid, amp = (lo + hi) / 2, (hi - lo) * share
        return (mid + amp * math.sin(self.phase + t / 60.0 + self.steps * 0.05)
                + self.rng.uniform(-0.01, 0.01) * (hi - lo))

    def set_raw(self, name: str, value: Any) -> None:
        """Put a raw value (before scale/offset, before a scale factor) into the registers."""
        p = next(q for q in self.profile.points if q.name == name)
        kind = p.kind
        if kind in _LIMITS:
            lo, hi = _LIMITS[kind]
            value = min(hi, max(lo, round(value)))
        elif kind == "float32":
            value = struct.unpack(">f", struct.pack(">f", float(value)))[0]
        elif kind == "float64":
            value = float(value)
        self.raw[name] = value
        if p.table in ("coil", "discrete"):
            self.image[p.table][p.address] = 1 if value else 0
            return
        if kind == "bit":
            bit = p.bit or 0
            old = self.image[p.table].get(p.address, 0)
            self.image[p.table][p.address] = (old & ~(1 << bit)) | ((1 if value else 0) << bit)
            return
        byte_order, word_order = self.profile.order_of(p)
        for i, w in enumerate(encode(value, kind, byte_order, word_order, p.count)):
            self.image[p.table][p.address + i] = w

    def expected(self) -> dict[str, Any]:
        """The raw values a correct driver reports (scale factors applied, unreported points left out)."""
        out: dict[str, Any] = {}
        for p in self.profile.points:
            if not p.report:
                continue
            v = self.raw[p.name]
            if p.scale_factor_point:
                v = apply_scale_factor(v, self.raw[p.scale_factor_point])
            out[p.name] = v
        return out

    def read(self, table: str, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        """Serve a read: the words or bits, or exception 02 for unimplemented addresses."""
        used = self.implemented[table]
        if any(a not in used for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        self.reads += 1
        img = self.image[table]
        if table in ("coil", "discrete"):
            return [bool(img[a]) for a in range(address, address + count)]
        return [img[a] for a in range(address, address + count)]


class _Context(ModbusServerContext):
    """pymodbus datastore that routes every request to the simulator.

    Bypasses ``ModbusServerContext.__init__`` (deprecated path that would
    build pymodbus's own register model); the server only needs the methods
    below and the two attributes.
    """

    def __init__(self, sim: ModbusSim) -> None:
        self.sim = sim
        self.simdevices = []
        self.old_simulator = True

    def device_ids(self) -> list[int]:
        return list(self.sim.models)

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        if func_code in (5, 6):
            # pymodbus reads the written value back to build a single write's echo: part of that write.
            echo = self.sim.models[device_id].image[_FC_TABLE[func_code]]
            return [echo[a] if func_code == 6 else bool(echo[a]) for a in range(address, address + count)]
        self.sim.count_request(device_id)
        model = await self.sim.answering(device_id)
        return model.read(_FC_TABLE.get(func_code, "holding"), address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        self.sim.count_request(device_id)
        model = self.sim.models.get(device_id)
        if model is None or model.fault == "silent":
            raise NoSuchIdException(f"no unit {device_id}")
        if (model.fault or "").startswith("exception:"):
            return ExcCodes(int(model.fault[10:], 16))  # type: ignore[index]
        table = _FC_TABLE.get(func_code, "holding")
        if any(a not in model.implemented[table] for a in range(address, address + len(values))):
            return ExcCodes.ILLEGAL_ADDRESS
        for i, v in enumerate(values):
            model.image[table][address + i] = int(v)
        model.writes.append((func_code, address, [int(v) for v in values]))
        self.sim.writes += 1
        self.sim.wrote.set()
        while model.fault == "hold-write":
            await self.sim.fault_changed.wait()
        return None


class ModbusSim:
    """A simulated line or endpoint with one or more units.

    Args:
        devices: unit id → profile.
        animate: move values by themselves (about once a second, checked on reads);
            tests pass False and call ``step()``.
        strict: see ``DeviceModel``.
        seed: base random seed.
    """

    def __init__(self, devices: dict[int, ModbusProfile], *, animate: bool = True, strict: bool = False,
                 seed: int = 0) -> None:
        self.models = {u: DeviceModel(p, seed=seed + u, strict=strict, unit=u) for u, p in devices.items()}
        self.animate = animate
        self.writes = 0
        self.wrote = asyncio.Event()  # set on every write (a test clears it and waits)
        self.fault_changed = asyncio.Event()
        self.requests: dict[int, int] = {}  # requests by unit id, served or not
        self._last_step = time.monotonic()
        self._servers: list[ModbusTcpServer] = []
        self._bridges: list[_PtyBridge] = []
        self._trickles: set[asyncio.Future[None]] = set()
        self._rng = random.Random(seed)

    # -- control ------------------------------------------------------------------------------

    def set_fault(self, unit: int, fault: str | None) -> None:
        """Inject a fault into a unit (``None`` heals it).

        Faults: see ``FAULTS``.

        Raises:
            ValueError: an unknown fault or a malformed value.
        """
        if fault is not None:
            name, at, fc = fault.partition("@")
            ok = (name in _BYTE_FAULTS and (not at or fc in ("1", "2", "3", "4"))) or fault == "silent"
            try:
                if fault.startswith("exception:"):
                    ok = int(fault[10:], 16) in {int(c) for c in ExcCodes}  # what pymodbus can send
                elif fault.startswith("slow:"):
                    ok = float(fault[5:]) >= 0
                elif fault == "hold-write":
                    ok = True
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"unknown fault {fault!r}: one of {', '.join(FAULTS)}")
        self.models[unit].fault = fault
        # Wake what waits on a fault (a held write), then start a new wait.
        self.fault_changed.set()
        self.fault_changed = asyncio.Event()

    def count_request(self, unit: int) -> None:
        """Count a request for ``unit`` (units not served are counted too: their frames went out)."""
        model = self.models.get(unit)
        if model is not None:
            model.requests += 1
        self.requests[unit] = self.requests.get(unit, 0) + 1

    def step(self) -> None:
        """Move all values once."""
        for m in self.models.values():
            m.step()

    async def answering(self, unit: int) -> DeviceModel:
        """The model if the unit answers now (after any injected delay); otherwise silence."""
        model = self.models.get(unit)
        if model is None or model.fault == "silent":
            raise NoSuchIdException(f"unit {unit} is silent")
        if self.animate and time.monotonic() - self._last_step >= 1.0:
            self._last_step = time.monotonic()
            self.step()
        fault = model.fault or ""
        if fault.startswith("slow:"):
            await asyncio.sleep(float(fault[5:]))
        if fault.startswith("exception:"):
            return _Failing(ExcCodes(int(fault[10:], 16)))  # type: ignore[return-value]
        return model

    def _outgoing(self, conn: Any, rtu: bool, sending: bool, data: bytes) -> bytes:
        """A connection's packet hook: turn the correct answer of a faulty unit into its fault's bytes."""
        if not sending or len(data) < (4 if rtu else 8):
            return data
        head = 0 if rtu else 6  # offset of the unit id; the function code follows it
        model = self.models.get(data[head])
        fault, _, only = (model.fault or "").partition("@") if model is not None else ("", "", "")
        if fault not in _BYTE_FAULTS or (only and int(only) != data[head + 1] & 0x7F):
            return data
        if fault == "slow-loris":
            self._trickles.add(asyncio.ensure_future(_trickle(conn, data[:-1])))
            return b""
        if fault == "junk":
            junk = bytearray(self._rng.randbytes(len(data)))
            if not rtu:
                junk[2] |= 0x80  # not protocol id 0: the bytes are no Modbus TCP frame
            return bytes(junk)
        if fault == "crc":
            return data[:-1] + bytes([data[-1] ^ 0xFF]) if rtu else data
        frame = bytearray(data[:-2] if rtu else data)
        fc = frame[head + 1]
        if fault == "wrong-unit":
            frame[head] = frame[head] % 247 + 1
        elif fault == "wrong-transaction":
            if rtu:
                return data  # RTU frames carry no transaction id
            frame[0:2] = ((int.from_bytes(frame[0:2], "big") + 0x1111) % 0x10000).to_bytes(2, "big")
        elif fault == "bad-length" and fc in _FC_TABLE and fc <= 4:
            frame[head + 2] = (frame[head + 2] + 2) % 256  # the byte count; the data and MBAP length stay
        elif fault == "wrong-function" and fc <= 4:
            frame[head + 1] = {1: 2, 2: 1, 3: 4, 4: 3}[fc]
        if rtu:
            frame += FramerRTU.compute_CRC(bytes(frame)).to_bytes(2, "big")
        return bytes(frame)

    # -- serving ------------------------------------------------------------------------------

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0, *, rtu_framing: bool = False) -> int:
        """Serve Modbus TCP (or RTU-over-TCP with ``rtu_framing``); returns the bound port."""
        server = _Server(
            self, rtu_framing, _Context(self), framer=FramerType.RTU if rtu_framing else FramerType.SOCKET,
            address=(host, port), ignore_missing_devices=True, broadcast_enable=True)
        await server.serve_forever(background=True)
        self._servers.append(server)
        return int(server.transport.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def start_rtu(self, baudrate: int = 9600, *, line_speed: bool = True) -> str:
        """Serve RTU on a new pty; returns the path the driver opens as its serial port."""
        port = await self.start_tcp(rtu_framing=True)
        bridge = _PtyBridge("127.0.0.1", port, baudrate if line_speed else 0)
        await bridge.start()
        self._bridges.append(bridge)
        return bridge.path

    async def unplug_rtu(self) -> None:
        """Close every RTU pty, as a USB adapter pulled out: the gateway's open port reads EIO/hang-up.

        ``start_rtu`` plugs a new one in (a new pty path: point the configured symlink at it, as udev
        does with ``/dev/serial/by-id``).
        """
        for b in self._bridges:
            await b.stop()
        self._bridges.clear()

    async def stop(self) -> None:
        """Stop every server and bridge (held writes are answered first)."""
        for m in self.models.values():
            if m.fault == "hold-write":
                m.fault = None
        self.fault_changed.set()
        for t in list(self._trickles):
            await cancel_and_wait(t)
        for b in self._bridges:
            await b.stop()
        for s in self._servers:
            await s.shutdown()
        self._trickles.clear()
        self._bridges.clear()
        self._servers.clear()


class _Server(ModbusTcpServer):
    """pymodbus's TCP server, each connection with a packet hook that knows the connection (for the trickle)."""

    def __init__(self, sim: ModbusSim, rtu: bool, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sim, self.rtu = sim, rtu

    def callback_new_connection(self) -> Any:
        handler = super().callback_new_connection()
        handler.trace_packet = functools.partial(self.sim._outgoing, handler, self.rtu)
        return handler


async def _trickle(conn: Any, data: bytes) -> None:
    """Write ``data`` a byte at a time, ``TRICKLE`` seconds apart (a slow-loris answer that never completes)."""
    for i in range(len(data)):
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data[i:i + 1])
        await asyncio.sleep(TRICKLE)  # the fault's own pace, not a synchronization


class _Failing:
    """Stands in for a model whose unit answers every read with one exception code."""

    def __init__(self, code: ExcCodes) -> None:
        self.code = code

    def read(self, table: str, address: int, count: int) -> ExcCodes:
        return self.code


class _PtyBridge:
    """Forwards bytes between a pty and a TCP peer, each chunk delayed by its line time."""

    def __init__(self, host: str, port: int, baudrate: int) -> None:
        self.host, self.port, self.baudrate = host, port, baudrate
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.tasks: list[asyncio.Task[None]] = []
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, self.writer = await asyncio.open_connection(self.host, self.port)
        os.set_blocking(self.master, False)
        to_tcp: asyncio.Queue[bytes] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        loop.add_reader(self.master, self._from_pty, to_tcp)
        self.tasks = [asyncio.create_task(self._pump_to_tcp(to_tcp), name="pty->tcp"),
                      asyncio.create_task(self._pump_to_pty(reader), name="tcp->pty")]

    def _from_pty(self, queue: asyncio.Queue[bytes]) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO while no process holds the slave side open
            return
        if data:
            queue.put_nowait(data)

    async def _line(self, n: int) -> None:
        if self.baudrate:
            await asyncio.sleep(n * 11 / self.baudrate)

    async def _pump_to_tcp(self, queue: asyncio.Queue[bytes]) -> None:
        assert self.writer is not None
        while True:
            data = await queue.get()
            await self._line(len(data))
            self.writer.write(data)

    async def _pump_to_pty(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(4096):
            await self._line(len(data))
            with contextlib.suppress(BlockingIOError):
                os.write(self.master, data)

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        for t in self.tasks:
            await cancel_and_wait(t)
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        os.close(self.master)
        os.close(self.slave)


async def serve_tcp(profile_path: str | Path, unit_ids: Sequence[int], host: str = "127.0.0.1", port: int = 0,
                    **kw: Any) -> tuple[ModbusSim, int]:
    """Serve a profile over Modbus TCP for the demo or a test: ``(sim, bound port)``; ``await sim.stop()`` ends it."""
    profile = load_modbus_profile(profile_path)
    sim = ModbusSim(dict.fromkeys(unit_ids, profile), **kw)
    return sim, await sim.start_tcp(host, port)


async def serve_rtu(profile_path: str | Path, unit_ids: Sequence[int], baudrate: int = 9600,
                    **kw: Any) -> tuple[ModbusSim, str]:
    """Serve a profile over RTU on a pty: ``(sim, pty path for the driver's serial_port)``."""
    profile = load_modbus_profile(profile_path)
    sim = ModbusSim(dict.fromkeys(unit_ids, profile), **kw)
    return sim, await sim.start_rtu(baudrate)


def _unit_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"bad unit id {text!r} in --fault UNIT=FAULT (a number, or * for every unit)") from None


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _main(args: argparse.Namespace) -> None:
    profile = load_modbus_profile(args.profile)
    sim = ModbusSim(dict.fromkeys(args.unit or [1], profile), strict=args.strict)
    for spec in args.fault or []:
        unit, _, fault = spec.partition("=")
        for u in sim.models if unit == "*" else [_unit_id(unit)]:
            if u not in sim.models:
                raise ValueError(f"--fault {spec}: unit {u} is not served (add --unit {u})")
            sim.set_fault(u, fault)
    units = ",".join(str(u) for u in sim.models)
    if args.tcp:
        port = await sim.start_tcp(*_host_port(args.tcp))
        print(f"modbus tcp {_host_port(args.tcp)[0]}:{port} units {units}", flush=True)
    if args.rtu_over_tcp:
        port = await sim.start_tcp(*_host_port(args.rtu_over_tcp), rtu_framing=True)
        print(f"modbus rtu-over-tcp {_host_port(args.rtu_over_tcp)[0]}:{port} units {units}", flush=True)
    if args.rtu:
        path = await sim.start_rtu(args.baud)
        print(f"modbus rtu {path} {args.baud} baud units {units}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m fieldgate_hwsim.modbus_sim --profile eastron/sdm120 --tcp 127.0.0.1:0 --unit 1``."""
    ap = argparse.ArgumentParser(prog="python -m fieldgate_hwsim.modbus_sim",
                                 description="Simulate Modbus devices from a fieldgate profile.")
    ap.add_argument("--profile", required=True, help="library name (eastron/sdm120) or path to a profile")
    ap.add_argument("--unit", type=int, action="append", help="unit id to serve (repeat for several; default 1)")
    ap.add_argument("--tcp", metavar="HOST:PORT", help="serve Modbus TCP (port 0: any free port)")
    ap.add_argument("--rtu-over-tcp", metavar="HOST:PORT", help="serve RTU frames over TCP")
    ap.add_argument("--rtu", action="store_true", help="serve RTU on a new pty (its path is printed)")
    ap.add_argument("--baud", type=int, default=9600, help="line speed emulated on the pty")
    ap.add_argument("--strict", action="store_true", help="reject reads spanning unimplemented addresses")
    ap.add_argument("--fault", action="append", metavar="UNIT=FAULT",
                    help=f"UNIT is a unit id or * for all; FAULT one of {', '.join(FAULTS)} (repeatable)")
    args = ap.parse_args(argv)
    if not (args.tcp or args.rtu or args.rtu_over_tcp):
        args.tcp = "127.0.0.1:0"
    try:
        asyncio.run(_main(args))
    except ValueError as exc:
        print(f"modbus_sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

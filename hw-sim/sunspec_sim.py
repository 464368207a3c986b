"""SunSpec device simulator: a real SunSpec chain served over Modbus TCP.

The chain is the one a three-phase PV inverter with a grid meter presents:
``SunS`` marker, common model 1, inverter 103, MPPT 160 with two modules,
meter 203, end marker 0xFFFF. The register layout follows the SunSpec
Alliance's model definitions (pysunspec2's JSON, read here as data); the
values are one consistent operating point (power = volts x amps x PF per
phase, DC power split over the modules, the inverter's DC power above its
AC power), each encoded with a scale factor of its own, and two values left
"not implemented" (0x8000) as real inverters do for sensors they lack.

Served through ``ModbusSim`` (its server, faults and request counting): a
``SunSpecDevice`` stands in for the profile-driven ``DeviceModel``.

Run: ``python -m fieldgate_hwsim.sunspec_sim --port 1502 [--base 40000] [--unit 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import struct
import sys
from importlib import resources
from typing import Any

from fieldgate_hwsim.modbus_sim import ModbusSim
from pymodbus.constants import ExcCodes

#: Where the chain starts unless told otherwise (the most common base).
DEFAULT_BASE = 40000
#: MPPT modules served.
MODULES = 2
NOT_IMPLEMENTED = "n/i"


def definition(mid: int) -> dict[str, Any]:
    """The SunSpec Alliance's definition of model ``mid``."""
    doc: dict[str, Any] = json.loads((resources.files("sunspec2") / "models" / "json" / f"model_{mid}.json")
                                     .read_text(encoding="utf-8"))
    return doc


def operating_point() -> dict[int, dict[str, Any]]:
    """Engineering values per model (scale factors as raw exponents), consistent with each other."""
    volts = [230.1, 229.8, 230.4]
    amps = [4.35, 4.33, 4.36]
    pf = 99.5  # percent
    watts = [v * a * pf / 100 for v, a in zip(volts, amps, strict=True)]
    va = sum(v * a for v, a in zip(volts, amps, strict=True))
    w = round(sum(watts))
    dcv = 620.5
    dcw = round(w / 0.97)
    share = [0.55, 0.45]
    inverter = {
        "A_SF": -2, "A": sum(amps), "AphA": amps[0], "AphB": amps[1], "AphC": amps[2],
        "V_SF": -1, "PhVphA": volts[0], "PhVphB": volts[1], "PhVphC": volts[2],
        "PPVphAB": round(math.sqrt(3) * volts[0], 1), "PPVphBC": round(math.sqrt(3) * volts[1], 1),
        "PPVphCA": round(math.sqrt(3) * volts[2], 1),
        "W_SF": 0, "W": w, "Hz_SF": -2, "Hz": 50.01, "VA_SF": 0, "VA": round(va),
        "VAr_SF": 0, "VAr": round(math.sqrt(max(va * va - w * w, 0))), "PF_SF": -1, "PF": pf,
        "WH_SF": 0, "WH": 1234567, "DCA_SF": -2, "DCA": round(dcw / dcv, 2), "DCV_SF": -1, "DCV": dcv,
        "DCW_SF": 0, "DCW": dcw, "Tmp_SF": -1, "TmpCab": 41.2, "TmpSnk": 45.0,
        "TmpTrns": NOT_IMPLEMENTED, "TmpOt": NOT_IMPLEMENTED, "St": 4, "StVnd": 0,
        "Evt1": 0, "Evt2": 0, "EvtVnd1": 0, "EvtVnd2": 0, "EvtVnd3": 0, "EvtVnd4": 0,
    }
    mppt: dict[str, Any] = {"DCA_SF": -2, "DCV_SF": -1, "DCW_SF": 0, "DCWH_SF": 1, "Evt": 0, "N": MODULES,
                            "TmsPer": 0}
    modules = [{"ID": k + 1, "IDStr": f"PV{k + 1}", "DCV": dcv, "DCW": round(dcw * s),
                "DCA": round(dcw * s / dcv, 2), "DCWH": (700000, 530000)[k], "Tms": 86400 * 30, "Tmp": 38,
                "DCSt": 4, "DCEvt": 0} for k, s in enumerate(share)]
    gvolts = [231.0, 230.5, 230.8]
    gamps = [-2.1, -2.05, -2.15]  # exporting: current and power negative at the meter
    gw = [round(v * a * 0.98) for v, a in zip(gvolts, gamps, strict=True)]
    gva = [round(abs(v * a)) for v, a in zip(gvolts, gamps, strict=True)]
    meter: dict[str, Any] = {
        "A_SF": -2, "A": sum(gamps), "AphA": gamps[0], "AphB": gamps[1], "AphC": gamps[2],
        "V_SF": -1, "PhV": round(sum(gvolts) / 3, 1), "PhVphA": gvolts[0], "PhVphB": gvolts[1],
        "PhVphC": gvolts[2], "PPV": 399.8, "PhVphAB": 399.7, "PhVphBC": 399.5, "PhVphCA": 400.1,
        "Hz_SF": -2, "Hz": 50.01, "W_SF": 0, "W": sum(gw), "WphA": gw[0], "WphB": gw[1], "WphC": gw[2],
        "VA_SF": 0, "VA": sum(gva), "VAphA": gva[0], "VAphB": gva[1], "VAphC": gva[2],
        "VAR_SF": 0, "VAR": 0, "VARphA": 0, "VARphB": 0, "VARphC": 0,
        "PF_SF": -1, "PF": -98.0, "PFphA": -98.0, "PFphB": -98.0, "PFphC": -98.0,
        "TotWh_SF": 1, "TotWhExp": 2_500_000, "TotWhExpPhA": 840_000, "TotWhExpPhB": 830_000,
        "TotWhExpPhC": 830_000, "TotWhImp": 1_200_000, "TotWhImpPhA": 400_000, "TotWhImpPhB": 400_000,
        "TotWhImpPhC": 400_000, "TotVAh_SF": 1, "TotVAhExp": 2_600_000, "TotVAhImp": 1_250_000,
        "TotVArh_SF": 0, "Evt": 0,
    }
    common = {"Mn": "fieldgate", "Md": "SunSpec sim 3P", "Opt": "", "Vr": "1.3.7", "SN": "SIM-0001", "DA": 1}
    return {1: common, 103: inverter, 160: {**mppt, "modules": modules}, 203: meter}


#: SunSpec's "not implemented" per type (what a device serves for a value it lacks).
_UNSET = {"int16": 0x8000, "sunssf": 0x8000, "uint16": 0xFFFF, "enum16": 0xFFFF, "bitfield16": 0xFFFF,
          "count": 0xFFFF, "acc16": 0, "uint32": 0xFFFFFFFF, "enum32": 0xFFFFFFFF, "bitfield32": 0xFFFFFFFF,
          "acc32": 0, "int32": 0x80000000, "pad": 0x8000, "string": 0}


def _words(ptype: str, size: int, raw: Any) -> list[int]:
    if raw is NOT_IMPLEMENTED or raw is None:
        unset = _UNSET.get(ptype, 0)
        return [(unset >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]
    if ptype == "string":
        data = str(raw).encode("ascii")[: size * 2].ljust(size * 2, b"\0")
        return list(struct.unpack(f">{size}H", data))
    value = int(raw) & ((1 << (16 * size)) - 1)  # two's complement for the signed types
    return [(value >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]


def _body(points: list[dict[str, Any]], values: dict[str, Any], sfs: dict[str, Any]) -> list[int]:
    out: list[int] = []
    for p in points:
        size = int(p.get("size", 1))
        raw = values.get(p["name"], NOT_IMPLEMENTED)
        sf = p.get("sf")
        if sf and raw is not NOT_IMPLEMENTED:
            raw = round(raw / 10.0 ** sfs[sf])  # the register holds value / 10^sf
        out.extend(_words(p["type"], size, raw))
    return out


def chain_image(base: int = DEFAULT_BASE, models: tuple[int, ...] = (1, 103, 160, 203)) -> dict[int, int]:
    """Address → register of the whole chain: marker, each model's ID, L and body, end marker."""
    values = operating_point()
    words = [0x5375, 0x6E53]
    for mid in models:
        group = definition(mid)["group"]
        vals = values[mid]
        body = _body(group["points"][2:], vals, vals)
        for sub in group.get("groups", []):
            for module in vals.get("modules", []):
                body += _body(sub["points"], module, vals)
        words += [mid, len(body), *body]
    words += [0xFFFF, 0]
    return {base + i: w for i, w in enumerate(words)}


class SunSpecDevice:
    """One simulated SunSpec unit, in the shape ``ModbusSim`` serves (its ``DeviceModel`` interface)."""

    def __init__(self, base: int = DEFAULT_BASE, models: tuple[int, ...] = (1, 103, 160, 203)) -> None:
        self.base = base
        self.image: dict[str, dict[int, int]] = {"holding": chain_image(base, models), "input": {}, "coil": {},
                                                 "discrete": {}}
        self.implemented = {t: set(img) for t, img in self.image.items()}
        self.requests = 0
        self.reads = 0
        self.writes: list[tuple[int, int, list[int]]] = []
        self.fault: str | None = None

    def step(self) -> None:
        """A fixed operating point: nothing moves (the values are what tests compare against)."""

    def read(self, table: str, address: int, count: int) -> list[int] | ExcCodes:
        """The registers, or exception 02 outside the chain (a base the device does not use)."""
        img = self.image[table]
        if any(a not in img for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        self.reads += 1
        return [img[a] for a in range(address, address + count)]


class SunSpecSim(ModbusSim):
    """A Modbus TCP endpoint whose units are SunSpec devices."""

    def __init__(self, units: dict[int, SunSpecDevice]) -> None:
        super().__init__({}, animate=False)
        self.models = units  # type: ignore[assignment]  # served through the same read interface


async def _main(args: argparse.Namespace) -> None:
    sim = SunSpecSim({args.unit: SunSpecDevice(args.base)})
    port = await sim.start_tcp(args.host, args.port)
    print(f"SunSpec chain at {args.base} on {args.host}:{port} unit {args.unit}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """CLI: serve one SunSpec device until interrupted."""
    ap = argparse.ArgumentParser(prog="sunspec_sim", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--base", type=int, default=DEFAULT_BASE, choices=(0, 40000, 50000))
    ap.add_argument("--unit", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

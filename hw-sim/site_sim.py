"""Physically consistent Modbus devices of one simulated site: meters, PV inverters and a Victron GX.

``modbus_sim.DeviceModel`` moves every point on its own, which is enough to
test the driver but lets a meter report 230 V, 10 A, PF 0.95 and 12 kW at
once. The models here derive every electrical point of a profile from one
state of the site, by the point names of profiles/README.md, so values agree
with each other as on a real installation:

* per phase: P = V·I·PF, Q = V·I·sin φ, S = V·I, angle φ = atan2(Q, P);
  line-to-line voltages from the phasors 120° apart; the neutral current is
  the phasor sum of the phase currents;
* totals are the sums of the phases, PF total = P / S;
* counters only grow: energy integrates power over the simulated time
  (``SECONDS_PER_STEP`` per ``step()``), so kWh move visibly even at a
  meter's 0.1 kWh resolution;
* a PV inverter converts its strings' DC power with a plausible efficiency;
  a GX balances consumption = grid + PV (AC and DC) - battery charging.

Points the physics does not know (codes, settings, identity) keep
``DeviceModel``'s own plausible values, and scale-factor and identity points
their datasheet constants, so any modbus profile can be served. ``SIMULATED``
lists the library profiles this module models (``fieldgate profiles
--coverage`` reads it through the ``fieldgate.device_simulators`` entry
point); ``SiteSim`` is a ``ModbusSim`` whose units use these models.
"""

from __future__ import annotations

import argparse
import asyncio
import cmath
import math
import sys
from typing import Any

from fieldgate.drivers.modbus.profile import ModbusPoint, ModbusProfile
from fieldgate_hwsim.modbus_sim import DeviceModel, ModbusSim, load_modbus_profile

#: Simulated seconds per ``step()``: a minute, so counters move at every meter's resolution.
SECONDS_PER_STEP = 60.0

#: Library profiles whose points this module derives from the site's state.
SIMULATED = ("abb/b23", "carlo-gavazzi/em24", "carlo-gavazzi/em340", "janitza/umg604", "siemens/pac3200",
             "schneider/iem3155", "huawei/sun2000", "kostal/plenticore", "growatt/tl3-x", "victron/gx-system",
             "eastron/sdm630", "eastron/sdm120", "carlo-gavazzi/em111")

# A value of the state is in its base unit; a profile may publish it in another one.
_BASE = {"kW": ("W", 1e-3), "kvar": ("var", 1e-3), "kVA": ("VA", 1e-3), "Wh": ("kWh", 1e3),
         "varh": ("kvarh", 1e3), "VAh": ("kVAh", 1e3), "mA": ("A", 1e3), "mV": ("V", 1e3)}


class SiteModel(DeviceModel):
    """A unit whose electrical points follow one consistent state (see the module docstring)."""

    def __init__(self, profile: ModbusProfile, seed: int = 0, strict: bool = False) -> None:
        # The counters and the state exist before DeviceModel's first step() reads them.
        self.state: dict[str, float] = {}
        self.counters: dict[str, float] = {}
        self.demand_max = 0.0
        self._single_phase = not any(p.name.endswith("_l2") for p in profile.points)
        super().__init__(profile, seed=seed, strict=strict)

    # -- the site --------------------------------------------------------------------------------

    def step(self) -> None:
        """Advance the site by ``SECONDS_PER_STEP`` and re-derive every point from it."""
        self.state = self._physics(self.steps)
        super().step()

    def _physics(self, n: int) -> dict[str, float]:
        rng, ph = self.rng, self.phase
        wave = math.sin(ph + n * 0.07)
        st: dict[str, float] = {"frequency": 50.0 + 0.03 * wave + rng.uniform(-0.005, 0.005)}
        phases = (1,) if self._single_phase else (1, 2, 3)
        v_ph: list[complex] = []
        i_ph: list[complex] = []
        for k in phases:
            v = 230.0 + 2.5 * math.sin(ph + k + n * 0.05) + rng.uniform(-0.2, 0.2)
            i = (9.0 - 2.0 * k) * (1.0 + 0.25 * math.sin(ph * k + n * 0.11)) + rng.uniform(-0.05, 0.05)
            pf = 0.97 - 0.03 * k + 0.01 * wave
            phi = math.acos(pf)  # inductive load: current lags the voltage
            p, q, s = v * i * pf, v * i * math.sin(phi), v * i
            suffix = "" if self._single_phase else f"_l{k}"
            st.update({f"voltage{suffix}": v, f"current{suffix}": i, f"power{suffix}": p,
                       f"reactive_power{suffix}": q, f"apparent_power{suffix}": s, f"power_factor{suffix}": pf,
                       f"phase_angle{suffix}": math.degrees(math.atan2(q, p)),
                       f"voltage_thd{suffix}": 2.0 + 0.5 * k, f"current_thd{suffix}": 6.0 + k})
            rot = cmath.rect(1.0, -2 * math.pi / 3 * (k - 1))
            v_ph.append(v * rot)
            i_ph.append(i * rot * cmath.rect(1.0, -phi))
        p_tot = sum(st[f"power_l{k}"] for k in phases) if not self._single_phase else st["power"]
        q_tot = sum(st[f"reactive_power_l{k}"] for k in phases) if not self._single_phase else st["reactive_power"]
        s_tot = sum(st[f"apparent_power_l{k}"] for k in phases) if not self._single_phase else st["apparent_power"]
        st.update({"power_total": p_tot, "reactive_power_total": q_tot, "apparent_power_total": s_tot,
                   "power_factor_total": p_tot / s_tot, "phase_angle_total": math.degrees(math.atan2(q_tot, p_tot))})
        if self._single_phase:
            st["power_l1"] = st["power"]
        else:
            pairs = {"voltage_l1_l2": (0, 1), "voltage_l2_l3": (1, 2), "voltage_l3_l1": (2, 0)}
            for name, (a, b) in pairs.items():
                st[name] = abs(v_ph[a] - v_ph[b])
            currents = [abs(c) for c in i_ph]
            st.update({"voltage_ln_avg": sum(abs(v) for v in v_ph) / 3,
                       "voltage_ll_avg": sum(st[n] for n in pairs) / 3,
                       "current_avg": sum(currents) / 3, "current_sum": sum(currents),
                       "current_neutral": abs(sum(i_ph)), "voltage_unbalance": _unbalance([abs(v) for v in v_ph]),
                       "current_unbalance": _unbalance(currents)})
        self._pv(st, n)
        self._count(st, phases)
        return st

    def _pv(self, st: dict[str, float], n: int) -> None:
        """A PV inverter's strings and yield, and a GX's balance, from the same site."""
        irradiance = 0.55 + 0.35 * math.sin(self.phase + n * 0.03)
        dc = 0.0
        for k in (1, 2, 3, 4):
            v = 560.0 + 15.0 * math.sin(self.phase + k) - 40.0 * irradiance
            i = 9.5 * irradiance * (1.0 - 0.05 * k)
            st[f"voltage_pv{k}"], st[f"current_pv{k}"], st[f"power_pv{k}"] = v, i, v * i
            dc += v * i
        eff = 0.975 - 0.01 * (1.0 - irradiance)
        st.update({"power_dc_total": dc, "efficiency": 100.0 * eff, "temperature_internal": 32.0 + 18.0 * irradiance,
                   "insulation_resistance": 3.0e6})
        if any(p.name == "power_dc_total" for p in self.profile.points):
            # an inverter: its AC side carries the strings' power (a third per phase), not a load's
            ac, pf = dc * eff, 0.995
            for k in (1, 2, 3):
                p_k = ac / 3
                s_k = p_k / pf
                st.update({f"power_l{k}": p_k, f"apparent_power_l{k}": s_k, f"power_factor_l{k}": pf,
                           f"reactive_power_l{k}": s_k * math.sin(math.acos(pf)),
                           f"current_l{k}": s_k / st.get(f"voltage_l{k}", 230.0)})
            st.update({"power_total": ac, "apparent_power_total": ac / pf, "power_factor_total": pf,
                       "reactive_power_total": ac / pf * math.sin(math.acos(pf))})
        # GX system: PV on the AC output, a DC-coupled charger, a battery, the grid makes up the rest
        soc = 60.0 + 25.0 * math.sin(self.phase + n * 0.01)
        v_bat = 51.2 + 0.02 * (soc - 50.0)
        p_pv_dc = 1800.0 * irradiance
        p_bat = p_pv_dc - 600.0 * math.cos(self.phase + n * 0.05)   # > 0: charging
        for k in (1, 2, 3):
            pv_ac = 900.0 * irradiance * (1.0 - 0.1 * k)
            load = st.get(f"power_l{k}", st["power_total"] / 3)
            st[f"power_pv_ac_output_l{k}"], st[f"power_pv_ac_input_l{k}"] = pv_ac, 0.0
            st[f"power_consumption_l{k}"] = load
            st[f"power_genset_l{k}"] = 0.0
            # what the loads take beyond PV and the battery's inverter comes from (or goes to) the grid
            st[f"power_grid_l{k}"] = load - pv_ac - (p_pv_dc - p_bat) / 3
        st.update({"voltage_battery": v_bat, "power_battery": p_bat, "current_battery": p_bat / v_bat,
                   "battery_soc": soc, "battery_state": 1.0 if p_bat > 0 else 2.0,
                   "power_pv_dc": p_pv_dc, "current_pv_dc": p_pv_dc / v_bat,
                   "battery_consumed_charge": -(100.0 - soc) * 2.0,
                   "battery_time_to_go": 3600.0 * 10.0 * soc / 100.0, "active_input_source": 1.0})

    def _count(self, st: dict[str, float], phases: tuple[int, ...]) -> None:
        """Counters integrate the powers over the step: they only ever grow."""
        hours = SECONDS_PER_STEP / 3600.0
        c = self.counters
        if not c:  # a meter that has been in service a while
            c.update({"energy_import": 12345.6, "energy_export": 321.0, "reactive_energy_import": 2345.6,
                      "reactive_energy_export": 12.3, "apparent_energy_total": 13579.1, "charge_total": 56789.0,
                      "energy_yield_total": 23456.7, "energy_yield_today": 0.0, "energy_import_partial": 123.4,
                      "reactive_energy_import_partial": 23.4, "reactive_energy_inductive": 2300.0,
                      "reactive_energy_capacitive": 45.6})
            for k in (1, 2, 3):
                c[f"energy_import_l{k}"] = c["energy_import"] / 3
                c[f"energy_export_l{k}"] = c["energy_export"] / 3
                c[f"apparent_energy_total_l{k}"] = c["apparent_energy_total"] / 3
                c[f"reactive_energy_total_l{k}"] = c["reactive_energy_import"] / 3
                c[f"reactive_energy_inductive_l{k}"] = c["reactive_energy_inductive"] / 3
                c[f"reactive_energy_capacitive_l{k}"] = c["reactive_energy_capacitive"] / 3
            c.update({f"energy_import_t{t}": c["energy_import"] / 4 for t in (1, 2, 3, 4)})
            c.update({f"energy_export_t{t}": c["energy_export"] / 2 for t in (1, 2)})
            c.update({f"reactive_energy_import_t{t}": c["reactive_energy_import"] / 2 for t in (1, 2)})
            c.update({f"reactive_energy_export_t{t}": c["reactive_energy_export"] / 2 for t in (1, 2)})
            c.update({f"apparent_energy_total_t{t}": c["apparent_energy_total"] / 2 for t in (1, 2)})
        p_tot, q_tot, s_tot = st["power_total"], st["reactive_power_total"], st["apparent_power_total"]
        c["energy_import"] += max(p_tot, 0.0) / 1000 * hours
        c["energy_export"] += max(-p_tot, 0.0) / 1000 * hours
        c["energy_import_t1"] += max(p_tot, 0.0) / 1000 * hours  # tariff 1 is the one running
        c["energy_import_partial"] += max(p_tot, 0.0) / 1000 * hours
        c["reactive_energy_import"] += max(q_tot, 0.0) / 1000 * hours
        c["reactive_energy_import_t1"] += max(q_tot, 0.0) / 1000 * hours
        c["reactive_energy_import_partial"] += max(q_tot, 0.0) / 1000 * hours
        c["reactive_energy_inductive"] += max(q_tot, 0.0) / 1000 * hours
        c["apparent_energy_total"] += s_tot / 1000 * hours
        c["apparent_energy_total_t1"] += s_tot / 1000 * hours
        c["energy_yield_total"] += max(st["power_total"], 0.0) / 1000 * hours
        c["energy_yield_today"] += max(st["power_total"], 0.0) / 1000 * hours
        for k in phases if len(phases) > 1 else ():
            c[f"energy_import_l{k}"] += max(st[f"power_l{k}"], 0.0) / 1000 * hours
            c[f"apparent_energy_total_l{k}"] += st[f"apparent_power_l{k}"] / 1000 * hours
            c[f"reactive_energy_total_l{k}"] += abs(st[f"reactive_power_l{k}"]) / 1000 * hours
            c[f"reactive_energy_inductive_l{k}"] += max(st[f"reactive_power_l{k}"], 0.0) / 1000 * hours
        c["charge_total"] += (st.get("current_sum") or st.get("current", 0.0)) * hours
        st.update(c)
        st["energy_total"] = c["energy_import"] + c["energy_export"]
        st["energy_net"] = c["energy_import"] - c["energy_export"]
        st["reactive_energy_total"] = c["reactive_energy_import"] + c["reactive_energy_export"]
        st["reactive_energy_net"] = c["reactive_energy_import"] - c["reactive_energy_export"]
        st["apparent_energy_import"], st["apparent_energy_export"] = c["apparent_energy_total"], 0.0
        st["apparent_energy_net"] = c["apparent_energy_total"]
        for k in (1, 2, 3):
            if f"energy_import_l{k}" in c:
                st[f"energy_total_l{k}"] = c[f"energy_import_l{k}"] + c[f"energy_export_l{k}"]
                st[f"energy_net_l{k}"] = c[f"energy_import_l{k}"] - c[f"energy_export_l{k}"]
        # demand: the mean power of the period, approximated by a slow average; its maximum only grows
        st["power_demand_total"] = st["power_demand_import"] = 0.9 * p_tot
        self.demand_max = max(self.demand_max, st["power_demand_total"])
        st["power_demand_total_max"] = st["power_demand_import_max"] = self.demand_max
        st["power_demand_export"] = st["power_demand_export_max"] = 0.0

    # -- into registers ---------------------------------------------------------------------------

    def _next(self, p: ModbusPoint, t: float) -> Any:
        if p.name in self._fixed or p.name in self._sf_of or p.kind in ("bit", "bool", "string"):
            return super()._next(p, t)
        eng = self._engineering(p)
        if eng is None:
            return super()._next(p, t)
        raw = (eng - p.offset) / p.scale
        if p.scale_factor_point:
            raw /= 10.0 ** self.raw.get(p.scale_factor_point, 0)
        return raw

    def _engineering(self, p: ModbusPoint) -> float | None:
        """The state's value of a point, in the point's unit (None: the physics does not know it)."""
        value = self.state.get(p.name)
        if value is None:
            return None
        # the state keeps each quantity in its base unit (W, kWh, ...); a profile may publish another
        return value * _BASE.get(p.unit or "", ("", 1.0))[1]

    def covered(self) -> set[str]:
        """The profile's points this model derives from the site (the rest are DeviceModel's)."""
        return {p.name for p in self.profile.points if p.name in self.state and p.name not in self._fixed}


def _unbalance(values: list[float]) -> float:
    """Amplitude unbalance in %: the largest deviation from the mean, relative to the mean (IEC 61557-12)."""
    mean = sum(values) / len(values)
    return 100.0 * max(abs(v - mean) for v in values) / mean


class SiteSim(ModbusSim):
    """A ``ModbusSim`` whose units are ``SiteModel``s: the same servers, framings and faults."""

    def __init__(self, devices: dict[int, ModbusProfile], *, animate: bool = True, strict: bool = False,
                 seed: int = 0) -> None:
        super().__init__(devices, animate=animate, strict=strict, seed=seed)
        self.models = {u: SiteModel(p, seed=seed + u, strict=strict) for u, p in devices.items()}


def covered_points(profile_name: str) -> set[str]:
    """Points of a library profile this module derives consistently (empty if it does not model it)."""
    if profile_name not in SIMULATED:
        return set()
    return SiteModel(load_modbus_profile(profile_name)).covered()


async def _main(args: argparse.Namespace) -> None:
    profiles = {u: load_modbus_profile(name) for u, name in enumerate(args.profile, start=1)}
    sim = SiteSim(profiles)
    port = await sim.start_tcp("127.0.0.1", args.port)
    for u, name in enumerate(args.profile, start=1):
        print(f"modbus tcp 127.0.0.1:{port} unit {u} {name}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m fieldgate_hwsim.site_sim --profile abb/b23 --profile huawei/sun2000``: units 1, 2, ..."""
    ap = argparse.ArgumentParser(prog="python -m fieldgate_hwsim.site_sim",
                                 description="Serve a consistent simulated site over Modbus TCP, one unit per profile.")
    ap.add_argument("--profile", action="append", required=True, help=f"one of {', '.join(SIMULATED)} (repeatable)")
    ap.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    args = ap.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except ValueError as exc:
        print(f"site_sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

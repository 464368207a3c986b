"""DCMD writes through the command executor: a Sparkplug host sets a Modbus point, with the JSON commands' rules.

The real gateway process in Sparkplug mode polls a pymodbus simulator (hw-sim, in a thread of
this process) serving the command tests' boiler profile. The host writes a writable point by its
DBIRTH alias: the simulator's register takes the raw words and the new value comes back as DDATA.
A read-only point is refused before any frame reaches the device; with commands off, every
DCMD is refused (test_edge_node).
"""

from __future__ import annotations

import struct
from pathlib import Path

from tests.commands.conftest import PROFILE
from tests.modbus.stall_rig import SimThread

from .conftest import GROUP, HOST_ID, NODE, Rig


def _config(folder: Path, broker_port: int, profile: Path, port: int) -> str:
    return (f"gateway: {{id: {NODE}, data_dir: {folder / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker_port}, format: sparkplug, reconnect_min: 0.05s, "
            "reconnect_max: 0.3s}\n"
            f"sparkplug: {{group_id: {GROUP}, primary_host_id: {HOST_ID}}}\n"
            "buffer: {flush_interval: 50ms}\nweb: {enabled: false}\n"
            "commands: {enabled: true, allow: [boiler-1]}\n"
            f"devices:\n  - {{id: boiler-1, driver: modbus, profile: {profile}, poll_interval: 0.5s, "
            f"connection: {{transport: tcp, host: 127.0.0.1, port: {port}, unit: 1}}}}\n")


def test_a_dcmd_writes_a_writable_point_and_a_read_only_one_is_refused_without_a_frame(rig: Rig) -> None:
    rig.folder.mkdir(parents=True, exist_ok=True)
    profile = rig.folder / "boiler.yaml"
    profile.write_text(PROFILE)
    sims = SimThread()
    try:
        (port,) = sims.start(1, profile=str(profile))
        unit = sims.sims[0].models[1]
        rig.config.write_text(_config(rig.folder, rig.broker.port, profile, port))
        gw = rig.start("run", "-c", str(rig.config), env={"PYTHONWARNINGS": "default"})
        rig.procs.append(gw)
        h = rig.host
        h.wait_for(lambda h: bool(h.of("DBIRTH", "boiler-1")) and bool(h.of("DDATA", "boiler-1")),
                   what="the boiler's DBIRTH and first DDATA")

        requests = unit.requests
        h.dcmd("boiler-1", "mode", 3.0)  # a holding register the profile does not mark writable
        gw.wait_stderr("DCMD spb-", timeout=15)
        assert "read_only" in next(line for line in gw.stderr_lines if "DCMD spb-" in line)
        assert not unit.writes
        assert unit.requests - requests <= 1  # at most a poll that was due: no write frame

        h.dcmd("boiler-1", "setpoint", 42.5)
        h.wait_for(lambda h: any(v.device == "boiler-1" and v.name == "setpoint" and v.value == 42.5
                                 and not v.birth for v in h.values), what="DDATA with the written setpoint")
        fc, address, words = unit.writes[-1]
        assert (fc, address) == (16, 0)
        assert struct.unpack(">f", struct.pack(">HH", *words))[0] == 42.5  # float32, big-endian words
        assert len(unit.writes) == 1  # once
        h.check()
    finally:
        sims.stop()

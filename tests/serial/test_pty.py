"""End to end over real ptys: simulators for each profile, faults, and a port that vanishes and returns."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.driver import DeviceContext, SharedResources
from fieldgate.drivers.serial.driver import SerialDriver, StreamingSerialDriver, open_hint
from fieldgate.drivers.serial.profile import SerialConnection
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from fieldgate.outputs import MemoryOutput
from fieldgate.testing import RecordingSink as Sink
from fieldgate_hwsim.serial_sim import Faults, SerialSim

from .conftest import REPO, load_serial_profile

PTY_8N1 = "bytesize: 8, parity: N"  # a pty has no UART: some kernels refuse 7E1 on it


@asynccontextmanager
async def gateway(tmp_path: Path, devices: str) -> AsyncIterator[MemoryOutput]:
    """A gateway running ``devices`` (YAML list items) with a memory output."""
    text = f"gateway: {{id: gw-test, data_dir: {tmp_path / 'data'}}}\ndevices:\n{devices}"
    out = MemoryOutput()
    gw = Gateway(load_config_text(text, str(tmp_path / "test.yaml")), out)
    task = asyncio.create_task(gw.run())
    try:
        yield out
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 10)


def device(dev_id: str, profile: str, port: str, extra: str = "", **top: Any) -> str:
    keys = "".join(f", {k}: {v}" for k, v in top.items())
    conn = f"port: {port}" + (f", {extra}" if extra else "")
    return f"  - {{id: {dev_id}, driver: serial, profile: {profile}{keys}, connection: {{{conn}}}}}\n"


def context(profile: str, **conn: Any) -> DeviceContext:
    return DeviceContext("dev-1", load_serial_profile(REPO / "profiles" / f"{profile}.yaml"),
                         SerialConnection(**conn), 2.0,
                         logging.LoggerAdapter(logging.getLogger("test.serial")), SharedResources())


async def test_streaming_profiles_through_the_gateway(tmp_path: Path,
                                                      validate_reading: Callable[[dict[str, Any]], None]) -> None:
    faults = Faults(garbage=0.5, split=True)
    with SerialSim("novafitness/sds011", interval=0.05, faults=faults, seed=1) as sds, \
            SerialSim("plantower/pms5003", interval=0.05, faults=faults, seed=2) as pms, \
            SerialSim("nmea0183/gnss", interval=0.05, faults=faults, seed=3) as gnss:
        devices = (device("sds", "novafitness/sds011", sds.path) + device("pms", "plantower/pms5003", pms.path)
                   + device("gnss", "nmea0183/gnss", gnss.path))
        async with gateway(tmp_path, devices) as out:
            await out.wait_for(lambda o: all(len(o.by_device(d)) >= 4 for d in ("sds", "pms", "gnss")))
    for msg in out.readings:
        validate_reading(msg)
        assert all(m["quality"] == "good" for m in msg["metrics"].values()), msg
    assert 5 <= out.by_device("sds")[-1]["metrics"]["pm2_5"]["value"] <= 36
    assert out.by_device("pms")[-1]["metrics"]["particles_0_3"]["value"] > 0
    positions = [r["metrics"]["latitude"]["value"] for r in out.by_device("gnss")]
    assert all(48.1 < lat < 48.2 for lat in positions)
    assert {"fix_quality", "satellites"} <= {k for r in out.by_device("gnss") for k in r["metrics"]}
    assert {"fix_valid", "speed"} <= {k for r in out.by_device("gnss") for k in r["metrics"]}


async def test_query_instrument_through_the_gateway(tmp_path: Path,
                                                    validate_reading: Callable[[dict[str, Any]], None]) -> None:
    with SerialSim("vaisala/hmp155", faults=Faults(garbage=0.3, split=True), seed=4) as hmp:
        async with gateway(tmp_path, device("hmp", "vaisala/hmp155", hmp.path, PTY_8N1,
                                            poll_interval="100ms")) as out:
            await out.wait_for(lambda o: len(o.by_device("hmp")) >= 3)
    for msg in out.readings:
        validate_reading(msg)
    assert 34 <= out.readings[-1]["metrics"]["humidity"]["value"] <= 56
    assert hmp.queries >= 3
    assert ("hmp", "online", None) in out.statuses


async def test_port_vanishes_and_comes_back_under_the_same_link(tmp_path: Path) -> None:
    link = tmp_path / "usb-Plantower_PMS5003-if00-port0"
    with SerialSim("plantower/pms5003", interval=0.05, link=link) as sim:
        first_tty = sim._slave_name
        async with gateway(tmp_path, device("pms", "plantower/pms5003", str(link), poll_interval="100ms",
                                            backoff_max="300ms", offline_after=2)) as out:
            await out.wait_for(lambda o: len(o.by_device("pms")) >= 2)
            sim.vanish()
            await out.wait_for(lambda o: o.statuses[-1][:2] == ("pms", "offline"))
            assert any("went away" in str(s[2]) for s in out.statuses)
            before = len(out.by_device("pms"))
            sim.reappear()
            await out.wait_for(lambda o: len(o.by_device("pms")) >= before + 2)
            assert out.statuses[-1] == ("pms", "online", None)
        assert sim.generation == 2 and first_tty


async def test_bad_checksums_are_counted_and_reported_never_raised() -> None:
    with SerialSim("novafitness/sds011", interval=0.02, faults=Faults(bad_checksum=1.0)) as sim:
        async with context_driver("novafitness/sds011", port=sim.path, bad_frames_degraded=3) as drv:
            sink = Sink()
            task = asyncio.create_task(drv.run(sink))
            await sink.wait(lambda s: bool(s.errors))
            sim.faults.bad_checksum = 0.0
            await sink.wait(lambda s: len(s.readings) >= 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    [err] = sink.errors
    assert isinstance(err, DeviceProtocolError) and err.reason == "checksum"
    assert drv.framer.stats.bad_checksums >= 3


async def test_silence_raises_timeout_with_a_hint() -> None:
    with SerialSim("plantower/pms5003", interval=0.02, faults=Faults(silent=True)) as sim:
        async with context_driver("plantower/pms5003", port=sim.path, stale_after=0.3) as drv:
            with pytest.raises(DeviceTimeout, match="no valid frame") as info:
                await drv.run(Sink())
    assert "nothing received" in str(info.value.hint)


async def test_wrong_baud_rate_hint_when_only_garbage_arrives() -> None:
    with SerialSim("plantower/pms5003", interval=0.01, faults=Faults(garbage=1.0, bad_checksum=1.0)) as sim:
        async with context_driver("plantower/pms5003", port=sim.path, stale_after=0.3) as drv:
            with pytest.raises(DeviceTimeout) as info:
                await drv.run(Sink())
    assert "baudrate" in str(info.value.hint)


async def test_query_timeout_and_recovery() -> None:
    with SerialSim("vaisala/hmp155", faults=Faults(silent=True)) as sim:
        async with context_driver("vaisala/hmp155", port=sim.path, bytesize=8, parity="N",
                                  answer_timeout=0.2) as drv:
            assert type(drv) is SerialDriver
            with pytest.raises(DeviceTimeout, match="no answer"):
                await drv.poll(Sink())
            sim.faults.silent = False
            sink = Sink()
            await drv.poll(sink)
    assert set(sink.readings[0].values) == {"humidity", "temperature"}


async def test_passive_pms5003_in_query_mode() -> None:
    with SerialSim("plantower/pms5003", respond=True) as sim:
        async with context_driver("plantower/pms5003", port=sim.path, mode="query") as drv:
            sink = Sink()
            await drv.poll(sink)
            await drv.poll(sink)
    assert len(sink.readings) == 2 and sim.queries == 2


async def test_min_interval_mean() -> None:
    with SerialSim("novafitness/sds011", interval=0.01) as sim:
        async with context_driver("novafitness/sds011", port=sim.path, min_interval=0.2, aggregate="mean") as drv:
            sink = Sink()
            task = asyncio.create_task(drv.run(sink))
            await sink.wait(lambda s: len(s.readings) >= 3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert drv.framer.stats.frames > len(sink.readings) * 5
    assert isinstance(sink.readings[-1].values["pm2_5"], float)


async def test_missing_port_is_unreachable_with_a_by_id_hint(tmp_path: Path) -> None:
    drv = SerialDriver.create(context("novafitness/sds011", port=str(tmp_path / "ttyUSB7")))
    assert isinstance(drv, StreamingSerialDriver)
    with pytest.raises(DeviceUnreachable, match="cannot open") as info:
        await drv.__aenter__()
    assert "does not exist" in str(info.value.hint)


def test_hints() -> None:
    assert "dialout" in open_hint("/dev/ttyUSB0", OSError(errno.EACCES, "Permission denied"))
    assert "by-id" in open_hint("/dev/ttyUSB0", OSError(errno.ENOENT, "No such file"))
    assert "another program" in open_hint("/dev/ttyS0", OSError(errno.EBUSY, "busy"))
    assert "reopens" in open_hint("/dev/serial/by-id/x", OSError(errno.EIO, "I/O error"), lost=True)


@asynccontextmanager
async def context_driver(profile: str, **conn: Any) -> AsyncIterator[SerialDriver]:
    async with SerialDriver.create(context(profile, **conn)) as drv:
        yield drv


async def test_gnss_losing_its_fix_over_a_pty_publishes_no_good_position(
        validate_reading: Callable[[dict[str, Any]], None]) -> None:
    """Real driver, real pty: fix, then the receiver loses it but repeats its last position."""
    import os

    from fieldgate.normalize import Normalizer
    from fieldgate_hwsim.serial_sim import nmea_sentence

    master, slave = os.openpty()
    try:
        async with context_driver("nmea0183/gnss", port=os.ttyname(slave)) as drv:
            sink = Sink()
            task = asyncio.create_task(drv.run(sink))
            os.write(master, nmea_sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
                     + nmea_sentence("GPGGA,123520,4807.038,N,01131.000,E,0,00,99.9,545.4,M,46.9,M,,")
                     + nmea_sentence("GPRMC,123520,V,4807.038,N,01131.000,E,000.0,084.4,230394,003.1,W"))
            await sink.wait(lambda s: len(s.readings) >= 3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        os.close(master)
        os.close(slave)
    norm = Normalizer("gw-test", "gnss", drv.profile, {"driver": "serial"})
    fix, gga0, rmc_v = (norm.normalize(r) for r in sink.readings[:3])
    for msg in (fix, gga0, rmc_v):
        assert msg is not None
        validate_reading({"seq": 1, **msg})
    assert fix is not None and fix["metrics"]["latitude"]["quality"] == "good"
    for msg in (gga0, rmc_v):
        assert msg is not None
        for name in ("latitude", "longitude"):
            assert msg["metrics"][name] == {"value": None, "quality": "bad", "unit": name[:3], "reason": "no_fix"}

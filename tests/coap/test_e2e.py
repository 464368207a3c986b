"""A whole gateway: a push device and a polled device deliver schema-valid readings to a real mosquitto."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from fieldgate.testing import running_gateway, until
from fieldgate_hwsim.coap_hostile import KINDS, send_hostile
from fieldgate_hwsim.coap_sim import ObservableSensor, SleepyDevice, free_udp_port

from tests.conftest import Proc
from tests.support.broker import Mosquitto
from tests.support.collector import Collector
from tests.support.contract import validate_reading

from .conftest import profile


async def test_push_and_polled_devices_reach_the_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    push_port = free_udp_port()
    async with ObservableSensor(profile("generic/senml"), seed=5) as sensor:
        text = (
            f"gateway: {{id: gw-coap, data_dir: {tmp_path / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, reconnect_min: 0.05s, reconnect_max: 0.2s}}\n"
            "buffer: {flush_interval: 50ms}\n"
            "devices:\n"
            f"  - {{id: bin-1, driver: coap, profile: dragino/ndds75, connection: {{mode: push, "
            f"listen: '127.0.0.1:{push_port}'}}}}\n"
            f"  - {{id: climate-1, driver: coap, profile: generic/senml, poll_interval: 0.2s, "
            f"connection: {{host: 127.0.0.1, port: {sensor.port}}}}}\n"
        )
        col = Collector(mosquitto.host, mosquitto.port)
        await asyncio.to_thread(col.connect)
        try:
            async with running_gateway(text, str(tmp_path / "t.yaml")):
                async with SleepyDevice(("127.0.0.1", push_port), "/t/bin-1", profile("dragino/ndds75"), seed=6,
                                        ack_timeout=0.2) as dev:
                    # the push server binds when the device's driver opens: the device retransmits meanwhile
                    for _ in range(3):
                        assert await dev.push(duplicates=1) == "2.04 Changed"
                        sensor.update()
                await until(lambda: len([r for r in col.readings() if r["device"] == "bin-1"]) >= 3
                            and len([r for r in col.readings() if r["device"] == "climate-1"]) >= 3,
                            what="readings of both devices")
        finally:
            await asyncio.to_thread(col.disconnect)
    readings = col.readings()
    for r in readings:
        validate_reading(r)
    pushed = [r for r in readings if r["device"] == "bin-1"]
    assert len(pushed) == 3  # duplicates were answered from the cache, not read twice
    assert all(r["meta"]["driver"] == "coap" for r in readings)
    assert pushed[0]["metrics"]["distance"]["unit"] == "mm"
    assert any("humidity" in r["metrics"] for r in readings if r["device"] == "climate-1")
    col.check_contract()


async def test_gateway_process_under_hostile_datagrams_accepts_every_valid_push(
        tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]) -> None:
    """Issue 14 from outside: ``fieldgate run`` with two push devices; between every hostile datagram (all
    kinds, plus seven ``t: 1e300`` reports, which used to isolate the device for ~10 s each) both devices push a
    valid report. Every valid push is answered 2.04 and reaches the broker; every hostile one is named."""
    port = free_udp_port()
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-coap, data_dir: {tmp_path / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, reconnect_min: 0.05s, reconnect_max: 0.2s}}\n"
        "buffer: {flush_interval: 50ms}\n"
        "web: {enabled: false}\n"
        "devices:\n"
        f"  - {{id: climate-1, driver: coap, profile: generic/senml, connection: {{mode: push, "
        f"listen: '127.0.0.1:{port}', rate_limit: {{rate: 1000, burst: 1000}}}}}}\n"
        f"  - {{id: bin-1, driver: coap, profile: dragino/ndds75, connection: {{mode: push, "
        f"listen: '127.0.0.1:{port}'}}}}\n")
    kinds = [*KINDS, *["senml_time_huge"] * 7]
    with Collector.for_broker(mosquitto) as col:
        proc = fieldgate_proc("run", "-c", str(cfg))
        async with SleepyDevice(("127.0.0.1", port), "/t/climate-1", profile("generic/senml"), seed=7,
                                ack_timeout=0.3, max_retransmit=5) as climate, \
                SleepyDevice(("127.0.0.1", port), "/t/bin-1", profile("dragino/ndds75"), seed=8,
                             ack_timeout=0.3, max_retransmit=5) as bin_:
            # retransmissions cover the start; a 4.04 means the device's route is not registered yet
            for dev in (climate, bin_):
                while (code := await dev.push()) == "4.04 Not Found":
                    pass
                assert code == "2.04 Changed"
            codes: list[str] = []

            async def valid(_i: int) -> None:
                codes.extend(await asyncio.gather(climate.push(), bin_.push()))

            report = await send_hostile("127.0.0.1", port, len(kinds), path="/t/climate-1", seed=9, wait=0.5,
                                        kinds=kinds, between=valid)
        assert codes == ["2.04 Changed"] * (2 * len(kinds)), codes
        want = 1 + len(kinds) + report.sent["senml_time_huge"]  # valid climate reports + the flagged ones
        await asyncio.to_thread(col.wait_for, lambda: len([r for r in col.readings() if r["device"] == "climate-1"])
                                >= want and len([r for r in col.readings() if r["device"] == "bin-1"])
                                >= 1 + len(kinds), 20, "every accepted report at the broker")
        await asyncio.to_thread(col.wait_for, lambda: any(e.get("kind") == "coap_refused" for e in col.events()),
                                20, "a coap_refused event")
        proc.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.popen.wait, 15) == 0
    readings = col.readings()
    for r in readings:
        validate_reading(r)
    assert not col.duplicates()
    climate_msgs = [r for r in readings if r["device"] == "climate-1"]
    flagged = [r for r in climate_msgs if any(m.get("reason") == "implausible_time" for m in r["metrics"].values())]
    assert len(flagged) == report.sent["senml_time_huge"] and len(climate_msgs) == want
    assert len([r for r in readings if r["device"] == "bin-1"]) == 1 + len(kinds)
    event = next(e for e in col.events() if e.get("kind") == "coap_refused")
    assert event["endpoint"] == f"127.0.0.1:{port}" and sum(event["refused"].values()) >= 1
    assert not any("Traceback" in line or "device isolated" in line for line in proc.stderr_lines), \
        "".join(proc.stderr_lines)
    refusal_lines = [line for line in proc.stderr_lines if "request(s) refused" in line]
    assert 1 <= len(refusal_lines) <= 3, refusal_lines  # a summary, never a line per datagram


async def test_a_stale_push_device_that_reports_again_is_accepted(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """``stale_after`` names a silent device; its next report is the recovery, not a 4.04 Not Found
    (which tells a device its path is wrong) nor lost to the retry backoff."""
    push_port = free_udp_port()
    text = (
        f"gateway: {{id: gw-coap, data_dir: {tmp_path / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, reconnect_min: 0.05s, reconnect_max: 0.2s}}\n"
        "buffer: {flush_interval: 50ms}\n"
        "devices:\n"
        # a long poll_interval: a device closed for being stale would stay closed for 30 s
        f"  - {{id: bin-1, driver: coap, profile: dragino/ndds75, poll_interval: 30s, connection: {{mode: push, "
        f"listen: '127.0.0.1:{push_port}', stale_after: 0.3s}}}}\n"
    )
    col = Collector(mosquitto.host, mosquitto.port)
    await asyncio.to_thread(col.connect)
    try:
        async with running_gateway(text, str(tmp_path / "t.yaml")) as (gw, _), \
                SleepyDevice(("127.0.0.1", push_port), "/t/bin-1", profile("dragino/ndds75"), seed=6,
                             ack_timeout=0.2) as dev:
            assert await dev.push() == "2.04 Changed"

            def stale() -> bool:
                snap = gw.device_snapshot("bin-1")
                return snap is not None and "no report" in (snap.last_error or "")

            await until(stale, what="the device reported stale")
            assert await dev.push() == "2.04 Changed"
            await until(lambda: len([r for r in col.readings() if r["device"] == "bin-1"]) >= 2,
                        what="the report after the stale time at the broker")
            await until(lambda: (s := gw.device_snapshot("bin-1")) is not None and s.state == "online",
                        what="the device online again")
    finally:
        await asyncio.to_thread(col.disconnect)
    assert col.per_device_in_order()

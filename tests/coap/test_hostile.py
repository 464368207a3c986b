"""Hostile CoAP input (issue 14): one datagram costs only itself, over real UDP, through the real gateway.

The gateway runs in the test's loop (``Gateway`` with a ``MemoryOutput``): its supervisor, the push
driver, the shared push endpoint and the normalizer are the product's own. Devices are hw-sim's
``SleepyDevice`` (valid reports) and ``coap_hostile`` (hand-encoded hostile datagrams).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.drivers.coap.payload import CF_SENML_JSON
from fieldgate.outputs import MemoryOutput
from fieldgate.testing import until
from fieldgate_hwsim.coap_hostile import KINDS, send_hostile
from fieldgate_hwsim.coap_sim import SleepyDevice, free_udp_port

from tests.support.contract import validate_reading

from .conftest import profile

TS = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$")  # reading.schema.json


def _config(port: int, rate: int = 1000) -> str:
    # A generous rate limit: the hostile datagrams must reach the parser, not die at the token bucket.
    return ("gateway: {id: gw-test, clock_check: off}\n"
            "devices:\n"
            f"  - {{id: climate-1, driver: coap, profile: generic/senml, connection: {{mode: push, "
            f"listen: '127.0.0.1:{port}', rate_limit: {{rate: {rate}, burst: {rate}}}}}}}\n"
            f"  - {{id: bin-1, driver: coap, profile: dragino/ndds75, connection: {{mode: push, "
            f"listen: '127.0.0.1:{port}', rate_limit: {{rate: {rate}, burst: {rate}}}}}}}\n")


@asynccontextmanager
async def gateway(port: int) -> AsyncIterator[tuple[Gateway, MemoryOutput]]:
    out = MemoryOutput()
    gw = Gateway(load_config_text(_config(port), "t.yaml"), out)
    task = asyncio.create_task(gw.run())
    try:
        await asyncio.wait_for(gw.ready.wait(), 10)
        # Both devices share one endpoint: a report to a path whose device has not registered yet is a 4.04.
        await until(lambda: all((r.driver_status() or {}).get("accepted") is not None for r in gw.runners.values()),
                    timeout=10, what="both push routes")
        yield gw, out
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 15)


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


def senml(t: float) -> bytes:
    return json.dumps([{"n": "temp", "u": "Cel", "v": 21.5, "t": t}]).encode()


async def test_a_hostile_time_costs_only_its_own_report(caplog: pytest.LogCaptureFixture) -> None:
    """``t: 1e300`` used to raise OverflowError in iso_ms: the device was isolated and pushes went unanswered."""
    port = free_udp_port()
    async with gateway(port) as (gw, out), \
            SleepyDevice(("127.0.0.1", port), "/t/climate-1", profile("generic/senml"), seed=1,
                         ack_timeout=0.3, max_retransmit=3) as dev:
        assert await dev.push() == "2.04 Changed"  # retransmits until the endpoint listens
        for t in (1e300, 1e16, -1e300, 2.0**62, 1e12):
            assert await dev.push(senml(t), CF_SENML_JSON) == "2.04 Changed"
            assert await dev.push() == "2.04 Changed"  # the next valid report is answered at once
        await out.wait_for(lambda o: len(o.by_device("climate-1")) == 11, timeout=10)
        runner = gw.runners["climate-1"]
        status = runner.driver_status()
        assert runner.stats.failures == 0 and runner.stats.state == "online"
    msgs = out.by_device("climate-1")
    for m in msgs:
        validate_reading(m)
    flagged = [m for m in msgs if m["metrics"].get("temperature", {}).get("reason") == "implausible_time"]
    assert len(flagged) == 5
    for m in flagged:
        assert m["metrics"]["temperature"] == {"value": 21.5, "unit": "Cel", "quality": "uncertain",
                                               "reason": "implausible_time"}
        assert m["ts"].startswith("20")  # the receive time stands in for the device's
    assert status is not None and status["flagged"] == {"implausible_time": 5}
    _no_tracebacks(caplog)


async def test_non_utf8_options_are_refused_with_a_named_reason(caplog: pytest.LogCaptureFixture) -> None:
    """A non-UTF-8 Uri-Path raised UnicodeDecodeError inside aiocoap's datagram callback (a traceback, no answer)."""
    port = free_udp_port()
    async with gateway(port) as (gw, _out), \
            SleepyDevice(("127.0.0.1", port), "/t/bin-1", profile("dragino/ndds75"), seed=2,
                         ack_timeout=0.3, max_retransmit=3) as dev:
        assert await dev.push() == "2.04 Changed"
        report = await send_hostile("127.0.0.1", port, 9, path="/t/bin-1", seed=3, wait=2.0,
                                    kinds=["uri_path_not_utf8", "uri_query_not_utf8", "content_format_long"])
        assert await dev.push() == "2.04 Changed"
        status = gw.runners["bin-1"].driver_status()
    assert report.answers["uri_path_not_utf8"] == {"4.02": 3}, report.table()
    assert report.answers["uri_query_not_utf8"] == {"4.02": 3}, report.table()
    assert report.answers["content_format_long"] == {"4.00": 3}, report.table()
    assert "Uri-Path" in report.diagnostics["uri_path_not_utf8"] and "UTF-8" in report.diagnostics["uri_path_not_utf8"]
    assert "Content-Format" in report.diagnostics["content_format_long"]
    assert status is not None
    refused = status["endpoint_refused"]
    assert refused["option_not_utf8"] == 6 and refused["bad_option"] == 3
    _no_tracebacks(caplog)


async def test_oversized_datagrams_are_refused_not_cut_and_accepted(caplog: pytest.LogCaptureFixture) -> None:
    """A 65000-byte datagram was cut to aiocoap's 4096-byte buffer and its first bytes read as a report."""
    port = free_udp_port()
    prof = profile("dragino/ndds75")
    good = bytes.fromhex("41105675647100640cd1070a1600")
    async with gateway(port) as (gw, out), \
            SleepyDevice(("127.0.0.1", port), "/t/bin-1", prof, seed=4, ack_timeout=0.3, max_retransmit=3) as dev:
        assert await dev.push() == "2.04 Changed"
        assert await dev.push(good + bytes(1200), 42) == "4.13 Request Entity Too Large"
        assert await dev.push(good + bytes(60000), 42) == "4.13 Request Entity Too Large"
        assert await dev.push() == "2.04 Changed"
        await out.wait_for(lambda o: len(o.by_device("bin-1")) == 2)
        status = gw.runners["bin-1"].driver_status()
    assert status is not None and status["endpoint_refused"]["too_large"] == 2
    assert len(out.by_device("bin-1")) == 2
    _no_tracebacks(caplog)


async def test_every_hostile_kind_is_named_and_valid_pushes_between_them_are_all_accepted(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_udp_port()
    kinds = list(KINDS)
    async with gateway(port) as (gw, out), \
            SleepyDevice(("127.0.0.1", port), "/t/climate-1", profile("generic/senml"), seed=5,
                         ack_timeout=0.3, max_retransmit=3) as dev:
        assert await dev.push() == "2.04 Changed"
        codes: list[str] = []

        async def valid(_i: int) -> None:
            codes.append(await dev.push())

        report = await send_hostile("127.0.0.1", port, 2 * len(kinds), path="/t/climate-1", seed=6, wait=0.5,
                                    between=valid)
        await out.wait_for(lambda o: len([m for m in o.by_device("climate-1")
                                          if "humidity" in m["metrics"]]) == 1 + 2 * len(kinds), timeout=10)
        runner = gw.runners["climate-1"]
        status = runner.driver_status()
        assert runner.stats.failures == 0
    assert codes == ["2.04 Changed"] * (2 * len(kinds)), codes
    for kind, due in KINDS.items():
        answers = report.answers[kind]
        if kind == "senml_time_huge":
            assert answers == {"2.04": 2}, (kind, report.table())  # accepted, flagged: see the time test
        elif kind == "oversized_64k" and "send_failed" in answers:
            continue
        elif due:
            assert "none" not in answers and all(c.startswith("4.") or c == "RST" for c in answers), \
                (kind, report.table())
        else:
            assert answers == {"none": 2}, (kind, report.table())
    assert status is not None
    refused: dict[str, Any] = status["endpoint_refused"]
    arrived = report.total - report.sent["senml_time_huge"] - sum(a["send_failed"] for a in report.answers.values())
    assert sum(refused.values()) == arrived, (refused, report.table())  # every one counted under a reason
    print(report.table(), refused, sep="\n")
    assert "internal_error" not in refused
    for m in out.by_device("climate-1"):
        validate_reading(m)
        assert TS.match(m["ts"])
    _no_tracebacks(caplog)


async def test_hostile_cli_prints_what_came_back_per_kind() -> None:
    import sys

    port = free_udp_port()
    async with gateway(port) as (gw, _out):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fieldgate_hwsim.coap_hostile", "--to", f"127.0.0.1:{port}", "--path",
            "/t/climate-1", "--count", str(len(KINDS)), "--wait", "0.5", "--seed", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        status = gw.runners["climate-1"].driver_status()
    lines = out.decode().splitlines()
    assert lines[0].split() == ["kind", "sent", "answers"] and len(lines) == 1 + len(KINDS)
    assert any(line.startswith("uri_path_not_utf8") and "4.02 x1" in line for line in lines), lines
    assert status is not None and sum(status["endpoint_refused"].values()) >= len(KINDS) - 2
    bad = await asyncio.create_subprocess_exec(sys.executable, "-m", "fieldgate_hwsim.coap_hostile", "--kinds", "nope",
                                               stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(bad.communicate(), 30)
    assert bad.returncode == 2 and b"unknown kind" in err

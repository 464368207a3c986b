"""The status page API against a running gateway with simulated devices (aiohttp test client)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fieldgate.config import WebConfig
from fieldgate.errors import GatewayError
from fieldgate.web import start_web
from fieldgate.web.logring import LogRing

from .conftest import MakeClient, Running, hub_of

BROKEN_PROFILE = """\
schema_version: 1
driver: sim
vendor: test
model: broken
points:
  - {name: voltage, unit: V, decimals: 1, range: [260, 180], sim: {shape: sine, min: 226, max: 234}}
  - {name: current, unti: A, sim: {shape: randm, min: 0, max: 1}}
  - {name: power, unit: Watt, sim: {shape: sine, min: 0, max: 1}}
"""


async def test_status_overview(running: Running, make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/api/v1/status")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    doc = await resp.json()
    assert doc["gateway"] == "gw-web" and doc["devices"]["total"] == 2
    assert doc["uplink"] == {**doc["uplink"], "kind": "memory", "state": "none"}
    assert doc["buffer"] is None
    assert doc["clock"] == {"synced": True, "check": "off"}
    assert doc["system"]["rss_bytes"] > 0 and doc["uptime_s"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["started"])


async def test_devices_show_state_values_and_poll_statistics(running: Running, make_client: MakeClient) -> None:
    await running.out.wait_for(lambda o: len(o.by_device("meter-1")) >= 2 and len(o.by_device("air-1")) >= 1)
    client = await make_client()
    devices = {d["id"]: d for d in (await (await client.get("/api/v1/devices")).json())["devices"]}
    meter = devices["meter-1"]
    assert meter["state"] == "online" and meter["driver"] == "sim" and meter["polls"] >= 2
    assert meter["failures"] == 0 and meter["last_error"] is None and meter["latency_ms"] is not None
    assert meter["metrics"]["voltage"]["unit"] == "V" and meter["metrics"]["voltage"]["quality"] == "good"
    assert not meter["metrics"]["voltage"]["stale"]
    assert isinstance(meter["metrics"]["energy"]["value"], float)
    assert meter["tags"] == {"site": "depot"} and meter["last_reading"].endswith("Z")
    assert devices["air-1"]["metrics"]


async def test_device_detail_and_unknown_device(running: Running, make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/api/v1/devices/meter-1")
    doc = await resp.json()
    assert resp.status == 200
    assert doc["config"] == {"timeout_s": 5.0, "offline_after": 2, "backoff_max_s": 0.2, "bus": None}
    assert [p["name"] for p in doc["profile_info"]["points"]][:2] == ["voltage", "current"]
    assert "connection" not in doc  # driver connection settings may hold secrets: never shown
    # what the open driver reports about itself (the sim driver: its polls and fault setting)
    assert doc["driver_status"]["fault"] == "none" and doc["driver_status"]["polls"] >= 1
    resp = await client.get("/api/v1/devices/nope")
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    assert (await client.get("/api/v1/devices/nope/stream")).status == 404


async def test_broken_device_goes_offline_with_an_event(running: Running, make_client: MakeClient) -> None:
    client = await make_client()
    hub = hub_of(client)
    await running.out.wait_for(lambda o: ("meter-1", "online", None) in o.statuses)
    hub.tick()  # the page has seen it online
    running.control.write_text("timeout")
    await running.out.wait_for(lambda o: o.statuses[-1][:2] == ("meter-1", "offline"))
    hub.tick()
    doc = await (await client.get("/api/v1/devices/meter-1")).json()
    assert doc["state"] == "offline" and doc["last_error"] == "simulated timeout"
    assert doc["consecutive_failures"] >= 2 and doc["last_error_ts"]
    # the last values are still shown, marked stale rather than good
    assert doc["metrics"] and all(m["stale"] for m in doc["metrics"].values())
    events = (await (await client.get("/api/v1/events?device=meter-1")).json())["events"]
    # the page's own loop may also have seen the short "degraded" step in between
    assert events[0] | {"id": 0, "ts": "", "previous": ""} == {
        "id": 0, "ts": "", "previous": "", "kind": "device_state", "device": "meter-1", "state": "offline",
        "error": "simulated timeout"}
    assert [e["state"] for e in reversed(events)][:1] in (["degraded"], ["offline"])
    running.control.write_text("none")
    await running.out.wait_for(lambda o: o.statuses[-1] == ("meter-1", "online", None))
    hub.tick()
    doc = await (await client.get("/api/v1/devices/meter-1")).json()
    assert not any(m["stale"] for m in doc["metrics"].values())
    events = (await (await client.get("/api/v1/events")).json())["events"]
    assert (events[0]["state"], events[0]["previous"]) == ("online", "offline")


async def test_output_events_are_shown_and_the_tap_is_removed(running: Running, make_client: MakeClient) -> None:
    client = await make_client()
    running.out.event("config_rejected", errors=["t.yaml:3:1: devices: password=hunter22 is wrong"])
    events = (await (await client.get("/api/v1/events?limit=5")).json())["events"]
    assert events[0]["kind"] == "config_rejected"
    assert events[0]["errors"] == ["t.yaml:3:1: devices: password=*** is wrong"]
    assert running.out.events[-1]["kind"] == "config_rejected"  # the real output still got it
    assert (await client.get("/api/v1/events?limit=0")).status == 400
    await client.close()
    assert "event" not in vars(running.out)


async def test_log_lines_are_recent_filtered_and_redacted(make_client: MakeClient, ring: LogRing) -> None:
    ring.redact.add("s3cret-value")
    client = await make_client()
    logging.getLogger("fieldgate.test").warning("connecting with s3cret-value and token=abc123")
    logging.getLogger("fieldgate.test").debug("a detail")
    lines = (await (await client.get("/api/v1/logs?level=WARNING")).json())["lines"]
    mine = [entry for entry in lines if entry["logger"] == "fieldgate.test"]
    assert [entry["message"] for entry in mine] == ["connecting with *** and token=***"]
    assert mine[0]["level"] == "WARNING"
    lines = (await (await client.get("/api/v1/logs?limit=500")).json())["lines"]
    assert any(entry["message"] == "a detail" for entry in lines)
    assert (await client.get("/api/v1/logs?level=LOUD")).status == 400
    assert (await client.get("/api/v1/logs?limit=x")).status == 400


def _cli_validate(folder: Path, name: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "fieldgate.cli", "validate", name], cwd=folder,
                          capture_output=True, text=True, timeout=60, check=False)
    return (proc.stderr or proc.stdout).splitlines()


async def _check(client: Any, text: str, filename: str | None) -> dict[str, Any]:
    token = (await (await client.get("/api/v1/session")).json())["csrf_token"]
    resp = await client.post("/api/v1/profile-check", json={"text": text, "filename": filename},
                             headers={"X-CSRF-Token": token})
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


@pytest.mark.parametrize(("name", "text"), [
    ("bad-meter.yaml", BROKEN_PROFILE),
    ("syntax.yaml", "schema_version: 1\ndriver: sim\npoints: [\n"),
    ("dup.yaml", "schema_version: 1\ndriver: sim\ndriver: sim\nvendor: x\nmodel: y\npoints: []\n"),
    ("good.yaml", (Path(__file__).parents[2] / "drivers/sim/profiles/energy-meter.yaml").read_text()),
])
async def test_profile_check_shows_exactly_what_fieldgate_validate_prints(
        make_client: MakeClient, tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    cli = await asyncio.to_thread(_cli_validate, tmp_path, name)
    client = await make_client()
    result = await _check(client, text, name)
    assert [d["text"] for d in result["diagnostics"]] + [result["summary"]] == cli
    assert result["valid"] == (name == "good.yaml")


async def test_profile_check_defaults_the_name_and_refuses_bad_bodies(make_client: MakeClient) -> None:
    client = await make_client()
    result = await _check(client, BROKEN_PROFILE, None)
    assert result["diagnostics"][0]["text"].startswith("pasted.yaml:6:50: points[0].range: ")
    result = await _check(client, BROKEN_PROFILE, "../../etc/passwd")
    assert result["file"] == "passwd.yaml"
    token = (await (await client.get("/api/v1/session")).json())["csrf_token"]
    for body in ({"filename": "x"}, {"text": 3}, [1, 2], {"text": "x", "filename": 5}):
        resp = await client.post("/api/v1/profile-check", json=body, headers={"X-CSRF-Token": token})
        assert resp.status == 400, body
    resp = await client.post("/api/v1/profile-check", data=b"{not json", headers={"X-CSRF-Token": token})
    assert resp.status == 400
    resp = await client.post("/api/v1/profile-check", json={"text": "x" * 300_000}, headers={"X-CSRF-Token": token})
    assert resp.status == 413


_SAMPLE = re.compile(r'^([a-z_]+)(\{([a-z_]+="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.]+(e[+-]?[0-9]+)?|NaN)$')


async def test_metrics_are_valid_prometheus_text(running: Running, make_client: MakeClient) -> None:
    await running.out.wait_for(lambda o: len(o.by_device("meter-1")) >= 2)
    client = await make_client()
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    typed: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            typed[name] = kind
        elif not line.startswith("# HELP "):
            m = _SAMPLE.match(line)
            assert m, line
            family = re.sub(r"_(sum|count)$", "", m.group(1)) if m.group(1) not in typed else m.group(1)
            assert family in typed, line
            samples[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    assert samples['fieldgate_device_polls_total{device="meter-1"}'] >= 2
    assert samples['fieldgate_device_poll_errors_total{device="meter-1"}'] == 0
    assert samples['fieldgate_device_state{device="meter-1",state="online"}'] == 1
    assert samples['fieldgate_device_poll_duration_seconds_count{device="meter-1"}'] >= 2
    assert samples['fieldgate_uplink_state{state="none"}'] == 1
    assert samples["fieldgate_uplink_published_total"] == 0
    assert typed["fieldgate_device_polls_total"] == "counter"
    assert typed["fieldgate_device_poll_duration_seconds"] == "summary"


async def test_metrics_of_a_buffered_uplink(running: Running, make_client: MakeClient) -> None:
    """The buffer and uplink figures, from an output shaped like ``BufferedUplink.snapshot()``."""
    from fieldgate.web.metrics import render_metrics

    client = await make_client()
    hub = hub_of(client)

    class FakeUplink:  # says what it is: the page does not go by class names
        kind = "mqtt"

        def __init__(self) -> None:
            self.published = 10

        def snapshot(self) -> dict[str, Any]:
            return {"state": "connected", "broker": "mqtt://127.0.0.1:1883", "last_error": None,
                    "connected_since": "2026-01-01T00:00:00.000Z", "published": self.published, "acked": 9,
                    "resent": 0, "connects": 1, "inflight": 1, "pending": 0,
                    "buffer": {"depth": 3, "oldest_ts": "2026-01-01T00:00:00.000Z", "bytes": 4096, "dropped": 2,
                               "last_seq": 12, "disk_full": False, "spilled": 0}}

    up = FakeUplink()
    hub.output = up
    hub.tick()
    up.published = 20
    hub.tick()
    text = render_metrics(hub)
    assert "fieldgate_buffer_depth 3\n" in text and "fieldgate_buffer_dropped_total 2\n" in text
    assert 'fieldgate_uplink_state{state="connected"} 1\n' in text and "fieldgate_uplink_connected 1\n" in text
    assert "fieldgate_uplink_publish_rate " in text and "fieldgate_buffer_oldest_age_seconds " in text
    doc = await (await client.get("/api/v1/status")).json()
    assert doc["uplink"]["kind"] == "mqtt" and doc["uplink"]["publish_rate"] > 0
    assert doc["buffer"]["depth"] == 3 and doc["buffer"]["oldest_age_s"] > 0


async def test_live_stream_sends_values_as_they_change(running: Running, make_client: MakeClient) -> None:
    client = await make_client()
    polls: list[int] = []
    async with client.get("/api/v1/devices/meter-1/stream") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        event = None
        async with asyncio.timeout(10):
            while len(polls) < 3 or polls[-1] <= polls[0]:
                line = (await resp.content.readline()).decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    assert event == "device"
                    doc = json.loads(line[6:])
                    assert doc["device"]["id"] == "meter-1" and doc["status"]["gateway"] == "gw-web"
                    polls.append(doc["device"]["polls"])
    async with client.get("/api/v1/stream") as resp:
        async with asyncio.timeout(10):
            while not (line := (await resp.content.readline()).decode()).startswith("data: "):
                pass
        assert {d["id"] for d in json.loads(line[6:])["devices"]} == {"meter-1", "air-1"}


async def test_streams_end_when_the_server_closes(running: Running, make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/api/v1/stream")
    await resp.content.readline()
    await asyncio.wait_for(client.close(), 5)  # would wait out the shutdown timeout if streams hung
    assert hub_of(client)._subscribers == set()


async def test_openapi_document_lists_the_api(make_client: MakeClient) -> None:
    client = await make_client()
    doc = await (await client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert {"/api/v1/status", "/api/v1/devices/{id}", "/api/v1/profile-check", "/metrics"} <= set(doc["paths"])


async def test_pages_are_served_without_external_resources(make_client: MakeClient) -> None:
    client = await make_client()
    for path in ("/", "/devices", "/devices/meter-1", "/quality", "/events", "/check"):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "text/html", path
    html = await (await client.get("/")).text()
    js = await (await client.get("/static/app.js")).text()
    css = await (await client.get("/static/style.css")).text()
    assert set(re.findall(r'(?:src|href)="([^"]+)"', html)) >= {"/static/uplot.min.js", "/static/uplot.min.css"}
    chart_js = await (await client.get("/static/uplot.min.js")).text()
    chart_css = await (await client.get("/static/uplot.min.css")).text()
    assert "uPlot" in chart_js and ".u-legend" in chart_css  # the chart library is served by the gateway itself
    chart_js = re.sub(r"^/\*!.*?\*/", "", chart_js, flags=re.S)  # its license banner names its home page
    for text in (html, js, css, chart_js, chart_css):
        assert not re.search(r"https?://", text)
    assert "innerHTML" not in js


async def test_reload_without_a_config_file_is_refused(make_client: MakeClient) -> None:
    client = await make_client()
    token = (await (await client.get("/api/v1/session")).json())["csrf_token"]
    resp = await client.post("/api/v1/reload", headers={"X-CSRF-Token": token})
    assert resp.status == 409


async def test_reload_is_requested(running: Running, make_client: MakeClient) -> None:
    calls: list[bool] = []
    running.gw.loader = lambda: calls.append(True) or running.gw.loaded  # type: ignore[assignment,func-returns-value]
    client = await make_client()
    token = (await (await client.get("/api/v1/session")).json())["csrf_token"]
    assert (await client.post("/api/v1/reload")).status == 403
    resp = await client.post("/api/v1/reload", headers={"X-CSRF-Token": token})
    assert resp.status == 202 and calls == [True]


# --- start_web -------------------------------------------------------------------------------


async def test_start_web_on_port_zero_serves_and_closes(running: Running) -> None:
    server = await start_web(running.gw, running.out, WebConfig(listen="127.0.0.1:0"), log_ring=LogRing())
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", server.url)
        async with aiohttp.ClientSession() as session, session.get(server.url + "api/v1/status") as resp:
            assert resp.status == 200 and (await resp.json())["gateway"] == "gw-web"
    finally:
        await server.close()


async def test_start_web_on_a_taken_port_raises_a_clear_error(running: Running) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(GatewayError, match=re.escape(f"cannot listen on 127.0.0.1:{port}")) as info:
            await start_web(running.gw, running.out, WebConfig(listen=f"127.0.0.1:{port}"), log_ring=LogRing())
    assert "another program uses this port" in str(info.value)


async def test_start_web_with_an_unreadable_password_raises(running: Running, tmp_path: Path) -> None:
    cfg = WebConfig(listen="127.0.0.1:0", password={"file": tmp_path / "missing"})  # type: ignore[arg-type]
    with pytest.raises(GatewayError, match=r"cannot read web\.password"):
        await start_web(running.gw, running.out, cfg, log_ring=LogRing())

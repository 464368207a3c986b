"""The local API's command route: who may send, when it is off, and what a command does through it.

The positive path runs the real executor of a gateway built by the composition root, with a CoAP
valve controller served by hw-sim's aiocoap simulator: the simulator counts the writes that
reached it, so a refused command is seen to send nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fieldgate.web.app import create_app
from fieldgate.web.auth import PasswordHash
from fieldgate.web.logring import LogRing

from tests.support.contract import validate_command_result

from .conftest import PASSWORD, MakeClient, Valve

WRITE = {"schema": "fieldgate.command/1", "id": "t-1", "op": "write", "metrics": {"setpoint": 42.5}}


async def browser(client: TestClient[Any, Any]) -> dict[str, str]:
    """A browser's headers: the CSRF token of its cookie (the client's jar keeps the cookie)."""
    doc = await (await client.get("/api/v1/session")).json()
    return {"X-CSRF-Token": doc.get("csrf_token", "none: refused before the session")}


# --- refusals: the page's rules, and commands off --------------------------------------------------


async def test_commands_route_refuses_clients_off_loopback_without_a_password(make_client: MakeClient) -> None:
    client = await make_client(remote="192.0.2.10")
    resp = await client.post("/api/v1/devices/meter-1/commands", json=WRITE, headers=await browser(client))
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"


async def test_commands_route_needs_a_login_when_a_password_is_set(make_client: MakeClient,
                                                                   password_hash: PasswordHash) -> None:
    client = await make_client(password=password_hash)
    resp = await client.post("/api/v1/devices/meter-1/commands", json=WRITE, headers=await browser(client))
    assert resp.status == 401
    resp = await client.post("/api/v1/devices/meter-1/commands", json=WRITE,
                             headers={"Authorization": "Bearer not-the-password"})
    assert resp.status == 401 and (await resp.json())["message"] == "wrong token"
    resp = await client.get("/api/v1/devices/meter-1/commands")
    assert resp.status == 401


async def test_commands_route_refuses_another_origin_and_a_missing_csrf_token(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/api/v1/devices/meter-1/commands", json=WRITE,
                             headers={**await browser(client), "Origin": "http://evil.example"})
    assert resp.status == 403 and (await resp.json())["error"] == "csrf"
    other_port = f"http://127.0.0.1:{client.port + 1}"  # another program on this machine is another origin
    resp = await client.post("/api/v1/devices/meter-1/commands", json=WRITE,
                             headers={**await browser(client), "Origin": other_port})
    assert resp.status == 403
    resp = await client.post("/api/v1/devices/meter-1/commands", json=WRITE)  # no token
    assert resp.status == 403 and "X-CSRF-Token" in (await resp.json())["message"]


async def test_commands_route_is_off_when_the_gateway_takes_no_commands(make_client: MakeClient) -> None:
    client = await make_client()  # a gateway without `commands:` (off by default)
    resp = await client.post("/api/v1/devices/meter-1/commands", json=WRITE, headers=await browser(client))
    body = await resp.json()
    assert resp.status == 409 and body["error"] == "commands_off" and "commands.enabled" in body["message"]
    doc = await (await client.get("/api/v1/devices/meter-1/commands")).json()
    assert doc["enabled"] is False and "commands.enabled" in doc["reason"] and doc["recent"] == []
    resp = await client.post("/api/v1/devices/nope/commands", json=WRITE, headers=await browser(client))
    assert resp.status == 404


# --- a gateway that takes commands --------------------------------------------------------------------


async def _client(valve: Valve, *, commands: bool = True,
                  password: PasswordHash | None = None) -> TestClient[Any, Any]:
    app = create_app(valve.gw, valve.out, log_ring=LogRing(), interval=0.05, commands=commands,
                     password_hash=password)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_web_commands_off_keeps_the_route_closed_even_with_commands_enabled(valve: Valve) -> None:
    client = await _client(valve, commands=False)
    try:
        resp = await client.post("/api/v1/devices/valve-1/commands", json=WRITE, headers=await browser(client))
        body = await resp.json()
        doc = await (await client.get("/api/v1/devices/valve-1/commands")).json()
    finally:
        await client.close()
    assert resp.status == 409 and "web.commands" in body["message"]
    assert doc["enabled"] is False and valve.sensor.writes == []


async def test_a_write_through_the_local_api_reaches_the_device_and_is_read_back(valve: Valve,
                                                                                 password_hash: PasswordHash
                                                                                 ) -> None:
    client = await _client(valve, password=password_hash)
    try:
        before = await (await client.get("/api/v1/devices/valve-1/commands",
                                         headers={"Authorization": f"Bearer {PASSWORD}"})).json()
        resp = await client.post("/api/v1/devices/valve-1/commands", json=WRITE,
                                 headers={"Authorization": f"Bearer {PASSWORD}"})
        result = await resp.json()
        again = await (await client.post("/api/v1/devices/valve-1/commands", json=WRITE,
                                         headers={"Authorization": f"Bearer {PASSWORD}"})).json()
        after = await (await client.get("/api/v1/devices/valve-1/commands",
                                        headers={"Authorization": f"Bearer {PASSWORD}"})).json()
    finally:
        await client.close()
    assert before["enabled"] is True and [p["name"] for p in before["writable"]] == ["setpoint", "relay"]
    assert before["writable"][0]["write_range"] == [0, 100] and before["writable"][0]["unit"] == "%"
    assert resp.status == 200, result
    validate_command_result(result)
    assert result["status"] == "ok" and result["metrics"]["setpoint"]["value"] == pytest.approx(42.5)
    assert again["id"] == "t-1" and again.get("duplicate") is True  # at most once per (device, id)
    assert len(valve.sensor.writes) == 1 and valve.sensor.writes[0][0] == "PUT"
    [entry] = [e for e in after["recent"] if e["result"]["id"] == "t-1" and not e["result"].get("duplicate")]
    assert entry["origin"] == "local-api" and entry["result"]["status"] == "ok"
    assert entry["command"]["metrics"] == {"setpoint": 42.5}


@pytest.mark.parametrize(("metrics", "reason"), [
    ({"setpoint": 250}, "out_of_range"), ({"level": 3}, "read_only"), ({"nozzle": 1}, "unknown_point")])
async def test_refused_writes_through_the_local_api_send_nothing(valve: Valve, metrics: dict[str, Any],
                                                                 reason: str) -> None:
    client = await _client(valve)
    try:
        resp = await client.post("/api/v1/devices/valve-1/commands", headers=await browser(client),
                                 json={**WRITE, "id": f"bad-{reason}", "metrics": metrics})
        result = await resp.json()
    finally:
        await client.close()
    assert resp.status == 200
    validate_command_result(result)
    assert result["status"] == "rejected" and reason in result["reason"]
    assert valve.sensor.writes == []  # the executor answered before any device I/O


async def test_bad_bodies_get_a_named_error(valve: Valve) -> None:
    client = await _client(valve)
    try:
        url = "/api/v1/devices/valve-1/commands"
        not_json = await client.post(url, data=b"{nope", headers=await browser(client))
        not_json_body = await not_json.json()
        huge = await client.post(url, headers=await browser(client), data=b'{"x": "' + b"a" * 20000 + b'"}')
        bad = await client.post(url, headers=await browser(client), json={"op": "write"})
        bad_result = await bad.json()
    finally:
        await client.close()
    assert not_json.status == 400 and not_json_body["error"] == "bad_request"
    assert huge.status == 413
    assert bad.status == 200 and bad_result["status"] == "rejected" and "bad_message" in bad_result["reason"]
    assert valve.sensor.writes == []


async def test_a_write_the_device_refuses_is_failed_with_its_reason(valve: Valve) -> None:
    valve.sensor.refuse_writes = "4.03"
    client = await _client(valve)
    try:
        resp = await client.post("/api/v1/devices/valve-1/commands", headers=await browser(client),
                                 json={**WRITE, "id": "t-refused"})
        result = await resp.json()
    finally:
        await client.close()
    validate_command_result(result)
    assert result["status"] == "failed" and result["reason"] == "coap_4.03"
    assert len(valve.sensor.writes) == 1  # it reached the device once, which said no

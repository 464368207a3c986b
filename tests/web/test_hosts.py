"""DNS rebinding: the status page answers only requests whose Host (and Origin) name this gateway.

The end-to-end tests run the real ``fieldgate run`` process and speak raw HTTP to it, as a browser
on a rebound name would (``Host: evil.example:PORT``), in both modes: loopback without a password,
and a password-protected page listening on every address.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fieldgate.config import load_config_text
from fieldgate.errors import ConfigError
from fieldgate.web.hosts import HostPolicy, split_host

from ..conftest import Proc
from .conftest import PASSWORD, GatewayProcess, process_yaml, start_gateway_process

# --- the rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("LocalHost", ("localhost", None)), ("[::1]:80", ("::1", 80)),
    ("gw.example.:8080", ("gw.example", 8080)), ("", None), ("a:b", None), ("a:0", None), ("a:70000", None),
    ("::1", None), ("[::1", None), ("[::1]x", None), ("evil.example/x", None), ("u@evil.example", None),
    ("a b", None), ("host:", None),
])
def test_split_host(value: str, expected: tuple[str, int | None] | None) -> None:
    assert split_host(value) == expected


@pytest.mark.parametrize(("listen", "allowed", "host", "local", "ok"), [
    ("127.0.0.1", (), "127.0.0.1:8080", "127.0.0.1", True),
    ("127.0.0.1", (), "localhost:8080", "127.0.0.1", True),
    ("127.0.0.1", (), "[::1]:8080", "::1", True),
    ("127.0.0.1", (), "127.3.4.5:8080", "127.0.0.1", True),
    ("127.0.0.1", (), "evil.example:8080", "127.0.0.1", False),
    ("127.0.0.1", (), "localhost.evil.example:8080", "127.0.0.1", False),
    ("127.0.0.1", (), "192.0.2.7:8080", "127.0.0.1", False),  # an address that is not ours
    ("0.0.0.0", (), "192.0.2.7:8080", "192.0.2.7", True),  # the address the request came in on
    ("0.0.0.0", (), "192.0.2.8:8080", "192.0.2.7", False),
    ("192.0.2.7", (), "192.0.2.7:8080", "192.0.2.7", True),
    ("gw-12.plant.example", (), "GW-12.plant.example:8080", "192.0.2.7", True),
    ("0.0.0.0", ("gw-12.plant.example",), "gw-12.plant.example", "192.0.2.7", True),
    ("0.0.0.0", ("*.plant.example",), "gw-3.plant.example:8080", "192.0.2.7", True),
    ("0.0.0.0", ("*.plant.example",), "plant.example.evil.example:8080", "192.0.2.7", False),
    ("0.0.0.0", ("*.plant.example",), "evilplant.example:8080", "192.0.2.7", False),
    ("0.0.0.0", (), None, "192.0.2.7", False),
    ("0.0.0.0", (), "", "192.0.2.7", False),
])
def test_host_rule(listen: str, allowed: tuple[str, ...], host: str | None, local: str, ok: bool) -> None:
    reason = HostPolicy.build(listen, allowed, hostname="").check_host(host, local)
    assert (reason is None) is ok, reason
    if not ok:
        assert "Host" in reason or "web.allowed_hosts" in reason  # type: ignore[operator]


@pytest.mark.parametrize(("listen", "host", "ok"), [
    ("0.0.0.0", "gw-7:8080", True), ("0.0.0.0", "GW-7.local", True), ("::", "gw-7.local:80", True),
    ("127.0.0.1", "gw-7:8080", False),  # a loopback page answers loopback names only
    ("0.0.0.0", "gw-7.evil.example", False),
])
def test_the_machines_own_name_when_listening_everywhere(listen: str, host: str, ok: bool) -> None:
    assert (HostPolicy.build(listen, hostname="gw-7").check_host(host, "192.0.2.7") is None) is ok


@pytest.mark.parametrize(("origin", "host", "ok"), [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
    ("http://localhost:8080", "127.0.0.1:8080", True),
    ("http://evil.example:8080", "127.0.0.1:8080", False),
    ("http://127.0.0.1:9999", "127.0.0.1:8080", False),  # another program on this machine
    ("http://127.0.0.1", "127.0.0.1", True),
    ("https://127.0.0.1", "127.0.0.1", False),  # port 443 against Host's 80
    ("ftp://127.0.0.1:8080", "127.0.0.1:8080", False),
    ("http://127.0.0.1:8080/x", "127.0.0.1:8080", False),
    ("http://127.0.0.1:99999", "127.0.0.1:8080", False),
    ("null", "127.0.0.1:8080", False),
])
def test_origin_rule(origin: str, host: str, ok: bool) -> None:
    reason = HostPolicy.build("127.0.0.1").check_origin(origin, host, "127.0.0.1")
    assert (reason is None) is ok, reason


@pytest.mark.parametrize("bad", ["http://gw.example", "gw.example:8080", "", "*", "gw/x"])
def test_allowed_hosts_config_refuses_what_is_not_a_name(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(f"gateway: {{id: gw}}\nweb: {{allowed_hosts: [{json.dumps(bad)}]}}\ndevices: []\n", "t.yaml")
    text = "\n".join(str(d) for d in info.value.diagnostics)
    assert "t.yaml:2:" in text and "allowed_hosts" in text, text


def test_allowed_hosts_config_is_read() -> None:
    loaded = load_config_text("gateway: {id: gw}\nweb: {allowed_hosts: [gw-12.plant.example, '*.lan']}\n"
                              "devices: []\n", "t.yaml")
    assert loaded.config.web.allowed_hosts == ["gw-12.plant.example", "*.lan"]


# --- the real gateway, from outside ------------------------------------------------------------

EVERY_GET = ["/", "/devices", "/devices/meter-1", "/events", "/check", "/login", "/static/app.js",
             "/api/v1/status", "/api/v1/devices", "/api/v1/devices/meter-1", "/api/v1/events", "/api/v1/logs",
             "/api/v1/session", "/api/v1/openapi.json", "/api/v1/stream", "/api/v1/devices/meter-1/stream",
             "/api/v1/history", "/api/v1/devices/meter-1/history", "/api/v1/quality", "/metrics"]
EVERY_POST = ["/api/v1/reload", "/api/v1/login", "/api/v1/logout", "/api/v1/profile-check"]


def _request(url: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        # a stream that was (wrongly) accepted would never end: read only its start
        data = resp.read(4096) if resp.getheader("Content-Type", "").startswith("text/event-stream") else resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def _csrf(url: str, host: str, auth: dict[str, str]) -> str:
    status, _, body = _request(url, "GET", "/api/v1/session", {"Host": host, **auth})
    assert status == 200, body
    return str(json.loads(body)["csrf_token"])


def _assert_refused(gp: GatewayProcess, host: str, auth: dict[str, str]) -> None:
    port = urlsplit(gp.url).port
    token = _csrf(gp.url, f"127.0.0.1:{port}", auth)
    for path in EVERY_GET:
        status, headers, body = _request(gp.url, "GET", path, {"Host": host, **auth})
        assert status == 421, (path, status, body[:200])
        assert "set-cookie" not in headers, path
        assert b"gw-web" not in body and b"meter-1" not in body, path  # no data at all
        assert json.loads(body)["error"] == "misdirected_request"
    for path in EVERY_POST:
        status, headers, body = _request(
            gp.url, "POST", path, {"Host": host, "Origin": f"http://{host}", "Content-Type": "application/json",
                                   "X-CSRF-Token": token, "Cookie": f"fg_csrf={token}", **auth}, b"{}")
        assert status == 421, (path, status, body[:200])
    assert "configuration reload requested" not in gp.lines()


def _assert_origin_checked(gp: GatewayProcess, auth: dict[str, str]) -> None:
    port = urlsplit(gp.url).port
    host = f"127.0.0.1:{port}"
    token = _csrf(gp.url, host, auth)
    form = {"Content-Type": "application/json", "X-CSRF-Token": token, "Cookie": f"fg_csrf={token}"}
    for origin in (f"http://evil.example:{port}", f"http://127.0.0.1:{port + 1 if port < 65535 else 1}"):
        status, _, body = _request(gp.url, "POST", "/api/v1/reload", {"Host": host, "Origin": origin, **form, **auth},
                                   b"{}")
        assert status == 403 and json.loads(body)["error"] == "csrf", (origin, status, body)
        status, _, body = _request(gp.url, "GET", "/api/v1/status", {"Host": host, "Origin": origin, **auth})
        assert status == 403 and b"gw-web" not in body, (origin, status, body)
    assert "configuration reload requested" not in gp.lines()


def test_rebinding_is_refused_on_a_loopback_page_without_password(
        tmp_path: Path, fieldgate_proc: Callable[..., Proc]) -> None:
    gp = start_gateway_process(fieldgate_proc, tmp_path, process_yaml(tmp_path), stdout=True)
    port = urlsplit(gp.url).port
    for host in (f"evil.example:{port}", "evil.example", f"localhost.evil.example:{port}", f"192.0.2.1:{port}"):
        _assert_refused(gp, host, {})
    _assert_origin_checked(gp, {})
    # the names of this machine are served as before
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        status, _, body = _request(gp.url, "GET", "/api/v1/status", {"Host": host})
        assert status == 200 and json.loads(body)["gateway"] == "gw-web"
    token = _csrf(gp.url, f"127.0.0.1:{port}", {})
    status, _, body = _request(gp.url, "POST", "/api/v1/reload", {
        "Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}", "Content-Type": "application/json",
        "X-CSRF-Token": token, "Cookie": f"fg_csrf={token}"}, b"{}")
    assert status == 202, body
    gp.proc.wait_stderr("configuration reload requested")
    gp.proc.wait_stderr("refused a request from 127.0.0.1: Host 'evil.example:")
    assert "Traceback" not in gp.lines()


def test_rebinding_is_refused_on_a_password_protected_page(
        tmp_path: Path, fieldgate_proc: Callable[..., Proc]) -> None:
    secret = tmp_path / "web.password"
    secret.write_text(PASSWORD + "\n")
    web = (f"{{listen: '0.0.0.0:0', password: {{file: {secret}}}, "
           "allowed_hosts: [gw-12.plant.example, '*.site.example']}")
    gp = start_gateway_process(fieldgate_proc, tmp_path, process_yaml(tmp_path, web=web), stdout=True)
    port = urlsplit(gp.url).port
    bearer = {"Authorization": f"Bearer {PASSWORD}"}
    for host in (f"evil.example:{port}", f"gw-12.plant.example.evil.example:{port}"):
        _assert_refused(gp, host, bearer)  # even with the right password
        _assert_refused(gp, host, {})
    _assert_origin_checked(gp, bearer)
    for host in (f"127.0.0.1:{port}", f"gw-12.plant.example:{port}", f"gw-3.site.example:{port}",
                 f"{socket.gethostname()}:{port}"):
        status, _, body = _request(gp.url, "GET", "/api/v1/status", {"Host": host, **bearer})
        assert status == 200 and json.loads(body)["gateway"] == "gw-web", (host, status)
        status, _, _ = _request(gp.url, "GET", "/api/v1/status", {"Host": host})
        assert status == 401  # the password is still needed under an allowed name
    assert PASSWORD not in gp.lines() and "Traceback" not in gp.lines()

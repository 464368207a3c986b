"""Who may see the status page: loopback rule, login, sessions, CSRF, rate limiting, no secrets."""

from __future__ import annotations

import pytest
from fieldgate.listen import is_loopback
from fieldgate.web.auth import (
    LoginLimiter,
    PasswordHash,
    SessionStore,
    hash_password,
    tokens_match,
    verify_password,
)
from fieldgate.web.logring import Redactor

from .conftest import PASSWORD, MakeClient


class FakeClock:
    """Monotonic time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- pure rules ---------------------------------------------------------------------------


def test_password_hash_is_salted_and_checked() -> None:
    a, b = hash_password("pw-123456"), hash_password("pw-123456")
    assert a.salt != b.salt and a.digest != b.digest
    assert verify_password(a, "pw-123456") and not verify_password(a, "pw-123457")
    assert "pw-" not in repr(a) and repr(a) == "PasswordHash(scrypt)"


def test_tokens_match_refuses_missing_tokens() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd") and not tokens_match("", "") and not tokens_match(None, "x")


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.10", False), ("::ffff:192.0.2.10", False), ("fe80::1%eth0", False), (None, False), ("x", False),
])
def test_is_loopback(address: str | None, expected: bool) -> None:
    assert is_loopback(address) is expected


def test_limiter_locks_out_after_five_failures_and_doubles() -> None:
    clock = FakeClock()
    lim = LoginLimiter(clock=clock)
    for _ in range(4):
        assert lim.failure("a") == 0
    assert lim.retry_after("a") == 0
    assert lim.failure("a") == 60
    assert lim.retry_after("a") == 60 and lim.retry_after("b") == 0  # per address
    clock.now += 61
    assert lim.retry_after("a") == 0
    for _ in range(4):
        lim.failure("a")
    assert lim.failure("a") == 120  # second burst: doubled
    lim.success("a")
    assert lim.retry_after("a") == 0


def test_limiter_forgets_old_failures_caps_lockout_and_bounds_memory() -> None:
    clock = FakeClock()
    lim = LoginLimiter(clock=clock, max_clients=3, max_lockout=200)
    for _ in range(4):
        lim.failure("a")
        clock.now += 20  # spread over more than a minute: no lockout
    assert lim.failure("a") == 0
    for _ in range(30):
        lim.failure("b")
    assert lim.retry_after("b") == 200
    for ip in ("c", "d", "e"):
        lim.failure(ip)
    assert len(lim._clients) == 3


def test_sessions_expire_when_idle_and_are_bounded() -> None:
    clock = FakeClock()
    store = SessionStore(idle_timeout=100, max_sessions=2, clock=clock)
    s1 = store.create()
    assert store.get(s1.sid) is s1 and s1.csrf != s1.sid
    clock.now += 101
    assert store.get(s1.sid) is None
    s2, s3, s4 = store.create(), store.create(), store.create()
    assert store.get(s2.sid) is None and store.get(s3.sid) and store.get(s4.sid) and len(store) == 2
    store.drop(s3.sid)
    assert store.get(s3.sid) is None and store.get(None) is None


def test_redactor() -> None:
    r = Redactor()
    r.add("hunter2!")
    r.add("ab")  # too short to redact safely
    text = "user typed hunter2! then password: 'x y' and secret=z"
    assert r(text) == "user typed *** then password: *** and secret=***"


# --- over HTTP ---------------------------------------------------------------------------


async def test_loopback_without_password_needs_no_login(make_client: MakeClient) -> None:
    client = await make_client()
    assert (await client.get("/api/v1/status")).status == 200
    assert (await client.get("/metrics")).status == 200
    doc = await (await client.get("/api/v1/session")).json()
    assert doc["auth_required"] is False and doc["authenticated"] is True
    resp = await client.post("/api/v1/login", json={"password": "x"},
                             headers={"X-CSRF-Token": doc["csrf_token"]})
    assert resp.status == 409


@pytest.mark.parametrize("path", ["/api/v1/status", "/api/v1/devices", "/metrics", "/", "/login", "/static/app.js"])
async def test_no_password_off_loopback_is_401(make_client: MakeClient, path: str) -> None:
    client = await make_client(remote="192.0.2.10")
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "web.password" in (await resp.json())["message"]


async def _csrf(client: object) -> str:
    return str((await (await client.get("/api/v1/session")).json())["csrf_token"])  # type: ignore[attr-defined]


async def test_login_flow_with_password(make_client: MakeClient, password_hash: PasswordHash) -> None:
    client = await make_client(password=password_hash, remote="192.0.2.10")
    resp = await client.get("/api/v1/status")
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
    resp = await client.get("/devices/meter-1", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login?next=/devices/meter-1"
    assert (await client.get("/login")).status == 200
    session = await (await client.get("/api/v1/session")).json()
    assert session == {**session, "auth_required": True, "authenticated": False}
    token = session["csrf_token"]

    # CSRF first: a login without the token, or with a wrong one, is refused before the password is looked at
    assert (await client.post("/api/v1/login", json={"password": PASSWORD})).status == 403
    resp = await client.post("/api/v1/login", json={"password": PASSWORD}, headers={"X-CSRF-Token": "nope"})
    assert resp.status == 403 and (await resp.json())["error"] == "csrf"
    resp = await client.post("/api/v1/login", json={"password": "wrong"}, headers={"X-CSRF-Token": token})
    assert resp.status == 401 and (await resp.json())["error"] == "wrong_password"
    assert (await client.get("/api/v1/status")).status == 401

    resp = await client.post("/api/v1/login", json={"password": PASSWORD}, headers={"X-CSRF-Token": token})
    assert resp.status == 200
    cookies = {c.key: c for c in resp.cookies.values()}
    sess = cookies["fg_session"]
    assert sess["httponly"] and sess["samesite"] == "Strict" and not sess["secure"] and sess["path"] == "/"
    assert not cookies["fg_csrf"]["httponly"] and cookies["fg_csrf"]["samesite"] == "Strict"
    new_token = (await resp.json())["csrf_token"]
    assert new_token != token and cookies["fg_csrf"].value == new_token

    assert (await client.get("/api/v1/status")).status == 200
    assert (await client.get("/login", allow_redirects=False)).status == 302
    # the pre-login token no longer works for this session; the session's token does
    body = {"text": "schema_version: 1\n"}
    assert (await client.post("/api/v1/profile-check", json=body, headers={"X-CSRF-Token": token})).status == 403
    assert (await client.post("/api/v1/profile-check", json=body)).status == 403
    resp = await client.post("/api/v1/profile-check", json=body, headers={"X-CSRF-Token": new_token})
    assert resp.status == 200
    resp = await client.post("/api/v1/profile-check", json=body,
                             headers={"X-CSRF-Token": new_token, "Origin": "http://evil.example"})
    assert resp.status == 403

    assert (await client.post("/api/v1/logout")).status == 403
    assert (await client.post("/api/v1/logout", headers={"X-CSRF-Token": new_token})).status == 200
    assert (await client.get("/api/v1/status")).status == 401


async def test_logins_are_rate_limited_per_address(make_client: MakeClient, password_hash: PasswordHash) -> None:
    clock = FakeClock()
    client = await make_client(password=password_hash, remote="192.0.2.20", limiter=LoginLimiter(clock=clock))
    token = await _csrf(client)
    statuses = []
    for _ in range(5):
        resp = await client.post("/api/v1/login", json={"password": "guess"}, headers={"X-CSRF-Token": token})
        statuses.append(resp.status)
    assert statuses == [401, 401, 401, 401, 429]
    resp = await client.post("/api/v1/login", json={"password": PASSWORD}, headers={"X-CSRF-Token": token})
    assert resp.status == 429 and resp.headers["Retry-After"] == "60"  # even the right password waits
    resp = await client.get("/api/v1/status", headers={"Authorization": f"Bearer {PASSWORD}"})
    assert resp.status == 429  # and so does the bearer token from the same address
    clock.now += 61
    resp = await client.post("/api/v1/login", json={"password": PASSWORD}, headers={"X-CSRF-Token": token})
    assert resp.status == 200


async def test_bearer_token_for_scripts_and_prometheus(make_client: MakeClient, password_hash: PasswordHash) -> None:
    client = await make_client(password=password_hash, remote="192.0.2.30")
    good = {"Authorization": f"Bearer {PASSWORD}"}
    assert (await client.get("/metrics", headers=good)).status == 200
    resp = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401 and (await resp.json())["message"] == "wrong token"
    # a bearer token is never sent by a browser on its own, so it needs no CSRF token
    resp = await client.post("/api/v1/profile-check", json={"text": "x: 1\n"}, headers=good)
    assert resp.status == 200


async def test_no_secret_in_any_response(make_client: MakeClient, password_hash: PasswordHash) -> None:
    client = await make_client(password=password_hash)
    token = await _csrf(client)
    await client.post("/api/v1/login", json={"password": "wrong"}, headers={"X-CSRF-Token": token})
    resp = await client.post("/api/v1/login", json={"password": PASSWORD}, headers={"X-CSRF-Token": token})
    assert resp.status == 200
    seen = ""
    for path in ("/", "/api/v1/status", "/api/v1/devices", "/api/v1/devices/meter-1", "/api/v1/events",
                 "/api/v1/logs?limit=500", "/api/v1/session", "/api/v1/openapi.json", "/metrics"):
        r = await client.get(path)
        assert r.status == 200, path
        seen += await r.text() + str(r.headers)
    assert PASSWORD not in seen
    assert password_hash.digest.hex() not in seen and password_hash.salt.hex() not in seen

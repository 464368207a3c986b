"""The status page server: pages, the JSON API under ``/api/v1``, live streams and ``/metrics``.

One aiohttp application in the gateway's own event loop. Who may see it
(see ``auth.py`` for the rules themselves):

* No ``web.password``: only clients on this machine (loopback) are served;
  anyone else gets 401. Config validation already refuses a non-loopback
  ``web.listen`` without a password; this is the second lock on the door.
* With ``web.password``: a login (session cookie) or ``Authorization: Bearer
  <password>`` (for scripts and Prometheus) is needed, on loopback too.

Every request must name this gateway in ``Host`` (loopback, the address it
came in on, or ``web.allowed_hosts``; see ``hosts.py``): anything else is
refused with 421 before any page, API, stream or metric is touched, which is
what stops DNS rebinding. State-changing requests (login, logout, profile
check, reload) need the CSRF token in ``X-CSRF-Token``, and any ``Origin`` a
browser sends must be one of those names on the same port.

Cookies are ``HttpOnly`` (the session) and ``SameSite=Strict``; ``Secure`` is
set when the request came over TLS. A gateway on a LAN usually serves plain
HTTP, where browsers would refuse to send a ``Secure`` cookie back, so setting
it there would only make login impossible; SameSite=Strict and the CSRF token
still hold. Put a TLS reverse proxy in front for untrusted networks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..config import WebConfig
from ..listen import is_loopback
from .auth import LoginLimiter, PasswordHash, Session, SessionStore, new_token, tokens_match
from .auth import verify_password as _verify
from .deferred import PageListener, listen_error, page_url, parse_listen, read_password
from .history import History
from .hosts import HostPolicy
from .httplog import server_logger
from .logring import EventLog, LogRing, Redactor, current_log_ring, install_log_ring
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import render_metrics
from .openapi import openapi_spec
from .profilecheck import MAX_PROFILE_BYTES, check_profile_text
from .state import StateHub

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SESSION_COOKIE = "fg_session"
CSRF_COOKIE = "fg_csrf"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PAGES = ("/", "/devices", "/devices/{id}", "/quality", "/events", "/check", "/login")
_PUBLIC = frozenset({"/login", "/api/v1/session", "/api/v1/login"})
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'")


@dataclass(slots=True)
class WebContext:
    """Everything the handlers share."""

    gateway: Any
    output: object
    hub: StateHub
    events: EventLog
    ring: LogRing | None
    redact: Redactor
    password: PasswordHash | None
    hosts: HostPolicy = field(default_factory=HostPolicy)
    sessions: SessionStore = field(default_factory=SessionStore)
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    untap: Any = None


CTX = web.AppKey("fieldgate_web", WebContext)
AUTH = web.RequestKey("fieldgate_auth", str)  # "loopback" | "session" | "bearer" | "" (public page)
SESSION = web.RequestKey("fieldgate_session", Session)
COOKIES_SET = web.RequestKey("fieldgate_cookies_set", set)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers,
                             dumps=lambda o: json.dumps(o, separators=(",", ":"), allow_nan=False))


def _error(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": error, "message": message}, status=status, headers=headers)


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.path == "/metrics"


# --- middlewares ----------------------------------------------------------------


def _local_address(request: web.Request) -> str | None:
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return str(sock[0]) if sock else None


_refused_hosts: set[str] = set()


@web.middleware
async def host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse requests whose ``Host`` or ``Origin`` does not name this gateway (DNS rebinding)."""
    ctx = request.app[CTX]
    local = _local_address(request)
    host = request.headers.get("Host")
    reason = ctx.hosts.check_host(host, local)
    status = 421
    # "null" is what a browser sends from an opaque origin and after some redirects; the CSRF
    # token (which such a page cannot read) still guards those requests, as before
    origin = request.headers.get("Origin")
    if reason is None and origin and origin != "null":
        reason, status = ctx.hosts.check_origin(origin, host, local, request.scheme), 403
    if reason is None:
        return await handler(request)
    key = f"{host}|{origin}"
    if key not in _refused_hosts and len(_refused_hosts) < 64:  # one line per name, bounded
        _refused_hosts.add(key)
        log.warning("status page: refused a request from %s: %s", request.remote, reason)
    resp = _error(status, "misdirected_request" if status == 421 else "csrf", reason)
    _security_headers(resp)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every response; API errors as JSON; a CSRF cookie for browsers."""
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        if not _is_api(request) or exc.status < 400:
            raise
        resp = _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason,
                      headers={k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")})
    if resp.prepared:  # a stream: its headers went out already (set in the handler)
        return resp
    _security_headers(resp)
    if request.path.startswith("/api/") or request.path == "/metrics":
        resp.headers.setdefault("Cache-Control", "no-store")
    elif request.path.startswith("/static/"):
        resp.headers.setdefault("Cache-Control", "no-cache")
    if CSRF_COOKIE not in request.cookies and CSRF_COOKIE not in request.get(COOKIES_SET, ()) and resp.status < 500:
        _set_cookie(request, resp, CSRF_COOKIE, new_token(), httponly=False)
    return resp


def _security_headers(resp: web.StreamResponse) -> None:
    resp.headers.setdefault("Content-Security-Policy", _CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")


def _set_cookie(request: web.Request, resp: web.StreamResponse, name: str, value: str, *, httponly: bool) -> None:
    resp.set_cookie(name, value, path="/", httponly=httponly, samesite="Strict", secure=request.secure or None)
    request.setdefault(COOKIES_SET, set()).add(name)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loopback-only without a password; a session or bearer token with one."""
    ctx = request.app[CTX]
    if ctx.password is None:
        if not is_loopback(request.remote):
            return _error(401, "unauthorized", "this status page is open only on the gateway itself; "
                          "set web.password to reach it over the network",
                          headers={"WWW-Authenticate": 'Bearer realm="fieldgate"'})
        request[AUTH] = "loopback"
        return await handler(request)
    session = ctx.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        request[AUTH], request[SESSION] = "session", session
        return await handler(request)
    authz = request.headers.get("Authorization", "")
    if authz[:7].lower() == "bearer ":
        client = request.remote or "unknown"
        wait = ctx.limiter.retry_after(client)
        if wait > 0:
            return _too_many(wait)
        if await asyncio.to_thread(_verify, ctx.password, authz[7:].strip()):
            ctx.limiter.success(client)
            request[AUTH] = "bearer"
            return await handler(request)
        ctx.limiter.failure(client)
        log.warning("status page: wrong bearer token from %s", client)
        return _error(401, "unauthorized", "wrong token", headers={"WWW-Authenticate": 'Bearer realm="fieldgate"'})
    if request.path in _PUBLIC or request.path.startswith("/static/"):
        request[AUTH] = ""
        return await handler(request)
    if _is_api(request):
        return _error(401, "unauthorized", "log in at /login, or send Authorization: Bearer <password>",
                      headers={"WWW-Authenticate": 'Bearer realm="fieldgate"'})
    raise web.HTTPFound(f"/login?next={request.path}" if request.path != "/" else "/login")


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """State-changing browser requests must echo the CSRF token and come from this origin."""
    if request.method in _SAFE_METHODS or request.get(AUTH) == "bearer":
        return await handler(request)
    if getattr(request.match_info, "http_exception", None) is not None:
        return await handler(request)  # no such route or method: the router's 404/405 says so
    session = request.get(SESSION)
    expected = session.csrf if session is not None else request.cookies.get(CSRF_COOKIE)
    if not tokens_match(request.headers.get(CSRF_HEADER), expected):
        return _error(403, "csrf", f"missing or wrong {CSRF_HEADER}: reload the page and try again")
    return await handler(request)


def _too_many(wait: float) -> web.Response:
    seconds = max(1, math.ceil(wait))
    return _error(429, "too_many_attempts", f"too many failed logins: try again in {seconds} s",
                  headers={"Retry-After": str(seconds)})


# --- pages ---------------------------------------------------------------------------


async def page(request: web.Request) -> web.StreamResponse:
    """Every page is the same small HTML shell; app.js renders the view from the API."""
    ctx = request.app[CTX]
    if request.path == "/login" and (ctx.password is None or request.get(SESSION) is not None):
        raise web.HTTPFound("/")
    resp = web.FileResponse(STATIC_DIR / "index.html")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


# --- API -----------------------------------------------------------------------------


def _limit(request: web.Request, default: int, maximum: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise web.HTTPBadRequest(text=f"limit must be a whole number from 1 to {maximum}")
    return int(raw)


async def api_status(request: web.Request) -> web.Response:
    """GET /api/v1/status: the overview."""
    return _json(request.app[CTX].hub.status())


async def api_devices(request: web.Request) -> web.Response:
    """GET /api/v1/devices: every device with its state and latest values."""
    return _json({"devices": request.app[CTX].hub.devices()})


async def api_device(request: web.Request) -> web.Response:
    """GET /api/v1/devices/{id}: one device with configuration and profile points."""
    ctx = request.app[CTX]
    doc = ctx.hub.device(request.match_info["id"], detail=True)
    if doc is None:
        return _error(404, "not_found", f"no device {request.match_info['id']!r} in the configuration")
    doc["events"] = ctx.events.recent(20, device=doc["id"])
    return _json(doc)


def _since(request: web.Request, now: float) -> float:
    """``since``: seconds back (1 to 86400) or an RFC 3339 time within the last day; default an hour."""
    raw = request.query.get("since")
    if raw is None:
        return now - 3600.0
    try:
        back = float(raw)
    except ValueError:
        try:
            when = datetime.fromisoformat(raw).timestamp()
        except ValueError:
            raise web.HTTPBadRequest(text="since must be seconds back (e.g. 3600) or an RFC 3339 time") from None
        return max(when, now - 86400.0)
    if not math.isfinite(back) or not 0 < back <= 86400:
        raise web.HTTPBadRequest(text="since must be from 1 to 86400 seconds back (a day is kept)")
    return now - back


async def api_device_history(request: web.Request) -> web.Response:
    """GET /api/v1/devices/{id}/history: readings of the hour, 15-minute buckets of the day, state changes."""
    ctx = request.app[CTX]
    dev_id = request.match_info["id"]
    if ctx.hub.device(dev_id) is None:
        return _error(404, "not_found", f"no device {dev_id!r} in the configuration")
    now = time.time()
    since = _since(request, now)
    hist = ctx.hub.history
    metric = request.query.get("metric")
    names = hist.metrics_of(dev_id)
    if metric is not None and metric not in names:
        return _error(404, "not_found", f"no history of {metric!r} for {dev_id!r}"
                      + (f" (it has {', '.join(sorted(names))})" if names else " (no readings yet)"))
    docs = [d for d in (hist.metric_doc(dev_id, n, since, now) for n in ([metric] if metric else names))
            if d is not None]
    return _json({"device": dev_id, "now": round(now, 3), "since": round(since, 3), "metrics": docs,
                  "states": hist.states_doc(dev_id, since)})


async def api_history(request: web.Request) -> web.Response:
    """GET /api/v1/history: buffer depth and uplink rates over time, every device's state changes."""
    ctx = request.app[CTX]
    now = time.time()
    since = _since(request, now)
    hist = ctx.hub.history
    ids = [d["id"] for d in ctx.hub.devices()]
    return _json({"now": round(now, 3), "since": round(since, 3), "gateway": hist.gateway_doc(since),
                  "states": {i: hist.states_doc(i, since) for i in ids}, "memory": hist.memory_doc()})


async def api_quality(request: web.Request) -> web.Response:
    """GET /api/v1/quality: completeness and bad/uncertain/stale counts per device, the worst first."""
    ctx = request.app[CTX]
    now = time.time()
    out = []
    for spec in ctx.hub._specs():
        cfg = spec.config
        snap = ctx.gateway.device_snapshot(cfg.id)
        pushes = snap is not None and snap.pushing
        doc = ctx.hub.history.quality_doc(cfg.id, cfg.poll_interval, [p.name for p in spec.profile.points],
                                          now, pushes)
        doc["state"] = snap.state if snap is not None else ("disabled" if not cfg.enabled else "starting")
        out.append(doc)

    def badness(d: dict[str, Any]) -> tuple[float, int, int]:
        c = d["hour"]["completeness"]
        return (c if c is not None else 1.0, -(d["hour"]["bad"] + d["hour"]["uncertain"]), -len(d["stale"]))

    out.sort(key=badness)
    return _json({"now": round(now, 3), "devices": out})


async def api_events(request: web.Request) -> web.Response:
    """GET /api/v1/events: recent events, newest first."""
    ctx = request.app[CTX]
    device = request.query.get("device")
    return _json({"events": ctx.events.recent(_limit(request, 100, 500), device=device or None)})


async def api_logs(request: web.Request) -> web.Response:
    """GET /api/v1/logs: recent log lines, newest first."""
    ctx = request.app[CTX]
    level = request.query.get("level", "DEBUG")
    if level not in _LEVELS:
        raise web.HTTPBadRequest(text=f"level must be one of {', '.join(_LEVELS)}")
    limit = _limit(request, 200, 500)
    lines = ctx.ring.recent(limit, _LEVELS[level]) if ctx.ring is not None else []
    return _json({"installed": ctx.ring is not None, "lines": lines})


async def api_profile_check(request: web.Request) -> web.Response:
    """POST /api/v1/profile-check: validate a profile like ``fieldgate validate``."""
    if request.content_length is not None and request.content_length > MAX_PROFILE_BYTES + 4096:
        return _error(413, "too_large", f"a profile is at most {MAX_PROFILE_BYTES // 1024} KiB")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "bad_request", 'send JSON: {"text": "<profile YAML>", "filename": "name.yaml"}')
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        return _error(400, "bad_request", '"text" (the profile YAML) is required and must be a string')
    filename = body.get("filename")
    if filename is not None and not isinstance(filename, str):
        return _error(400, "bad_request", '"filename" must be a string')
    text: str = body["text"]
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PROFILE_BYTES:
        return _error(413, "too_large", f"a profile is at most {MAX_PROFILE_BYTES // 1024} KiB")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _error(400, "bad_request", "the profile text is not valid Unicode")
    result = await asyncio.to_thread(check_profile_text, text, filename)
    return _json(result)


async def api_reload(request: web.Request) -> web.Response:
    """POST /api/v1/reload: re-read the configuration, as SIGHUP does."""
    gw = request.app[CTX].gateway
    if gw.loader is None:
        return _error(409, "no_config_file", "this gateway was not started from a configuration file")
    ctx = request.app[CTX]
    log.info("status page: configuration reload requested")
    before = ctx.events.last_id
    await gw.reload()
    # the gateway re-reads and applies (or refuses) the file before reload() returns and says which
    # in an event; the answer carries it so the page can show the result until dismissed
    done = [e for e in ctx.events.items if e["id"] > before and e["kind"] in ("config_reloaded", "config_rejected")]
    if not done:
        return _json({"requested": True, "result": "requested"}, status=202)
    e = done[-1]
    if e["kind"] == "config_rejected":
        return _json({"requested": True, "result": "refused", "errors": e.get("errors", [])}, status=202)
    changes = {k: e.get(k, []) for k in ("added", "changed", "removed")}
    return _json({"requested": True, "result": "applied", "changes": changes,
                  "warnings": [str(w) for w in e.get("warnings", [])]
                  + [f"{key} takes effect after a restart" for key in e.get("restart_required", [])]},
                 status=202)


async def api_session(request: web.Request) -> web.Response:
    """GET /api/v1/session: whether a login is needed, and the CSRF token for this browser."""
    ctx = request.app[CTX]
    session = request.get(SESSION)
    token = session.csrf if session is not None else request.cookies.get(CSRF_COOKIE)
    fresh = not token
    token = token or new_token()
    resp = _json({"auth_required": ctx.password is not None, "authenticated": bool(request.get(AUTH)),
                  "csrf_token": token})
    if fresh:
        _set_cookie(request, resp, CSRF_COOKIE, token, httponly=False)
    return resp


async def api_login(request: web.Request) -> web.Response:
    """POST /api/v1/login: check the password and start a session."""
    ctx = request.app[CTX]
    if ctx.password is None:
        return _error(409, "no_password", "no web.password is set: this page is open on the gateway itself")
    client = request.remote or "unknown"
    wait = ctx.limiter.retry_after(client)
    if wait > 0:
        return _too_many(wait)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("password"), str):
        return _error(400, "bad_request", '"password" is required')
    if not await asyncio.to_thread(_verify, ctx.password, body["password"]):
        lockout = ctx.limiter.failure(client)
        log.warning("status page: failed login from %s", client)
        if lockout > 0:
            return _too_many(lockout)
        return _error(401, "wrong_password", "wrong password")
    ctx.limiter.success(client)
    ctx.sessions.drop(request.cookies.get(SESSION_COOKIE))
    session = ctx.sessions.create()
    log.info("status page: login from %s", client)
    resp = _json({"authenticated": True, "csrf_token": session.csrf})
    _set_cookie(request, resp, SESSION_COOKIE, session.sid, httponly=True)
    _set_cookie(request, resp, CSRF_COOKIE, session.csrf, httponly=False)
    return resp


async def api_logout(request: web.Request) -> web.Response:
    """POST /api/v1/logout: end the session."""
    ctx = request.app[CTX]
    ctx.sessions.drop(request.cookies.get(SESSION_COOKIE))
    resp = _json({"authenticated": False})
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


async def api_openapi(request: web.Request) -> web.Response:
    """GET /api/v1/openapi.json: this API, described."""
    return _json(openapi_spec())


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    resp = web.Response(text=render_metrics(request.app[CTX].hub))
    resp.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return resp


async def api_stream(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/stream and /api/v1/devices/{id}/stream: Server-Sent Events, one per second."""
    ctx = request.app[CTX]
    dev_id = request.match_info.get("id")
    if dev_id is not None and ctx.hub.device(dev_id) is None:
        return _error(404, "not_found", f"no device {dev_id!r} in the configuration")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    _security_headers(resp)
    queue = ctx.hub.subscribe()
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 3000\n\n")
        doc: dict[str, Any] | None = ctx.hub.live()
        while doc is not None:
            if dev_id is None:
                payload, kind = doc, "live"
            else:
                device = next((d for d in doc["devices"] if d["id"] == dev_id), None)
                payload, kind = {"device": device, "status": doc["status"]}, "device"
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
            await resp.write(f"event: {kind}\ndata: {data}\n\n".encode())
            doc = None
            while doc is None:
                try:
                    async with asyncio.timeout(15.0):
                        doc = await queue.get()
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if doc is None:  # the server is closing
                    return resp
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        ctx.hub.unsubscribe(queue)
    return resp


# --- the application -------------------------------------------------------------


def create_app(gateway: Any, output: object, *, password_hash: PasswordHash | None = None,
               log_ring: LogRing | None = None, interval: float = 1.0,
               sessions: SessionStore | None = None, limiter: LoginLimiter | None = None,
               redact: Redactor | None = None, hosts: HostPolicy | None = None,
               history_max_bytes: int = 5_000_000, commands: bool = False, events: EventLog | None = None,
               hub: StateHub | None = None, untap: Callable[[], None] | None = None) -> web.Application:
    """The aiohttp application (not yet serving); :func:`start_web` is the usual entry point.

    Args:
        gateway: the :class:`fieldgate.app.Gateway` to show.
        output: its output (``BufferedUplink``, ``StdoutOutput`` or ``MemoryOutput``).
        password_hash: require a login with this password; None serves loopback clients only.
        log_ring: where log lines come from (default: the installed ring, if any).
        interval: seconds between looks at the gateway for live updates.
        sessions: session store (tests inject one with their own clock).
        limiter: login limiter (tests inject one with their own clock).
        redact: secret remover shared with the log ring.
        hosts: the names the page answers to (default: loopback only).
        history_max_bytes: the memory cap of the trends (``web.history_max_bytes``).
        commands: ``web.commands``: the local API (and the page's write form) takes commands
            (``commands.py``; the gateway's commands must be enabled too).
        events, hub, untap: what :mod:`.deferred` built and subscribed at the gateway's start (the
            page records from then on; this app serves from its first visitor on).
    """
    ring = log_ring if log_ring is not None else current_log_ring()
    redactor = redact or (ring.redact if ring is not None else Redactor())
    events = events or EventLog(redact=redactor)
    hub = hub or StateHub(gateway, output, events, redactor, interval=interval, history=History(history_max_bytes))
    ctx = WebContext(gateway, output, hub, events, ring, redactor, password_hash, hosts or HostPolicy(),
                     sessions or SessionStore(), limiter or LoginLimiter(), untap)
    # the Host check comes first: a refused request sets no cookie and reaches no handler
    app = web.Application(middlewares=[host_middleware, headers_middleware, auth_middleware, csrf_middleware],
                          client_max_size=MAX_PROFILE_BYTES * 2 + 65536)
    app[CTX] = ctx
    for path in _PAGES:
        app.router.add_get(path, page)
    app.router.add_static("/static", STATIC_DIR)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/status", api_status)
    app.router.add_get("/api/v1/devices", api_devices)
    app.router.add_get("/api/v1/devices/{id}", api_device)
    app.router.add_get("/api/v1/devices/{id}/stream", api_stream)
    app.router.add_get("/api/v1/stream", api_stream)
    app.router.add_get("/api/v1/devices/{id}/history", api_device_history)
    app.router.add_get("/api/v1/history", api_history)
    app.router.add_get("/api/v1/quality", api_quality)
    app.router.add_get("/api/v1/events", api_events)
    app.router.add_get("/api/v1/logs", api_logs)
    app.router.add_post("/api/v1/profile-check", api_profile_check)
    app.router.add_post("/api/v1/reload", api_reload)
    app.router.add_get("/api/v1/session", api_session)
    app.router.add_post("/api/v1/login", api_login)
    app.router.add_post("/api/v1/logout", api_logout)
    app.router.add_get("/api/v1/openapi.json", api_openapi)
    from . import commands as _commands

    _commands.setup(app, commands, ctx, AUTH)

    async def on_startup(app: web.Application) -> None:
        if ctx.untap is None:  # a deferred start subscribed the page at the gateway's start
            ctx.untap = gateway.subscribe(PageListener(events, hub))
        hub.start()

    async def on_shutdown(app: web.Application) -> None:
        await hub.close()  # ends the live streams so shutdown does not wait on them

    async def on_cleanup(app: web.Application) -> None:
        if ctx.untap is not None:
            ctx.untap()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


class WebServer:
    """A running status page: ``url`` to print, ``close()`` on shutdown."""

    def __init__(self, runner: web.AppRunner, site: web.TCPSite, app: web.Application, url: str) -> None:
        self.runner = runner
        self.site = site
        self.app = app
        self.url = url

    @property
    def hub(self) -> StateHub:
        """The state hub (tests use it to wait for updates)."""
        return self.app[CTX].hub

    async def close(self) -> None:
        """Stop serving; live streams end at once."""
        await self.runner.cleanup()


def app_runner(app: web.Application) -> web.AppRunner:
    """The one way the page's server is run (here, and by the deferred page on its first visit)."""
    # malformed requests from the network: one short line each, not aiohttp's traceback (httplog.py)
    return web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0, logger=server_logger())


async def start_web(gateway: Any, output: object, cfg: WebConfig, *, interval: float = 1.0,
                    log_ring: LogRing | None = None, commands: bool | None = None) -> WebServer:
    """Serve the status page on ``cfg.listen`` (port 0 picks a free port; see ``.url``).

    Raises:
        GatewayError: the password cannot be read, or the address cannot be bound
            (port taken, address not on this machine). The gateway should log it
            and run on without the page.
    """
    host, port = parse_listen(cfg.listen)
    ring = log_ring if log_ring is not None else (current_log_ring() or install_log_ring())
    password_hash = await read_password(cfg, ring)
    from .commands import web_commands_setting

    app = create_app(gateway, output, password_hash=password_hash, log_ring=ring, interval=interval,
                     hosts=HostPolicy.build(host, cfg.allowed_hosts), history_max_bytes=cfg.history_max_bytes,
                     commands=web_commands_setting(cfg) if commands is None else commands)
    runner = app_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise listen_error(cfg.listen, exc) from exc
    sockets = runner.addresses
    bound_port = sockets[0][1] if sockets else port
    url = page_url(host, bound_port)
    log.info("status page on %s (%s)", url, "password required" if password_hash else "this machine only")
    return WebServer(runner, site, app, url)


__all__ = ["WebServer", "app_runner", "create_app", "parse_listen", "start_web"]

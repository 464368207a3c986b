"""Downlink commands on the local API: ``POST``/``GET /api/v1/devices/{id}/commands``.

The status page's write form and ``fieldgate write`` (when the service runs) send a
``fieldgate.command/1`` message here; it goes to the same executor as the MQTT
command topic (``gateway.commands.execute(..., origin="local-api")``), so the same
rules hold: writable points only, values in their ``write_range``, the rate limit,
at most once per (device, id), the audit trail on the events topic.

Who may send: the route sits behind the page's middlewares like every other
state-changing route (``Host`` and ``Origin`` name this gateway; a login or the
bearer token when ``web.password`` is set, loopback clients only when it is not;
the CSRF token for browsers). On top of that it is off unless both switches are
on: commands in the gateway (``commands.enabled``, the executor exists) and on the
local API (``web.commands``). Off, it answers 409 ``commands_off`` and touches
nothing.

A command runs to its end even when the client goes away: the execution is a task
of its own that the request only waits for (a write cancelled halfway would leave
its outcome unknown).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from ..config import WebConfig

log = logging.getLogger(__name__)

#: A command names a few points; the body of one is far below this.
MAX_COMMAND_BYTES = 16 * 1024

ENABLED = web.AppKey("fieldgate_web_commands", bool)
#: The page's shared context (``app.WebContext``: ``gateway``, ``hub``) and its request key of how the
#: request was authenticated, handed over by ``setup`` (this module does not import app.py: app imports it).
_CONTEXT: web.AppKey[Any] = web.AppKey("fieldgate_web_commands_context", object)
_AUTH: web.AppKey[Any] = web.AppKey("fieldgate_web_commands_auth", object)
_RUNNING: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("fieldgate_web_command_tasks", set)


def web_commands_setting(cfg: WebConfig) -> bool:
    """``web.commands``: whether the local API (page form, ``fieldgate write``) takes commands."""
    return cfg.commands


def _executor(request: web.Request) -> Any:
    return request.app[_CONTEXT].gateway.commands  # None: commands are off in this gateway


def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


def _off_reason(request: web.Request) -> str | None:
    """Why the local API takes no commands now, or None when it does."""
    if _executor(request) is None:
        return ("commands are off in this gateway: set commands.enabled: true and list the device in "
                "commands.allow")
    if not request.app.get(ENABLED, False):
        return "the local API takes no commands: set web.commands: true (with commands.enabled)"
    return None


def _device_spec(request: web.Request, dev_id: str) -> Any:
    gw = request.app[_CONTEXT].gateway
    return next((s for s in gw.loaded.devices if s.config.id == dev_id), None)


def writable_points(spec: Any, latest: dict[str, Any]) -> list[dict[str, Any]]:
    """The points a command may write, with what the form shows: unit, allowed range, current value."""
    out: list[dict[str, Any]] = []
    for p in spec.profile.points:
        if not p.writable:
            continue
        limits = p.write_limits
        m = latest.get(p.name) or {}
        out.append({"name": p.name, "unit": p.unit, "write_range": list(limits) if limits else None,
                    "value": m.get("value"), "quality": m.get("quality"), "decimals": p.decimals})
    return out


async def api_commands(request: web.Request) -> web.Response:
    """GET /api/v1/devices/{id}/commands: whether commands are on, the writable points, the recent commands."""
    ctx = request.app[_CONTEXT]
    dev_id = request.match_info["id"]
    spec = _device_spec(request, dev_id)
    doc = ctx.hub.device(dev_id)
    if spec is None or doc is None:
        return _error(404, "not_found", f"no device {dev_id!r} in the configuration")
    executor = _executor(request)
    off = _off_reason(request)
    allowed = dev_id in ctx.gateway.loaded.config.commands.allow
    recent = executor.recent(dev_id, 20) if executor is not None else []
    return web.json_response({
        "device": dev_id, "enabled": off is None and allowed,
        "reason": off or (None if allowed else f"{dev_id} is not in commands.allow"),
        "writable": writable_points(spec, doc.get("metrics") or {}), "recent": recent})


async def post_command(request: web.Request) -> web.Response:
    """POST /api/v1/devices/{id}/commands: execute one command message and answer its result."""
    ctx = request.app[_CONTEXT]
    dev_id = request.match_info["id"]
    if _device_spec(request, dev_id) is None:
        return _error(404, "not_found", f"no device {dev_id!r} in the configuration")
    off = _off_reason(request)
    if off is not None:
        return _error(409, "commands_off", off)
    if request.content_length is not None and request.content_length > MAX_COMMAND_BYTES:
        return _error(413, "too_large", f"a command is at most {MAX_COMMAND_BYTES // 1024} KiB")
    raw = await request.content.read(MAX_COMMAND_BYTES + 1)
    if len(raw) > MAX_COMMAND_BYTES:
        return _error(413, "too_large", f"a command is at most {MAX_COMMAND_BYTES // 1024} KiB")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "bad_request", 'send a fieldgate.command/1 message as JSON: {"schema": '
                      '"fieldgate.command/1", "id": "...", "op": "write", "metrics": {"point": value}}')
    # the message itself is checked by the executor, which answers a bad one with a rejected result
    log.info("status page: command %r for %s from %s (%s)",
             str(body.get("id"))[:64] if isinstance(body, dict) else None, dev_id, request.remote,
             request.get(request.app[_AUTH]) or "public")
    task = asyncio.get_running_loop().create_task(
        ctx.gateway.commands.execute(dev_id, body, origin="local-api"), name=f"command[{dev_id}]")
    running: set[asyncio.Task[Any]] = request.app[_RUNNING]
    running.add(task)
    task.add_done_callback(running.discard)
    result = await asyncio.shield(task)
    return web.json_response(result)


def setup(app: web.Application, enabled: bool, context: Any, auth: Any) -> None:
    """Add the command routes to the page's application.

    Args:
        enabled: ``web.commands``.
        context: the page's ``WebContext`` (its ``gateway`` and ``hub``).
        auth: the request key saying how a request was authenticated (for the log line).
    """
    app[ENABLED] = enabled
    app[_CONTEXT] = context
    app[_AUTH] = auth
    app[_RUNNING] = set()
    app.router.add_get("/api/v1/devices/{id}/commands", api_commands)
    app.router.add_post("/api/v1/devices/{id}/commands", post_command)

    async def finish_commands(app: web.Application) -> None:
        # a command the page started finishes (and is recorded) before the page goes away
        tasks: set[asyncio.Task[Any]] = app[_RUNNING]
        if tasks:
            await asyncio.wait(list(tasks), timeout=30.0)

    app.on_shutdown.append(finish_commands)


__all__ = ["MAX_COMMAND_BYTES", "setup", "web_commands_setting", "writable_points"]

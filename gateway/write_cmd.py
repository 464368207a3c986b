"""``fieldgate write DEVICE POINT=VALUE...``: set points of a device from the command line, read them back.

For a technician at the cabinet. Two ways to reach the device, chosen on their own:

* **Through the running service** when its status page answers on this machine: the
  configuration's ``web.listen`` (a wildcard address is reached on loopback; only a
  loopback or wildcard listen address is tried, the CLI never goes off the machine).
  The command goes to ``POST /api/v1/devices/{id}/commands``, so the service's own
  executor runs it: its rate limit, at-most-once store, serialization with the polls and
  audit trail apply, and the device's port is not opened twice. With ``web.password`` the
  CLI reads the same secret (file or variable) and sends it as the bearer token; without
  one, loopback is the rule, as for every page route. The service must take commands
  there (``commands.enabled``, the device in ``commands.allow``, ``web.commands``).
* **Opening the device itself** when nothing listens there (the service is stopped): the
  same driver and profile (``fieldgate probe`` opens it this way) and the gateway's own
  executor (origin ``cli``): the same checks, write and read-back, recorded in the service's
  command store (``<data_dir>/commands.db``) so an id is never executed twice; nothing is
  published (no uplink). The profile's writable points may be written this way whether or
  not the remote downlink (``commands.enabled``) is on: it is the technician at the device.

Before any device I/O the values are checked against the profile (writable point, number
or boolean, inside ``write_range``); a refused write touches nothing.

Exit codes: 0 written and read back equal; 1 invalid configuration; 2 usage (no such
device or point, ``POINT=VALUE`` unreadable); 3 failed (the device did not take it, no
answer, the service could not be reached or authenticated); 4 refused before any device
I/O (read-only, out of range, commands off, rate limited, expired); 5 written but read
back different (``mismatch``).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import math
import secrets
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .config import LoadedConfig
from .listen import ListenAddress, is_loopback

log = logging.getLogger("fieldgate.write")

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_FAILED, EXIT_REFUSED, EXIT_MISMATCH = 0, 1, 2, 3, 4, 5
_BY_STATUS = {"ok": EXIT_OK, "mismatch": EXIT_MISMATCH, "rejected": EXIT_REFUSED, "expired": EXIT_REFUSED,
              "failed": EXIT_FAILED}
#: How long to wait for the service to answer a command (it includes the device's write and read-back).
SERVICE_TIMEOUT_S = 60.0
_CONNECT_TIMEOUT_S = 2.0


class UsageError(ValueError):
    """The command line cannot be a write (exit 2)."""


def parse_assignments(items: Sequence[str]) -> dict[str, float | int | bool]:
    """``["setpoint=21.5", "relay=on"]`` → ``{"setpoint": 21.5, "relay": True}``.

    Values: numbers (``21.5``, ``-3``, ``1e3``) or booleans (``true/false``, ``on/off``).

    Raises:
        UsageError: an item without ``=``, a point named twice, or a value that is neither.
    """
    out: dict[str, float | int | bool] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise UsageError(f"{item!r}: write POINT=VALUE, e.g. setpoint=21.5 or relay=on")
        if name in out:
            raise UsageError(f"{name!r} is named twice")
        word = text.lower()
        if word in ("true", "on"):
            out[name] = True
        elif word in ("false", "off"):
            out[name] = False
        else:
            try:
                number: float | int = int(text) if text.lstrip("+-").isdigit() else float(text)
            except ValueError:
                raise UsageError(f"{item!r}: the value is a number or true/false (on/off)") from None
            if isinstance(number, float) and not math.isfinite(number):
                raise UsageError(f"{item!r}: the value is not a finite number")
            out[name] = number
    if not out:
        raise UsageError("name at least one POINT=VALUE")
    return out


def new_command_id() -> str:
    """A command id unique enough for at-most-once: ``cli-<host>-<ms>-<random>`` (contract: 1-64 of [A-Za-z0-9_.:-])."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:20] or "host"
    return f"cli-{host}-{int(time.time() * 1000)}-{secrets.token_hex(4)}"


def command_message(values: dict[str, float | int | bool], command_id: str | None = None) -> dict[str, Any]:
    """The ``fieldgate.command/1`` write of ``values``."""
    return {"schema": "fieldgate.command/1", "id": command_id or new_command_id(), "op": "write",
            "metrics": dict(values)}


# --- the service's local API ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalApi:
    """Where the running service's status page answers on this machine, and how to authenticate."""

    host: str
    port: int
    token: str | None  # web.password, sent as the bearer token; None: loopback without a password

    @property
    def label(self) -> str:
        return f"http://{'[' + self.host + ']' if ':' in self.host else self.host}:{self.port}"


class ServiceError(Exception):
    """The service answered, but not with a result (exit 3 or 4 by ``code``)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def local_api_of(loaded: LoadedConfig) -> LocalApi | str:
    """Where to find the service's page on loopback, or why the CLI cannot use it (a note to print).

    Raises:
        ServiceError: ``web.password`` is configured but cannot be read (run as the service's user).
    """
    web = loaded.config.web
    if not web.enabled:
        return "the configuration has no status page (web.enabled: false)"
    addr = ListenAddress.parse(web.listen)
    if addr.port == 0:
        return "web.listen has port 0 (a free port each start): the CLI cannot find it"
    if addr.host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif addr.host == "::":
        host = "::1"
    elif is_loopback(addr.host):
        host = addr.host.strip("[]")
    else:
        return f"web.listen {web.listen} is not reachable on loopback (the CLI stays on this machine)"
    token = None
    if web.password is not None:
        try:
            token = web.password.reveal().strip()
        except (OSError, KeyError) as exc:
            raise ServiceError(f"cannot read web.password ({web.password!r}): {exc}; run fieldgate write as the "
                               "service's user (or root), or give the variable") from exc
    return LocalApi(host, addr.port, token)


def _request(api: LocalApi, method: str, path: str, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, timeout: float = SERVICE_TIMEOUT_S) -> tuple[int, Any, Any]:
    conn = http.client.HTTPConnection(api.host, api.port, timeout=_CONNECT_TIMEOUT_S)
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(timeout)
        hdrs = {"Host": f"{'[' + api.host + ']' if ':' in api.host else api.host}:{api.port}",
                "Accept": "application/json", **(headers or {})}
        if api.token is not None:
            hdrs["Authorization"] = f"Bearer {api.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read(1_000_000)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return resp.status, doc, resp.headers
    finally:
        conn.close()


def service_listening(api: LocalApi) -> bool:
    """Whether something accepts connections at the page's address (else: no service runs)."""
    try:
        with socket.create_connection((api.host, api.port), timeout=_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def via_service(api: LocalApi, gateway_id: str, device: str, message: dict[str, Any],
                timeout: float = SERVICE_TIMEOUT_S) -> dict[str, Any]:
    """Send the command to the running service; returns its result message.

    Raises:
        ServiceError: the page is another gateway's, refuses the login, or takes no commands.
        OSError: the connection failed or timed out.
    """
    try:
        status, doc, _ = _request(api, "GET", "/api/v1/status", timeout=10.0)
    except http.client.HTTPException as exc:  # nothing was sent to the device yet
        raise ServiceError(f"{api.label} does not answer HTTP ({type(exc).__name__}: {exc}): another program "
                           "on the status page's port?") from exc
    except OSError as exc:
        raise ServiceError(f"cannot reach the service at {api.label}: {exc}; nothing was sent") from exc
    if status == 401:
        raise ServiceError(f"the service at {api.label} refused the login: "
                           + ("the web.password read from the configuration is not the service's"
                              if api.token else "it needs web.password, which this configuration does not set"))
    if status != 200 or not isinstance(doc, dict) or doc.get("gateway") != gateway_id:
        other = doc.get("gateway") if isinstance(doc, dict) else None
        raise ServiceError(f"{api.label} is not this gateway's status page"
                           + (f" (it is gateway {other!r})" if other else f" (HTTP {status})")
                           + ": is another program on that port, or another configuration running?")
    headers: dict[str, str] = {}
    if api.token is None:
        # no password: loopback is the rule, and the CSRF token is the page's double-submit cookie
        s_status, session, _ = _request(api, "GET", "/api/v1/session", timeout=10.0)
        token = session.get("csrf_token") if isinstance(session, dict) else None
        if s_status != 200 or not isinstance(token, str):
            raise ServiceError(f"{api.label} gave no CSRF token (HTTP {s_status})")
        headers = {"X-CSRF-Token": token, "Cookie": f"fg_csrf={token}"}
    status, doc, _ = _request(api, "POST", f"/api/v1/devices/{device}/commands", message, headers, timeout)
    if status == 200 and isinstance(doc, dict) and "status" in doc:
        return doc
    text = doc.get("message") if isinstance(doc, dict) else None
    if status == 409:
        raise ServiceError(f"the running service takes no commands: {text}", EXIT_REFUSED)
    if status == 404:
        raise ServiceError(f"the running service has no device {device!r} (its configuration differs?)", EXIT_USAGE)
    raise ServiceError(f"the service answered HTTP {status}: {text or 'no message'}")


# --- opening the device itself -----------------------------------------------------------------------


def check_values(loaded: LoadedConfig, device: str, values: dict[str, float | int | bool]) -> str | None:
    """Why the profile refuses this write (``name: reason`` of the first problem), or None; no device I/O.

    Raises:
        UsageError: no such device or point.
    """
    spec = next((d for d in loaded.devices if d.config.id == device), None)
    if spec is None:
        ids = ", ".join(d.config.id for d in loaded.devices) or "none"
        raise UsageError(f"no device {device!r} in {loaded.path} (devices: {ids})")
    points = {p.name: p for p in spec.profile.points}
    for name, value in values.items():
        point = points.get(name)
        if point is None:
            writable = ", ".join(p.name for p in spec.profile.points if p.writable) or "none"
            raise UsageError(f"{device} has no point {name!r} (writable points: {writable})")
        problem = point.write_problem(value)
        if problem is not None:
            limits = point.write_limits
            extra = f" (allowed {limits[0]:g} to {limits[1]:g})" if problem == "out_of_range" and limits else ""
            return f"{name}: {problem}{extra}"
    return None


class _DirectTarget:
    """The executor's view of a device this process opened itself (the supervisor's runner, without one)."""

    def __init__(self, spec: Any, driver: Any) -> None:
        self.spec = spec
        self.driver = driver

    @property
    def profile(self) -> Any:
        return self.spec.profile

    def writable(self) -> bool | None:
        from .driver import can_write

        return can_write(self.driver)

    async def run_command(self, writes: Sequence[Any]) -> tuple[Any, str | None]:
        from .driver import ServiceDriver, Writes
        from .errors import DeviceTimeout, DriverError
        from .testing.sink import RecordingSink

        timeout = self.spec.config.poll_timeout
        if writes:
            if not isinstance(self.driver, Writes):
                raise DriverError(f"driver {self.spec.driver.name!r} cannot write", reason="not_supported")
            try:
                async with asyncio.timeout(timeout):
                    await self.driver.write(writes)
            except TimeoutError:
                raise DeviceTimeout(f"no answer to the write within {timeout:g} s; it may have happened") from None
        if isinstance(self.driver, ServiceDriver):
            return None, None  # a push driver: its next report tells
        sink = RecordingSink()
        try:
            async with asyncio.timeout(timeout):
                await self.driver.poll(sink)
        except TimeoutError:
            return None, "timeout"
        except DriverError as exc:
            return None, exc.reason
        return (sink.readings[-1] if sink.readings else None), None


async def direct(loaded: LoadedConfig, device: str, message: dict[str, Any], err: TextIO) -> dict[str, Any]:
    """Open the device and run the command through the gateway's own executor (origin ``cli``).

    The same checks, write and read-back as in the service; the command is recorded in the
    service's command store (``<data_dir>/commands.db``: at most once per id, listed under the
    device's recent commands once the service runs again), but not announced on the events topic
    (no uplink here).

    Raises:
        ServiceError: the command store cannot be opened (permissions: run as the service's user).
    """
    from .app import DeviceLog
    from .commands import CommandExecutor, CommandStore, StoreUnavailable
    from .commands.message import result
    from .driver import DeviceContext, SharedResources, create_driver
    from .errors import DriverError

    cfg = loaded.config
    spec = next(d for d in loaded.devices if d.config.id == device)
    store = CommandStore(cfg.gateway.data_dir, remember=cfg.commands.remember, remember_max=cfg.commands.remember_max)
    try:
        unfinished = await asyncio.to_thread(store.open)
    except StoreUnavailable as exc:
        raise ServiceError(f"{exc}: run fieldgate write as the service's user (or root)") from exc
    try:
        dlog = DeviceLog(logging.getLogger(f"fieldgate.device.{device}"), {"device": device})
        ctx = DeviceContext(device, spec.profile, spec.connection, spec.config.poll_timeout, dlog, SharedResources())
        driver = create_driver(spec.driver, ctx)
        target = _DirectTarget(spec, driver)
        # The technician's own write at the device: the profile's writable points whether or not the
        # remote downlink (commands.enabled / allow) is on; the rate limit and the store still apply.
        local = cfg.commands.model_copy(update={"enabled": True, "allow": [device]})
        executor = CommandExecutor(cfg.gateway.id, local, store, lambda d: target if d == device else None,
                                   lambda kind, **fields: None)
        executor.settle_unfinished(unfinished)
        try:
            async with asyncio.timeout(spec.config.poll_timeout * 2):
                await driver.__aenter__()
        except (TimeoutError, DriverError) as exc:
            reason = exc.reason if isinstance(exc, DriverError) else "timeout"
            print(f"{device}: cannot open it: {exc or 'no answer'}", file=err)
            return result(cfg.gateway.id, device, message["id"], "failed", time.time(), reason=reason)
        try:
            return await executor.execute(device, message, origin="cli")
        finally:
            await driver.__aexit__(None, None, None)
    finally:
        await asyncio.to_thread(store.close)


# --- printing ----------------------------------------------------------------------------------------


def print_result(res: dict[str, Any], values: dict[str, float | int | bool], via: str, out: TextIO) -> int:
    """One line per point (written → read back), then the status; returns the exit code."""
    metrics = res.get("metrics") or {}
    refused = res.get("status") in ("rejected", "expired")
    for name, wrote in values.items():
        m = metrics.get(name)
        if refused:  # a rejected result's metrics are the refused values, with why
            why = f": {m['reason']}" if m and m.get("reason") else ""
            print(f"{name}: {_fmt(wrote)} not written{why}", file=out)
            continue
        if m is None:
            print(f"{name}: {_fmt(wrote)} (not read back)", file=out)
            continue
        unit = f" {m['unit']}" if m.get("unit") else ""
        quality = m.get("quality", "")
        print(f"{name}: wrote {_fmt(wrote)}, read back {_fmt(m.get('value'))}{unit} ({quality})", file=out)
    status = res.get("status", "?")
    reason = f": {res['reason']}" if res.get("reason") else ""
    dup = " (a repeated id: the first result)" if res.get("duplicate") else ""
    detail = f" ({res['message']})" if res.get("message") else ""
    print(f"{res.get('device')}: {status}{reason}{dup}{detail} [command {res.get('id')} via {via}]", file=out)
    return _BY_STATUS.get(str(status), EXIT_FAILED)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def run_write(loaded: LoadedConfig, device: str, items: Sequence[str], out: TextIO | None = None,
              err: TextIO | None = None, *, wait: float | None = None) -> int:
    """``fieldgate write``: parse, check, then through the service or directly; returns the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        values = parse_assignments(items)
        problem = check_values(loaded, device, values)
    except UsageError as exc:
        print(f"fieldgate write: {exc}", file=err)
        return EXIT_USAGE
    if problem is not None:
        print(f"{device}: refused before any device I/O: {problem}", file=err)
        return EXIT_REFUSED
    message = command_message(values)
    try:
        api = local_api_of(loaded)
    except ServiceError as exc:
        print(f"fieldgate write: {exc}", file=err)
        return exc.code
    if isinstance(api, LocalApi) and service_listening(api):
        try:
            res = via_service(api, loaded.config.gateway.id, device, message,
                              timeout=wait if wait is not None else SERVICE_TIMEOUT_S)
        except ServiceError as exc:
            print(f"fieldgate write: {exc}", file=err)
            return exc.code
        except (OSError, http.client.HTTPException) as exc:  # went away, no answer in time, not HTTP: unknown
            print(f"fieldgate write: the service at {api.label} did not answer ({exc}); command {message['id']} "
                  "may have run: see the device's recent commands on the status page", file=err)
            return EXIT_FAILED
        return print_result(res, values, f"the running service at {api.label}", out)
    if isinstance(api, str):
        print(f"note: {api}; opening {device} directly (stop the service first if it runs)", file=err)
    try:
        res = asyncio.run(direct(loaded, device, message, err))
    except ServiceError as exc:
        print(f"fieldgate write: {exc}", file=err)
        return exc.code
    return print_result(res, values, "the device directly", out)


__all__ = ["EXIT_FAILED", "EXIT_MISMATCH", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "UsageError",
           "check_values", "command_message", "parse_assignments", "run_write"]

"""The status page as the gateway starts it: listening at once, its HTTP server loaded on the first visit.

The page is on by default, and most of the time nobody looks at it; aiohttp and the page's
handlers are ~12 MiB of memory (issue 16's budget is 50 MB for the whole gateway). So at
start-up only what must be there from the start is built: the listening sockets (a taken port
is still an error at start-up, as it was), the password's hash, the event log and the state
hub with its history, which record from the first reading so that a first visit an hour later
still shows the hour. The first connection waiting on a socket loads the server (in a thread,
so the event loop polls on meanwhile) and hands it the sockets; that connection, and every
later one, is served by it from then on.

Nothing here imports aiohttp: :mod:`fieldgate.web.app` does, and it is imported only then.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import GatewayError
from ..listen import ListenAddress
from ..tasks import cancel_and_wait
from .auth import PasswordHash, hash_password
from .history import History
from .hosts import HostPolicy
from .logring import EventLog, LogRing, current_log_ring, install_log_ring
from .state import StateHub

if TYPE_CHECKING:
    from aiohttp import web

    from ..config import WebConfig

log = logging.getLogger(__name__)

_BACKLOG = 100  # what aiohttp's TCPSite asks for


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) → ``(host, port)``.

    Raises:
        GatewayError: the value is not ``host:port`` with a port from 0 to 65535.
    """
    try:
        addr = ListenAddress.parse(listen)
    except ValueError as exc:
        raise GatewayError(f"web.listen {listen!r} is not host:port", hint="for example 127.0.0.1:8080") from exc
    return addr.host, addr.port


def page_url(host: str, port: int) -> str:
    """The URL to print for a page bound to ``host``: a wildcard address is shown as loopback."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


async def read_password(cfg: WebConfig, ring: LogRing) -> PasswordHash | None:
    """The hash of ``web.password`` (None without one); the secret is added to the log redactor.

    Raises:
        GatewayError: the password cannot be read, or is empty.
    """
    if cfg.password is None:
        return None
    try:
        secret = cfg.password.reveal()
    except (OSError, KeyError) as exc:
        raise GatewayError(f"status page: cannot read web.password ({cfg.password!r}): {exc}",
                           hint="check the file or environment variable named in web.password") from exc
    if not secret:
        raise GatewayError("status page: web.password is empty", hint="put a password in the file or variable")
    ring.redact.add(secret)
    password_hash = await asyncio.to_thread(hash_password, secret)
    del secret
    return password_hash


def listen_error(listen: str, exc: OSError) -> GatewayError:
    """The error for an address the page cannot bind, with what to do about it."""
    hint = ("another program uses this port: pick another web.listen port" if exc.errno == 98
            else "use an address of this machine, e.g. 127.0.0.1:8080 or 0.0.0.0:8080")
    return GatewayError(f"status page cannot listen on {listen}: {exc.strerror or exc}", hint=hint)


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host:port`` as asyncio's ``create_server`` binds them (every address of
    the name; ``""`` is every interface), not yet accepting.

    Raises:
        OSError: an address cannot be bound.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:  # port 0: the first socket's port for every address
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            sock.bind(addr)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class PageListener:
    """Copies what the gateway tells its output into the page: events, device states, readings.

    Subscribed to the gateway (``Gateway.subscribe``), which calls it after the output and logs,
    never raises, a failure here.
    """

    def __init__(self, events: EventLog, hub: StateHub) -> None:
        self.events = events
        self.hub = hub

    def event(self, kind: str, **fields: Any) -> None:
        self.events.add(kind, **fields)

    def device_status(self, device: str, state: str, error: str | None) -> None:
        self.hub.device_status(device, state, error)

    def reading(self, device: str, message: dict[str, Any]) -> None:
        self.hub.history.add_reading(device, message)


class DeferredWebServer:
    """A status page that listens now and loads its server when the first client connects.

    ``url`` to print, ``hub`` for what the page records, ``close()`` on shutdown.
    """

    def __init__(self, gateway: Any, output: object, cfg: WebConfig, socks: list[socket.socket], url: str,
                 ring: LogRing, password_hash: PasswordHash | None, interval: float) -> None:
        self.gateway = gateway
        self.output = output
        self.cfg = cfg
        self.url = url
        self.ring = ring
        self.password_hash = password_hash
        self.events = EventLog(redact=ring.redact)
        self.hub = StateHub(gateway, output, self.events, ring.redact, interval=interval,
                            history=History(cfg.history_max_bytes))
        self._socks = socks
        self._untap: Callable[[], None] | None = gateway.subscribe(PageListener(self.events, self.hub))
        self._runner: web.AppRunner | None = None
        self._loading: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self.hub.start()
        for sock in socks:
            self._loop.add_reader(sock.fileno(), self._first_visit)

    @property
    def serving(self) -> bool:
        """Whether the HTTP server is loaded (someone has connected since the start)."""
        return self._runner is not None

    def _stop_watching(self) -> None:
        for sock in self._socks:
            if sock.fileno() != -1:  # closed already when loading the server failed
                self._loop.remove_reader(sock.fileno())

    def _first_visit(self) -> None:
        self._stop_watching()  # the connection waits in the backlog until the server accepts it
        if self._loading is None:
            self._loading = self._loop.create_task(self._load(), name="web-load")

    async def _load(self) -> None:
        try:
            # In a thread: importing aiohttp takes a few hundred ms the pollers need not wait for.
            app_module = await asyncio.to_thread(importlib.import_module, "fieldgate.web.app")
            from aiohttp import web as aioweb

            from .commands import web_commands_setting

            host, _ = parse_listen(self.cfg.listen)
            app = app_module.create_app(
                self.gateway, self.output, password_hash=self.password_hash, log_ring=self.ring,
                hosts=HostPolicy.build(host, self.cfg.allowed_hosts), commands=web_commands_setting(self.cfg),
                events=self.events, hub=self.hub, untap=self._untap)
            runner = app_module.app_runner(app)
            await runner.setup()
            self._runner = runner
            self._untap = None  # the app's cleanup untaps now
            for sock in self._socks:
                await aioweb.SockSite(runner, sock).start()
            log.info("status page server loaded for its first visitor")
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug or a broken install: the gateway runs on; the page's clients are refused, not left hanging.
            log.exception("the status page could not be started; running without it")
            for sock in self._socks:
                sock.close()

    async def close(self) -> None:
        """Stop serving; live streams end at once."""
        if self._loading is not None and not self._loading.done():
            await cancel_and_wait(self._loading)
        if self._runner is not None:
            await self._runner.cleanup()  # ends the streams, closes the hub and untaps
            return
        self._stop_watching()
        for sock in self._socks:
            sock.close()
        await self.hub.close()
        if self._untap is not None:
            self._untap()
            self._untap = None


async def start_web_deferred(gateway: Any, output: object, cfg: WebConfig, *, interval: float = 1.0,
                             log_ring: LogRing | None = None) -> DeferredWebServer:
    """Listen on ``cfg.listen`` now and serve the page from the first connection on.

    Raises:
        GatewayError: the password cannot be read, or the address cannot be bound (port taken,
            address not on this machine). The gateway should log it and run on without the page.
    """
    host, port = parse_listen(cfg.listen)
    ring = log_ring if log_ring is not None else (current_log_ring() or install_log_ring())
    password_hash = await read_password(cfg, ring)
    try:
        socks = bind(host, port)
    except OSError as exc:
        raise listen_error(cfg.listen, exc) from exc
    url = page_url(host, socks[0].getsockname()[1])
    log.info("status page on %s (%s)", url, "password required" if password_hash else "this machine only")
    return DeferredWebServer(gateway, output, cfg, socks, url, ring, password_hash, interval)


__all__ = ["DeferredWebServer", "PageListener", "bind", "page_url", "parse_listen", "read_password",
           "start_web_deferred"]

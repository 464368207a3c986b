"""The push endpoint: one CoAP server per listen address that sleeping devices POST to.

An NB-IoT device wakes up, sends one confirmable POST to ``/t/<device>``
(or its configured path), waits for the ACK and goes back to sleep; every
second it stays awake costs battery, so the server answers with a
piggybacked ACK at once (decoding is pure and fast; the reading is queued
for the device's driver). All push devices with the same ``listen``
address share one ``PushServer`` (through ``DeviceContext.shared``, like
the serial drivers share a port); each registers a ``Route`` under its
path and consumes its own queue.

What the server refuses is answered and counted, never logged per packet
(a hostile sender must not fill the journal):

- an unknown path: 4.04 Not Found;
- a device that requires DTLS reached over plain UDP: 4.01 Unauthorized;
- the wrong DTLS identity for the path, or a source outside ``sources``: 4.03 Forbidden;
- a payload that does not decode: 4.00 Bad Request (4.15 for a wrong Content-Format).

Retransmissions (same message ID from the same source) are answered from
aiocoap's duplicate cache without reaching the route: one reading per
report. Each source address has a token bucket checked on the datagram,
before aiocoap parses it, so a flood from one source is dropped at the
socket and costs the others little. A summary of refusals and drops is
logged at most once per ``summary_interval``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiocoap
import aiocoap.resource
from aiocoap.credentials import DTLS, CredentialsMap
from fieldgate.errors import DeviceBusy, DeviceProtocolError, DeviceUnreachable, DriverError
from fieldgate.schema import RawReading

from .payload import PayloadDecoder, PayloadError

log = logging.getLogger(__name__)
_AIOCOAP_LOG = "fieldgate.coap.server"  # aiocoap logs duplicates per packet at INFO: quiet it to WARNING
MAX_SOURCES = 4096  # token buckets kept; the least recently seen are forgotten beyond this


class _Quiet(logging.Filter):
    """Demotes aiocoap's per-packet and shutdown chatter to DEBUG (our summaries say what matters)."""

    NOISE = ("Unhandled alert level", "Internal shutdown sequence mismatch", "Duplicate ")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.WARNING and any(n in str(record.msg) for n in self.NOISE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger(_AIOCOAP_LOG).addFilter(_Quiet())


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; one request takes one token."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.last = float(burst), now

    def take(self, now: float) -> bool:
        """Take a token if one is there."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class Route:
    """One push device as the server sees it."""

    device_id: str
    path: tuple[str, ...]
    decoder: PayloadDecoder
    claim: str | None = None  # the DTLS credential entry this device must authenticate with
    sources: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None
    queue_size: int = 64
    queue: deque[RawReading | DriverError] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    accepted: int = 0
    dropped: int = 0
    last_report: float | None = None

    def put(self, item: RawReading | DriverError) -> None:
        if len(self.queue) >= self.queue_size:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(item)
        self.wake.set()


def source_of(sockaddr: Any) -> str:
    """The source IP of a socket address, IPv4-mapped IPv6 shown as IPv4."""
    host = str(sockaddr[0]) if isinstance(sockaddr, tuple) else str(sockaddr)
    return host.removeprefix("::ffff:")


def source_key(sockaddr: Any, per: str) -> str:
    """The rate-limit key: ``ip:port`` (per address) or ``ip`` (per host)."""
    host = source_of(sockaddr)
    if per == "host" or not isinstance(sockaddr, tuple) or len(sockaddr) < 2:
        return host
    return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"


class _Site(aiocoap.resource.Resource):
    """The whole server's resource tree: routes by full path (no per-path resources)."""

    def __init__(self, server: PushServer) -> None:
        super().__init__()
        self.server = server

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # reports fit one datagram; larger bodies are refused by size

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        return self.server.handle(request)


class PushServer:
    """A CoAP (or CoAPs with DTLS-PSK) server for push devices at one listen address.

    Args:
        host: address to bind (IPv4 or IPv6).
        port: UDP port (0: any free port; plain UDP only).
        dtls: serve coaps:// with PSKs of the registered routes.
        rate, burst: token bucket per source.
        per: ``address`` (ip:port: devices behind one carrier NAT share the IP) or ``host`` (ip).
        summary_interval: seconds between refusal summaries in the log.
    """

    def __init__(self, host: str, port: int, dtls: bool = False, rate: float = 1.0, burst: int = 10,
                 summary_interval: float = 60.0, per: str = "address") -> None:
        self.host, self.port, self.dtls = host, port, dtls
        self.per = per
        self.rate, self.burst = rate, burst
        self.summary_interval = summary_interval
        self.routes: dict[tuple[str, ...], Route] = {}
        self.credentials = CredentialsMap()
        self.refused: Counter[str] = Counter()  # kind -> count since start
        self.refused_by_source: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()  # source -> datagrams dropped
        self.accepted = 0
        self._buckets: dict[str, TokenBucket] = {}
        self._ctx: aiocoap.Context | None = None
        self._started: asyncio.Future[None] | None = None
        self._summary: asyncio.Task[None] | None = None
        self._logged = (0, 0)
        self._dtls_reported: set[tuple[str, str]] = set()
        self.changed = asyncio.Event()  # set when a counter moves (tests and the status page wait on it)
        self._dtls_sessions: dict[int, tuple[Any, bool, float]] = {}
        self._pool: Any = None
        self._watch: asyncio.Task[None] | None = None
        self.handshake_timeout = 10.0  # seconds a DTLS session may take to carry its first request
        self._clock: Callable[[], float] = time.monotonic

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self.host, self.port

    def limit(self, rate: float, burst: int) -> None:
        """Raise the per-source limit to at least this (devices sharing a server may differ)."""
        self.rate, self.burst = max(self.rate, rate), max(self.burst, burst)
        for b in self._buckets.values():
            b.rate, b.burst = self.rate, float(self.burst)

    # --- start / stop -------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket (once; later callers wait for the first).

        Raises:
            DeviceUnreachable: the address cannot be bound (in use, not local, no permission).
        """
        if self._started is not None:
            await asyncio.shield(self._started)
            return
        self._started = asyncio.get_running_loop().create_future()
        try:
            await self._bind()
        except BaseException as exc:
            self._started.set_exception(exc)
            self._started.exception()  # retrieved: later callers re-raise it themselves
            raise
        self._started.set_result(None)
        self._summary = asyncio.create_task(self._summaries(), name=f"coap-summary[{self.host}:{self.port}]")
        if self.dtls:
            self._watch = asyncio.create_task(self._watch_handshakes(), name=f"coap-dtls[{self.host}:{self.port}]")

    async def _bind(self) -> None:
        # aiocoap binds its server sockets with SO_REUSEPORT unless told otherwise. With it a second
        # gateway, or `fieldgate doctor`/`probe` while the service runs, would bind the same port and
        # the kernel would hand it a share of the pushes: acknowledged to the device, lost to the
        # service. The port must be ours alone (a user may still set AIOCOAP_REUSE_PORT=1).
        os.environ.setdefault("AIOCOAP_REUSE_PORT", "0")
        try:
            if self.dtls:
                # aiocoap's DTLS server adds (5684 - 5683) to the port it is given, so it is handed port - 1.
                if self.port < 2:
                    raise DeviceUnreachable("a DTLS push server needs an explicit port (aiocoap cannot bind port 0 "
                                            "for coaps)")
                self._ctx = await aiocoap.Context.create_server_context(
                    _Site(self), bind=(self.host, self.port - 1), loggername=_AIOCOAP_LOG,
                    transports=["tinydtls_server"], server_credentials=self.credentials)
                # aiocoap replaces an empty (falsy) credentials map with its own: use the one it kept
                used = self._ctx.server_credentials
                if used is not self.credentials:
                    used.update(self.credentials)
                    self.credentials = used
                pool = self._message_interface()._pool
                inner = pool.datagram_received

                def filtered(data: bytes, sockaddr: Any) -> None:
                    if self._allow(sockaddr):
                        inner(data, sockaddr)

                pool.datagram_received = filtered
                decrypting = pool._message_interface
                inner_plain = decrypting._received_plaintext

                def plaintext(address: Any, data: bytes) -> None:
                    self._dtls_sessions[id(address)] = (address, True, 0.0)
                    inner_plain(address, data)

                decrypting._received_plaintext = plaintext
                self._pool = pool
            else:
                self._ctx = await aiocoap.Context.create_server_context(
                    _Site(self), bind=(self.host, self.port), loggername=_AIOCOAP_LOG, transports=["udp6"])
                mi = self._message_interface()
                inner6 = mi.datagram_msg_received

                def filtered6(data: bytes, ancdata: Any, flags: Any, address: Any) -> None:
                    if self._allow(address):
                        inner6(data, ancdata, flags, address)

                mi.datagram_msg_received = filtered6
                self.port = int(mi.transport.get_extra_info("socket").getsockname()[1])
        except DeviceUnreachable:
            raise
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DeviceBusy(f"cannot listen on {self.host}:{self.port}/udp: the port is in use",
                                 hint="another program (or a second gateway) uses the port") from exc
            raise DeviceUnreachable(f"cannot listen on {self.host}:{self.port}/udp: {exc.strerror or exc}",
                                    hint="another program (or a second gateway) uses the port, or the address is "
                                         "not on this machine; ports below 1024 need root") from exc
        except ImportError as exc:
            raise DeviceUnreachable(f"DTLS is not available: {exc}",
                                    hint="pip install 'fieldgate[coap-dtls]' (needs autoconf automake libtool "
                                         "to build DTLSSocket)") from exc
        kind = "coaps (DTLS-PSK)" if self.dtls else "coap"
        log.info("push endpoint listening on %s:%d (%s)", self.host, self.port, kind)

    def _message_interface(self) -> Any:
        assert self._ctx is not None
        return self._ctx.request_interfaces[0].token_interface.message_interface

    async def close(self) -> None:
        """Stop listening."""
        for task in (self._summary, self._watch):
            if task is not None:
                task.cancel()
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            try:
                async with asyncio.timeout(5.0):
                    await ctx.shutdown()
            except TimeoutError:
                log.warning("push endpoint %s:%d did not shut down within 5 s", self.host, self.port)
        self._log_summary()

    # --- routes -------------------------------------------------------------

    def add_route(self, route: Route, identity: str | None = None, psk: bytes | None = None) -> None:
        """Register a device; with DTLS, also its PSK identity and key.

        Raises:
            DriverError: another device already uses the path or identity.
        """
        other = self.routes.get(route.path)
        if other is not None and other.device_id != route.device_id:
            raise DriverError(f"push path /{'/'.join(route.path)} is already used by device {other.device_id!r}",
                              hint="give each push device its own connection.path")
        if identity is not None and psk is not None:
            claim = f":{route.device_id}"
            for key, cred in self.credentials.items():
                if key != claim and isinstance(cred, DTLS) and cred.client_identity == identity.encode():
                    raise DriverError(f"DTLS identity {identity!r} is already used by device {key[1:]!r}",
                                      hint="each device needs its own PSK identity")
            self.credentials[claim] = DTLS(psk=psk, client_identity=identity.encode())
            route.claim = claim
        self.routes[route.path] = route

    def remove_route(self, route: Route) -> None:
        """Unregister a device (its reports are then refused with 4.04)."""
        if self.routes.get(route.path) is route:
            del self.routes[route.path]
        if route.claim is not None:
            self.credentials.pop(route.claim, None)

    async def _watch_handshakes(self) -> None:
        """Report DTLS sessions that never carried a request: tinydtls drops a wrong key silently."""
        while True:
            await asyncio.sleep(min(1.0, self.handshake_timeout / 2))
            self._check_handshakes(self._clock())

    def _check_handshakes(self, now: float) -> None:
        pool = self._pool
        if pool is None:
            return
        live = {id(a) for a in pool._connections.values()}
        for key in [k for k in self._dtls_sessions if k not in live]:
            del self._dtls_sessions[key]
        for address in list(pool._connections.values()):
            entry = self._dtls_sessions.get(id(address))
            if entry is None:
                self._dtls_sessions[id(address)] = (address, False, now)
                continue
            _, done, first = entry
            if done or now - first < self.handshake_timeout:
                continue
            self._dtls_sessions[id(address)] = (address, True, first)  # report each session once
            claim = getattr(getattr(address, "_psk_store", None), "_claims", None)
            sockaddr = getattr(getattr(address, "_underlying_address", None), "address", None) or ("?",)
            src = source_of(sockaddr)
            kind = "dtls_wrong_key" if claim else "dtls_no_session"
            self.refused[kind] += 1
            self.changed.set()
            self.refused_by_source[src] += 1
            key = (src, str(claim))
            if key in self._dtls_reported:
                continue
            if len(self._dtls_reported) < MAX_SOURCES:
                self._dtls_reported.add(key)
            if claim:
                log.warning("DTLS handshake from %s for device %s did not complete within %gs: the device's PSK "
                            "does not match the configured key; no report accepted", src, str(claim).lstrip(":"),
                            self.handshake_timeout)
            else:
                log.warning("DTLS handshake from %s did not complete within %gs: its PSK identity belongs to no "
                            "configured device (or it does not speak DTLS)", src, self.handshake_timeout)

    # --- the request path ---------------------------------------------------

    def _allow(self, sockaddr: Any) -> bool:
        src = source_key(sockaddr, self.per)
        now = self._clock()
        bucket = self._buckets.get(src)
        if bucket is None:
            if len(self._buckets) >= MAX_SOURCES:  # forget the longest idle source
                oldest = min(self._buckets, key=lambda k: self._buckets[k].last)
                del self._buckets[oldest]
            bucket = self._buckets[src] = TokenBucket(self.rate, self.burst, now)
        if bucket.take(now):
            return True
        self.rate_limited[src] += 1
        return False

    def _refuse(self, kind: str, source: str, code: aiocoap.numbers.Code, text: str = "") -> aiocoap.Message:
        self.refused[kind] += 1
        self.refused_by_source[source] += 1
        self.changed.set()
        return aiocoap.Message(code=code, payload=text.encode()[:120])

    def handle(self, request: aiocoap.Message) -> aiocoap.Message:
        """Answer one request (synchronously: the ACK piggybacks the answer)."""
        remote = request.remote
        sockaddr = getattr(remote, "sockaddr", None) or getattr(
            getattr(remote, "_underlying_address", None), "address", None) or ("?",)
        src = source_of(sockaddr)
        if request.code not in (aiocoap.POST, aiocoap.PUT):
            return self._refuse("method", src, aiocoap.METHOD_NOT_ALLOWED, "POST reports")
        route = self.routes.get(tuple(request.opt.uri_path))
        if route is None:
            return self._refuse("unknown_path", src, aiocoap.NOT_FOUND)
        if route.sources is not None:
            try:
                ip = ipaddress.ip_address(src)
            except ValueError:
                ip = None
            if ip is None or not any(ip in net for net in route.sources):
                return self._refuse("source", src, aiocoap.FORBIDDEN)
        if route.claim is not None or self.dtls:
            claims = list(getattr(remote, "authenticated_claims", None) or [])
            if not self.dtls:
                return self._refuse("unauthenticated", src, aiocoap.UNAUTHORIZED, "use coaps")
            if route.claim not in claims:
                return self._refuse("identity", src, aiocoap.FORBIDDEN)
        try:
            readings = route.decoder.decode(request.payload, request.opt.content_format)
        except PayloadError as exc:
            self.refused["bad_payload"] += 1
            route.put(DeviceProtocolError(f"report from {src} does not decode: {exc}", reason=exc.reason))
            code = aiocoap.UNSUPPORTED_CONTENT_FORMAT if exc.reason == "unsupported_format" else aiocoap.BAD_REQUEST
            return aiocoap.Message(code=code, payload=str(exc).encode()[:120])
        for reading in readings:
            route.put(reading)
        route.accepted += 1
        route.last_report = self._clock()
        self.accepted += 1
        return aiocoap.Message(code=aiocoap.CHANGED)

    # --- summaries ----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters for the status page and tests."""
        return {"listen": f"{self.host}:{self.port}", "dtls": self.dtls, "accepted": self.accepted,
                "refused": dict(self.refused), "rate_limited": sum(self.rate_limited.values()),
                "devices": {r.device_id: {"accepted": r.accepted, "dropped": r.dropped}
                            for r in self.routes.values()}}

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(self.summary_interval)
            self._log_summary()

    def _log_summary(self) -> None:
        refused, limited = sum(self.refused.values()), sum(self.rate_limited.values())
        if (refused, limited) == self._logged:
            return
        new_refused, new_limited = refused - self._logged[0], limited - self._logged[1]
        self._logged = (refused, limited)
        top = ", ".join(f"{s} ({n})" for s, n in (self.refused_by_source + self.rate_limited).most_common(3))
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.refused.items()))
        log.warning("push endpoint %s:%d: %d request(s) refused (totals: %s), %d datagram(s) over the rate limit "
                    "dropped; top sources: %s", self.host, self.port, new_refused, kinds or "none", new_limited,
                    top or "none")

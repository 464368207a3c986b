"""The push endpoint: one CoAP server per listen address that sleeping devices POST to.

An NB-IoT device wakes up, sends one confirmable POST to ``/t/<device>``
(or its configured path), waits for the ACK and goes back to sleep; every
second it stays awake costs battery, so the server answers with a
piggybacked ACK at once (decoding is pure and fast; the reading is queued
for the device's driver). All push devices with the same ``listen``
address share one ``PushServer`` (through ``DeviceContext.shared``, like
the serial drivers share a port); each registers a ``Route`` under its
path and consumes its own queue.

What the server refuses is answered and counted by reason, never logged per
packet (a hostile sender must not fill the journal), and costs only itself:

- a datagram that is not a well-formed CoAP message, is larger than
  ``wire.MAX_DATAGRAM``, or carries a malformed option: checked by
  ``wire.check`` before aiocoap parses it, answered as RFC 7252 says
  (nothing, a Reset, 4.13, 4.02 or 4.00 with a diagnostic);
- an unknown path: 4.04 Not Found (with a diagnostic payload);
- a device that requires DTLS reached over plain UDP: 4.01 Unauthorized;
- the wrong DTLS identity for the path, or a source outside ``sources``: 4.03 Forbidden;
- a payload that does not decode: 4.00 Bad Request (4.15 for a wrong Content-Format),
  counted by the decoder's reason (``decode_error``, ``unsupported_format``, ``checksum``).

A report whose device time is implausible is accepted (its values flagged,
see ``payload``) and counted under ``flagged``.

Retransmissions (same message ID from the same source) are answered from
aiocoap's duplicate cache without reaching the route: one reading per
report. Each source address has a token bucket checked on the datagram,
before aiocoap parses it, so a flood from one source is dropped at the
socket and costs the others little. A summary of refusals and drops is
logged, and announced as a ``coap_refused`` event, when the first refusal
comes and then at most once per ``summary_interval``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import math
import os
import socket
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiocoap
import aiocoap.resource
from aiocoap.credentials import DTLS, CredentialsMap
from fieldgate.errors import DeviceBusy, DeviceProtocolError, DeviceUnreachable, DriverError
from fieldgate.ratelimit import TokenBucket
from fieldgate.schema import IMPLAUSIBLE_TIME, RawReading

from . import compat, wire
from .payload import PayloadDecoder, PayloadError

log = logging.getLogger(__name__)
_AIOCOAP_LOG = "fieldgate.coap.server"  # aiocoap logs duplicates per packet at INFO: quiet it to WARNING
MAX_SOURCES = 4096  # token buckets kept; the least recently seen are forgotten beyond this


class _Quiet(logging.Filter):
    """Demotes aiocoap's per-packet and shutdown chatter to DEBUG (our summaries say what matters)."""

    # "Ignoring unparsable": wire.check counts what aiocoap could not parse before it sees it.
    NOISE = ("Unhandled alert level", "Internal shutdown sequence mismatch", "Duplicate ", "Ignoring unparsable")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.WARNING and any(n in str(record.msg) for n in self.NOISE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger(_AIOCOAP_LOG).addFilter(_Quiet())


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
    refused: Counter[str] = field(default_factory=Counter)  # reason -> reports to this path refused
    _errors_at: dict[str, float] = field(default_factory=dict)

    def report_error(self, error: DriverError, now: float, interval: float) -> None:
        """Queue a refused report's error for the device, at most once per reason per ``interval``.

        The supervisor logs each error it is handed and marks the device degraded; a sender repeating
        a bad report must not turn that into a line per datagram. The counters hold every one.
        """
        last = self._errors_at.get(error.reason)
        if last is not None and now - last < interval:
            return
        self._errors_at[error.reason] = now
        self.put(error)

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
        self.refused: Counter[str] = Counter()  # reason -> count since start
        self.flagged: Counter[str] = Counter()  # reason -> reports accepted with their values flagged
        self.refused_by_source: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()  # source -> datagrams dropped
        self.accepted = 0
        self._buckets: dict[str, TokenBucket] = {}
        self._ctx: aiocoap.Context | None = None
        self._started: asyncio.Future[None] | None = None
        self._summary: asyncio.Task[None] | None = None
        self._logged: Counter[str] = Counter()  # refused counts at the last summary
        self._logged_limited = 0
        self._last_summary = -math.inf
        self.event: Callable[..., None] | None = None  # the gateway's events topic, set by the first device
        self._dtls_reported: set[tuple[str, str]] = set()
        self.changed = asyncio.Event()  # set when a counter moves (tests and the status page wait on it)
        self._dtls_sessions: dict[int, tuple[Any, bool, float]] = {}
        self._pool: Any = None
        self._watch: asyncio.Task[None] | None = None
        self.handshake_timeout = 10.0  # seconds a DTLS session may take to carry its first request
        self._clock: Callable[[], float] = time.monotonic
        self._last_bug = -math.inf

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
                pool = compat.dtls_pool(self._ctx)

                def plaintext(inner_plain: Any, address: Any, data: bytes) -> None:
                    self._dtls_sessions[id(address)] = (address, True, 0.0)
                    # The sender holds a device's key; what it sends is still checked, counted and
                    # dropped (answering would need the DTLS session's own send path).
                    fault = wire.check(data)
                    if fault is not None:
                        self._count(fault.reason, source_of(compat.dtls_sockaddr(address)))
                        return
                    self._guarded(inner_plain, address, data)

                compat.hook_dtls(pool, self._allow, plaintext)
                self._pool = pool
            else:
                self._ctx = await aiocoap.Context.create_server_context(
                    _Site(self), bind=(self.host, self.port), loggername=_AIOCOAP_LOG, transports=["udp6"])

                def filtered6(data: bytes, ancdata: Any, flags: Any, address: Any, inner6: Any, transport: Any) -> None:
                    if self._allow(address):
                        self._datagram(data, ancdata, flags, address, inner6, transport)

                self.port = compat.hook_udp(self._ctx, filtered6)
        except DeviceUnreachable:
            raise
        except OSError as exc:
            compat.close_sockets_of(exc)
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
        sessions = compat.dtls_sessions(pool)
        live = {id(a) for a in sessions}
        for key in [k for k in self._dtls_sessions if k not in live]:
            del self._dtls_sessions[key]
        for address in sessions:
            entry = self._dtls_sessions.get(id(address))
            if entry is None:
                self._dtls_sessions[id(address)] = (address, False, now)
                continue
            _, done, first = entry
            if done or now - first < self.handshake_timeout:
                continue
            self._dtls_sessions[id(address)] = (address, True, first)  # report each session once
            claim = compat.dtls_claim(address)
            sockaddr = compat.dtls_sockaddr(address)
            src = source_of(sockaddr)
            kind = "dtls_wrong_key" if claim else "dtls_no_session"
            self.refused[kind] += 1
            self.changed.set()
            self.refused_by_source[src] += 1
            reported = (src, str(claim))
            if reported in self._dtls_reported:
                continue
            if len(self._dtls_reported) < MAX_SOURCES:
                self._dtls_reported.add(reported)
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

    def _datagram(self, data: bytes, ancdata: Any, flags: int, address: Any, inner: Callable[..., None],
                  transport: Any) -> None:
        """One plain-UDP datagram: refused here by ``wire.check``, or handed to aiocoap."""
        fault = wire.check(data, truncated=bool(flags & socket.MSG_TRUNC))
        if fault is None:
            self._guarded(inner, data, ancdata, flags, address)
            return
        self._count(fault.reason, source_of(address))
        reply = wire.answer(fault)
        if reply is not None:
            # The reply leaves from the address the datagram came to (IPV6_PKTINFO), as aiocoap's own do.
            info = [(lvl, kind, val) for lvl, kind, val in ancdata
                    if lvl == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO]
            try:
                transport.sendmsg(reply, info, 0, address)
            except Exception as exc:  # a reply that cannot be sent costs nothing more than the datagram
                log.debug("cannot answer %s: %r", source_of(address), exc)

    def _guarded(self, inner: Callable[..., None], *args: Any) -> None:
        """aiocoap's handling of one checked datagram; whatever it raises costs that datagram only.

        An exception escaping the socket callback is a traceback per datagram in the journal, and
        nothing answers the sender. It is a bug (ours or aiocoap's): counted, logged with its
        traceback at most once per summary interval.
        """
        try:
            inner(*args)
        except Exception as exc:
            self._count("internal_error", "?")
            now = self._clock()
            if now - self._last_bug >= self.summary_interval:
                self._last_bug = now
                log.error("push endpoint %s:%d: a datagram raised %s (counted as internal_error; further ones are "
                          "counted, not logged, for %gs)\n%s", self.host, self.port, type(exc).__name__,
                          self.summary_interval, "".join(traceback.format_exception(exc)).rstrip())

    def _count(self, reason: str, source: str) -> None:
        self.refused[reason] += 1
        self.refused_by_source[source] += 1
        self.changed.set()
        if self._clock() - self._last_summary >= self.summary_interval:
            self._log_summary()  # the first refusal is told at once; later ones in the next summary

    def _refuse(self, kind: str, source: str, code: aiocoap.numbers.Code, text: str = "",
                route: Route | None = None) -> aiocoap.Message:
        self._count(kind, source)
        if route is not None:
            route.refused[kind] += 1
        return aiocoap.Message(code=code, payload=text.encode()[:120].decode("utf-8", "ignore").encode())

    def handle(self, request: aiocoap.Message) -> aiocoap.Message:
        """Answer one request (synchronously: the ACK piggybacks the answer)."""
        remote = request.remote
        sockaddr = getattr(remote, "sockaddr", None) or compat.dtls_sockaddr(remote)
        src = source_of(sockaddr)
        if request.code not in (aiocoap.POST, aiocoap.PUT):
            return self._refuse("method", src, aiocoap.METHOD_NOT_ALLOWED, "POST reports")
        route = self.routes.get(tuple(request.opt.uri_path))
        if route is None:
            # RFC 7252 5.5.2: a diagnostic payload says why, for whoever reads the device's log.
            return self._refuse("unknown_path", src, aiocoap.NOT_FOUND,
                                f"no device at /{'/'.join(request.opt.uri_path)} on this gateway")
        if route.sources is not None:
            try:
                ip = ipaddress.ip_address(src)
            except ValueError:
                ip = None
            if ip is None or not any(ip in net for net in route.sources):
                return self._refuse("source", src, aiocoap.FORBIDDEN, route=route)
        if route.claim is not None or self.dtls:
            claims = list(getattr(remote, "authenticated_claims", None) or [])
            if not self.dtls:
                return self._refuse("unauthenticated", src, aiocoap.UNAUTHORIZED, "use coaps", route)
            if route.claim not in claims:
                return self._refuse("identity", src, aiocoap.FORBIDDEN, route=route)
        flagged = route.decoder.flagged
        try:
            readings = route.decoder.decode(request.payload, request.opt.content_format)
        except PayloadError as exc:
            route.report_error(DeviceProtocolError(f"report from {src} does not decode: {exc}", reason=exc.reason),
                               self._clock(), self.summary_interval)
            code = aiocoap.UNSUPPORTED_CONTENT_FORMAT if exc.reason == "unsupported_format" else aiocoap.BAD_REQUEST
            return self._refuse(exc.reason, src, code, str(exc), route)
        if route.decoder.flagged != flagged:
            self.flagged[IMPLAUSIBLE_TIME] += route.decoder.flagged - flagged
            self.changed.set()
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
                "refused": dict(self.refused), "flagged": dict(self.flagged),
                "rate_limited": sum(self.rate_limited.values()),
                "devices": {r.device_id: {"accepted": r.accepted, "dropped": r.dropped, "refused": dict(r.refused)}
                            for r in self.routes.values()}}

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(self.summary_interval)
            self._log_summary()

    def _log_summary(self) -> None:
        """Log and announce what was refused since the last summary (nothing when nothing was)."""
        limited = sum(self.rate_limited.values())
        new = self.refused - self._logged
        new_limited = limited - self._logged_limited
        if not new and not new_limited:
            return
        self._logged, self._logged_limited = Counter(self.refused), limited
        self._last_summary = self._clock()
        top = [(s, n) for s, n in (self.refused_by_source + self.rate_limited).most_common(3)]
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.refused.items()))
        log.warning("push endpoint %s:%d: %d request(s) refused (totals: %s), %d datagram(s) over the rate limit "
                    "dropped; top sources: %s", self.host, self.port, sum(new.values()), kinds or "none",
                    new_limited, ", ".join(f"{s} ({n})" for s, n in top) or "none")
        if self.event is not None:
            try:
                self.event("coap_refused", endpoint=f"{self.host}:{self.port}", refused=dict(new),
                           totals=dict(self.refused), rate_limited=new_limited,
                           top_sources=[{"source": s, "count": n} for s, n in top])
            except Exception as exc:  # the events topic must not break the endpoint
                log.debug("coap_refused event failed: %r", exc)

"""The ``coap`` driver: NB-IoT devices over CoAP (RFC 7252) on aiocoap.

One instance serves one device, in one of three modes (``connection.mode``):

- ``poll``: a GET of the profile's resource on the device's schedule
  (``CoapPollDriver``, a polled driver);
- ``observe``: an RFC 7641 subscription (``CoapObserveDriver``, a push
  driver). Each notification is a reading. The observation is re-registered
  when it lapses: no notification within Max-Age plus ``observe_margin``
  (the device rebooted and forgot its observers, a NAT binding expired), or
  the device ended it;
- ``push``: the device wakes up and POSTs to the gateway
  (``CoapPushDriver``, a push driver), through the ``PushServer`` shared by
  every push device on the same listen address.

A polled or observed device whose profile declares a writable resource
(``write:``) takes commands' writes (``write``, the seam's write hook): one
confirmable PUT (or POST) with every written point. A retransmission is the
same message (same message ID), which the device's deduplication answers
without acting twice. A push device sleeps between reports and cannot be
written to: it has no ``write`` (commands answer ``not_supported``).

Clients bind UDP explicitly (``udp6``, or ``tinydtls`` for coaps://) rather
than aiocoap's default transport list, and every request carries the
device's own retransmission timing: aiocoap's RFC defaults give up on a
silent peer only after about 93 s, longer than any poll. A wrong DTLS key
is not reported by tinydtls; the handshake just never completes, so every
request is bounded by the device timeout and its error says whether the
DTLS session came up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

import aiocoap
import aiocoap.error
from aiocoap.numbers.constants import TransportTuning
from fieldgate.driver import DeviceContext, ReadingSink
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable, DriverError
from fieldgate.schema import IMPLAUSIBLE_TIME

from .payload import PayloadDecoder, PayloadError, encode_writes
from .profile import CoapConnection, CoapProfile, parse_listen, parse_path
from .server import PushServer, Route

if TYPE_CHECKING:
    from fieldgate.driver import PointWrite

DEFAULT_MAX_AGE = 60.0  # RFC 7252 section 5.10.5: Max-Age when the option is absent
_CLIENT_KEY = "coap:client:udp6"
_SILENT_HINT = ("the device is asleep, out of coverage, or the address/port is wrong; NB-IoT devices in power "
                "saving mode cannot be polled: use mode push")


class DeviceTuning(TransportTuning):
    """Retransmission timing of one device (RFC 7252 section 4.8 parameters)."""

    def __init__(self, ack_timeout: float, max_retransmit: int) -> None:
        self.ACK_TIMEOUT = ack_timeout
        self.MAX_RETRANSMIT = max_retransmit


class _SharedClient:
    """One plain-UDP client context for all polled and observed devices, created on first use."""

    def __init__(self) -> None:
        self._ctx: asyncio.Future[aiocoap.Context] | None = None

    async def get(self) -> aiocoap.Context:
        if self._ctx is None:
            self._ctx = asyncio.get_running_loop().create_future()
            try:
                ctx = await aiocoap.Context.create_client_context(transports=["udp6"], loggername="fieldgate.coap")
            except BaseException as exc:
                self._ctx.set_exception(exc)
                self._ctx.exception()
                self._ctx = None
                raise
            self._ctx.set_result(ctx)
        return await asyncio.shield(self._ctx)

    async def close(self) -> None:
        if self._ctx is not None and self._ctx.done() and not self._ctx.exception():
            await self._ctx.result().shutdown()


class CoapDriver:
    """A CoAP device described by a profile; ``connection.mode`` picks poll, observe or push."""

    name: ClassVar[str] = "coap"
    Profile: ClassVar[type[CoapProfile]] = CoapProfile
    Connection: ClassVar[type[CoapConnection]] = CoapConnection

    @staticmethod
    def decode_vector(profile: CoapProfile, vector: Mapping[str, Any]) -> dict[str, Any]:
        """Conformance hook (``DecodesVectors``): one datasheet test vector → raw values, see vectors.py."""
        from .vectors import decode_vector

        return decode_vector(profile, vector)

    @classmethod
    def create(cls, ctx: DeviceContext[CoapProfile, CoapConnection]) -> CoapDriver:
        """The declared factory: the mode's class (the supervisor tells push drivers from polled ones by ``run``)."""
        modes: dict[str, type[CoapDriver]] = {"poll": CoapPollDriver, "observe": CoapObserveDriver,
                                              "push": CoapPushDriver}
        return modes[ctx.connection.mode](ctx)

    def __init__(self, ctx: DeviceContext[CoapProfile, CoapConnection]) -> None:
        self.ctx = ctx
        self.profile = ctx.profile
        self.conn = ctx.connection
        self.decoder = PayloadDecoder(self.profile)
        # SenML records no point takes, and two records for one point, go to the events topic
        self.decoder.on_event = lambda kind, **fields: ctx.event(kind, device=ctx.device_id, **fields)

    @staticmethod
    def bus_of(connection: Any) -> str | None:
        """Devices are independent UDP peers: no shared bus lock."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _ClientDriver(CoapDriver):
    """Shared client side of poll and observe."""

    def __init__(self, ctx: DeviceContext[CoapProfile, CoapConnection]) -> None:
        super().__init__(ctx)
        self.uri = self.conn.uri(self.profile)
        self.tuning = DeviceTuning(self.conn.ack_timeout, self.conn.max_retransmit)
        self._client: aiocoap.Context | None = None
        self._own_client = False
        self._shared: _SharedClient | None = None

    async def __aenter__(self) -> Self:
        if self.conn.dtls is not None:
            # One DTLS context per open: tinydtls keys its sessions by (host, port, identity), not by key,
            # so a session that failed with an old key must not be reused after the key file changed.
            psk = _read_key(self.conn, self.ctx.device_id)
            try:
                from aiocoap.credentials import DTLS

                client = await aiocoap.Context.create_client_context(transports=["tinydtls"],
                                                                     loggername="fieldgate.coap.dtls")
            except (ImportError, RuntimeError) as exc:
                raise DriverError(f"DTLS is not available: {exc}",
                                  hint="pip install 'fieldgate[coap-dtls]' (DTLSSocket builds with autoconf "
                                       "automake libtool from apt)") from exc
            pattern = self.uri.split("/", 3)
            client.client_credentials["/".join(pattern[:3]) + "/*"] = DTLS(
                psk=psk, client_identity=self.conn.dtls.identity.encode())
            self._client, self._own_client = client, True
        else:
            self._shared = self.ctx.shared.acquire(_CLIENT_KEY, _SharedClient)
            try:
                self._client = await self._shared.get()
            except OSError as exc:
                await self._release()
                raise DeviceUnreachable(f"cannot open a UDP socket: {exc}") from exc
        self.ctx.log.info("CoAP %s %s (ack_timeout %gs, %d retransmissions)", self.conn.mode, self.uri,
                          self.conn.ack_timeout, self.conn.max_retransmit)
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if self._own_client and client is not None:
            try:
                async with asyncio.timeout(2.0):
                    await client.shutdown()
            except (TimeoutError, Exception) as err:  # a half-open DTLS session may not close cleanly
                self.ctx.log.debug("DTLS client shutdown: %r", err)
        await self._release()

    async def _release(self) -> None:
        if self._shared is not None:
            self._shared = None
            left = self.ctx.shared.release(_CLIENT_KEY)
            if left is not None:
                await left.close()

    def _request(self, observe: bool = False) -> Any:
        assert self._client is not None
        msg = aiocoap.Message(code=aiocoap.GET, uri=self.uri, transport_tuning=self.tuning)
        if observe:
            msg.opt.observe = 0
        return self._client.request(msg)

    def _timeout_error(self, waited: float) -> DriverError:
        if self.conn.dtls is not None:
            if self._dtls_session_up() is False:
                return DeviceUnreachable(
                    f"no DTLS session with {self.uri} within {waited:g}s: the handshake did not complete",
                    reason="dtls_handshake",
                    hint=f"check that the device knows PSK identity {self.conn.dtls.identity!r} with this key "
                         "(a wrong key looks like silence), then that it is awake and reachable")
            return DeviceTimeout(f"no answer from {self.uri} within {waited:g}s (DTLS session is up)",
                                 hint="the device accepted the key but did not answer the request")
        return DeviceTimeout(f"no answer from {self.uri} within {waited:g}s", hint=_SILENT_HINT)

    def _dtls_session_up(self) -> bool | None:
        """Whether tinydtls finished the handshake with the device (None: cannot tell)."""
        try:
            assert self._client is not None and self.conn.dtls is not None
            for iface in self._client.request_interfaces:
                mi = iface.token_interface.message_interface
                for key, conn in dict(getattr(mi, "_pool", {})).items():
                    if key[2] == self.conn.dtls.identity.encode():
                        connecting = getattr(conn, "_connecting", None)
                        return bool(connecting is not None and connecting.done() and not connecting.cancelled()
                                    and connecting.exception() is None)
            return False
        except Exception:  # aiocoap internals: best effort only
            return None

    async def _first(self, request: Any, uri: str | None = None) -> aiocoap.Message:
        uri = uri or self.uri
        waited = self.ctx.timeout * 0.95  # leave the supervisor's timeout a moment to see our error instead
        try:
            async with asyncio.timeout(waited):
                response: aiocoap.Message = await request.response
        except TimeoutError:
            request.response.cancel()
            raise self._timeout_error(waited) from None
        except aiocoap.error.ConRetransmitsExceeded as exc:
            raise DeviceTimeout(f"no answer from {uri} after {self.conn.max_retransmit} retransmissions",
                                hint=_SILENT_HINT) from exc
        except aiocoap.error.ResolutionError as exc:
            raise DeviceUnreachable(f"cannot resolve {self.conn.host!r}: {exc}", hint="check connection.host") from exc
        except aiocoap.error.NetworkError as exc:
            raise DeviceUnreachable(f"{uri}: {exc}", hint=_network_hint(exc)) from exc
        except aiocoap.error.Error as exc:
            raise DeviceProtocolError(f"{uri}: {type(exc).__name__}: {exc}") from exc
        return response

    async def write(self, writes: Sequence[PointWrite]) -> None:
        """One confirmable PUT (or POST) of every written point to the profile's writable resource.

        Raises:
            DriverError: reason ``not_supported`` (no writable resource, or a binary payload),
                ``encode_error`` or ``unknown_point``; nothing was sent.
            DeviceTimeout / DeviceUnreachable: no answer (the write may have happened).
            DeviceProtocolError: the device answered an error code (reason ``coap_4.00`` ...).
        """
        uri = self.conn.write_uri(self.profile)
        if uri is None:
            raise DriverError(f"profile {self.profile.vendor} {self.profile.model} declares no writable resource",
                              reason="not_supported", hint="add 'write: {resource: /path}' to the profile")
        try:
            payload, content_format = encode_writes(self.profile, {w.name: w.value for w in writes})
        except PayloadError as exc:
            raise DriverError(f"{uri}: {exc}", reason=exc.reason) from None
        assert self._client is not None and self.profile.write is not None
        code = aiocoap.PUT if self.profile.write.method == "put" else aiocoap.POST
        msg = aiocoap.Message(code=code, uri=uri, payload=payload, content_format=content_format,
                              transport_tuning=self.tuning)
        response = await self._first(self._client.request(msg), uri)
        if not response.code.is_successful():
            raise DeviceProtocolError(f"{uri} refused the write: {response.code}",
                                      reason=f"coap_{_dotted(response.code)}",
                                      hint="the device did not take the value; its answer's payload may say why")
        self.ctx.log.info("wrote %s to %s (%s)", ", ".join(w.name for w in writes), uri, response.code)

    def status(self) -> dict[str, Any]:
        """For the status page: the resource and, observed, how often it was (re-)registered."""
        doc: dict[str, Any] = {"uri": self.uri}
        if self.decoder.unmatched or self.decoder.duplicates:
            doc.update(unmatched_records=dict(self.decoder.unmatched), duplicate_records=self.decoder.duplicates)
        if isinstance(self, CoapObserveDriver):
            doc.update(registrations=self.registrations, lapses=self.lapses)
        return doc

    def _deliver(self, response: aiocoap.Message, sink: ReadingSink) -> None:
        if not response.code.is_successful():
            raise DeviceProtocolError(f"{self.uri} answered {response.code}", reason=f"coap_{_dotted(response.code)}",
                                      hint="check the resource path (profile resource or connection.resource)")
        try:
            readings = self.decoder.decode(response.payload, response.opt.content_format)
        except PayloadError as exc:
            raise DeviceProtocolError(f"{self.uri}: {exc}", reason=exc.reason) from None
        for reading in readings:
            sink.add(reading)


class CoapPollDriver(_ClientDriver):
    """``mode: poll``: one GET per poll."""

    async def poll(self, sink: ReadingSink) -> None:
        """GET the resource and hand its readings to ``sink``.

        Raises:
            DeviceTimeout: no answer within the device timeout or retransmissions.
            DeviceUnreachable: ICMP unreachable, unresolvable host, or no DTLS session.
            DeviceProtocolError: an error code or a payload that does not decode.
        """
        self._deliver(await self._first(self._request()), sink)


class CoapObserveDriver(_ClientDriver):
    """``mode: observe``: one subscription, re-registered when it lapses."""

    def __init__(self, ctx: DeviceContext[CoapProfile, CoapConnection]) -> None:
        super().__init__(ctx)
        self.registrations = 0
        self.lapses = 0

    async def run(self, sink: ReadingSink) -> None:
        """Register and deliver notifications until cancelled.

        Raises:
            DeviceTimeout / DeviceUnreachable / DeviceProtocolError: a (re-)registration failed.
        """
        loop = asyncio.get_running_loop()
        margin = self.conn.observe_margin
        while True:
            request = self._request(observe=True)
            try:
                first = await self._first(request)
                self.registrations += 1
                self._deliver(first, sink)
                if first.opt.observe is None:
                    self.ctx.log.warning("%s does not support Observe; reading it every Max-Age instead", self.uri)
                    await asyncio.sleep(_max_age(first))
                    continue
                deadline = loop.time() + _max_age(first) + margin
                notifications: Any = aiter(request.observation)
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            note = await anext(notifications)
                    except TimeoutError:
                        self.lapses += 1
                        self.ctx.log.info("observation of %s lapsed (no notification within Max-Age + %gs); "
                                          "re-registering", self.uri, margin)
                        break
                    except StopAsyncIteration:
                        self.ctx.log.info("%s ended the observation; re-registering", self.uri)
                        break
                    except aiocoap.error.Error as exc:
                        self.ctx.log.info("observation of %s failed (%s); re-registering", self.uri, exc)
                        break
                    deadline = loop.time() + _max_age(note) + margin
                    self._deliver(note, sink)
            except BaseException as exc:
                # Cancelled while waiting for a notification, aiocoap's iterator holds a cancelled
                # future, and the task keeps the CancelledError's traceback (whose frames hold the
                # iterator) until interpreter shutdown; the iterator's ``__del__`` then reads that
                # future after asyncio is torn down and CPython 3.11 dies with SIGSEGV on a clean
                # stop. Clearing the finished frames lets the iterator go now.
                traceback.clear_frames(exc.__traceback__)
                raise
            finally:
                notifications = None
                if request.observation is not None and not request.observation.cancelled:
                    request.observation.cancel()


class CoapPushDriver(CoapDriver):
    """``mode: push``: reports the shared ``PushServer`` routes to this device."""

    #: The device reports on its own schedule (it sleeps, maybe for hours): opening proves the gateway
    #: can receive; waiting for a report is no check (``fieldgate doctor`` reads this).
    passive: ClassVar[bool] = True

    def __init__(self, ctx: DeviceContext[CoapProfile, CoapConnection]) -> None:
        super().__init__(ctx)
        host, port = parse_listen(self.conn.listen)
        self.dtls = self.conn.dtls is not None
        self.key = f"coap:push:{'coaps' if self.dtls else 'coap'}:[{host}]:{port}"
        self.path = parse_path(self.conn.path) if self.conn.path else ("t", ctx.device_id)
        self.listen = (host, port)
        self.server: PushServer | None = None
        self.route: Route | None = None
        self.failed = 0  # reports accepted by the endpoint that the pipeline raised on (bugs; see _drain)
        self._failed_logged = -math.inf

    async def __aenter__(self) -> Self:
        psk = _read_key(self.conn, self.ctx.device_id) if self.conn.dtls is not None else None
        host, port = self.listen
        rl = self.conn.rate_limit
        server = self.ctx.shared.acquire(self.key, lambda: PushServer(host, port, self.dtls, rl.rate, rl.burst,
                                                                       per=rl.per))
        self.server = server
        if server.event is None:
            server.event = self.ctx.event  # one gateway, one events topic: the first device's will do
        try:
            server.limit(rl.rate, rl.burst)
            await server.start()
            sources = [ipaddress.ip_network(s, strict=False) for s in self.conn.sources] if self.conn.sources else None
            route = Route(self.ctx.device_id, self.path, self.decoder, sources=sources, queue_size=self.conn.queue)
            server.add_route(route, self.conn.dtls.identity if self.conn.dtls else None, psk)
            self.route = route
        except BaseException:
            await self._release()
            raise
        scheme = "coaps" if self.dtls else "coap"
        self.ctx.log.info("waiting for reports at %s://%s:%d/%s", scheme, _host(server.host), server.port,
                          "/".join(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._release()

    async def _release(self) -> None:
        server, route = self.server, self.route
        self.server = self.route = None
        if server is None:
            return
        if route is not None:
            server.remove_route(route)
        left = self.ctx.shared.release(self.key)
        if left is not None:
            await left.close()

    def status(self) -> dict[str, Any]:
        """For the status page: this device's reports and the shared endpoint's refusals."""
        route, server = self.route, self.server
        doc: dict[str, Any] = {"endpoint": f"{'coaps' if self.dtls else 'coap'}://{server.host}:{server.port}"
                               if server is not None else None, "path": "/" + "/".join(self.path)}
        if route is not None:
            doc.update(accepted=route.accepted, dropped=route.dropped, refused=dict(route.refused),
                       flagged={IMPLAUSIBLE_TIME: route.decoder.flagged} if route.decoder.flagged else {},
                       failed=self.failed,
                       unmatched_records=dict(route.decoder.unmatched), duplicate_records=route.decoder.duplicates,
                       last_report_age_s=round(time.monotonic() - route.last_report, 1)
                       if route.last_report is not None else None)
        if server is not None:
            snap = server.snapshot()
            doc["endpoint_refused"] = snap["refused"]
            doc["endpoint_rate_limited"] = snap["rate_limited"]
        return doc

    def _drain(self, sink: ReadingSink) -> int:
        assert self.route is not None
        n = 0
        queue = self.route.queue
        while queue:
            item = queue.popleft()
            if isinstance(item, DriverError):
                sink.add_error(item)
                continue
            try:
                sink.add(item)
            except Exception as exc:
                # A report the pipeline cannot take is a bug (the decoder vets values and times), but it must
                # cost that report only: raising here would close this device's route and every report sent
                # meanwhile would get 4.04. Counted in status(), logged with its traceback once a minute.
                self.failed += 1
                now = time.monotonic()
                if now - self._failed_logged >= 60.0:
                    self._failed_logged = now
                    self.ctx.log.error("a report could not be processed (%d so far; logged at most once a minute)",
                                       self.failed, exc_info=exc)
                continue
            n += 1
        self.route.wake.clear()
        return n

    async def run(self, sink: ReadingSink) -> None:
        """Deliver reports until cancelled.

        No report for ``stale_after`` (when set) is handed to the sink as a ``DeviceTimeout`` (the
        device shows degraded, the log and the page name it), once per ``stale_after`` of silence.
        It is not raised: that closed the driver for the retry backoff, and the route with it, so
        the report that ends the silence was refused (4.04 Not Found, which tells a device its path
        is wrong) or, with the push port closed, never acknowledged.
        """
        assert self.route is not None
        route = self.route
        stale = self.conn.stale_after or None
        last = time.monotonic()
        while True:
            if self._drain(sink):
                last = time.monotonic()
            try:
                if stale is None:
                    await route.wake.wait()
                else:
                    async with asyncio.timeout(max(0.0, last + stale - time.monotonic())):
                        await route.wake.wait()
            except TimeoutError:
                sink.add_error(DeviceTimeout(
                    f"no report at /{'/'.join(self.path)} for {stale:g}s",
                    hint="the device is out of coverage, its battery is flat, or it sends to another "
                         "address/path; check its server settings"))
                last = time.monotonic()  # told again after another stale_after of silence, not in a loop


def _read_key(conn: CoapConnection, device: str) -> bytes:
    assert conn.dtls is not None
    try:
        return conn.dtls.key()
    except KeyError as exc:
        raise DriverError(f"DTLS key of {device}: environment variable {conn.dtls.psk.env!r} is not set",
                          hint="set it in the service environment (systemctl edit fieldgate)") from exc
    except OSError as exc:
        raise DriverError(f"DTLS key of {device}: cannot read {conn.dtls.psk.file}: {exc.strerror or exc}",
                          hint="check the file exists and the gateway's user may read it") from exc
    except ValueError:
        raise DriverError(f"DTLS key of {device} is not hex digits (psk_format: hex)") from None


def _max_age(msg: aiocoap.Message) -> float:
    age = msg.opt.max_age
    return float(age) if age is not None else DEFAULT_MAX_AGE


def _dotted(code: Any) -> str:
    return f"{int(code) >> 5}.{int(code) & 0x1F:02d}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _network_hint(exc: BaseException) -> str:
    text = str(exc).lower()
    if "refused" in text or "unreachable" in text:
        return "nothing listens on that port (ICMP port unreachable): check the port and that the CoAP server runs"
    return "check the address and the network route to the device"


__all__ = ["CoapDriver", "CoapObserveDriver", "CoapPollDriver", "CoapPushDriver", "DeviceTuning"]

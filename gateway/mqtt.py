"""One MQTT connection, driven by the asyncio loop through paho's socket callbacks.

paho-mqtt 2.x (``CallbackAPIVersion.VERSION2``) does the protocol; instead of
its network thread we register its socket with the event loop
(``add_reader``/``add_writer``) and call ``loop_read``/``loop_write``/
``loop_misc`` from the loop. Measured for the uplink issue, this acknowledged
more QoS 1 messages per second than paho's own thread or aiomqtt, and keeps
every callback on the loop thread. Only the blocking connect (DNS, TCP, TLS
handshake) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from . import paho_compat
from .config import MqttConfig, TlsConfig
from .errors import UplinkError
from .yamlsrc import UnreadableFile, read_regular_file

log = logging.getLogger(__name__)

# OpenSSL's verify codes for a certificate that does not name the host (X509_V_ERR_*).
_X509_HOSTNAME_MISMATCH, _X509_IP_MISMATCH = 62, 64


class _ServerNameContext(ssl.SSLContext):
    """A client TLS context that verifies the broker's certificate against ``server_name``.

    paho-mqtt 2 wraps its socket with ``context.wrap_socket(sock, server_hostname=<the host it
    dials>)`` (``Client._ssl_wrap_socket``) and, when the context has ``check_hostname`` on,
    leaves the name check to it. Replacing ``server_hostname`` here makes both SNI and the
    certificate's name check use ``mqtt.tls.server_name``, while paho still dials ``mqtt.host``
    (an IP address or a name DNS does not know). ``CERT_REQUIRED`` and ``check_hostname`` stay on:
    this changes which name is verified, never whether.
    """

    server_name: str | None = None
    wrapped: ssl.SSLSocket | None = None  # the last socket wrapped: closed by us if paho's connect fails

    def wrap_socket(self, sock: socket.socket, server_side: bool = False, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        self.wrapped = super().wrap_socket(sock, server_side, do_handshake_on_connect, suppress_ragged_eofs,
                                           self.server_name or server_hostname, session)
        return self.wrapped


_TLS_FILE_LIMIT = 1 << 20  # a CA bundle of every public CA is about 200 KiB


def _tls_file(path: Path, key: str) -> bytes:
    try:
        return read_regular_file(path, _TLS_FILE_LIMIT)
    except UnreadableFile as exc:
        raise UnreadableFile(f"mqtt.tls.{key} {path}: {exc}") from exc


def tls_context(tls: TlsConfig) -> _ServerNameContext:
    """The client context for ``mqtt.tls``: the CA (or the system's), mutual TLS, the name to verify.

    Only regular files are opened: OpenSSL opening a named pipe waits for a writer forever,
    and the uplink with it (a FIFO as ``ca_file`` hung the connect).

    Raises:
        OSError, ssl.SSLError, KeyError: a file or the key password cannot be read.
    """
    # What ssl.create_default_context(Purpose.SERVER_AUTH) does, in our subclass.
    ctx = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file:
        ctx.load_verify_locations(cadata=_tls_file(tls.ca_file, "ca_file").decode("utf-8", "replace"))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.server_name = tls.server_name
    if tls.cert_file and tls.key_file:
        key_pw = tls.key_password.reveal() if tls.key_password else None
        for path, key in ((tls.cert_file, "cert_file"), (tls.key_file, "key_file")):
            _tls_file(path, key)  # ssl reads these by name: refuse what is not a regular file first
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=key_pw)
    # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and hostname checking, always.
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


def broker_url(cfg: MqttConfig) -> str:
    """``mqtts://host:port`` for logs and errors (never with credentials); the first of ``hosts``."""
    host, port = cfg.endpoints[0]
    return f"{'mqtts' if cfg.tls else 'mqtt'}://{'[' + host + ']' if ':' in host else host}:{port}"


def for_endpoint(cfg: MqttConfig, endpoint: tuple[str, int]) -> MqttConfig:
    """``cfg`` aimed at one of its brokers (``MqttConfig.endpoints``): what one :class:`MqttLink` dials.

    Everything else (TLS, login, limits) is shared by all the brokers of a list.
    """
    return cfg.model_copy(update={"host": endpoint[0], "port": endpoint[1], "hosts": []})


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message the broker delivered to a subscription of ours.

    ``response_topic`` and ``correlation_data`` are the MQTT 5 request/response
    properties (None under 3.1.1 or when the sender set none).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


InboundHandler = Callable[[Inbound], None]


def publish_properties(correlation_data: bytes | None) -> Properties | None:
    """MQTT 5 PUBLISH properties carrying ``correlation_data`` (None when there is none to carry)."""
    if correlation_data is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = correlation_data
    return props


class MqttLink:
    """A single connection attempt and its lifetime.

    Args:
        cfg: the uplink settings.
        client_id: MQTT client id.
        will: (topic, payload) of the retained last will.
        on_ack: called on the loop thread with the mid of each acknowledged publish.
        subscriptions: topic filter -> handler, subscribed (QoS 1) on every successful
            connect (the session is clean, so the broker forgets them with the connection).
            Handlers run on the loop thread and must not block.
    """

    def __init__(self, cfg: MqttConfig, client_id: str, will: tuple[str, str | bytes],
                 on_ack: Callable[[int], None],
                 subscriptions: Mapping[str, InboundHandler] | None = None) -> None:
        # A list of brokers: one link dials one of them (the uplink picks which); else the first.
        self.cfg = cfg if not cfg.hosts else for_endpoint(cfg, cfg.endpoints[0])
        self.on_ack = on_ack
        self.subscriptions: dict[str, InboundHandler] = dict(subscriptions or {})
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        v5 = cfg.protocol == "5"
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True, reconnect_on_failure=False,
        )
        self.client.connect_timeout = cfg.connect_timeout
        self.client.max_inflight_messages_set(max(cfg.inflight, 20))
        self.client.max_queued_messages_set(0)
        self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.error: UplinkError | None = None
        self._sock: socket.socket | None = None
        self._tls_ctx: _ServerNameContext | None = None
        self.leaving = False
        self._misc: asyncio.Task[None] | None = None
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_socket_open = self._threadsafe(self._sock_open)
        c.on_socket_close = self._threadsafe(self._sock_close)
        c.on_socket_register_write = self._threadsafe(self._reg_write)
        c.on_socket_unregister_write = self._threadsafe(self._unreg_write)

    def _threadsafe(self, fn: Callable[[socket.socket], None]) -> Callable[..., None]:
        def cb(_client: Any, _userdata: Any, sock: socket.socket) -> None:
            if threading.get_ident() == self._loop_thread:
                fn(sock)
            else:
                self.loop.call_soon_threadsafe(fn, sock)
        return cb

    def _sock_open(self, sock: socket.socket) -> None:
        self._sock = sock
        self.loop.add_reader(sock, self._read)

    def _sock_close(self, sock: socket.socket) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        self._sock = None
        self.closed.set()

    def _reg_write(self, sock: socket.socket) -> None:
        if self._sock is sock:
            self.loop.add_writer(sock, self._write)

    def _unreg_write(self, sock: socket.socket) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(sock)

    def _read(self) -> None:
        self.client.loop_read()

    def _write(self) -> None:
        self.client.loop_write()

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            hint = "check mqtt.username and the password file or variable"
            if "authori" in str(reason).lower() or "password" in str(reason).lower():
                msg = f"broker {broker_url(self.cfg)} refused the login: {reason}"
            else:
                msg, hint = f"broker {broker_url(self.cfg)} refused the connection: {reason}", "see the broker's log"
            self.error = UplinkError(msg, hint=hint)
            return
        if self.subscriptions:
            self._subscribe(list(self.subscriptions))
        self.connected.set()

    def subscribe(self, topic_filter: str, handler: InboundHandler) -> None:
        """Add a subscription: at once when connected, and again on every connect."""
        self.subscriptions[topic_filter] = handler
        if self.connected.is_set():
            self._subscribe([topic_filter])

    def _subscribe(self, filters: list[str]) -> None:
        # paho takes SubscribeOptions under MQTT 5 only; under 3.1.1 it raised "Invalid QoS level"
        # in the CONNACK callback, and a 3.1.1 gateway that listened never got its first connection.
        if self.cfg.protocol == "5":
            # Retain As Published: a message published retained keeps its RETAIN flag when it reaches
            # us live (brokers clear it otherwise), so a retained command is refused also then, as the
            # contract says, not only when the broker replays it at subscribe time.
            self.client.subscribe([(f, SubscribeOptions(qos=1, retainAsPublished=True)) for f in filters])
        else:
            self.client.subscribe([(f, 1) for f in filters])

    def unsubscribe(self, topic_filter: str) -> None:
        if self.subscriptions.pop(topic_filter, None) is not None and self.connected.is_set():
            self.client.unsubscribe(topic_filter)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        props = getattr(msg, "properties", None)
        inbound = Inbound(msg.topic, bytes(msg.payload), int(msg.qos), bool(msg.retain),
                          getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None))
        for topic_filter, handler in list(self.subscriptions.items()):
            if paho.topic_matches_sub(topic_filter, msg.topic):
                try:
                    handler(inbound)
                except Exception:  # one bad handler must not take the connection down
                    log.exception("handling a message on %s failed", msg.topic)

    def _on_disconnect(self, _c: Any, _u: Any, flags: Any, reason: Any, _props: Any) -> None:
        if self.error is None and self.connected.is_set() and not self.leaving:
            self.error = UplinkError(f"connection to {broker_url(self.cfg)} lost: {self._why_lost(flags, reason)}")
        self.connected.clear()
        self.closed.set()

    def _why_lost(self, flags: Any, reason: Any) -> str:
        """Words for a lost connection: paho says "Unspecified error" for every closed socket."""
        if getattr(flags, "is_disconnect_packet_from_server", False):
            return f"the broker ended the session: {reason}"
        text = str(reason)
        if text == "Keep alive timeout":
            return f"no answer from the broker within the keepalive ({self.cfg.keepalive:g}s)"
        if text == "Unspecified error":
            # The socket was closed without an MQTT DISCONNECT: mosquitto does this when it stops.
            return "the broker closed the connection (it stopped or restarted, or the network dropped it)"
        return text

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            # The broker refused this message (v5 PUBACK reason); it stays in the
            # buffer and is retried after a reconnect, and we say so.
            log.warning("broker refused a message (mid %d): %s", mid, reason)
            return
        self.on_ack(mid)

    def _configure_auth(self) -> None:
        cfg = self.cfg
        if cfg.username is not None or cfg.password is not None:
            try:
                password = cfg.password.reveal() if cfg.password else None
            except (OSError, KeyError) as exc:
                raise UplinkError(f"cannot read the MQTT password ({cfg.password!r}): {exc}",
                                  hint="check mqtt.password: the file must be readable by fieldgate") from exc
            self.client.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            try:
                ctx = tls_context(cfg.tls)
            except (OSError, ssl.SSLError, KeyError) as exc:
                raise UplinkError(f"cannot load TLS files: {exc}",
                                  hint="check mqtt.tls.ca_file / cert_file / key_file") from exc
            self.client.tls_set_context(ctx)
            self._tls_ctx = ctx

    def _blocking_connect(self) -> None:
        v5 = self.cfg.protocol == "5"
        kw: dict[str, Any] = {"clean_start": True} if v5 else {}
        try:
            host, port = self.cfg.endpoints[0]
            rc = self.client.connect(host, port, int(self.cfg.keepalive), **kw)
        except BaseException:
            # paho leaves the TLS socket of a failed handshake (an untrusted or misnamed certificate)
            # open; without this every retry leaked one until the garbage collector found it.
            ctx = self._tls_ctx
            if ctx is not None and ctx.wrapped is not None:
                ctx.wrapped.close()
                ctx.wrapped = None
            raise
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise OSError(f"connect returned {rc}")

    async def connect(self) -> None:
        """Connect and wait for a successful CONNACK.

        Raises:
            UplinkError: with a message naming the broker and a hint.
        """
        url = broker_url(self.cfg)
        self._configure_auth()
        try:
            async with asyncio.timeout(self.cfg.connect_timeout + 1):
                await asyncio.to_thread(self._blocking_connect)
        except ssl.SSLCertVerificationError as exc:
            if exc.verify_code in (_X509_HOSTNAME_MISMATCH, _X509_IP_MISMATCH):
                name = (self.cfg.tls.server_name if self.cfg.tls else None) or self.cfg.host
                key = "mqtt.tls.server_name" if self.cfg.tls and self.cfg.tls.server_name else "mqtt.host"
                raise UplinkError(
                    f"TLS: the certificate of {url} is not valid for {name!r} ({key}); it is signed by a "
                    "trusted CA but names another host",
                    hint="set mqtt.tls.server_name to a name in the broker's certificate, or connect by that "
                    "name") from exc
            raise UplinkError(f"TLS: the certificate of {url} is not trusted: {exc.verify_message}",
                              hint="check mqtt.tls.ca_file and that the broker's name matches mqtt.host "
                              "(or mqtt.tls.server_name)") from exc
        except ssl.SSLError as exc:
            raise UplinkError(f"TLS handshake with {url} failed: {exc.reason or exc}",
                              hint="a client certificate may be required (mqtt.tls.cert_file/key_file)") from exc
        except socket.gaierror as exc:
            raise UplinkError(f"cannot resolve {self.cfg.host!r}: {exc.strerror}",
                              hint="check mqtt.host and DNS") from exc
        except ConnectionRefusedError as exc:
            raise UplinkError(f"{url} refused the connection", hint="is the broker running on that port?") from exc
        except TimeoutError as exc:
            raise UplinkError(f"no answer from {url} within {self.cfg.connect_timeout:g}s",
                              hint="check the network path and firewall") from exc
        except OSError as exc:
            raise UplinkError(f"cannot connect to {url}: {exc.strerror or exc}") from exc
        self._misc = asyncio.create_task(self._misc_loop(), name="mqtt-keepalive")
        connected = asyncio.create_task(self.connected.wait())
        closed = asyncio.create_task(self.closed.wait())
        try:
            await asyncio.wait({connected, closed}, timeout=self.cfg.connect_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            closed.cancel()
        if not self.connected.is_set():
            err = self.error or UplinkError(f"{url} did not complete the MQTT handshake in time",
                                            hint="is this port an MQTT listener (TLS vs plain)?")
            self.abort()
            raise err

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is None:
                self.closed.set()
                return

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False,
                properties: Properties | None = None) -> int:
        """Publish at QoS 1; returns the mid whose PUBACK ``on_ack`` will report."""
        if properties is not None and self.cfg.protocol != "5":
            properties = None  # 3.1.1 has no properties
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            self.connected.clear()
            self.closed.set()
        return int(info.mid)

    async def disconnect(self) -> None:
        """Clean DISCONNECT (no last will)."""
        self.leaving = True  # our own DISCONNECT is not an error of the connection
        if self._sock is not None:
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self.closed.wait()
        self.abort()

    def abort(self) -> None:
        """Drop the connection and the loop registrations at once."""
        if self._misc is not None:
            self._misc.cancel()
        sock = self._sock
        if sock is not None:
            self._sock_close(sock)
        with contextlib.suppress(Exception):
            paho_compat.drop_socket(self.client)
        self.connected.clear()
        self.closed.set()

"""An MQTT subscriber that records everything it receives, for assertions on what the gateway sent.

It plays the part of the consumer on the far side of the broker: a persistent QoS 1 session
(``clean_session=False``, fixed client id), so messages published while it is away (a broker
restart with persistence, an explicit :meth:`Collector.disconnect`) reach it when it comes back.
paho's network thread (``loop_start``) receives and reconnects; waits are on a condition variable
with a deadline, never sleeps.

Typical use::

    with Collector.for_broker(mosquitto) as c:
        ...start the gateway...
        c.wait_readings(10, timeout=10)
        assert c.per_device_in_order(), c.order_violations()
        c.check_contract()
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from .broker import Mosquitto

__all__ = ["Collector", "CollectorConnectError", "Message"]

T = TypeVar("T")

# Barrier messages go to a topic outside any fieldgate prefix and are never recorded.
SYNC_PREFIX = "fieldgate-test-sync"
_ids = itertools.count(1)


class CollectorConnectError(ConnectionError):
    """The collector could not connect or subscribe.

    Attributes:
        reason: what the broker or the transport said (a CONNACK reason, an SSL alert, ...).
        reason_code: the CONNACK/SUBACK reason code, when there was one.
    """

    def __init__(self, message: str, reason: str, reason_code: ReasonCode | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.reason_code = reason_code


@dataclass
class Message:
    """One received PUBLISH.

    Attributes:
        index: arrival order (0-based) in this collector.
        topic: the topic.
        payload: the raw payload.
        retain: the RETAIN flag as delivered (set only for retained messages sent on subscribe).
        qos: the delivery QoS.
        dup: the DUP flag (a redelivery attempt by the broker).
        at: ``time.monotonic()`` at arrival.
    """

    index: int
    topic: str
    payload: bytes
    retain: bool
    qos: int
    dup: bool
    at: float
    _parsed: Any = field(default=None, repr=False, compare=False)

    def json(self) -> Any:
        """The payload parsed as JSON (cached).

        Raises:
            AssertionError: the payload is not JSON, with the topic and the payload in the message.
        """
        if self._parsed is None:
            try:
                self._parsed = json.loads(self.payload)
            except ValueError as exc:
                raise AssertionError(f"{self.topic}: payload is not JSON ({exc}): {self.payload[:200]!r}") from exc
        return self._parsed


def _close_sockets_of(exc: BaseException) -> None:
    """Close sockets left open by a failed paho ``connect``.

    paho 2.2 does the TLS handshake on a local socket and, when it fails, raises without closing
    it; the socket then lives on in the traceback and is reported unclosed (ResourceWarning) when
    the exception is freed. The traceback's frames are the only handle on it.
    """
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()
        tb = tb.tb_next


def _describe(reason: Any) -> str:
    return str(reason) if reason is not None else "unknown"


class Collector:
    """Records every message on ``topic`` (QoS 1, persistent session) from a broker.

    Args:
        host: broker address.
        port: broker port.
        topic: the topic filter to subscribe to.
        client_id: MQTT client id; reuse one to resume an earlier collector's session.
        clean_session: False (default) keeps the session and queued messages across disconnects.
        qos: subscription QoS.
        ca_cert: enables TLS, verifying the broker against this CA (hostname checked).
        client_cert: client certificate for mTLS.
        client_key: its key.
        username: MQTT username.
        password: MQTT password.
        keepalive: MQTT keepalive in seconds.
        reconnect_delay: (min, max) seconds between reconnect attempts after a lost connection.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        topic: str = "fieldgate/#",
        client_id: str | None = None,
        clean_session: bool = False,
        qos: int = 1,
        ca_cert: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        reconnect_delay: tuple[float, float] = (0.05, 0.5),
    ) -> None:
        self.host = host
        self.port = port
        self.topic = topic
        self.client_id = client_id or f"collector-{next(_ids)}-{uuid.uuid4().hex[:8]}"
        self.clean_session = clean_session
        self.qos = qos
        self.ca_cert = ca_cert
        self.client_cert = client_cert
        self.client_key = client_key
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.sync_topic = f"{SYNC_PREFIX}/{self.client_id}"

        self._cond = threading.Condition(threading.RLock())  # re-entrant: predicates may call our getters
        self._messages: list[Message] = []
        self._readings: list[dict[str, Any]] = []
        self._parse_errors: list[str] = []
        self._sync_seen: set[str] = set()
        self._sync_counter = itertools.count(1)
        self._log: collections.deque[str] = collections.deque(maxlen=50)
        self._connected = False
        self._subscribed = False
        self._failure: CollectorConnectError | None = None
        self._sub_mid: int | None = None
        self.connect_count = 0
        self.disconnect_count = 0
        self.session_present: bool | None = None

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        # paho types the delays as int, but uses them as float seconds; short delays keep restart tests fast.
        c.reconnect_delay_set(min_delay=reconnect_delay[0], max_delay=reconnect_delay[1])  # type: ignore[arg-type]
        c.max_queued_messages_set(0)
        if username is not None or password is not None:
            c.username_pw_set(username, password)
        if ca_cert is not None:
            ctx = ssl.create_default_context(cafile=str(ca_cert))
            if client_cert is not None:
                ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
            c.tls_set_context(ctx)
        elif client_cert is not None:
            raise ValueError("client_cert needs ca_cert (TLS)")
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_log = self._on_log
        self.client = c
        self._loop_running = False

    @classmethod
    def for_broker(cls, broker: Mosquitto, **options: Any) -> Self:
        """A collector for a :class:`~tests.support.broker.Mosquitto`, TLS and mTLS set up from its files.

        Args:
            broker: a started broker.
            **options: any constructor option (they override what is derived from the broker).

        Returns:
            The collector, not yet connected.
        """
        derived: dict[str, Any] = {}
        if broker.tls is not None:
            derived["ca_cert"] = broker.tls.ca_cert
            if broker.require_client_cert:
                derived["client_cert"] = broker.tls.client_cert
                derived["client_key"] = broker.tls.client_key
        return cls(broker.host, broker.port, **{**derived, **options})

    # -- paho callbacks (network thread) ---------------------------------------------------------

    def _on_log(self, _c: Any, _u: Any, level: int, buf: str) -> None:
        if level in (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING):
            with self._cond:
                self._log.append(buf)

    def _last_log(self) -> str:
        return self._log[-1] if self._log else ""

    def _problem(self) -> str:
        """paho's errors since the last connect() (an SSL alert, a lost socket), oldest first."""
        return "; ".join(self._log)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        with self._cond:
            if reason.is_failure:
                self._failure = CollectorConnectError(
                    f"{self.host}:{self.port} refused the connection: {reason}", str(reason), reason
                )
                self._cond.notify_all()
                return
            self._connected = True
            self.connect_count += 1
            self.session_present = bool(flags.session_present)
            if self.session_present and not self.clean_session:
                # The broker kept our subscriptions: subscribing again would only replay retained messages.
                self._subscribed = True
                self._cond.notify_all()
                return
        result, mid = client.subscribe([(self.topic, self.qos), (self.sync_topic, 1)])
        with self._cond:
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._failure = CollectorConnectError(f"subscribe failed: {result}", str(result))
            self._sub_mid = mid
            self._cond.notify_all()

    def _on_connect_fail(self, _c: Any, _u: Any) -> None:
        with self._cond:
            self._log.append("connect failed (transport)")
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        with self._cond:
            if mid != self._sub_mid:
                return
            bad = [r for r in reasons if r.is_failure]
            if bad:
                self._failure = CollectorConnectError(
                    f"subscription to {self.topic!r} refused: {bad[0]}", str(bad[0]), bad[0]
                )
            else:
                self._subscribed = True
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._connected = False
            self.disconnect_count += 1
            self._log.append(f"disconnected: {_describe(reason)}")
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            if msg.topic.startswith(self.sync_topic):
                self._sync_seen.add(msg.payload.decode())
                self._cond.notify_all()
                return
            m = Message(
                index=len(self._messages), topic=msg.topic, payload=bytes(msg.payload),
                retain=bool(msg.retain), qos=msg.qos, dup=bool(msg.dup), at=time.monotonic(),
            )
            self._messages.append(m)
            # Readings are parsed on arrival so that waiting for the n-th one stays cheap.
            try:
                if m.topic.endswith("/reading"):
                    self._readings.append(m.json())
                elif m.topic.endswith("/readings"):
                    self._readings.extend(m.json()["readings"])
            except (AssertionError, KeyError, TypeError) as exc:
                self._parse_errors.append(f"message #{m.index} on {m.topic}: {exc!r}")
            self._cond.notify_all()

    # -- connection ------------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> Self:
        """Connect, subscribe and return once the SUBACK arrived (or the broker kept the session).

        Can be called again after :meth:`disconnect` to resume the same session.

        Args:
            timeout: seconds to wait for CONNACK and SUBACK.

        Returns:
            self.

        Raises:
            ssl.SSLError: the TLS handshake failed (e.g. ``SSLCertVerificationError`` for an untrusted broker).
            ConnectionRefusedError: nothing listens on the port.
            CollectorConnectError: the broker refused the login or the subscription, or closed the connection.
        """
        with self._cond:
            self._failure = None
            self._subscribed = False
            self._sub_mid = None
            self._log.clear()
            # Any disconnect before the SUBACK fails this attempt (refused login, TLS alert, ...).
            disconnects = self.disconnect_count
        try:
            self.client.connect(self.host, self.port, self.keepalive)
        except OSError as exc:
            _close_sockets_of(exc)
            self._release_sockets()
            raise
        self.client.loop_start()
        self._loop_running = True
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._subscribed or self._failure is not None or self.disconnect_count > disconnects,
                timeout,
            )
            failure = self._failure
            subscribed = self._subscribed
            last = self._problem()
        if subscribed:
            return self
        self._stop_loop()
        if failure is not None:
            raise failure
        if done:
            hint = ""
            if self.ca_cert is not None and self.client_cert is None:
                # With TLS 1.3 a broker that wants a client certificate says so only by closing the
                # connection after the handshake; the client sees an EOF or a reset, not a reason.
                hint = " (the broker may require a client certificate: pass client_cert/client_key)"
            raise CollectorConnectError(f"{self.host}:{self.port} closed the connection: {last}{hint}", last)
        raise CollectorConnectError(f"no CONNACK/SUBACK from {self.host}:{self.port} within {timeout:g}s "
                                    f"(last: {last or 'nothing'})", last or "timeout")

    def _stop_loop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        if self._loop_running:
            self.client.loop_stop()
            self._loop_running = False
        self._release_sockets()
        with self._cond:
            self._connected = False

    def _release_sockets(self) -> None:
        # paho keeps its wake-up socket pair open until the client is garbage collected, and the
        # collector and its client form a reference cycle, so that happens at an arbitrary later
        # time with a ResourceWarning. paho has no public close; connect() makes a new pair.
        reset = getattr(self.client, "_reset_sockets", None)
        if reset is not None:
            reset()

    def disconnect(self) -> None:
        """Disconnect cleanly; with ``clean_session=False`` the broker keeps queuing for us."""
        self._stop_loop()

    close = disconnect

    @property
    def connected(self) -> bool:
        """Whether the MQTT connection is up (CONNACK received, not lost since)."""
        with self._cond:
            return self._connected

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until connected and subscribed, e.g. after a broker restart.

        Raises:
            AssertionError: not connected within ``timeout``.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._connected and self._subscribed, timeout):
                raise AssertionError(f"collector not reconnected to {self.host}:{self.port} within {timeout:g}s "
                                     f"(last: {self._last_log() or 'nothing'})")

    def wait_disconnected(self, timeout: float = 10.0) -> None:
        """Wait until the collector saw its connection drop (e.g. after a broker kill).

        Raises:
            AssertionError: still connected after ``timeout``.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: not self._connected, timeout):
                raise AssertionError(f"collector still connected after {timeout:g}s")

    def sync(self, timeout: float = 10.0) -> None:
        """Barrier: publish a marker to ourselves and wait for it.

        Everything the broker already held for this collector (queued, in flight, retained on
        subscribe) is delivered before the marker, so afterwards "not received" means "not sent to
        the broker before the call". It says nothing about messages still in another client's queue.

        Raises:
            AssertionError: the marker did not come back within ``timeout``.
        """
        token = f"{next(self._sync_counter)}-{uuid.uuid4().hex[:6]}"
        self.client.publish(self.sync_topic, token, qos=1)
        with self._cond:
            if not self._cond.wait_for(lambda: token in self._sync_seen, timeout):
                raise AssertionError(f"sync marker not received within {timeout:g}s (connected={self._connected})")

    def publish(
        self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1, retain: bool = False,
        timeout: float = 10.0,
    ) -> None:
        """Publish on this collector's connection and wait for the PUBACK (QoS 1) or the write (QoS 0).

        Handy as the "other client" in tests: a second collector with ``clean_session=True`` and a
        topic nobody uses makes a plain publisher.

        Args:
            topic: the topic.
            payload: bytes, text, or an object sent as JSON.
            qos: 0 or 1.
            retain: the RETAIN flag.
            timeout: seconds.

        Raises:
            AssertionError: not acknowledged within ``timeout``.
        """
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        info = self.client.publish(topic, data, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise AssertionError(f"publish to {topic} not acknowledged within {timeout:g}s (rc={info.rc})")

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.disconnect()

    # -- waiting ---------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, what: str | None = None) -> T:
        """Wait until ``predicate()`` is truthy; it is re-evaluated on every received message.

        Args:
            predicate: a zero-argument callable (it may call this collector's getters).
            timeout: seconds.
            what: description for the failure message.

        Returns:
            The predicate's truthy value.

        Raises:
            AssertionError: not satisfied within ``timeout``; lists what was received.
        """
        with self._cond:
            result = self._cond.wait_for(predicate, timeout)
            if not result:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {what or predicate!r}\n{self.summary()}"
                )
            return result

    def wait_count(
        self, match: str | Callable[[Message], bool], n: int, timeout: float = 10.0
    ) -> list[Message]:
        """Wait until at least ``n`` messages match.

        Args:
            match: a topic suffix (``"/reading"``, ``"/status"``, ``"gw-01/events"``) or a predicate on messages.
            n: how many.
            timeout: seconds.

        Returns:
            The matching messages (at least ``n``) in arrival order.
        """
        pred: Callable[[Message], bool] = (lambda m: m.topic.endswith(match)) if isinstance(match, str) else match

        def enough() -> list[Message] | None:
            found = [m for m in self._messages if pred(m)]
            return found if len(found) >= n else None

        got = self.wait_for(enough, timeout, what=f"{n} messages matching {match!r}")
        assert got is not None  # wait_for returns only a truthy result
        return got

    def wait_readings(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` readings arrived (single and batched), duplicates included.

        Returns:
            All readings so far.
        """
        self.wait_for(lambda: len(self._readings) >= n, timeout, what=f"{n} readings")
        return self.readings()

    # -- what was received -----------------------------------------------------------------------

    @property
    def messages(self) -> list[Message]:
        """Every recorded message in arrival order (a copy)."""
        with self._cond:
            return list(self._messages)

    def on(self, topic_suffix: str) -> list[Message]:
        """Messages whose topic ends with ``topic_suffix``."""
        with self._cond:
            return [m for m in self._messages if m.topic.endswith(topic_suffix)]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._cond:
            self._messages.clear()
            self._readings.clear()
            self._parse_errors.clear()

    def readings(self) -> list[dict[str, Any]]:
        """Reading messages in arrival order: ``.../reading`` payloads and the items of ``.../readings`` batches.

        Raises:
            AssertionError: a reading or batch payload could not be parsed.
        """
        with self._cond:
            if self._parse_errors:
                raise AssertionError("unparsable reading messages:\n" + "\n".join(self._parse_errors))
            return list(self._readings)

    def seqs(self, gateway: str | None = None, device: str | None = None) -> list[int]:
        """``seq`` of every reading in arrival order, optionally for one gateway and/or device."""
        return [
            r["seq"] for r in self.readings()
            if (gateway is None or r.get("gateway") == gateway) and (device is None or r.get("device") == device)
        ]

    def duplicates(self) -> list[tuple[str, int]]:
        """(gateway, seq) keys received more than once, in order of their first repeat."""
        seen: set[tuple[str, int]] = set()
        dups: dict[tuple[str, int], None] = {}
        for r in self.readings():
            key = (r["gateway"], r["seq"])
            if key in seen:
                dups.setdefault(key, None)
            seen.add(key)
        return list(dups)

    def order_violations(self) -> list[str]:
        """Per (gateway, device): readings whose seq is not above every earlier one, in arrival order.

        An exact redelivery (same gateway and seq, identical message) is allowed: delivery is at least
        once. The same seq with a different message is a violation (a seq was reused).

        Returns:
            One readable line per violation; empty when in order.
        """
        by_key: dict[tuple[str, int], dict[str, Any]] = {}
        last: dict[tuple[str, str], int] = {}
        problems: list[str] = []
        for i, r in enumerate(self.readings()):
            gw: str = r["gateway"]
            dev: str = r["device"]
            seq: int = r["seq"]
            prev = by_key.get((gw, seq))
            if prev is not None:
                if prev != r:
                    problems.append(f"reading #{i}: seq {seq} of {gw} reused with a different message: {prev} / {r}")
                continue
            by_key[(gw, seq)] = r
            top = last.get((gw, dev))
            if top is not None and seq <= top:
                problems.append(f"reading #{i}: {gw}/{dev} seq {seq} arrived after seq {top}")
            else:
                last[(gw, dev)] = seq
        return problems

    def per_device_in_order(self) -> bool:
        """Whether seqs increase per device in arrival order (see :meth:`order_violations`)."""
        return not self.order_violations()

    def gaps(self) -> dict[str, list[int]]:
        """Per gateway, the seqs missing between the lowest and the highest received (lost data)."""
        by_gw: dict[str, set[int]] = collections.defaultdict(set)
        for r in self.readings():
            by_gw[r["gateway"]].add(r["seq"])
        return {
            gw: sorted(set(range(min(s), max(s) + 1)) - s) for gw, s in by_gw.items()
        }

    def events(self) -> list[dict[str, Any]]:
        """Parsed payloads of ``.../events`` messages in arrival order."""
        return [m.json() for m in self.on("/events")]

    def statuses(self, topic: str) -> list[dict[str, Any]]:
        """Parsed payloads received on exactly ``topic`` (e.g. ``fieldgate/gw-01/status``), in order."""
        with self._cond:
            return [m.json() for m in self._messages if m.topic == topic]

    def check_contract(self, prefix: str = "fieldgate") -> None:
        """Validate every recorded message against the wire contract.

        Raises:
            AssertionError: listing every message that does not conform.
        """
        from .contract import validate_message

        problems: list[str] = []
        for m in self.messages:
            if m.topic.startswith(prefix + "/"):
                try:
                    validate_message(m.topic, m.payload, prefix=prefix)
                except AssertionError as exc:
                    problems.append(f"#{m.index} {exc}")
        if problems:
            raise AssertionError(f"{len(problems)} messages break the contract:\n" + "\n".join(problems))

    def retained(self, topic: str, timeout: float = 10.0) -> Message | None:
        """The message the broker currently retains on ``topic``, asked with a fresh subscription.

        A subscriber that was already subscribed cannot tell a retained publish from a live one
        (the broker clears RETAIN on live delivery), so this asks the broker anew.

        Args:
            topic: an exact topic (no wildcards).
            timeout: seconds.

        Returns:
            The retained message, or None if nothing (or an empty payload) is retained there.
        """
        found = self.retained_map(topic, timeout)
        return found.get(topic)

    def retained_map(self, topic_filter: str, timeout: float = 10.0) -> dict[str, Message]:
        """Every retained message matching ``topic_filter``, by topic (fresh clean-session subscription)."""
        probe = Collector(
            self.host, self.port, topic=topic_filter, clean_session=True, ca_cert=self.ca_cert,
            client_cert=self.client_cert, client_key=self.client_key, username=self.username,
            password=self.password,
        )
        with probe:
            probe.sync(timeout)
            return {m.topic: m for m in probe.messages if m.retain and m.payload}

    def summary(self, last: int = 20) -> str:
        """A short text of the state and the last messages, for failure messages."""
        with self._cond:
            lines = [f"collector {self.client_id} on {self.host}:{self.port} topic={self.topic!r} "
                     f"connected={self._connected} messages={len(self._messages)} readings={len(self._readings)}"]
            for m in self._messages[-last:]:
                lines.append(f"  #{m.index} {m.topic} retain={int(m.retain)} {m.payload[:160]!r}")
            if self._log:
                lines.append(f"  last paho log: {self._log[-1]}")
            return "\n".join(lines)

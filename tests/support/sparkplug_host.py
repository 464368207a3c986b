"""A Sparkplug 3.0 host application for tests, in Python on the real mosquitto.

It plays the part of Ignition's MQTT Engine: a primary host that publishes its STATE (birth
retained, death as its will), subscribes to ``spBv1.0/#``, decodes every payload with the
project's proto (a foreign decoder is checked in tests/sparkplug/test_interop.py), and sends NCMD
and DCMD. Every message is checked, in arrival order, against the edge node rules of the
specification; a broken rule is recorded with its assertion ID and :meth:`SparkplugHost.check`
fails with all of them (``[tck-id-payloads-ddata-seq-inc] DDATA seq 7 after 5``).

MQTT 5 with "retain as published", so the retain flag an edge node set is seen, and QoS 1
subscriptions, so a message published at QoS 0 arrives at QoS 0 (the QoS it was sent with).
paho's network thread receives; waits are on a condition variable with a deadline, never sleeps.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from fieldgate.sparkplug.codec import QUALITY_CODES, metric_value
from fieldgate.sparkplug.fieldgate_sparkplug_b_pb2 import Payload
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = ["SparkplugHost", "SpbMessage", "Value"]

_EDGE_KINDS = ("NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH")
_DATATYPES = range(1, 35)
_NUMERIC_OK = {
    "int_value": {1, 2, 3, 5, 6, 7}, "long_value": {4, 8, 13}, "float_value": {9}, "double_value": {10},
    "boolean_value": {11}, "string_value": {12, 14, 15}, "bytes_value": {17, 18},
}


@dataclass
class Value:
    """One metric value a DDATA (or DBIRTH) carried, resolved to its name through the birth."""

    device: str
    name: str
    value: Any
    ts: int
    historical: bool
    fg_seq: int | None
    quality: int | None
    reason: str | None
    birth: bool = False


@dataclass
class SpbMessage:
    """One Sparkplug message as delivered: topic parts, MQTT flags and the decoded payload."""

    index: int
    topic: str
    kind: str
    group: str
    node: str
    device: str | None
    qos: int
    retain: bool
    payload: Payload | None
    raw: bytes
    at: float = field(default_factory=time.monotonic)

    def metric(self, name: str) -> Payload.Metric | None:
        if self.payload is None:
            return None
        return next((m for m in self.payload.metrics if m.name == name), None)

    @property
    def bdseq(self) -> int | None:
        m = self.metric("bdSeq")
        return None if m is None else int(metric_value(m))

    @property
    def seq(self) -> int | None:
        return self.payload.seq if self.payload is not None and self.payload.HasField("seq") else None


def _props(m: Payload.Metric) -> dict[str, Payload.PropertyValue]:
    return dict(zip(m.properties.keys, m.properties.values, strict=False))


class SparkplugHost:
    """A primary host application named ``host_id``, watching one edge node (``group``/``node``).

    Args:
        host, port: the broker.
        host_id: the Sparkplug host id (the edge node's ``primary_host_id``).
        group, node: the edge node whose rules are checked (other nodes' messages are kept, not checked).
        joins_late: the node may be in a session already: ask for a rebirth and check from its NBIRTH.
    """

    def __init__(self, host: str, port: int, *, host_id: str = "scada", group: str = "plant",
                 node: str = "gw-1", joins_late: bool = False) -> None:
        self.host, self.port = host, port
        self.host_id, self.group, self.node = host_id, group, node
        self.messages: list[SpbMessage] = []
        self.values: list[Value] = []
        self.violations: list[str] = []
        self._cond = threading.Condition()
        self._client: mqtt.Client | None = None
        self.online = False  # what our STATE last said
        self._state_ts = 0
        self._offline_at: int | None = None  # index of the first message after we said offline
        # The checker's view of the edge node's session.
        self._born = False
        self._bdseq: int | None = None  # of the current session (its NBIRTH)
        self._last_death_bdseq: int | None = None
        self._seq: int | None = None
        self._data_seen = False
        self._aliases: dict[int, tuple[str, str, int]] = {}  # alias -> (device, name, datatype)
        self._devices_alive: set[str] = set()
        self._devices_dead: set[str] = set()
        self.nbirths: list[SpbMessage] = []
        self.ndeaths: list[SpbMessage] = []
        self.connects = 0
        self._dead_seq: int | None = None  # the last seq of the session an NDEATH ended
        self.late: list[SpbMessage] = []  # its messages that arrived after the NDEATH
        self.joins_late = joins_late
        self._resync = joins_late  # after a reconnect of ours: record, check again from the next NBIRTH
        self._subscribed = threading.Event()

    # --- connection and STATE ------------------------------------------------------------------

    def _timestamp(self) -> int:
        self._state_ts = max(int(time.time() * 1000), self._state_ts + 1)
        return self._state_ts

    def _state(self, online: bool) -> bytes:
        return json.dumps({"online": online, "timestamp": self._state_ts}).encode()

    @property
    def state_topic(self) -> str:
        return f"spBv1.0/STATE/{self.host_id}"

    def connect(self, *, online: bool = True, timeout: float = 10.0) -> Self:
        """Connect (STATE death as the will), subscribe to ``spBv1.0/#``, then say online (retained).

        paho reconnects after a broker restart; each connection subscribes again, says its STATE
        again, and asks the edge node for a rebirth (as a host does that may have missed a birth
        meanwhile); until the next NBIRTH the checker only records ([tck-id-operational-behavior-host-
        reordering-rebirth]).
        """
        self._timestamp()
        self.online = online
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"spb-host-{uuid.uuid4().hex[:8]}",
                        protocol=MQTTProtocolVersion.MQTTv5)
        c.will_set(self.state_topic, self._state(False), qos=1, retain=True)
        c.reconnect_delay_set(0.05, 0.5)
        c.on_message = self._on_message
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        self._subscribed = threading.Event()
        self._client = c
        c.connect(self.host, self.port, 30, clean_start=True)
        c.loop_start()
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"host: no SUBACK from {self.host}:{self.port} within {timeout:g}s")
        return self

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        self.connects += 1
        if self.connects > 1:
            with self._cond:
                self._resync = True
        c.subscribe([("spBv1.0/#", SubscribeOptions(qos=1, retainAsPublished=True))])

    def _on_subscribe(self, c: mqtt.Client, *_a: Any) -> None:
        # STATE after the subscription ([tck-id-payloads-state-subscribe], [tck-id-payloads-state-birth]).
        c.publish(self.state_topic, self._state(self.online), qos=1, retain=True)
        if self.connects > 1 or self.joins_late:
            self.rebirth()
        self._subscribed.set()

    def say(self, *, online: bool, timeout: float = 10.0) -> None:
        """Publish our STATE (QoS 1, retained) and wait for its PUBACK."""
        assert self._client is not None
        self._timestamp()
        with self._cond:
            self.online = online
            self._offline_at = None if online else len(self.messages)
        info = self._client.publish(self.state_topic, self._state(online), qos=1, retain=True)
        info.wait_for_publish(timeout)

    def disconnect(self) -> None:
        """Leave as a host does on purpose: STATE offline first, then DISCONNECT."""
        if self._client is None:
            return
        if self._client.is_connected():
            self.say(online=False)
            self._client.disconnect()
        self._client.loop_stop()
        self._client = None

    def crash(self) -> None:
        """Die without a word (a SCADA server that loses power): the broker sends our will, STATE offline."""
        if self._client is None:
            return
        sock = self._client.socket()
        self._client.loop_stop()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the broker publishes the will
            sock.close()
        self._client = None
        with self._cond:
            self.online = False
            self._offline_at = len(self.messages)

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.disconnect()

    # --- commands -------------------------------------------------------------------------------

    def _publish(self, topic: str, payload: Payload) -> None:
        assert self._client is not None
        # NCMD/DCMD: QoS 0, not retained ([tck-id-payloads-ncmd-qos], [tck-id-payloads-dcmd-qos]).
        self._client.publish(topic, payload.SerializeToString(), qos=0, retain=False)

    def rebirth(self) -> None:
        """NCMD ``Node Control/Rebirth`` = true ([tck-id-operational-behavior-data-commands-ncmd-rebirth-*])."""
        p = Payload(timestamp=int(time.time() * 1000))
        m = p.metrics.add(name="Node Control/Rebirth", datatype=11)
        m.boolean_value = True
        self._publish(f"spBv1.0/{self.group}/NCMD/{self.node}", p)

    def dcmd(self, device: str, name: str, value: float) -> None:
        """DCMD writing ``value`` to a metric, by its alias from the DBIRTH."""
        alias = next(a for a, (d, n, _t) in self._aliases.items() if d == device and n == name)
        p = Payload(timestamp=int(time.time() * 1000))
        m = p.metrics.add(alias=alias, timestamp=int(time.time() * 1000))
        m.double_value = value
        self._publish(f"spBv1.0/{self.group}/DCMD/{self.node}/{device}", p)

    def send_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish anything (hostile input tests)."""
        assert self._client is not None
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    # --- receiving and checking -----------------------------------------------------------------

    def _violate(self, tck_id: str, text: str) -> None:
        self.violations.append(f"[{tck_id}] {text}")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 3 or parts[1] == "STATE":
            return
        kind = parts[2]
        payload: Payload | None = Payload()
        try:
            payload.ParseFromString(msg.payload)
        except Exception as exc:  # recorded as a violation, not raised on paho's thread
            payload = None
            if kind in _EDGE_KINDS and parts[3:4] == [self.node]:  # commands are anyone's (our hostile ones too)
                self._violate("tck-id-message-flow-edge-node-birth-publish-will-message-payload",
                              f"{msg.topic}: not a Sparkplug B payload: {exc}")
        with self._cond:
            m = SpbMessage(len(self.messages), msg.topic, kind, parts[1], parts[3] if len(parts) > 3 else "",
                           parts[4] if len(parts) > 4 else None, int(msg.qos), bool(msg.retain), payload,
                           bytes(msg.payload))
            self.messages.append(m)
            if m.group == self.group and m.node == self.node and kind in _EDGE_KINDS:
                self._check(m)
            self._cond.notify_all()

    def _check(self, m: SpbMessage) -> None:
        p = m.payload
        if p is None:
            return
        k = m.kind
        parts = m.topic.split("/")
        if len(parts) != (5 if k.startswith("D") else 4) or not all(parts):
            # spBv1.0/group/TYPE/node for node messages, .../node/device for device messages.
            self._violate("tck-id-topic-structure", f"{m.topic}: not namespace/group_id/{k}/edge_node_id"
                          + ("/device_id" if k.startswith("D") else ""))
            return
        if self._resync and k != "NBIRTH":
            # We may have missed the birth of the session these belong to: keep the values (aliases
            # are those of the last birth seen), check nothing until the rebirth we asked for.
            if k == "DDATA":
                for x in p.metrics:
                    owner = self._aliases.get(x.alias)
                    if owner is not None:
                        self._record(owner[0], owner[1], x)
            if k == "NDEATH":
                self.ndeaths.append(m)
            return
        if k == "NBIRTH" and self._resync:
            self._resync, self._born = False, False
        lower = k.lower()
        if k == "NDEATH":
            # The will: QoS 1 and not retained; bdSeq of the session it ends.
            if m.qos != 1:
                self._violate("tck-id-payloads-ndeath-will-message-qos", f"NDEATH arrived at QoS {m.qos}")
            if m.retain:
                self._violate("tck-id-payloads-ndeath-will-message-retain", "NDEATH is retained")
            if m.bdseq is None:
                self._violate("tck-id-payloads-ndeath-bdseq", "NDEATH without a bdSeq metric")
            # An NDEATH with another bdSeq is of another connection (one that never sent NBIRTH): it
            # does not end this session; the scenarios assert the pairing of NBIRTH and NDEATH.
            self.ndeaths.append(m)
            if self._born and m.bdseq == self._bdseq:
                self._born = False
                self._devices_alive.clear()
                self._dead_seq = self._seq
            self._last_death_bdseq = m.bdseq
            return
        # Every other edge node message: QoS 0, not retained, a timestamp and a seq.
        qos_id, retain_id = (("tck-id-topics-ddeath-mqtt",) * 2 if k == "DDEATH"
                             else (f"tck-id-payloads-{lower}-qos", f"tck-id-payloads-{lower}-retain"))
        if m.qos != 0:
            self._violate(qos_id, f"{k} published at QoS {m.qos}, not 0")
        if m.retain:
            self._violate(retain_id, f"{k} is retained")
        if not p.HasField("timestamp"):
            self._violate(f"tck-id-payloads-{lower}-timestamp", f"{k} without a payload timestamp")
        if not p.HasField("seq"):
            self._violate("tck-id-payloads-sequence-num-always-included", f"{k} without seq")
            return
        if k == "NBIRTH":
            self._check_nbirth(m, p)
            return
        if not self._born and self._dead_seq is not None and p.seq == (self._dead_seq + 1) % 256:
            # A message of the session that just died, delivered after its NDEATH: the broker orders
            # QoS 0 and QoS 1 messages independently, so a will may overtake DATA sent before it
            # (a host reorders by seq). On the same connection, so not a message after death.
            self._dead_seq = p.seq
            self.late.append(m)
            return
        if not self._born:
            tck = ("tck-id-message-flow-device-birth-publish-nbirth-wait" if k == "DBIRTH"
                   else f"tck-id-payloads-{lower}-order")
            self._violate(tck, f"{k} (seq {p.seq}) without an NBIRTH in this session")
            return
        expected = ((self._seq or 0) + 1) % 256
        if p.seq != expected:
            self._violate(f"tck-id-payloads-{lower}-seq-inc",
                          f"{k}{'/' + m.device if m.device else ''} seq {p.seq}, expected {expected}")
        self._seq = p.seq
        if k == "DBIRTH":
            self._check_dbirth(m, p)
        elif k == "DDATA":
            self._check_ddata(m, p)
        elif k == "DDEATH":
            if m.device not in self._devices_alive:
                self._violate("tck-id-operational-behavior-device-ddeath", f"DDEATH of {m.device}, which is not born")
            self._devices_alive.discard(m.device or "")
            self._devices_dead.add(m.device or "")
            self._data_seen = True

    def _check_nbirth(self, m: SpbMessage, p: Payload) -> None:
        if p.seq != 0:
            # 3.0 allows 0-255 in 6.4.19 but 12.13 and the TCK ask 0; we send 0 on every birth.
            self._violate("tck-id-payloads-nbirth-seq", f"NBIRTH seq {p.seq}, not 0")
        bd = m.bdseq
        if bd is None:
            self._violate("tck-id-payloads-nbirth-bdseq", "NBIRTH without a bdSeq metric")
        rebirth = next((x for x in p.metrics if x.name == "Node Control/Rebirth"), None)
        if rebirth is None or rebirth.datatype != 11 or rebirth.WhichOneof("value") != "boolean_value" \
                or rebirth.boolean_value:
            self._violate("tck-id-payloads-nbirth-rebirth-req", "NBIRTH without Node Control/Rebirth = false (Boolean)")
        elif rebirth.HasField("alias"):
            self._violate("tck-id-operational-behavior-data-commands-rebirth-name-aliases",
                          "NBIRTH gives Node Control/Rebirth an alias")
        if self._born and bd != self._bdseq:
            # A new session's NBIRTH while the last one was never declared dead.
            self._violate("tck-id-operational-behavior-data-commands-rebirth-action-3",
                          f"NBIRTH with bdSeq {bd} in the session of bdSeq {self._bdseq} (no NDEATH between)")
        if not self._born and self._last_death_bdseq is not None and bd == self._last_death_bdseq:
            self._violate("tck-id-topics-nbirth-bdseq-increment",
                          f"NBIRTH repeats bdSeq {bd} of the NDEATH before it")
        if not self.online and self._offline_at is not None and any(
                d.index > self._offline_at for d in self.ndeaths):
            self._violate("tck-id-message-flow-edge-node-birth-publish-phid-wait",
                          "NBIRTH on a new connection while the primary host is offline")
        self._born, self._bdseq, self._seq, self._data_seen = True, bd, 0, False
        self._dead_seq = None
        self._aliases = {}  # a birth defines the aliases of its session afresh
        self._devices_alive.clear()
        self._devices_dead.clear()
        self.nbirths.append(m)

    def _check_dbirth(self, m: SpbMessage, p: Payload) -> None:
        dev = m.device or ""
        if self._data_seen and dev not in self._devices_dead:
            self._violate("tck-id-payloads-dbirth-order", f"DBIRTH of {dev} after DATA, and {dev} did not die")
        for x in p.metrics:
            if not x.name or not x.HasField("alias"):
                self._violate("tck-id-payloads-alias-birth-requirement", f"DBIRTH {dev}: metric {x.name!r} "
                              "without both name and alias")
                continue
            if not x.HasField("datatype") or x.datatype not in _DATATYPES:
                self._violate("tck-id-payloads-metric-datatype-req", f"DBIRTH {dev}: {x.name} datatype missing")
            owner = self._aliases.get(x.alias)
            if owner is not None and owner[:2] != (dev, x.name):
                self._violate("tck-id-payloads-alias-uniqueness", f"alias {x.alias} of {dev}/{x.name} is also "
                              f"{owner[0]}/{owner[1]}")
            self._aliases[x.alias] = (dev, x.name, x.datatype)
            kind = x.WhichOneof("value")
            if (kind is None) != x.is_null:
                self._violate("tck-id-operational-behavior-data-publish-dbirth-values",
                              f"DBIRTH {dev}/{x.name}: a value must be given, or is_null set without one")
            self._check_value(dev, x, x.datatype)
            self._record(dev, x.name, x, birth=True)
        self._devices_alive.add(dev)
        self._devices_dead.discard(dev)

    def _check_ddata(self, m: SpbMessage, p: Payload) -> None:
        dev = m.device or ""
        self._data_seen = True
        if dev not in self._devices_alive:
            self._violate("tck-id-payloads-ddata-order", f"DDATA of {dev}, which has no DBIRTH in this session "
                          "(or had a DDEATH)")
        for x in p.metrics:
            if x.name:
                self._violate("tck-id-payloads-alias-data-cmd-requirement", f"DDATA {dev}: metric named {x.name!r}")
            if x.HasField("datatype"):
                self._violate("tck-id-payloads-metric-datatype-not-req", f"DDATA {dev}: alias {x.alias} has datatype")
            owner = self._aliases.get(x.alias)
            if owner is None or owner[0] != dev:
                self._violate("tck-id-payloads-alias-data-cmd-requirement", f"DDATA {dev}: alias {x.alias} is not "
                              "one of its DBIRTH")
                continue
            if not x.HasField("timestamp"):
                self._violate("tck-id-payloads-ddata-timestamp", f"DDATA {dev}/{owner[1]} without timestamp")
            self._check_value(dev, x, owner[2])
            self._record(dev, owner[1], x)

    def _check_value(self, dev: str, x: Payload.Metric, datatype: int) -> None:
        kind = x.WhichOneof("value")
        if kind is not None and datatype not in _NUMERIC_OK.get(kind, set()):
            self._violate("tck-id-payloads-metric-datatype-value", f"{dev}: alias {x.alias} datatype {datatype} "
                          f"carried in {kind}")
        q = _props(x).get("Quality")
        if q is not None:
            if q.type != 3:
                self._violate("tck-id-payloads-propertyset-quality-value-type", f"{dev}: Quality of type {q.type}")
            if q.WhichOneof("value") != "int_value" or q.int_value not in QUALITY_CODES.values():
                self._violate("tck-id-payloads-propertyset-quality-value-value", f"{dev}: Quality {q}")

    def _record(self, dev: str, name: str, x: Payload.Metric, birth: bool = False) -> None:
        props = _props(x)
        seq = props.get("fieldgate_seq")
        q = props.get("Quality")
        reason = props.get("reason")
        self.values.append(Value(dev, name, metric_value(x), x.timestamp, x.is_historical,
                                 None if seq is None else seq.long_value, None if q is None else q.int_value,
                                 None if reason is None else reason.string_value, birth))

    # --- waiting and asserting ------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[SparkplugHost], bool], timeout: float = 20.0,
                 what: str = "condition") -> None:
        """Wait until ``predicate(self)`` holds (checked on every message)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [f"{m.kind}{'/' + m.device if m.device else ''}" for m in self.messages[-15:]]
                    raise AssertionError(f"host: timed out after {timeout:g}s waiting for {what}; last messages: "
                                         f"{kinds}; violations: {self.violations}")
                self._cond.wait(left)

    def of(self, kind: str, device: str | None = None) -> list[SpbMessage]:
        return [m for m in self.messages if m.kind == kind and m.node == self.node
                and (device is None or m.device == device)]

    def fg_seqs(self, *, historical: bool | None = None) -> set[int]:
        """The fieldgate seqs the DDATA values carried (optionally only historical or only live ones)."""
        return {v.fg_seq for v in self.values if v.fg_seq is not None and not v.birth
                and (historical is None or v.historical == historical)}

    def check(self) -> None:
        """Fail with every rule broken so far, each named by its assertion ID."""
        with self._cond:
            if self.violations:
                raise AssertionError("Sparkplug rules broken:\n  " + "\n  ".join(self.violations))


"""The Sparkplug B output: the durable buffer published as a Sparkplug 3.0 edge node.

A subclass of :class:`~fieldgate.uplink.BufferedUplink`: the buffer, the flusher, the
publisher's read-ahead and window, reconnects and reloads are the JSON output's. What differs:

* the will is NDEATH with this connection's bdSeq (:meth:`_new_link`), and leaving on purpose
  sends NDEATH too (:class:`SparkplugLink`);
* a session first waits for the primary host's STATE online, then sends NBIRTH and the DBIRTHs
  (:meth:`_session`);
* readings go out as DDATA, by alias, historical when they were accepted before this session's
  birth (:meth:`_publish_rows`); a device going offline and back is DDEATH / DBIRTH
  (:meth:`device_status`); NCMD rebirth re-sends every birth; DCMD is refused for now.

Acknowledgement: the specification publishes DATA at QoS 0 ([tck-id-payloads-ddata-qos]),
which has no PUBACK. A reading is deleted from the buffer only when the broker has it, so each
publishing turn ends with one QoS 1 message on ``{topic_prefix}/{gateway}/sparkplug/delivered``
(outside the Sparkplug namespace); the broker handles one client's packets in order, so its
PUBACK says that every DDATA before it was received. Until then the readings stay buffered
and are sent again after a reconnect (at least once, as with JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ..buffer import Row
from ..config import GatewayConfig, MqttConfig, SparkplugConfig
from ..mqtt import Inbound, InboundHandler, MqttLink
from ..ratelimit import TokenBucket
from ..uplink import BufferedUplink
from . import NAMESPACE
from .codec import SparkplugError, decode, metric_value, parse_state, rebirth_requested
from .node import BdSeqStore, Catalogue, EdgeNode

if TYPE_CHECKING:
    from ..commands import CommandExecutor

log = logging.getLogger(__name__)

_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE)
_REBIRTH_RATE, _REBIRTH_BURST = 1.0, 3  # rebirths per second after a burst of three


def _now_ms() -> int:
    return int(time.time() * 1000)


class SparkplugLink(MqttLink):
    """An MQTT connection whose last will is NDEATH, and that sends NDEATH when it leaves on purpose."""

    def __init__(self, cfg: MqttConfig, client_id: str, will: tuple[str, bytes],
                 on_ack: Any, subscriptions: Mapping[str, InboundHandler] | None = None) -> None:
        super().__init__(cfg, client_id, will, on_ack, subscriptions)
        # NDEATH: QoS 1, not retained ([tck-id-payloads-ndeath-will-message-qos], [...-retain]).
        self.client.will_set(will[0], will[1], qos=1, retain=False)
        self.ndeath = will

    def publish0(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 0, not retained: BIRTH, DATA and DEATH messages of the specification."""
        info = self.client.publish(topic, payload, qos=0, retain=False)
        if info.rc not in _QUEUED:
            self.connected.clear()
            self.closed.set()

    async def disconnect(self) -> None:
        """Leave with NDEATH ([tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath]).

        MQTT 5: DISCONNECT with reason "Disconnect with Will Message", so the broker sends the will
        ([tck-id-payloads-ndeath-will-message-publisher-disconnect-mqtt50]); 3.1.1: NDEATH is published
        before the DISCONNECT ([...-disconnect-mqtt311]).
        """
        self.leaving = True
        if self.connected.is_set():
            if self.cfg.protocol == "5":
                self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
            else:
                self.publish(*self.ndeath)
                self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self.closed.wait()
        self.abort()


class SparkplugUplink(BufferedUplink):
    """The gateway's output with ``mqtt.format: sparkplug``: a Sparkplug B 3.0 edge node."""

    kind: ClassVar[str] = "sparkplug"

    def __init__(self, cfg: GatewayConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        spb = cfg.sparkplug
        if spb.group_id is None:
            raise ValueError("SparkplugUplink needs sparkplug.group_id")
        self.spb: SparkplugConfig = spb
        data_dir = cfg.gateway.data_dir
        self._bdseq_store = BdSeqStore(data_dir)
        self.node = EdgeNode(spb.group_id, spb.edge_node_id or cfg.gateway.id, Catalogue(data_dir))
        self._live_from = 0  # readings up to this seq were accepted before the session's birth: historical
        self._host_online = False
        self._host_ts: int | None = None
        self._host_changed = asyncio.Event()
        # (broker, STATE timestamp) of the host's online that the last births on that broker followed, and
        # whether this connection's STATE online is only that same one again (see _wait_for_host).
        self._born_on: tuple[str, int] | None = None
        self._state_unconfirmed = False
        self._walks = 0  # servers left since the last birth because the primary host was offline there
        #: The command executor when ``commands.enabled`` (set by the composition root): DCMD writes
        #: go through it, with its rules (allowed devices, writable points, ranges, rate, audit).
        self.commands: CommandExecutor | None = None
        self._dcmd_count = 0
        self._dcmd_tasks: set[asyncio.Task[None]] = set()
        self._leaving: asyncio.Task[None] | None = None
        self.refused_commands = 0
        self._configured = {d.id for d in cfg.devices if d.enabled}
        self._rebirths = TokenBucket(_REBIRTH_RATE, _REBIRTH_BURST, time.monotonic())
        self._rebirth_due: asyncio.TimerHandle | None = None
        if spb.primary_host_id:
            self.listen(f"{NAMESPACE}/STATE/{spb.primary_host_id}", self._on_state, under_prefix=False)
        self.listen(self.node.topic("NCMD"), self._on_ncmd, under_prefix=False)
        self.listen(self.node.topic("DCMD", "+"), self._on_dcmd, under_prefix=False)

    async def start(self) -> None:
        await super().start()
        await self._db(self.node.catalogue.load)
        if self.node.catalogue.problem:
            self.event("sparkplug_state_reset", file=str(self.node.catalogue.path),
                       problem=self.node.catalogue.problem)
        before = set(self.node.catalogue.devices)
        self.node.keep_only(self._configured, _now_ms())  # not born yet: nothing to send
        if set(self.node.catalogue.devices) != before:
            await self._db(self.node.catalogue.save)

    def reconfigure(self, cfg: GatewayConfig) -> None:
        """A reload's device list: devices removed from it get DDEATH and are forgotten."""
        super().reconfigure(cfg)
        self._configured = {d.id for d in cfg.devices if d.enabled}
        before = set(self.node.catalogue.devices)
        messages = self.node.keep_only(self._configured, _now_ms())
        link = self._link
        if messages and isinstance(link, SparkplugLink) and link.connected.is_set():
            for topic, payload in messages:
                link.publish0(topic, payload)
        if set(self.node.catalogue.devices) != before:
            self.node.catalogue.save()

    # --- what the JSON output does differently -------------------------------

    def _gateway_status(self, state: str) -> str:
        # The gateway's state is NBIRTH/NDEATH here: the JSON status topic holds nothing (an empty
        # retained message deletes one left by an earlier JSON run).
        return ""

    def _new_link(self, target: MqttConfig) -> MqttLink:
        problem = self._bdseq_store.problem
        self.node.bdseq = self._bdseq_store.next()
        if self._bdseq_store.problem and problem is None:
            self.event("sparkplug_state_reset", file=str(self._bdseq_store.path), problem=self._bdseq_store.problem)
        self._host_online = False  # verified again on every connection, from its (retained) STATE
        self._state_unconfirmed = False
        # STATE timestamps order one server's messages; another server's retained STATE may be older
        # than what the last server said, and must still count there.
        self._host_ts = None
        return SparkplugLink(target, self.mqtt.client_id or f"fieldgate-{self.gateway_id}",
                             self.node.will(_now_ms()), self._on_ack,
                             {self._full_filter(f, under): h for (f, under), h in self._listening.items()})

    async def _session(self, link: MqttLink) -> None:
        assert isinstance(link, SparkplugLink)
        if self.spb.primary_host_id:
            await self._commit_acks()  # the last session's acknowledgements, before a wait that may be long
            if not await self._wait_for_host(link):
                return
            self._walks = 0
            if self._host_ts is not None:
                self._born_on = (self.state.broker, self._host_ts)
        self._live_from = self._accepted_upto()
        self._birth(link)
        log.info("sparkplug: NBIRTH as %s/%s (bdSeq %d), %d device(s) born", self.node.group_id,
                 self.node.edge_node_id, self.node.bdseq, len(self.node.born_devices))
        try:
            await super()._session(link)
        finally:
            self.node.session_over()

    async def _wait_for_host(self, link: SparkplugLink) -> bool:
        """Until the primary host is online ([tck-id-message-flow-edge-node-birth-publish-phid-wait])."""
        if not self._host_online:
            log.info("sparkplug: connected; waiting for primary host %r (STATE online) before NBIRTH",
                     self.spb.primary_host_id)
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        said = False
        while not self._host_online or (self._state_unconfirmed
                                        and loop.time() - arrived < self.spb.stale_state_wait):
            if self._host_online and not said:
                said = True
                # After a broker crash its saved copy of the host's retained STATE online comes back
                # though the host is gone with the broker: data published now would reach nobody (DDATA
                # is QoS 0). A host that is really online still is; one coming back says so anew.
                log.info("sparkplug: primary host %r's STATE online is the one seen before the connection was "
                         "lost (a broker restarted from its saved state keeps it for a host that is gone): "
                         "waiting up to %gs for a newer one before NBIRTH", self.spb.primary_host_id,
                         self.spb.stale_state_wait)
            if not link.connected.is_set() or self._reconnect.is_set():
                return False
            servers = len(self.mqtt.endpoints)
            # The host said offline on this server: walk to the next one of mqtt.hosts
            # ([tck-id-operational-behavior-primary-application-state-with-multiple-servers-walk]).
            # With one server there is nowhere to go: wait here for it to come back. After a whole
            # pass found it offline everywhere, stay reconnect_max on each server before walking on:
            # every CONNECT writes a new bdSeq to the disk, and a SCADA outage may last hours.
            if self._host_ts is not None and servers > 1 and (
                    self._walks < servers - 1 or loop.time() - arrived >= self.mqtt.reconnect_max):
                self._walks += 1
                log.warning("sparkplug: primary host %r is offline on %s: moving to the next server",
                            self.spb.primary_host_id, self.state.broker)
                await link.disconnect()
                return False
            self._host_changed.clear()
            waiter = asyncio.create_task(self._host_changed.wait())
            closed = asyncio.create_task(link.closed.wait())
            try:
                await asyncio.wait({waiter, closed}, timeout=0.5 if self._state_unconfirmed else 1.0,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                closed.cancel()
        return link.connected.is_set()

    def _birth(self, link: SparkplugLink) -> None:
        for topic, payload in self.node.birth(_now_ms()):
            link.publish0(topic, payload)

    def _publish_rows(self, link: MqttLink, rows: list[Row], batched: bool, per_message: int) -> None:
        assert isinstance(link, SparkplugLink)
        if self._leaving is not None:
            # The primary host went offline: nothing more before the NDEATH. These rows are not
            # acknowledged, so the next session reads them from the buffer again.
            return
        parsed: list[tuple[Row, dict[str, Any], bool]] = []
        for r in rows:
            try:
                obj = json.loads(r.body)
                metrics = obj["metrics"]
                if not isinstance(metrics, dict) or not all(isinstance(p, dict) for p in metrics.values()):
                    raise TypeError("metrics is not an object of objects")
            except (ValueError, KeyError, TypeError) as exc:
                # Not from our normalizer (a salvaged page?): it cannot be said in Sparkplug. Counted,
                # announced, and acknowledged below: kept, it would stop the queue for good.
                log.error("sparkplug: reading seq %d of %s cannot be encoded (%s); dropped", r.seq, r.device, exc)
                self.event("buffer_drop", reason="sparkplug_unencodable", seq=r.seq, device=r.device)
                continue
            parsed.append((r, metrics, obj.get("clock") == "unsynced"))
        now = _now_ms()
        if self.node.learn((r.device, m) for r, m, _c in parsed):
            # A new device, metric or datatype: births say every metric before any DDATA uses it
            # ([tck-id-operational-behavior-data-publish-dbirth]), so the whole birth sequence goes again.
            self.node.catalogue.save()
            self._birth(link)
        for r, metrics, unsynced in parsed:
            for topic, payload in self.node.data(r.device, metrics, r.ts_ms, r.seq, r.seq <= self._live_from, now,
                                                 unsynced):
                link.publish0(topic, payload)
        for topic, payload in self.node.settle(now):
            link.publish0(topic, payload)
        # The PUBACK of this QoS 1 message acknowledges the DDATA before it (see the module docstring).
        self._track(link.publish(f"{self.prefix}/sparkplug/delivered", str(rows[-1].seq)), [r.seq for r in rows])
        self.state.published += len(rows)

    # The two places that touch BufferedUplink's bookkeeping (where its split by job moves it, only these change).

    def _accepted_upto(self) -> int:
        """The highest seq committed so far, by this process or found in the buffer at start."""
        return max(self.readahead.committed_max, self.stats.newest_seq if self.stats else 0)

    def _track(self, mid: int, seqs: list[int]) -> None:
        """The PUBACK of ``mid`` acknowledges ``seqs``."""
        self.inflight.readings[mid] = seqs

    def device_status(self, device: str, state: str, error: str | None) -> None:
        link = self._link
        messages = self.node.status(device, state, _now_ms())
        if messages and isinstance(link, SparkplugLink) and link.connected.is_set():
            for topic, payload in messages:
                link.publish0(topic, payload)
        elif messages:
            self.node.session_over()  # not sent: the next connection's births say it

    # --- inbound: STATE, NCMD, DCMD ----------------------------------------

    def _on_state(self, msg: Inbound) -> None:
        try:
            online, ts = parse_state(msg.payload)
        except SparkplugError as exc:
            log.warning("sparkplug: ignoring STATE on %s: %s", msg.topic, exc)
            return
        if self._host_ts is not None and ts < self._host_ts:
            # An older STATE (a late delivery) must not move us
            # ([tck-id-operational-behavior-edge-node-termination-host-offline-timestamp]).
            log.info("sparkplug: ignoring a STATE older than the last one (%d < %d)", ts, self._host_ts)
            return
        self._host_ts = ts
        # Online again with nothing newer than what the last births followed, on the same broker: a copy
        # the broker may have saved before it crashed (checked in _wait_for_host). Anything newer confirms.
        self._state_unconfirmed = (online and not self.node.born and self._born_on == (self.state.broker, ts)
                                   and self.spb.stale_state_wait > 0)
        was, self._host_online = self._host_online, online
        self._host_changed.set()
        link = self._link
        if online and not was:
            log.info("sparkplug: primary host %r is online", self.spb.primary_host_id)
        if not online and self.node.born and isinstance(link, SparkplugLink) and self._leaving is None:
            log.warning("sparkplug: primary host %r went offline: NDEATH, disconnecting, waiting for it to "
                        "come back; readings stay buffered", self.spb.primary_host_id)
            self._leaving = asyncio.get_running_loop().create_task(self._leave(link), name="sparkplug-leave")

    async def _leave(self, link: SparkplugLink) -> None:
        try:
            await link.disconnect()  # the publisher sees the link closed and the connection loop reconnects
        finally:
            self._leaving = None

    def _on_ncmd(self, msg: Inbound) -> None:
        try:
            payload = decode(msg.payload)
        except SparkplugError as exc:
            log.warning("sparkplug: ignoring NCMD on %s: %s", msg.topic, exc)
            return
        if rebirth_requested(payload):
            self._request_rebirth()
            return
        names = [m.name or f"alias {m.alias}" for m in payload.metrics]
        log.warning("sparkplug: NCMD with %s refused: only Node Control/Rebirth is supported", names)

    def _request_rebirth(self) -> None:
        """Rebirth at once, or, in a flood of requests, once the bucket allows (every request is covered).

        Each rebirth re-sends every DBIRTH; anyone who may publish NCMD could otherwise keep the node
        (and the link) busy with births alone.
        """
        if self._rebirth_due is not None:
            return  # the scheduled one answers this request too
        now = time.monotonic()
        if self._rebirths.take(now):
            self._rebirth_now()
            return
        delay = self._rebirths.wait(now)
        log.warning("sparkplug: rebirth requests faster than %g/s (burst %d): the next birth in %.1f s",
                    _REBIRTH_RATE, _REBIRTH_BURST, delay)
        self._rebirth_due = asyncio.get_running_loop().call_later(delay, self._scheduled_rebirth)

    def _scheduled_rebirth(self) -> None:
        self._rebirth_due = None
        self._rebirths.take(time.monotonic())
        self._rebirth_now()

    def _rebirth_now(self) -> None:
        link = self._link
        if self.node.born and isinstance(link, SparkplugLink) and link.connected.is_set():
            log.info("sparkplug: rebirth requested: NBIRTH and DBIRTHs again")
            self._birth(link)

    async def close(self) -> None:
        if self._rebirth_due is not None:
            self._rebirth_due.cancel()
            self._rebirth_due = None
        await super().close()

    def _on_dcmd(self, msg: Inbound) -> None:
        device = msg.topic.rsplit("/", 1)[-1]
        try:
            payload = decode(msg.payload)
        except SparkplugError as exc:
            log.warning("sparkplug: ignoring DCMD for %s: %s", device, exc)
            return
        writes: dict[str, Any] = {}
        for m in payload.metrics:
            name = m.name or self.node.catalogue.by_alias.get(m.alias, (device, f"alias {m.alias}"))[1]
            writes[name] = metric_value(m)
        self._execute_dcmd(device, writes, payload.timestamp or None)

    def _execute_dcmd(self, device: str, writes: dict[str, Any], ts: int | None = None) -> None:
        """DCMD writes meet the command executor here: the same rules as a JSON command.

        A DCMD carries no command id; the id made here (``spb-<payload timestamp>-<count>``) keys
        the executor's once-per-id record and the audit events. DCMD is QoS 0 (the specification
        says so), so the broker never redelivers one: there is no repeat to recognise. The new value
        reaches the host as DDATA of the fresh reading the executor's read-back publishes.
        """
        executor = self.commands
        if executor is None:
            self.refused_commands += 1
            log.warning("sparkplug: DCMD for device %s refused (writes %s): commands are off "
                        "(commands.enabled, commands.allow)", device, sorted(writes))
            self.event("command", device=device, origin="sparkplug", op="write", status="rejected",
                       reason="commands_off", metrics=sorted(writes))
            return
        self._dcmd_count += 1
        command = {"schema": "fieldgate.command/1", "id": f"spb-{ts or int(time.time() * 1000)}-{self._dcmd_count}",
                   "op": "write", "metrics": writes}

        async def run() -> None:
            result = await executor.execute(device, command, origin="sparkplug")
            level = logging.INFO if result.get("status") == "ok" else logging.WARNING
            log.log(level, "sparkplug: DCMD %s for %s: %s%s", command["id"], device, result.get("status"),
                    f" ({result['reason']})" if result.get("reason") else "")

        task = asyncio.get_running_loop().create_task(run(), name=f"dcmd-{device}")
        self._dcmd_tasks.add(task)
        task.add_done_callback(self._dcmd_tasks.discard)

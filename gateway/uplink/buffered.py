"""The buffered MQTT uplink: its three jobs wired together (see the package docstring for the policy).

* intake and commit: ``submit`` queues (``intake.Intake``); the committer task commits what
  waits whenever no commit is in flight (group commit);
* publishing: ``readahead.ReadAhead`` decides which committed rows go out next,
  ``readahead.InFlight`` tracks PUBACKs; single messages when live, batch messages while a
  backlog drains (``mqtt.batch``);
* the connection: ``_connection_loop`` (``_new_link``, backoff, reload hand-over).

The methods a derived output overrides (Sparkplug B) are ``_new_link``, ``_session``,
``_publish_rows``, ``device_status`` and ``event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from .. import __version__
from ..backoff import backoff_delay
from ..buffer import Buffer, BufferStats, Row
from ..config import GatewayConfig, MqttConfig
from ..errors import UplinkError
from ..mqtt import Inbound, InboundHandler, MqttLink, broker_url, for_endpoint, publish_properties
from ..outputs import Followers
from ..ratelimit import TokenBucket
from ..schema import BATCH_SCHEMA, iso_ms
from .encode import dumps, reading_json
from .intake import Intake, Item
from .readahead import InFlight, ReadAhead
from .state import UplinkState

log = logging.getLogger(__name__)
_HANDOVER_S = 3.0  # a reload's wait for PUBACKs before leaving the old broker
_ACKS_PER_DELETE = 500  # acknowledged seqs gathered before a delete while more are in flight
T = TypeVar("T")

class BufferedUplink:
    """The gateway's output when an ``mqtt`` section is configured."""

    kind: ClassVar[str] = "mqtt"  # what the status page calls this output

    def __init__(self, cfg: GatewayConfig, *, buffer: Buffer | None = None) -> None:
        self.followers = Followers()
        self.on_connected = Followers()  # told ("connected", broker=url) after each connect: retained state
        if cfg.mqtt is None:
            raise ValueError("BufferedUplink needs an mqtt section")
        self.gateway_id = cfg.gateway.id
        self.mqtt: MqttConfig = cfg.mqtt
        self.bcfg = cfg.buffer
        self.prefix = f"{self.mqtt.topic_prefix}/{self.gateway_id}"
        self.buffer = buffer or Buffer(
            cfg.gateway.data_dir, max_bytes=self.bcfg.max_bytes, max_age_s=self.bcfg.max_age,
            durability=self.bcfg.durability, spill_max=self.bcfg.spill_max, on_event=self._buffer_event,
            keep_acked_s=self.bcfg.keep_acked,
        )
        self.state = UplinkState()
        self.state.broker = broker_url(self.mqtt)
        self.stats: BufferStats | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fieldgate-buffer")
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        # Intake and commit: readings waiting for their commit; one commit at a time (close() must not
        # find nothing pending while the committer's batch is still being committed).
        self.intake = Intake(self.bcfg.max_pending, self.bcfg.max_pending_bytes)
        self._pending = self.intake.pending  # the same list: tests and the status page count it
        self._commit_lock = asyncio.Lock()
        # Publishing: the read-ahead of committed rows, what awaits its PUBACK, device statuses and
        # events to send, and the wake-up of the publisher (new rows, acks, statuses or events).
        self.readahead = ReadAhead()
        self.inflight = InFlight()
        self._inflight = self.inflight.readings  # the same dict: derived outputs' _publish_rows fill it
        self._inflight_events = self.inflight.events
        self._statuses: dict[str, str] = {}
        self._status_dirty: set[str] = set()
        self._wake = asyncio.Event()
        # Events may wait in the buffer: read them only then, not on every publisher turn (each read is a
        # round trip through the buffer's thread, which under load queues behind the commits).
        self._events_waiting = True
        # The connection: the current link, one being connected (a reload aborts it), reloaded settings
        # taken at the next connect, and the backoff's randomness.
        self._link: MqttLink | None = None
        self._connecting: MqttLink | None = None
        self._next_mqtt: MqttConfig | None = None
        self._reconnect = asyncio.Event()
        self._rng = random.Random()
        # Inbound subscriptions of other parts (commands, remote config, ...): (filter, under our
        # prefix?) -> handler; subscribed on every connection, under the prefix current at that time.
        self._listening: dict[tuple[str, bool], InboundHandler] = {}

    @property
    def flushed(self) -> int:
        """Readings committed by this process."""
        return self.intake.committed

    @property
    def overload_dropped(self) -> int:
        """Readings dropped before their commit: more arrived than the disk stores."""
        return self.intake.dropped

    # --- the Output protocol -------------------------------------------------

    def submit(self, device: str, message: dict[str, Any]) -> None:
        """Queue a reading for the next commit (hot path: no I/O here)."""
        self.intake.add(device, reading_json(message))

    def _announce_overload(self, final: bool = False) -> None:
        """Say what was shed: every 10 s during a flood, and once more when it is over."""
        n = self.intake.due_announcement(final)
        if n:
            log.error("devices deliver more readings than the buffer can store: dropped %d (total %d) before "
                      "their commit; poll less often or fewer points (buffer.max_pending %d, max_pending_bytes %d)",
                      n, self.intake.dropped, self.intake.max_pending, self.intake.max_bytes)
            self.event("buffer_drop", reason="overload", dropped=n, dropped_total=self.intake.dropped)

    def device_status(self, device: str, state: str, error: str | None) -> None:
        payload = {"state": state, "ts": iso_ms(time.time()), "error": error}
        self._statuses[device] = dumps(payload)
        self._status_dirty.add(device)
        self._wake.set()

    def follow(self, callback: Callable[..., None]) -> Callable[[], None]:
        """Be told every event (``callback(kind, **fields)``), the uplink's own (buffer drops) included."""
        return self.followers.add(callback)

    def event(self, kind: str, **fields: Any) -> None:
        event = {"ts": iso_ms(time.time()), "kind": kind, **fields}
        log.info("event %s", dumps(event))
        self.followers.tell(kind, fields)
        if self._closing:
            return
        task = asyncio.get_running_loop().create_task(self._db(self.buffer.add_event, event))
        task.add_done_callback(lambda _t: self._event_stored())

    # --- inbound messages and direct publishes ------------------------------

    def _full_filter(self, topic_filter: str, under_prefix: bool) -> str:
        return f"{self.prefix}/{topic_filter}" if under_prefix else topic_filter

    def listen(self, topic_filter: str, handler: Callable[[Inbound], None], *,
               under_prefix: bool = True) -> Callable[[], None]:
        """Subscribe (QoS 1) on every connection; returns the function that stops listening.

        ``topic_filter`` is relative to ``{topic_prefix}/{gateway}/`` unless ``under_prefix`` is
        False, so a reload that moves the prefix moves the subscription with it. ``handler`` runs on
        the event loop thread for each message and must not block (start a task for I/O). Nothing is
        subscribed until someone listens: a gateway without commands has no inbound topics at all.
        """
        key = (topic_filter, under_prefix)
        self._listening[key] = handler
        # the link in use, and one still connecting (built before this call, it subscribes on its CONNACK)
        for link in (self._link, self._connecting):
            if link is not None:
                link.subscribe(self._full_filter(topic_filter, under_prefix), handler)

        def stop() -> None:
            if self._listening.pop(key, None) is not None:
                for link in (self._link, self._connecting):
                    if link is not None:
                        link.unsubscribe(self._full_filter(topic_filter, under_prefix))

        return stop

    def send(self, topic: str, payload: str | bytes, *, retain: bool = False, under_prefix: bool = True,
             correlation_data: bytes | None = None) -> bool:
        """Publish one message now, outside the buffer (QoS 1); False when not connected.

        For answers and retained state that make sense only now (a command's result, a retained
        "current config"): what must survive an outage goes through :meth:`event` or the buffer.
        ``correlation_data`` is sent as the MQTT 5 property (dropped under 3.1.1).
        """
        link = self._link
        if link is None or not link.connected.is_set():
            return False
        link.publish(self._full_filter(topic, under_prefix), payload, retain=retain,
                     properties=publish_properties(correlation_data))
        return True

    def _event_stored(self) -> None:
        self._events_waiting = True
        self._wake.set()

    def _buffer_event(self, event: dict[str, Any]) -> None:
        # Called on the buffer's worker thread; the buffer already stored the event.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event_stored)

    async def start(self) -> None:
        """Open the buffer (before devices start polling)."""
        self._loop = asyncio.get_running_loop()
        await self._db(self.buffer.open)
        self.stats = await self._db(self.buffer.stats)
        log.info("buffer %s: %d reading(s) waiting, last seq %d", self.bcfg.durability, self.stats.depth,
                 self.stats.newest_seq)

    async def run(self) -> None:
        if not hasattr(self, "_loop"):
            await self.start()
        async with asyncio.TaskGroup() as tg:
            self._tasks = [
                tg.create_task(self._committer(), name="buffer-commit"),
                tg.create_task(self._maintenance(), name="buffer-maintenance"),
                tg.create_task(self._connection_loop(), name="mqtt"),
            ]

    async def close(self) -> None:
        """Commit what is pending, give in-flight messages a moment, say offline, close."""
        await self._commit_pending()
        self._announce_overload(final=True)  # stored before the buffer closes; sent now or after the restart
        self._closing = True
        await self._commit_pending()
        link = self._link
        if link is not None and link.connected.is_set():
            # Let the publisher send what the last commit took and collect the
            # PUBACKs (bounded: the rest stays buffered and goes out after restart).
            def drained() -> bool:
                return not self._inflight and self.readahead.drained()

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    while not drained() and link.connected.is_set():
                        self._wake.clear()
                        await self._wake.wait()
            if not drained():
                log.warning("shutdown: readings up to seq %d committed, %d sent and unacknowledged, %d queued; "
                            "what is not acknowledged stays buffered and is sent after the restart",
                            self.readahead.committed_max, self.inflight.count(), len(self.readahead.ready))
        # Stop our own tasks before the buffer closes under them.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._commit_pending()
        await self._commit_acks()
        if link is not None and link.connected.is_set():
            link.publish(f"{self.prefix}/status", self._gateway_status("offline"), retain=True)
            await link.disconnect()
        elif link is not None:
            link.abort()
        await self._db(self.buffer.close)
        self._executor.shutdown(wait=True)

    def reconfigure(self, cfg: GatewayConfig) -> None:
        """Apply a reloaded config: buffer limits at once; a changed mqtt section hands over.

        The handover runs in the connection loop (:meth:`_hand_over`): the PUBACKs of what is in
        flight are collected, the old broker and prefix are told the gateway left, the connection
        is closed cleanly, and the next one uses the new settings (broker, prefix and last will,
        credentials, TLS, limits). Readings not acknowledged stay in the buffer and go out on the
        new connection. Settings that need a restart are named by the supervisor, not here.
        """
        self.bcfg = self.bcfg.model_copy(update={"flush_interval": cfg.buffer.flush_interval,
                                                 "max_pending": cfg.buffer.max_pending,
                                                 "max_pending_bytes": cfg.buffer.max_pending_bytes,
                                                 "keep_acked": cfg.buffer.keep_acked})
        self.intake.max_pending, self.intake.max_bytes = self.bcfg.max_pending, cfg.buffer.max_pending_bytes
        self.buffer.keep_acked_s = cfg.buffer.keep_acked  # one float: read by the buffer's thread at its next ack
        if cfg.mqtt is not None and cfg.mqtt != (self._next_mqtt or self.mqtt):
            log.info("mqtt settings changed: handing over to %s, topics %s/%s/...", broker_url(cfg.mqtt),
                     cfg.mqtt.topic_prefix, self.gateway_id)
            self._next_mqtt = cfg.mqtt
            self._reconnect.set()
            self._wake.set()
            if self._connecting is not None:
                self._connecting.abort()  # a connect to the old broker may hang for connect_timeout

    def _take_new_settings(self) -> None:
        if self._next_mqtt is not None:
            self.mqtt, self._next_mqtt = self._next_mqtt, None
            self.prefix = f"{self.mqtt.topic_prefix}/{self.gateway_id}"
            self.state.broker = broker_url(self.mqtt)

    async def _hand_over(self, link: MqttLink) -> None:
        """Leave the current broker and prefix cleanly before a reload's settings take over."""
        new = self._next_mqtt
        assert new is not None
        moved = (new.topic_prefix, new.endpoints) != (self.mqtt.topic_prefix, self.mqtt.endpoints)
        # Collect the acknowledgements of what is in flight, so the new connection does not send
        # again what the old broker already has (bounded: the rest is sent again, at least once).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_HANDOVER_S):
                while self._inflight and link.connected.is_set():
                    self._wake.clear()  # acks arrive in callbacks on this thread: none is missed here
                    await self._wait_wake(link, 1.0)
        await self._commit_acks()
        if not link.connected.is_set():
            return
        if moved:
            # Nothing stale stays behind: device statuses are cleared (an empty retained message
            # deletes one) and the gateway is said offline, as its last will would have said.
            for dev in self._statuses:
                link.publish(f"{self.prefix}/{dev}/status", b"", retain=True)
            link.publish(f"{self.prefix}/status", self._gateway_status("offline"), retain=True)
        await link.disconnect()
        log.info("left %s (topics %s/...)", self.state.broker, self.prefix)

    # --- buffer side ---------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _commit_pending(self) -> None:
        """Commit everything waiting, in chunks; one commit at a time."""
        # In chunks: one commit of everything pending would, under load, hold the buffer's thread for
        # seconds while acknowledgements and reads wait behind it (and the next batch grows meanwhile).
        async with self._commit_lock:
            intake = self.intake
            while intake.pending:
                await self._commit_batch(intake.take())

    async def _commit_batch(self, batch: list[Item]) -> None:
        """Commit ``batch`` and hand its rows to the publisher (only now: a reading goes out after its commit)."""
        seqs = await self._db(self.buffer.append_many, batch)
        self.intake.committed += len(batch)
        self.intake.commits += 1
        self.readahead.committed(seqs, batch)
        self._wake.set()

    async def _committer(self) -> None:
        """Group commit: commit as soon as readings wait and no commit is in flight.

        At light load a reading waits for one commit (one fsync with ``durability: full``); under
        load the readings that arrive during a commit are the next commit, so batches grow with
        the load by themselves and no timer sets the pace.
        """
        waiting = self.intake.waiting
        while True:
            await waiting.wait()
            waiting.clear()
            await self._commit_pending()
            self._announce_overload()

    async def _maintenance(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(2.0)
            tick += 1
            spilling = self.stats is not None and (self.stats.disk_full or self.stats.spilled > 0)
            if tick % 5 == 0 or spilling:  # upkeep every 10 s (2 s while the disk is full); stats every 2 s
                await self._db(self.buffer.enforce_limits)
                await self._db(self.buffer.maintenance)
            self.stats = await self._db(self._tick_buffer)
            if spilling and self.readahead.committed_elsewhere(self.stats.newest_seq):
                # Upkeep committed rows itself (the spill, once the disk has room): the publisher only
                # learns of commits from append_many, so without this it would wait for the next reading.
                self._wake.set()

    def _tick_buffer(self) -> BufferStats:
        """On the buffer's thread, every 2 s: delete the kept rows whose window is over, then the stats."""
        self.buffer.ack(())  # nothing to do (no I/O) unless a window is over or a delete waits for a retry
        return self.buffer.stats()

    async def _commit_acks(self) -> None:
        acked, ids = self.inflight.take_acked()
        if acked:
            await self._db(self.buffer.ack, acked)
        if ids:
            await self._db(self.buffer.ack_events, ids)

    # --- MQTT side -------------------------------------------------------------

    def _gateway_status(self, state: str) -> str:
        return dumps({"state": state, "ts": iso_ms(time.time()), "version": __version__})

    def _on_ack(self, mid: int) -> None:
        n = self.inflight.ack(mid)
        if n:
            self.state.acked += n
            self._wake.set()

    def _new_link(self, target: MqttConfig) -> MqttLink:
        """The connection of one attempt to ``target`` (the broker of ``mqtt.hosts`` tried now): its last
        will and the inbound subscriptions (a subclass's own will)."""
        return MqttLink(target, self.mqtt.client_id or f"fieldgate-{self.gateway_id}",
                        (f"{self.prefix}/status", self._gateway_status("offline")), self._on_ack,
                        {self._full_filter(f, under): h for (f, under), h in self._listening.items()})

    async def _connection_loop(self) -> None:
        # Failover over mqtt.hosts: stay on the broker reached until it fails, then try the next in
        # turn. Between brokers of one pass the wait is a jitter below reconnect_min (a fleet that
        # lost the same node spreads over the others instead of arriving at once); only a whole
        # pass that failed counts as a failure for the capped full-jitter backoff.
        failures = 0  # whole passes over the list that failed
        tried = 0  # brokers tried in this pass
        index = 0
        endpoints = self.mqtt.endpoints
        while True:
            self._reconnect.clear()
            self._take_new_settings()
            if self.mqtt.endpoints != endpoints:
                endpoints, index, tried = self.mqtt.endpoints, 0, 0
            target = for_endpoint(self.mqtt, endpoints[index % len(endpoints)])
            self.state.broker = broker_url(target)
            link = self._new_link(target)
            self.state.state = "connecting"
            self._connecting = link
            try:
                await link.connect()
            except UplinkError as exc:
                link.abort()
                if self._reconnect.is_set():
                    continue  # cut short by a reload: try the new settings at once
                self._record_error(exc, failures + 1)
                index, tried = (index + 1) % len(endpoints), tried + 1
                if tried < len(endpoints):
                    await self._backoff(0)
                else:
                    failures, tried = failures + 1, 0
                    await self._backoff(failures)
                continue
            finally:
                self._connecting = None
            failures, tried = 0, 0
            self._link = link
            self.state.state, self.state.connected_since = "connected", time.time()
            self.state.connects += 1
            log.info("connected to %s", self.state.broker)
            self.on_connected.tell("connected", {"broker": self.state.broker})
            try:
                await self._session(link)
                if self._next_mqtt is not None:
                    await self._hand_over(link)
            except UplinkError as exc:
                self._record_error(exc, 1)
            finally:
                self._link = None
                link.abort()
                self.state.state, self.state.connected_since = "disconnected", None
                self.state.resent += self.inflight.lost()
            if link.error is not None:
                self._record_error(link.error, 1)
            if not self._reconnect.is_set():
                # The broker failed: its turn in this pass is used up; the next one is tried (after
                # a jitter), or with a single broker, the same one after the first backoff step.
                index, tried = (index + 1) % len(endpoints), 1
                await self._backoff(0 if len(endpoints) > 1 else 1)
                if len(endpoints) == 1:
                    tried = 0

    def _record_error(self, exc: UplinkError, failures: int) -> None:
        text = str(exc)
        if text != self.state.last_error or failures == 1:
            log.error("uplink: %s; readings stay buffered and will be sent", text)
        else:
            log.debug("uplink: %s", text)
        self.state.last_error, self.state.last_error_ts = text, time.time()
        self.state.state = "disconnected"

    async def _backoff(self, failures: int) -> None:
        """Wait before the next attempt; cut short by a reload. ``failures`` 0: the next broker of a list."""
        if failures == 0:
            delay = self._rng.uniform(0.0, self.mqtt.reconnect_min)
        else:
            delay = backoff_delay(failures, self.mqtt.reconnect_min, self.mqtt.reconnect_max, self._rng)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._reconnect.wait()

    async def _session(self, link: MqttLink) -> None:
        """Publish from the buffer until the connection drops."""
        link.publish(f"{self.prefix}/status", self._gateway_status("online"), retain=True)
        self._status_dirty = set(self._statuses)
        await self._commit_acks()
        # What the broker acknowledged in the last keep_acked seconds goes out again: if it crashed
        # before its next save, it lost those (a consumer dedupes on gateway and seq).
        again = await self._db(self.buffer.requeue_kept)
        if again:
            log.info("sending again %d reading(s) the broker acknowledged in the last %gs, in case it lost "
                     "them before its next save (buffer.keep_acked)", again, self.buffer.keep_acked_s)
        self.readahead.start_session()
        self._events_waiting = True  # unacknowledged events of the last session are sent again
        try:
            await self._publish_loop(link)
        finally:
            self.readahead.end_session()

    async def _publish_loop(self, link: MqttLink) -> None:
        window = self.mqtt.inflight
        batch = self.mqtt.batch
        per_message = batch.max_readings if batch.enabled else 1
        rate = self.mqtt.replay_rate
        # replay is metered in messages; the bucket holds one window's worth
        bucket = TokenBucket(rate, window, time.monotonic()) if rate is not None else None
        ahead, inflight = self.readahead, self.inflight
        while link.connected.is_set() and not self._reconnect.is_set():
            self._wake.clear()
            for dev in list(self._status_dirty):
                link.publish(f"{self.prefix}/{dev}/status", self._statuses[dev], retain=True)
            self._status_dirty.clear()
            if inflight.acked_events or (inflight.acked and (len(inflight.acked) >= _ACKS_PER_DELETE
                                                             or not inflight.readings)):
                await self._commit_acks()
            if self._events_waiting and not inflight.events and not inflight.acked_events:
                self._events_waiting = False
                events = await self._db(self.buffer.read_events, 20)
                for event_id, text in events:
                    inflight.events[link.publish(f"{self.prefix}/events", text)] = event_id
                if len(events) == 20:  # more than one turn's worth waits (never cleared here: an event
                    self._events_waiting = True  # stored during the read has set it already)
            room = window - len(inflight.readings)
            if room > 0 and ahead.wants_read():
                limit = max(500, room * per_message)
                ahead.read(await self._db(self.buffer.read, ahead.tail, limit), limit)
            if room > 0 and ahead.ready:
                # A backlog (an outage's replay) or an overload (more waits than the window carries
                # as single messages): batch messages, when batching is on.
                backlog = not ahead.caught_up or len(ahead.ready) > room
                batched = batch.enabled and (batch.when == "always" or backlog)
                take = min(len(ahead.ready), room * (per_message if batched else 1))
                if bucket is not None and backlog:
                    got = bucket.take_up_to(time.monotonic(), take)
                    if not got:
                        # pacing, not synchronization: the next token is due then
                        await asyncio.sleep(bucket.wait(time.monotonic()))
                        continue
                    take = got
                self._publish_rows(link, ahead.take(take), batched, per_message)
                continue
            if not link.connected.is_set():
                break
            # Nothing to do until new rows, an ack, a status or the connection drops.
            await self._wait_wake(link, 1.0)
            if link.closed.is_set():
                break

    async def _wait_wake(self, link: MqttLink, timeout: float) -> None:
        """Until something is to be done (``_wake``), the connection drops, or ``timeout``."""
        waiter = asyncio.create_task(self._wake.wait())
        closed = asyncio.create_task(link.closed.wait())
        try:
            await asyncio.wait({waiter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            closed.cancel()

    def _publish_rows(self, link: MqttLink, rows: list[Row], batched: bool, per_message: int) -> None:
        topic_of = self.prefix + "/{}/reading"
        inflight = self.inflight.readings
        if batched:
            for i in range(0, len(rows), per_message):
                chunk = rows[i:i + per_message]
                payload = '{"schema":"%s","readings":[%s]}' % (BATCH_SCHEMA, ",".join(r.message() for r in chunk))  # noqa: UP031
                inflight[link.publish(f"{self.prefix}/readings", payload)] = [r.seq for r in chunk]
        else:
            for r in rows:
                inflight[link.publish(topic_of.format(r.device), r.message())] = [r.seq]
        self.state.published += len(rows)

    def snapshot(self) -> dict[str, Any]:
        """Uplink and buffer state for the status page and doctor."""
        s, b = self.state, self.stats
        return {
            "state": s.state, "broker": s.broker, "last_error": s.last_error,
            "connected_since": iso_ms(s.connected_since) if s.connected_since else None,
            "published": s.published, "acked": s.acked, "resent": s.resent, "connects": s.connects,
            "inflight": self.inflight.count(), "pending": len(self.intake.pending),
            "buffer": None if b is None else {
                "depth": b.depth, "oldest_ts": iso_ms(b.oldest_ts_ms / 1000) if b.oldest_ts_ms else None,
                "bytes": b.bytes_on_disk, "dropped": b.dropped_total + self.overload_dropped,
                "last_seq": b.newest_seq,
                "disk_full": b.disk_full, "spilled": b.spilled, "spill_lost": b.spill_dropped_total, "kept": b.kept,
            },
        }

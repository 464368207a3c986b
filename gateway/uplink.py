"""Store and forward: readings go to the durable buffer first, then to MQTT.

Write to the buffer first, publish from the buffer, delete only after PUBACK:
a reading committed to the buffer reaches the broker at least once, with its
``seq``, through broker outages, restarts and ``kill -9``.

Policy (documented in the README):

* Readings are committed in batches every ``buffer.flush_interval`` (default
  200 ms). A reading is "accepted" once committed; a ``kill -9`` can lose only
  readings not yet committed (at most one flush interval).
* Publishing is strictly oldest first, so every device's readings arrive in
  order. At most ``mqtt.inflight`` messages await their PUBACK at once.
* After an outage the backlog drains at full speed (optionally capped by
  ``mqtt.replay_rate``, and packed into batch messages when ``mqtt.batch`` is
  on); polling goes on meanwhile and new readings queue behind the backlog.
  The buffer's own I/O runs in one worker thread so it never stalls polling.
* On reconnect every message that was not acknowledged is sent again
  (at-least-once): consumers dedupe on (gateway, seq).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from . import __version__
from .backoff import backoff_delay
from .buffer import Buffer, BufferStats, Row
from .config import GatewayConfig, MqttConfig
from .errors import UplinkError
from .mqtt import Inbound, InboundHandler, MqttLink, broker_url, for_endpoint, publish_properties
from .outputs import Followers
from .ratelimit import TokenBucket
from .schema import BATCH_SCHEMA, iso_ms

log = logging.getLogger(__name__)
_FLUSH_CHUNK = 2000  # readings per commit
_SWITCH_INTERVAL_S = 0.0005
_HANDOVER_S = 3.0  # a reload's wait for PUBACKs before leaving the old broker
T = TypeVar("T")

_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class UplinkState:
    """What the status page and doctor show about the uplink."""

    def __init__(self) -> None:
        self.state = "disconnected"  # connecting | connected | disconnected
        self.broker = ""
        self.last_error: str | None = None
        self.last_error_ts: float | None = None
        self.connected_since: float | None = None
        self.published = 0
        self.acked = 0
        self.resent = 0
        self.connects = 0


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
        )
        self.state = UplinkState()
        self.state.broker = broker_url(self.mqtt)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fieldgate-buffer")
        self._pending: list[tuple[str, int, str]] = []
        self._statuses: dict[str, str] = {}
        self._status_dirty: set[str] = set()
        self._wake = asyncio.Event()  # new rows, acks, statuses or events to publish
        self._flush_now = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._acked: list[int] = []
        self._acked_events: list[int] = []
        self._inflight: dict[int, list[int]] = {}
        self._inflight_events: dict[int, int] = {}
        # Events may wait in the buffer: read them only then, not on every publisher turn (each read is a
        # round trip through the buffer's thread, which under load queues behind the commits).
        self._events_waiting = True
        self._link: MqttLink | None = None
        self._connecting: MqttLink | None = None
        self._next_mqtt: MqttConfig | None = None  # reloaded settings, taken at the next connect
        self._reconnect = asyncio.Event()
        self._closing = False
        self.stats: BufferStats | None = None
        self._rng = random.Random()
        self._tasks: list[asyncio.Task[Any]] = []
        self.flushed = 0
        self.overload_dropped = 0  # readings dropped before their commit: more arrived than the disk stores
        self._overload_unannounced = 0
        self._overload_logged = 0.0
        # Publisher read-ahead: rows queued for publishing, the last seq queued or
        # published in this session, and whether the buffer holds nothing newer.
        self._ready: collections.deque[Row] = collections.deque()
        self._tail = 0
        self._caught_up = False
        self._in_session = False
        self._committed_max = 0  # highest seq committed by this process
        # Inbound subscriptions of other parts (commands, remote config, ...): (filter, under our
        # prefix?) -> handler; subscribed on every connection, under the prefix current at that time.
        self._listening: dict[tuple[str, bool], InboundHandler] = {}

    # --- the Output protocol -------------------------------------------------

    def submit(self, device: str, message: dict[str, Any]) -> None:
        """Queue a reading for the next commit (hot path: no I/O here)."""
        self._pending.append((device, int(time.time() * 1000), _DUMPS(message)))
        if len(self._pending) >= _FLUSH_CHUNK:
            self._flush_now.set()
        if len(self._pending) > self.bcfg.max_pending:
            self._shed()

    def _shed(self) -> None:
        """More readings arrive than the buffer commits: drop the oldest uncommitted tenth, counted, announced."""
        n = max(1, len(self._pending) // 10)
        del self._pending[:n]
        self.overload_dropped += n
        self._overload_unannounced += n
        self._flush_now.set()

    def _announce_overload(self, final: bool = False) -> None:
        """Say what was shed: every 10 s during a flood, and once more when it is over."""
        now = time.monotonic()
        if self._overload_unannounced and (final or now - self._overload_logged >= 10.0 or not self._pending):
            n, self._overload_unannounced, self._overload_logged = self._overload_unannounced, 0, now
            log.error("devices deliver more readings than the buffer can store: dropped %d (total %d) before "
                      "their commit; poll less often or fewer points (buffer.max_pending %d)",
                      n, self.overload_dropped, self.bcfg.max_pending)
            self.event("buffer_drop", reason="overload", dropped=n, dropped_total=self.overload_dropped)

    def device_status(self, device: str, state: str, error: str | None) -> None:
        payload = {"state": state, "ts": iso_ms(time.time()), "error": error}
        self._statuses[device] = _DUMPS(payload)
        self._status_dirty.add(device)
        self._wake.set()

    def follow(self, callback: Callable[..., None]) -> Callable[[], None]:
        """Be told every event (``callback(kind, **fields)``), the uplink's own (buffer drops) included."""
        return self.followers.add(callback)

    def event(self, kind: str, **fields: Any) -> None:
        event = {"ts": iso_ms(time.time()), "kind": kind, **fields}
        log.info("event %s", _DUMPS(event))
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
        link = self._link
        if link is not None:
            link.subscribe(self._full_filter(topic_filter, under_prefix), handler)

        def stop() -> None:
            if self._listening.pop(key, None) is not None and self._link is not None:
                self._link.unsubscribe(self._full_filter(topic_filter, under_prefix))

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
        # The buffer's thread gives up the GIL for every SQLite step (each row written, read or
        # deleted) and must then wait for the event loop to hand it back, by default only every
        # 5 ms. With a busy loop a 2000-row commit took seconds and the acknowledgements queued
        # behind it; at 0.5 ms it takes tens of ms (bench/pipeline.py, overload run).
        sys.setswitchinterval(min(sys.getswitchinterval(), _SWITCH_INTERVAL_S))
        await self._db(self.buffer.open)
        self.stats = await self._db(self.buffer.stats)
        log.info("buffer %s: %d reading(s) waiting, last seq %d", self.bcfg.durability, self.stats.depth,
                 self.stats.newest_seq)

    async def run(self) -> None:
        if not hasattr(self, "_loop"):
            await self.start()
        async with asyncio.TaskGroup() as tg:
            self._tasks = [
                tg.create_task(self._flusher(), name="buffer-flush"),
                tg.create_task(self._maintenance(), name="buffer-maintenance"),
                tg.create_task(self._connection_loop(), name="mqtt"),
            ]

    async def close(self) -> None:
        """Commit what is pending, give in-flight messages a moment, say offline, close."""
        await self._flush()
        self._announce_overload(final=True)  # stored before the buffer closes; sent now or after the restart
        self._closing = True
        await self._flush()
        link = self._link
        if link is not None and link.connected.is_set():
            # Let the publisher send what the last flush committed and collect the
            # PUBACKs (bounded: the rest stays buffered and goes out after restart).
            def drained() -> bool:
                return (not self._inflight and not self._ready and self._caught_up
                        and self._tail >= self._committed_max)

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    while not drained() and link.connected.is_set():
                        self._wake.clear()
                        await self._wake.wait()
            if not drained():
                log.warning("shutdown: readings up to seq %d committed, %d sent and unacknowledged, %d queued; "
                            "what is not acknowledged stays buffered and is sent after the restart",
                            self._committed_max, sum(len(v) for v in self._inflight.values()), len(self._ready))
        # Stop our own tasks before the buffer closes under them.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush()
        await self._commit_acks()
        if link is not None and link.connected.is_set():
            link.publish(f"{self.prefix}/status", self._gateway_status("offline"), retain=True)
            await link.disconnect()
        elif link is not None:
            link.abort()
        await self._db(self.buffer.close)
        self._executor.shutdown(wait=True)

    def reconfigure(self, cfg: GatewayConfig) -> None:
        """Apply a reloaded config: buffer timing at once; a changed mqtt section hands over.

        The handover runs in the connection loop (:meth:`_hand_over`): the PUBACKs of what is in
        flight are collected, the old broker and prefix are told the gateway left, the connection
        is closed cleanly, and the next one uses the new settings (broker, prefix and last will,
        credentials, TLS, limits). Readings not acknowledged stay in the buffer and go out on the
        new connection. Settings that need a restart are named by the supervisor, not here.
        """
        self.bcfg = self.bcfg.model_copy(update={"flush_interval": cfg.buffer.flush_interval,
                                                 "max_pending": cfg.buffer.max_pending})
        self._flush_now.set()  # the flusher waits with the old interval: wake it
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

    async def _flush(self) -> None:
        # In chunks: one commit of everything pending would, under load, hold the buffer's thread for
        # seconds while acknowledgements and reads wait behind it (and the next batch grows meanwhile).
        # One flush at a time: close() must not find _pending empty while the flusher's batch is still
        # being committed, take the publisher for drained, and leave that batch unsent until a restart.
        async with self._flush_lock:
            while self._pending:
                batch, self._pending = self._pending[:_FLUSH_CHUNK], self._pending[_FLUSH_CHUNK:]
                await self._flush_batch(batch)

    async def _flush_batch(self, batch: list[tuple[str, int, str]]) -> None:
        seqs = await self._db(self.buffer.append_many, batch)
        self.flushed += len(batch)
        if seqs:
            self._committed_max = max(self._committed_max, seqs[-1])
        if self._in_session and seqs and len(seqs) == len(batch):
            if self._caught_up and seqs[0] == self._tail + 1:
                # Live fast path: the publisher has everything older, so hand it
                # these rows directly instead of reading them back from disk.
                self._ready.extend(Row(q, d, t, b) for q, (d, t, b) in zip(seqs, batch, strict=True))
                self._tail = seqs[-1]
            elif seqs[-1] > self._tail:
                self._caught_up = False
        elif seqs or batch:
            self._caught_up = False
        self._wake.set()

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.bcfg.flush_interval):
                    await self._flush_now.wait()
            self._flush_now.clear()
            await self._flush()
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
            self.stats = await self._db(self.buffer.stats)
            if spilling and self.stats.newest_seq > self._committed_max:
                # Upkeep committed rows itself (the spill, once the disk has room): the publisher only
                # learns of commits from append_many, so without this it would wait for the next reading.
                self._committed_max = self.stats.newest_seq
                self._caught_up = False
                self._wake.set()

    async def _commit_acks(self) -> None:
        if self._acked:
            acked, self._acked = self._acked, []
            await self._db(self.buffer.ack, acked)
        if self._acked_events:
            ids, self._acked_events = self._acked_events, []
            await self._db(self.buffer.ack_events, ids)

    # --- MQTT side -------------------------------------------------------------

    def _gateway_status(self, state: str) -> str:
        return _DUMPS({"state": state, "ts": iso_ms(time.time()), "version": __version__})

    def _on_ack(self, mid: int) -> None:
        seqs = self._inflight.pop(mid, None)
        if seqs is not None:
            self._acked.extend(seqs)
            self.state.acked += len(seqs)
            self._wake.set()
            return
        event_id = self._inflight_events.pop(mid, None)
        if event_id is not None:
            self._acked_events.append(event_id)

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
            link = MqttLink(target, self.mqtt.client_id or f"fieldgate-{self.gateway_id}",
                            (f"{self.prefix}/status", self._gateway_status("offline")), self._on_ack,
                            {self._full_filter(f, under): h for (f, under), h in self._listening.items()})
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
                resent = sum(len(s) for s in self._inflight.values())
                self.state.resent += resent
                self._inflight.clear()
                self._inflight_events.clear()
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
        await self._commit_acks()  # acked rows must not be resent
        self._ready.clear()
        self._tail, self._caught_up, self._in_session = 0, False, True
        self._events_waiting = True  # unacknowledged events of the last session are sent again
        try:
            await self._publish_loop(link)
        finally:
            self._in_session = False
            self._ready.clear()

    async def _publish_loop(self, link: MqttLink) -> None:
        window = self.mqtt.inflight
        batch = self.mqtt.batch
        per_message = batch.max_readings if batch.enabled else 1
        rate = self.mqtt.replay_rate
        # replay is metered in messages; the bucket holds one window's worth
        bucket = TokenBucket(rate, window, time.monotonic()) if rate is not None else None
        ready = self._ready
        while link.connected.is_set() and not self._reconnect.is_set():
            self._wake.clear()
            for dev in list(self._status_dirty):
                link.publish(f"{self.prefix}/{dev}/status", self._statuses[dev], retain=True)
            self._status_dirty.clear()
            if self._acked_events or (self._acked and (len(self._acked) >= 500 or not self._inflight)):
                await self._commit_acks()
            if self._events_waiting and not self._inflight_events and not self._acked_events:
                self._events_waiting = False
                events = await self._db(self.buffer.read_events, 20)
                for event_id, text in events:
                    self._inflight_events[link.publish(f"{self.prefix}/events", text)] = event_id
                if len(events) == 20:  # more than one turn's worth waits (never cleared here: an event
                    self._events_waiting = True  # stored during the read has set it already)
            room = window - len(self._inflight)
            if room > 0 and not ready and not self._caught_up:
                limit = max(500, room * per_message)
                rows = await self._db(self.buffer.read, self._tail, limit)
                ready.extend(rows)
                if rows:
                    self._tail = rows[-1].seq
                # Caught up only if no commit landed after this read was taken;
                # otherwise the next turn reads again (the fast path needs no gap).
                self._caught_up = len(rows) < limit and self._committed_max <= self._tail
            if room > 0 and ready:
                # a backlog: more is waiting than the window carries as single messages
                backlog = not self._caught_up or len(ready) > room
                take = min(len(ready), room * (per_message if batch.enabled and
                                               (batch.when == "always" or backlog) else 1))
                if bucket is not None and backlog:
                    got = bucket.take_up_to(time.monotonic(), take)
                    if not got:
                        # pacing, not synchronization: the next token is due then
                        await asyncio.sleep(bucket.wait(time.monotonic()))
                        continue
                    take = got
                rows_out = [ready.popleft() for _ in range(take)]
                self._publish_rows(link, rows_out, batch.enabled and (batch.when == "always" or backlog),
                                   per_message)
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
        if batched:
            for i in range(0, len(rows), per_message):
                chunk = rows[i:i + per_message]
                payload = '{"schema":"%s","readings":[%s]}' % (BATCH_SCHEMA, ",".join(r.message() for r in chunk))  # noqa: UP031
                self._inflight[link.publish(f"{self.prefix}/readings", payload)] = [r.seq for r in chunk]
        else:
            for r in rows:
                self._inflight[link.publish(topic_of.format(r.device), r.message())] = [r.seq]
        self.state.published += len(rows)

    def snapshot(self) -> dict[str, Any]:
        """Uplink and buffer state for the status page and doctor."""
        s, b = self.state, self.stats
        return {
            "state": s.state, "broker": s.broker, "last_error": s.last_error,
            "connected_since": iso_ms(s.connected_since) if s.connected_since else None,
            "published": s.published, "acked": s.acked, "resent": s.resent, "connects": s.connects,
            "inflight": sum(len(v) for v in self._inflight.values()), "pending": len(self._pending),
            "buffer": None if b is None else {
                "depth": b.depth, "oldest_ts": iso_ms(b.oldest_ts_ms / 1000) if b.oldest_ts_ms else None,
                "bytes": b.bytes_on_disk, "dropped": b.dropped_total + self.overload_dropped,
                "last_seq": b.newest_seq,
                "disk_full": b.disk_full, "spilled": b.spilled,
            },
        }

"""Commands over MQTT: ``{prefix}/{gw}/+/cmd`` in, ``{prefix}/{gw}/{dev}/cmd/result`` out.

Subscribed only when commands are enabled (``BufferedUplink.listen``). Each
message runs as its own task (the handler runs on the event loop and must not
block); at most ``MAX_TASKS`` run at once, beyond that a message is answered
``rejected`` (``busy``) at once, so a flood costs memory for no queue. With
MQTT 5 the result also goes to the command's Response Topic, carrying its
Correlation Data. Results are published outside the buffer (they make sense
only now); the audit trail on the events topic is buffered.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..mqtt import Inbound
from ..uplink import BufferedUplink
from .executor import CommandExecutor
from .message import command_id_of

log = logging.getLogger(__name__)

#: Commands in progress at once over MQTT, all devices together.
MAX_TASKS = 256
#: Largest command payload taken (a command names a few points).
MAX_PAYLOAD = 16 * 1024
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class CommandListener:
    """Connects the executor to the uplink's command topics."""

    def __init__(self, executor: CommandExecutor, uplink: BufferedUplink) -> None:
        self.executor = executor
        self.uplink = uplink
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop: Any = None

    def start(self) -> None:
        """Subscribe ``+/cmd`` under the gateway's prefix (on this and every later connection)."""
        self._stop = self.uplink.listen("+/cmd", self._on_message)

    async def close(self) -> None:
        """Unsubscribe and end the commands in progress (their rows settle at the next start)."""
        if self._stop is not None:
            self._stop()
            self._stop = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_message(self, msg: Inbound) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 2 or parts[-1] != "cmd":
            return
        device = parts[-2]
        if not msg.payload:
            # An empty message is how a retained command is deleted at the broker (subscribers get it
            # too): nothing was asked, so nothing is answered.
            log.debug("empty message on %s ignored", msg.topic)
            return
        reply = _reply_topic(msg.response_topic)
        if len(self._tasks) >= MAX_TASKS:
            # Refused before it is run, but answered under its id: the sender matches answers by id.
            out = self.executor.refuse(device, "busy", origin="mqtt", command_id=_peek_id(msg.payload))
            self._publish(device, out, reply, msg.correlation_data)
            return
        task = asyncio.get_running_loop().create_task(self._handle(device, msg, reply), name=f"cmd[{device}]")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, device: str, msg: Inbound, reply: str | None) -> None:
        problem = None
        if len(msg.payload) > MAX_PAYLOAD:
            problem = f"bad_message: {len(msg.payload)} bytes (at most {MAX_PAYLOAD})"
        else:
            try:
                # Decoded first and strictly: json.loads of bytes also takes UTF-16 and UTF-32, which the
                # contract's JSON (UTF-8, RFC 8259) is not; such a command must be refused, not executed.
                text = msg.payload.decode("utf-8")
            except UnicodeDecodeError:
                problem = "bad_message: the payload is not UTF-8"
            else:
                try:
                    command = json.loads(text)
                except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
                    problem = "bad_message: the payload is not JSON"
        if problem is not None:
            out = self.executor.refuse(device, problem, origin="mqtt")
        else:
            out = await self.executor.execute(device, command, origin="mqtt", retained=msg.retain)
        self._publish(device, out, reply, msg.correlation_data)

    def _publish(self, device: str, out: dict[str, Any], reply: str | None, correlation: bytes | None) -> None:
        payload = _DUMPS(out)
        sent = self.uplink.send(f"{device}/cmd/result", payload)
        if reply is not None:
            sent = self.uplink.send(reply, payload, under_prefix=False, correlation_data=correlation) and sent
        if not sent:
            log.warning("result of command %s for %s not published (broker not connected); it is in the audit "
                        "trail on the events topic", out["id"] or "?", device)


def _peek_id(payload: bytes) -> str:
    """The id of a command message, if it has a usable one (bounded: only a message of allowed size is parsed)."""
    if len(payload) > MAX_PAYLOAD:
        return ""
    try:
        return command_id_of(json.loads(payload.decode("utf-8")))
    except (ValueError, RecursionError):  # not UTF-8 (a ValueError too), not JSON, nested too deep
        return ""


def _reply_topic(topic: str | None) -> str | None:
    """The Response Topic if it is one we may publish to (a topic name, not a filter)."""
    if not topic:
        return None
    if "+" in topic or "#" in topic or "\0" in topic or len(topic.encode()) > 1024:
        log.warning("ignoring the Response Topic %r: not a topic name", topic[:80])
        return None
    return topic

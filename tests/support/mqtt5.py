"""A plain MQTT 5 client for tests that need v5 properties (Response Topic, Correlation Data).

The Collector speaks 3.1.1 (what most consumers use); this one subscribes once, at QoS 1, and
collects what arrives, with each message's properties, on paho's own thread.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.subscribeoptions import SubscribeOptions


class V5Client:
    """Connect, subscribe ``topic`` at QoS 1 and wait for the SUBACK; ``received`` fills as messages come.

    Use as a context manager; ``arrived`` is set on every message.
    """

    def __init__(self, host: str, port: int, topic: str, client_id: str = "v5-client") -> None:
        self.host, self.port, self.topic = host, port, topic
        self.received: list[Any] = []
        self.arrived = threading.Event()
        self._subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        c.on_subscribe = lambda *_a: self._subscribed.set()
        c.on_message = self._on_message
        self.client = c

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.received.append(msg)
        self.arrived.set()

    def __enter__(self) -> Self:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        self.client.subscribe([(self.topic, SubscribeOptions(qos=1))])
        if not self._subscribed.wait(10):
            self.__exit__(None, None, None)
            raise AssertionError(f"no SUBACK for {self.topic} within 10 s")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.client.loop_stop()
        self.client.disconnect()

"""Inbound messages on the uplink's connection: what commands and remote config stand on.

``BufferedUplink.listen`` subscribes under the gateway's own prefix on every
connection (the session is clean), hands each message to its handler with its
retain flag and MQTT 5 request/response properties; ``send`` publishes an
answer outside the buffer, carrying the correlation data back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fieldgate.mqtt import Inbound
from fieldgate.testing import running_gateway, until

from .support.broker import Mosquitto
from .support.collector import Collector
from .support.mqtt5 import V5Client
from .test_uplink import gw_config


def _publisher(broker: Mosquitto) -> Collector:
    return Collector(broker.host, broker.port, topic="nobody/listens/here", clean_session=True).connect()


async def test_a_listener_gets_messages_under_the_prefix_with_their_retain_flag_and_again_after_a_reconnect(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    got: list[Inbound] = []
    pub = await asyncio.to_thread(_publisher, mosquitto)
    try:
        async with running_gateway(gw_config(tmp_path / "data", mosquitto.port, devices=1)) as (_gw, uplink):
            await until(lambda: uplink.snapshot()["state"] == "connected", what="connected")
            # retained before we listen: delivered at subscribe time, flagged retained
            await asyncio.to_thread(pub.publish, "fieldgate/gw-t/dev1/cmd", b"old", retain=True)
            stop = uplink.listen("+/cmd", got.append)
            await until(lambda: any(m.payload == b"old" for m in got), what="the retained message")
            assert [m.retain for m in got if m.payload == b"old"] == [True]
            await asyncio.to_thread(pub.publish, "fieldgate/gw-t/dev1/cmd", b"live")
            await asyncio.to_thread(pub.publish, "fieldgate/other-gw/dev1/cmd", b"not ours")
            await until(lambda: any(m.payload == b"live" for m in got), what="the live message")
            live = next(m for m in got if m.payload == b"live")
            assert (live.topic, live.retain, live.qos) == ("fieldgate/gw-t/dev1/cmd", False, 1)

            await asyncio.to_thread(mosquitto.restart)
            await until(lambda: uplink.snapshot()["connects"] >= 2 and uplink.snapshot()["state"] == "connected",
                        what="reconnected")
            await asyncio.to_thread(_retry_publish, mosquitto, "fieldgate/gw-t/dev2/cmd", b"after")
            await until(lambda: any(m.payload == b"after" for m in got), what="a message after the reconnect")
            stop()
            n = len(got)
            # After stop() nothing is subscribed again: a retained message waiting at the broker is not
            # delivered on the next connection, while a filter still listened to is.
            await asyncio.to_thread(_retry_publish, mosquitto, "fieldgate/gw-t/dev3/cmd", b"unheard", retain=True)
            await asyncio.to_thread(_retry_publish, mosquitto, "fieldgate/gw-t/probe", b"probe", retain=True)
            uplink.listen("probe", got.append)
            # heard once now (the broker has the subscription), then again after the reconnect
            await until(lambda: any(m.payload == b"probe" for m in got), what="the probe")
            await asyncio.to_thread(mosquitto.restart)
            await until(lambda: sum(m.payload == b"probe" for m in got) >= 2, what="the probe after a reconnect")
            assert [m.payload for m in got[n:] if m.payload != b"probe"] == []
        assert all(m.payload != b"not ours" for m in got)
    finally:
        await asyncio.to_thread(pub.disconnect)


def _retry_publish(broker: Mosquitto, topic: str, payload: bytes, retain: bool = False) -> None:
    with _publisher(broker) as p:
        p.publish(topic, payload, retain=retain)


async def test_send_answers_with_the_mqtt5_correlation_data(tmp_path: Path, mosquitto: Mosquitto) -> None:
    client = await asyncio.to_thread(V5Client(mosquitto.host, mosquitto.port, "answers/#").__enter__)
    try:
        async with running_gateway(gw_config(tmp_path / "data", mosquitto.port, devices=1)) as (_gw, uplink):
            await until(lambda: uplink.send("answers/x", b"{}", under_prefix=False, correlation_data=b"\x01req-7"),
                        what="connected and sent")
            assert await asyncio.to_thread(client.arrived.wait, 10)
        msg = client.received[0]
        assert msg.topic == "answers/x"
        assert msg.properties.CorrelationData == b"\x01req-7"
    finally:
        client.__exit__(None, None, None)


async def test_send_says_false_while_not_connected(tmp_path: Path) -> None:
    from .support.broker import free_port

    text = gw_config(tmp_path / "data", free_port(), devices=1)
    async with running_gateway(text) as (_gw, uplink):
        assert uplink.send("x", b"1") is False

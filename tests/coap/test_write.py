"""CoAP writes (the seam's write hook) against a real aiocoap server from hw-sim.

The simulator records every PUT/POST it is sent (method, payload bytes, Content-Format), so
the tests assert what reached the device, that a refused write names the device's code, and
that a write that cannot be encoded sends nothing.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import cbor2
import pytest
from fieldgate.driver import PointWrite, SharedResources, Writes
from fieldgate.drivers.coap.driver import CoapDriver
from fieldgate.drivers.coap.payload import CF_CBOR, CF_JSON, CF_SENML_JSON, PayloadDecoder, encode_writes
from fieldgate.drivers.coap.profile import CoapProfile
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable, DriverError
from fieldgate.testing import RecordingSink
from fieldgate_hwsim.coap_sim import ObservableSensor, free_udp_port

from .conftest import make_ctx, valve_profile


async def _driver(prof: CoapProfile, port: int, **conn: Any) -> CoapDriver:
    drv = CoapDriver.create(make_ctx(prof, SharedResources(), host="127.0.0.1", port=port, **conn))
    assert isinstance(drv, Writes)
    await drv.__aenter__()
    return drv


async def test_senml_write_puts_the_raw_values_and_reads_back() -> None:
    prof = valve_profile()
    async with ObservableSensor(prof, seed=1) as sensor:
        drv = await _driver(prof, sensor.port)
        try:
            await drv.write([PointWrite("setpoint", 21.5), PointWrite("relay", True)])
            sink = RecordingSink()
            await drv.poll(sink)  # type: ignore[attr-defined]  # the poll-mode class
        finally:
            await drv.__aexit__(None, None, None)
    [(method, payload, cf)] = sensor.writes
    assert method == "PUT" and cf == CF_SENML_JSON
    # 21.5 % in 0.1 % steps is 215 (not 214.99999999999997); the relay as a SenML boolean
    assert json.loads(payload) == [{"n": "setpoint", "v": 215}, {"n": "relay", "vb": True}]
    assert sink.readings[0].values["setpoint"] == pytest.approx(215) and sink.readings[0].values["relay"] is True


async def test_json_write_posts_a_document_by_the_points_paths() -> None:
    prof = valve_profile("json", resource="/valve", method="post")
    async with ObservableSensor(prof, seed=2) as sensor:
        drv = await _driver(prof, sensor.port)
        try:
            await drv.write([PointWrite("setpoint", 50)])
        finally:
            await drv.__aexit__(None, None, None)
    assert sensor.writes == [("POST", b'{"ctl":{"setpoint":500}}', CF_JSON)]


async def test_write_refused_by_the_device_names_its_code() -> None:
    prof = valve_profile()
    async with ObservableSensor(prof, seed=3) as sensor:
        sensor.refuse_writes = "4.03"
        drv = await _driver(prof, sensor.port)
        try:
            with pytest.raises(DeviceProtocolError) as info:
                await drv.write([PointWrite("relay", False)])
        finally:
            await drv.__aexit__(None, None, None)
    assert info.value.reason == "coap_4.03" and "4.03 Forbidden" in str(info.value)
    assert len(sensor.writes) == 1  # sent once: the CON retransmissions are one message the device answered


async def test_write_to_a_silent_device_times_out() -> None:
    prof = valve_profile()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes datagrams, never answers
        silent.bind(("127.0.0.1", 0))
        drv = await _driver(prof, silent.getsockname()[1], ack_timeout=0.1, max_retransmit=1)
        try:
            with pytest.raises(DeviceTimeout) as info:
                await asyncio.wait_for(drv.write([PointWrite("setpoint", 10.0)]), 10)
        finally:
            await drv.__aexit__(None, None, None)
        silent.setblocking(False)
        sent = 0
        while True:
            try:
                silent.recv(2048)
            except BlockingIOError:
                break
            sent += 1
    assert info.value.reason == "timeout"
    assert sent == 2  # the PUT and its one retransmission (the same message), nothing more


async def test_write_to_a_closed_port_is_unreachable() -> None:
    drv = await _driver(valve_profile(), free_udp_port(), ack_timeout=0.1, max_retransmit=1)
    try:
        with pytest.raises(DeviceUnreachable) as info:
            await asyncio.wait_for(drv.write([PointWrite("setpoint", 10.0)]), 10)
    finally:
        await drv.__aexit__(None, None, None)
    assert info.value.reason == "unreachable"


async def test_a_write_that_cannot_be_encoded_sends_nothing() -> None:
    prof = valve_profile()
    async with ObservableSensor(prof, seed=4) as sensor:
        drv = await _driver(prof, sensor.port)
        try:
            with pytest.raises(DriverError) as info:
                await drv.write([PointWrite("setpoint", float("nan"))])
            assert info.value.reason == "encode_error"
            with pytest.raises(DriverError) as info:
                await drv.write([PointWrite("nozzle", 1)])
            assert info.value.reason == "unknown_point"
        finally:
            await drv.__aexit__(None, None, None)
    assert sensor.writes == []


async def test_profiles_without_a_writable_resource_and_push_devices_take_no_writes() -> None:
    plain = valve_profile().model_copy(update={"write": None})
    drv = await _driver(plain, free_udp_port())
    try:
        with pytest.raises(DriverError) as info:
            await drv.write([PointWrite("relay", True)])
    finally:
        await drv.__aexit__(None, None, None)
    assert info.value.reason == "not_supported"
    push = CoapDriver.create(make_ctx(valve_profile(), SharedResources(), mode="push", listen="127.0.0.1:0"))
    assert not isinstance(push, Writes)  # a sleeping device cannot be reached: commands answer not_supported


def test_binary_profiles_cannot_declare_a_writable_resource() -> None:
    with pytest.raises(ValueError, match="binary payload cannot be written"):
        CoapProfile.model_validate({
            "schema_version": 1, "driver": "coap", "vendor": "T", "model": "m", "payload": {"format": "binary"},
            "points": [{"name": "a", "at": 0}], "write": {"resource": "/x"}})


@pytest.mark.parametrize("fmt", ["senml", "json", "cbor"])
def test_encode_writes_is_read_back_by_the_decoder(fmt: str) -> None:
    prof = valve_profile(fmt)
    payload, cf = encode_writes(prof, {"setpoint": 33.3, "relay": False})
    [reading] = PayloadDecoder(prof).decode(payload, cf, now=1.8e9)
    assert reading.values["setpoint"] * 0.1 == pytest.approx(33.3) and reading.values["relay"] is False
    if fmt == "cbor":
        assert cf == CF_CBOR and cbor2.loads(payload) == {"ctl": {"setpoint": 333, "relay": False}}


def test_writable_points_need_the_profiles_writable_resource() -> None:
    doc = valve_profile().model_dump(exclude_none=True)
    doc.pop("write")
    with pytest.raises(ValueError, match="writable but the profile declares no writable resource"):
        CoapProfile.model_validate(doc)
    # the point's own checks run before any device I/O (the executor asks them)
    setpoint, relay, level = valve_profile().points
    assert setpoint.write_problem(101) == "out_of_range" and level.write_problem(5) == "read_only"
    assert relay.write_problem(True) is None and setpoint.write_problem(float("inf")) == "bad_value"

"""DTLS-PSK with right and wrong keys, both directions, through aiocoap's tinydtls transports."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiocoap
import aiocoap.error
import pytest
from fieldgate.driver import SharedResources
from fieldgate.drivers.coap.driver import CoapDriver
from fieldgate.errors import DeviceUnreachable, DriverError
from fieldgate.testing import RecordingSink as Sink
from fieldgate_hwsim.coap_sim import ObservableSensor, SleepyDevice, free_udp_port

from .conftest import make_ctx, profile

pytest.importorskip("DTLSSocket")

KEY = b"nb-iot-secret-17"


def key_file(tmp_path: Path, key: bytes) -> dict[str, object]:
    path = tmp_path / "psk"
    path.write_bytes(key + b"\n")
    return {"identity": "sensor-17", "psk": {"file": str(path)}}


async def test_poll_over_coaps_with_the_right_key(tmp_path: Path) -> None:
    prof = profile("generic/senml")
    port = free_udp_port()
    async with ObservableSensor(prof, port=port, psk=("sensor-17", KEY)):
        drv = CoapDriver.create(make_ctx(prof, host="127.0.0.1", port=port, dtls=key_file(tmp_path, KEY)))
        assert drv.uri.startswith("coaps://")  # type: ignore[attr-defined]
        async with drv:
            sink = Sink()
            await drv.poll(sink)
    assert sink.readings and "humidity" in sink.readings[0].values


async def test_poll_over_coaps_with_a_wrong_key_fails_clearly_within_the_timeout(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prof = profile("generic/senml")
    port = free_udp_port()
    async with ObservableSensor(prof, port=port, psk=("sensor-17", KEY)) as sensor:
        drv = CoapDriver.create(make_ctx(prof, host="127.0.0.1", port=port, timeout=1.0,
                                  dtls=key_file(tmp_path, b"not-the-key")))
        async with drv:
            started = time.monotonic()
            with pytest.raises(DeviceUnreachable, match="handshake did not complete") as info:
                await drv.poll(Sink())
            assert time.monotonic() - started < 1.5
    assert sensor.gets == 0
    assert "sensor-17" in str(info.value.hint) and "key" in str(info.value.hint)
    assert "not-the-key" not in caplog.text and "not-the-key" not in str(info.value)


async def test_missing_key_file_is_a_driver_error_naming_the_file_not_the_key(tmp_path: Path) -> None:
    conn = {"identity": "sensor-17", "psk": {"file": str(tmp_path / "absent")}}
    drv = CoapDriver.create(make_ctx("generic/senml", host="127.0.0.1", port=5684, dtls=conn))
    with pytest.raises(DriverError, match=r"cannot read .*absent"):
        await drv.__aenter__()


async def test_push_over_coaps_right_key_is_accepted_wrong_key_gets_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    listen = f"127.0.0.1:{free_udp_port()}"
    drv = CoapDriver.create(make_ctx("dragino/ndds75", SharedResources(), dev="bin-9", mode="push", listen=listen,
                              dtls=key_file(tmp_path, KEY)))
    async with drv:
        sink = Sink()
        task = asyncio.create_task(drv.run(sink))
        try:
            assert drv.server is not None and drv.server.dtls  # type: ignore[attr-defined]
            target = drv.server.address  # type: ignore[attr-defined]
            async with SleepyDevice(target, "/t/bin-9", profile("dragino/ndds75"), dtls=("sensor-17", KEY)) as good:
                assert await good.push() == "2.04 Changed"
            await sink.wait(lambda s: len(s.readings) == 1)
            server = drv.server  # type: ignore[attr-defined]
            server.handshake_timeout = 0.4
            # tinydtls drops a wrong key silently: the device times out, the server says why once
            async with SleepyDevice(target, "/t/bin-9", profile("dragino/ndds75"),
                                    dtls=("sensor-17", b"wrong")) as bad:
                with pytest.raises((TimeoutError, aiocoap.error.NetworkError)):
                    await bad.push(timeout=1.0)
                async with asyncio.timeout(3):
                    while not server.refused["dtls_wrong_key"]:
                        server.changed.clear()
                        await server.changed.wait()
            # an unknown identity gets a fatal alert from tinydtls at once
            async with SleepyDevice(target, "/t/bin-9", profile("dragino/ndds75"),
                                    dtls=("someone-else", KEY)) as stranger:
                with pytest.raises((TimeoutError, aiocoap.error.NetworkError)):
                    await stranger.push(timeout=1.0)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert len(sink.readings) == 1
    assert KEY.decode() not in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "DTLS" in r.getMessage()]
    assert len(warnings) == 1
    assert "device bin-9" in warnings[0] and "does not match" in warnings[0]
    assert not [r for r in caplog.records if r.name == "fieldgate.coap.server" and r.levelno >= logging.WARNING]


async def test_plain_udp_report_to_a_dtls_device_path_is_unauthorized(tmp_path: Path) -> None:
    shared = SharedResources()
    port = free_udp_port()
    plain = CoapDriver.create(make_ctx("dragino/ndds75", shared, dev="bin-1", mode="push", listen=f"127.0.0.1:{port}"))
    async with plain:
        server = plain.server  # type: ignore[attr-defined]
        # a device that must use DTLS registered on the plain server by mistake is refused, never accepted
        from fieldgate.drivers.coap.payload import PayloadDecoder
        from fieldgate.drivers.coap.server import Route

        route = Route("bin-2", ("t", "bin-2"), PayloadDecoder(profile("dragino/ndds75")), claim=":bin-2")
        server.add_route(route)
        async with SleepyDevice(server.address, "/t/bin-2", profile("dragino/ndds75")) as dev:
            assert await dev.push() == "4.01 Unauthorized"
    assert not route.queue


async def test_a_malformed_option_over_coaps_is_counted_and_costs_only_itself(tmp_path: Path) -> None:
    """The datagram check also guards decrypted DTLS datagrams (a non-UTF-8 string option would raise in aiocoap;
    Location-Path, since aiocoap's client reads a Uri-Path as text itself)."""
    from aiocoap.credentials import DTLS
    from aiocoap.numbers import OptionNumber
    from aiocoap.optiontypes import OpaqueOption

    listen = f"127.0.0.1:{free_udp_port()}"
    drv = CoapDriver.create(make_ctx("dragino/ndds75", SharedResources(), dev="bin-9", mode="push", listen=listen,
                              dtls=key_file(tmp_path, KEY)))
    async with drv:
        sink = Sink()
        task = asyncio.create_task(drv.run(sink))
        try:
            server = drv.server  # type: ignore[attr-defined]
            host, port = server.address
            client = await aiocoap.Context.create_client_context(transports=["tinydtls"])
            try:
                client.client_credentials[f"coaps://{host}:{port}/*"] = DTLS(psk=KEY, client_identity=b"sensor-17")
                msg = aiocoap.Message(code=aiocoap.POST, uri=f"coaps://{host}:{port}/", payload=b"x")
                msg.opt.add_option(OpaqueOption(OptionNumber.LOCATION_PATH, b"\xff\xfe"))
                with pytest.raises((TimeoutError, aiocoap.error.Error)):
                    async with asyncio.timeout(1.5):
                        await client.request(msg).response
                async with asyncio.timeout(3):
                    while not server.refused["option_not_utf8"]:
                        server.changed.clear()
                        await server.changed.wait()
            finally:
                await client.shutdown()
            async with SleepyDevice(server.address, "/t/bin-9", profile("dragino/ndds75"),
                                    dtls=("sensor-17", KEY)) as good:
                assert await good.push() == "2.04 Changed"
            await sink.wait(lambda s: len(s.readings) == 1)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

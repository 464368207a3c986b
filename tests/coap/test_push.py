"""The push endpoint against a simulated sleeping NB-IoT device on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fieldgate.driver import SharedResources
from fieldgate.drivers.coap.driver import CoapDriver, CoapPushDriver
from fieldgate.drivers.coap.server import PushServer
from fieldgate.errors import DeviceProtocolError, DeviceTimeout, DriverError
from fieldgate.normalize import Normalizer
from fieldgate.testing import RecordingSink as Sink
from fieldgate_hwsim.coap_sim import SleepyDevice, free_udp_port, request_bytes

from .conftest import make_ctx, profile


@asynccontextmanager
async def pushing(shared: SharedResources, dev: str, prof: str = "dragino/ndds75", listen: str = "127.0.0.1:0",
                  **conn: Any) -> AsyncIterator[tuple[CoapPushDriver, Sink]]:
    """A push driver running ``run(sink)``; yields once its server listens."""
    drv = CoapDriver.create(make_ctx(prof, shared, dev=dev, mode="push", listen=listen, **conn))
    assert isinstance(drv, CoapPushDriver) and hasattr(drv, "run")
    async with drv:
        sink = Sink()
        task = asyncio.create_task(drv.run(sink))  # type: ignore[attr-defined]
        try:
            yield drv, sink
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def target(drv: CoapPushDriver) -> tuple[str, int]:
    assert drv.server is not None
    return drv.server.host, drv.server.port


async def test_duplicated_pushes_give_one_reading_each_and_all_are_acked() -> None:
    shared = SharedResources()
    async with pushing(shared, "bin-1") as (drv, sink), \
            SleepyDevice(target(drv), "/t/bin-1", profile("dragino/ndds75"), seed=3) as dev:
        for _ in range(3):
            assert await dev.push(duplicates=2) == "2.04 Changed"
        await sink.wait(lambda s: len(s.readings) == 3)
        # the duplicates were answered too: every datagram got its (cached) ACK
        await dev.wait_received(9)
        assert dev.sent == 9
    assert len(sink.readings) == 3
    assert drv.server is None  # released with the last device
    msg = Normalizer("gw", "bin-1", profile("dragino/ndds75")).normalize(sink.readings[0])
    assert msg is not None and msg["metrics"]["distance"]["unit"] == "mm"


async def test_one_server_per_listen_address_routes_by_path() -> None:
    shared = SharedResources()
    listen = f"127.0.0.1:{free_udp_port()}"
    async with pushing(shared, "bin-1", listen=listen) as (a, sink_a), \
            pushing(shared, "cover-1", "dragino/cpn01", listen=listen) as (b, sink_b):
            assert a.server is b.server
            async with SleepyDevice(target(a), "/t/bin-1", profile("dragino/ndds75")) as d1, \
                    SleepyDevice(target(b), "/t/cover-1", profile("dragino/cpn01")) as d2:
                await asyncio.gather(d1.push(), d2.push(), d1.push())
            await sink_a.wait(lambda s: len(s.readings) == 2)
            await sink_b.wait(lambda s: len(s.readings) == 1)
            assert "open_count" in sink_b.readings[0].values and "distance" in sink_a.readings[0].values


async def test_unknown_senders_are_refused_and_counted_not_logged_per_packet(caplog: pytest.LogCaptureFixture) -> None:
    shared = SharedResources()
    caplog.set_level(logging.INFO)
    async with pushing(shared, "bin-1", sources=["127.0.0.0/8"]) as (drv, sink):
        server = drv.server
        assert server is not None
        async with SleepyDevice(target(drv), "/t/nobody", profile("dragino/ndds75")) as stranger:
            codes = [await stranger.push() for _ in range(5)]
        assert codes == ["4.04 Not Found"] * 5
        async with SleepyDevice(target(drv), "/t/bin-1", profile("dragino/ndds75")) as dev:
            assert await dev.push() == "2.04 Changed"
            assert await dev.push(b"\x01\x02") == "4.00 Bad Request"  # too short for the layout
            assert await dev.push(b'{"a": 1}', 50) == "4.15 Unsupported Content Format"
        await sink.wait(lambda s: len(s.readings) == 1 and len(s.errors) == 2)
        assert server.refused["unknown_path"] == 5
        assert server.refused["decode_error"] == 1 and server.refused["unsupported_format"] == 1
        assert all(isinstance(e, DeviceProtocolError) for e in sink.errors)
        assert {e.reason for e in sink.errors} == {"decode_error", "unsupported_format"}
    assert not [r for r in caplog.records if "nobody" in r.getMessage()]
    summaries = [r for r in caplog.records if "refused" in r.getMessage() and r.levelno == logging.WARNING]
    # the first refusal is told at once, the rest in one summary (at close here, else after a minute)
    assert len(summaries) == 2 and "unknown_path 1" in summaries[0].getMessage()
    assert "unknown_path 5" in summaries[1].getMessage()


async def test_a_source_outside_the_allowed_networks_is_forbidden() -> None:
    async with pushing(SharedResources(), "bin-1", sources=["10.0.0.0/8"]) as (drv, sink):
        async with SleepyDevice(target(drv), "/t/bin-1", profile("dragino/ndds75")) as dev:
            assert await dev.push() == "4.03 Forbidden"
        assert drv.server is not None and drv.server.refused["source"] == 1
    assert not sink.readings


async def test_a_flood_from_one_source_does_not_starve_other_devices() -> None:
    shared = SharedResources()
    listen = f"127.0.0.1:{free_udp_port()}"
    limit = {"rate": 5, "burst": 5}  # devices sharing a server share the most generous limit among them
    async with pushing(shared, "bin-1", listen=listen, rate_limit=limit) as (a, sink_a), \
            pushing(shared, "cover-1", "dragino/cpn01", listen=listen, rate_limit=limit) as (_b, sink_b):
            async with SleepyDevice(target(a), "/t/bin-1", profile("dragino/ndds75")) as flooder, \
                    SleepyDevice(target(a), "/t/cover-1", profile("dragino/cpn01"), ack_timeout=0.2) as good:
                loop = asyncio.get_running_loop()
                started = loop.time()
                flood = asyncio.create_task(flooder.flood(20000))
                codes = await asyncio.gather(*(good.push() for _ in range(5)))
                await flood
            assert codes == ["2.04 Changed"] * 5
            await sink_b.wait(lambda s: len(s.readings) == 5)
            elapsed = loop.time() - started
            server = a.server
            assert server is not None
            limited = sum(server.rate_limited.values())
            flood_key = next(iter(server.rate_limited))
    # the flooder got its burst and the rate through, no more; the rest died at the socket (or in the kernel)
    flood_readings = len(sink_a.readings)
    assert flood_readings <= 5 + 5 * elapsed + 1
    assert limited > 100 and len(server.rate_limited) == 1 and flood_key.startswith("127.0.0.1:")


async def test_stale_push_device_is_reported_and_keeps_its_route() -> None:
    shared = SharedResources()
    async with pushing(shared, "bin-1", stale_after=0.2) as (drv, sink):
        await sink.wait(lambda s: len(s.errors) >= 2)  # told once per stale_after of silence
        assert all(isinstance(e, DeviceTimeout) and "no report" in str(e) for e in sink.errors)
        async with SleepyDevice(target(drv), "/t/bin-1", profile("dragino/ndds75"), seed=3) as dev:
            assert await dev.push() == "2.04 Changed"  # the route stayed: the silence ends with a reading
        await sink.wait(lambda s: len(s.readings) == 1)


async def test_two_devices_cannot_share_a_path() -> None:
    shared = SharedResources()
    listen = f"127.0.0.1:{free_udp_port()}"
    async with pushing(shared, "bin-1", listen=listen, path="/t/x") as (a, _):
        other = CoapDriver.create(make_ctx("dragino/ndds75", shared, dev="bin-2", mode="push", listen=listen,
                                           path="/t/x"))
        with pytest.raises(DriverError, match="already used by device 'bin-1'"):
            await other.__aenter__()
        assert a.server is not None and a.server.routes  # the first device keeps working


async def test_a_second_gateway_cannot_share_the_push_port() -> None:
    """With SO_REUSEPORT the kernel would split the pushes between two listeners; one must be refused."""
    from fieldgate.errors import DeviceBusy

    first = PushServer("127.0.0.1", 0)
    await first.start()
    try:
        second = PushServer("127.0.0.1", first.port)  # as another process (doctor, a second service) would
        with pytest.raises(DeviceBusy, match=r"cannot listen.*in use") as info:
            await second.start()
        assert "second gateway" in str(info.value.hint)
    finally:
        await first.close()


async def test_a_failed_bind_leaves_no_socket_behind() -> None:
    """aiocoap 0.4 does not close the socket whose bind() failed; the error we raise from it kept it
    alive until a garbage collection far away warned "unclosed <socket ... laddr=('::', 0)>"."""
    import gc
    import warnings

    from fieldgate.errors import DeviceBusy

    first = PushServer("127.0.0.1", 0)
    await first.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            second = PushServer("127.0.0.1", first.port)
            with pytest.raises(DeviceBusy) as info:
                await second.start()
            del info, second
            gc.collect()
        leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert not leaked, leaked
    finally:
        await first.close()


async def test_bind_failure_is_unreachable_with_a_hint() -> None:
    import socket

    from fieldgate.errors import DeviceUnreachable

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        server = PushServer("192.0.2.1", port)  # TEST-NET address: not on this machine
        with pytest.raises(DeviceUnreachable, match="cannot listen") as info:
            await server.start()
    assert "not on this machine" in str(info.value.hint)


def test_request_bytes_roundtrip() -> None:
    import aiocoap

    data = request_bytes("/t/a", b"x", 42, 7, b"tk")
    msg = aiocoap.Message.decode(data)
    assert msg.mid == 7 and msg.opt.uri_path == ("t", "a") and msg.opt.content_format == 42


_ = Callable

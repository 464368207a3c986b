"""Polling and Observe against real aiocoap servers (hw-sim) on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest
from fieldgate.drivers.coap.driver import CoapDriver, CoapObserveDriver, CoapPollDriver
from fieldgate.errors import DeviceProtocolError, DeviceTimeout
from fieldgate.normalize import Normalizer
from fieldgate.testing import RecordingSink as Sink
from fieldgate_hwsim.coap_sim import ObservableSensor, free_udp_port

from .conftest import make_ctx, profile


async def test_poll_reads_the_resource_and_scales_it() -> None:
    prof = profile("generic/senml")
    async with ObservableSensor(prof, seed=1) as sensor:
        drv = CoapDriver.create(make_ctx(prof, host="127.0.0.1", port=sensor.port))
        assert isinstance(drv, CoapPollDriver) and not hasattr(drv, "run")
        async with drv:
            sink = Sink()
            await drv.poll(sink)
            sensor.update()
            await drv.poll(sink)
    assert sensor.gets == 2
    assert len(sink.readings) == 2
    first, second = (Normalizer("gw", "d", prof).normalize(r) for r in sink.readings)
    assert first is not None and second is not None
    assert first["metrics"]["humidity"]["unit"] == "%RH"
    assert 0 <= first["metrics"]["humidity"]["value"] <= 100
    assert first["metrics"] != second["metrics"]


async def test_a_silent_device_costs_its_timeout_not_93_seconds() -> None:
    port = free_udp_port()  # nothing listens: on loopback the kernel answers ICMP unreachable, so bind a mute socket
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
        mute.bind(("127.0.0.1", port))
        drv = CoapDriver.create(make_ctx("generic/senml", timeout=1.0, host="127.0.0.1", port=port, ack_timeout=0.1))
        async with drv:
            started = time.monotonic()
            with pytest.raises(DeviceTimeout, match="no answer") as info:
                await drv.poll(Sink())
    assert time.monotonic() - started < 1.5
    assert "push" in str(info.value.hint)


async def test_wrong_resource_is_a_protocol_error_with_the_code() -> None:
    prof = profile("generic/senml")
    sensor = ObservableSensor(prof)
    port = await sensor.start()
    try:
        async with CoapDriver.create(make_ctx(prof, host="127.0.0.1", port=port, resource="/nope")) as drv:
            with pytest.raises(DeviceProtocolError) as info:
                await drv.poll(Sink())
    finally:
        await sensor.stop()
    assert info.value.reason == "coap_4.04"


async def test_observe_delivers_notifications_and_reregisters_a_lapsed_observation() -> None:
    prof = profile("generic/senml")
    async with ObservableSensor(prof, max_age=1, seed=2) as sensor:
        drv = CoapDriver.create(make_ctx(prof, host="127.0.0.1", port=sensor.port, mode="observe", observe_margin=0.3))
        assert isinstance(drv, CoapObserveDriver)
        async with drv:
            sink = Sink()
            task = asyncio.create_task(drv.run(sink))
            try:
                await sink.wait(lambda s: len(s.readings) >= 1 and sensor.observers == 1)
                for n in (2, 3):
                    sensor.update()  # aiocoap coalesces updates still in flight: one at a time
                    await sink.wait(lambda s, n=n: len(s.readings) >= n)
                assert drv.registrations == 1
                # the device reboots and forgets its observers: no notification ever comes again
                assert sensor.forget_observers() == 1
                await sink.wait(lambda s: drv.registrations == 2 and sensor.observers == 1, timeout=5)
                assert drv.lapses == 1
                before = len(sink.readings)
                sensor.update()
                await sink.wait(lambda s: len(s.readings) > before)
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
    assert sensor.registrations == 2
    assert not sink.errors

"""Group commit against a real mosquitto: a reading is committed as soon as it waits.

A commit starts whenever readings wait and no commit is in flight, so at light
load a reading waits one fsync, not a flush interval, and under load the
readings that arrive during a commit form the next batch by themselves.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fieldgate.testing import running_gateway, until

from .conftest import sim_device
from .support.broker import Mosquitto
from .support.collector import Collector
from .test_uplink import check_all_arrived, committed_max_seq


def slow_flush_config(data_dir: Path, port: int, devices: int = 2) -> str:
    # A flush interval of an hour: were commits still timed by it, nothing would be committed
    # (and so nothing published) while the test runs.
    return (
        f"gateway: {{id: gw-c, data_dir: {data_dir}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {port}, reconnect_min: 0.05s, reconnect_max: 0.2s}}\n"
        "buffer: {flush_interval: 1h}\n"
        "devices:\n" + "".join(sim_device(f"d{i}", poll_interval="10s") for i in range(devices))
    )


async def test_a_reading_is_committed_and_delivered_without_waiting_for_a_flush(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    col = Collector(mosquitto.host, mosquitto.port)
    await asyncio.to_thread(col.connect)
    data = tmp_path / "data"
    try:
        async with running_gateway(slow_flush_config(data, mosquitto.port)) as (_gw, uplink):
            # One poll per device (every 10 s): each reading is committed on its own and published.
            await until(lambda: {r["device"] for r in col.readings()} == {"d0", "d1"}, timeout=20,
                        what="the first reading of each device, long before any flush interval")
            assert uplink.flushed >= 2
            assert committed_max_seq(data) >= 2  # on disk before it was published
        check_all_arrived(col, committed_max_seq(data))
    finally:
        await asyncio.to_thread(col.disconnect)

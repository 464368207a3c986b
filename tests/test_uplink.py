"""Store and forward against a real mosquitto: nothing accepted is lost.

Each test counts every ``seq``: after outages, restarts and limits, the
broker must have seen every committed reading (at least once, in order per
device), and the only gaps allowed are drops announced on ``events``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fieldgate.testing import running_gateway, until

from .conftest import sim_device
from .support.broker import Mosquitto
from .support.collector import Collector
from .support.contract import (
    validate_batch,
    validate_event,
    validate_gateway_status,
    validate_reading,
    validate_status,
)


def gw_config(data_dir: Path, port: int, devices: int = 3, interval: str = "0.02s", mqtt_extra: str = "",
              buffer_extra: str = "") -> str:
    return (
        f"gateway: {{id: gw-t, data_dir: {data_dir}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {port}, reconnect_min: 0.05s, reconnect_max: 0.2s{mqtt_extra}}}\n"
        f"buffer: {{flush_interval: 50ms{buffer_extra}}}\n"
        "devices:\n" + "".join(sim_device(f"d{i}", poll_interval=interval) for i in range(devices))
    )


def committed_max_seq(data_dir: Path) -> int:
    """The highest seq the buffer ever assigned (read straight from its file)."""
    with sqlite3.connect(data_dir / "buffer.db") as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
    return int(row[0]) if row else 0


def check_all_arrived(col: Collector, upto: int, dropped: set[int] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    if col.connected:
        # A PUBACK means the broker has a reading, not that it reached this subscriber yet: a
        # barrier through the broker first (the last ones acked at shutdown were otherwise missed).
        col.sync()
    readings = col.readings()
    for r in readings:
        validate_reading(r)
    seqs = [r["seq"] for r in readings]
    got = set(seqs)
    missing = [s for s in range(1, upto + 1) if s not in got and s not in dropped]
    assert not missing, f"{len(missing)} seq(s) never arrived, e.g. {missing[:10]}"
    assert not (got & dropped), "a seq announced as dropped arrived"
    assert col.per_device_in_order()
    return {"received": len(seqs), "unique": len(got), "duplicates": len(seqs) - len(got)}


async def test_readings_statuses_and_birth_reach_the_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    col = Collector(mosquitto.host, mosquitto.port)
    await asyncio.to_thread(col.connect)
    try:
        async with running_gateway(gw_config(tmp_path / "data", mosquitto.port)) as (_gw, uplink):
            await until(lambda: len(col.readings()) >= 30, what="30 readings")
            birth = await asyncio.to_thread(col.retained, "fieldgate/gw-t/status")
            assert birth is not None
            assert birth.json()["state"] == "online"
            assert uplink.snapshot()["state"] == "connected"
        check_all_arrived(col, committed_max_seq(tmp_path / "data"))
        await until(lambda: col.statuses("fieldgate/gw-t/status")[-1]["state"] == "offline", what="offline")
        retained = await asyncio.to_thread(col.retained, "fieldgate/gw-t/status")
        assert retained is not None
        assert retained.json()["state"] == "offline"
        for payload in col.statuses("fieldgate/gw-t/status"):
            validate_gateway_status(payload)
        statuses = col.statuses("fieldgate/gw-t/d0/status")
        assert statuses, "no device status"
        assert statuses[0]["state"] == "online"
        for payload in statuses:
            validate_status(payload)
        assert any(e["kind"] == "started" for e in col.events())
        for e in col.events():
            validate_event(e)
        col.check_contract()
    finally:
        await asyncio.to_thread(col.disconnect)


async def test_broker_outage_mid_stream_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    col = Collector(mosquitto.host, mosquitto.port)
    await asyncio.to_thread(col.connect)
    data = tmp_path / "data"
    try:
        async with running_gateway(gw_config(data, mosquitto.port)) as (_gw, uplink):
            await until(lambda: len(col.readings()) >= 20, what="readings before the outage")
            await asyncio.to_thread(mosquitto.stop)
            before = uplink.flushed
            # the gateway keeps polling and buffering while the broker is away
            await until(lambda: uplink.flushed >= before + 100, what="buffering during the outage")
            await until(lambda: uplink.snapshot()["state"] != "connected", what="uplink noticing the outage")
            await asyncio.to_thread(mosquitto.start)
            await until(lambda: uplink.snapshot()["state"] == "connected", what="reconnect")
            target = committed_max_seq(data)
            await until(lambda: {r["seq"] for r in col.readings()} >= set(range(1, target + 1)), timeout=30,
                        what=f"all seqs up to {target}")
        stats = check_all_arrived(col, committed_max_seq(data))
        print(f"outage: {stats}")
    finally:
        await asyncio.to_thread(col.disconnect)


async def test_buffer_limit_drops_exactly_the_oldest_and_announces_it(tmp_path: Path, mosquitto: Mosquitto) -> None:
    col = Collector(mosquitto.host, mosquitto.port)
    await asyncio.to_thread(col.connect)
    data = tmp_path / "data"
    await asyncio.to_thread(mosquitto.stop)
    try:
        text = gw_config(data, mosquitto.port, devices=4, interval="0.01s", buffer_extra=", max_bytes: 400kB")
        async with running_gateway(text) as (_gw, uplink):
            await until(lambda: uplink.flushed >= 3000, timeout=60, what="3000 buffered readings")
            await uplink._db(uplink.buffer.enforce_limits)  # the maintenance task does this every 10 s
            stats = await uplink._db(uplink.buffer.stats)
            assert stats.dropped_total > 0, "the limit should have dropped readings"
            await asyncio.to_thread(mosquitto.start)
            await until(lambda: any(e["kind"] == "buffer_drop" for e in col.events()), what="drop event")
            target = committed_max_seq(data)
            dropped: set[int] = set()
            for e in col.events():
                if e["kind"] == "buffer_drop":
                    dropped |= set(range(e["first_seq"], e["last_seq"] + 1))
            await until(lambda: {r["seq"] for r in col.readings()} | dropped >= set(range(1, target + 1)),
                        timeout=30, what="all surviving seqs")
        assert len(dropped) == sum(e["dropped"] for e in col.events() if e["kind"] == "buffer_drop")
        assert min(dropped) == 1, "the oldest readings are the ones dropped"
        check_all_arrived(col, target, dropped)
    finally:
        await asyncio.to_thread(col.disconnect)


async def test_readings_beyond_max_pending_are_dropped_counted_and_announced(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Devices deliver faster than the disk commits: memory stays bounded, the loss is counted and said."""
    col = Collector(mosquitto.host, mosquitto.port)
    await asyncio.to_thread(col.connect)
    data = tmp_path / "data"
    try:
        text = gw_config(data, mosquitto.port, devices=1, interval="1h", buffer_extra=", max_pending: 1000")
        async with running_gateway(text) as (_gw, uplink):
            await until(lambda: bool(col.readings()), what="the sim device's reading")
            template = {k: v for k, v in col.readings()[0].items() if k != "seq"}
            flushed = uplink.flushed
            for i in range(5000):  # no await in between: nothing can be committed meanwhile
                uplink.submit("d0", {**template, "metrics": {"n": {"value": i, "quality": "good"}}})
                assert len(uplink._pending) <= 1000
            kept = len(uplink._pending)
            assert uplink.overload_dropped == 5000 - kept > 0
            await until(lambda: uplink.flushed == flushed + kept, what="the kept readings committed")
            await until(lambda: any(e["kind"] == "buffer_drop" and e.get("reason") == "overload"
                                    for e in col.events()), what="the overload event")
            target = committed_max_seq(data)
            await until(lambda: {r["seq"] for r in col.readings()} >= set(range(1, target + 1)),
                        what="every committed reading")
        events = [e for e in col.events() if e.get("reason") == "overload"]
        assert sum(e["dropped"] for e in events) == events[-1]["dropped_total"] == 5000 - kept
        values = [r["metrics"]["n"]["value"] for r in col.readings() if "n" in r["metrics"]]
        assert values == list(range(5000 - kept, 5000)), "the newest are kept, in order; the oldest dropped"
        check_all_arrived(col, target)
    finally:
        await asyncio.to_thread(col.disconnect)


async def test_the_bytes_waiting_for_their_commit_are_bounded_too(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Big readings (100 registers: ~4 KB each) reach a memory bound long before the count bound."""
    col = Collector(mosquitto.host, mosquitto.port)
    await asyncio.to_thread(col.connect)
    data = tmp_path / "data"
    try:
        text = gw_config(data, mosquitto.port, devices=1, interval="1h", buffer_extra=", max_pending_bytes: 1MB")
        async with running_gateway(text) as (_gw, uplink):
            await until(lambda: bool(col.readings()), what="the sim device's reading")
            template = {k: v for k, v in col.readings()[0].items() if k != "seq"}
            big = {f"r{i}": {"value": i * 1.5, "quality": "good", "unit": "W"} for i in range(100)}
            for i in range(2000):  # ~8 MB offered with no await in between: nothing is committed meanwhile
                uplink.submit("d0", {**template, "metrics": {**big, "n": {"value": i, "quality": "good"}}})
                assert uplink.intake.bytes <= 1_000_000 + 5000
            assert sum(len(b) for _, _, b in uplink._pending) == uplink.intake.bytes
            kept = len(uplink._pending)
            assert uplink.overload_dropped == 2000 - kept > 0
            await until(lambda: any(e["kind"] == "buffer_drop" and e.get("reason") == "overload"
                                    for e in col.events()), what="the overload event")
            await until(lambda: uplink.intake.bytes == 0, what="the kept readings committed")
    finally:
        await asyncio.to_thread(col.disconnect)


async def test_corrupt_buffer_is_moved_aside_and_seq_continues(tmp_path: Path, mosquitto: Mosquitto) -> None:
    col = Collector(mosquitto.host, mosquitto.port)
    await asyncio.to_thread(col.connect)
    data = tmp_path / "data"
    try:
        async with running_gateway(gw_config(data, mosquitto.port, devices=1)):
            await until(lambda: len(col.readings()) >= 5, what="first readings")
        first_max = max(r["seq"] for r in col.readings())
        (data / "buffer.db").write_bytes(b"this is not a database" * 100)
        for suffix in ("-wal", "-shm"):
            (data / f"buffer.db{suffix}").unlink(missing_ok=True)
        async with running_gateway(gw_config(data, mosquitto.port, devices=1)):
            await until(lambda: any(e["kind"] == "buffer_corrupt" for e in col.events()), what="corrupt event")
            await until(lambda: max(r["seq"] for r in col.readings()) > first_max + 5, what="new readings")
        assert list(data.glob("buffer.db.corrupt-*")), "the corrupt file is kept for inspection"
        new = [r["seq"] for r in col.readings() if r["seq"] > first_max]
        assert new, "seq continued above the old values"
    finally:
        await asyncio.to_thread(col.disconnect)


@pytest.mark.parametrize("case", ["good_ca", "rogue_ca", "mtls_ok", "mtls_missing_cert", "wrong_password"])
async def test_tls_and_credentials(tmp_path: Path, test_pki: Any, case: str) -> None:
    users = {"gw": "right-password"} if case == "wrong_password" else None
    broker = Mosquitto(tmp_dir=tmp_path / "broker", tls=test_pki, require_client_cert=case.startswith("mtls"),
                       users=users)
    await asyncio.to_thread(broker.start)
    try:
        secret = tmp_path / "mqtt.password"
        secret.write_text("wrong-password\n")
        ca = test_pki.rogue_ca_cert if case == "rogue_ca" else test_pki.ca_cert
        tls = f", tls: {{ca_file: {ca}"
        if case == "mtls_ok":
            tls += f", cert_file: {test_pki.client_cert}, key_file: {test_pki.client_key}"
        tls += "}"
        if case == "wrong_password":
            tls += f", username: gw, password: {{file: {secret}}}"
        text = gw_config(tmp_path / "data", broker.port, devices=1, mqtt_extra=f", host: localhost{tls}")
        text = text.replace("host: 127.0.0.1, ", "")
        async with running_gateway(text) as (_gw, uplink):
            if case in ("good_ca", "mtls_ok"):
                await until(lambda: uplink.state.acked >= 3, what="acked readings over TLS")
                return
            await until(lambda: uplink.state.last_error is not None, what="a clear uplink error")
            err = uplink.state.last_error or ""
            assert f"localhost:{broker.port}" in err
            if case == "rogue_ca":
                assert "not trusted" in err
            elif case == "mtls_missing_cert":
                assert "TLS" in err or "refused" in err or "lost" in err
            else:
                assert "refused the login" in err
                assert "wrong-password" not in err
            # the buffer keeps filling meanwhile
            before = uplink.flushed
            await until(lambda: uplink.flushed > before + 5, what="buffering while refused")
            assert uplink.state.acked == 0
    finally:
        await asyncio.to_thread(broker.stop)


@pytest.mark.parametrize("when", ["always", "backlog"])
async def test_batches_carry_every_reading(tmp_path: Path, mosquitto: Mosquitto, when: str) -> None:
    col = Collector(mosquitto.host, mosquitto.port)
    await asyncio.to_thread(col.connect)
    data = tmp_path / "data"
    try:
        text = gw_config(data, mosquitto.port, mqtt_extra=f", batch: {{enabled: true, max_readings: 25, when: {when}}}")
        async with running_gateway(text) as (_gw, uplink):
            if when == "backlog":
                await until(lambda: len(col.readings()) >= 10, what="live readings")
                await asyncio.to_thread(mosquitto.stop)
                before = uplink.flushed
                await until(lambda: uplink.flushed >= before + 300, what="a backlog")
                await asyncio.to_thread(mosquitto.start)
            else:
                await until(lambda: uplink.flushed >= 100, what="readings committed")
            target = committed_max_seq(data)
            await until(lambda: {r["seq"] for r in col.readings()} >= set(range(1, target + 1)), timeout=30,
                        what=f"all seqs up to {target}")
        batches = [m.json() for m in col.on("/readings")]
        assert batches, "no batch message was sent"
        for b in batches:
            validate_batch(b)
            assert 1 <= len(b["readings"]) <= 25
        singles = col.on("/reading")
        if when == "always":
            assert not singles, "with batching always on, readings travel only in batches"
        else:
            assert singles, "live readings go one by one when there is no backlog"
            assert any(len(b["readings"]) == 25 for b in batches), "the backlog is packed into full batches"
        check_all_arrived(col, committed_max_seq(data))
        col.check_contract()
    finally:
        await asyncio.to_thread(col.disconnect)


async def test_mqtt_3_1_1_with_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Mosquitto(tmp_dir=tmp_path / "broker", users={"gw": "s3cret"})
    await asyncio.to_thread(broker.start)
    col = Collector(broker.host, broker.port, username="gw", password="s3cret")
    await asyncio.to_thread(col.connect)
    monkeypatch.setenv("FG_TEST_MQTT_PASSWORD", "s3cret")
    try:
        text = gw_config(tmp_path / "data", broker.port, devices=1,
                         mqtt_extra=", protocol: '3.1.1', username: gw, password: {env: FG_TEST_MQTT_PASSWORD}")
        async with running_gateway(text) as (_gw, uplink):
            await until(lambda: len(col.readings()) >= 5, what="readings over MQTT 3.1.1")
            assert uplink.state.last_error is None
        col.check_contract()
    finally:
        await asyncio.to_thread(col.disconnect)
        await asyncio.to_thread(broker.stop)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_broker_shutting_down_is_named_not_unspecified(tmp_path: Path, mosquitto: Mosquitto,
                                                               protocol: str) -> None:
    async with running_gateway(gw_config(tmp_path / "data", mosquitto.port, devices=1,
                                         mqtt_extra=f", protocol: '{protocol}'")) as (_gw, uplink):
        await until(lambda: uplink.state.acked >= 3, what="acked readings")
        await asyncio.to_thread(mosquitto.stop)  # a clean stop (SIGTERM), as systemctl stop mosquitto does
        await until(lambda: uplink.state.last_error is not None, what="the uplink noticing")
        err = uplink.state.last_error or ""
        assert "Unspecified error" not in err, err
        assert f"127.0.0.1:{mosquitto.port}" in err
        assert "closed the connection" in err or "shutting down" in err, err

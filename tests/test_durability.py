"""Nothing accepted is lost: `kill -9` at random moments, and a full disk.

The gateway runs as a real process (`fieldgate run`) publishing to a real
mosquitto; a persistent subscriber counts every ``seq``. After every trial
the buffer file tells which seqs were committed; all of them must arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.uplink import BufferedUplink

from .conftest import Proc
from .support.broker import Mosquitto
from .support.collector import Collector
from .test_uplink import check_all_arrived, committed_max_seq, gw_config, until


def _committed(data: Path) -> int:
    try:
        return committed_max_seq(data)
    except sqlite3.Error:
        return 0  # the file is being created


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_no_committed_reading(
    tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]
) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(gw_config(data, mosquitto.port, devices=3, interval="0.01s"))
    col = Collector(mosquitto.host, mosquitto.port)
    col.connect()
    rng = random.Random()
    trials = 8
    try:
        for trial in range(trials):
            broker_down = trial % 3 == 1  # every third trial runs (and dies) while the broker is away
            if broker_down:
                mosquitto.stop()
            before = _committed(data)
            p = fieldgate_proc("run", "-c", str(cfg))
            # wait until this process has committed something, then kill it at a random moment
            _wait(lambda: _committed(data) > before + 20, 20, f"trial {trial}: new commits")  # noqa: B023
            time.sleep(rng.uniform(0, 0.3))  # fault injection timing, not synchronization
            p.popen.send_signal(signal.SIGKILL)
            p.popen.wait(10)
            if broker_down:
                mosquitto.start()
        target = _committed(data)
        final = fieldgate_proc("run", "-c", str(cfg))
        final.wait_stderr("running: gateway", timeout=30)  # its seq jump (an unclean start) is decided

        def skipped() -> set[int]:
            # Every start after a kill continues above the reservation; each jump is an announced gap.
            return {s for e in col.events() if e["kind"] == "buffer_seq_jump"
                    for s in range(e["last_seq"] + 1, e["next_seq"])}

        col.wait_for(lambda: {r["seq"] for r in col.readings()} | skipped() >= set(range(1, target + 1)),
                     timeout=60, what=f"every committed seq up to {target}")
        final.popen.send_signal(signal.SIGTERM)
        assert final.popen.wait(15) == 0
        # A resent reading is the same reading; a seq given to two readings would be a reuse.
        seen: dict[int, tuple[str, str]] = {}
        for r in col.readings():
            assert seen.setdefault(r["seq"], (r["device"], r["ts"])) == (r["device"], r["ts"]), f"seq {r['seq']} reused"
        stats = check_all_arrived(col, committed_max_seq(data), dropped=skipped())
        print(f"\nkill -9: {trials} trials, {target} seqs handed out before the last start, "
              f"{stats['received']} received, {stats['duplicates']} duplicates resent")
    finally:
        col.disconnect()


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str = "3m") -> Iterator[Path]:
    """A real filesystem that fills up: a tmpfs mount (the tests run as root)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the buffer's own tests cover SQLITE_FULL")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_disk_full_keeps_polling_spills_and_recovers(tmp_path: Path, mosquitto: Mosquitto) -> None:
    col = Collector(mosquitto.host, mosquitto.port)
    await asyncio.to_thread(col.connect)
    await asyncio.to_thread(mosquitto.stop)
    try:
        with tiny_filesystem(tmp_path / "small") as data:
            text = gw_config(data, mosquitto.port, devices=4, interval="0.005s",
                             buffer_extra=", spill_max: 2000, max_bytes: 1GB")
            loaded = load_config_text(text, "t.yaml")
            uplink = BufferedUplink(loaded.config)
            await uplink.start()
            gw = Gateway(loaded, uplink)
            task = asyncio.create_task(gw.run())
            try:
                async def full() -> bool:
                    s = await uplink._db(uplink.buffer.stats)
                    return s.disk_full
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 90
                while not await full():
                    assert loop.time() < deadline, "the disk never filled"
                    await asyncio.sleep(0.1)
                polls = {d: r.stats.polls for d, r in gw.runners.items()}
                await until(lambda: all(r.stats.polls > polls[d] + 20 for d, r in gw.runners.items()),
                            what="polling to go on while the disk is full")
                stats = await uplink._db(uplink.buffer.stats)
                assert 0 < stats.spilled <= 2000
                # the broker returns: acknowledged rows free pages, the spill is committed
                await asyncio.to_thread(mosquitto.start)
                await until(lambda: any(e["kind"] == "buffer_disk_full" for e in col.events()), timeout=30,
                            what="the disk-full event")
                await until(lambda: any(e["kind"] == "buffer_disk_ok" for e in col.events()), timeout=60,
                            what="recovery from the spill")
            finally:
                gw.request_stop()
                await asyncio.wait_for(task, 20)
            assert all(r.stats.state == "online" for r in gw.runners.values())
            lost = sum(e.get("lost", 0) for e in col.events() if e["kind"] == "buffer_disk_ok")
            print(f"\ndisk full: spill lost {lost} reading(s), announced")
            col.check_contract()
    finally:
        await asyncio.to_thread(col.disconnect)

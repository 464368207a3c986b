"""A full disk must never lock the buffer: on a real small filesystem, at the Buffer level and end to end.

The disk fills with the buffer's own readings while the broker is away (the
way a site meets it); when the broker returns, the acknowledged rows must be
deleted, the space must come back, the reserve must be made again and live
readings must flow, with no person involved. The readings lost in memory are
counted and announced while they are lost.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.buffer import RESERVE_NAME, Buffer

from .conftest import Proc
from .support.broker import Mosquitto
from .support.collector import Collector
from .test_buffer_damage_e2e import _db_state
from .test_durability import _wait, tiny_filesystem
from .test_uplink import gw_config


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _size(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def _body(i: int) -> str:
    return json.dumps({"schema": "fieldgate.reading/1", "gateway": "gw-t", "device": "d",
                       "ts": "2027-01-15T08:00:00.000Z",
                       "metrics": {"v": {"value": i, "quality": "good"}, "pad": {"value": "x" * 200}}},
                      separators=(",", ":"))


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tiny_filesystem(tmp_path / "small", size="20m") as root:
        yield root


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_buffer_that_filled_its_disk_drains_when_acks_come_and_makes_its_reserve_again(
        small_fs: Path, durability: str) -> None:
    """The uplink's rhythm: appends every turn, acks of 500-row pages, upkeep every few turns."""
    events: list[dict[str, Any]] = []
    buf = Buffer(small_fs / "data", durability=durability, spill_max=2000,  # type: ignore[arg-type]
                 max_bytes=10**9, on_event=events.append)
    buf.open()
    try:
        n = 0
        turn = 0

        def produce(k: int) -> list[int]:
            nonlocal n
            seqs = buf.append_many([("d", n + i, _body(n + i)) for i in range(k)])
            n += k
            return seqs

        # The broker is away until the spill overflows; a backlog is committed 2000 readings at a time,
        # the uplink's chunk (with 200 the old buffer happened to recover; with 2000 it stayed at 100 %).
        while buf.stats().spill_dropped_total < 5000:
            produce(2000)
            turn += 1
            if turn % 5 == 0:
                buf.enforce_limits()
                buf.maintenance()
            assert turn < 5000, "the disk never filled"
        assert buf.stats().disk_full
        # The broker returns: every page read is acknowledged a little later, live readings go on.
        cursor = 0
        acked: list[int] = []
        for turn in range(3000):
            rows = buf.read(cursor, 500)
            if rows:
                cursor = rows[-1].seq
            produce(100)
            buf.ack(acked)
            acked = [r.seq for r in rows]
            if turn % 5 == 0:
                buf.enforce_limits()
                buf.maintenance()
            s = buf.stats()
            if (not s.disk_full and s.spilled == 0 and s.depth < 2000
                    and (small_fs / "data" / RESERVE_NAME).exists() and _free(small_fs) > _size(small_fs) // 2):
                break
        else:
            s = buf.stats()
            pytest.fail(f"the buffer never drained: {s}, {_free(small_fs)} bytes free, "
                        f"files {sorted(os.listdir(small_fs / 'data'))}")
        kinds = [e["kind"] for e in events]
        assert "buffer_disk_full" in kinds and "buffer_disk_ok" in kinds
        lost = sum(e["lost"] for e in events if e["kind"] == "buffer_spill_lost")
        assert lost >= 5000 and lost == s.spill_dropped_total  # every lost reading announced as it was lost
        assert buf.append_many([("d", 0, _body(0))]) != []
    finally:
        buf.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_gateway_process_recovers_from_a_full_disk_with_no_one_freeing_space(
        small_fs: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc], tmp_path: Path) -> None:
    data = small_fs / "data"
    cfg = tmp_path / "fieldgate.yaml"
    # ~1000 readings/s: the disk fills in about a minute, and the replay can overtake the live rate.
    cfg.write_text(gw_config(data, mosquitto.port, devices=4, interval="0.004s",
                             buffer_extra=", spill_max: 2000, max_bytes: 1GB, durability: normal"))
    col = Collector(mosquitto.host, mosquitto.port)  # a persistent session: it misses nothing while away
    col.connect()
    mosquitto.stop()
    p = fieldgate_proc("run", "-c", str(cfg))
    try:
        p.wait_stderr("cannot write to", timeout=240)  # the disk is full
        p.wait_stderr("spill is full", timeout=60)  # and readings are being lost in memory
        p.wait_stderr("lost in memory", timeout=60)  # announced while it happens, at WARNING
        mosquitto.start()
        col.wait_connected(timeout=30)
        col.wait_for(lambda: any(e["kind"] == "buffer_disk_ok" for e in col.events()), timeout=180,
                     what="the buffer writable again")
        try:
            col.wait_for(lambda: (data / RESERVE_NAME).exists() and _free(small_fs) > _size(small_fs) // 2,
                         timeout=120, what="space back and the reserve made again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {_free(small_fs)} bytes free, files {sorted(os.listdir(data))}, "
                                 f"buffer {_db_state(data)[0]}, log:\n{''.join(p.stderr_lines[-30:])}") from None
        # The whole backlog, and live readings after it, reach the subscriber (no drops configured).
        mark = _db_state(data)[0] + 1000

        def delivered_to_mark() -> bool:
            return len({s for s in col.seqs() if s <= mark}) == mark

        _wait(delivered_to_mark, 300, f"every seq up to {mark} at the subscriber")
        p.popen.send_signal(signal.SIGTERM)
        assert p.popen.wait(30) == 0
        # Acknowledged by the broker (so deleted here) is not yet received by the subscriber: the sync
        # message, published after the gateway has gone, arrives after everything it sent.
        col.sync(timeout=120)
        events = col.events()
        lost = [e for e in events if e["kind"] == "buffer_spill_lost"]
        assert lost and all(e["lost"] > 0 for e in lost)
        got = set(col.seqs())
        committed = _db_state(data)[0]
        waiting = _db_state(data)[1]
        # Whatever did not arrive yet still waits in the buffer (sent after the next start): nothing lost.
        missing = [s for s in range(1, committed + 1) if s not in got and s not in waiting]
        assert not [e for e in events if e["kind"] == "buffer_drop"]
        assert not missing, f"{len(missing)} committed seq(s) lost: {_ranges(missing)[:20]}"
        print(f"\ndisk full end to end: {committed} committed, {len(col.seqs())} received "
              f"({len(col.seqs()) - len(got)} duplicates), {sum(e['lost'] for e in lost)} lost in memory "
              f"announced in {len(lost)} event(s)")
        assert not any("Traceback" in line for line in p.stderr_lines)
    finally:
        col.disconnect()
        p.stop()

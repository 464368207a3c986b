"""The gateway process meets a damaged buffer folder: it starts, says so, and never gives a seq twice.

A real ``fieldgate run`` publishes to a real mosquitto; the broker goes away
so that a backlog builds, the gateway stops (cleanly, or SIGKILL for the lost
WAL), a file is damaged the way storage damages it, and the gateway starts
again. A persistent QoS 1 subscriber counts every seq: readings made after the
restart have seqs above everything handed out before, the damage is announced
on the events topic, and the test prints how much of the backlog survived.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Proc
from .support.broker import Mosquitto
from .support.collector import Collector
from .support.contract import validate_reading
from .test_durability import _wait
from .test_uplink import gw_config

EXPECTED_EVENT = {
    "truncated": "buffer_corrupt",
    "random_middle": "buffer_corrupt",
    "wal_deleted": "buffer_lost",
    "sidecar_corrupt": "buffer_sidecar_damaged",
}


def _db_state(data: Path) -> tuple[int, set[int]]:
    """(highest seq handed out, seqs waiting), read-only: a kill's WAL stays as it is."""
    with sqlite3.connect(f"file:{data / 'buffer.db'}?mode=ro", uri=True, timeout=10) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        waiting = {int(r[0]) for r in db.execute("SELECT seq FROM readings")}
    db.close()
    return (int(row[0]) if row else 0), waiting


def _damage(data: Path, how: str) -> None:
    db = data / "buffer.db"
    rng = random.Random(how)
    if how == "truncated":
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2)
    elif how == "random_middle":
        size = db.stat().st_size
        with db.open("r+b") as f:
            f.seek(size // 3 + rng.randrange(size // 3))
            f.write(rng.randbytes(8192))
    elif how == "wal_deleted":
        assert (data / "buffer.db-wal").stat().st_size > 0
        for name in ("buffer.db-wal", "buffer.db-shm"):
            (data / name).unlink()
    else:
        (data / "seq.hwm").write_bytes(rng.randbytes(12))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", list(EXPECTED_EVENT))
def test_the_gateway_starts_on_a_damaged_buffer_and_keeps_seqs_above_everything_before(
        tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc], how: str) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(gw_config(data, mosquitto.port, devices=3, interval="0.01s",
                             buffer_extra=", durability: normal"))
    col = Collector(mosquitto.host, mosquitto.port)
    col.connect()
    try:
        p = fieldgate_proc("run", "-c", str(cfg))
        col.wait_for(lambda: len(col.seqs()) > 300, timeout=30, what="readings delivered before the damage")
        mosquitto.stop()
        base = _db_state(data)[0]
        _wait(lambda: _db_state(data)[0] > base + 3000, 60, "a backlog while the broker is away")
        if how == "wal_deleted":
            p.popen.send_signal(signal.SIGKILL)  # the WAL holds the backlog's last commits
            p.popen.wait(10)
        else:
            p.popen.send_signal(signal.SIGTERM)
            assert p.popen.wait(30) == 0
        handed, backlog = _db_state(data)
        delivered = set(col.seqs())
        backlog -= delivered
        _damage(data, how)
        restart_ms = time.time() * 1000
        mosquitto.start()
        p2 = fieldgate_proc("run", "-c", str(cfg))
        col.wait_for(lambda: any(e["kind"] == EXPECTED_EVENT[how] for e in col.events()), timeout=60,
                     what=f"the {EXPECTED_EVENT[how]} event")

        def fresh() -> list[int]:
            return [r["seq"] for r in col.readings() if _ts_ms(r["ts"]) > restart_ms + 1000]

        col.wait_for(lambda: len(fresh()) > 300, timeout=60, what="readings made after the restart")
        col.wait_for(lambda: not _waiting(data) or min(_waiting(data)) > handed, timeout=60,
                     what="the surviving backlog delivered")
        p2.popen.send_signal(signal.SIGTERM)
        assert p2.popen.wait(30) == 0
        col.sync(timeout=60)  # what the broker acknowledged (and the buffer deleted) has arrived here too
        assert min(fresh()) > handed, f"a reading made after the restart got seq {min(fresh())} <= {handed}"
        for r in col.readings():
            validate_reading(r)
        got = set(col.seqs())
        kept = len(backlog & got)
        lost_announced: set[int] = set()
        for e in col.events():
            if e["kind"] == "buffer_lost":
                for a, b in e.get("ranges") or [(e["first_seq"], e["last_seq"])]:
                    lost_announced |= set(range(a, b + 1))
        silent = backlog - got - lost_announced
        assert not silent, f"{len(silent)} backlog reading(s) lost without an announcement, e.g. {sorted(silent)[:5]}"
        moved = sorted(n for n in os.listdir(data) if ".corrupt-" in n or ".damaged-" in n)
        if how in ("truncated", "random_middle", "sidecar_corrupt"):
            assert moved, "the damaged file was not moved aside"
        assert not any("Traceback" in line for line in p2.stderr_lines)
        print(f"\n{how}: backlog {len(backlog)}, kept {kept} ({100 * kept / max(1, len(backlog)):.0f} %), "
              f"announced lost {len(backlog - got)}, seqs handed out before {handed}, first after {min(fresh())}")
    finally:
        col.disconnect()


def _waiting(data: Path) -> set[int]:
    try:
        return _db_state(data)[1]
    except sqlite3.Error:
        return {0}


def _ts_ms(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000

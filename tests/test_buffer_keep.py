"""Acknowledged readings kept for the broker's unsaved window (``buffer.keep_acked``), on real files.

The end-to-end half (a broker killed before its save, the resend after the reconnect) is
tests/test_broker_crash.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from fieldgate.buffer import Buffer

from .test_buffer import T0, all_rows, crash, events_of, items


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def kept_buffer(path: Path, clock: Clock, keep: float = 5.0, **kw: object) -> Buffer:
    buf = Buffer(path, keep_acked_s=keep, monotonic=clock, now=lambda: T0, **kw)  # type: ignore[arg-type]
    buf.open()
    return buf


def test_an_acknowledged_reading_stays_for_the_window_then_goes(tmp_path: Path) -> None:
    clock = Clock()
    buf = kept_buffer(tmp_path, clock)
    seqs = buf.append_many(items(10))
    assert buf.ack(seqs[:6]) == 0  # kept, not deleted
    assert [r.seq for r in all_rows(buf)] == seqs
    st = buf.stats()
    assert (st.depth, st.kept) == (4, 6)  # the kept ones no longer wait
    clock.t += 4.9
    assert buf.ack(()) == 0
    clock.t += 0.2
    assert buf.ack(()) == 6
    assert [r.seq for r in all_rows(buf)] == seqs[6:]
    assert (buf.stats().depth, buf.stats().kept) == (4, 0)
    buf.close()


def test_a_new_connection_sends_the_kept_ones_again(tmp_path: Path) -> None:
    clock = Clock()
    buf = kept_buffer(tmp_path, clock)
    seqs = buf.append_many(items(5))
    buf.ack(seqs)
    assert buf.stats().depth == 0
    assert buf.requeue_kept() == 5
    # They wait again, and are deleted only at their next acknowledgement (plus its window).
    assert (buf.stats().depth, buf.stats().kept) == (5, 0)
    clock.t += 60
    assert buf.ack(()) == 0
    assert [r.seq for r in buf.read(0, 100)] == seqs
    buf.ack(seqs)
    clock.t += 5.1
    assert buf.ack(()) == 5
    buf.close()


def test_zero_deletes_at_once(tmp_path: Path) -> None:
    buf = kept_buffer(tmp_path, Clock(), keep=0.0)
    seqs = buf.append_many(items(3))
    assert buf.ack(seqs) == 3
    assert all_rows(buf) == []
    buf.close()


def test_a_clean_close_deletes_the_kept_rows_and_a_crash_keeps_them(tmp_path: Path) -> None:
    clock = Clock()
    buf = kept_buffer(tmp_path / "a", clock)
    buf.ack(buf.append_many(items(4)))
    buf.close()
    again = kept_buffer(tmp_path / "a", clock)
    assert all_rows(again) == []
    again.close()

    buf = kept_buffer(tmp_path / "b", clock)
    seqs = buf.append_many(items(4))
    buf.ack(seqs)
    crash(buf)
    after = kept_buffer(tmp_path / "b", clock)
    assert [r.seq for r in all_rows(after)] == seqs  # sent again after the restart
    assert after.stats().depth == 4
    after.close()


def test_a_limit_deletes_kept_rows_before_it_drops_a_waiting_one(tmp_path: Path) -> None:
    clock = Clock()
    buf = kept_buffer(tmp_path, clock, max_age_s=3600.0)
    old = int((T0 - 7200) * 1000)
    delivered = buf.append_many(items(5, ts_ms=old))  # a backlog's replay: old readings, acknowledged now
    waiting = buf.append_many(items(3))
    buf.ack(delivered)
    assert buf.enforce_limits() == 0
    assert [r.seq for r in all_rows(buf)] == waiting
    assert not [e for e in events_of(buf) if e["kind"] == "buffer_drop"], "a delivered reading announced as dropped"
    buf.close()


def test_the_oldest_waiting_reading_is_not_a_kept_one(tmp_path: Path) -> None:
    clock = Clock()
    buf = kept_buffer(tmp_path, clock)
    first = buf.append_many(items(3, ts_ms=int((T0 - 600) * 1000)))
    later = buf.append_many(items(2, ts_ms=int(T0 * 1000)))
    buf.ack(first)
    assert buf.stats().oldest_ts_ms == int(T0 * 1000)
    buf.ack(later)
    assert buf.stats().oldest_ts_ms is None
    assert later
    buf.close()


def test_events_are_kept_and_left_out_until_a_new_connection(tmp_path: Path) -> None:
    clock = Clock()
    buf = kept_buffer(tmp_path, clock)
    ids = [buf.add_event({"kind": f"e{i}"}) for i in range(3)]
    buf.ack_events(ids[:2])
    assert [json.loads(t)["kind"] for _, t in buf.read_events(10)] == ["e2"]
    buf.requeue_kept()
    assert [json.loads(t)["kind"] for _, t in buf.read_events(10)] == ["e0", "e1", "e2"]
    buf.ack_events(ids)
    clock.t += 5.1
    buf.ack(())  # the uplink's upkeep tick
    assert buf.read_events(10) == []
    assert buf._db().execute("SELECT count(*) FROM events").fetchone()[0] == 0
    buf.close()


def test_a_full_disk_deletes_at_once(tmp_path: Path) -> None:
    clock = Clock()
    buf = kept_buffer(tmp_path, clock)
    seqs = buf.append_many(items(6))
    buf.ack(seqs[:3])
    buf._write_failed(OSError(28, "No space left on device"))  # the episode a failing write begins
    assert buf.ack(seqs[3:]) == 6  # the new ones and the kept ones: space comes first
    assert all_rows(buf) == []
    buf.close()

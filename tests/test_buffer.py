"""The durable buffer on real files: seqs, paging, acks, limits, disk full, corruption, kill -9."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.buffer import EVENTS_KEEP, SEQ_RESERVE, Buffer, Row, seqguard
from fieldgate.buffer import queue as buffer_mod

T0 = 1_800_000_000.0  # a fixed "now" for tests that inject the clock


def body(i: int, device: str = "meter-1", size: int = 0) -> str:
    """A reading message without seq; ``size`` pads it to about that many bytes."""
    text = json.dumps({"schema": "fieldgate.reading/1", "gateway": "gw-t", "device": device,
                       "ts": "2027-01-15T08:00:00.000Z", "metrics": {"n": {"value": i, "quality": "good"}}},
                      separators=(",", ":"))
    if size > len(text):
        text = text[:-1] + ',"pad":"' + "x" * (size - len(text) - 9) + '"}'
    return text


def items(n: int, start: int = 0, ts_ms: int = int(T0 * 1000), size: int = 0) -> list[tuple[str, int, str]]:
    return [("meter-1", ts_ms, body(i, size=size)) for i in range(start, start + n)]


def all_rows(buf: Buffer) -> list[Row]:
    return buf.read(0, 1_000_000)


def events_of(buf: Buffer) -> list[dict[str, Any]]:
    return [json.loads(text) for _, text in buf.read_events(10_000)]


_KEEPERS: list[sqlite3.Connection] = []


def crash(buf: Buffer) -> None:
    """Leave the database as a kill -9 would: closed without the clean-shutdown flag, the WAL still there.

    Closing the last connection would checkpoint and delete the WAL (which a kill does not); a second
    connection, open until the test ends, keeps it.
    """
    keeper = sqlite3.connect(buf.path)
    keeper.execute("SELECT count(*) FROM sqlite_master").fetchall()
    _KEEPERS.append(keeper)
    buf._close_quietly()


@pytest.fixture(autouse=True)
def _close_keepers() -> Iterator[None]:
    yield
    while _KEEPERS:
        _KEEPERS.pop().close()


@pytest.fixture
def events() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def make(tmp_path: Path, events: list[dict[str, Any]]) -> Iterator[Callable[..., Buffer]]:
    """Open buffers in ``tmp_path/data`` (closed at the end); events go to ``events``."""
    opened: list[Buffer] = []

    def _make(**kw: Any) -> Buffer:
        kw.setdefault("on_event", events.append)
        buf = Buffer(kw.pop("data_dir", tmp_path / "data"), **kw)
        buf.open()
        opened.append(buf)
        return buf

    yield _make
    for buf in opened:
        buf.close()


# --- seq -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 199, 200, 201, 450])
def test_a_commit_of_any_size_keeps_order_and_consecutive_seqs(make: Callable[..., Buffer], n: int) -> None:
    """Rows are written many to a statement; whatever the size, each gets its seq in order."""
    buf = make()
    first = buf.append_many(items(3))
    rows_in = [(f"dev-{i % 7}", int(T0 * 1000) + i, body(i, device=f"dev-{i % 7}")) for i in range(n)]
    seqs = buf.append_many(rows_in)
    assert seqs == list(range(first[-1] + 1, first[-1] + 1 + n))
    got = all_rows(buf)[3:]
    expected = [(q, *row) for q, row in zip(seqs, rows_in, strict=True)]
    assert [(r.seq, r.device, r.ts_ms, r.body) for r in got] == expected


def test_init_does_no_io(tmp_path: Path) -> None:
    Buffer(tmp_path / "nothing-yet")
    assert not (tmp_path / "nothing-yet").exists()


def test_seqs_increase_and_continue_across_restarts_without_a_jump(make: Callable[..., Buffer],
                                                                    events: list[dict[str, Any]]) -> None:
    buf = make()
    assert buf.append_many(items(3)) == [1, 2, 3]
    assert buf.append_many(items(2)) == [4, 5]
    buf.close()
    buf = make()
    assert buf.append_many(items(1)) == [6]
    assert buf.stats().newest_seq == 6
    assert events == []
    conn = sqlite3.connect(buf.path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_seqs_are_never_reused_after_everything_was_acked(make: Callable[..., Buffer]) -> None:
    buf = make()
    seqs = buf.append_many(items(50))
    assert buf.ack(seqs) == 50
    assert buf.stats().depth == 0
    buf.close()
    buf = make()
    assert buf.append_many(items(1)) == [51]


def test_sidecar_keeps_seqs_above_a_lost_database(make: Callable[..., Buffer], tmp_path: Path,
                                                  events: list[dict[str, Any]]) -> None:
    buf = make()
    buf.append_many(items(7))
    buf.close()
    data = tmp_path / "data"
    assert int((data / "seq.hwm").read_text()) == 7 + SEQ_RESERVE
    assert not (data / "seq.hwm.tmp").exists()
    for name in ("buffer.db", "buffer.db-wal", "buffer.db-shm"):
        (data / name).unlink(missing_ok=True)
    buf = make()
    assert buf.append_many(items(1)) == [7 + SEQ_RESERVE + 1]
    assert [e["kind"] for e in events] == ["buffer_seq_jump"]
    assert events[0]["reason"] == "new_database" and events[0]["next_seq"] == 7 + SEQ_RESERVE + 1
    assert events_of(buf) == events  # stored for the events topic as well
    # The reservation moves ahead of the new seqs.
    assert int((data / "seq.hwm").read_text()) == 7 + 2 * SEQ_RESERVE + 1


@pytest.mark.parametrize("case", [
    ("normal", True, True),     # a power cut may have taken back commits whose seqs were published
    ("normal", False, False),   # kill -9: the page cache kept every commit
    ("full", True, False),      # every commit was fsynced
], ids=["normal-reboot-loses", "normal-same-boot", "full-reboot"])
def test_every_unclean_shutdown_jumps_and_a_possible_loss_is_announced_as_a_range(
        make: Callable[..., Buffer], events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, case: tuple[str, bool, bool]) -> None:
    durability, rebooted, loses = case
    monkeypatch.setattr(seqguard, "_boot_id", lambda: "boot-1")
    buf = make(durability=durability)
    buf.append_many(items(3))
    crash(buf)
    if rebooted:
        monkeypatch.setattr(seqguard, "_boot_id", lambda: "boot-2")
    buf = make(durability=durability)
    # Whichever file an unclean stop left whole is not known: seqs always continue above the reservation.
    assert buf.append_many(items(1)) == [3 + SEQ_RESERVE + 1]
    if loses:
        assert [(e["kind"], e["reason"], e.get("first_seq"), e["last_seq"]) for e in events] == [
            ("buffer_seq_jump", "power_loss", None, 3), ("buffer_lost", "power_loss", 4, 3 + SEQ_RESERVE)]
        assert "seq continues at 100004, not 4 (power_loss)" in caplog.text
    else:
        assert [(e["kind"], e["reason"], e["last_seq"]) for e in events] == [
            ("buffer_seq_jump", "unclean_shutdown", 3)]
    # A clean close in between: no jump on the next start, whatever the boot.
    last = buf.stats().newest_seq
    buf.close()
    monkeypatch.setattr(seqguard, "_boot_id", lambda: "boot-3")
    buf = make(durability=durability)
    assert buf.append_many(items(1)) == [last + 1]


# --- read, ack, events ------------------------------------------------------------------------


def test_read_pages_oldest_first(make: Callable[..., Buffer]) -> None:
    buf = make()
    buf.append_many(items(25))
    page1 = buf.read(0, 10)
    page2 = buf.read(page1[-1].seq, 10)
    page3 = buf.read(page2[-1].seq, 10)
    assert [r.seq for r in page1 + page2 + page3] == list(range(1, 26))
    assert buf.read(25, 10) == [] and buf.read(0, 0) == []
    assert page1[0] == Row(1, "meter-1", int(T0 * 1000), body(0))
    msg = page1[3].message()
    assert msg.startswith('{"seq":4,"schema":"fieldgate.reading/1"')
    assert json.loads(msg) == {"seq": 4, **json.loads(body(3))}


def test_read_is_a_primary_key_range_scan(make: Callable[..., Buffer]) -> None:
    buf = make()
    plan = sqlite3.connect(buf.path).execute("EXPLAIN QUERY PLAN " + buffer_mod._READ, (0, 10)).fetchall()
    assert "USING INTEGER PRIMARY KEY (rowid>?)" in plan[0][-1]


def test_ack_deletes_only_those(make: Callable[..., Buffer]) -> None:
    buf = make()
    buf.append_many(items(2000))
    # A long run (deleted as a range), scattered singles (chunked IN lists), a duplicate and an unknown seq.
    singles = list(range(1001, 2000, 2))
    acked = [*range(10, 700), *singles, 10, 99_999]
    assert buf.ack(iter(acked)) == 690 + 500
    left = {r.seq for r in all_rows(buf)}
    assert left == set(range(1, 2001)) - set(acked)
    assert buf.stats().depth == len(left)
    assert buf.ack([]) == 0 and buf.ack([10]) == 0


def test_runs_split_ranges_from_singles() -> None:
    assert buffer_mod._runs([1, 2, 3, 5, 6, 10, 11, 12, 14]) == ([(1, 3), (10, 12)], [5, 6, 14])
    assert buffer_mod._runs([]) == ([], [])


def test_events_are_stored_acked_and_bounded(make: Callable[..., Buffer], caplog: pytest.LogCaptureFixture) -> None:
    buf = make()
    ids = [buf.add_event({"ts": "2027-01-15T08:00:00.000Z", "kind": "test", "n": i}) for i in range(EVENTS_KEEP + 5)]
    assert ids == list(range(1, EVENTS_KEEP + 6))
    stored = buf.read_events(10_000)
    assert [i for i, _ in stored] == ids[5:]  # the oldest 5 trimmed
    assert json.loads(stored[0][1]) == {"ts": "2027-01-15T08:00:00.000Z", "kind": "test", "n": 5}
    assert caplog.text.count("unsent event(s) dropped") == 1  # said once per 10 s, not per event (a flood)
    buf.ack_events(i for i, _ in stored[:10])
    assert buf.read_events(3) == stored[10:13]
    buf.close()
    buf = make()
    assert len(buf.read_events(10_000)) == EVENTS_KEEP - 10


# --- limits ----------------------------------------------------------------------------------


def test_max_bytes_drops_exactly_the_oldest_and_announces_it(
        make: Callable[..., Buffer], events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    buf = make(durability="normal")
    for i in range(0, 2000, 100):
        buf.append_many(items(100, start=i, size=250))
    before = buf.stats()
    assert before.bytes_on_disk > 400_000
    buf.max_bytes = 400_000
    dropped = buf.enforce_limits()
    after = buf.stats()
    assert 0 < dropped < 2000
    assert after.bytes_on_disk <= 400_000
    assert [r.seq for r in all_rows(buf)] == list(range(dropped + 1, 2001))  # the oldest went, in one piece
    assert after.depth == 2000 - dropped and after.dropped_total == dropped
    assert [{k: v for k, v in e.items() if k != "ts"} for e in events] == [
        {"kind": "buffer_drop", "reason": "max_bytes", "dropped": dropped, "first_seq": 1, "last_seq": dropped}]
    assert events[0]["ts"].endswith("Z") and len(events[0]["ts"]) == 24
    assert events_of(buf) == events
    assert f"dropped the {dropped} oldest reading(s), seq 1..{dropped}" in caplog.text
    assert buf.enforce_limits() == 0 and len(events) == 1  # under the limit now
    buf.close()
    assert make().stats().dropped_total == dropped  # persisted


def test_max_age_drops_expired_readings(make: Callable[..., Buffer], events: list[dict[str, Any]],
                                        caplog: pytest.LogCaptureFixture) -> None:
    clock = [T0]
    buf = make(max_age_s=600, now=lambda: clock[0])
    old = buf.append_many(items(10, ts_ms=int((T0 - 3600) * 1000)))
    new = buf.append_many(items(10, ts_ms=int(T0 * 1000)))
    assert buf.stats().oldest_ts_ms == int((T0 - 3600) * 1000)
    assert buf.enforce_limits() == 10
    assert [r.seq for r in all_rows(buf)] == new
    assert [(e["kind"], e["reason"], e["dropped"], e["first_seq"], e["last_seq"]) for e in events] == [
        ("buffer_drop", "max_age", 10, old[0], old[-1])]
    assert events[0]["ts"] == "2027-01-15T08:00:00.000Z"
    # Just past max_age, within the slack (5 %: 30 s): not yet, so drops come in chunks.
    clock[0] = T0 + 610
    assert buf.enforce_limits() == 0
    clock[0] = T0 + 700
    assert buf.enforce_limits() == 10
    assert buf.stats().depth == 0 and buf.stats().dropped_total == 20
    assert caplog.text.count("over its max_age limit") == 2


# --- disk full ------------------------------------------------------------------------------------


class SmallDisk:
    """A 2 MB tmpfs that can be filled and freed; without mount rights, SQLite's page cap instead."""

    def __init__(self, root: Path, mounted: bool) -> None:
        self.root = root
        self.mounted = mounted
        self.filler = root / "filler"

    def fill(self, buf: Buffer) -> None:
        if not self.mounted:
            buf._limit_pages(int(sqlite3.connect(buf.path).execute("PRAGMA page_count").fetchone()[0]))
            return
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            chunk = b"\0" * 65536
            with pytest.raises(OSError, match="No space left") as info:  # noqa: PT012 - the loop fills the disk
                while True:
                    os.write(fd, chunk)
            assert info.value.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self, buf: Buffer) -> None:
        if self.mounted:
            self.filler.unlink()
        else:
            buf._limit_pages(None)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    root = tmp_path / "small"
    root.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)],
                          capture_output=True, check=False)
    try:
        yield SmallDisk(root, mounted=done.returncode == 0)
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", str(root)], check=True)


# small_disk comes before make: fixtures are torn down in reverse, so the buffer is closed before the unmount.
def test_disk_full_spills_in_memory_and_commits_the_spill_in_order_when_space_returns(
        small_disk: SmallDisk, make: Callable[..., Buffer], events: list[dict[str, Any]],
        caplog: pytest.LogCaptureFixture) -> None:
    buf = make(data_dir=small_disk.root / "data", durability="normal", spill_max=50)
    before = buf.append_many(items(10))
    small_disk.fill(buf)

    first = items(30, start=100, size=2000)
    second = items(30, start=200, size=2000)
    assert buf.append_many(first) == []  # no exception, no seqs
    stats = buf.stats()
    assert stats.disk_full and stats.spilled == 30 and "full" in (stats.write_error or "")
    assert buf.append_many(second) == []
    buf.maintenance()  # still full: retries quietly
    stats = buf.stats()
    assert stats.spilled == 50 and stats.spill_dropped_total == 10
    assert [(e["kind"], e.get("lost")) for e in events] == [("buffer_disk_full", None), ("buffer_spill_lost", 10)]
    assert "database or disk is full" in events[0]["error"]
    assert caplog.text.count("cannot write to") == 1  # one loud ERROR per episode
    # Reading and publishing go on, and the event already waits for the events topic.
    assert [r.seq for r in all_rows(buf)] == before
    assert [json.loads(t)["kind"] for _, t in buf.read_events(10)] == ["buffer_disk_full", "buffer_spill_lost"]

    small_disk.free(buf)
    buf.maintenance()
    stats = buf.stats()
    assert not stats.disk_full and stats.spilled == 0 and stats.write_error is None
    rows = all_rows(buf)
    assert [r.seq for r in rows] == list(range(1, 61))  # fresh seqs, right after the committed ones
    assert [r.body for r in rows[10:]] == [b for _, _, b in (first + second)[10:]]  # oldest spilled lost first
    assert [(e["kind"], e.get("recovered"), e.get("lost")) for e in events] == [
        ("buffer_disk_full", None, None), ("buffer_spill_lost", None, 10), ("buffer_disk_ok", 50, 10)]
    assert [e["kind"] for e in events_of(buf)] == ["buffer_disk_full", "buffer_spill_lost", "buffer_disk_ok"]
    assert buf.append_many(items(1)) == [61]


def test_disk_full_episode_ends_with_the_next_append(small_disk: SmallDisk, make: Callable[..., Buffer],
                                                     events: list[dict[str, Any]]) -> None:
    buf = make(data_dir=small_disk.root / "data", spill_max=5)
    buf.append_many(items(1))
    small_disk.fill(buf)
    for i in range(3):
        assert buf.append_many(items(3, start=10 * i, size=4000)) == []
    small_disk.free(buf)
    assert buf.append_many(items(2, start=100)) == [7, 8]  # the 5 spilled first: 2..6
    assert [json.loads(r.body)["metrics"]["n"]["value"] for r in all_rows(buf)] == [0, 11, 12, 20, 21, 22, 100, 101]
    # The first loss is announced at once (1), the rest, within the rate limit, with the recovery (3).
    assert [(e["kind"], e.get("recovered"), e.get("lost")) for e in events] == [
        ("buffer_disk_full", None, None), ("buffer_spill_lost", None, 1), ("buffer_spill_lost", None, 3),
        ("buffer_disk_ok", 5, 4)]
    assert buf.stats().spill_dropped_total == 4


def test_its_own_readings_filling_the_disk_do_not_lock_the_buffer_up(
        small_disk: SmallDisk, make: Callable[..., Buffer], events: list[dict[str, Any]]) -> None:
    """A full disk in WAL mode refuses deletes too; the released reserve lets acks free space again."""
    buf = make(data_dir=small_disk.root / "data", durability="normal", spill_max=1000)
    if not small_disk.mounted:
        buf._limit_pages(300)
    committed: list[int] = []
    n = 0
    while not buf.stats().disk_full:
        committed += buf.append_many(items(50, start=n, size=1000))
        n += 50
        assert n < 20_000, "the disk never filled"
    spilled = buf.stats().spilled
    assert spilled == 50 and len(committed) > 500
    # The broker comes back and acknowledges everything that was committed.
    assert buf.ack(committed) == len(committed)
    buf.maintenance()
    stats = buf.stats()
    assert not stats.disk_full and stats.spilled == 0 and stats.depth == spilled
    assert [r.seq for r in all_rows(buf)] == list(range(committed[-1] + 1, committed[-1] + 1 + spilled))
    assert [(e["kind"], e.get("recovered")) for e in events] == [("buffer_disk_full", None), ("buffer_disk_ok", 50)]
    assert buf.append_many(items(1)) == [committed[-1] + spilled + 1]
    if small_disk.mounted:
        assert (small_disk.root / "data" / "buffer.reserve").stat().st_size == 256 * 1024  # made again


def test_events_wait_in_memory_when_even_they_cannot_be_stored(make: Callable[..., Buffer]) -> None:
    buf = make()
    buf._limit_pages(int(sqlite3.connect(buf.path).execute("PRAGMA page_count").fetchone()[0]))
    ids = [buf.add_event({"kind": "test", "n": i, "pad": "x" * 500}) for i in range(40)]
    stored, memory = [i for i in ids if i > 0], [i for i in ids if i < 0]
    assert stored and memory == list(range(-1, -len(memory) - 1, -1))
    assert [i for i, _ in buf.read_events(100)] == stored + memory  # oldest first
    buf.ack_events([stored[0], memory[0]])
    assert [i for i, _ in buf.read_events(100)] == stored[1:] + memory[1:]
    buf._limit_pages(None)
    buf.maintenance()  # the rest go to disk, in order
    assert [json.loads(t)["n"] for _, t in buf.read_events(100)] == [n for n in range(40) if n not in (0, len(stored))]
    assert all(i > 0 for i, _ in buf.read_events(100))


# --- corruption --------------------------------------------------------------------------------------


def test_a_garbage_file_is_moved_aside_and_seqs_continue_above(make: Callable[..., Buffer], tmp_path: Path,
                                                               events: list[dict[str, Any]],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    buf = make(now=lambda: T0)
    buf.append_many(items(12))
    buf.close()
    data = tmp_path / "data"
    (data / "buffer.db").write_bytes(b"this is not a database, it was an SD card " * 200)
    buf = make(now=lambda: T0)
    moved = data / "buffer.db.corrupt-20270115T080000Z"
    assert moved.exists() and moved.read_bytes().startswith(b"this is not")
    assert buf.append_many(items(1)) == [12 + SEQ_RESERVE + 1]
    kinds = [e["kind"] for e in events]
    assert kinds == ["buffer_seq_jump", "buffer_corrupt"]
    corrupt = events[1]
    assert corrupt["moved_to"] == str(moved) and corrupt["salvaged"] == 0
    assert [e["kind"] for e in events_of(buf)] == kinds
    assert "is corrupt" in caplog.text


def _corrupt_middle_page(path: Path) -> int:
    conn = sqlite3.connect(path)
    page_size, pages = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count"))
    conn.close()
    with path.open("r+b") as f:
        f.seek(page_size * (pages // 2))
        f.write(b"\xff" * page_size)
    return int(pages)


def test_a_damaged_page_is_detected_at_open_and_the_rest_salvaged(make: Callable[..., Buffer], tmp_path: Path,
                                                                  events: list[dict[str, Any]]) -> None:
    buf = make()
    originals = {}
    for i in range(0, 2000, 100):
        for seq, item in zip(buf.append_many(items(100, start=i, size=250)), items(100, start=i, size=250),
                             strict=True):
            originals[seq] = item
    buf.close()
    reserved = int((tmp_path / "data" / "seq.hwm").read_text())
    assert reserved == 100 + SEQ_RESERVE  # written with the first batch, enough for the rest
    pages = _corrupt_middle_page(tmp_path / "data" / "buffer.db")
    assert pages > 100
    buf = make()
    corrupt = next(e for e in events if e["kind"] == "buffer_corrupt")
    assert "malformed" in corrupt["error"] or "quick_check" in corrupt["error"]
    rows = all_rows(buf)
    assert 1900 <= corrupt["salvaged"] == len(rows) < 2000  # all but the damaged page's rows
    assert all((r.device, r.ts_ms, r.body) == originals[r.seq] for r in rows)  # with their own seqs
    assert buf.append_many(items(1)) == [reserved + 1]


def test_corruption_found_while_running_is_recovered_without_an_exception(
        make: Callable[..., Buffer], tmp_path: Path, events: list[dict[str, Any]]) -> None:
    buf = make()
    for i in range(0, 2000, 100):
        buf.append_many(items(100, start=i, size=250))
    buf.close()
    buf = make()
    _corrupt_middle_page(buf.path)
    # Another connection's commit makes this one drop its page cache and read the damaged page.
    other = sqlite3.connect(buf.path)
    other.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('touched', 1)")
    other.commit()
    other.close()
    rows = buf.read(0, 5000)
    assert [e["kind"] for e in events] == ["buffer_seq_jump", "buffer_corrupt", "buffer_lost"]
    assert 1900 <= len(rows) < 2000
    lost = {s for a, b in events[2]["ranges"] for s in range(a, b + 1)}
    assert lost == set(range(1, 2001)) - {r.seq for r in rows}  # the damaged page's readings, as ranges
    assert list(tmp_path.glob("data/buffer.db.corrupt-*"))
    assert buf.append_many(items(1)) == [100 + SEQ_RESERVE + 1]


# --- kill -9 ------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from fieldgate.buffer import Buffer

    buf = Buffer(Path(sys.argv[1]), durability=sys.argv[2])
    buf.open()
    body = '{"schema":"fieldgate.reading/1","device":"d","metrics":{"v":{"value":1,"quality":"good"}}}'
    n = 0
    while True:
        seqs = buf.append_many([("d", n, body)] * 100)
        print(seqs[0], seqs[-1], flush=True)
        n += 1
        if n % 7 == 0:
            buf.ack(range(seqs[0], seqs[0] + 10))  # deletes too: later seqs must still not be reused
""")


def test_kill_9_loses_no_committed_reading(tmp_path: Path) -> None:
    rng = random.Random()
    data = tmp_path / "data"
    high = 0
    for trial in range(5):
        durability = ("normal", "full")[trial % 2]
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data), durability],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        committed: list[tuple[int, int]] = []
        try:
            for _ in range(rng.randint(1, 60)):
                line = proc.stdout.readline()
                assert line, f"child died: {proc.stderr.read() if proc.stderr else ''}"
                committed.append(tuple(map(int, line.split())))  # type: ignore[arg-type]
            proc.send_signal(signal.SIGKILL)
            out = proc.stdout.read()  # through the reader: it may hold lines read ahead by readline()
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.stdout.close()
            if proc.stderr is not None:
                proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        # Lines still in the pipe were committed too; a torn last line was not printed in full.
        committed += [tuple(map(int, ln.split())) for ln in out.splitlines(keepends=True)  # type: ignore[misc]
                      if ln.endswith("\n")]
        reserved = int((data / "seq.hwm").read_text())
        buf = Buffer(data)
        buf.open()
        try:
            present = {r.seq for r in all_rows(buf)}
            acked_by_child = {s for a, _ in committed[6::7] for s in range(a, a + 10)}
            for a, b in committed:
                missing = set(range(a, b + 1)) - present - acked_by_child
                assert not missing, f"trial {trial}: committed seqs {sorted(missing)[:5]}... lost"
            assert committed[0][0] > high  # never reused across the kills
            newest = max(present | {b for _, b in committed})
            assert committed[-1][1] <= newest <= committed[-1][1] + 100  # at most one unprinted batch
            # After kill -9 seqs continue above the reservation, whatever the durability.
            assert buf.append_many(items(1)) == [reserved + 1]
            high = reserved + 1
        finally:
            buf.close()


def test_buffer_is_usable_from_another_thread(make: Callable[..., Buffer]) -> None:
    import threading

    buf = make()
    got: list[list[int]] = []
    t = threading.Thread(target=lambda: got.append(buf.append_many(items(2))))
    t.start()
    t.join(10)
    assert got == [[1, 2]]


def test_maintenance_returns_free_pages_and_empties_an_idle_wal(make: Callable[..., Buffer],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    buf = make(durability="normal")
    for i in range(0, 3000, 100):
        buf.append_many(items(100, start=i, size=250))
    buf.ack(range(1, 3001))
    buf.maintenance()  # appends since the last call: passive checkpoint
    buf.maintenance()  # idle: vacuum more, truncate the WAL
    conn = sqlite3.connect(buf.path)
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert conn.execute("PRAGMA page_count").fetchone()[0] < 20
    conn.close()
    assert os.path.getsize(f"{buf.path}-wal") == 0
    assert buf.stats().bytes_on_disk < 100_000
    assert caplog.records == []


def test_a_failing_on_event_callback_does_not_break_the_buffer(make: Callable[..., Buffer], tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    def bad(event: dict[str, Any]) -> None:
        raise ValueError("callback bug")

    buf = make(max_age_s=1, on_event=bad, now=lambda: T0)
    buf.append_many(items(3, ts_ms=0))
    assert buf.enforce_limits() == 3
    assert "on_event callback failed" in caplog.text
    assert [json.loads(t)["kind"] for _, t in buf.read_events(10)] == ["buffer_drop"]


def test_unopened_buffer_refuses_to_work(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not open"):
        Buffer(tmp_path).append_many(items(1))

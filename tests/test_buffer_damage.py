"""A damaged database file: what is readable is salvaged, what is not is announced as seq ranges.

Each test damages a stopped buffer's real file the way storage does (cut
short, random bytes in the middle) and checks: the buffer opens, the file is
moved aside with an event, every reading that was waiting is either salvaged
with its own seq or inside an announced ``buffer_lost`` range, and new seqs
are above everything handed out before. The tests print the backlog kept.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.buffer import Buffer
from fieldgate.buffer.pages import PageFile

from .test_buffer import items


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Callable[[], tuple[Buffer, list[dict[str, Any]]]]]:
    bufs: list[Buffer] = []

    def _open() -> tuple[Buffer, list[dict[str, Any]]]:
        events: list[dict[str, Any]] = []
        buf = Buffer(tmp_path / "data", on_event=events.append)
        buf.open()
        bufs.append(buf)
        return buf, events

    yield _open
    for buf in bufs:
        buf.close()


def _fill(opened: Callable[[], tuple[Buffer, list[dict[str, Any]]]], n: int = 1000, acked: int = 350,
          size: int = 300) -> tuple[dict[int, tuple[str, int, str]], int]:
    """n readings, the first ``acked`` acknowledged, closed cleanly: (waiting seq -> row, highest seq)."""
    buf, _ = opened()
    waiting = {}
    for i in range(0, n, 50):
        batch = items(50, start=i, size=size)
        waiting.update(zip(buf.append_many(batch), batch, strict=True))
    buf.ack(range(1, acked + 1))
    for s in range(1, acked + 1):
        del waiting[s]
    buf.maintenance()
    buf.close()
    return waiting, n


def _check(buf: Buffer, events: list[dict[str, Any]], waiting: dict[int, tuple[str, int, str]], high: int,
           what: str) -> int:
    rows = buf.read(0, 1_000_000)
    for r in rows:
        assert (r.device, r.ts_ms, r.body) == waiting[r.seq], f"seq {r.seq} salvaged with another reading"
    kinds = [e["kind"] for e in events]
    assert "buffer_corrupt" in kinds
    corrupt = next(e for e in events if e["kind"] == "buffer_corrupt")
    assert Path(corrupt["moved_to"]).exists() and corrupt["salvaged"] == len(rows)
    announced: set[int] = set()
    for e in events:
        if e["kind"] == "buffer_lost":
            assert e["reason"] == "corrupt"
            for first, last in e["ranges"]:
                announced |= set(range(first, last + 1))
            assert e["first_seq"] == min(announced) and e["last_seq"] == max(announced)
    salvaged = {r.seq for r in rows}
    unaccounted = set(waiting) - salvaged - announced
    assert not unaccounted, f"{len(unaccounted)} waiting reading(s) neither salvaged nor announced lost"
    assert not (announced & salvaged)
    assert buf.append_many(items(1))[0] > high
    print(f"\n{what}: {len(rows)} of {len(waiting)} waiting readings kept, "
          f"{len(set(waiting) - salvaged)} announced lost in {sum(1 for k in kinds if k == 'buffer_lost')} event(s)")
    return len(rows)


def test_a_half_truncated_database_keeps_its_intact_half_and_announces_the_rest(
        opened: Callable[[], tuple[Buffer, list[dict[str, Any]]]], tmp_path: Path) -> None:
    waiting, high = _fill(opened)
    path = tmp_path / "data" / "buffer.db"
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    buf, events = opened()
    kept = _check(buf, events, waiting, high, "half-truncated")
    assert kept > len(waiting) // 4  # the intact half's rows (it used to be 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_bytes_in_the_middle_keep_the_rest_and_announce_the_damaged_range(
        opened: Callable[[], tuple[Buffer, list[dict[str, Any]]]], tmp_path: Path, seed: int) -> None:
    waiting, high = _fill(opened)
    path = tmp_path / "data" / "buffer.db"
    rng = random.Random(seed)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 3 + rng.randrange(size // 3))
        f.write(rng.randbytes(8192))
    buf, events = opened()
    kept = _check(buf, events, waiting, high, f"8 KiB of random bytes (seed {seed})")
    assert kept >= len(waiting) - 60  # at most the rows of three damaged pages


def test_the_page_reader_finds_every_row_of_an_intact_file_and_skips_the_free_pages(
        opened: Callable[[], tuple[Buffer, list[dict[str, Any]]]], tmp_path: Path) -> None:
    waiting, _ = _fill(opened, n=2000, acked=1200, size=3000)  # bodies over a page: overflow chains too
    path = tmp_path / "data" / "buffer.db"
    conn = sqlite3.connect(path)
    assert int(conn.execute("PRAGMA freelist_count").fetchone()[0]) == 0  # the vacuum gave them back
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("DELETE FROM readings WHERE seq <= 1300")  # now free pages hold deleted rows
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    rows = {rowid: v for rowid, v in PageFile(path.read_bytes()).table_rows() if len(v) == 4}
    assert set(rows) == {s for s in waiting if s > 1300}
    assert all(tuple(rows[s][1:]) == waiting[s] for s in rows)
    assert list(PageFile(os.urandom(50_000)).table_rows()) == []  # garbage in, nothing out, no exception

"""Benchmark: the durable buffer's append, read and ack rates, and its size on disk.

Run: .venv/bin/python bench/buffer.py [--rows N] [--dir PATH]
Prints rows/s appended in batches of 100 (one transaction each) for both
durability modes, read + ack rows/s (pages of 500, as the uplink drains a
backlog), bytes on disk per buffered row for a typical ~250-byte reading, and
the time ``open()`` takes on the full database (``quick_check`` reads every
page), and the cost of one commit of one reading (p50/p99: with ``full`` that is
one fsync of the WAL, the floor of the commit-to-delivery latency). Wall-clock
time, on the disk that holds ``--dir`` (default: a temporary folder; point it
at the SD card or eMMC that will hold the buffer).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fieldgate.buffer import Buffer

BATCH = 100


def body(i: int) -> str:
    """A reading message of about 250 bytes, without seq, like the normalizer's."""
    msg = {
        "schema": "fieldgate.reading/1", "gateway": "gw-01", "device": "meter-12",
        "ts": "2026-11-22T08:15:30.250Z",
        "metrics": {
            "voltage": {"value": 229.7 + i % 10, "unit": "V", "quality": "good"},
            "current": {"value": 4.21, "unit": "A", "quality": "good"},
            "energy": {"value": 1234.5 + i, "unit": "kWh", "quality": "good"},
        },
    }
    return json.dumps(msg, separators=(",", ":"))


def run(folder: Path, durability: str, rows: int) -> None:
    items = [("meter-12", 1_790_000_000_000 + i, body(i)) for i in range(rows)]
    batches = [items[i:i + BATCH] for i in range(0, rows, BATCH)]
    buf = Buffer(folder, durability=durability)  # type: ignore[arg-type]
    buf.open()
    start = time.perf_counter()
    for batch in batches:
        buf.append_many(batch)
    append_s = time.perf_counter() - start
    buf.maintenance()
    buf.maintenance()  # idle now: checkpoint(TRUNCATE), so the size is the data without the WAL
    stats = buf.stats()
    start = time.perf_counter()
    cursor, drained = 0, 0
    while rows_read := buf.read(cursor, 500):
        cursor = rows_read[-1].seq
        drained += buf.ack(r.seq for r in rows_read)
    drain_s = time.perf_counter() - start
    buf.close()
    print(f"{durability:6s} append {rows / append_s:10,.0f} rows/s ({len(batches) / append_s:8,.0f} commits/s, "
          f"batches of {BATCH})   read+ack {drained / drain_s:10,.0f} rows/s   "
          f"{stats.bytes_on_disk / stats.depth:6.0f} B/row on disk (body {len(items[0][2])} B)")


def commit_cost(folder: Path, durability: str, commits: int = 300) -> None:
    """Wall time of one single-row commit: the fsync floor of group commit when the load is light."""
    buf = Buffer(folder, durability=durability)  # type: ignore[arg-type]
    buf.open()
    took = []
    for i in range(commits):
        start = time.perf_counter()
        buf.append_many([("meter-12", 1_790_000_000_000 + i, body(i))])
        took.append(time.perf_counter() - start)
    buf.close()
    took.sort()
    print(f"{durability:6s} one-row commit: p50 {took[len(took) // 2] * 1000:6.2f} ms, "
          f"p99 {took[int(len(took) * 0.99)] * 1000:6.2f} ms ({commits} commits)")


def open_time(folder: Path, rows: int) -> None:
    buf = Buffer(folder, durability="normal")
    buf.open()
    for i in range(0, rows, 1000):
        buf.append_many([("meter-12", 1_790_000_000_000 + k, body(k)) for k in range(i, min(rows, i + 1000))])
    buf.close()
    size = (folder / "buffer.db").stat().st_size
    start = time.perf_counter()
    buf.open()
    took = time.perf_counter() - start
    buf.close()
    print(f"open() with quick_check on {rows:,} rows ({size / 1e6:.0f} MB): {took * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for durability in ("normal", "full"):
            run(Path(tmp) / durability, durability, args.rows)
        for durability in ("normal", "full"):
            commit_cost(Path(tmp) / f"commit-{durability}", durability)
        open_time(Path(tmp) / "big", 1_000_000)


if __name__ == "__main__":
    main()

"""Benchmark: sim driver → normalize → buffer → mosquitto, counting PUBACKs.

Run: .venv/bin/python bench/pipeline.py [--seconds 15] [--devices 50] [--backlog-values 1000000]

Prints, for the gateway process (one Python process; mosquitto runs apart):
  - values/s and messages/s acknowledged end to end, CPU per 1000 values, RSS
  - p50/p99 latency from the poll (measurement time) to the broker's PUBACK
  - bytes on disk per buffered value
  - drain rate of a backlog (default one million values) while live polling goes on
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.demo import DemoBroker
from fieldgate.schema import iso_ms
from fieldgate.uplink import BufferedUplink

POINTS = 20


def profile_yaml(folder: Path) -> Path:
    pts = "\n".join(f"  - {{name: p{i}, unit: V, decimals: 2, sim: {{shape: random, min: 0, max: 400}}}}"
                    for i in range(POINTS))
    path = folder / "bench20.yaml"
    path.write_text(f"schema_version: 1\ndriver: sim\nvendor: bench\nmodel: twenty\npoints:\n{pts}\n")
    return path


def config(folder: Path, port: int, devices: int, interval: float) -> str:
    prof = profile_yaml(folder)
    devs = "".join(f"  - {{id: d{i}, driver: sim, profile: {prof}, poll_interval: {interval}}}\n"
                   for i in range(devices))
    return (f"gateway: {{id: bench, data_dir: {folder / 'data'}, clock_check: off}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {port}, inflight: 50}}\n"
            f"buffer: {{durability: full, flush_interval: 100ms, max_bytes: 2GB}}\ndevices:\n{devs}")


class TimedUplink(BufferedUplink):
    """Records measurement time per seq at publish and the latency at PUBACK."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.ts_of: dict[int, float] = {}
        self.latencies: list[float] = []
        self.acked_values = 0

    def _publish_rows(self, link: Any, rows: Any, batched: bool, per_message: int) -> None:
        for r in rows:
            i = r.body.index('"ts":"') + 6
            ts = r.body[i:i + 24]
            self.ts_of[r.seq] = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone \
                + int(ts[20:23]) / 1000
        super()._publish_rows(link, rows, batched, per_message)

    def _on_ack(self, mid: int) -> None:
        seqs = self._inflight.get(mid) or []
        now = time.time()
        for s in seqs:
            t = self.ts_of.pop(s, None)
            if t is not None:
                self.latencies.append(now - t)
        super()._on_ack(mid)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def throughput(folder: Path, port: int, devices: int, seconds: float, interval: float) -> None:
    loaded = load_config_text(config(folder, port, devices, interval), "bench.yaml")
    up = TimedUplink(loaded.config)
    await up.start()
    gw = Gateway(loaded, up)
    task = asyncio.create_task(gw.run())
    await gw.ready.wait()
    await asyncio.sleep(2)  # warm-up
    a0, c0, t0 = up.state.acked, cpu(), time.monotonic()
    up.latencies.clear()
    await asyncio.sleep(seconds)
    a1, c1, t1 = up.state.acked, cpu(), time.monotonic()
    gw.request_stop()
    await task
    msgs = (a1 - a0) / (t1 - t0)
    values = msgs * POINTS
    lat = sorted(up.latencies)
    offered = devices / interval
    print(f"end to end ({devices} devices x {POINTS} points, polled every {interval * 1000:g} ms = "
          f"{offered:,.0f} readings/s offered, durability full):")
    print(f"  {values:,.0f} values/s, {msgs:,.0f} messages/s acknowledged")
    print(f"  CPU {1000 * (c1 - c0) / max(1.0, values * (t1 - t0)) * 1000:.1f} ms per 1000 values "
          f"(gateway process: {100 * (c1 - c0) / (t1 - t0):.0f}% of one core)")
    print(f"  RSS {rss_mib():.0f} MiB")
    if lat:
        print(f"  poll-to-PUBACK latency p50 {1000 * statistics.median(lat):.0f} ms, "
              f"p99 {1000 * lat[int(len(lat) * 0.99)]:.0f} ms ({len(lat)} samples)")


async def backlog(folder: Path, port: int, broker: DemoBroker, values: int) -> None:
    loaded = load_config_text(config(folder, port, 5, 1.0), "bench.yaml")
    readings = values // POINTS
    # Fill the buffer as an outage would (same message shape as the sim devices produce).
    up = TimedUplink(loaded.config)
    await up.start()
    body = json.dumps({"schema": "fieldgate.reading/1", "gateway": "bench", "device": "d0", "ts": iso_ms(time.time()),
                       "metrics": {f"p{i}": {"value": 231.57, "unit": "V", "quality": "good"} for i in range(POINTS)},
                       "meta": {"driver": "sim", "profile": "bench20.yaml"}}, separators=(",", ":"))
    before = (await up._db(up.buffer.stats)).bytes_on_disk
    for start in range(0, readings, 5000):
        batch = [(f"d{i % 5}", int(time.time() * 1000), body) for i in range(start, min(readings, start + 5000))]
        await up._db(up.buffer.append_many, batch)
    await up._db(up.buffer.maintenance)
    stats = await up._db(up.buffer.stats)
    print(f"buffer: {stats.depth:,} readings ({stats.depth * POINTS:,} values) take "
          f"{(stats.bytes_on_disk - before) / 2**20:.1f} MiB: "
          f"{(stats.bytes_on_disk - before) / (stats.depth * POINTS):.1f} "
          f"bytes per buffered value ({len(body)} bytes of JSON per {POINTS}-value reading)")
    gw = Gateway(loaded, up)
    task = asyncio.create_task(gw.run())
    await gw.ready.wait()
    t0, c0 = time.monotonic(), cpu()
    a0 = up.state.acked
    while True:
        await asyncio.sleep(0.5)
        s = await up._db(up.buffer.stats)
        if s.depth < 100:
            break
    t1, c1 = time.monotonic(), cpu()
    polls = sum(r.stats.polls for r in gw.runners.values())
    overruns = sum(r.stats.overruns for r in gw.runners.values())
    gw.request_stop()
    await task
    drained = up.state.acked - a0
    print(f"drain: {values:,}-value backlog drained in {t1 - t0:.1f} s: {drained / (t1 - t0):,.0f} messages/s, "
          f"{drained * POINTS / (t1 - t0):,.0f} values/s, CPU {100 * (c1 - c0) / (t1 - t0):.0f}% of one core; "
          f"live polling meanwhile: {polls} polls, {overruns} missed slots")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.05, help="poll interval (s) of each device")
    ap.add_argument("--backlog-values", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = DemoBroker(folder)
        if not broker.start():
            raise SystemExit("mosquitto is needed: apt-get install mosquitto")
        try:
            (folder / "a").mkdir()
            await throughput(folder / "a", broker.port, args.devices, args.seconds, args.interval)
            if args.backlog_values > 0:
                (folder / "b").mkdir()
                await backlog(folder / "b", broker.port, broker, args.backlog_values)
        finally:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())

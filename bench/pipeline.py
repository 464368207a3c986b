"""Benchmark: sim driver → normalize → buffer → mosquitto → a QoS 1 subscriber.

Run: .venv/bin/python bench/pipeline.py [--seconds 15] [--devices 50] [--interval 0.05]
         [--batch on|off] [--durability full|normal] [--backlog-values 1000000]

Prints, for the gateway (this process; mosquitto and the subscriber run apart):
  - values/s and messages/s acknowledged end to end, CPU per 1000 values, RSS, commits/s
  - p50/p99 latency from the poll (the reading's ts) to its arrival at a QoS 1 subscriber
    (a separate process, so its work is not counted as the gateway's)
  - bytes on disk per buffered value
  - drain rate of a backlog (default one million values) while live polling goes on
Figures depend on the load of the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.demo import DemoBroker
from fieldgate.runtime import make_output
from fieldgate.schema import iso_ms
from fieldgate.uplink import BufferedUplink

POINTS = 20


def profile_yaml(folder: Path) -> Path:
    pts = "\n".join(f"  - {{name: p{i}, unit: V, decimals: 2, sim: {{shape: random, min: 0, max: 400}}}}"
                    for i in range(POINTS))
    path = folder / "bench20.yaml"
    path.write_text(f"schema_version: 1\ndriver: sim\nvendor: bench\nmodel: twenty\npoints:\n{pts}\n")
    return path


def config(folder: Path, port: int, devices: int, interval: float, batch: bool = True,
           durability: str = "full") -> str:
    prof = profile_yaml(folder)
    devs = "".join(f"  - {{id: d{i}, driver: sim, profile: {prof}, poll_interval: {interval}}}\n"
                   for i in range(devices))
    return (f"gateway: {{id: bench, data_dir: {folder / 'data'}, clock_check: off}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {port}, inflight: 50, batch: {{enabled: {str(batch).lower()}}}}}\n"
            f"buffer: {{durability: {durability}, max_bytes: 2GB}}\ndevices:\n{devs}")


def subscriber(port: int) -> None:
    """The subscriber process: record (arrival, latency) per reading; on a stdin line "t0 t1", print the
    latency percentiles of the readings that arrived in that wall-clock window, as JSON, and exit."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    samples: list[tuple[float, float]] = []

    def ts_of(ts: str) -> float:
        return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        text = msg.payload.decode()
        if msg.topic.endswith("/readings"):
            samples.extend((now, now - ts_of(r["ts"])) for r in json.loads(text)["readings"])
        elif msg.topic.endswith("/reading"):
            i = text.index('"ts":"') + 6
            samples.append((now, now - ts_of(text[i:i + 24])))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub", clean_session=True)
    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe([("fieldgate/bench/+/reading", 1),
                                                    ("fieldgate/bench/readings", 1)])
    client.connect("127.0.0.1", port)
    client.loop_start()
    print("ready", flush=True)
    t0, t1 = map(float, sys.stdin.readline().split())
    client.loop_stop()
    lat = sorted(lat for at, lat in samples if t0 <= at <= t1)
    out = {"n": len(lat)}
    if lat:
        out |= {"p50": statistics.median(lat), "p99": lat[int(len(lat) * 0.99)], "max": lat[-1]}
    print(json.dumps(out), flush=True)


def start_subscriber(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, __file__, "--subscriber", str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("the subscriber did not start")
    return proc


def subscriber_result(proc: subprocess.Popen[str], t0: float, t1: float) -> dict[str, float]:
    out, _ = proc.communicate(f"{t0} {t1}\n", timeout=60)
    return dict(json.loads(out.strip().splitlines()[-1]))


def commits(up: BufferedUplink) -> int:
    intake = getattr(up, "intake", None)  # absent before group commit (a run against an older revision)
    return -1 if intake is None else int(intake.commits)


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()  # noqa: UP031


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def throughput(folder: Path, port: int, devices: int, seconds: float, interval: float, batch: bool,
                     durability: str) -> None:
    loaded = load_config_text(config(folder, port, devices, interval, batch, durability), "bench.yaml")
    sub = start_subscriber(port)
    up = await make_output(loaded.config)  # the composition root, as `fieldgate run` builds it
    assert isinstance(up, BufferedUplink)
    gw = Gateway(loaded, up)
    task = asyncio.create_task(gw.run())
    await gw.ready.wait()
    await asyncio.sleep(2)  # warm-up
    a0, c0, t0, w0, k0 = up.state.acked, cpu(), time.monotonic(), time.time(), commits(up)
    await asyncio.sleep(seconds)
    a1, c1, t1, w1, k1 = up.state.acked, cpu(), time.monotonic(), time.time(), commits(up)
    gw.request_stop()
    await task
    lat = subscriber_result(sub, w0, w1)
    msgs = (a1 - a0) / (t1 - t0)
    values = msgs * POINTS
    offered = devices / interval
    print(f"end to end ({devices} devices x {POINTS} points, polled every {interval * 1000:g} ms = "
          f"{offered:,.0f} readings/s offered, durability {durability}, batch {'on' if batch else 'off'}; {load()}):")
    print(f"  {values:,.0f} values/s, {msgs:,.0f} readings/s acknowledged ({100 * msgs / offered:.0f} % of offered); "
          + (f"{(k1 - k0) / (t1 - t0):,.0f} commits/s" if k0 >= 0 else "commits not counted"))
    print(f"  CPU {1000 * (c1 - c0) / max(1.0, values * (t1 - t0)) * 1000:.1f} ms per 1000 values "
          f"(gateway process: {100 * (c1 - c0) / (t1 - t0):.0f}% of one core)")
    print(f"  RSS {rss_mib():.0f} MiB")
    if lat.get("n"):
        print(f"  poll-to-subscriber latency p50 {1000 * lat['p50']:.0f} ms, p99 {1000 * lat['p99']:.0f} ms, "
              f"max {1000 * lat['max']:.0f} ms ({lat['n']:.0f} readings)")


async def backlog(folder: Path, port: int, broker: DemoBroker, values: int) -> None:
    loaded = load_config_text(config(folder, port, 5, 1.0), "bench.yaml")
    readings = values // POINTS
    # Fill the buffer as an outage would (same message shape as the sim devices produce).
    up = await make_output(loaded.config)
    assert isinstance(up, BufferedUplink)
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
    ap.add_argument("--batch", choices=["on", "off"], default="on",
                    help="mqtt.batch (when: backlog): batch messages only while a backlog or an overload builds")
    ap.add_argument("--durability", choices=["full", "normal"], default="full")
    ap.add_argument("--backlog-values", type=int, default=1_000_000)
    ap.add_argument("--subscriber", type=int, help=argparse.SUPPRESS)  # internal: the subscriber process
    args = ap.parse_args()
    if args.subscriber:
        subscriber(args.subscriber)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = DemoBroker(folder)
        if not broker.start():
            raise SystemExit("mosquitto is needed: apt-get install mosquitto")
        try:
            (folder / "a").mkdir()
            await throughput(folder / "a", broker.port, args.devices, args.seconds, args.interval,
                             args.batch == "on", args.durability)
            if args.backlog_values > 0:
                (folder / "b").mkdir()
                await backlog(folder / "b", broker.port, broker, args.backlog_values)
        finally:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""Benchmark: CPU per value of the Sparkplug B output against the JSON output, on the same workload.

Run: .venv/bin/python bench/sparkplug.py [--rows N] [--metrics M] [--devices D]

Both outputs drain the same backlog (N readings of M metrics over D devices, committed to a
fresh buffer first) to a real mosquitto on a free port, each in this process as ``fieldgate
run`` builds it (runtime.make_output), until the broker acknowledged every reading. Printed per
output: process CPU time (the event loop, paho and the buffer's thread) per metric value, the
drain rate, and the bytes of one reading on the wire; then the encoding alone (a reading to its
payload, no I/O). CPU time, not wall time, so a busy machine changes the figures less; the load
average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support.broker

from fieldgate.buffer import Buffer, Row
from fieldgate.config import load_config_text
from fieldgate.runtime import make_output
from fieldgate.sparkplug.codec import device_data
from fieldgate.sparkplug.node import Catalogue

from tests.support.broker import Mosquitto


def reading(dev: str, i: int, metrics: int) -> str:
    """A reading message without seq, as the normalizer makes it (numbers, units, qualities)."""
    return json.dumps({
        "schema": "fieldgate.reading/1", "gateway": "gw-b", "device": dev, "ts": "2026-12-02T01:00:00.000Z",
        "metrics": {f"m{k}": {"value": round(200 + k + (i % 50) * 0.1, 2), "unit": "V", "quality": "good"}
                    for k in range(metrics)},
    }, separators=(",", ":"))


def fill(data: Path, rows: int, metrics: int, devices: int) -> None:
    buf = Buffer(data)
    buf.open()
    items = [(f"dev-{i % devices}", 1_796_000_000_000 + i, reading(f"dev-{i % devices}", i, metrics))
             for i in range(rows)]
    for k in range(0, rows, 2000):
        buf.append_many(items[k:k + 2000])
    buf.close()


SIM_PROFILE = Path(__file__).resolve().parents[1] / "drivers" / "sim" / "profiles" / "energy-meter.yaml"


async def drain(fmt: str, port: int, folder: Path, rows: int, devices: int) -> tuple[float, float]:
    # The devices are configured (an output treats readings of unconfigured devices as a removed
    # device's backlog) but never polled: only the output is built, no supervisor.
    devs = "".join(f"  - {{id: dev-{i}, driver: sim, profile: {SIM_PROFILE}}}\n" for i in range(devices))
    text = (f"gateway: {{id: gw-b, data_dir: {folder}}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {port}, format: {fmt}}}\n"
            f"sparkplug: {{group_id: bench}}\nweb: {{enabled: false}}\ndevices:\n{devs}")
    out = await make_output(load_config_text(text, str(folder / "f.yaml")).config)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    task = asyncio.create_task(out.run())
    state = out.state  # type: ignore[attr-defined]
    deadline = time.monotonic() + 600
    while state.acked < rows:
        if task.done() or time.monotonic() > deadline:
            raise SystemExit(f"{fmt}: drained {state.acked}/{rows}; {task}")
        await asyncio.sleep(0.05)  # progress poll of a benchmark, not a test's synchronization
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await out.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return cpu, wall


def encode_only(rows: int, metrics: int) -> tuple[float, float, int, int]:
    """CPU seconds to turn ``rows`` buffered readings into JSON and into DDATA payloads (no I/O)."""
    body = reading("dev-0", 1, metrics)
    batch = [Row(i, "dev-0", 1_796_000_000_000 + i, body) for i in range(1, rows + 1)]
    t0 = time.process_time()
    for r in batch:
        json_payload = r.message()
    t_json = time.process_time() - t0
    cat = Catalogue(Path(tempfile.gettempdir()))
    cat.learn("dev-0", json.loads(body)["metrics"])
    defs = cat.devices["dev-0"]
    t0 = time.process_time()
    for r in batch:
        spb_payload = device_data(r.ts_ms, r.seq % 256, defs, json.loads(r.body)["metrics"], r.seq, True)
    t_spb = time.process_time() - t0
    return t_json, t_spb, len(json_payload.encode()), len(spb_payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--metrics", type=int, default=6)
    ap.add_argument("--devices", type=int, default=4)
    args = ap.parse_args()
    values = args.rows * args.metrics
    print(f"{args.rows} readings x {args.metrics} metrics over {args.devices} devices; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "mosquitto", persistence=False) as broker:
        for fmt in ("json", "sparkplug"):
            folder = Path(tmp) / fmt
            fill(folder, args.rows, args.metrics, args.devices)
            cpu, wall = asyncio.run(drain(fmt, broker.port, folder, args.rows, args.devices))
            print(f"  {fmt:9s} {cpu / values * 1e6:6.2f} us CPU per value   {args.rows / wall:8,.0f} readings/s "
                  f"({cpu:.2f} s CPU, {wall:.2f} s wall)")
    t_json, t_spb, b_json, b_spb = encode_only(args.rows, args.metrics)
    print(f"  encoding alone: json {t_json / values * 1e6:.2f} us/value ({b_json} B per reading), "
          f"sparkplug DDATA {t_spb / values * 1e6:.2f} us/value ({b_spb} B per reading)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

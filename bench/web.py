"""Benchmark: what the status page costs a running gateway, with nobody watching and with one client.

Run: .venv/bin/python bench/web.py [--devices 20] [--seconds 30]

Starts the real ``fieldgate run --stdout`` process with simulated meters polled once a second and
the status page on a free loopback port, then measures the process's CPU time (from /proc) over
four equal windows:
  0. the same gateway with the page disabled (web.enabled: false), a process of its own: the baseline;
  1. idle: nobody has the page open (the history is still recorded);
  2. one client following the live stream (/api/v1/stream, what the overview page does);
  3. idle again (the client gone: the cost must go back).
Prints % of one core for each, the bytes the client received per second, and the load average
(the machine may be busy with other work; compare windows of one run, not runs). Process CPU is
counted in clock ticks (10 ms), so differences under ~0.1 % are noise on a busy machine; the
in-process figures printed first isolate the page's own work: one tick of the state hub with
nobody watching, one with a client (document built and serialized), and one reading recorded
into the history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIM = REPO / "drivers" / "sim" / "profiles"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def window(pid: int, seconds: float) -> float:
    """% of one core used by ``pid`` over the next ``seconds``."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)  # a measurement window, not a synchronization
    return 100.0 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


async def in_process(devices: int) -> None:
    """Time the page's own work per second in this process, against a real gateway with sim devices."""
    from fieldgate.app import Gateway
    from fieldgate.config import load_config_text
    from fieldgate.outputs import MemoryOutput
    from fieldgate.web.app import CTX, create_app

    text = "gateway: {id: bench, clock_check: off}\ndevices:\n" + "".join(
        f"  - {{id: m{i}, driver: sim, profile: {SIM / 'energy-meter.yaml'}, poll_interval: 1s}}\n"
        for i in range(devices))
    out = MemoryOutput()
    gw = Gateway(load_config_text(text, "bench.yaml"), out)
    task = asyncio.create_task(gw.run())
    await gw.ready.wait()
    await asyncio.sleep(2)  # a first reading from every device (not a synchronization)
    hub = create_app(gw, out)[CTX].hub
    n = 300
    t0 = time.perf_counter()
    for _ in range(n):
        hub.tick()
    idle = (time.perf_counter() - t0) / n
    hub.subscribe()
    t0 = time.perf_counter()
    for _ in range(n):
        json.dumps(hub.tick(), separators=(",", ":"))
    watched = (time.perf_counter() - t0) / n
    msg = out.by_device("m0")[-1]
    t0 = time.perf_counter()
    for i in range(5000):
        hub.history.add_reading(f"m{i % devices}", msg)
    record = (time.perf_counter() - t0) / 5000
    print(f"in process, {devices} devices: hub tick with nobody watching {idle * 1e6:.0f} us/s "
          f"({idle * 100:.3f} % of a core); with one client {watched * 1e6:.0f} us/s ({watched * 100:.2f} %); "
          f"history {record * 1e6:.1f} us per reading ({record * devices * 100:.3f} % at one reading/s/device)")
    gw.request_stop()
    await task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    asyncio.run(in_process(args.devices))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        devices = "".join(f"  - {{id: m{i}, driver: sim, profile: {SIM / 'energy-meter.yaml'}, poll_interval: 1s}}\n"
                          for i in range(args.devices))
        base_cfg = folder / "no-web.yaml"
        base_cfg.write_text(f"gateway: {{id: bench-web, data_dir: {folder}, clock_check: off}}\n"
                            f"web: {{enabled: false}}\ndevices:\n{devices}")
        base = subprocess.Popen([sys.executable, "-m", "fieldgate.cli", "run", "-c", str(base_cfg), "--stdout"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)  # start-up settles (not a synchronization)
            baseline = window(base.pid, args.seconds)
        finally:
            base.terminate()
            base.wait(15)
        cfg = folder / "fieldgate.yaml"
        cfg.write_text(f"gateway: {{id: bench-web, data_dir: {folder}, clock_check: off}}\n"
                       f"web: {{listen: '127.0.0.1:0'}}\ndevices:\n{devices}")
        proc = subprocess.Popen([sys.executable, "-m", "fieldgate.cli", "run", "-c", str(cfg), "--stdout"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = ""
            assert proc.stderr is not None
            for line in proc.stderr:
                if "status page on http" in line:
                    url = line.split("status page on ", 1)[1].split()[0].rstrip("/")
                    break
            if not url:
                raise SystemExit("the gateway did not start its status page")
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
            time.sleep(3)  # let start-up work settle before measuring (not a synchronization)
            idle = window(proc.pid, args.seconds)
            received = [0]
            stop = threading.Event()

            def client() -> None:
                with urllib.request.urlopen(url + "/api/v1/stream", timeout=30) as resp:
                    while not stop.is_set():
                        chunk = resp.read1(65536)
                        if not chunk:
                            return
                        received[0] += len(chunk)

            t = threading.Thread(target=client, daemon=True)
            t.start()
            watched = window(proc.pid, args.seconds)
            stop.set()
            got = received[0]
            t.join(5)
            time.sleep(2)
            after = window(proc.pid, args.seconds)
            load = os.getloadavg()
            print(f"devices: {args.devices} sim meters polled every 1 s; windows of {args.seconds:.0f} s")
            print(f"page disabled:          {baseline:.2f} % of a core")
            print(f"nobody watching:        {idle:.2f} % of a core")
            print(f"one live-stream client: {watched:.2f} % of a core "
                  f"(+{watched - idle:.2f} %), {got / args.seconds / 1024:.1f} KiB/s sent")
            print(f"client gone:            {after:.2f} % of a core")
            print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
        finally:
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    main()

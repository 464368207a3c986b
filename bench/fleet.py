"""Benchmark: a Modbus TCP fleet end to end, through the real gateway process to a QoS 1 subscriber.

Run: .venv/bin/python bench/fleet.py [-s A|B2|B3|C|D ...] [--seconds 60] [--warmup 10]
                                     [--no-web] [--visit] [--against REV] [--rounds 1]

The setup (issue 16, "What it must show"):
  - D Modbus TCP devices of R holding registers, one pymodbus server (one port) each, served by
    ``python -m fieldgate_hwsim.fleet_sim`` in a process of its own: register 0 counts reads
    (gaps are lost polls), registers 1-2 latch the simulator's clock in ms at that read (latency),
    the rest change every 100 ms;
  - the real gateway (``fieldgate run``) with its defaults: ``durability: full``, the status page
    on (``--no-web`` turns it off to measure what the page costs; ``--visit`` opens it once after the
    warm-up, which loads its HTTP server: without a visitor it only listens and records);
  - a local mosquitto with persistence (tests/support/broker.py), and a QoS 1 subscriber here.

Over the window after warm-up it prints: values/s delivered (metrics of received readings),
the gateway's CPU % of one core (utime+stime from /proc), CPU seconds per 1000 values, VmHWM,
p50/p99 latency (clock registers vs receive time), polls lost (gaps in register 0), polls missed
(expected polls of the window the gateway never made: late or skipped), duplicate seqs, the
simulator's CPU % (a starved simulator slows the fleet, not the gateway), and the 1-minute load
average at the window's end (the machine may be shared: compare
runs of one invocation, which alternate when ``--against`` is given).

``--against REV`` checks REV out into a temporary git worktree and runs its gateway with the
same venv (PYTHONPATH on a shim that maps the package layout), alternating with this tree
``--rounds`` times, and prints each figure as a ratio this/REV.

Scenarios: A = 10 devices x 20 registers every 100 ms, B2 = 50 x 50 @ 100 ms,
B3 = 50 x 50 @ 1 s, C = 100 x 100 @ 100 ms, D = 50 x 20 @ 10 s (a Pi-Zero-class load).

Baseline figures are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402  # after the repo is on sys.path

from tests.support.broker import Mosquitto  # noqa: E402

SCENARIOS: dict[str, tuple[int, int, float]] = {
    "A": (10, 20, 0.1),
    "B2": (50, 50, 0.1),
    "B3": (50, 50, 1.0),
    "C": (100, 100, 0.1),
    "D": (50, 20, 10.0),
}
CLOCK_MOD = 1 << 32
GATEWAY = "fleet"


def profile_yaml(registers: int) -> str:
    pts = ["  - {name: r0, address: 0}", "  - {name: clk_hi, address: 1}", "  - {name: clk_lo, address: 2}"]
    pts += [f"  - {{name: r{a}, address: {a}}}" for a in range(3, registers)]
    return ("schema_version: 1\ndriver: modbus\nvendor: bench\nmodel: fleet\naddressing_verified: true\n"
            "points:\n" + "\n".join(pts) + "\n")


def config_yaml(folder: Path, broker_port: int, ports: list[int], interval: float, web: bool,
                web_port: int, durability: str | None = None) -> str:
    prof = folder / "fleet.yaml"
    devs = "".join(
        f"  - {{id: d{i:03d}, driver: modbus, profile: {prof}, poll_interval: {interval}, "
        f"connection: {{host: 127.0.0.1, port: {p}, timeout: 2}}}}\n" for i, p in enumerate(ports))
    web_cfg = f"web: {{listen: '127.0.0.1:{web_port}'}}\n" if web else "web: {enabled: false}\n"
    buffer = f"buffer: {{durability: {durability}}}\n" if durability else ""  # None: the default (full)
    return (f"gateway: {{id: {GATEWAY}, data_dir: {folder / 'data'}, clock_check: off}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker_port}}}\n{web_cfg}{buffer}devices:\n{devs}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> float:
    """A /proc/PID/status figure in MiB (VmHWM, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Tally:
    """What the subscriber saw, per device and in the window."""

    counting: bool = False
    values: int = 0
    readings: int = 0
    latencies: list[float] = field(default_factory=list)
    lost: int = 0
    duplicates: int = 0
    seqs: dict[str, set[int]] = field(default_factory=dict)
    last_r0: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, msg: dict[str, Any], now_ms: int) -> None:
        dev = msg["device"]
        metrics = msg["metrics"]
        with self.lock:
            seen = self.seqs.setdefault(dev, set())
            seq = msg.get("seq")
            dup = seq in seen
            seen.add(seq)
            r0 = metrics.get("r0", {}).get("value")
            gap = 0
            if isinstance(r0, int):
                prev = self.last_r0.get(dev)
                if prev is not None and not dup:
                    step = (r0 - prev) % 65536
                    gap = step - 1 if 0 < step < 32768 else 0
                if not dup:
                    self.last_r0[dev] = r0
            if not self.counting:
                return
            if dup:
                self.duplicates += 1
                return
            self.lost += gap
            self.readings += 1
            self.values += len(metrics)
            hi, lo = metrics.get("clk_hi", {}).get("value"), metrics.get("clk_lo", {}).get("value")
            if isinstance(hi, int) and isinstance(lo, int):
                self.latencies.append(((now_ms - ((hi << 16) | lo)) % CLOCK_MOD) / 1000.0)


class Subscriber:
    """A QoS 1 subscriber to every reading (single and batched) of the bench gateway."""

    def __init__(self, port: int, tally: Tally) -> None:
        self.tally = tally
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-bench", clean_session=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.ready.wait(10):
            raise RuntimeError("subscriber did not connect to the bench broker within 10 s")

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe([(f"fieldgate/{GATEWAY}/+/reading", 1), (f"fieldgate/{GATEWAY}/readings", 1)])

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        now_ms = int(time.time() * 1000) % CLOCK_MOD
        doc = json.loads(m.payload)
        for r in doc.get("readings", [doc]):
            self.tally.take(r, now_ms)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def gateway_command(tree: Path | None, cfg: Path) -> tuple[list[str], dict[str, str]]:
    """This tree's installed ``fieldgate``, or REV's sources through a PYTHONPATH shim."""
    env = dict(os.environ)
    code = "import sys; from fieldgate.cli import main; sys.exit(main())"
    if tree is not None:
        env["PYTHONPATH"] = str(tree / ".fleet-shim")
    return [sys.executable, "-c", code, "run", "-c", str(cfg), "--log-level", "WARNING"], env


def prepare_rev(rev: str, root: Path) -> Path:
    """A git worktree of ``rev`` with a shim folder mapping ``fieldgate`` to its gateway/ etc."""
    tree = root / "rev"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                   stdout=subprocess.DEVNULL)
    shim = tree / ".fleet-shim"
    shim.mkdir()
    # The package layout is mapped by pyproject's package-dir; a shim of symlinks rebuilds it.
    (shim / "fieldgate").symlink_to(tree / "gateway")
    for sub, src in (("drivers", "drivers"), ("profiles", "profiles")):
        link = tree / "gateway" / sub
        if not link.exists():
            link.symlink_to(tree / src)
    (shim / "fieldgate_hwsim").symlink_to(tree / "hw-sim")
    return tree


def drop_rev(tree: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


def visit_page(port: int) -> None:
    """One client on the status page (its first visit loads the page's HTTP server)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=60) as resp:
        resp.read()


def run_once(name: str, seconds: float, warmup: float, web: bool, tree: Path | None,
             durability: str | None = None, visit: bool = False) -> dict[str, float]:
    devices, registers, interval = SCENARIOS[name]
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        folder = Path(tmp)
        (folder / "fleet.yaml").write_text(profile_yaml(registers))
        sim = subprocess.Popen([sys.executable, "-m", "fieldgate_hwsim.fleet_sim", "--devices", str(devices),
                                "--registers", str(registers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
        gw: subprocess.Popen[bytes] | None = None
        broker = Mosquitto(folder / "broker", persistence=True).start()
        sub = None
        try:
            assert sim.stdout is not None
            ports = json.loads(sim.stdout.readline())["ports"]
            tally = Tally()
            sub = Subscriber(broker.port, tally)
            cfg = folder / "gw.yaml"
            web_port = free_port()
            cfg.write_text(config_yaml(folder, broker.port, ports, interval, web, web_port, durability))
            cmd, env = gateway_command(tree, cfg)
            with open(folder / "gw.log", "wb") as log:  # the child keeps its own copy of the descriptor
                gw = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
            # Warm-up: until every device delivered, then the fixed warm-up (planning, page history).
            deadline = time.monotonic() + 60
            while len(tally.last_r0) < devices:
                if gw.poll() is not None:
                    raise RuntimeError("gateway exited:\n" + (folder / "gw.log").read_text()[-3000:])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(tally.last_r0)}/{devices} devices delivered within 60 s")
                time.sleep(0.2)  # a bench's sampling pace, not a synchronization
            first_visit_s = float("nan")
            if visit and web:
                t_visit = time.monotonic()
                visit_page(web_port)
                first_visit_s = time.monotonic() - t_visit
            time.sleep(warmup)
            cpu0, sim0, t0 = proc_cpu(gw.pid), proc_cpu(sim.pid), time.monotonic()
            with tally.lock:
                tally.counting = True
            time.sleep(seconds)
            with tally.lock:
                tally.counting = False
            cpu1, sim1, t1 = proc_cpu(gw.pid), proc_cpu(sim.pid), time.monotonic()
            hwm, rss = proc_status(gw.pid, "VmHWM"), proc_status(gw.pid, "VmRSS")
            load = os.getloadavg()[0]
        finally:
            if gw is not None:
                gw.send_signal(signal.SIGTERM)
                try:
                    gw.wait(30)
                except subprocess.TimeoutExpired:
                    gw.kill()
                    gw.wait()
            if sub is not None:
                sub.close()
            broker.stop()
            if sim.stdin is not None:
                sim.stdin.close()
            sim.send_signal(signal.SIGTERM)
            sim.wait(30)
            if sim.stdout is not None:
                sim.stdout.close()
        dt = t1 - t0
        cpu = cpu1 - cpu0
        lat = sorted(tally.latencies)
        offered = devices * registers / interval
        return {
            "offered_vps": offered,
            "values_per_s": tally.values / dt,
            "cpu_pct": 100 * cpu / dt,
            "cpu_s_per_1000": 1000 * cpu / tally.values if tally.values else float("nan"),
            "vmhwm_mib": hwm,
            "rss_mib": rss,
            "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
            "polls_lost": tally.lost,
            # polls the gateway never made (late, skipped): the devices count only the reads they saw
            "polls_missed": max(0, round(devices * dt / interval - tally.readings - tally.lost)),
            "sim_cpu_pct": 100 * (sim1 - sim0) / dt,
            "duplicates": tally.duplicates,
            "load1": load,
            "first_visit_s": first_visit_s,  # the first request's answer time (it loads the page's server)
        }


FIGURES = ("offered_vps", "values_per_s", "cpu_pct", "cpu_s_per_1000", "vmhwm_mib", "rss_mib", "p50_ms",
           "p99_ms", "polls_lost", "polls_missed", "duplicates", "sim_cpu_pct", "load1")


def _ratio(a: float, b: float) -> float:
    """a/b; 0/0 (no loss either way) is 1, x/0 is infinite."""
    if b == 0:
        return 1.0 if a == 0 else float("inf")
    return a / b


def show(label: str, r: dict[str, float]) -> None:
    print(f"  {label:10s} " + "  ".join(f"{k}={r[k]:.4g}" for k in FIGURES), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-s", "--scenario", action="append", choices=sorted(SCENARIOS),
                    help="scenario to run (repeatable; default all)")
    ap.add_argument("--seconds", type=float, default=60.0, help="measurement window (default 60)")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds after every device delivered")
    ap.add_argument("--no-web", action="store_true", help="status page off (to measure what it costs)")
    ap.add_argument("--web-both", action="store_true", help="run each scenario with the page on and off")
    ap.add_argument("--visit", action="store_true",
                    help="open the status page once after the warm-up (it loads its server on the first visit)")
    ap.add_argument("--durability", choices=("full", "normal"),
                    help="buffer.durability (default: the gateway's own default, full); to tell fsync from CPU")
    ap.add_argument("--against", metavar="REV", help="alternate with a worktree of REV and print ratios")
    ap.add_argument("--rounds", type=int, default=1, help="alternations with --against")
    args = ap.parse_args()
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("fleet: mosquitto is not installed (apt install mosquitto)", file=sys.stderr)
        return 2
    scenarios = args.scenario or list(SCENARIOS)
    webs = [True, False] if args.web_both else [not args.no_web]
    root = Path(tempfile.mkdtemp(prefix="fleet-rev-"))
    tree = prepare_rev(args.against, root) if args.against else None
    try:
        for name in scenarios:
            d, r, i = SCENARIOS[name]
            for web in webs:
                print(f"{name}: {d} devices x {r} registers every {i:g} s, page {'on' if web else 'off'}, "
                      f"window {args.seconds:g} s", flush=True)
                mine: list[dict[str, float]] = []
                theirs: list[dict[str, float]] = []
                for _ in range(args.rounds if tree else 1):
                    if tree is not None:
                        theirs.append(run_once(name, args.seconds, args.warmup, web, tree, args.durability, args.visit))
                        show(args.against[:10], theirs[-1])
                    mine.append(run_once(name, args.seconds, args.warmup, web, None, args.durability, args.visit))
                    show("this", mine[-1])
                if theirs:
                    ratio = {k: _ratio(statistics.mean(m[k] for m in mine), statistics.mean(t[k] for t in theirs))
                             for k in FIGURES}
                    show("ratio", ratio)
    finally:
        if tree is not None:
            drop_rev(tree)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

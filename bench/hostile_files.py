"""The hostile-file campaign, long form: >= 1000 seeded files through the real commands.

Each file from ``fieldgate_hwsim.hostile_files`` goes through

- ``validate`` in-process (``load_config``, and ``load_profile_file`` for a profile),
- ``fieldgate validate`` as a subprocess,
- ``fieldgate provision --root`` as a subprocess, with the file on a boot folder and a running
  configuration in ``etc`` that must stay untouched when the file is refused,
- a SIGHUP reload of one running ``fieldgate run`` (real mosquitto, a sim device), for the files
  the loader refuses: each must be announced as ``config_rejected`` on the events topic while the
  gateway keeps publishing on its first configuration.

It prints one row per path: files, accepted, refused, tracebacks, hangs (no answer within
``--hang`` seconds), other failures, and the median and maximum time per file (a subprocess's time
includes starting Python). Run by hand (it takes a while on a busy machine)::

    python bench/hostile_files.py --count 1000 [--seed 14] [--jobs 2]

The fault campaign calls :func:`run_campaign` with the same arguments and prints the same table.
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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from fieldgate.config import load_config, load_profile_file
from fieldgate.demo import DemoBroker
from fieldgate.errors import ConfigError
from fieldgate_hwsim.hostile_files import PROFILE_NAME, HostileFile, generate
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
RUNNING = "gateway: {id: running}\n"


@dataclass
class Row:
    """What one path did with the files."""

    path: str
    files: int = 0
    accepted: int = 0
    refused: int = 0
    tracebacks: int = 0
    hangs: int = 0
    failures: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    slowest: tuple[float, int] = (0.0, -1)

    def took(self, hf: HostileFile, seconds: float) -> None:
        self.times.append(seconds)
        self.slowest = max(self.slowest, (seconds, hf.index))

    def line(self) -> str:
        med = statistics.median(self.times) if self.times else 0.0
        return (f"{self.path:<28} {self.files:>6} {self.accepted:>8} {self.refused:>7} {self.tracebacks:>10} "
                f"{self.hangs:>5} {len(self.failures):>6} {med:>8.3f} {self.slowest[0]:>8.3f} {self.slowest[1]:>6}")


HEADER = (f"{'path':<28} {'files':>6} {'accepted':>8} {'refused':>7} {'tracebacks':>10} {'hangs':>5} "
          f"{'other':>6} {'median s':>8} {'max s':>8} {'(file)':>6}")


def _cli(*args: str, hang: float) -> tuple[subprocess.CompletedProcess[str] | None, float]:
    started = time.monotonic()
    try:
        res = subprocess.run([sys.executable, "-m", "fieldgate.cli", *args], capture_output=True, text=True,
                             timeout=hang, cwd=REPO, check=False)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - started
    return res, time.monotonic() - started


def in_process(files: list[HostileFile], work: Path, row: Row) -> set[int]:
    """Load every file as ``validate`` does; return the indexes of the refused configs."""
    refused: set[int] = set()
    for hf in files:
        folder = work / f"ip{hf.index}"
        folder.mkdir()
        cfg = hf.install(folder)
        started = time.monotonic()
        row.files += 1
        try:
            load_config(cfg)
            row.accepted += 1
        except ConfigError as exc:
            row.refused += 1
            refused.add(hf.index)
            if not exc.diagnostics:
                row.failures.append(f"{hf.index} ({hf.family}): refused without a diagnostic")
        except Exception as exc:  # the finding this campaign looks for: counted and named, the run goes on
            row.tracebacks += 1
            row.failures.append(f"{hf.index} ({hf.family}): {type(exc).__name__}: {exc}")
        if hf.kind == "profile" and not hf.special:
            try:
                load_profile_file(folder / PROFILE_NAME)
            except Exception as exc:  # as above
                row.tracebacks += 1
                row.failures.append(f"{hf.index} ({hf.family}) as a profile: {type(exc).__name__}: {exc}")
        row.took(hf, time.monotonic() - started)
        shutil.rmtree(folder, ignore_errors=True)
    return refused


def _judge(row: Row, hf: HostileFile, res: subprocess.CompletedProcess[str] | None, took: float,
           extra: Callable[[subprocess.CompletedProcess[str]], str | None] | None = None) -> None:
    row.files += 1
    row.took(hf, took)
    if res is None:
        row.hangs += 1
        row.failures.append(f"{hf.index} ({hf.family}): hung")
        return
    if "Traceback" in res.stderr or "Traceback" in res.stdout:
        row.tracebacks += 1
        row.failures.append(f"{hf.index} ({hf.family}): traceback: {res.stderr[-300:]!r}")
    if res.returncode == 0:
        row.accepted += 1
    elif res.returncode == 1:
        row.refused += 1
    else:
        row.failures.append(f"{hf.index} ({hf.family}): exit {res.returncode}: {res.stderr[-300:]!r}")
    problem = extra(res) if extra else None
    if problem:
        row.failures.append(f"{hf.index} ({hf.family}): {problem}")


def validate_subprocess(files: list[HostileFile], work: Path, row: Row, jobs: int, hang: float) -> None:
    def one(hf: HostileFile) -> tuple[HostileFile, subprocess.CompletedProcess[str] | None, float]:
        folder = work / f"v{hf.index}"
        folder.mkdir()
        res, took = _cli("validate", str(hf.install(folder)), hang=hang)
        shutil.rmtree(folder, ignore_errors=True)
        return hf, res, took

    with ThreadPoolExecutor(jobs) as pool:
        for hf, res, took in pool.map(one, files):
            _judge(row, hf, res, took)


def provision_subprocess(files: list[HostileFile], work: Path, row: Row, jobs: int, hang: float) -> None:
    def one(hf: HostileFile) -> tuple[HostileFile, subprocess.CompletedProcess[str] | None, float, Path]:
        root = work / f"p{hf.index}"
        (root / "boot/firmware").mkdir(parents=True)
        (root / "etc/fieldgate").mkdir(parents=True)
        (root / "etc/fieldgate/fieldgate.yaml").write_text(RUNNING)
        hf.install(root / "boot/firmware")
        res, took = _cli("provision", "--root", str(root), hang=hang)
        return hf, res, took, root

    def untouched_when_refused(root: Path) -> Callable[[subprocess.CompletedProcess[str]], str | None]:
        def check(res: subprocess.CompletedProcess[str]) -> str | None:
            if res.returncode == 1:
                if (root / "etc/fieldgate/fieldgate.yaml").read_text() != RUNNING:
                    return "refused, but the running configuration was changed"
                if not (root / "boot/firmware/fieldgate.yaml.errors.txt").exists():
                    return "refused without an errors file"
            return None
        return check

    with ThreadPoolExecutor(jobs) as pool:
        for hf, res, took, root in pool.map(one, files):
            _judge(row, hf, res, took, untouched_when_refused(root))
            shutil.rmtree(root, ignore_errors=True)


class _Events:
    """Counts the gateway's events and readings on the broker (QoS 1)."""

    def __init__(self, port: int) -> None:
        self.cond = threading.Condition()
        self.kinds: list[str] = []
        self.readings = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile-bench")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("fieldgate/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            if msg.topic.endswith("/events"):
                self.kinds.append(str(json.loads(msg.payload).get("kind")))
            elif msg.topic.endswith(("/reading", "/readings")):
                self.readings += 1
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def reload_running_gateway(files: list[HostileFile], refused: set[int], work: Path, row: Row, hang: float) -> None:
    broker = DemoBroker(work / "broker")
    (work / "broker").mkdir()
    if not broker.start():
        row.failures.append("no mosquitto: reload not run")
        return
    home = work / "gw"
    home.mkdir()
    cfg = home / "fieldgate.yaml"
    good = (f"gateway: {{id: gw-hostile, data_dir: {home / 'data'}, clock_check: off}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_min: 0.05s, reconnect_max: 0.5s}}\n"
            "devices:\n  - {id: a, driver: sim, "
            f"profile: {REPO / 'drivers/sim/profiles/energy-meter.yaml'}, poll_interval: 0.2s}}\n")
    cfg.write_text(good)
    events = _Events(broker.port)
    stderr = (home / "stderr.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "fieldgate.cli", "run", "-c", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        if not events.wait(lambda: events.readings >= 3, 60):
            row.failures.append("the gateway never published")
            return
        for hf in files:
            if hf.index not in refused:
                continue  # an accepted file would be applied, and start other drivers' devices
            for name in (cfg.name, PROFILE_NAME):
                old = home / name
                if old.is_symlink() or old.exists():
                    (old.rmdir if old.is_dir() and not old.is_symlink() else old.unlink)()
            hf.install(home, cfg.name, gateway_id="gw-hostile")
            before = len(events.kinds)
            started = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            answered = events.wait(lambda b=before: len(events.kinds) > b, hang)  # type: ignore[misc]
            took = time.monotonic() - started
            row.files += 1
            row.took(hf, took)
            if not answered:
                row.hangs += 1
                row.failures.append(f"{hf.index} ({hf.family}): no event within {hang:g} s of SIGHUP")
            elif events.kinds[before] == "config_rejected":
                row.refused += 1
            else:
                row.accepted += 1
                row.failures.append(f"{hf.index} ({hf.family}): reload said {events.kinds[before]!r}")
            if proc.poll() is not None:
                row.failures.append(f"{hf.index} ({hf.family}): the gateway exited ({proc.returncode})")
                return
        seen = events.readings
        if not events.wait(lambda: events.readings >= seen + 3, 30):
            row.failures.append("no readings after the reloads")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            row.failures.append("the gateway did not stop on SIGTERM")
        stderr.close()
        events.close()
        broker.stop()
        log = (home / "stderr.log").read_text(errors="replace")
        row.tracebacks += log.count("Traceback")


def run_campaign(count: int = 1000, seed: int = 14, jobs: int = 2, hang: float = 30.0,
                 paths: Iterable[str] = ("in-process", "validate", "provision", "reload"),
                 out: object = sys.stdout, subprocess_count: int | None = None, start: int = 0) -> list[Row]:
    """Run the campaign and print its table; return the rows.

    ``subprocess_count`` limits the files run through the two subprocess paths (the first
    ones of the series); starting Python costs about a second of CPU per file.
    """
    files = list(generate(count, seed, start))
    sub = files[:subprocess_count] if subprocess_count is not None else files
    work = Path(tempfile.mkdtemp(prefix="fieldgate-hostile-"))
    rows: list[Row] = []
    started = time.monotonic()
    load = os.getloadavg()[0]
    try:
        wanted = set(paths)
        row = Row("validate (in-process)")
        refused = in_process(files, work, row)
        rows.append(row)
        if "validate" in wanted:
            rows.append(Row("fieldgate validate"))
            validate_subprocess(sub, work, rows[-1], jobs, hang)
        if "provision" in wanted:
            rows.append(Row("fieldgate provision"))
            provision_subprocess(sub, work, rows[-1], jobs, hang)
        if "reload" in wanted:
            rows.append(Row("SIGHUP reload (refused)"))
            reload_running_gateway(files, refused, work, rows[-1], hang)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"hostile files: {count} (seed {seed}, from {start}), {time.monotonic() - started:.0f} s, load average "
          f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; hang = no answer within {hang:g} s",
          file=out)  # type: ignore[arg-type]
    print(HEADER, file=out)  # type: ignore[arg-type]
    for row in rows:
        print(row.line(), file=out)  # type: ignore[arg-type]
    for row in rows:
        for failure in row.failures[:20]:
            print(f"  {row.path}: {failure}", file=out)  # type: ignore[arg-type]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--start", type=int, default=0, help="number of the first file")
    ap.add_argument("--jobs", type=int, default=2, help="subprocesses at once")
    ap.add_argument("--hang", type=float, default=30.0, help="seconds after which a command counts as hung")
    ap.add_argument("--paths", default="in-process,validate,provision,reload")
    ap.add_argument("--subprocess-count", type=int, default=None,
                    help="run only the first N files through the subprocess paths (default: all)")
    args = ap.parse_args()
    rows = run_campaign(args.count, args.seed, args.jobs, args.hang, args.paths.split(","),
                        subprocess_count=args.subprocess_count, start=args.start)
    return 1 if any(r.tracebacks or r.hangs or r.failures for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The fault campaign: the real gateway, a real broker and simulated devices, and the faults a site brings.

Each fault (a row of the table) runs in its own folder with its own mosquitto (tests/support/broker.py,
free port, persistence on), its own persistent QoS 1 subscriber (tests/support/collector.py,
clean_session false, subscribed to ``#``) and the real gateway process (``fieldgate run -c ...``),
with simulated devices (the sim driver, hw-sim Modbus and CoAP simulators, hw-sim/hostile.py).
After the fault the row is settled: broker up, gateway up, the buffer drained and fresh readings
seen, then the gateway is stopped with SIGTERM and its buffer file read for the highest seq.

Columns:
    produced   highest seq the gateway handed out (its status API, its buffer file, what arrived)
    delivered  distinct seqs at the subscriber
    missing    seqs in 1..produced neither delivered nor inside a range announced on ``events``
               (``buffer_drop`` first_seq..last_seq, ``buffer_seq_jump`` last_seq+1..next_seq-1, any
               event with first_seq/last_seq or a ``ranges`` list)
    dups       deliveries beyond the first of a seq (at-least-once resends; not a failure)
    reused     a seq delivered with two different messages, or a reading measured after a restart
               with a seq not above every seq delivered before it
    drops      readings announced as dropped (``dropped``/``lost`` counts of events)
    manual     what a person would have to do: the gateway exited by itself or would not start,
               a full disk that did not recover until space was freed by hand
    tb         'Traceback' in the gateway's log or in a command's output
    hangs      the gateway not answering its status API, not publishing, a reload or a command
               not done, a backlog not drained, within a deadline
    unnamed    a fault the product did not name (a Modbus fault called a timeout, file damage without
               an event, a reload change neither applied nor announced as needing a restart)
    late       healthy devices beside hostile ones below 80 % of their expected polls or pushes

The promise, checked per row: missing, reused, manual, tb, hangs, unnamed and late are all 0.
The exit status is 1 when a row breaks it (2 for a usage error).

Broker persistence: mosquitto keeps its in-memory state (sessions, queued QoS 1 messages) on disk
only when it saves. The brokers here run with ``autosave_on_changes true`` and
``autosave_interval 1`` (a save after every change), so a broker kill -9 loses at most what it
received in the last moment before the kill; with mosquitto's default (a save every 1800 s) a
kill -9 of the broker loses every message queued for an offline subscriber since the last save,
which no gateway can prevent.

Usage::

    python bench/faults.py --short          # a few minutes (make test runs this through a test)
    python bench/faults.py                  # the long form (make faults)
    python bench/faults.py --seed 1234 --only damage   # replay one seed, some rows only

Adding a fault: write ``def my_fault(run: Run) -> None`` that sets up devices with
``run.start_gateway(...)``, injects the fault and leaves the rest to ``run`` (the row is settled and
accounted for after it returns), and decorate it with ``@fault("name")``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the test support (broker, collector) lives in the repository, not the package

from tests.support.broker import Mosquitto, free_port  # noqa: E402
from tests.support.collector import Collector  # noqa: E402

PY = sys.executable
SIM_PROFILES = REPO / "drivers" / "sim" / "profiles"
BROKER_PERSISTENCE = ["autosave_on_changes true", "autosave_interval 1"]
GW_ID = "gw-f"
# Every fieldgate process the runner starts gets at most this much address space: a Raspberry Pi has
# 1-4 GB, and a loader that expands a billion-laughs file must fail there, not eat the shared machine.
MEMORY_LIMIT = 1536 * 1024 * 1024


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
HWM_MAX = 2**63 - 1


# -- the table --------------------------------------------------------------------------------------

@dataclass
class Row:
    """One fault's figures (see the module docstring for the columns)."""

    name: str
    produced: int = 0
    delivered: int = 0
    missing: int = 0
    dups: int = 0
    reused: int = 0
    drops: int = 0
    manual: int = 0
    tb: int = 0
    hangs: int = 0
    unnamed: int = 0
    late: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the row keeps the promise (a skipped row neither keeps nor breaks it)."""
        bad = self.missing + self.reused + self.manual + self.tb + self.hangs + self.unnamed + self.late
        return self.skipped is not None or (bad == 0 and self.error is None)

    def note(self, text: str) -> None:
        """Add evidence to the row (printed under the table)."""
        self.notes.append(text)


COLUMNS = ("produced", "delivered", "missing", "dups", "reused", "drops", "manual", "tb", "hangs", "unnamed", "late")


def format_table(rows: list[Row]) -> str:
    """The campaign table and, under it, each row's evidence."""
    width = max([len(r.name) for r in rows] + [5])
    head = f"{'fault':<{width}} " + " ".join(f"{c:>9}" for c in COLUMNS) + "      s  verdict"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.skipped is not None:
            lines.append(f"{r.name:<{width}} " + " ".join(f"{'-':>9}" for _ in COLUMNS) + f" {'':>6}  SKIP")
            continue
        cells = " ".join(f"{getattr(r, c):>9}" for c in COLUMNS)
        lines.append(f"{r.name:<{width}} {cells} {r.seconds:>6.0f}  {'ok' if r.ok else 'FAIL'}")
    lines.append("")
    for r in rows:
        if r.skipped is not None:
            lines.append(f"[{r.name}] skipped: {r.skipped}")
        if r.error is not None:
            lines.append(f"[{r.name}] runner error: {r.error}")
        for n in r.notes:
            lines.append(f"[{r.name}] {n}")
    return "\n".join(lines)


# -- registry ---------------------------------------------------------------------------------------

@dataclass
class Fault:
    """A registered fault: its row name, its function, and whether the short form runs it."""

    name: str
    fn: Callable[[Run], None]
    short: bool = True


FAULTS: list[Fault] = []


def fault(name: str, short: bool = True) -> Callable[[Callable[[Run], None]], Callable[[Run], None]]:
    """Register ``fn(run)`` as the fault ``name`` (a row of the table)."""

    def register(fn: Callable[[Run], None]) -> Callable[[Run], None]:
        FAULTS.append(Fault(name, fn, short))
        return fn

    return register


class Skip(Exception):
    """Raised by a fault that cannot run on this machine; the message says why."""


class GaveUp(Exception):
    """The row cannot go on (the gateway will not start); what was measured so far is reported."""


# -- small helpers ----------------------------------------------------------------------------------

def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy or ``timeout``; returns its last value (falsy on timeout).

    The things waited for live in other processes (the gateway, the broker): polling with a
    deadline is the only handle on them; the step is a poll interval, not a synchronization.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def pause(rng: random.Random, lo: float, hi: float) -> float:
    """Sleep a random moment: fault-injection timing (when a kill lands), not synchronization."""
    t = rng.uniform(lo, hi)
    time.sleep(t)
    return t


def ts_ms(iso: str) -> int:
    """Milliseconds of an RFC 3339 timestamp (``...Z``); 0 if it is not one."""
    try:
        return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
    except (ValueError, AttributeError, OverflowError):
        return 0


def count_covered(points: set[int], ranges: list[tuple[int, int]], upto: int) -> int:
    """How many of 1..upto are in ``points`` or inside one of ``ranges`` (interval arithmetic: upto may be ~2^63)."""
    return sum(b - a + 1 for a, b in _merged(points, ranges, upto))


def _merged(points: set[int], ranges: list[tuple[int, int]], upto: int) -> list[tuple[int, int]]:
    spans = sorted([(max(1, a), min(b, upto)) for a, b in ranges if min(b, upto) >= max(1, a)]
                   + [(p, p) for p in points if 1 <= p <= upto])
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def first_gaps(points: set[int], ranges: list[tuple[int, int]], upto: int, n: int) -> list[int]:
    """The first ``n`` of 1..upto neither in ``points`` nor in ``ranges``."""
    out: list[int] = []
    nxt = 1
    for a, b in [*_merged(points, ranges, upto), (upto + 1, upto + 1)]:
        while nxt < a and len(out) < n:
            out.append(nxt)
            nxt += 1
        if len(out) >= n:
            break
        nxt = max(nxt, b + 1)
    return out


def announced_ranges(event: dict[str, Any]) -> list[tuple[int, int]]:
    """Seq ranges an event announces as never to be delivered (drops, losses, seqs skipped by a jump)."""
    out: list[tuple[int, int]] = []

    def as_int(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    first, last = as_int(event.get("first_seq")), as_int(event.get("last_seq"))
    if str(event.get("kind", "")).endswith("seq_jump"):
        nxt = as_int(event.get("next_seq"))
        if last is not None and nxt is not None:
            out.append((last + 1, nxt - 1))
        if first is not None and last is not None and as_int(event.get("lost")):
            out.append((first, last))
    elif first is not None and last is not None:
        out.append((first, last))
    for key in ("ranges", "lost_ranges", "seq_ranges"):
        for item in event.get(key) or []:
            if isinstance(item, list | tuple) and len(item) == 2 and all(as_int(x) is not None for x in item):
                out.append((int(item[0]), int(item[1])))
            elif isinstance(item, dict) and (a := as_int(item.get("first_seq"))) is not None:
                out.append((a, as_int(item.get("last_seq")) or a))
    return out


def announced_count(event: dict[str, Any]) -> int:
    """Readings an event says were dropped or lost."""
    n = 0
    for key in ("dropped", "lost"):
        v = event.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            n += v
    return n


def sim_device(dev_id: str, interval: str, profile: str = "energy-meter", **extra: Any) -> str:
    """A sim-driver device (flow style, one line of the devices list)."""
    parts = [f"id: {dev_id}", "driver: sim", f"profile: {SIM_PROFILES / (profile + '.yaml')}",
             f"poll_interval: {interval}"] + [f"{k}: {v}" for k, v in extra.items()]
    return "  - {" + ", ".join(parts) + "}\n"


# -- the gateway process ----------------------------------------------------------------------------

class GatewayProcess:
    """``fieldgate run -c CONFIG`` as a child process in its own session, stderr appended to ``log``."""

    def __init__(self, config: Path, log: Path, ready: Path) -> None:
        self.config, self.log, self.ready = config, log, ready
        ready.unlink(missing_ok=True)
        self.started_wall = time.time()
        with log.open("ab") as f:
            self.popen = subprocess.Popen(
                [PY, "-m", "fieldgate.cli", "run", "-c", str(config), "--ready-file", str(ready)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f, cwd=config.parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_limit_memory,  # noqa: PLW1509
                start_new_session=True,  # a Ctrl-C of the runner reaches the runner, which stops us in order
            )
        self.expected_exit = False

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` if the process still runs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)

    def kill(self) -> int:
        """SIGKILL and reap."""
        self.expected_exit = True
        self.signal(signal.SIGKILL)
        return self.popen.wait(30)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM; the exit status, or None if it did not exit within ``timeout`` (then it is killed)."""
        self.expected_exit = True
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(30)
            return None


# -- one row ----------------------------------------------------------------------------------------

class Run:
    """The context of one fault: folder, broker, subscriber, gateway, and the row being filled in.

    Args:
        name: the row name.
        folder: this row's folder (removed by the campaign unless --keep).
        rng: this row's random source (derived from the campaign seed and the row name).
        short: the short form.
        stack: cleanups, run in reverse order when the row ends (also on Ctrl-C and on errors).
    """

    def __init__(self, name: str, folder: Path, rng: random.Random, short: bool, stack: contextlib.ExitStack) -> None:
        self.row = Row(name)
        self.folder, self.rng, self.short, self.stack = folder, rng, short, stack
        self.data_dir = folder / "data"
        self.config_path = folder / "fieldgate.yaml"
        self.log_path = folder / "gateway.log"
        self.broker = Mosquitto(folder / "mosquitto", extra_config=BROKER_PERSISTENCE)
        self.broker.start()
        stack.callback(self._stop_broker)
        self.collector = Collector(self.broker.host, self.broker.port, topic="#", client_id=f"faults-{name[:20]}-sub")
        self.collector.connect()
        stack.callback(self.collector.disconnect)
        self.web_port = free_port()
        self.gw: GatewayProcess | None = None
        self.devices_yaml = ""
        self.mqtt_extra = ""
        self.buffer_extra = ""  # the buffer section's keys (default: flush_interval: 50ms)
        self.sections_extra = ""  # more top-level sections (one per line), e.g. ``commands: {...}``
        # Where delivered readings are counted: the subscriber's JSON readings unless a row (Sparkplug)
        # counts them elsewhere; each item needs "seq" and "ts".
        self.readings_source: Callable[[], list[dict[str, Any]]] | None = None
        self.max_seq_seen = 0
        self.fault_times: list[tuple[int, str]] = []  # (wall ms, what): evidence for missing seqs
        # (wall ms at a gateway start, highest seq delivered before it, highest seq known handed out before it)
        self.marks: list[tuple[int, int, int]] = []
        self.extra_tracebacks = 0
        self.settled = False
        self.settle_timeout = 90.0 if short else 240.0
        stack.callback(self._stop_gateway_at_exit)

    # -- configuration --

    def config_text(self, devices: str | None = None, prefix: str = "fieldgate", mqtt_extra: str | None = None,
                    buffer_extra: str | None = None, web_port: int | None = None) -> str:
        """The gateway's configuration (the row's devices unless given)."""
        devs = self.devices_yaml if devices is None else devices
        mx = self.mqtt_extra if mqtt_extra is None else mqtt_extra
        bx = self.buffer_extra if buffer_extra is None else buffer_extra
        return (
            f"gateway: {{id: {GW_ID}, data_dir: {self.data_dir}, clock_check: off, shutdown_timeout: 5s}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {self.broker.port}, client_id: fieldgate-faults, topic_prefix: {prefix}, "
            f"reconnect_min: 0.05s, reconnect_max: 0.5s{mx}}}\n"
            f"buffer: {{{bx or 'flush_interval: 50ms'}}}\n"
            f"web: {{listen: '127.0.0.1:{web_port or self.web_port}'}}\n"
            + self.sections_extra + "devices:\n" + devs
        )

    def write_config(self, text: str | None = None) -> None:
        """Write the configuration file atomically (a reload must never read half a file)."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.config_text() if text is None else text)
        os.replace(tmp, self.config_path)

    # -- the broker --

    def _stop_broker(self) -> None:
        with contextlib.suppress(Exception):
            self.broker.stop()

    def broker_up(self) -> None:
        """Start the broker if it is down."""
        if not self.broker.running:
            self.broker.start()

    # -- the gateway --

    def start_gateway(self, wait_ready: bool = True, attempts: int = 3) -> GatewayProcess:
        """Start the gateway (as systemd would: restarted if it dies at start, up to ``attempts`` times).

        Raises:
            GaveUp: it did not start after ``attempts`` tries (counted as a manual action).
        """
        if not self.config_path.exists():
            self.write_config()
        for attempt in range(attempts):
            delivered = max(self._delivered_seqs(), default=0)
            self.marks.append((int(time.time() * 1000), delivered, max(delivered, self.max_seq_seen)))
            gw = GatewayProcess(self.config_path, self.log_path, self.folder / "ready")
            self.gw = gw
            if not wait_ready:
                return gw
            if wait_until(lambda: gw.ready.exists() or not gw.alive(), 60.0) and gw.alive():  # noqa: B023
                return gw
            if gw.alive():
                self.row.hangs += 1
                self.row.note(f"gateway not ready within 60 s (start {attempt + 1})")
                gw.kill()
            else:
                self.row.manual += 1
                self.row.note(f"gateway exited at start with status {gw.popen.returncode}: "
                              f"{self.log_tail(3)}")
        raise GaveUp(f"the gateway did not start in {attempts} attempts")

    def check_alive(self) -> None:
        """A gateway that died by itself is a manual action (systemd would crash-loop it); it is restarted."""
        gw = self.gw
        if gw is not None and not gw.alive() and not gw.expected_exit:
            self.row.manual += 1
            self.row.note(f"gateway exited by itself with status {gw.popen.returncode}: {self.log_tail(3)}")
            self.start_gateway()

    def mark(self, what: str) -> None:
        """Remember when a fault was injected (printed beside missing seqs)."""
        self.fault_times.append((int(time.time() * 1000), what))

    def kill_gateway(self) -> None:
        """SIGKILL the gateway (a power cut or the OOM killer)."""
        if self.gw is not None:
            self.mark("gateway SIGKILL")
            self.check_alive_quiet()
            self.gw.kill()

    def check_alive_quiet(self) -> None:
        """Like :meth:`check_alive`, without the restart (before a kill, to tell a crash from our kill)."""
        gw = self.gw
        if gw is not None and not gw.alive() and not gw.expected_exit:
            self.row.manual += 1
            self.row.note(f"gateway exited by itself with status {gw.popen.returncode}: {self.log_tail(3)}")
            gw.expected_exit = True

    def stop_gateway(self) -> None:
        """SIGTERM with a deadline (the configured shutdown_timeout plus a margin for a busy machine)."""
        gw = self.gw
        if gw is None:
            return
        self.check_alive_quiet()
        if gw.alive():
            rc = gw.terminate(30.0)
            if rc is None:
                self.row.hangs += 1
                self.row.note("gateway did not stop within 30 s of SIGTERM (killed)")
            elif rc != 0:
                self.row.note(f"gateway exited with status {rc} after SIGTERM")
        self.gw = None

    def _stop_gateway_at_exit(self) -> None:
        if self.gw is not None and self.gw.alive():
            self.gw.kill()

    def sighup(self) -> None:
        """Ask the gateway to reload."""
        if self.gw is not None:
            self.gw.signal(signal.SIGHUP)

    def log_text(self) -> str:
        """The gateway's log of this row (every start)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int) -> str:
        """The last ``n`` log lines, joined."""
        return " | ".join(line.strip()[:200] for line in self.log_text().splitlines()[-n:])

    # -- the status API --

    def api(self, path: str, timeout: float = 3.0) -> dict[str, Any] | None:
        """GET the status API (None when it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=timeout) as resp:
                doc: dict[str, Any] = json.loads(resp.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        buf = doc.get("buffer") if isinstance(doc, dict) else None
        if isinstance(buf, dict) and isinstance(buf.get("last_seq"), int):
            self.max_seq_seen = max(self.max_seq_seen, buf["last_seq"])
        return doc

    def status(self) -> dict[str, Any] | None:
        """``/api/v1/status``."""
        return self.api("/api/v1/status")

    def devices(self) -> dict[str, dict[str, Any]]:
        """``/api/v1/devices`` by id (empty when it does not answer)."""
        doc = self.api("/api/v1/devices")
        return {d["id"]: d for d in (doc or {}).get("devices", [])}

    def buffer_figure(self, key: str) -> Any:
        """One figure of the buffer from the status API (None when it does not answer)."""
        s = self.status()
        return (s.get("buffer") or {}).get(key) if s else None

    # -- what the subscriber saw --

    def _delivered_seqs(self) -> set[int]:
        return {r["seq"] for r in self._readings() if isinstance(r.get("seq"), int)}

    def _readings(self) -> list[dict[str, Any]]:
        if self.readings_source is not None:
            return self.readings_source()
        try:
            return self.collector.readings()
        except AssertionError:
            return []

    def events(self) -> list[dict[str, Any]]:
        """Every event seen on any ``.../events`` topic."""
        out = []
        for m in self.collector.on("/events"):
            with contextlib.suppress(AssertionError):
                out.append(m.json())
        return out

    def readings_count(self) -> int:
        """Readings received so far (duplicates included)."""
        return len(self._readings())

    def wait_readings(self, more: int, timeout: float, what: str) -> bool:
        """Wait for ``more`` readings beyond those seen now; a timeout counts as a hang."""
        target = self.readings_count() + more
        if wait_until(lambda: self.readings_count() >= target, timeout):
            return True
        self.row.hangs += 1
        self.row.note(f"hang: {what}: fewer than {more} new readings within {timeout:g} s")
        return False

    def wait_event(self, kinds: tuple[str, ...], after: int, timeout: float, what: str,
                   hang: bool = True) -> dict[str, Any] | None:
        """The first event of one of ``kinds`` beyond the first ``after`` events; a timeout counts as a hang."""
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events()[after:] if e.get("kind") in kinds), None)

        found = wait_until(find, timeout)
        if not found and hang:
            self.row.hangs += 1
            self.row.note(f"hang: {what}: no {'/'.join(kinds)} event within {timeout:g} s")
        return found  # type: ignore[no-any-return]

    # -- settling and accounting --

    def settle(self) -> None:
        """Broker up, gateway up, backlog drained, fresh readings flowing; then stop the gateway."""
        self.settled = True
        self.broker_up()
        if self.gw is None or not self.gw.alive():
            self.check_alive_quiet()
            self.start_gateway()
        self.collector.wait_connected(30)

        # Devices keep producing, so the buffer is never empty: the backlog is drained when the oldest
        # reading waiting is a few seconds old (what is left is live data in flight).
        def drained() -> bool:
            s = self.status()
            if not s:
                return False
            b, u = s.get("buffer") or {}, s.get("uplink") or {}
            age = b.get("oldest_age_s")
            return u.get("state") == "connected" and (b.get("depth") == 0 or (age is not None and age <= 5.0))

        if not wait_until(drained, self.settle_timeout, step=0.25):
            s = self.status()
            self.row.hangs += 1
            self.row.note(f"hang: backlog not drained within {self.settle_timeout:g} s: "
                          f"buffer={json.dumps((s or {}).get('buffer'))} uplink state="
                          f"{((s or {}).get('uplink') or {}).get('state')}")
        self.wait_readings(10, 30, "live readings after the fault")
        self.check_alive()
        self.stop_gateway()
        with contextlib.suppress(AssertionError):
            self.collector.sync(30)

    def db_last_seq(self) -> int:
        """The highest seq in the buffer file (read after the gateway stopped)."""
        db = self.data_dir / "buffer.db"
        if not db.exists():
            return 0
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        except sqlite3.Error:
            return 0
        return int(row[0]) if row else 0

    def db_pending(self) -> set[int]:
        """Seqs still in the buffer file after the stop: durable, sent at the next start, not lost."""
        db = self.data_dir / "buffer.db"
        if not db.exists():
            return set()
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                return {int(r[0]) for r in conn.execute("SELECT seq FROM readings")}
        except sqlite3.Error:
            return set()

    def account(self) -> None:
        """Fill in the row's figures from the subscriber, the events, the buffer file and the log."""
        readings = self._readings()
        seqs = [r["seq"] for r in readings if isinstance(r.get("seq"), int)]
        distinct = set(seqs)
        events = self.events()
        ranges = []
        for e in events:
            for a, b in announced_ranges(e):
                if str(e.get("kind", "")).endswith("seq_jump"):
                    # A jump skips seqs never handed out; it cannot announce the loss of seqs that were
                    # (a database rolled back or replaced): those need a loss event with their range.
                    nxt = b + 1
                    known = max([h for _, _, h in self.marks if h < nxt], default=0)
                    a = max(a, known + 1)
                ranges.append((a, b))
        r = self.row
        r.produced = max([self.max_seq_seen, self.db_last_seq(), *distinct])
        r.delivered = len(distinct)
        r.dups = len(seqs) - len(distinct)
        r.drops = sum(announced_count(e) for e in events)
        pending = self.db_pending()
        if pending:
            r.note(f"{len(pending)} reading(s) still in the buffer file after the stop (durable; not counted missing)")
        covered = count_covered(distinct | pending, ranges, r.produced)
        r.missing = r.produced - covered
        if r.missing:
            first = first_gaps(distinct | pending, ranges, r.produced, 8)
            r.note(f"missing seqs, e.g. {first} (announced ranges: {ranges[:6]})")
            by_seq = {rd["seq"]: ts_ms(rd.get("ts", "")) for rd in readings if isinstance(rd.get("seq"), int)}
            for s in first[:4]:
                near = [by_seq[k] for k in (s - 1, s + 1, s - 2, s + 2) if k in by_seq]
                if near and self.fault_times:
                    t = near[0]
                    at, what = min(self.fault_times, key=lambda ft: abs(ft[0] - t))
                    r.note(f"seq {s}: its neighbour was measured {t - at:+d} ms from a {what}")
        reused = [v for v in self.collector.order_violations() if "reused" in v]
        # The contract: a seq is never handed out twice. A reading measured after a start must have a seq
        # above every seq handed out before it (delivered, or seen in the gateway's own last_seq).
        for mark_ms, _delivered, known in self.marks:
            for rd in readings:
                if ts_ms(rd.get("ts", "")) >= mark_ms and isinstance(rd.get("seq"), int) and rd["seq"] <= known:
                    reused.append(f"seq {rd['seq']} measured after a start, not above {known} handed out before")
        r.reused = len(reused)
        if reused:
            r.note(f"seq reuse: {reused[0][:200]}")
        log = self.log_text()
        r.tb = log.count("Traceback") + self.extra_tracebacks
        if log.count("Traceback"):
            i = log.index("Traceback")
            r.note("traceback in the gateway log: " + " | ".join(log[i:].splitlines()[-1:] + log[i:].splitlines()[1:4]))
        kinds: dict[str, int] = {}
        for e in events:
            kinds[str(e.get("kind"))] = kinds.get(str(e.get("kind")), 0) + 1
        r.note("events: " + ", ".join(f"{k}x{n}" for k, n in sorted(kinds.items())))


# -- the faults -------------------------------------------------------------------------------------

def _sims(n: int, interval: str) -> str:
    return "".join(sim_device(f"s{i}", interval) for i in range(n))


@fault("broker kill -9")
def broker_kill(run: Run) -> None:
    """The broker killed many times, at random moments, for random lengths."""
    run.devices_yaml = _sims(3, "50ms")
    run.start_gateway()
    run.wait_readings(20, 30, "first readings")
    n = 4 if run.short else 15
    downs = []
    for _ in range(n):
        pause(run.rng, 0.3, 2.5)
        run.mark("broker kill -9")
        run.broker.kill()
        downs.append(pause(run.rng, 0.1, 3.0 if run.short else 8.0))
        run.broker.start()
        run.check_alive()
    run.row.note(f"{n} broker kills, down {min(downs):.1f}-{max(downs):.1f} s")


@fault("gateway SIGKILL")
def gateway_kill(run: Run) -> None:
    """The gateway killed at random moments: startup, running, outage, SIGHUP reload, backlog drain."""
    run.devices_yaml = _sims(3, "50ms")  # 60 readings/s: see _damage
    n = 8 if run.short else 20
    phases = ["startup", "running", "outage", "reload", "drain"]
    done: dict[str, int] = {}
    for i in range(n):
        phase = phases[i % len(phases)]
        done[phase] = done.get(phase, 0) + 1
        if phase == "startup":
            run.start_gateway(wait_ready=False)
            pause(run.rng, 0.05, 2.0)
        elif phase == "running":
            run.start_gateway()
            pause(run.rng, 0.0, 1.0)
        elif phase == "outage":
            run.broker.stop()
            run.start_gateway()
            pause(run.rng, 0.2, 1.5)
        elif phase == "reload":
            run.start_gateway()
            run.sighup()
            pause(run.rng, 0.0, 0.3)
        else:
            run.broker.stop()
            run.start_gateway()
            wait_until(lambda: (run.buffer_figure("depth") or 0) > 300, 30)  # a backlog to drain
            run.broker.start()
            wait_until(lambda: ((run.status() or {}).get("uplink") or {}).get("acked", 0) > 0, 20)
            pause(run.rng, 0.0, 0.3)
        run.kill_gateway()
        run.broker_up()
    run.row.note("kills by phase: " + ", ".join(f"{k} {v}" for k, v in done.items()))


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small filesystem (tmpfs, needs root); raises Skip when it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Skip(f"cannot mount a tmpfs ({done.stderr.strip() or 'mount failed'}); run as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@fault("disk full (20 MB tmpfs)")
def disk_full(run: Run) -> None:
    """A full disk with the broker away, then the broker back, then space freed."""
    small = run.stack.enter_context(tmpfs(run.folder / "small", "20m"))
    run.data_dir = small / "data"
    run.devices_yaml = _sims(4, "20ms")
    run.buffer_extra = "flush_interval: 50ms, spill_max: 2000, max_bytes: 1GB"
    run.broker.stop()
    run.start_gateway()
    # Most of the disk goes to a filler file (the rest of the site's data), so the buffer fills it in seconds.
    filler = small / "filler"
    wait_until((run.data_dir / "buffer.db").exists, 20)
    spare = _free_bytes(small) - 2 * 1024 * 1024
    with filler.open("wb") as f:
        while spare > 0:
            chunk = min(spare, 1 << 20)
            try:
                f.write(b"\0" * chunk)
                f.flush()
            except OSError:
                break
            spare -= chunk
    if not wait_until(lambda: run.buffer_figure("disk_full") is True, 120, step=0.25):
        run.row.hangs += 1
        run.row.note("hang: the buffer never reported disk_full within 120 s")
    full_status = run.status() or {}
    depth_full = (full_status.get("buffer") or {}).get("depth") or 0
    run.row.note(f"disk full: buffer depth {depth_full}, free {_free_bytes(small) // 1024} KiB")
    seq_at_return = run.max_seq_seen
    run.broker.start()

    def recovered() -> bool:
        b = (run.status() or {}).get("buffer") or {}
        return b.get("disk_full") is False and (b.get("depth") or 0) < max(1, depth_full // 2) \
            and max(run._delivered_seqs(), default=0) > seq_at_return

    if not wait_until(recovered, 60 if run.short else 120, step=0.25):
        b = (run.status() or {}).get("buffer") or {}
        run.row.manual += 1
        run.row.note(f"stuck after the broker returned: disk_full={b.get('disk_full')} depth={b.get('depth')} "
                     f"spilled={b.get('spilled')} free={_free_bytes(small) // 1024} KiB; "
                     "a person had to free space (the runner deleted the filler)")
    else:
        run.row.note(f"recovered without help; free {_free_bytes(small) // 1024} KiB")
    filler.unlink(missing_ok=True)
    run.settle()


DAMAGES = ("truncated", "random bytes", "WAL deleted", "seq.hwm junk", "seq.hwm 2^63", "seq.hwm near 2^63")


def _damage(run: Run, kind: str) -> None:
    # 60 readings/s: a backlog in seconds, and a drain that outruns production on a busy machine
    # (the campaign is about faults; bench/pipeline.py measures throughput).
    run.devices_yaml = _sims(3, "50ms")
    run.start_gateway()
    run.wait_readings(20, 30, "first readings")
    run.broker.stop()
    wait_until(lambda: (run.buffer_figure("depth") or 0) > 800, 60)
    before = run.status() or {}
    depth = (before.get("buffer") or {}).get("depth") or 0
    if kind == "WAL deleted":
        run.kill_gateway()  # the WAL keeps its uncheckpointed commits: an SD card losing its last writes
    else:
        run.stop_gateway()
    delivered_before = run._delivered_seqs()
    top_before = max(delivered_before, default=0)
    assigned_before = max(run.max_seq_seen, run.db_last_seq() if kind != "WAL deleted" else 0)
    db = run.data_dir / "buffer.db"
    hwm = run.data_dir / "seq.hwm"
    size = db.stat().st_size if db.exists() else 0
    if kind == "truncated":
        with db.open("r+b") as f:
            f.truncate(size // 2)
    elif kind == "random bytes":
        with db.open("r+b") as f:
            f.seek((size // 2) // 4096 * 4096)
            f.write(run.rng.randbytes(8192))
    elif kind == "WAL deleted":
        wal = db.with_name("buffer.db-wal")
        run.row.note(f"WAL of {wal.stat().st_size if wal.exists() else 0} bytes deleted")
        wal.unlink(missing_ok=True)
        db.with_name("buffer.db-shm").unlink(missing_ok=True)
    elif kind == "seq.hwm junk":
        hwm.write_bytes(run.rng.randbytes(12))
    elif kind == "seq.hwm 2^63":
        hwm.write_text(f"{2**63}\n")
    else:
        hwm.write_text(f"{HWM_MAX - 50}\n")
    n_events = len(run.events())
    run.broker.start()
    try:
        run.start_gateway()
    except GaveUp:
        run.row.note("the gateway would not start on the damaged files")
        raise
    announced = run.wait_event(("buffer_corrupt", "buffer_seq_jump", "buffer_damaged", "buffer_lost",
                                "buffer_seq_reset", "buffer_hwm_damaged"), n_events, 20, "the damage announced",
                               hang=False)
    if not announced:  # the gateway runs but says nothing: unnamed, not a hang
        run.row.unnamed += 1
        run.row.note(f"{kind}: no event announced the damage")
    if kind in ("truncated", "random bytes"):
        aside = list(run.data_dir.glob("buffer.db.corrupt-*"))
        if not aside:
            run.row.unnamed += 1
            run.row.note("the damaged database was not moved aside")
    restart_ms = run.marks[-1][0] if run.marks else 0
    run.settle()
    # Backlog kept: readings of the old backlog (measured before the restart) delivered after it.
    after = {rd["seq"] for rd in run._readings() if isinstance(rd.get("seq"), int)
             and ts_ms(rd.get("ts", "")) < restart_ms}
    backlog = set(range(top_before + 1, assigned_before + 1))
    kept = len(backlog & after)
    run.row.note(f"backlog before the damage: {depth} readings (seqs {top_before + 1}..{assigned_before}), "
                 f"kept {kept} ({100 * kept / max(1, len(backlog)):.0f} %)")


for _kind in DAMAGES:
    def _make(kind: str) -> Callable[[Run], None]:
        def fn(run: Run) -> None:
            _damage(run, kind)
        fn.__doc__ = f"Buffer file damage while stopped: {kind}."
        return fn
    fault(f"damage: {_kind}", short=_kind in ("truncated", "random bytes", "WAL deleted", "seq.hwm junk"))(_make(_kind))


@fault("reload: invalid config")
def reload_invalid(run: Run) -> None:
    """SIGHUP with a broken configuration: refused, announced, the gateway goes on."""
    run.devices_yaml = _sims(2, "50ms")
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    good = run.config_text()
    broken = [
        good.replace("driver: sim", "driver: simm", 1),
        good + "  - {id: s0, driver: sim}\n",
        good.replace("devices:", "devices: [", 1),
        "\t" + good,
    ]
    for text in broken:
        n = len(run.events())
        run.write_config(text)
        run.sighup()
        run.wait_event(("config_rejected",), n, 15, "invalid reload answered")
        run.wait_readings(10, 20, "readings after a refused reload")
    run.write_config(good)
    n = len(run.events())
    run.sighup()
    run.wait_event(("config_reloaded",), n, 15, "good reload answered")


@fault("reload: mqtt/buffer/web changed")
def reload_changes(run: Run) -> None:
    """A reload that changes the MQTT section (topic_prefix), the buffer and the status page address."""
    run.devices_yaml = _sims(2, "50ms")
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    n = len(run.events())
    new_web = free_port()
    run.write_config(run.config_text(prefix="fieldgate2", buffer_extra="flush_interval: 100ms, max_bytes: 100MB",
                                     web_port=new_web))
    log_before = len(run.log_text())
    run.sighup()
    run.wait_event(("config_reloaded", "config_rejected"), n, 15, "reload answered")
    moved = wait_until(lambda: any(m.topic.startswith("fieldgate2/") and m.topic.endswith("/reading")
                                   for m in run.collector.messages), 20)
    log_after = run.log_text()[log_before:]
    restart_named = re.findall(r"[^\n]*(?:after (?:a )?restart|restart to apply|takes effect)[^\n]*", log_after)
    events_after = run.events()[n:]
    ev_restart = [e for e in events_after if "restart" in json.dumps(e)]
    if not moved:
        if any("topic_prefix" in line or "mqtt" in line for line in restart_named) or \
                any("topic_prefix" in json.dumps(e) for e in ev_restart):
            run.row.note("topic_prefix change named as needing a restart")
        else:
            run.row.unnamed += 1
            run.row.note("topic_prefix changed: readings stay on the old prefix, and nothing says a restart is needed")
    for what in ("buffer", "web"):
        named = any(what in line for line in restart_named) or any(what in json.dumps(e) for e in ev_restart)
        applied = what == "web" and wait_until(
            lambda: _port_open(new_web), 5)
        if not (named or applied):
            run.row.unnamed += 1
            run.row.note(f"{what}.* changed on reload: neither applied nor named as taking effect after a restart")
    if wait_until(lambda: _port_open(new_web), 1):
        run.web_port = new_web


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class AsyncThread:
    """An event loop in a thread for the simulated peers the runner itself serves (Modbus, CoAP)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="faults-peers", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine in the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what runs, stop and close the loop."""
        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(_cancel_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# What the technician must read for each hostile Modbus peer (the driver's error text).
MODBUS_NAMES = {
    "junk": r"junk|garbage|malformed|invalid|unexpected|protocol|frame|header|length",
    "slowloris": r"timeout|no answer|incomplete|partial|slow|within",
    "wrong-unit": r"unit",
    "wrong-tid": r"transaction",
    "bad-length": r"length",
    "wrong-fc": r"function",
    "exception": r"exception|illegal",
}


def _schedule(run: Run, healthy: dict[str, float], window: float) -> None:
    """Poll counts of healthy devices over ``window`` seconds against their schedule (≥ 80 %)."""
    start = {k: (v.get("polls") or 0) for k, v in run.devices().items()}
    t0 = time.monotonic()
    down = 0
    while time.monotonic() - t0 < window:
        if run.status() is None:
            down += 1
            if down == 3:
                run.row.hangs += 1
                run.row.note("hang: the status API did not answer 3 times in a row")
        else:
            down = 0
        run.check_alive()
        time.sleep(1.0)  # the sampling period of the liveness check, not a synchronization
    elapsed = time.monotonic() - t0
    end = run.devices()
    for dev, interval in healthy.items():
        polls = (end.get(dev, {}).get("polls") or 0) - start.get(dev, 0)
        expected = elapsed / interval
        ok = polls >= 0.8 * expected
        run.row.note(f"healthy {dev}: {polls} polls in {elapsed:.0f} s, expected ~{expected:.0f} "
                     f"({100 * polls / max(1.0, expected):.0f} %), state {end.get(dev, {}).get('state')}")
        if not ok:
            run.row.late += 1


@fault("hostile Modbus TCP peers")
def hostile_modbus(run: Run) -> None:
    """Junk, slow-loris, wrong unit id, wrong transaction id, bad length, wrong function, exception codes."""
    from fieldgate_hwsim.hostile import HostileModbus
    from fieldgate_hwsim.modbus_sim import serve_tcp

    peers = AsyncThread()
    run.stack.callback(peers.close)
    modes = ["junk", "slowloris", "wrong-unit", "wrong-tid", "bad-length", "wrong-fc", "exception"]
    servers = {m: HostileModbus(m, seed=run.rng.randrange(1 << 30)) for m in modes}
    ports = {m: peers.run(s.start()) for m, s in servers.items()}
    sim, sim_port = peers.run(serve_tcp("eastron/sdm120", [1]))
    run.stack.callback(peers.run, sim.stop(), 10)
    for s in servers.values():
        run.stack.callback(peers.run, s.stop(), 10)

    def mb(dev: str, port: int) -> str:
        return (f"  - {{id: {dev}, driver: modbus, profile: eastron/sdm120, poll_interval: 500ms, "
                f"connection: {{host: 127.0.0.1, port: {port}, unit: 1, timeout: 400ms, retries: 0}}}}\n")

    run.devices_yaml = _sims(2, "100ms") + mb("mb-ok", sim_port) + "".join(mb(f"mb-{m}", p) for m, p in ports.items())
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    _schedule(run, {"s0": 0.1, "s1": 0.1, "mb-ok": 0.5}, 15 if run.short else 60)
    devs = run.devices()
    for m in modes:
        _judge_modbus_error(run, f"mb-{m}", devs.get(f"mb-{m}", {}), MODBUS_NAMES[m], m == "slowloris",
                            f"{servers[m].requests} requests, ")


def _judge_modbus_error(run: Run, dev: str, d: dict[str, Any], names: str, may_time_out: bool, extra: str = "") -> None:
    """Whether a faulty Modbus device's ``last_error`` names its fault (``names``, a regular expression)."""
    err = str(d.get("last_error") or "")
    # What names the fault is the cause, not the preamble every error has ("unit 1 on tcp:host:port:")
    # nor the hint; and a protocol fault reported as "no answer" is not named, whatever the hint says.
    cause = re.sub(r"\(hint:.*", "", re.sub(r"^unit \d+ on \S+:\s*", "", err))
    generic = re.search(r"no answer|timed? ?out", cause, re.I) is not None
    named = bool(cause) and re.search(names, cause, re.I) is not None and (may_time_out or not generic)
    if not named:
        run.row.unnamed += 1
    run.row.note(f"{dev}: {'named' if named else 'NOT NAMED'}: state {d.get('state')}, {extra}error {err[:140]!r}")


@fault("hostile CoAP datagrams")
def hostile_coap(run: Run) -> None:
    """Random, oversized and malformed datagrams, CBOR and SenML, beside healthy pushing devices."""
    from fieldgate_hwsim.coap_hostile import KINDS, HostileReport, send_hostile
    from fieldgate_hwsim.coap_sim import SleepyDevice, free_udp_port, load_coap_profile

    peers = AsyncThread()
    run.stack.callback(peers.close)
    port = free_udp_port()

    def push(dev: str, prof: str) -> str:
        return (f"  - {{id: {dev}, driver: coap, profile: {prof}, connection: {{mode: push, "
                f"listen: '127.0.0.1:{port}', path: /t/{dev}, rate_limit: {{rate: 1000, burst: 1000}}}}}}\n")

    run.devices_yaml = _sims(2, "100ms") + push("bin-1", "dragino/ndds75") + push("senml-1", "generic/senml")
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    rounds = 2 if run.short else 10
    pushes = 20 if run.short else 100

    async def healthy() -> tuple[int, int, list[str]]:
        async with SleepyDevice(("127.0.0.1", port), "/t/bin-1", load_coap_profile("dragino/ndds75"),
                                seed=run.rng.randrange(1 << 30), ack_timeout=1.0, max_retransmit=3) as dev:
            codes: list[str] = []
            fails = 0
            for _ in range(pushes):
                try:
                    codes.append(await dev.push())
                except TimeoutError:
                    fails += 1
                await asyncio.sleep(0.25)  # the device's own reporting interval
            return dev.sent, fails, codes

    async def hostile() -> HostileReport:
        # every kind ``rounds`` times, shuffled per round, each waiting up to 0.5 s for its answer
        return await send_hostile("127.0.0.1", port, rounds * len(KINDS), path="/t/senml-1",
                                  seed=run.rng.randrange(1 << 30), wait=0.5)

    async def both() -> tuple[Any, Any]:
        return await asyncio.gather(healthy(), hostile())

    polls_before = {k: (v.get("polls") or 0) for k, v in run.devices().items()}
    (sent, fails, codes), answers = peers.run(both(), timeout=600)
    ok = sum(1 for c in codes if c.startswith("2."))
    run.row.note(f"healthy pusher: {ok}/{pushes} reports answered 2.xx, {fails} unanswered after retransmissions "
                 f"({sent} datagrams)")
    if ok < pushes:
        run.row.late += pushes - ok
    summary: dict[str, int] = {}
    for counts in answers.answers.values():
        for code, n in counts.items():
            summary[code] = summary.get(code, 0) + n
    run.row.note(f"answers to {answers.total} hostile datagrams ({len(KINDS)} kinds): "
                 + ", ".join(f"{c}x{n}" for c, n in sorted(summary.items())))
    # a request whose header, message ID and token can be read is due an answer (RFC 7252 4.2)
    silent_valid = sorted(k for k, due in KINDS.items() if due and answers.answers.get(k, {}).get("none"))
    if silent_valid:
        run.row.note(f"well-framed hostile requests left unanswered: {', '.join(silent_valid[:10])}")
    devs = run.devices()
    for dev in ("bin-1", "senml-1"):
        err = str(devs.get(dev, {}).get("last_error") or "")
        if re.search(r"driver bug|isolated|Traceback|Error:", err):
            run.row.unnamed += 1
            run.row.note(f"{dev}: a hostile packet became a driver failure: {err[:160]!r}")
        else:
            run.row.note(f"{dev}: state {devs.get(dev, {}).get('state')}, last error {err[:120]!r}")
    for dev in ("s0", "s1"):
        run.row.note(f"healthy {dev}: {(devs.get(dev, {}).get('polls') or 0) - polls_before.get(dev, 0)} polls "
                     "during the datagrams")


# -- hostile configuration and profile files ---------------------------------------------------------

GOOD_PROFILE = (SIM_PROFILES / "energy-meter.yaml").read_text() if (SIM_PROFILES / "energy-meter.yaml").exists() else ""


def builtin_hostile_files(good_config: str) -> list[tuple[str, bytes]]:
    """A small fixed set of hostile YAML files (used when fieldgate_hwsim.hostile_files is not installed)."""
    laughs = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
    files: list[tuple[str, bytes]] = [
        ("billion-laughs", (laughs + good_config).encode()),
        ("billion-laughs-in-devices", (good_config.replace("devices:\n", "devices:\n" + "".join(
            f"  - &d{i} [{', '.join([f'*d{i - 1}'] * 9) if i else 'x'}]\n" for i in range(10)), 1)).encode()),
        ("self-alias", b"a: &a [*a]\n" + good_config.encode()),
        ("self-alias-mapping", b"gateway: &g {id: x, loop: *g}\n"),
        ("merge-key-loop", b"base: &b {<<: *b}\ngateway: {<<: *b}\n"),
        ("non-utf8", good_config.encode().replace(b"gw-f", b"gw-\xff\xfe", 1)),
        ("utf16-bom", good_config.encode("utf-16")),
        ("binary-junk", random.Random(5).randbytes(4096)),
        ("nul-bytes", good_config.encode().replace(b"\n", b"\n\0", 3)),
        ("huge-int", good_config.replace("poll_interval: 50ms", "poll_interval: " + "9" * 5000, 1).encode()),
        ("huge-float", good_config.replace("poll_interval: 50ms", "poll_interval: 1e999", 1).encode()),
        ("negative-interval", good_config.replace("poll_interval: 50ms", "poll_interval: -5s", 1).encode()),
        ("port-2^64", good_config.replace("port: ", "port: 18446744073709551616 #", 1).encode()),
        ("deep-nesting", b"gateway: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        ("deep-mapping", b"gateway:" + b"".join(b"\n" + b"  " * i + b"k:" for i in range(1, 2000)) + b" 1\n"),
        ("tabs", good_config.replace("  - {", "\t- {").encode()),
        ("duplicate-keys", (good_config + "gateway: {id: other}\n").encode()),
        ("type-swap-devices", good_config.split("devices:", maxsplit=1)[0].encode() + b"devices: 5\n"),
        ("type-swap-gateway", b"gateway: [1, 2, 3]\ndevices: {}\n"),
        ("unicode-ids", good_config.replace("id: s0", "id: s\u200b0\u202e", 1).encode()),
        ("python-tag", b"gateway: !!python/object/apply:os.system ['true']\n"),
        ("unknown-tag", b"gateway: !custom {id: x}\n"),
        ("empty", b""),
        ("only-document-markers", b"---\n...\n---\n"),
        ("many-documents", (good_config + "---\n" + good_config).encode()),
        ("long-line", b"gateway: {id: " + b"x" * 2_000_000 + b"}\n"),
        ("many-devices", (good_config.split("devices:", maxsplit=1)[0] + "devices:\n" + "".join(
            f"  - {{id: d{i}, driver: sim}}\n" for i in range(20000))).encode()),
        ("big-file-8MB", b"# " + b"x" * (8 * 1024 * 1024) + b"\n" + good_config.encode()),
        ("profile-laughs", (laughs.replace("a0:", "points: *a9\na0:", 1)).encode()),
        ("profile-junk-types", b"schema_version: [1]\ndriver: {sim: 1}\nvendor: 5\nmodel: null\npoints: 'x'\n"),
    ]
    if GOOD_PROFILE:
        files.append(("profile-huge-scale", GOOD_PROFILE.replace("unit:", "scale: 1e308, unit:", 1).encode()))
    return files


def mutate(rng: random.Random, text: str) -> bytes:
    """One random mutation of a valid configuration (bytes, types, unicode, numbers, anchors, tabs)."""
    ops = [
        lambda t: t.replace(rng.choice(["50ms", "127.0.0.1", "gw-f", "sim", "fieldgate"]),
                            rng.choice(["", "[]", "{}", "null", "-1", "1e999", "\u0000", "\ufeff", "é" * 300,
                                        "*nope", "&a", "!!binary AAAA", "9" * 400, "'unterminated", "\t"]), 1),
        lambda t: t[: rng.randrange(len(t))],
        lambda t: t[: (i := rng.randrange(len(t)))] + rng.choice(["\t", "  ", ":", "- ", "{", "[", "&a ", "*a ",
                                                                    "? ", "%YAML 1.1\n", "\r"]) + t[i:],
        lambda t: t + rng.choice(["gateway: {id: x}\n", "devices: []\n", "x: &x [*x]\n", "mqtt: 5\n"]),
        lambda t: t.replace(":", rng.choice([" :", "::", ""]), rng.randint(1, 3)),
    ]
    out = text
    for _ in range(rng.randint(1, 3)):
        out = rng.choice(ops)(out) or out
    data = out.encode("utf-8", "surrogatepass")
    if rng.random() < 0.15:
        i = rng.randrange(len(data) or 1)
        data = data[:i] + rng.randbytes(rng.randint(1, 16)) + data[i:]
    return data


def hostile_files(rng: random.Random, good_config: str, count: int) -> tuple[str, list[tuple[str, bytes]]]:
    """The files to throw at the loaders: the loader engineer's generator if installed, else ours."""
    try:
        import fieldgate_hwsim.hostile_files as gen  # written on another branch; used when it is there
    except ImportError:
        gen = None
    files = builtin_hostile_files(good_config)
    source = "built-in set"
    if gen is not None:
        made: list[tuple[str, bytes]] = []
        with tempfile.TemporaryDirectory(prefix="fieldgate-hostile-") as tmp:
            for fn_name in ("generate", "write_files", "write_all"):
                fn = getattr(gen, fn_name, None)
                if not callable(fn):
                    continue
                for kwargs in ({"count": count, "seed": rng.randrange(1 << 30)}, {"seed": rng.randrange(1 << 30)}, {}):
                    try:
                        fn(Path(tmp), **kwargs)
                    except TypeError:
                        continue
                    break
                made = [(p.name, p.read_bytes()) for p in sorted(Path(tmp).rglob("*")) if p.is_file()]
                if made:
                    break
        if made:
            files = made + files
            source = f"fieldgate_hwsim.hostile_files ({len(made)}) + built-in set"
        else:
            source = "built-in set (fieldgate_hwsim.hostile_files found, but no generate(dir, count=, seed=))"
    i = 0
    while len(files) < count:
        files.append((f"mutation-{i}", mutate(rng, good_config)))
        i += 1
    return source, files[: max(count, len(builtin_hostile_files(good_config)))]


def run_cli(args: list[str], timeout: float, cwd: Path) -> tuple[int | None, str, float]:
    """Run ``fieldgate ARGS``: (exit status or None on timeout, output, seconds)."""
    t0 = time.monotonic()
    try:
        done = subprocess.run([PY, "-m", "fieldgate.cli", *args], capture_output=True, timeout=timeout, cwd=cwd,
                              check=False, stdin=subprocess.DEVNULL, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return None, out.decode(errors="replace"), time.monotonic() - t0
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace"), time.monotonic() - t0


@fault("hostile config/profile files")
def hostile_config_files(run: Run) -> None:
    """Hostile configuration and profile files through validate, provision and reload."""
    run.devices_yaml = _sims(2, "50ms")
    good = run.config_text()
    count = 40 if run.short else 1000
    source, files = hostile_files(run.rng, good, count)
    n_prov = 8 if run.short else 200
    n_reload = 6 if run.short else 60
    fdir = run.folder / "hostile"
    fdir.mkdir()
    paths = []
    for i, (name, data) in enumerate(files):
        p = fdir / f"{i:04d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:40]}.yaml"
        p.write_bytes(data)
        paths.append(p)
    # What `validate` costs on a good file here and now: the 2 s budget is on top of the interpreter's start.
    run.write_config(good)
    base = statistics.median(run_cli(["validate", str(run.config_path)], 60, run.folder)[2] for _ in range(3))
    deadline = 10.0
    results: list[tuple[str, str, int | None, str, float]] = []

    def one(job: tuple[str, Path]) -> tuple[str, str, int | None, str, float]:
        what, p = job
        args = ["validate", str(p)] if what == "validate" else ["validate", "--profile", str(p)]
        rc, out, secs = run_cli(args, deadline, run.folder)
        return what, p.name, rc, out, secs

    jobs = [("validate", p) for p in paths] + [("profile", p) for p in paths if "profile" in p.name or
                                                 int(p.name[:4]) % 4 == 0]
    with ThreadPoolExecutor(2) as pool:  # two at a time: this machine has two cores
        results = list(pool.map(one, jobs))
    slow: list[str] = []
    for what, name, rc, out, secs in results:
        _judge_cli(run, f"{what} {name}", rc, out, secs, deadline, base, slow, expect_name=name)
    # provision: the boot partition's fieldgate.yaml
    for i, p in enumerate(paths[:n_prov]):
        root = run.folder / f"prov-{i}"
        boot = root / "boot" / "firmware"
        boot.mkdir(parents=True)
        (root / "etc" / "fieldgate").mkdir(parents=True)
        shutil.copy(p, boot / "fieldgate.yaml")
        rc, out, secs = run_cli(["provision", "--root", str(root)], deadline, run.folder)
        _judge_cli(run, f"provision {p.name}", rc, out, secs, deadline, base, slow, expect_name="fieldgate.yaml",
                   ok_codes=(0, 1, 3))
        if rc == 1 and not (boot / "fieldgate.yaml.errors.txt").exists():
            run.row.unnamed += 1
            run.row.note(f"provision {p.name}: refused without fieldgate.yaml.errors.txt")
    # reload: the running gateway re-reads a hostile file
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    for p in paths[:n_reload]:
        n = len(run.events())
        shutil.copy(p, run.config_path)
        run.sighup()
        got = run.wait_event(("config_rejected", "config_reloaded"), n, 15, f"reload of {p.name} answered")
        if got is None and run.status() is None:
            # The loader runs in the event loop: a gateway stuck in it answers nothing until a person restarts it.
            run.row.manual += 1
            run.row.note(f"reload {p.name}: the gateway stopped answering; a person puts the good file back "
                         "and restarts it")
            run.write_config(good)
            run.kill_gateway()
            run.start_gateway()
        run.check_alive()
        run.write_config(good)
        n = len(run.events())
        run.sighup()
        run.wait_event(("config_reloaded",), n, 15, "restoring reload answered")
    run.row.note(f"files: {source}; {len(paths)} files, {len(jobs)} validate runs, {n_prov} provision, "
                 f"{n_reload} reloads; validate of a good file takes {base:.2f} s here")
    if slow:
        run.row.note(f"{len(slow)} command(s) took over {base:.1f} + 2 s: " + "; ".join(slow[:6]))


def _judge_cli(run: Run, label: str, rc: int | None, out: str, secs: float, deadline: float, base: float,
               slow: list[str], expect_name: str, ok_codes: tuple[int, ...] = (0, 1)) -> None:
    if rc is None:
        run.row.hangs += 1
        run.row.note(f"hang: {label} did not return within {deadline:g} s")
        return
    if "Traceback" in out:
        run.extra_tracebacks += 1
        last = [line for line in out.splitlines() if line.strip()][-1:] or [""]
        run.row.note(f"traceback: {label}: {last[0][:160]}")
        return
    if rc not in ok_codes:
        run.row.unnamed += 1
        run.row.note(f"{label}: exit status {rc}: {out.strip().splitlines()[-1:]}")
        return
    if rc == 1 and expect_name not in out:
        run.row.unnamed += 1
        run.row.note(f"{label}: refused without naming the file: {out.strip()[:160]!r}")
    if secs > base + 2.0:
        slow.append(f"{label} {secs:.1f} s")


# -- commands (downlink) ----------------------------------------------------------------------------

CMD_DEVICE = "boiler"
CMD_SCHEMA = "fieldgate.command/1"


class CommandRig:
    """A commandable Modbus device (hw-sim's simulator, which records every write it applies), a sender,
    and the accounting of "at most once per id, one final result each".

    Each command writes its own value to ``counter_preset`` (an int32), so a write at the device names
    the command that made it. A command has a final result when a result without ``duplicate``
    arrived, or a repeat's answer (``duplicate: true``, the stored result, or ``unknown_outcome`` after
    a kill between the write and its result), or the audit event of its result made at a restart.
    """

    def __init__(self, run: Run, rate: str = "{rate: 50, burst: 50}", max_queued: int = 8) -> None:
        from fieldgate_hwsim.command_hostile import BOILER_PROFILE
        from fieldgate_hwsim.modbus_sim import ModbusSim, load_modbus_profile

        self.run = run
        self.peers = AsyncThread()
        run.stack.callback(self.peers.close)
        profile = run.folder / "boiler.yaml"
        profile.write_text(BOILER_PROFILE)
        self.sim = ModbusSim({1: load_modbus_profile(profile)}, animate=False)

        async def _start() -> int:
            return await self.sim.start_tcp()

        port = self.peers.run(_start())
        run.stack.callback(self.peers.run, self.sim.stop(), 10)
        run.sections_extra = (f"commands: {{enabled: true, allow: [{CMD_DEVICE}], rate: {rate}, "
                              f"max_queued: {max_queued}}}\n")
        run.devices_yaml = _sims(2, "100ms") + (
            f"  - {{id: {CMD_DEVICE}, driver: modbus, profile: {profile}, poll_interval: 2s, "
            f"connection: {{host: 127.0.0.1, port: {port}, unit: 1, timeout: 2s, retries: 0}}}}\n")
        self.sender = Collector(run.broker.host, run.broker.port, topic="nobody/here", clean_session=True,
                                client_id="faults-" + re.sub(r"[^A-Za-z0-9-]", "-", run.row.name[:20]) + "-sender")
        self.sender.connect()
        run.stack.callback(self.sender.disconnect)
        self.sent: dict[str, int] = {}  # id -> the value it writes
        self.sends: dict[str, int] = {}  # id -> how often it was published (retries included)
        self.retried = 0
        self.invalid: list[str] = []

    def fault(self, name: str | None) -> None:
        """Set (or heal) a fault of the simulated device, in its loop (its events belong to that loop)."""
        async def _set() -> None:
            self.sim.set_fault(1, name)

        self.peers.run(_set())

    # -- sending --

    def command(self, cid: str) -> dict[str, Any]:
        """The command ``cid``: it writes its own value."""
        return {"schema": CMD_SCHEMA, "id": cid, "op": "write", "metrics": {"counter_preset": self.sent[cid]}}

    def send(self, cid: str | None = None) -> str:
        """Publish a new command (or ``cid`` again: the sender's retry, same id, same payload)."""
        if cid is None:
            cid = f"c{len(self.sent) + 1}"
            self.sent[cid] = len(self.sent) + 1
        self.sends[cid] = self.sends.get(cid, 0) + 1
        try:
            self.sender.publish(f"fieldgate/{GW_ID}/{CMD_DEVICE}/cmd", self.command(cid), timeout=5)
        except AssertionError:
            pass  # the broker is down: the retry after it is back sends it again
        return cid

    def wait_sender(self) -> None:
        """The sender reconnected (after a broker kill)."""
        with contextlib.suppress(AssertionError):
            self.sender.wait_connected(30)

    # -- what arrived --

    def answers(self) -> dict[str, list[dict[str, Any]]]:
        """Result messages by id, validated against the contract (a broken one is noted once)."""
        from tests.support.contract import validate_message

        out: dict[str, list[dict[str, Any]]] = {}
        for m in self.run.collector.on("/cmd/result"):
            try:
                validate_message(m.topic, m.payload)
                res = m.json()
            except AssertionError as exc:
                text = f"{m.topic}: {str(exc)[:200]}"
                if text not in self.invalid:
                    self.invalid.append(text)
                continue
            out.setdefault(str(res.get("id")), []).append(res)
        return out

    def settled_at_restart(self) -> dict[str, dict[str, Any]]:
        """Results the gateway made at a start for commands a kill left executing (audit events)."""
        return {str(e.get("id")): e.get("result") or {} for e in self.run.events()
                if e.get("kind") == "command" and e.get("stage") == "result" and e.get("origin") == "restart"}

    def final(self, cid: str, answers: dict[str, list[dict[str, Any]]],
              restart: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """The final result of ``cid`` (see the class docstring), or None.

        A repeat's answer (``duplicate: true``) carries the stored result: when the first answer was
        lost with the connection (results are published outside the buffer), it is the final one.
        """
        mine = answers.get(cid, [])
        first = next((r for r in mine if not r.get("duplicate")), None) or next(iter(mine), None)
        return first or restart.get(cid)

    def open_ids(self) -> list[str]:
        """Sent commands without a final result yet."""
        answers, restart = self.answers(), self.settled_at_restart()
        return [c for c in self.sent if self.final(c, answers, restart) is None]

    def complete(self, timeout: float, retries: int = 3) -> None:
        """Wait for every final result; the sender retries (same id) what has none (up to ``retries`` times).

        A command published while the gateway was down is lost with its clean MQTT session, as the
        contract says: a sender retries with the same id until it has a result.
        """
        for attempt in range(retries + 1):
            if wait_until(lambda: not self.open_ids(), timeout, step=0.1):
                return
            if attempt < retries:
                for cid in self.open_ids():
                    self.retried += 1
                    self.send(cid)

    def writes_by_value(self) -> dict[int, int]:
        """How often the device applied each counter_preset value (its write log)."""
        counts: dict[int, int] = {}
        for fc, addr, values in list(self.sim.models[1].writes):
            if fc == 16 and addr == 3 and len(values) == 2:
                value = values[0] | values[1]  # one word is 0 for values below 65536, whatever the word order
                counts[value] = counts.get(value, 0) + 1
        return counts

    def account(self) -> None:
        """At most once per id at the device; one final result each; every result in the contract."""
        row = self.run.row
        writes = self.writes_by_value()
        answers, restart = self.answers(), self.settled_at_restart()
        twice = {c: writes[v] for c, v in self.sent.items() if writes.get(v, 0) > 1}
        if twice:
            row.reused += len(twice)
            row.note(f"EXECUTED MORE THAN ONCE at the device: {dict(list(twice.items())[:6])}")
        unresolved = [c for c in self.sent if self.final(c, answers, restart) is None]
        if unresolved:
            row.hangs += len(unresolved)
            row.note(f"{len(unresolved)} command(s) without a final result after {self.retried} retries: "
                     f"{unresolved[:8]}")
        lies = []
        statuses: dict[str, int] = {}
        for c, v in self.sent.items():
            res = self.final(c, answers, restart)
            if res is None:
                continue
            key = f"{res.get('status')}/{res.get('reason', '-')}"
            statuses[key] = statuses.get(key, 0) + 1
            if res.get("status") == "ok" and writes.get(v, 0) == 0:
                lies.append(c)
            # Two different final outcomes of one id: one of them is not true.
            finals = {(r.get("status"), r.get("reason")) for r in answers.get(c, []) if not r.get("duplicate")}
            if len(finals) > 1:
                lies.append(c)
        if lies:
            row.unnamed += len(lies)
            row.note(f"results that contradict the device or each other: {lies[:6]}")
        if self.invalid:
            row.unnamed += len(self.invalid)
            row.note(f"{len(self.invalid)} result message(s) outside the contract, e.g. {self.invalid[0]}")
        executed = sum(1 for v in self.sent.values() if writes.get(v, 0))
        row.note(f"commands: {len(self.sent)} ids, {sum(self.sends.values())} publishes ({self.retried} retries), "
                 f"{executed} executed at the device, {len(twice)} twice, {len(restart)} settled at a restart; "
                 f"final results: " + ", ".join(f"{k} x{n}" for k, n in sorted(statuses.items())))


@fault("commands: gateway SIGKILL")
def commands_gateway_kill(run: Run) -> None:
    """SIGKILL at the worst moments of a write: the write held at the device, just after receipt, in a burst."""
    rig = CommandRig(run)
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    n = 6 if run.short else 18
    phases = ["held write", "after receipt", "burst", "while down"]
    done: dict[str, int] = {}
    for i in range(n):
        phase = phases[i % len(phases)]
        done[phase] = done.get(phase, 0) + 1
        if run.gw is None or not run.gw.alive():
            run.start_gateway()
        # The command subscription is made when the uplink connects: a reading delivered after the start says so.
        run.wait_readings(3, 30, "readings after a start")
        if phase == "held write":
            # The device applies the write and holds its answer: the kill lands between write and result.
            before = rig.sim.writes
            rig.fault("hold-write")
            rig.send()
            if not wait_until(lambda: rig.sim.writes > before, 15):  # noqa: B023
                run.row.note("held write: the command did not reach the device within 15 s")
            run.kill_gateway()
            rig.fault(None)
        elif phase == "after receipt":
            rig.send()
            pause(run.rng, 0.0, 0.15)
            run.kill_gateway()
        elif phase == "burst":
            for _ in range(5):
                rig.send()
            pause(run.rng, 0.0, 0.4)
            run.kill_gateway()
        else:
            run.kill_gateway()
            for _ in range(3):
                rig.send()  # the gateway is down: its clean session loses these; the sender retries
        run.start_gateway()
        run.wait_readings(3, 30, "readings after the restart")
        rig.complete(10)
    rig.complete(10)
    run.row.note("kills by phase: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    rig.account()


@fault("commands: broker kill -9", short=False)
def commands_broker_kill(run: Run) -> None:
    """The broker killed while commands and their results are on the way."""
    rig = CommandRig(run)
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    n = 3 if run.short else 10
    for _ in range(n):
        for _ in range(run.rng.randint(2, 6)):
            rig.send()
        pause(run.rng, 0.0, 0.5)
        run.mark("broker kill -9")
        run.broker.kill()
        pause(run.rng, 0.1, 2.0 if run.short else 5.0)
        run.broker.start()
        rig.wait_sender()
        run.collector.wait_connected(30)
        run.wait_readings(3, 30, "readings after the broker came back")
        rig.complete(10)
        run.check_alive()
    rig.complete(10)
    run.row.note(f"{n} broker kills")
    rig.account()


@fault("commands: hostile, flood")
def commands_hostile(run: Run) -> None:
    """Hostile command payloads (each refused by name within 2 s, none executed), then a flood of commands."""
    from fieldgate_hwsim.command_hostile import hostile_commands

    rig = CommandRig(run, rate="{rate: 5, burst: 10}", max_queued=4)
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    rounds = 1 if run.short else 5
    refused = slow = 0
    for r in range(rounds):
        for h in hostile_commands(run.rng, CMD_DEVICE, f"h{r}", denied_device="s0"):
            writes = rig.sim.writes
            seen = len(run.collector.on("/cmd/result"))
            t0 = time.monotonic()
            try:
                rig.sender.publish(f"fieldgate/{GW_ID}/{h.device}/cmd", h.payload, retain=h.retain, timeout=5)
            except AssertionError as exc:
                run.row.note(f"{h.kind}: not published: {exc}")
                continue
            if h.retain:  # delete it at the broker at once (the gateway ignores the empty message)
                rig.sender.publish(f"fieldgate/{GW_ID}/{h.device}/cmd", b"", retain=True, timeout=5)

            def answer() -> dict[str, Any] | None:
                for m in run.collector.on("/cmd/result")[seen:]:  # noqa: B023
                    with contextlib.suppress(AssertionError):
                        res = m.json()
                        if isinstance(res, dict) and res.get("id") == h.cid:  # noqa: B023
                            return {"at": m.at, "topic": m.topic, **res}
                return None

            got = wait_until(answer, 10, step=0.02)
            if not got:
                run.row.hangs += 1
                run.row.note(f"hang: {h.kind}: no result within 10 s")
                continue
            took = got["at"] - t0
            reason = str(got.get("reason") or "")
            if got.get("status") not in ("rejected", "expired") or not re.search(h.reason, reason):
                run.row.unnamed += 1
                run.row.note(f"{h.kind}: answered {got.get('status')} / {reason[:100]!r}, expected /{h.reason}/")
            elif took > 2.0:
                slow += 1
                run.row.hangs += 1
                run.row.note(f"{h.kind}: refused after {took:.2f} s (more than 2 s)")
            else:
                refused += 1
            if rig.sim.writes != writes:
                run.row.reused += 1
                run.row.note(f"{h.kind}: EXECUTED at the device")
            run.check_alive()
    rig.answers()  # validates every result so far
    run.row.note(f"hostile commands: {refused} refused by name within 2 s, {slow} slower")
    # The flood: far more than the rate limit allows, as fast as the broker takes them.
    n_flood = 300 if run.short else 2000
    t0 = time.monotonic()
    ids = [rig.send() for _ in range(n_flood)]
    rig.complete(30, retries=0)
    elapsed = time.monotonic() - t0
    answers = rig.answers()
    finals = [next((a for a in answers.get(c, []) if not a.get("duplicate")), None) for c in ids]
    reasons: dict[str, int] = {}
    for f in finals:
        if f is not None:
            k = f"{f.get('status')}/{f.get('reason', '-')}"
            reasons[k] = reasons.get(k, 0) + 1
    executed = sum(1 for c in ids if rig.writes_by_value().get(rig.sent[c], 0))
    budget = 10 + 5 * elapsed + 1
    run.row.note(f"flood: {n_flood} commands in {elapsed:.1f} s, {executed} executed (the limit allows "
                 f"~{budget:.0f}), answers: " + ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items())))
    if executed > budget:
        run.row.unnamed += 1
        run.row.note("flood: more commands executed than the rate limit allows")
    rig.account()
    run.wait_readings(10, 30, "readings after the flood")


# -- remote configuration ---------------------------------------------------------------------------

RC_FINAL = ("applied", "rolled_back", "refused", "failed", "duplicate", "unchanged")


class RemoteRig:
    """A gateway with remote configuration on, an operator's client, and its answers on ``config/result``."""

    def __init__(self, run: Run, probation: str = "4s") -> None:
        self.run = run
        run.sections_extra = f"remote_config: {{enabled: true, probation: {probation}}}\n"
        run.devices_yaml = _sims(2, "100ms")
        self.op = Collector(run.broker.host, run.broker.port, topic="nobody/here", clean_session=True,
                            client_id="faults-" + re.sub(r"[^A-Za-z0-9-]", "-", run.row.name[:20]) + "-op")
        self.op.connect()
        run.stack.callback(self.op.disconnect)
        self.invalid: list[str] = []

    def send(self, payload: bytes) -> int:
        """Publish on config/set; returns how many results had arrived before (to find the answer)."""
        n = len(self.results())
        try:
            self.op.publish(f"fieldgate/{GW_ID}/config/set", payload, timeout=10)
        except AssertionError as exc:
            self.run.row.note(f"config/set not published: {exc}")
        return n

    def results(self) -> list[tuple[float, dict[str, Any]]]:
        """(arrival, result) on config/result, checked against the contract's config.schema.json."""
        from jsonschema import Draft202012Validator

        schema = json.loads((REPO / "gateway" / "contract" / "config.schema.json").read_text())
        check = Draft202012Validator({**schema, "$ref": "#/$defs/result"})
        out = []
        for m in self.run.collector.on("/config/result"):
            try:
                doc = m.json()
                problems = [e.message for e in check.iter_errors(doc)]
            except AssertionError as exc:
                doc, problems = {}, [str(exc)]
            if problems:
                text = f"{m.payload[:80]!r}: {problems[0][:120]}"
                if text not in self.invalid:
                    self.invalid.append(text)
            out.append((m.at, doc))
        return out

    def answer(self, after: int, change_id: str | None, statuses: tuple[str, ...], timeout: float) -> \
            tuple[float, dict[str, Any]] | None:
        """The first result beyond ``after`` for ``change_id`` with one of ``statuses``."""
        def find() -> tuple[float, dict[str, Any]] | None:
            return next(((at, r) for at, r in self.results()[after:] if r.get("id") == change_id
                         and r.get("status") in statuses), None)

        return wait_until(find, timeout, step=0.05)  # type: ignore[no-any-return]

    def account(self) -> None:
        """Results outside the contract are a fault the row names."""
        self.results()
        if self.invalid:
            self.run.row.unnamed += len(self.invalid)
            self.run.row.note(f"{len(self.invalid)} config/result message(s) outside the contract: {self.invalid[0]}")


def _change(change_id: str, text: str) -> bytes:
    return json.dumps({"id": change_id, "version": change_id, "config": text}).encode()


@fault("remote config: hostile, bad uplink")
def remote_config_hostile(run: Run) -> None:
    """Hostile remote configs refused by name within 2 s; one that breaks the uplink rolled back to the old file."""
    from fieldgate_hwsim.hostile_files import generate

    rig = RemoteRig(run)
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    good = run.config_path.read_bytes()
    n_files = 12 if run.short else 150
    files = [hf for hf in generate(n_files * 12, seed=run.rng.randrange(1 << 30))
             if hf.kind == "config" and not hf.special][:n_files]
    payloads = [("deep nesting", b"[" * 100_000 + b"]" * 100_000, None),
                ("not UTF-8", b'{"id": "rc-utf8", "config": "gateway: \xff"}', None),
                ("lone surrogate", b'{"id": "rc-surr", "config": "gateway: {id: \\udcdf}"}', "rc-surr"),
                ("not an object", b'["rc"]', None),
                ("no config", b'{"id": "rc-noconf"}', "rc-noconf"),
                ("over max_bytes", _change("rc-big", "# " + "x" * 1_100_000), None),
                ("another gateway", _change("rc-other", good.decode().replace(f"id: {GW_ID}", "id: gw-other", 1)),
                 "rc-other")]
    for i, hf in enumerate(files):
        text = hf.data.decode("utf-8", errors="surrogateescape")  # non-UTF-8 bytes become lone surrogates
        payload = _change(f"rc-f{i}", text)
        # Larger than remote_config.max_bytes (1 MB): refused unread, so under "id": null.
        payloads.append((f"file {hf.index} {hf.family}", payload, f"rc-f{i}" if len(payload) <= 1_000_000 else None))
    refused = slow = applied = 0
    for kind, payload, cid in payloads:
        t0 = time.monotonic()
        after = rig.send(payload)
        got = rig.answer(after, cid, ("refused", "probation", "unchanged", "failed"), 10)
        if got is None:
            run.row.hangs += 1
            run.row.note(f"hang: {kind}: no answer within 10 s")
            continue
        at, res = got
        if res["status"] == "failed":
            run.row.unnamed += 1
            run.row.note(f"{kind}: failed (not refused): {str(res.get('errors'))[:160]}")
        elif res["status"] == "probation":  # a mutation that is still a valid file: let it end
            applied += 1
            end = rig.answer(after, cid, ("applied", "rolled_back"), 60)
            if end is None:
                run.row.hangs += 1
                run.row.note(f"hang: {kind}: on probation, no end within 60 s")
            run.write_config(good.decode())  # back to the campaign's file, applied by hand as a site would
            n = len(run.events())
            run.sighup()
            run.wait_event(("config_reloaded",), n, 15, "restoring reload answered")
        elif not res.get("errors") and res["status"] == "refused":
            run.row.unnamed += 1
            run.row.note(f"{kind}: refused without a reason")
        else:
            refused += 1
            if at - t0 > 2.0:
                slow += 1
                run.row.note(f"{kind}: answered after {at - t0:.1f} s")
        run.check_alive()
    if run.config_path.read_bytes() != good:
        run.row.unnamed += 1
        run.row.note("the configuration file changed after hostile changes")
    run.row.note(f"{len(payloads)} hostile changes: {refused} refused by name ({slow} after more than 2 s), "
                 f"{applied} valid after all (applied or rolled back)")
    # Valid, but the uplink cannot connect with it: rolled back after the probation.
    broken = good.decode().replace(f"port: {run.broker.port}", f"port: {free_port()}", 1).encode()
    after = rig.send(_change("rc-broken", broken.decode()))
    t0 = time.monotonic()
    end = rig.answer(after, "rc-broken", ("rolled_back", "applied", "refused"), 60)
    if end is None or end[1]["status"] != "rolled_back":
        run.row.unnamed += 1
        run.row.note(f"broken uplink change: {end[1] if end else 'no end within 60 s'}")
    else:
        run.row.note(f"broken uplink change rolled back after {end[0] - t0:.1f} s: "
                     f"{'; '.join(end[1].get('errors') or [])[:160]}")
    if run.config_path.read_bytes() != good:
        run.row.unnamed += 1
        run.row.note("after the rollback the file is not the old one byte for byte")
    run.wait_readings(10, 30, "readings after the rollback")
    rig.account()


@fault("remote config: SIGKILL in probation")
def remote_config_kill(run: Run) -> None:
    """SIGKILL while a remote change lands or is on probation: then the old or the new file, and an outcome."""
    rig = RemoteRig(run, probation="3s")
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    n = 4 if run.short else 12
    outcomes: dict[str, int] = {}
    retried = 0
    for i in range(n):
        old = run.config_path.read_bytes()
        cid = f"rc-k{i}"
        # Even: a good change, killed while it is written and reloaded (its probation passes at once).
        # Odd: a change that breaks the uplink, killed inside its probation: the restart runs the new
        # file, resumes the probation, and must roll back to the old one.
        if i % 2 == 0:
            new = re.sub(r"flush_interval: \d+ms", f"flush_interval: {51 + i}ms", old.decode(), count=1).encode()
        else:
            new = old.decode().replace(f"port: {run.broker.port}", f"port: {free_port()}", 1).encode()
        after = rig.send(_change(cid, new.decode()))
        if i % 2 == 0:
            pause(run.rng, 0.0, 0.6)
        else:
            wait_until(lambda: run.config_path.read_bytes() == new, 15)  # noqa: B023
            pause(run.rng, 0.0, 2.5)
        run.kill_gateway()
        on_disk = run.config_path.read_bytes()
        if on_disk not in (old, new):
            run.row.unnamed += 1
            run.row.note(f"{cid}: after SIGKILL the file is neither the old nor the new one ({len(on_disk)} bytes)")
        run.start_gateway()
        finals = ("applied", "rolled_back", "failed", "refused", "duplicate")
        end = rig.answer(after, cid, finals, 20)
        if end is None:
            # Killed before the change was received (or before anything of it was recorded): the message
            # is gone with the clean session, and the operator's tool sends it again under the same id.
            retried += 1
            after = rig.send(_change(cid, new.decode()))
            end = rig.answer(after, cid, finals, 30)
        if end is None:
            run.row.hangs += 1
            run.row.note(f"hang: {cid}: no final result within 50 s of the restart (one retry)")
            continue
        status = end[1]["status"]
        if status == "duplicate":  # the retry of a change that had been received: its first outcome
            status = end[1].get("first_status") or "duplicate"
        outcomes[status] = outcomes.get(status, 0) + 1
        final = run.config_path.read_bytes()
        if status != "duplicate" and final != (new if status == "applied" else old):
            run.row.unnamed += 1
            run.row.note(f"{cid}: {status}, but the file is not the {'new' if status == 'applied' else 'old'} one")
        if i % 2 == 1 and status == "applied":
            run.row.unnamed += 1
            run.row.note(f"{cid}: a change that breaks the uplink was kept")
        run.wait_readings(5, 30, "readings after the restart")
    kinds = [e.get("kind") for e in run.events() if str(e.get("kind", "")).startswith("config_remote")]
    run.row.note(f"{n} kills; outcomes: " + ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items()))
                 + f"; {kinds.count('config_remote_resumed')} probation(s) resumed after a restart; {retried} "
                 "change(s) sent again (killed before they were received)")
    rig.account()

# -- Modbus RTU over a pty ----------------------------------------------------------------------------

# What the technician must read for each RTU fault of a unit on the shared line.
RTU_NAMES = {
    "junk": r"junk|garbage|malformed|invalid|unexpected|not a Modbus|crc|checksum",
    "crc": r"crc|checksum",
    "slow-loris": r"incomplete|partial|half|timeout|no answer",
    # The half-frame unit's late bytes share the line and may land in this answer: then the driver rightly
    # sees bytes that are no RTU frame at all (seen in the long form, seed 7), which names the damage too.
    "wrong-unit": r"unit \d+ to a request|not a Modbus RTU answer",
    # The same on this unit (long form seed 7, and short form seed 7 since write priority reordered the
    # line's turns): stray bytes of another unit make its answer no frame at all.
    "bad-length": r"length|byte count|not a Modbus RTU answer",
    "exception:02": r"exception|illegal",
}
UNPLUG_NAMES = (r"missing|unplug|gone|closed|disconnect|hang.?up|EIO|I/O error|input/output|no such|not found"
                r"|cannot open|removed")


@fault("Modbus RTU line: faults, unplug")
def modbus_rtu_line(run: Run) -> None:
    """One RTU line on a pty: units answering junk, CRC errors, half a frame, the wrong unit, a bad length,
    exception 02 beside a healthy unit; then the adapter unplugged and plugged back."""
    from fieldgate_hwsim.modbus_sim import ModbusSim, load_modbus_profile

    peers = AsyncThread()
    run.stack.callback(peers.close)
    profile = load_modbus_profile("eastron/sdm120")
    faults = list(RTU_NAMES)
    units = {1: "healthy"} | {i + 2: f for i, f in enumerate(faults)}
    sim = ModbusSim(dict.fromkeys(units, profile), animate=True)

    async def _start() -> str:
        for unit, f in units.items():
            if f != "healthy":
                sim.set_fault(unit, f)
        return await sim.start_rtu(38400)

    link = run.folder / "ttyUSB-fieldgate"  # what udev's /dev/serial/by-id gives: a stable name, a new node
    link.symlink_to(peers.run(_start()))
    run.stack.callback(peers.run, sim.stop(), 10)

    def rtu(dev: str, unit: int, interval: str) -> str:
        return (f"  - {{id: {dev}, driver: modbus, profile: eastron/sdm120, poll_interval: {interval}, "
                f"connection: {{transport: rtu, serial_port: {link}, baudrate: 38400, unit: {unit}, "
                f"timeout: 300ms, retries: 0}}}}\n")

    run.devices_yaml = _sims(1, "100ms") + "".join(
        rtu("rtu-ok" if f == "healthy" else f"rtu-{f.replace(':', '')}", u, "1s" if f == "healthy" else "3s")
        for u, f in units.items())
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")
    _schedule(run, {"s0": 0.1, "rtu-ok": 1.0}, 15 if run.short else 60)
    devs = run.devices()
    for f in faults:
        dev = f"rtu-{f.replace(':', '')}"
        _judge_modbus_error(run, dev, devs.get(dev, {}), RTU_NAMES[f], f == "slow-loris")
    # The USB adapter pulled out, then plugged back (a new pty behind the same name).
    ok_before = devs.get("rtu-ok", {}).get("polls") or 0
    run.mark("RTU adapter unplugged")
    peers.run(sim.unplug_rtu())
    saw = wait_until(lambda: (run.devices().get("rtu-ok", {}).get("state") in ("degraded", "offline")
                              and run.devices()["rtu-ok"]), 20, step=0.2)
    err = str((saw or {}).get("last_error") or "")
    if not saw:
        run.row.unnamed += 1
        run.row.note("unplugged: the healthy unit never left 'online' within 20 s")
    elif not re.search(UNPLUG_NAMES, err, re.I):
        run.row.unnamed += 1
        run.row.note(f"unplugged: not named: state {saw.get('state')}, error {err[:160]!r}")
    else:
        run.row.note(f"unplugged: named: {err[:160]!r}")
    run.check_alive()

    async def _replug() -> str:
        return await sim.start_rtu(38400)

    new_path = peers.run(_replug())
    tmp_link = link.with_suffix(".new")
    tmp_link.symlink_to(new_path)
    os.replace(tmp_link, link)
    run.mark("RTU adapter plugged back")
    t0 = time.monotonic()
    back = wait_until(lambda: (d := run.devices().get("rtu-ok", {})).get("state") == "online"
                      and (d.get("polls") or 0) > ok_before, 30, step=0.2)
    if not back:
        run.row.hangs += 1
        run.row.note(f"plugged back: the healthy unit not online within 30 s: {run.devices().get('rtu-ok')}")
    else:
        run.row.note(f"plugged back: the healthy unit online again after {time.monotonic() - t0:.1f} s")


@fault("serial: garbage, checksums, unplug", short=False)
def serial_faults(run: Run) -> None:
    """Serial devices on ptys: garbage between frames, split frames, bad checksums; the adapter unplugged and back."""
    from fieldgate_hwsim.serial_sim import Faults, SerialSim

    ok = SerialSim("plantower/pms5003", interval=0.2, link=run.folder / "ttyUSB-ok", seed=run.rng.randrange(1 << 30))
    bad = SerialSim("novafitness/sds011", interval=0.2, link=run.folder / "ttyUSB-bad",
                    faults=Faults(garbage=0.4, split=True, bad_checksum=0.3), seed=run.rng.randrange(1 << 30))
    for sim in (ok, bad):
        sim.start()
        run.stack.callback(sim.stop)
    run.devices_yaml = (
        f"  - {{id: ser-ok, driver: serial, profile: plantower/pms5003, connection: {{port: {ok.path}}}}}\n"
        f"  - {{id: ser-bad, driver: serial, profile: novafitness/sds011, connection: {{port: {bad.path}}}}}\n")
    run.start_gateway()
    run.wait_readings(10, 30, "first readings")

    def count(dev: str) -> int:
        return sum(1 for r in run._readings() if r.get("device") == dev)

    window = 10 if run.short else 40
    t0, ok0, bad0, sent_ok, sent_bad = time.monotonic(), count("ser-ok"), count("ser-bad"), ok.frames_sent, \
        bad.frames_sent
    wait_until(lambda: time.monotonic() - t0 >= window, window + 5, step=0.5)  # the measuring window
    got_ok, got_bad = count("ser-ok") - ok0, count("ser-bad") - bad0
    frames_ok, frames_bad = ok.frames_sent - sent_ok, bad.frames_sent - sent_bad
    run.row.note(f"healthy ser-ok: {got_ok} readings of {frames_ok} frames sent; faulty ser-bad: {got_bad} readings "
                 f"of {frames_bad} frames (30 % with a bad checksum, garbage before 40 %, every frame split)")
    if got_ok < 0.8 * frames_ok:
        run.row.late += 1
    if got_bad < 0.5 * frames_bad:
        run.row.late += 1
        run.row.note("ser-bad: fewer than half of the frames got through the damage")
    # Sporadic bad checksums are counted, not reported (drivers/serial: a run of them is); every frame bad:
    bad.faults.bad_checksum = 1.0

    def named() -> dict[str, Any] | None:
        d = run.devices().get("ser-bad", {})
        return d if re.search(r"checksum|crc|failed the \w+ check", str(d.get("last_error") or ""), re.I) else None

    d = wait_until(named, 20, step=0.2) or run.devices().get("ser-bad", {})
    err = str(d.get("last_error") or "")
    if not re.search(r"checksum|crc|failed the \w+ check", err, re.I):
        run.row.unnamed += 1
        run.row.note(f"ser-bad: every frame with a bad checksum, not named: state {d.get('state')}, "
                     f"error {err[:160]!r}")
    else:
        run.row.note(f"ser-bad: every frame bad: named: state {d.get('state')}, {err[:160]!r}")
    bad.faults.bad_checksum = 0.0
    # Unplugged and plugged back.
    run.mark("serial adapter unplugged")
    ok.vanish()
    saw = wait_until(lambda: (d := run.devices().get("ser-ok", {})).get("state") in ("degraded", "offline") and d,
                     20, step=0.2)
    err = str((saw or {}).get("last_error") or "")
    if not saw or not re.search(UNPLUG_NAMES, err, re.I):
        run.row.unnamed += 1
        run.row.note(f"ser-ok unplugged: not named: {saw and saw.get('state')}, error {err[:160]!r}")
    else:
        run.row.note(f"ser-ok unplugged: named: {err[:160]!r}")
    ok.reappear()
    run.mark("serial adapter plugged back")
    t1, before = time.monotonic(), count("ser-ok")
    if not wait_until(lambda: count("ser-ok") > before + 3, 30, step=0.2):
        run.row.hangs += 1
        run.row.note("ser-ok plugged back: no readings within 30 s")
    else:
        run.row.note(f"ser-ok plugged back: readings again after {time.monotonic() - t1:.1f} s")


# -- Sparkplug B ------------------------------------------------------------------------------------

def _spb_readings(host: Any) -> list[dict[str, Any]]:
    """One entry per (DDATA message, fieldgate_seq) at the host: what the accounting counts as delivered."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    for v, idx in [(v, i) for i, v in enumerate(list(host.values))]:
        if v.birth or v.fg_seq is None:
            continue
        key = (v.ts, v.fg_seq)  # the metrics of one reading share its timestamp and seq
        if key in seen:
            continue
        seen.add(key)
        ts = dt.datetime.fromtimestamp(v.ts / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        out.append({"seq": v.fg_seq, "ts": ts, "device": v.device, "i": idx})
    return out


def _spb_setup(run: Run) -> Any:
    from tests.support.sparkplug_host import SparkplugHost

    run.mqtt_extra = ", format: sparkplug, protocol: '5'"
    # A primary host: the node publishes only while the host's STATE says online, so nothing is sent at
    # QoS 0 into a broker that has no host to give it to (after a broker restart, before the host is back).
    run.sections_extra = "sparkplug: {group_id: plant, primary_host_id: scada}\n"
    run.devices_yaml = _sims(3, "50ms")
    host = SparkplugHost(run.broker.host, run.broker.port, host_id="scada", group="plant", node=GW_ID)
    host.connect()
    run.stack.callback(host.disconnect)
    run.readings_source = lambda: _spb_readings(host)
    return host


def _spb_rules(run: Run, host: Any) -> None:
    try:
        host.check()
        run.row.note(f"Sparkplug rules kept: {len(host.nbirths)} NBIRTH, {len(host.ndeaths)} NDEATH, "
                     f"{len(host.messages)} messages")
    except AssertionError as exc:
        lines = str(exc).splitlines()[1:]
        run.row.unnamed += len(lines)
        run.row.note(f"{len(lines)} Sparkplug rule(s) broken, e.g. " + "; ".join(x.strip() for x in lines[:3]))


@fault("sparkplug: broker kill, SIGKILL", short=False)
def sparkplug_kills(run: Run) -> None:
    """Sparkplug B with a primary host counting fieldgate_seq: broker kill -9 and gateway SIGKILL in turn."""
    host = _spb_setup(run)
    run.start_gateway()
    run.wait_readings(20, 30, "first readings at the host")
    n = 4 if run.short else 12
    for i in range(n):
        pause(run.rng, 0.3, 2.0)
        if i % 2 == 0:
            run.mark("broker kill -9")
            run.broker.kill()
            pause(run.rng, 0.1, 2.0 if run.short else 5.0)
            run.broker.start()
        else:
            run.kill_gateway()
            run.start_gateway()
        run.wait_readings(10, 60, "readings at the host after the fault")
        run.check_alive()
    run.settle()
    _spb_rules(run, host)


@fault("sparkplug: hostile NCMD/DCMD")
def sparkplug_hostile(run: Run) -> None:
    """Random bytes, truncated protobuf, wrong datatypes and 1 MB payloads as NCMD and DCMD."""
    from fieldgate.sparkplug.fieldgate_sparkplug_b_pb2 import Payload

    host = _spb_setup(run)
    run.start_gateway()
    run.wait_readings(20, 30, "first readings at the host")
    rebirth = Payload(timestamp=int(time.time() * 1000))
    m = rebirth.metrics.add(name="Node Control/Rebirth", datatype=11)
    m.boolean_value = True
    good = rebirth.SerializeToString()
    wrong = Payload(timestamp=1)
    m = wrong.metrics.add(name="Node Control/Rebirth", datatype=12)
    m.string_value = "yes"
    dwrong = Payload(timestamp=2)
    m = dwrong.metrics.add(alias=999_999, datatype=10)
    m.string_value = "hot"
    kinds = [("random bytes", run.rng.randbytes(300)), ("truncated", good[: len(good) // 2]),
             ("wrong datatype", wrong.SerializeToString()), ("unknown alias", dwrong.SerializeToString()),
             ("1 MB", run.rng.randbytes(1_000_000)), ("empty", b""), ("protobuf of zeros", b"\x00" * 64)]
    births = len(host.nbirths)
    for kind, payload in kinds:
        for topic in (f"spBv1.0/plant/NCMD/{GW_ID}", f"spBv1.0/plant/DCMD/{GW_ID}/s0",
                      f"spBv1.0/plant/DCMD/{GW_ID}/no-such-device"):
            try:
                host.send_raw(topic, payload)
            except (AssertionError, ValueError, RuntimeError) as exc:
                run.row.note(f"{kind} on {topic}: not published ({exc})")
        run.check_alive()
    run.wait_readings(20, 30, "readings at the host after the hostile commands")
    if len(host.nbirths) != births:
        run.row.note(f"hostile NCMDs caused {len(host.nbirths) - births} rebirth(s)")
    log = run.log_text()
    named = len(re.findall(r"sparkplug: (ignoring|.*refused)", log))
    run.row.note(f"{len(kinds) * 3} hostile commands; {named} named in the log (ignoring/refused)")
    if named < len(kinds) * 3 - 3:  # empty payloads may be dropped before the handler
        run.row.unnamed += 1
    run.settle()
    _spb_rules(run, host)


# -- the campaign -----------------------------------------------------------------------------------

def run_fault(f: Fault, root: Path, seed: int, short: bool) -> Row:
    """Run one fault in its own folder and account for it; nothing it started outlives the call."""
    folder = root / re.sub(r"[^A-Za-z0-9_.-]+", "-", f.name).strip("-")
    folder.mkdir(parents=True)
    rng = random.Random(f"{seed}:{f.name}")
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            run = Run(f.name, folder, rng, short, stack)
        except Exception as exc:  # the broker did not start: the row cannot run
            row = Row(f.name)
            row.error = f"{type(exc).__name__}: {exc}"
            return row
        try:
            f.fn(run)
            if not run.settled:
                run.settle()
        except Skip as exc:
            run.row.skipped = str(exc)
            return run.row
        except GaveUp as exc:
            run.row.note(str(exc))
            with contextlib.suppress(Exception):
                run.broker_up()
                run.collector.sync(20)
        except Exception as exc:
            run.row.error = f"{type(exc).__name__}: {exc}"
        finally:
            run._stop_gateway_at_exit()
        run.account()
        run.row.seconds = time.monotonic() - t0
        return run.row


def main(argv: list[str] | None = None) -> int:
    """Run the campaign and print the table; exit 1 if a row breaks the promise."""
    ap = argparse.ArgumentParser(description="fieldgate's fault campaign (see the module docstring).")
    ap.add_argument("--short", action="store_true", help="the short form (a few minutes; make test)")
    ap.add_argument("--seed", type=int, default=None, help="replay a campaign (printed at the start)")
    ap.add_argument("--only", action="append", default=[], help="run the rows whose name contains this (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the faults and exit")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, buffers) for inspection")
    ap.add_argument("--workdir", default=None, help="where the work folder goes (default: the temp dir)")
    args = ap.parse_args(argv)
    chosen = [f for f in FAULTS if (not args.short or f.short) and
              (not args.only or any(o.lower() in f.name.lower() for o in args.only))]
    if args.list:
        for f in FAULTS:
            print(f"{f.name:36} {'short+long' if f.short else 'long only'}  {(f.fn.__doc__ or '').strip()}")
        return 0
    if not chosen:
        print(f"no fault matches {args.only}; --list shows them", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    print(f"fault campaign: {'short' if args.short else 'long'} form, seed {seed} (replay: --seed {seed}), "
          f"{len(chosen)} faults, load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"brokers: mosquitto with persistence, {', '.join(BROKER_PERSISTENCE)} (what a broker kill -9 can lose "
          "is what it acknowledged since its last save)", flush=True)
    # SIGTERM (a CI timeout, systemd) ends the campaign like Ctrl-C: every cleanup runs.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    root = Path(tempfile.mkdtemp(prefix="fieldgate-faults-", dir=args.workdir))
    rows: list[Row] = []
    try:
        for f in chosen:
            print(f"== {f.name}", flush=True)
            row = run_fault(f, root, seed, args.short)
            rows.append(row)
            print(f"   {'skipped' if row.skipped else ('ok' if row.ok else 'FAIL')} in {row.seconds:.0f} s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    except KeyboardInterrupt:
        print("interrupted: cleaned up; partial table below", flush=True)
    finally:
        if args.keep:
            print(f"work folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(format_table(rows))
    broken = [r.name for r in rows if not r.ok]
    complete = len(rows) == len(chosen)
    print()
    print(f"seed {seed}: {len(rows) - len(broken)}/{len(rows)} rows keep the promise"
          + (f"; broken: {', '.join(broken)}" if broken else "") + ("" if complete else "; INCOMPLETE"))
    return 0 if not broken and complete else 1


if __name__ == "__main__":
    sys.exit(main())

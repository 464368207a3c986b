"""``fieldgate demo``: a gateway with simulated devices, a local broker, and where to look.

Writes a demo configuration into a folder (``./demo-run`` unless ``--dir``),
starts a private mosquitto on a free loopback port (when installed) and the
protocol simulators, and runs the gateway in this process. The console says
where to look, then prints one line per state change (:class:`DemoConsole`)
and a summary on Enter or SIGUSR1; the status page has the full picture.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .config import load_config
from .driver import Simulator, simulator_factories
from .signals import hand_over
from .web.logring import install_log_ring


def _sim_profiles() -> Path:
    from importlib.resources import files

    return Path(str(files("fieldgate.drivers") / "sim" / "profiles"))


def free_port() -> int:
    """A port that was free a moment ago (the broker start retries on a race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoBroker:
    """A private mosquitto on 127.0.0.1 for the demo."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            return False
        for _ in range(5):
            self.port = free_port()
            conf = self.folder / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                f"log_dest file {self.folder / 'mosquitto.log'}\n" + ("user root\n" if _is_root() else "")
            )
            self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return True
                time.sleep(0.05)
            self.stop()
        return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def write_demo_config(folder: Path, broker_port: int | None, extra_devices: list[str] | None = None,
                      web_port: int = 0) -> Path:
    """The demo configuration: simulated devices of different kinds."""
    profiles = _sim_profiles()
    devices = [
        ("energy-meter-1", "energy-meter", "5s", "{seed: 1, latency: 30ms}", "{site: depot, panel: A}"),
        ("air-quality-1", "air-quality", "10s", "{seed: 3}", "{site: depot, room: office}"),
        ("gully-level-1", "level-sensor", "15s", f"{{seed: 4, control_file: {folder / 'gully-level-1.fault'}}}",
         "{site: street-12}"),
    ]
    lines = [
        "# fieldgate demo configuration (written by `fieldgate demo`).",
        "# To break a device, write a fault into its control file, e.g.:",
        f"#   echo timeout > {folder / 'gully-level-1.fault'}   (none | timeout | unreachable | hang)",
        "gateway:",
        "  id: demo-gw",
        f"  data_dir: {folder / 'data'}",
        "  clock_check: auto",
        "web:",
        f"  listen: 127.0.0.1:{web_port}",
    ]
    if broker_port:
        lines += ["mqtt:", "  host: 127.0.0.1", f"  port: {broker_port}", "  protocol: '5'"]
    lines += ["devices:"]
    for dev_id, prof, interval, conn, tags in devices:
        lines += [f"  - id: {dev_id}", "    driver: sim", f"    profile: {profiles / (prof + '.yaml')}",
                  f"    poll_interval: {interval}", f"    connection: {conn}", f"    tags: {tags}"]
    lines += extra_devices or []
    (folder / "gully-level-1.fault").write_text("none\n")
    path = folder / "fieldgate.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class DemoDevices:
    """The demo's simulated devices: every installed ``fieldgate.simulators`` entry point.

    The project's own (Modbus TCP and RTU meters, a particulate sensor, GNSS, BLE sensors
    replayed without a radio, NB-IoT devices pushing and observed over CoAP) live in
    hw-sim (``fieldgate_hwsim.demo_sims``); core imports none of them by name. A simulator
    whose optional dependency is missing is skipped with a note naming the extra.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config: list[str] = []
        self.notes: list[str] = []
        self._running: list[Simulator] = []

    async def start(self) -> None:
        for name, ep in simulator_factories().items():
            sim: Simulator | None = None
            try:
                sim = ep.load()(self.folder)
                if not isinstance(sim, Simulator):
                    self.notes.append(f"simulator {name!r} ({ep.value}) is not a simulator; skipped")
                    continue
                await sim.start()
            except ImportError as exc:
                label = sim.label if sim is not None else f"{name} simulators"
                self.notes.append(f"{label} skipped ({exc}): pip install 'fieldgate[{name}]'")
                continue
            self._running.append(sim)
            self.config += sim.config
            self.notes += sim.notes

    async def stop(self) -> None:
        for sim in reversed(self._running):
            with contextlib.suppress(Exception):
                await sim.stop()


#: Readings waiting in the buffer beyond which the console calls it a backlog.
#: Below it, the depth is the few readings in flight of a working uplink.
BACKLOG = 20


@dataclass
class BufferTrend:
    """The buffer's depth told as states: ``steady``, ``growing``, ``draining``.

    With hysteresis (half a :data:`BACKLOG`), so a depth that wobbles by a few
    readings between two looks does not print a line each time.
    """

    backlog: int = BACKLOG
    state: str = "steady"
    _peak: int = 0
    _trough: int = 0

    def update(self, depth: int) -> str | None:
        """Take a new depth; return the new state when it changed."""
        before = self.state
        if self.state == "steady":
            if depth > self.backlog:
                self.state, self._peak = "growing", depth
        elif depth <= self.backlog // 4:
            self.state = "steady"
        elif self.state == "growing":
            self._peak = max(self._peak, depth)
            if depth <= self._peak - self.backlog // 2:
                self.state, self._trough = "draining", depth
        else:
            self._trough = min(self._trough, depth)
            if depth >= self._trough + self.backlog // 2:
                self.state, self._peak = "growing", depth
        return self.state if self.state != before else None


class DemoConsole:
    """The demo's console: one line per state change, and a summary when asked.

    A device going offline or degraded and coming back, the uplink connecting
    and losing its broker, the buffer growing and draining, readings dropped:
    each is one line with the time. The summary (Enter, or SIGUSR1) lists every
    device with its latest values; the status page has the full picture.
    The gateway has no change notifications (the status page's StateHub also
    looks once a second), so the console compares snapshots once a second.
    """

    def __init__(self, gw: Any, uplink: Any, out: TextIO, page_url: str | None, interval: float = 1.0) -> None:
        self.gw, self.uplink, self.out, self.page_url, self.interval = gw, uplink, out, page_url, interval
        self._devices: dict[str, str] = {}
        self._since: dict[str, float] = {}
        self._connected: bool | None = None
        self._dropped = 0
        self._disk_full = False
        self._trend = BufferTrend()
        self._stdin: int | None = None

    def _say(self, text: str) -> None:
        print(time.strftime("%H:%M:%S"), text, file=self.out, flush=True)

    async def run(self) -> None:
        """Watch until cancelled."""
        await self.gw.ready.wait()
        while True:
            self.check()
            await asyncio.sleep(self.interval)

    def check(self) -> None:
        """Print a line for every state that changed since the last look."""
        now = time.monotonic()
        for dev_id, d in self.gw.snapshot()["devices"].items():
            state, before = d["state"], self._devices.get(dev_id)
            if state == before or (before is None and state == "offline" and not d["polls"]):
                continue  # not polled yet: offline is its starting state, not news
            self._devices[dev_id] = state
            if state == "online":
                if before is None:
                    self._say(f"{dev_id} online: {_values(d)}")
                else:
                    self._say(f"{dev_id} online again (recovered after {now - self._since[dev_id]:.0f} s {before})")
                self._since.pop(dev_id, None)
            else:
                self._since.setdefault(dev_id, now)
                self._say(f"{dev_id} {state}: {d['last_error'] or 'no reading yet'}")
        if self.uplink is not None:
            self._check_uplink(self.uplink.snapshot())

    def _check_uplink(self, u: dict[str, Any]) -> None:
        connected = u["state"] == "connected"
        if connected != self._connected and (connected or self._connected is not None):
            if connected:
                self._say(f"uplink connected to {u['broker']}")
            else:
                self._say(f"uplink lost: {u['last_error'] or u['state']}; readings are kept in the buffer")
        self._connected = connected
        b = u.get("buffer")
        if b is None:
            return
        depth = b["depth"]
        change = self._trend.update(depth)
        if change == "growing":
            self._say(f"buffer growing: {depth} readings waiting for the broker")
        elif change == "draining":
            self._say(f"buffer draining: {depth} readings waiting")
        elif change == "steady":
            self._say(f"buffer caught up: {depth} waiting, last seq {b['last_seq']}")
        if b["dropped"] > self._dropped:
            self._say(f"buffer dropped {b['dropped'] - self._dropped} reading(s) ({b['dropped']} in all); "
                      "see the events topic")
            self._dropped = b["dropped"]
        if bool(b["disk_full"]) != self._disk_full:
            self._disk_full = bool(b["disk_full"])
            self._say("disk full: readings held in memory" if self._disk_full else "disk has space again")

    def summary(self) -> None:
        """Every device with its state and latest values, and the uplink (on Enter or SIGUSR1)."""
        devices = self.gw.snapshot()["devices"]
        counts = {s: sum(1 for d in devices.values() if d["state"] == s) for s in ("online", "degraded", "offline")}
        lines = [f"summary: {len(devices)} device(s): "
                 + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
        if self.uplink is not None:
            u = self.uplink.snapshot()
            b = u.get("buffer") or {}
            lines.append(f"  uplink {u['state']} ({u['broker']}): published {u['published']}, acked {u['acked']}; "
                         f"buffer depth {b.get('depth', '?')}, last seq {b.get('last_seq', '?')}, "
                         f"dropped {b.get('dropped', 0)}")
        width = max((len(dev_id) for dev_id in devices), default=0)
        for dev_id, d in devices.items():
            err = f" ({d['last_error']})" if d["state"] != "online" and d["last_error"] else ""
            lines.append(f"  {dev_id:{width}s} {d['state']:8s} {_values(d)}{err}")
        if self.page_url:
            lines.append(f"  full picture: {self.page_url}")
        self._say("\n".join(lines))

    def listen_for_enter(self, loop: asyncio.AbstractEventLoop) -> None:
        """Print the summary when a line arrives on stdin (a terminal or a pipe)."""
        try:
            loop.add_reader(0, self._on_stdin, loop)
        except (OSError, ValueError):
            return  # no stdin, or a regular file the loop cannot watch: SIGUSR1 still works
        self._stdin = 0

    def _on_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            data = os.read(0, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(loop)  # end of input (e.g. </dev/null): stop watching, or the loop would spin on it
            return
        for _ in range(data.count(b"\n") or 1):
            self.summary()

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop watching stdin."""
        if self._stdin is not None:
            loop.remove_reader(self._stdin)
            self._stdin = None


def _values(d: dict[str, Any], n: int = 3) -> str:
    return ", ".join(f"{k}={v['value']}{(' ' + v['unit']) if v.get('unit') else ''}"
                     for k, v in list(d["metrics"].items())[:n])


async def _demo(folder: Path, broker_port: int | None, duration: float | None) -> int:
    from .logs import setup_logging
    from .runtime import build

    setup_logging("WARNING")
    install_log_ring()
    sims = DemoDevices(folder)
    await sims.start()
    web_port = int(os.environ.get("FIELDGATE_DEMO_WEB_PORT", "8080"))
    config_path = write_demo_config(folder, broker_port, sims.config, web_port)
    use_broker = broker_port is not None
    loaded = load_config(config_path)
    rt = await build(loaded, stdout=not use_broker, loader=lambda: load_config(config_path))
    if rt.web is None and web_port:
        # 8080 taken: any free port will do for a demo (the output, buffer open, is kept)
        loaded = load_config(write_demo_config(folder, broker_port, sims.config, 0))
        rt = await build(loaded, output=rt.output, loader=lambda: load_config(config_path))
    gw, output, web_server = rt.gateway, rt.output, rt.web
    print(f"fieldgate demo: configuration {config_path}")
    if web_server is not None:
        print(f"  status page: {web_server.url}")
    for note in sims.notes:
        print(f"  devices:    {note}")
    if use_broker:
        print(f"  broker:     mqtt://127.0.0.1:{broker_port} (mosquitto, log {folder / 'mosquitto.log'})")
        print(f"  watch:      mosquitto_sub -h 127.0.0.1 -p {broker_port} -t 'fieldgate/#' -v")
        print(f"  buffer:     {folder / 'data' / 'buffer.db'}")
    print(f"  break one:  echo timeout > {folder / 'gully-level-1.fault'}   (then: echo none > ...)")
    if sims.config:
        print(f"              echo silent > {folder / 'meter-rtu-1.fault'}   (Modbus: silent | crc | exception:02)")
    print(f"  summary:    press Enter (or: kill -USR1 {os.getpid()}); otherwise one line per state change")
    print("  stop:       Ctrl-C", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gw.request_stop)
    loop.add_signal_handler(signal.SIGHUP, gw.request_reload)
    if duration:
        loop.call_later(duration, gw.request_stop)

    console = DemoConsole(gw, output if use_broker else None,
                          sys.stdout if use_broker else sys.stderr,  # --no-broker: stdout carries JSON readings
                          web_server.url if web_server is not None else None)
    loop.add_signal_handler(signal.SIGUSR1, console.summary)
    console.listen_for_enter(loop)
    watcher = asyncio.create_task(console.run(), name="demo-console")
    try:
        await rt.run()
    finally:
        watcher.cancel()
        console.close(loop)
        await sims.stop()
        # asyncio closes its self-pipe before it removes handlers: a late Ctrl-C must not kill the exit.
        hand_over(loop, [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1])
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``fieldgate demo``."""
    folder = Path(args.dir or "demo-run").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    broker = DemoBroker(folder)
    use_broker = not args.no_broker and broker.start()
    if not args.no_broker and not use_broker:
        print("mosquitto is not installed (apt-get install mosquitto); printing readings instead", file=sys.stderr)
    try:
        return asyncio.run(_demo(folder, broker.port if use_broker else None, args.duration))
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()

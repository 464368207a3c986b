"""`fieldgate demo` as a new user runs it: every simulated device comes online, the page answers, and the
console says what changed (one line per state change, a summary when asked) instead of a block every 5 s."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import Proc
from .support.broker import MOSQUITTO

EXPECTED = {"energy-meter-1", "air-quality-1", "gully-level-1", "meter-tcp-1", "meter-rtu-1",
            "climate-rtu-2", "pm-1", "gnss-1", "ble-thermo-bthome", "ble-ruuvi", "ble-lywsd03mmc",
            "ble-asset-tag", "bin-level-1", "manhole-1", "climate-coap-1"}
# A console line: its time, then what changed (a device, the uplink, the buffer, the disk) or a summary.
LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<what>[\w.-]+):? (?P<state>\S+?):?( |$)")


class Console:
    """The demo's stdout after its header, read line by line (every line checked against LINE)."""

    def __init__(self, p: Proc) -> None:
        self.p = p
        self.lines: list[str] = []

    def until(self, pred: Callable[[re.Match[str]], bool], timeout: float = 60) -> re.Match[str]:
        while True:
            line = self.p.next_line(timeout=timeout).rstrip("\n")
            self.lines.append(line)
            if line.startswith("  "):  # a summary's body
                continue
            m = LINE.match(line)
            assert m, f"not a state-change line: {line!r}"
            if pred(m):
                return m


@pytest.fixture
def restarted() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Brokers a test restarts by hand; stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _demo_broker_pid(conf: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(conf).encode() in cmdline:
                return int(entry.name)
    raise AssertionError(f"no mosquitto running with {conf}")


def test_demo_runs_every_simulated_device_and_serves_the_status_page(
    tmp_path: Path, fieldgate_proc: Callable[..., Proc], restarted: list[subprocess.Popen[bytes]]
) -> None:
    folder = tmp_path / "demo"
    p = fieldgate_proc("demo", "--dir", str(folder), env={"FIELDGATE_DEMO_WEB_PORT": "0"})
    lines: list[str] = []
    while not any(line.startswith("  stop:") for line in lines):
        lines.append(p.next_line(timeout=30))
    text = "".join(lines)
    assert "mosquitto_sub -h 127.0.0.1 -p " in text
    assert "  summary:    press Enter (or: kill -USR1 " in text
    url = next(line.split(": ", 1)[1].strip() for line in lines if line.startswith("  status page:"))

    def devices() -> dict[str, dict[str, object]]:
        with urllib.request.urlopen(url + "api/v1/devices", timeout=5) as r:
            body = json.load(r)
        items = body["devices"] if isinstance(body, dict) else body
        return {d["id"]: d for d in items}

    # every device, of every driver, comes online: one line each, and the uplink says it is connected
    console = Console(p)
    seen_online: set[str] = set()
    connected = False
    while seen_online != EXPECTED or not connected:
        m = console.until(lambda m: m["state"] in ("online", "connected"))
        if m["what"] == "uplink":
            connected = True
        else:
            assert m["what"] in EXPECTED and m["what"] not in seen_online, console.lines
            seen_online.add(m["what"])
    states = {k: v["state"] for k, v in devices().items()}
    assert set(states) == EXPECTED

    # a device that stops answering is one line, its recovery another
    (folder / "meter-tcp-1.fault").write_text("silent\n")
    console.until(lambda m: m["what"] == "meter-tcp-1" and m["state"] in ("degraded", "offline"))
    (folder / "meter-tcp-1.fault").write_text("none\n")
    console.until(lambda m: m["what"] == "meter-tcp-1" and m["state"] == "online")
    assert "recovered after" in console.lines[-1], console.lines[-1]

    # the broker goes away: the uplink is lost and the buffer grows; it comes back: the buffer drains
    conf = folder / "mosquitto.conf"
    os.kill(_demo_broker_pid(conf), signal.SIGKILL)
    console.until(lambda m: m["what"] == "uplink" and m["state"] == "lost")
    console.until(lambda m: m["what"] == "buffer" and m["state"] == "growing")
    restarted.append(subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    console.until(lambda m: m["what"] == "uplink" and m["state"] == "connected", timeout=120)
    console.until(lambda m: m["what"] == "buffer" and m["state"] == "caught", timeout=120)
    # nothing periodic in between: every line was a state change (Console checked each one)
    assert not any(", acked " in line for line in console.lines), console.lines

    # the summary on demand
    p.popen.send_signal(signal.SIGUSR1)
    console.until(lambda m: m["what"] == "summary")
    body = [p.next_line(timeout=10) for _ in range(len(EXPECTED) + 2)]
    assert body[0].startswith("  uplink connected (mqtt://127.0.0.1:"), body
    assert {line.split()[0] for line in body[1:-1]} == EXPECTED, body
    assert body[-1] == f"  full picture: {url}\n", body

    p.popen.send_signal(signal.SIGINT if sys.platform != "win32" else signal.SIGTERM)
    rc = p.popen.wait(20)
    assert rc == 0, "".join(p.stderr_lines[-60:])
    assert not any("Traceback" in line for line in p.stderr_lines), "".join(p.stderr_lines)


@pytest.mark.parametrize(("depths", "changes"), [
    # a working uplink: a few readings in flight are not news
    ([0, 3, 7, 2, 19, 0], []),
    # an outage: growing once, draining once, caught up once; wobbles inside the hysteresis print nothing
    ([0, 21, 30, 40, 35, 39, 25, 28, 10, 3], [(1, "growing"), (6, "draining"), (9, "steady")]),
    # drained but the broker is lost again before it caught up
    ([0, 50, 30, 20, 31, 60, 2], [(1, "growing"), (2, "draining"), (4, "growing"), (6, "steady")]),
])
def test_buffer_trend_says_each_change_once(depths: list[int], changes: list[tuple[int, str]]) -> None:
    from fieldgate.demo import BufferTrend

    trend = BufferTrend(backlog=20)
    got = [(i, c) for i, d in enumerate(depths) if (c := trend.update(d)) is not None]
    assert got == changes


def test_demo_help_says_where_the_demo_folder_is(tmp_path: Path) -> None:
    """`--help` names the folder the demo really uses when --dir is not given."""
    def demo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fieldgate.cli", "demo", *args], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path, check=False,
                              env={**os.environ, "FIELDGATE_DEMO_WEB_PORT": "0"})

    help_text = " ".join(demo("--help").stdout.split())
    assert "default: ./demo-run" in help_text, help_text
    assert "temporary" not in help_text
    res = demo("--no-broker", "--duration", "0.5")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "demo-run" / "fieldgate.yaml").is_file()


def test_enter_prints_a_summary_and_end_of_input_is_harmless(tmp_path: Path) -> None:
    """A line on stdin asks for the summary; stdin then at its end (a pipe closed) is let go, not spun on."""
    res = subprocess.run([sys.executable, "-m", "fieldgate.cli", "demo", "--dir", str(tmp_path / "d"), "--no-broker",
                          "--duration", "5"], input="\n", capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "FIELDGATE_DEMO_WEB_PORT": "0"})
    assert res.returncode == 0, res.stderr
    summaries = [line for line in res.stderr.splitlines() if LINE.match(line) and " summary: " in line]
    assert len(summaries) == 1, res.stderr  # --no-broker: the console writes to stderr, stdout is JSON readings
    assert re.search(r"summary: 15 device\(s\)", summaries[0]), summaries
    assert "Traceback" not in res.stderr

"""READY and the watchdog keep-alive reach systemd's notify socket, and stop when the loop blocks.

A real ``fieldgate run`` subprocess gets ``NOTIFY_SOCKET`` (an AF_UNIX datagram socket this test
binds in its temporary folder, as systemd does) and ``WATCHDOG_USEC``. The loop is blocked by a
driver doing blocking I/O in ``poll`` (``blocking_driver.py``), loaded as a third-party plugin
through an entry point: the failure ``WatchdogSec=`` exists for.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Proc

WATCHDOG_USEC = 200_000  # pings every 0.1 s


class NotifySocket:
    """The receiving end of ``$NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def recv(self, timeout: float) -> str | None:
        """One datagram, or None when none arrives within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except (TimeoutError, BlockingIOError):
            return None

    def wait_for(self, needle: str, timeout: float = 15.0) -> list[str]:
        """Datagrams received until one contains ``needle`` (fails after ``timeout``)."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is None:
                break
            seen.append(msg)
            if needle in msg:
                return seen
        raise AssertionError(f"{needle!r} never arrived; got {seen}")

    def drain(self) -> list[str]:
        out = []
        while (msg := self.recv(0.0)) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify")
    yield ns
    ns.close()


def _plugin_site(tmp_path: Path) -> Path:
    """A site folder with a ``.dist-info`` registering the blocking driver, like an installed plugin."""
    dist = tmp_path / "site" / "fieldgate_test_blocker-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fieldgate-test-blocker\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[fieldgate.drivers]\nblocker = tests.install.blocking_driver:BlockingDriver\n")
    return dist.parent


def _config(tmp_path: Path, control: Path) -> Path:
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(f"""\
gateway: {{id: gw-watchdog, data_dir: {tmp_path / 'data'}, clock_check: off}}
web: {{enabled: false}}
devices:
  - id: stuck-1
    driver: blocker
    poll_interval: 0.05
    connection: {{control_file: {control}}}
    profile:
      schema_version: 1
      driver: blocker
      vendor: test
      model: blocker
      points: [{{name: polls}}]
""")
    return cfg


def test_ready_and_watchdog_reach_notify_socket_and_stop_while_the_loop_blocks(
        tmp_path: Path, notify_socket: NotifySocket, fieldgate_proc: Callable[..., Proc]) -> None:
    control = tmp_path / "control"
    control.write_text("none")
    cfg = _config(tmp_path, control)
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": str(WATCHDOG_USEC),
           "PYTHONPATH": os.pathsep.join([str(_plugin_site(tmp_path)), str(REPO)])}
    proc = fieldgate_proc("run", "-c", str(cfg), "--stdout", env=env, cwd=REPO)

    # READY=1 once the pipeline runs, and readings flow (the device task really runs).
    seen = notify_socket.wait_for("READY=1")
    assert not any("READY=1" in m for m in seen[:-1])
    assert '"polls"' in proc.next_line(timeout=10)
    # Keep-alive pings at about WatchdogSec/2.
    for _ in range(3):
        notify_socket.wait_for("WATCHDOG=1", timeout=2.0)

    # A driver blocks the loop: the pings stop for as long as it blocks.
    control.write_text("block")
    proc.wait_stderr("blocking the event loop", timeout=10)
    notify_socket.drain()  # pings sent before the block began
    quiet = notify_socket.recv(timeout=WATCHDOG_USEC / 1e6 * 5)  # 2.5 watchdog periods: systemd would kill here
    assert quiet is None, f"the loop is blocked, yet {quiet!r} arrived"
    assert proc.popen.poll() is None

    # Released, the loop pings again (the pings come from the loop, not from a thread).
    control.write_text("none")
    proc.wait_stderr("event loop released", timeout=10)
    notify_socket.wait_for("WATCHDOG=1", timeout=2.0)

    # SIGTERM: STOPPING=1, and the pings end with the process.
    proc.popen.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1", timeout=10)
    assert proc.popen.wait(20) == 0


def test_no_watchdog_pings_for_another_pid(tmp_path: Path, notify_socket: NotifySocket,
                                           fieldgate_proc: Callable[..., Proc]) -> None:
    """``WATCHDOG_PID`` of another process (a child that inherited the environment): READY, no pings."""
    control = tmp_path / "control"
    control.write_text("none")
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "1",
           "PYTHONPATH": os.pathsep.join([str(_plugin_site(tmp_path)), str(REPO)])}
    proc = fieldgate_proc("run", "-c", str(_config(tmp_path, control)), "--stdout", env=env, cwd=REPO)
    notify_socket.wait_for("READY=1")
    proc.next_line(timeout=10)
    assert notify_socket.recv(timeout=WATCHDOG_USEC / 1e6 * 3) is None

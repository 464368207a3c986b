"""Shared fixtures: config writing, a running gateway process, contract checks."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SIM_PROFILES = REPO / "drivers" / "sim" / "profiles"

pytest_plugins = ["tests.support.broker", "tests.support.certs"]


def sim_device(dev_id: str, profile: str = "energy-meter", **extra: Any) -> str:
    """YAML for one sim device (flow style, indented for the devices list)."""
    parts = [f"id: {dev_id}", "driver: sim", f"profile: {SIM_PROFILES / (profile + '.yaml')}"]
    parts += [f"{k}: {v}" for k, v in extra.items()]
    return "  - {" + ", ".join(parts) + "}\n"


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a config file into the test's folder and return its path."""

    def _write(text: str, name: str = "fieldgate.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


class Proc:
    """A `fieldgate` subprocess whose output lines are read without sleeping."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "fieldgate.cli", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._err_cond = threading.Condition()
        self._pumps = [threading.Thread(target=self._pump, args=(self.popen.stdout, True), daemon=True),
                       threading.Thread(target=self._pump, args=(self.popen.stderr, False), daemon=True)]
        for t in self._pumps:
            t.start()

    def _pump(self, stream: Any, is_out: bool) -> None:
        with stream:  # closed at EOF: an open pipe left behind is a ResourceWarning in a later test
            for line in stream:
                if is_out:
                    self.stdout_lines.append(line)
                    self.stdout.put(line)
                else:
                    with self._err_cond:
                        self.stderr_lines.append(line)
                        self._err_cond.notify_all()

    def next_line(self, timeout: float = 10.0) -> str:
        """The next stdout line (raises queue.Empty after ``timeout``)."""
        return self.stdout.get(timeout=timeout)

    def wait_stderr(self, needle: str, timeout: float = 10.0) -> str:
        """Wait for a stderr line containing ``needle``."""
        deadline = time.monotonic() + timeout
        with self._err_cond:
            while True:
                for line in self.stderr_lines:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._err_cond.wait(0.2)):
                    raise AssertionError(f"{needle!r} not seen on stderr:\n{''.join(self.stderr_lines)}")
                self._err_cond.wait(left)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.kill()
        rc = self.popen.wait(10)
        for t in self._pumps:  # they end at the pipes' EOF; closing them after is no ResourceWarning
            t.join(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()
        return rc


@pytest.fixture
def fieldgate_proc() -> Iterator[Callable[..., Proc]]:
    """Start `python -m fieldgate.cli ...`; killed at the end of the test."""
    procs: list[Proc] = []

    def _start(*args: str, **kw: Any) -> Proc:
        p = Proc(list(args), **kw)
        procs.append(p)
        return p

    yield _start
    for p in procs:
        p.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long end-to-end trials (``slow``) first: with ``-n`` they start at once on their own
    workers instead of being the tail of the run. The order is stable, so every xdist worker
    collects the same list."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)

"""A serial port locked by another program: one clear line, the errno once, and no risky advice (issue 22).

Before: ``cannot open /dev/pts/N: [Errno 11] Could not exclusively lock port /dev/pts/N: [Errno 11]
Resource temporarily unavailable`` with the hint "stop it, or set exclusive: false", which lets two
programs read one line and each get half its bytes. The test holds the lock on a real pty, as
minicom or a second gateway would, and runs the real gateway against it.
"""

from __future__ import annotations

import fcntl
import os
import pty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc


@pytest.fixture
def locked_pty() -> Iterator[str]:
    """A pty whose device node is flock()ed by this process, like a port another program has open."""
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    holder = os.open(name, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield name
    finally:
        for fd in (holder, slave, master):
            os.close(fd)


def test_a_locked_port_is_named_once_with_advice_that_keeps_the_lock(
        locked_pty: str, tmp_path: Path, write_config: Callable[[str], Path],
        fieldgate_proc: Callable[..., Proc]) -> None:
    cfg = write_config(
        f"gateway: {{id: gw-lock, data_dir: {tmp_path / 'data'}}}\n"
        "web: {enabled: false}\n"
        "devices:\n"
        f"  - {{id: gnss-1, driver: serial, profile: nmea0183/gnss, connection: {{port: {locked_pty}}}}}\n")
    proc = fieldgate_proc("run", "-c", str(cfg), "--stdout")
    line = proc.wait_stderr(f"cannot open {locked_pty}", timeout=30)
    assert line.count("Errno") <= 1 and line.count("[Errno 11]") <= 1, line
    assert "another program holds its lock" in line, line
    assert f"fuser -v {locked_pty}" in line, line
    assert "exclusive: false" not in line, line

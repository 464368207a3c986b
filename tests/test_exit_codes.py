"""Exit codes as the README promises them, for every command: 0 fine, 1 config invalid, 2 usage, 3 device or
broker problem. Run as a user runs them (the real `fieldgate` process, real sockets and ptys)."""

from __future__ import annotations

import os
import pty
import socket
import subprocess
import sys
from pathlib import Path


def fieldgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fieldgate.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_scan_usage_errors_exit_2() -> None:
    for args in (["scan", "modbus"], ["scan", "modbus", "--host", "127.0.0.1", "--ids", "1-999"]):
        res = fieldgate(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr


# The fix is in drivers/modbus/scan.py (owned by the Modbus work): its main() returns 2 for a DriverError too.


def test_scan_of_an_unreachable_device_exits_3() -> None:
    res = fieldgate("scan", "modbus", "--host", "127.0.0.1", "--tcp-port", str(_closed_port()), "--ids", "1")
    assert "Traceback" not in res.stderr
    assert res.returncode == 3, res.stderr


def test_scan_of_a_busy_port_exits_3(tmp_path: Path) -> None:
    import serial  # the modbus extra: a port held open exclusively, as a running gateway holds it

    master, slave = pty.openpty()
    port = os.ttyname(slave)
    try:
        with serial.Serial(port, exclusive=True):
            res = fieldgate("scan", "modbus", "--port", port, "--ids", "1")
    finally:
        os.close(master)
        os.close(slave)
    assert "Traceback" not in res.stderr
    assert res.returncode == 3, res.stderr

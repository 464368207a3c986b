"""Malformed HTTP from the network, against a real ``fieldgate run`` on a non-loopback address.

Whatever a stranger on the plant LAN sends (huge or too many headers, a huge URL, an unknown
method, binary garbage, a broken chunked body, no Host), the page answers with a clear 4xx at
once and the gateway's log gets one short line per kind, never a traceback: a journal full of
aiohttp stack traces hides the lines a technician needs, and costs the Pi's SD card.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from ..conftest import Proc
from .conftest import PASSWORD, process_yaml, start_gateway_process

HOST = "Host: 127.0.0.1\r\n"
HOSTILE = {
    "huge header": f"GET / HTTP/1.1\r\n{HOST}X-Big: {'a' * 70_000}\r\n\r\n",
    "too many headers": f"GET / HTTP/1.1\r\n{HOST}" + "".join(f"X-{i}: v\r\n" for i in range(500)) + "\r\n",
    "huge url": f"GET /{'a' * 20_000} HTTP/1.1\r\n{HOST}\r\n",
    "unknown method": f"BREW / HTTP/1.1\r\n{HOST}\r\n",
    "binary garbage": "\x00\x01\x02\xff garbage\r\n\r\n",
    "broken chunked body": f"POST /api/v1/login HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "no host": "GET / HTTP/1.1\r\n\r\n",
}


def _status_line(port: int, data: bytes) -> tuple[float, bytes]:
    """Send ``data`` and return (seconds until the status line, the status line)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(data)
        got = b""
        while b"\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return time.monotonic() - t0, got.split(b"\r\n", 1)[0]


def test_malformed_requests_get_a_4xx_and_no_traceback_in_the_log(
        tmp_path: Path, fieldgate_proc: Callable[..., Proc]) -> None:
    secret = tmp_path / "web.password"
    secret.write_text(PASSWORD + "\n")
    web = f"{{listen: '0.0.0.0:0', password: {{file: {secret}}}}}"
    gp = start_gateway_process(fieldgate_proc, tmp_path, process_yaml(tmp_path, web=web), stdout=True)
    port = urlsplit(gp.url).port
    assert port is not None
    for _ in range(3):  # a flood is logged once per kind, not once per request
        for name, request in HOSTILE.items():
            took, status = _status_line(port, request.encode("latin-1"))
            assert status.split(b" ")[1:2] == [b"400"], (name, status)
            assert took < 2.0, (name, took)
    gp.proc.wait_stderr("status page: bad HTTP request from 127.0.0.1")
    # the page still serves the right client afterwards
    took, status = _status_line(port, f"GET /api/v1/status HTTP/1.1\r\n{HOST}Authorization: Bearer {PASSWORD}"
                                      "\r\nConnection: close\r\n\r\n".encode())
    assert status.endswith(b"200 OK")
    log = gp.lines()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
    bad = [line for line in log.splitlines() if "bad HTTP request" in line]
    assert 1 <= len(bad) <= len(HOSTILE), bad
    assert PASSWORD not in log

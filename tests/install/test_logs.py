"""Journald-friendly logs: no timestamps and a ``<N>`` priority on every line under systemd."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from fieldgate.logs import JournalFormatter, syslog_priority

from tests.conftest import REPO

CHILD = """
import logging, sys
from fieldgate.app import DeviceLog
from fieldgate.logs import setup_logging
setup_logging("DEBUG")
log = logging.getLogger("fieldgate.app")
DeviceLog(logging.getLogger("fieldgate.device.meter-1"), {"device": "meter-1"}).warning("no answer (%s)", "timeout")
log.info("running")
log.debug("detail")
log.critical("fatal")
logging.getLogger("fieldgate.uplink").info("relay", extra={"device": "pump-2"})
try:
    1 / 0
except ZeroDivisionError:
    log.exception("driver bug")
"""


def _child(env: dict[str, str]) -> list[str]:
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, **env}, check=False)
    assert res.returncode == 0, res.stderr
    return res.stderr.splitlines()


def test_under_journald_every_line_has_a_priority_and_no_timestamp(tmp_path: Path) -> None:
    # systemd sets JOURNAL_STREAM to the device:inode of the stream it gives as stderr; the child's
    # stderr is a pipe whose identity we cannot know in advance, so a tiny wrapper sets it from fstat.
    wrapper = ("import os; st = os.fstat(2); os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}';"
               f"exec(compile({CHILD!r}, 'child', 'exec'))")
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=60,
                         cwd=REPO, check=False)
    lines = res.stderr.splitlines()
    assert lines, res
    assert all(re.match(r"^<[2-7]>", ln) for ln in lines), lines
    assert not [ln for ln in lines if re.search(r"\d\d:\d\d:\d\d", ln)]
    assert "<4>fieldgate.device.meter-1: [meter-1] no answer (timeout)" in lines
    assert "<6>fieldgate.app: running" in lines and "<7>fieldgate.app: detail" in lines
    assert "<2>fieldgate.app: fatal" in lines
    assert "<6>fieldgate.uplink: [pump-2] relay" in lines
    # The traceback: every continuation line at the error's priority, so `journalctl -p err` shows all of it.
    start = lines.index("<3>fieldgate.app: driver bug")
    assert lines[start + 1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"


def test_on_a_terminal_lines_carry_a_time_and_the_device() -> None:
    lines = _child({"JOURNAL_STREAM": ""})
    assert re.match(r"^\d\d:\d\d:\d\d WARNING fieldgate.device.meter-1: \[meter-1\] no answer", lines[0]), lines[0]
    assert not any(ln.startswith("<") for ln in lines)


def test_inherited_journal_stream_of_another_stream_is_ignored() -> None:
    """A shell started from a service inherits JOURNAL_STREAM, but its stderr is not the journal."""
    lines = _child({"JOURNAL_STREAM": "8:123456"})
    assert not any(ln.startswith("<") for ln in lines)


def test_priority_mapping() -> None:
    assert [syslog_priority(lv) for lv in (5, 10, 15, 20, 25, 30, 40, 50, 60)] == [7, 7, 7, 6, 6, 4, 3, 2, 2]
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "a\nb", None, None)
    assert JournalFormatter("%(message)s").format(rec) == "<3>x: a\n<3>b"

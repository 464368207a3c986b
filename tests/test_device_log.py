"""The supervisor's device-state log lines say what happened and when the next try is (issue 22).

A real ``fieldgate run`` polls a sim device whose control file breaks and heals it.
Before: "... skipping it for 10s" from the driver, then the supervisor retried on its
own schedule, and a recovery was never logged. Now every failure line ends with the
supervisor's own retry time (the one it then sleeps), and a recovery is an INFO line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Proc, sim_device

NEXT = re.compile(r"next try in (\d+\.\d)s$")


def test_failures_name_the_state_and_the_next_try_and_recovery_is_logged(
        tmp_path: Path, write_config: Callable[[str], Path], fieldgate_proc: Callable[..., Proc]) -> None:
    control = tmp_path / "meter.fault"
    control.write_text("timeout\n")
    cfg = write_config(
        f"gateway: {{id: gw-log, data_dir: {tmp_path / 'data'}}}\n"
        "web: {enabled: false}\n"
        "devices:\n" + sim_device("meter-1", poll_interval="0.2s", offline_after=2, backoff_max="0.5s",
                                  connection=f"{{control_file: {control}}}"))
    proc = fieldgate_proc("run", "-c", str(cfg), "--stdout", "--log-level", "DEBUG")

    first = proc.wait_stderr("simulated timeout", timeout=30).rstrip()
    assert "WARNING" in first
    assert "(timeout); degraded after 1 failed poll; next try in" in first, first
    assert "skipping" not in first
    assert NEXT.search(first), first
    offline = proc.wait_stderr("offline after", timeout=30).rstrip()
    assert "WARNING" in offline and "(timeout); offline after 2 failed polls in a row; next try in" in offline
    assert NEXT.search(offline), offline
    third = proc.wait_stderr("after 3 failed polls in a row; next try", timeout=30)  # said once, quietly
    assert "DEBUG" in third, third

    control.write_text("none\n")
    back = proc.wait_stderr("answering again", timeout=30).rstrip()
    assert re.search(r"INFO .*\[meter-1\] answering again after \d+ failed polls?: online$", back), back
    assert "Traceback" not in "".join(proc.stderr_lines)

"""The fault campaign's short form (bench/faults.py --short) keeps the promise.

The campaign runs the real gateway process against a real mosquitto and simulated devices and
injects the faults a site brings (broker and gateway kills, a full disk, damaged buffer files,
bad reloads, hostile Modbus and CoAP peers, hostile configuration files). The promise, per row:
no reading lost beyond announced drops, no seq reused, no manual action, no traceback, no hang,
every fault named, healthy devices on schedule. The table is printed; on failure it is the
assertion message, with the seed to replay it (``python bench/faults.py --short --seed N``).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "bench" / "faults.py"
# The short form takes a few minutes on a busy 2-core machine; the deadline is generous on purpose.
DEADLINE_S = 1500


def _short_rows() -> list[str]:
    done = subprocess.run([sys.executable, str(RUNNER), "--list"], capture_output=True, text=True, timeout=60,
                          check=True, cwd=REPO)
    return [line[:36].strip() for line in done.stdout.splitlines() if "short+long" in line]


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_short_fault_campaign_keeps_the_promise() -> None:
    rows = _short_rows()
    assert len(rows) >= 10, f"the short form lists too few faults: {rows}"
    seed = int(os.environ.get("FIELDGATE_FAULTS_SEED", random.SystemRandom().randrange(1 << 31)))
    proc = subprocess.Popen([sys.executable, str(RUNNER), "--short", "--seed", str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        stdout, stderr = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the runner then stops its brokers and gateways and unmounts its tmpfs.
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=120)
        pytest.fail(f"the short campaign did not finish within {DEADLINE_S} s (seed {seed}):\n{stdout}{stderr}")
    out = stdout + stderr
    print(out)
    # Every short-form row is in the table with a verdict: an empty or crashed runner cannot pass.
    table = {m.group(1).strip(): m.group(2) for m in re.finditer(r"^(.+?)\s+(?:\d+\s+){11}\d+\s+(ok|FAIL)$", out, re.M)}
    skipped = {m.group(1).strip() for m in re.finditer(r"^(.+?)(?:\s+-){11}\s+SKIP$", out, re.M)}
    absent = [r for r in rows if r not in table and r not in skipped]
    assert not absent, f"rows missing from the table (seed {seed}): {absent}\n{out}"
    assert "Traceback" not in stderr, f"the runner itself failed (seed {seed}):\n{out}"
    assert proc.returncode == 0, f"the fault campaign broke the promise (replay with --seed {seed}):\n{out}"

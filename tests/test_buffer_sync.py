"""What the buffer syncs: with ``durability: full`` a commit of readings is synced; a delete is not.

A delete (the readings the broker acknowledged) that a power cut takes back only means those
readings are sent again, which at-least-once delivery allows; a synced delete would cost one
more fsync per commit at light load (group commit commits every poll), and the next reading's
commit would queue behind it. Counted with strace on a real process: no fakes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from fieldgate.buffer import Buffer
    buf = Buffer(Path(sys.argv[1]), durability=sys.argv[3])
    buf.open()
    for i in range(int(sys.argv[2])):
        seqs = buf.append_many([("d", i, '{"a":1}')])
        assert buf.ack(seqs) == 1
    buf.close()
""")


def syncs(folder: Path, rounds: int, durability: str) -> int:
    """fsync + fdatasync calls of a process that appends and acks one reading ``rounds`` times."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    done = subprocess.run([strace, "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", sys.executable, "-c", SCRIPT,
                           str(folder), str(rounds), durability], capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[-200:]}")
    # strace -c's table: % time, seconds, usecs/call, calls, [errors,] syscall
    row = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(?:fsync|fdatasync)$", re.M)
    calls = [int(m.group(1)) for m in row.finditer(done.stderr)]
    assert calls, f"no sync counted: {done.stderr}"
    return sum(calls)


def test_full_durability_syncs_each_commit_of_readings_but_not_the_deletes(tmp_path: Path) -> None:
    base = syncs(tmp_path / "a", 0, "full")  # open and close: the session flag, the sidecar, the checkpoint
    per_round = (syncs(tmp_path / "b", 40, "full") - base) / 40
    assert 0.9 <= per_round <= 1.1, f"{per_round:.2f} syncs per append+ack (one for the append, none for the ack)"


def test_normal_durability_syncs_neither(tmp_path: Path) -> None:
    base = syncs(tmp_path / "a", 0, "normal")
    assert syncs(tmp_path / "b", 40, "normal") - base <= 2  # a checkpoint at most

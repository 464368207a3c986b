"""seq never repeats, whatever file is lost or damaged: the WAL after a power cut, the sidecar ``seq.hwm``.

Each test damages real files the way an SD card does (a lost WAL, random
bytes, absurd numbers) and then checks three things: the buffer opens without
an exception, the damage is announced (event and WARNING), and every new seq
is strictly above every seq handed out before.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.buffer import Buffer

from .test_buffer import events_of, items

# Appends until told to stop; prints each committed batch's last seq (stdout is the ledger of what was handed out).
CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from fieldgate.buffer import Buffer

    buf = Buffer(Path(sys.argv[1]), durability=sys.argv[2])
    buf.open()
    body = '{"schema":"fieldgate.reading/1","device":"d","metrics":{"v":{"value":1,"quality":"good"}},"pad":"' \\
        + "x" * 300 + '"}'
    n = 0
    while True:
        seqs = buf.append_many([("d", n, body)] * 10)
        print(seqs[-1], flush=True)
        n += 1
""")


def run_and_kill(data: Path, durability: str, batches: int) -> int:
    """Run a child that appends, SIGKILL it after ``batches`` commits; the highest seq it handed out."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data), durability],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    high = 0
    try:
        for _ in range(batches):
            line = proc.stdout.readline()
            assert line, f"child died: {proc.stderr.read()}"
            high = int(line)
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout.read().splitlines(keepends=True):
            if line.endswith("\n"):
                high = int(line)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    return high


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Callable[..., tuple[Buffer, list[dict[str, Any]]]]]:
    bufs: list[Buffer] = []

    def _open(**kw: Any) -> tuple[Buffer, list[dict[str, Any]]]:
        events: list[dict[str, Any]] = []
        buf = Buffer(tmp_path / "data", on_event=events.append, **kw)
        buf.open()
        bufs.append(buf)
        return buf, events

    yield _open
    for buf in bufs:
        buf.close()


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_wal_lost_after_a_kill_never_gives_a_seq_twice_and_announces_the_loss(
        tmp_path: Path, opened: Callable[..., tuple[Buffer, list[dict[str, Any]]]], durability: str,
        caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    high = run_and_kill(data, durability, 400)  # 4000 readings, ~1.5 MB: most of it still in the WAL
    assert (data / "buffer.db-wal").stat().st_size > 100_000
    for name in ("buffer.db-wal", "buffer.db-shm"):  # the SD card lost its last writes
        (data / name).unlink()
    with caplog.at_level(logging.WARNING):
        buf, events = opened(durability=durability)
    kept = buf.stats().depth
    assert kept < high  # the database rolled back to its last checkpoint
    new = buf.append_many(items(3))
    assert new[0] > high, f"seq {new[0]} handed out again (the killed process reached {high})"
    lost = [e for e in events if e["kind"] == "buffer_lost"]
    assert len(lost) == 1 and lost[0]["reason"] == "wal_lost"
    assert lost[0]["first_seq"] == kept + 1 and lost[0]["last_seq"] >= high  # the range that may be lost
    assert lost[0]["last_seq"] < new[0]
    assert any(e["kind"] == "buffer_seq_jump" for e in events)
    assert [e["kind"] for e in events_of(buf)] == [e["kind"] for e in events]  # stored for the events topic
    assert "lost" in caplog.text
    print(f"\nWAL lost ({durability}): {high} readings handed out, {kept} kept, seq continues at {new[0]}")


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_every_unclean_start_jumps_past_the_sidecar(
        tmp_path: Path, opened: Callable[..., tuple[Buffer, list[dict[str, Any]]]], durability: str) -> None:
    """Without a reboot and in full durability too: which file survived is not known, so never trust it."""
    data = tmp_path / "data"
    high = run_and_kill(data, durability, 30)
    reserved = int((data / "seq.hwm").read_text())
    buf, events = opened(durability=durability)
    assert buf.append_many(items(1)) == [reserved + 1]
    jump = next(e for e in events if e["kind"] == "buffer_seq_jump")
    assert jump["reason"] == "unclean_shutdown" and jump["last_seq"] >= high and jump["next_seq"] == reserved + 1
    assert not [e for e in events if e["kind"] == "buffer_lost"]  # the WAL was there: nothing lost


def test_after_a_jump_the_last_seq_is_the_last_one_handed_out(
        tmp_path: Path, opened: Callable[..., tuple[Buffer, list[dict[str, Any]]]]) -> None:
    """The status API's ``last_seq``: a jump hands out nothing; the seqs it skips were never anyone's.

    Reporting the jump's target as the last seq made the seqs it skipped look handed out (the fault
    campaign then counted an announced gap as missing readings).
    """
    data = tmp_path / "data"
    high = run_and_kill(data, "full", 30)
    buf, events = opened(durability="full")
    jump = next(e for e in events if e["kind"] == "buffer_seq_jump")
    assert buf.stats().newest_seq == jump["last_seq"] >= high
    first = buf.append_many(items(2))
    assert first[0] == jump["next_seq"] and buf.stats().newest_seq == first[-1]


@pytest.mark.parametrize("damage", [
    os.urandom(12),
    b"\xff\xfe\x00garbage\x80\x81\x82",
    b"9223372036854775808\n",  # 2^63: overflowed sqlite_sequence
    b"9223372036854775000\n",  # near 2^63: seqs would run out at once
    b"-5\n",
    b"",
    b"12abc\n",
], ids=["random", "binary", "2^63", "near-2^63", "negative", "empty", "junk-suffix"])
def test_a_damaged_sidecar_is_announced_and_seqs_stay_above_everything_handed_out(
        tmp_path: Path, opened: Callable[..., tuple[Buffer, list[dict[str, Any]]]], damage: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    buf, _ = opened()
    handed = buf.append_many(items(120))
    buf.ack(handed[:100])
    buf.close()
    data = tmp_path / "data"
    (data / "seq.hwm").write_bytes(damage)
    with caplog.at_level(logging.WARNING):
        buf, events = opened()
    damaged = [e for e in events if e["kind"] == "buffer_sidecar_damaged"]
    assert len(damaged) == 1, events
    moved = Path(damaged[0]["moved_to"])
    assert moved.read_bytes() == damage and moved.parent == data
    assert "seq.hwm" in caplog.text and "damaged" in caplog.text
    new = buf.append_many(items(5))
    assert new[0] > handed[-1] and new[-1] < 2**53  # above everything handed out, far from running out
    assert buf.stats().depth == 25  # the backlog is kept
    assert int((data / "seq.hwm").read_text()) >= new[-1]  # a sound sidecar again
    buf.close()
    buf, events = opened()
    assert not [e for e in events if e["kind"] == "buffer_sidecar_damaged"]  # announced once
    assert buf.append_many(items(1))[0] > new[-1]


def test_a_damaged_sidecar_after_a_kill_keeps_seqs_above_the_last_reservation(
        tmp_path: Path, opened: Callable[..., tuple[Buffer, list[dict[str, Any]]]]) -> None:
    """Sidecar and the clean flag both gone wrong: the database's own copy of the reservation is used."""
    data = tmp_path / "data"
    high = run_and_kill(data, "normal", 30)
    (data / "seq.hwm").write_bytes(os.urandom(12))
    buf, events = opened()
    assert buf.append_many(items(1))[0] > high
    assert any(e["kind"] == "buffer_sidecar_damaged" for e in events)


def test_the_gateway_process_starts_with_a_damaged_sidecar(tmp_path: Path) -> None:
    """12 random bytes in seq.hwm used to be a UnicodeDecodeError traceback and exit 1 (a crash loop)."""
    data = tmp_path / "data"
    buf = Buffer(data)
    buf.open()
    buf.append_many(items(3))
    buf.close()
    (data / "seq.hwm").write_bytes(b"\x9c\xff\x00\x13\xfe\x80\x81\x82\x83\x84\x85\x86")
    probe = textwrap.dedent("""
        import sys
        from pathlib import Path
        from fieldgate.buffer import Buffer
        buf = Buffer(Path(sys.argv[1]))
        buf.open()
        print(buf.append_many([("d", 0, '{"a":1}')])[0])
        buf.close()
    """)
    out = subprocess.run([sys.executable, "-c", probe, str(data)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert int(out.stdout) > 3
    assert "damaged" in out.stderr

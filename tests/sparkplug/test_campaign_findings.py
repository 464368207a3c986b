"""Findings of the fault campaign in Sparkplug mode (bench/faults.py, row "sparkplug: broker kill, SIGKILL").

After a broker kill -9 the broker's saved copy of the host's retained STATE online came back though the
host was gone: the node birthed and published QoS 0 data to nobody (long form, seed 7: 491 seqs), and
the host that came back got DDATA without an NBIRTH. The node now waits (``sparkplug.stale_state_wait``)
for a STATE newer than the one its last births followed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Proc
from tests.support.broker import Mosquitto
from tests.support.collector import Collector
from tests.support.sparkplug_host import SparkplugHost

from .conftest import GROUP, HOST_ID, NODE, spb_config
from .test_edge_node import _births_done, _wait_log


def test_no_data_before_the_host_says_online_again_after_a_broker_kill(
        tmp_path: Path, fieldgate_proc: Callable[..., Proc]) -> None:
    # The broker saves after every change (as a site broker should, docs/faults.md): the host's retained
    # STATE online outlives the kill, though the host itself is gone.
    broker = Mosquitto(tmp_path / "mq", extra_config=["autosave_on_changes true", "autosave_interval 1"]).start()
    host = SparkplugHost(broker.host, broker.port, host_id=HOST_ID, group=GROUP, node=NODE).connect()
    observer: Collector | None = None
    again: SparkplugHost | None = None
    try:
        folder = tmp_path / "gw"
        cfg = folder / "fieldgate.yaml"
        cfg.parent.mkdir(parents=True)
        cfg.write_text(spb_config(folder, broker.port, interval="0.05s"))
        proc = fieldgate_proc("run", "-c", str(cfg))
        host.wait_for(_births_done, what="births")
        connects = sum("connected to" in line for line in proc.stderr_lines)
        broker.kill()
        with contextlib.suppress(OSError):
            host.crash()  # the host is gone with the broker, and does not come back yet
        broker.start()
        observer = Collector(broker.host, broker.port, topic="spBv1.0/#", clean_session=True).connect()
        _wait_log(proc, "connected to", connects + 1, timeout=30)
        # A bounded chance for the node to publish into a broker without its host (what the bug does);
        # a fixed node publishes nothing here, and the wait just ends.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(f"/NBIRTH/{NODE}" in m.topic for m in observer.messages):
            time.sleep(0.05)  # watching another process's publications, with a deadline
        again = SparkplugHost(broker.host, broker.port, host_id=HOST_ID, group=GROUP, node=NODE).connect()
        again.wait_for(_births_done, timeout=30, what="births to the host that came back")
        msgs = observer.messages
        live_state = next(m.index for m in msgs if m.topic == f"spBv1.0/STATE/{HOST_ID}" and not m.retain)
        early = [m.topic for m in msgs[:live_state] if f"/NBIRTH/{NODE}" in m.topic or "/DDATA/" in m.topic]
        assert early == [], f"{len(early)} node message(s) before the host said online again, e.g. {early[:3]}"
    finally:
        if observer is not None:
            observer.disconnect()
        if again is not None:
            again.disconnect()
        with contextlib.suppress(Exception):
            host.disconnect()
        broker.stop()

"""A broker that crashes loses what it acknowledged since its last save; the gateway covers that window.

mosquitto writes its queued messages to disk only when it saves (``autosave_interval``, 1800 s by
default). A ``kill -9`` or a power cut of the broker host loses every message it acknowledged
since: the gateway had deleted those readings at their PUBACK. ``buffer.keep_acked`` keeps
acknowledged readings for a while, and a reconnect sends them again (duplicates, never loss).

The rig: a real mosquitto that never saves during the test, a persistent subscriber whose
session the broker saved (it is offline, so the broker queues for it in memory), the real
gateway process, and a clean-session watcher that sees what flows.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Proc
from .support.broker import Mosquitto
from .support.collector import Collector
from .test_uplink import committed_max_seq, gw_config


def _top(col: Collector) -> int:
    return max((r["seq"] for r in col.readings()), default=0)


@pytest.mark.parametrize("keep", ["60s", "0s"])
def test_a_reconnect_resends_what_a_crashed_broker_acknowledged(
    tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc], keep: str
) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(gw_config(data, mosquitto.port, devices=2, interval="0.05s", buffer_extra=f", keep_acked: {keep}"))
    # The subscriber's session is saved (SIGTERM saves), then it is offline: from here on the
    # broker queues for it in memory only.
    sub_id = "crash-sub"
    Collector(mosquitto.host, mosquitto.port, client_id=sub_id).connect().disconnect()
    mosquitto.restart()
    watcher = Collector(mosquitto.host, mosquitto.port, clean_session=True).connect()
    gw = fieldgate_proc("run", "-c", str(cfg))
    try:
        watcher.wait_for(lambda: _top(watcher) >= 40, timeout=30, what="40 readings through the broker")
        before_kill = _top(watcher)
        mosquitto.kill()  # no save: what it acknowledged and queued for the subscriber is gone
        mosquitto.start()
        watcher.wait_connected(timeout=30)
        watcher.wait_for(lambda: _top(watcher) > before_kill + 20, timeout=30,
                         what="readings again after the broker's restart")
        gw.popen.send_signal(signal.SIGTERM)
        assert gw.popen.wait(20) == 0, "".join(gw.stderr_lines[-20:])
    finally:
        watcher.disconnect()
    produced = committed_max_seq(data)
    sub = Collector(mosquitto.host, mosquitto.port, client_id=sub_id).connect()
    try:
        sub.sync()
        got = set(sub.seqs())
        missing = [s for s in range(1, produced + 1) if s not in got]
        sub.check_contract()
        assert sub.per_device_in_order(), sub.order_violations()[:3]
    finally:
        sub.disconnect()
    if keep == "0s":
        # The control: without the window, the crash loses what the broker acknowledged before it.
        assert missing and missing[0] <= before_kill, f"nothing lost without keep_acked ({produced} produced)"
    else:
        assert not missing, f"{len(missing)} of {produced} seq(s) lost in the broker's crash, e.g. {missing[:10]}"
        assert any("acknowledged" in line and "again" in line for line in gw.stderr_lines), \
            "the resend is not said in the log"

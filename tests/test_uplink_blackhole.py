"""The uplink across a network that stops carrying packets without closing anything (a half-open TCP link).

A pulled cable or a dead router leaves the connection open on both ends: writes go into the
kernel's buffer and no PUBACK or PINGRESP comes back. The gateway must notice by its keepalive,
say so, keep buffering, reconnect once the network carries traffic again, and lose nothing.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from .conftest import Proc
from .support.broker import Mosquitto
from .support.collector import Collector
from .support.proxy import Proxy
from .test_uplink import check_all_arrived, committed_max_seq, gw_config


def _top(col: Collector) -> int:
    return max((r["seq"] for r in col.readings()), default=0)


def test_a_black_hole_is_noticed_by_the_keepalive_and_nothing_is_lost(
    tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]
) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "fieldgate.yaml"
    col = Collector(mosquitto.host, mosquitto.port).connect()
    with Proxy(mosquitto.host, mosquitto.port) as proxy:
        text = gw_config(data, mosquitto.port, devices=2, interval="0.05s",
                         mqtt_extra=", keepalive: 1s, connect_timeout: 2s, inflight: 10")
        cfg.write_text(text.replace(f"port: {mosquitto.port}", f"port: {proxy.port}"))
        gw = fieldgate_proc("run", "-c", str(cfg))
        try:
            col.wait_for(lambda: _top(col) >= 30, timeout=30, what="readings through the proxy")
            proxy.freeze()
            line = gw.wait_stderr("within the keepalive", timeout=30)
            assert "no answer from the broker" in line
            before = _top(col)
            proxy.thaw()
            # What the gateway wrote into the dead link (at most its in-flight window) arrives on the thaw;
            # readings beyond that came over a new connection.
            col.wait_for(lambda: proxy.accepted >= 2 and _top(col) > before + 60, timeout=60,
                         what="readings over a new connection after the link came back")
            gw.popen.send_signal(signal.SIGTERM)
            assert gw.popen.wait(20) == 0, "".join(gw.stderr_lines[-20:])
            stats = check_all_arrived(col, committed_max_seq(data))
            col.check_contract()
            print(f"\nblack hole: {stats['received']} received, {stats['duplicates']} duplicates")
        finally:
            col.disconnect()

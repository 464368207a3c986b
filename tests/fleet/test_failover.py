"""Broker failover (``mqtt.hosts``) with the real gateway process and two real mosquittos.

Every seq is counted at subscribers on both brokers: a switch must lose nothing the buffer
accepted, and the uplink stays on the broker it reached until that one fails.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..conftest import Proc
from ..support.broker import Mosquitto, free_port
from ..support.certs import TlsFiles
from ..support.collector import Collector
from .support import fleet_config, status_uplink


def committed_max_seq(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "buffer.db") as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
    return int(row[0]) if row else 0


def distinct(col: Collector) -> int:
    """Readings counted once each: a reconnect sends the last buffer.keep_acked seconds again."""
    return len(set(col.seqs()))


def top(col: Collector) -> int:
    """The highest seq received: new readings raise it, the resends after a switch do not."""
    return max(col.seqs(), default=0)


def test_failover_to_the_second_broker_loses_nothing_and_sticks(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        fieldgate_proc: Callable[..., Proc]) -> None:
    a, b = mosquitto_factory(), mosquitto_factory()
    web = free_port()
    data = tmp_path / "data"
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(fleet_config(data, [a, b], web_port=web))
    with Collector.for_broker(a, topic="fieldgate/gw-f/+/reading") as col_a, \
            Collector.for_broker(b, topic="fieldgate/gw-f/+/reading") as col_b:
        col_a.connect()
        col_b.connect()
        gw = fieldgate_proc("run", "-c", str(cfg))
        col_a.wait_for(lambda: distinct(col_a) >= 20, timeout=30, what="20 readings on the first broker")
        assert not col_b.readings(), "the second broker is a fallback, not a second destination"
        up = col_a.wait_for(lambda: (u := status_uplink(web)) and u["state"] == "connected" and u, timeout=20,
                            what="the status page")
        assert up["broker"] == a.url

        # The first broker fails (SIGTERM: it saves the persistent subscriber's queue, so what it
        # acknowledged reaches col_a after its restart; a SIGKILL would lose that on the broker's side).
        a.stop()
        top_a = top(col_a)
        col_b.wait_for(lambda: top(col_b) >= top_a + 20, timeout=30, what="new readings on the second broker")
        gw.wait_stderr(f"connected to {b.url}", timeout=10)
        up = col_b.wait_for(lambda: (u := status_uplink(web)) and u["state"] == "connected" and u, timeout=20,
                            what="the status page after the switch")
        assert up["broker"] == b.url

        # The first comes back: the gateway stays where it is.
        a.start()
        col_a.wait_connected(timeout=20)
        col_a.sync()
        on_a = distinct(col_a)
        seen_b = top(col_b)
        col_b.wait_for(lambda: top(col_b) >= seen_b + 40, timeout=30, what="40 more on the second")
        col_a.sync()
        assert distinct(col_a) == on_a, "the gateway went back to the first broker while the second worked"

        # Then the second fails: back to the first.
        b.stop()
        top_b = top(col_b)
        col_a.wait_for(lambda: top(col_a) >= top_b + 20, timeout=30, what="new readings back on the first")
        b.start()
        col_b.wait_connected(timeout=20)

        gw.popen.send_signal(signal.SIGTERM)
        assert gw.popen.wait(30) == 0
        upto = committed_max_seq(data)
        col_a.sync()
        col_b.sync()
        got = {r["seq"] for r in col_a.readings()} | {r["seq"] for r in col_b.readings()}
        missing = [s for s in range(1, upto + 1) if s not in got]
        assert upto > 100
        assert not missing, f"{len(missing)} of {upto} seq(s) reached neither broker, e.g. {missing[:10]}"
        assert "Traceback" not in "".join(gw.stderr_lines)


def test_failover_keeps_the_tls_settings_for_every_broker(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], test_pki: TlsFiles,
        fieldgate_proc: Callable[..., Proc]) -> None:
    # Both brokers require a client certificate signed by the CA: the second is reached only if the
    # switch carries the whole TLS setup (CA, client certificate, name check) along.
    a = mosquitto_factory(tls=test_pki, require_client_cert=True)
    b = mosquitto_factory(tls=test_pki, require_client_cert=True)
    cfg = tmp_path / "fieldgate.yaml"
    tls = (f", tls: {{ca_file: {test_pki.ca_cert}, cert_file: {test_pki.client_cert}, "
           f"key_file: {test_pki.client_key}}}")
    cfg.write_text(fleet_config(tmp_path / "data", [a, b], web_port=free_port(), mqtt_extra=tls))
    with Collector.for_broker(a, topic="fieldgate/gw-f/+/reading") as col_a, \
            Collector.for_broker(b, topic="fieldgate/gw-f/+/reading") as col_b:
        col_a.connect()
        col_b.connect()
        gw = fieldgate_proc("run", "-c", str(cfg))
        col_a.wait_for(lambda: len(col_a.readings()) >= 5, timeout=30, what="readings over TLS on the first")
        a.stop()
        col_b.wait_for(lambda: len(col_b.readings()) >= 5, timeout=30, what="readings over TLS on the second")
        gw.wait_stderr(f"connected to {b.url}", timeout=10)
        assert b.url.startswith("mqtts://")

"""Sparkplug edge node over a broker list (``mqtt.hosts``): the primary host decides the server.

Sparkplug 3.0, 5.10 (Primary Host Application STATE in multiple MQTT server topologies):
[tck-id-operational-behavior-primary-application-state-with-multiple-servers-walk] while the
primary host is offline per its STATE on a server, the edge node terminates its session there
and moves to the next server; [...-single-server] it is never connected to two at once; every
CONNECT has a new bdSeq, and NBIRTH carries the bdSeq of its connection's NDEATH will.

Real peers: two mosquittos, a host application on one of them (tests/support/sparkplug_host.py),
the retained STATE offline of the same host left on the other, the real gateway process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import Proc
from tests.support.broker import Mosquitto
from tests.support.sparkplug_host import SparkplugHost

from .conftest import GROUP, HOST_ID, NODE, spb_config
from .test_edge_node import _births_done, _wait_log


def test_the_node_walks_to_the_server_where_the_primary_host_is_online(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], fieldgate_proc: Callable[..., Proc]
) -> None:
    a, b = mosquitto_factory(), mosquitto_factory()
    # On A the host left (its retained STATE says offline); on B it is online.
    SparkplugHost(a.host, a.port, host_id=HOST_ID, group=GROUP, node=NODE).connect().disconnect()
    with SparkplugHost(a.host, a.port, host_id="watch-a", group=GROUP, node=NODE, joins_late=True) as at_a, \
            SparkplugHost(b.host, b.port, host_id=HOST_ID, group=GROUP, node=NODE) as host:
        folder = tmp_path / "gw"
        cfg = folder / "fieldgate.yaml"
        text = spb_config(folder, a.port).replace(f"host: 127.0.0.1, port: {a.port}",
                                                  f"hosts: ['127.0.0.1:{a.port}', '127.0.0.1:{b.port}']")
        cfg.write_text(text)
        gw = fieldgate_proc("run", "-c", str(cfg), env={"PYTHONWARNINGS": "default"})
        try:
            host.wait_for(_births_done, what="births at the server where the primary host is online")
            assert not at_a.of("NBIRTH"), "born at a server whose primary host is offline"
            _wait_log(gw, f"connected to mqtt://127.0.0.1:{b.port}", 1)
            bd = host.nbirths[-1].bdseq
            # The host leaves B too: NDEATH there (its bdSeq), then the node looks at A (offline) and
            # B again; when the host is back on B, a new NBIRTH with a later bdSeq.
            host.say(online=False)
            host.wait_for(lambda h: any(d.bdseq == bd for d in h.ndeaths), what="NDEATH at B")
            _wait_log(gw, f"connected to mqtt://127.0.0.1:{a.port}", 2)
            births = len(host.nbirths)
            host.say(online=True)
            host.wait_for(lambda h: len(host.nbirths) > births, what="NBIRTH when the host is back on B")
            assert host.nbirths[-1].bdseq != bd
            assert not at_a.of("NBIRTH")
            host.check()
        finally:
            gw.stop()
    text = "".join(gw.stderr_lines)
    assert "Traceback" not in text and "Warning:" not in text, text[-3000:]

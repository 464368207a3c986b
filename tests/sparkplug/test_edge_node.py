"""The Sparkplug edge node end to end: the real gateway process, the real mosquitto, a host application.

Each scenario of issue 19 runs ``fieldgate run`` with ``mqtt.format: sparkplug`` against a
mosquitto on a free port, with tests/support/sparkplug_host.py as the primary host. The host
checks every message against the specification's rules as it arrives (its failures name the
assertion IDs); the scenarios assert what the rules cannot know alone (bdSeq across a kill, no
fieldgate seq lost across an outage, historical flags).
"""

from __future__ import annotations

import json
import signal
import time

from tests.conftest import Proc
from tests.support.collector import Collector
from tests.support.sparkplug_host import SparkplugHost
from tests.test_uplink import committed_max_seq

from .conftest import Rig, spb_config

DEVICES = {"meter-1", "meter-2"}


def _births_done(h: SparkplugHost, after: int = 0) -> bool:
    """An NBIRTH after message ``after``, followed by a DBIRTH of every device, and DDATA of each."""
    births = [m for m in h.of("NBIRTH") if m.index >= after]
    if not births:
        return False
    start = births[-1].index
    dbirths = {m.device for m in h.of("DBIRTH") if m.index > start}
    ddata = {m.device for m in h.of("DDATA") if m.index > start}
    return dbirths >= DEVICES and ddata >= DEVICES


def _wait_log(proc: Proc, needle: str, count: int, timeout: float = 20.0) -> None:
    """Until ``needle`` was logged ``count`` times (waits on the process's stderr condition)."""
    deadline = time.monotonic() + timeout
    cond = proc._err_cond  # the condition its stderr pump notifies on every line
    with cond:
        while sum(needle in line for line in proc.stderr_lines) < count:
            left = deadline - time.monotonic()
            if left <= 0 or proc.popen.poll() is not None:
                raise AssertionError(f"{needle!r} not logged {count} times:\n{''.join(proc.stderr_lines[-30:])}")
            cond.wait(min(left, 0.5))


def _stop(proc: Proc) -> int:
    proc.popen.send_signal(signal.SIGTERM)
    return proc.popen.wait(20)


def test_clean_start_births_data_and_a_clean_stop_sends_ndeath(rig: Rig) -> None:
    h = rig.host
    gw = rig.gateway()
    h.wait_for(_births_done, what="NBIRTH, DBIRTH and DDATA of every device")
    h.wait_for(lambda h: len(h.of("DDATA", "meter-2")) >= 5, what="five DDATA of meter-2")
    h.check()
    first = h.nbirths[0]
    assert first.bdseq == 0, "[tck-id-topics-nbirth-bdseq-increment] the first bdSeq is 0"
    # Units as engUnit, the fieldgate seq on every value, live values not historical.
    dbirth = h.of("DBIRTH", "meter-1")[-1]
    assert dbirth.payload is not None
    units = {m.name: dict(zip(m.properties.keys, m.properties.values, strict=True)).get("engUnit")
             for m in dbirth.payload.metrics}
    assert units["voltage"] is not None and units["voltage"].string_value == "V"
    assert units["power_factor"] is None  # unitless: no engUnit
    data = [v for v in h.values if not v.birth]
    assert data and all(v.fg_seq is not None for v in data)
    # Historical: only what was accepted before the NBIRTH (the first polls, before the connection was up).
    hist = {v.fg_seq for v in data if v.historical}
    live = {v.fg_seq for v in data if not v.historical}
    assert live and (not hist or max(hist) < min(live)), (sorted(hist), sorted(live)[:5])
    assert _stop(gw) == 0
    # [tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath]: NDEATH on a clean stop,
    # with the bdSeq of the session ([tck-id-payloads-ndeath-bdseq]).
    h.wait_for(lambda h: len(h.ndeaths) >= 1, what="NDEATH after SIGTERM")
    assert h.ndeaths[-1].bdseq == first.bdseq
    # The next start: the next bdSeq, and every DBIRTH right after the NBIRTH (the catalogue was kept).
    mark = len(h.messages)
    rig.gateway()
    h.wait_for(lambda h: _births_done(h, mark), what="births after the restart")
    h.check()
    nbirth = next(m for m in h.of("NBIRTH") if m.index >= mark)
    assert nbirth.bdseq == 1, "[tck-id-topics-nbirth-bdseq-increment]"
    after = [m.kind for m in h.messages[nbirth.index + 1:nbirth.index + 3]]
    assert after == ["DBIRTH", "DBIRTH"], f"[tck-id-payloads-dbirth-order] after NBIRTH: {after}"


def test_no_nbirth_until_the_primary_host_is_online_and_leaves_when_it_goes_offline(rig: Rig) -> None:
    h = rig.host
    h.say(online=False)
    gw = rig.gateway()
    _wait_log(gw, "waiting for primary host", 1)
    # Connected and subscribed, host offline: nothing is born. The gateway's readings are committed meanwhile.
    data = rig.folder / "data"
    deadline = time.monotonic() + 20
    while committed_max_seq(data) < 20:
        assert time.monotonic() < deadline, "no readings committed while waiting for the host"
        time.sleep(0.05)  # polling a file another process writes, not synchronization
    assert not h.of("NBIRTH"), "[tck-id-message-flow-edge-node-birth-publish-phid-wait]"
    h.say(online=True)
    h.wait_for(_births_done, what="births once the host is online")
    b1 = h.nbirths[-1].bdseq
    # The host goes offline: NDEATH with the session's bdSeq, then a new connection that waits.
    h.say(online=False)
    h.wait_for(lambda h: any(d.bdseq == b1 for d in h.ndeaths),
               what="[tck-id-message-flow-edge-node-birth-publish-phid-offline] NDEATH after STATE offline")
    _wait_log(gw, "waiting for primary host", 2)
    births = len(h.nbirths)
    down_from = committed_max_seq(data)
    while committed_max_seq(data) < down_from + 10:
        assert time.monotonic() < deadline + 20, "no readings committed while the host was offline"
        time.sleep(0.05)  # as above
    assert len(h.nbirths) == births, "[tck-id-message-flow-edge-node-birth-publish-phid-wait]"
    h.say(online=True)
    h.wait_for(lambda h: len(h.nbirths) > births, what="NBIRTH when the host is back")
    assert h.nbirths[-1].bdseq == (b1 + 1) % 256, "[tck-id-topics-nbirth-bdseq-increment] one CONNECT later"
    # Everything accepted meanwhile arrives, as historical data.
    target = committed_max_seq(data)
    h.wait_for(lambda h: h.fg_seqs() >= set(range(1, target + 1)), what=f"every seq up to {target}")
    assert set(range(down_from + 1, down_from + 10)) <= h.fg_seqs(historical=True)
    h.check()


def test_broker_outage_backlog_is_replayed_as_historical_with_no_seq_lost(rig: Rig) -> None:
    h = rig.host
    rig.gateway(interval="0.05s")
    h.wait_for(_births_done, what="births")
    data = rig.folder / "data"
    rig.broker.stop()
    down = committed_max_seq(data)
    deadline = time.monotonic() + 20
    while committed_max_seq(data) < down + 100:
        assert time.monotonic() < deadline, "no backlog built up during the outage"
        time.sleep(0.05)  # polling a file another process writes, not synchronization
    backlog_to = committed_max_seq(data)
    rig.broker.start()
    h.wait_for(lambda h: h.fg_seqs() >= set(range(1, backlog_to + 1)), timeout=40,
               what=f"every seq up to {backlog_to} after the outage")
    hist = h.fg_seqs(historical=True)
    assert set(range(down + 1, backlog_to + 1)) <= hist, "the backlog is historical"
    h.wait_for(lambda h: any(v.fg_seq and v.fg_seq > backlog_to and not v.historical for v in h.values),
               what="live data after the backlog")
    h.check()


def test_sigkill_ndeath_carries_the_bdseq_and_the_next_nbirth_the_next(rig: Rig) -> None:
    h = rig.host
    gw = rig.gateway(protocol="3.1.1")
    h.wait_for(_births_done, what="births")
    bd = h.nbirths[-1].bdseq
    assert bd is not None
    gw.popen.send_signal(signal.SIGKILL)
    gw.popen.wait(10)
    h.wait_for(lambda h: len(h.ndeaths) >= 1, what="the broker's NDEATH (the will) after SIGKILL")
    assert h.ndeaths[-1].bdseq == bd, "[tck-id-payloads-ndeath-bdseq] NDEATH bdSeq is the NBIRTH's"
    mark = len(h.messages)
    rig.gateway(protocol="3.1.1")
    h.wait_for(lambda h: _births_done(h, mark), what="births after the restart")
    assert h.nbirths[-1].bdseq == (bd + 1) % 256, "[tck-id-topics-nbirth-bdseq-increment] across a kill"
    h.check()


def test_rebirth_request_resends_every_birth_and_bad_commands_are_refused(rig: Rig) -> None:
    h = rig.host
    gw = rig.gateway()
    h.wait_for(_births_done, what="births")
    bd = h.nbirths[-1].bdseq
    # Hostile inputs first: none of them stops the node.
    h.send_raw(f"spBv1.0/{h.group}/NCMD/{h.node}", b"\xff\xfe not protobuf")
    h.send_raw("spBv1.0/STATE/scada", b"{not json")
    gw.wait_stderr("ignoring NCMD", timeout=10)
    gw.wait_stderr("ignoring STATE", timeout=10)
    h.dcmd("meter-1", "voltage", 1.0)
    gw.wait_stderr("DCMD for device meter-1 refused", timeout=10)
    mark = len(h.messages)
    h.rebirth()
    h.wait_for(lambda h: _births_done(h, mark), what="[tck-id-operational-behavior-data-commands-rebirth-action-2]")
    reborn = next(m for m in h.of("NBIRTH") if m.index >= mark)
    assert reborn.bdseq == bd, "[tck-id-operational-behavior-data-commands-rebirth-action-3] same bdSeq"
    assert reborn.seq == 0
    assert not [m for m in h.of("NDEATH") if m.index >= mark]
    h.check()


def test_device_offline_is_ddeath_and_back_is_dbirth(rig: Rig) -> None:
    h = rig.host
    gw = rig.gateway(protocol="3.1.1")
    h.wait_for(_births_done, what="births")
    (rig.folder / "meter-1.fault").write_text("unreachable")
    h.wait_for(lambda h: bool(h.of("DDEATH", "meter-1")), what="DDEATH of meter-1")
    death = h.of("DDEATH", "meter-1")[-1].index
    h.wait_for(lambda h: len([m for m in h.of("DDATA", "meter-2") if m.index > death]) >= 3,
               what="meter-2 goes on")
    (rig.folder / "meter-1.fault").write_text("none")
    h.wait_for(lambda h: any(m.index > death for m in h.of("DBIRTH", "meter-1")), what="DBIRTH of meter-1 again")
    rebirth = next(m for m in h.of("DBIRTH", "meter-1") if m.index > death).index
    h.wait_for(lambda h: any(m.index > rebirth for m in h.of("DDATA", "meter-1")), what="DDATA of meter-1 again")
    # MQTT 3.1.1 has no "disconnect with will": a clean stop publishes NDEATH before its DISCONNECT
    # ([tck-id-payloads-ndeath-will-message-publisher-disconnect-mqtt311]).
    assert _stop(gw) == 0
    h.wait_for(lambda h: bool(h.ndeaths), what="NDEATH on a clean 3.1.1 stop")
    assert h.ndeaths[-1].bdseq == h.nbirths[-1].bdseq
    h.check()


def test_damaged_state_files_are_announced_and_the_node_starts_afresh(rig: Rig) -> None:
    data = rig.folder / "data"
    data.mkdir(parents=True)
    (data / "sparkplug-bdseq").write_bytes(b"\x00\xffgarbage")
    (data / "sparkplug-metrics.json").write_text('{"devices": {"meter-1": 7}}')
    with Collector(rig.broker.host, rig.broker.port) as col:
        gw = rig.gateway()
        h = rig.host
        h.wait_for(_births_done, what="births despite the damaged files")
        assert h.nbirths[0].bdseq == 0
        col.wait_for(lambda: len([e for e in col.events() if e["kind"] == "sparkplug_state_reset"]) >= 2,
                     what="both damaged files announced on the events topic")
        gw.wait_stderr("not a bdSeq", timeout=10)
        h.check()


def test_a_device_no_longer_configured_is_not_born_again(rig: Rig) -> None:
    """The catalogue remembers devices across restarts; one removed from the config must not come back alive."""
    data = rig.folder / "data"
    data.mkdir(parents=True)
    (data / "sparkplug-metrics.json").write_text(json.dumps(
        {"version": 1, "devices": {"meter-9": {"voltage": [1, 10, "V"]}, "meter-1": {"voltage": [2, 10, "V"]}}}))
    rig.gateway()
    h = rig.host
    h.wait_for(_births_done, what="births")
    assert not h.of("DBIRTH", "meter-9"), "a device removed from the config was born (shown alive) again"
    h.check()


def test_a_reload_that_removes_a_device_declares_it_dead(rig: Rig) -> None:
    h = rig.host
    gw = rig.gateway(devices=2)
    h.wait_for(_births_done, what="births")
    rig.config.write_text(spb_config(rig.folder, rig.broker.port, devices=1))
    gw.popen.send_signal(signal.SIGHUP)
    h.wait_for(lambda h: bool(h.of("DDEATH", "meter-2")), what="DDEATH of the removed meter-2")
    # Published in seq order: once a reading committed after the removal is out, all of meter-2's are.
    after = committed_max_seq(rig.folder / "data")
    h.wait_for(lambda h: max(h.fg_seqs()) > after, what="readings committed after the reload")
    # Readings of meter-2 accepted before the reload may still go out (DBIRTH, DDATA, DDEATH: nothing
    # accepted is lost), but it ends dead.
    assert [m for m in h.messages if m.device == "meter-2"][-1].kind == "DDEATH"
    h.check()


def test_a_flood_of_rebirth_requests_is_coalesced_and_the_last_one_is_honoured(rig: Rig) -> None:
    h = rig.host
    gw = rig.gateway()
    h.wait_for(_births_done, what="births")
    mark, t0 = len(h.messages), time.monotonic()
    for _ in range(30):
        h.rebirth()
    last_sent = time.monotonic()
    gw.wait_stderr("rebirth requests faster than", timeout=10)
    h.wait_for(lambda h: any(m.at > last_sent for m in h.of("NBIRTH")), what="a birth after the last request")
    births = [m for m in h.of("NBIRTH") if m.index >= mark]
    elapsed = births[-1].at - t0
    # A burst of 3, then one a second: 30 requests are not 30 births (each is every DBIRTH again).
    assert len(births) <= 3 + elapsed + 1, (len(births), elapsed)
    h.check()


def test_a_host_that_crashes_is_seen_by_its_will_and_the_node_waits_for_it(rig: Rig) -> None:
    h = rig.host
    gw = rig.gateway()
    h.wait_for(_births_done, what="births")
    bd = h.nbirths[-1].bdseq
    # A second host application watches: the first one dies (its will says STATE offline).
    with SparkplugHost(rig.broker.host, rig.broker.port, host_id="watcher", group=h.group, node=h.node,
                       joins_late=True) as w:
        w.wait_for(lambda w: bool(w.nbirths), what="the rebirth the late watcher asked for")
        h.crash()
        w.wait_for(lambda w: any(d.bdseq == bd for d in w.ndeaths),
                   what="[tck-id-operational-behavior-edge-node-termination-host-offline] NDEATH after the host's will")
        _wait_log(gw, "waiting for primary host", 2)
        h.connect()  # back, with a newer timestamp
        w.wait_for(lambda w: any(b.bdseq == (bd + 1) % 256 for b in w.nbirths), what="NBIRTH when the host is back")
        w.check()

"""SIGHUP reload of the real gateway process against real brokers: what it says it applies, it applies.

Every setting either takes effect on reload or is named in a "takes effect after a restart" warning
and in the ``config_reloaded`` event's ``restart_required`` list. A reload that moves the uplink
(another broker, another topic prefix, other credentials) loses no reading: every seq the buffer
assigned is seen by one of the two subscribers.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import Proc, sim_device
from .support.broker import Mosquitto
from .support.collector import Collector
from .support.contract import validate_event, validate_reading
from .test_uplink import committed_max_seq

GW = "gw-r"


def write_config(path: Path, data_dir: Path, mqtt: str, *, buffer: str = "flush_interval: 50ms",
                 web: str = "enabled: false", devices: int = 2,
                 reconnect: str = "reconnect_min: 0.05s, reconnect_max: 0.5s") -> None:
    path.write_text(
        f"gateway: {{id: {GW}, data_dir: {data_dir}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{{mqtt}, {reconnect}}}\n"
        f"buffer: {{{buffer}}}\n"
        f"web: {{{web}}}\n"
        "devices:\n" + "".join(sim_device(f"d{i}", poll_interval="0.05s") for i in range(devices))
    )


def stop_gracefully(proc: Proc) -> int:
    proc.popen.send_signal(signal.SIGTERM)
    return proc.popen.wait(30)


def test_reload_moves_broker_prefix_and_credentials_and_loses_nothing(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], fieldgate_proc: Callable[..., Proc]
) -> None:
    old = mosquitto_factory()
    new = mosquitto_factory(users={"gw": "s3cret"})
    secret = tmp_path / "mqtt.password"
    secret.write_text("s3cret\n")
    at_old = Collector(old.host, old.port, topic="#").connect()
    at_new = Collector(new.host, new.port, topic="#", username="gw", password="s3cret").connect()
    data = tmp_path / "data"
    cfg = tmp_path / "fieldgate.yaml"
    write_config(cfg, data, f"host: 127.0.0.1, port: {old.port}")
    proc = fieldgate_proc("run", "-c", str(cfg))
    try:
        at_old.wait_for(lambda: len(at_old.readings()) >= 20, timeout=30, what="readings at the first broker")
        write_config(cfg, data, f"host: 127.0.0.1, port: {new.port}, topic_prefix: site2/north, username: gw, "
                     f"password: {{file: {secret}}}", buffer="flush_interval: 50ms, max_bytes: 50MB, spill_max: 500",
                     web="enabled: false, listen: '127.0.0.1:0'")
        proc.popen.send_signal(signal.SIGHUP)
        warning = proc.wait_stderr("after a restart", timeout=20)
        assert "buffer.max_bytes" in warning and "buffer.spill_max" in warning and "web.listen" in warning, warning
        at_new.wait_for(lambda: len(at_new.readings()) >= 20, timeout=30, what="readings at the new broker")
        # the new prefix is used for everything: readings, the retained birth, device statuses and events
        topics = {m.topic for m in at_new.messages if not m.topic.startswith(f"site2/north/{GW}/")}
        assert not {t for t in topics if t.startswith("fieldgate/")}, sorted(topics)
        birth = at_new.retained(f"site2/north/{GW}/status")
        assert birth is not None and birth.json()["state"] == "online"
        assert at_new.retained(f"site2/north/{GW}/d0/status") is not None
        # the old broker is told the gateway left: not a stale retained "online" forever
        left = at_old.retained(f"fieldgate/{GW}/status")
        assert left is not None and left.json()["state"] == "offline", left
        assert at_old.retained_map(f"fieldgate/{GW}/+/status") == {}, "stale device statuses at the old prefix"
        at_new.wait_for(lambda: any(e["kind"] == "config_reloaded" for e in at_new.events()), timeout=20,
                        what="the reload event")
        event = next(e for e in at_new.events() if e["kind"] == "config_reloaded")
        validate_event(event)
        assert {"buffer.max_bytes", "buffer.spill_max", "web.listen"} <= set(event["restart_required"]), event
        assert {"mqtt.port", "mqtt.topic_prefix", "mqtt.username", "mqtt.password"} <= set(
            event["applied"]), event
        n = len(at_new.readings())
        at_new.wait_for(lambda: len(at_new.readings()) >= n + 10, timeout=30, what="readings going on")
        assert stop_gracefully(proc) == 0, "".join(proc.stderr_lines)
    finally:
        proc.stop()
    # the handover is not an uplink error (it was logged as "lost: Normal disconnection")
    assert not [ln for ln in proc.stderr_lines if " uplink: " in ln], "".join(proc.stderr_lines)
    at_old.sync()  # acknowledged by the broker is not yet delivered to the subscriber: a barrier
    at_new.sync()
    target = committed_max_seq(data)
    seen_old = {r["seq"] for r in at_old.readings()}
    seen_new = {r["seq"] for r in at_new.readings()}
    for r in at_old.readings() + at_new.readings():
        validate_reading(r)
    missing = sorted(set(range(1, target + 1)) - seen_old - seen_new)
    assert not missing, (f"{len(missing)} of {target} seqs never arrived, e.g. {missing[:10]}\n"
                         + "".join(proc.stderr_lines[-15:]))
    # handed over, not replayed: readings acknowledged by the old broker are not sent again to the new one
    assert len(seen_old & seen_new) <= 50, f"{len(seen_old & seen_new)} readings went to both brokers"
    assert at_old.per_device_in_order() and at_new.per_device_in_order()
    assert "Traceback" not in "".join(proc.stderr_lines)
    at_old.disconnect()
    at_new.disconnect()


def test_reload_of_a_setting_that_cannot_apply_live_is_named(
    tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]
) -> None:
    col = Collector(mosquitto.host, mosquitto.port).connect()
    data = tmp_path / "data"
    cfg = tmp_path / "fieldgate.yaml"
    write_config(cfg, data, f"host: 127.0.0.1, port: {mosquitto.port}")
    proc = fieldgate_proc("run", "-c", str(cfg))
    try:
        col.wait_for(lambda: len(col.readings()) >= 5, timeout=30, what="readings")
        text = cfg.read_text().replace(f"id: {GW},", "id: gw-other,").replace("clock_check: off", "clock_check: auto")
        text = text.replace("flush_interval: 50ms", "flush_interval: 100ms, durability: normal")
        cfg.write_text(text)
        started = time.monotonic()
        proc.popen.send_signal(signal.SIGHUP)
        col.wait_for(lambda: any(e["kind"] == "config_reloaded" for e in col.events()), timeout=20,
                     what="the reload event")
        event: dict[str, Any] = next(e for e in col.events() if e["kind"] == "config_reloaded")
        validate_event(event)
        assert {"gateway.id", "buffer.durability"} <= set(event["restart_required"]), event
        assert "buffer.flush_interval" in event["applied"], event
        line = proc.wait_stderr("after a restart")
        assert "gateway.id" in line and "buffer.durability" in line
        # still the old identity: the running gateway does not switch topics half-way
        n = len(col.readings())
        col.wait_for(lambda: len(col.readings()) >= n + 5, timeout=30, what="readings after the reload")
        assert all(r["gateway"] == GW for r in col.readings())
        print(f"reload applied in {time.monotonic() - started:.2f} s (event seen)")
        assert stop_gracefully(proc) == 0
    finally:
        proc.stop()
        col.disconnect()


def test_reload_away_from_a_broker_that_is_down_connects_at_once_and_sends_the_backlog(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], fieldgate_proc: Callable[..., Proc]
) -> None:
    old = mosquitto_factory()
    new = mosquitto_factory()
    at_old = Collector(old.host, old.port, topic="#").connect()
    at_new = Collector(new.host, new.port, topic="#").connect()
    data = tmp_path / "data"
    cfg = tmp_path / "fieldgate.yaml"
    # Long reconnect waits: only a reload that cuts the backoff short reaches the new broker in time.
    slow = "reconnect_min: 30s, reconnect_max: 60s"
    write_config(cfg, data, f"host: 127.0.0.1, port: {old.port}", reconnect=slow)
    proc = fieldgate_proc("run", "-c", str(cfg))
    try:
        at_old.wait_for(lambda: len(at_old.readings()) >= 10, timeout=30, what="readings at the first broker")
        old.stop()  # the subscriber's session stays at the old broker (persistence): read at the end
        proc.wait_stderr("readings stay buffered", timeout=20)
        write_config(cfg, data, f"host: 127.0.0.1, port: {new.port}", reconnect=slow)
        proc.popen.send_signal(signal.SIGHUP)
        at_new.wait_for(lambda: len(at_new.readings()) >= 10, timeout=20, what="readings at the new broker")
        assert stop_gracefully(proc) == 0, "".join(proc.stderr_lines)
    finally:
        proc.stop()
    # What the old broker acknowledged just before it stopped waits in the subscriber's session there.
    old.start()
    at_old.wait_connected(timeout=20)
    at_old.sync()
    at_new.sync()
    target = committed_max_seq(data)
    missing = sorted(set(range(1, target + 1)) - {r["seq"] for r in at_old.readings() + at_new.readings()})
    assert not missing, (f"{len(missing)} of {target} seqs never arrived, e.g. {missing[:10]}\n"
                         + "".join(proc.stderr_lines[-15:]))
    assert "Traceback" not in "".join(proc.stderr_lines)
    at_old.disconnect()
    at_new.disconnect()


def test_a_new_prefix_carries_the_last_will(
    tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]
) -> None:
    """Same broker, new topic_prefix, then kill -9: the broker says offline under the new prefix (the will)."""
    col = Collector(mosquitto.host, mosquitto.port, topic="#").connect()
    data = tmp_path / "data"
    cfg = tmp_path / "fieldgate.yaml"
    write_config(cfg, data, f"host: 127.0.0.1, port: {mosquitto.port}, keepalive: 2s")
    proc = fieldgate_proc("run", "-c", str(cfg))
    try:
        col.wait_for(lambda: len(col.readings()) >= 5, timeout=30, what="readings")
        write_config(cfg, data, f"host: 127.0.0.1, port: {mosquitto.port}, keepalive: 2s, topic_prefix: moved")
        proc.popen.send_signal(signal.SIGHUP)
        col.wait_for(lambda: any(m.topic.startswith(f"moved/{GW}/") and m.topic.endswith("/reading")
                                 for m in col.messages), timeout=20, what="readings under the new prefix")
        old_status = col.retained(f"fieldgate/{GW}/status")
        assert old_status is not None and old_status.json()["state"] == "offline"
        assert col.retained_map(f"fieldgate/{GW}/+/status") == {}
        new_status = col.retained(f"moved/{GW}/status")
        assert new_status is not None and new_status.json()["state"] == "online"
        proc.popen.kill()  # no clean DISCONNECT: only the will can say it
        proc.popen.wait(10)
        col.wait_for(lambda: any(m.topic == f"moved/{GW}/status" and m.json()["state"] == "offline"
                                 for m in col.messages), timeout=30, what="the will under the new prefix")
    finally:
        proc.stop()
        col.disconnect()


def test_every_config_key_is_either_applied_live_or_named_for_a_restart() -> None:
    """A key added to the models later must be sorted into reload.py's lists (else it is called restart-only)."""
    from fieldgate.config import GatewayConfig
    from fieldgate.reload import LIVE_KEYS, LIVE_SECTIONS, RESTART_KEYS

    assert not LIVE_KEYS & RESTART_KEYS
    unsorted = []
    for section, info in GatewayConfig.model_fields.items():
        if section in LIVE_SECTIONS:
            continue
        model = info.annotation
        assert isinstance(model, type), section
        unsorted += [f"{section}.{k}" for k in model.model_fields if f"{section}.{k}" not in LIVE_KEYS | RESTART_KEYS]
    assert not unsorted, f"sort these into fieldgate/reload.py: {unsorted}"


def test_plan_reload_sorts_the_changed_keys() -> None:
    from fieldgate.config import load_config_text
    from fieldgate.reload import plan_reload

    def cfg(extra_mqtt: str = "", buffer: str = "{}", web: str = "{}", gw: str = "") -> Any:
        return load_config_text(
            f"gateway: {{id: g{gw}}}\nmqtt: {{host: h{extra_mqtt}}}\nbuffer: {buffer}\nweb: {web}\n", "t.yaml").config

    base = cfg()
    assert plan_reload(base, cfg()).applied == [] and plan_reload(base, cfg()).restart_required == []
    plan = plan_reload(base, cfg(", topic_prefix: p2, tls: {server_name: x}, batch: {enabled: true}",
                                 "{flush_interval: 1s, durability: normal}", "{listen: '127.0.0.1:9'}",
                                 gw=", data_dir: /d"))
    # mqtt.tls from none to {server_name: x}: only the key that differs is named
    assert plan.applied == ["buffer.flush_interval", "mqtt.batch.enabled", "mqtt.tls.server_name",
                            "mqtt.topic_prefix"], plan
    assert plan.restart_required == ["buffer.durability", "gateway.data_dir", "web.listen"], plan


def _slow_config(path: Path, data_dir: Path, mqtt: str, folder: Path) -> None:
    """The running config plus 400 disabled devices on four 1500-point profiles: valid, and about a
    second of CPU to load (under the loader's 5 s limit), as a big site's file is."""
    profiles = []
    for k in range(4):
        prof = folder / f"big{k}.yaml"
        prof.write_text("schema_version: 1\ndriver: sim\nvendor: test\nmodel: big\npoints:\n" + "".join(
            f"  - {{name: p{i}, unit: V, sim: {{shape: random, min: 0, max: 1}}}}\n" for i in range(1500)))
        profiles.append(prof)
    write_config(path, data_dir, mqtt)
    with path.open("a") as f:
        f.write("".join(f"  - {{id: x{i}, driver: sim, profile: {profiles[i % 4]}, enabled: false}}\n"
                        for i in range(400)))


def test_polls_go_on_while_a_slow_config_loads(
    tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]
) -> None:
    """SIGHUP reads the file off the event loop: the devices keep their 50 ms schedule meanwhile."""
    at = Collector(mosquitto.host, mosquitto.port, topic="#").connect()
    data, cfg = tmp_path / "data", tmp_path / "fieldgate.yaml"
    mqtt = f"host: 127.0.0.1, port: {mosquitto.port}"
    write_config(cfg, data, mqtt)
    proc = fieldgate_proc("run", "-c", str(cfg))
    try:
        at.wait_for(lambda: len(at.readings()) >= 10, timeout=30, what="readings before the reload")
        _slow_config(cfg, data, mqtt, tmp_path)
        t0 = time.time()
        proc.popen.send_signal(signal.SIGHUP)
        proc.wait_stderr("configuration reloaded", timeout=60)
        t1 = time.time()
        at.wait_for(lambda: any(r["device"] == "d0" and _ts(r) > t1 for r in at.readings()), timeout=30,
                    what="a reading after the reload")
        stamps = sorted(_ts(r) for r in at.readings() if r["device"] == "d0")
        inside = [t for t in stamps if t0 <= t <= t1] + [next(t for t in stamps if t > t1)]
        gaps = [b - a for a, b in zip([t0, *inside], inside, strict=False)]
        # On the loop, the load stalled every device for all of it (one gap as long as the reload).
        # Off it, polls go on: no gap near the reload's length (2 cores, other tests running: half of it).
        assert t1 - t0 > 0.3, f"the file loaded in {t1 - t0:.2f} s: too fast to show anything"
        assert max(gaps) < (t1 - t0) / 2, (f"polls stalled {max(gaps):.2f} s during a {t1 - t0:.2f} s reload",
                                           [round(g, 2) for g in gaps])
        print(f"reload took {t1 - t0:.2f} s; longest gap between d0's polls meanwhile {max(gaps):.3f} s")
        assert stop_gracefully(proc) == 0
    finally:
        proc.stop()
        at.disconnect()


def _ts(reading: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(reading["ts"].replace("Z", "+00:00")).timestamp()


def test_signals_during_the_shutdown_are_harmless(
    tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]
) -> None:
    """SIGHUP and SIGTERM keep coming while the gateway stops (a logrotate hook, systemd's stop, an
    impatient operator): it still exits 0, with no "Exception ignored ... signal wakeup fd" and no
    death by the default action of a signal after the loop removed its handlers."""
    import os

    at = Collector(mosquitto.host, mosquitto.port, topic="#").connect()
    cfg = tmp_path / "fieldgate.yaml"
    write_config(cfg, tmp_path / "data", f"host: 127.0.0.1, port: {mosquitto.port}")
    proc = fieldgate_proc("run", "-c", str(cfg))
    try:
        at.wait_for(lambda: len(at.readings()) >= 5, timeout=30, what="readings")
        proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        sent = 0
        while proc.popen.poll() is None and time.monotonic() < deadline:
            try:
                os.kill(proc.popen.pid, signal.SIGHUP if sent % 2 else signal.SIGTERM)
            except ProcessLookupError:
                break
            sent += 1
            time.sleep(0.0005)  # the pace of the storm (a load generator), not a synchronization
        rc = proc.popen.wait(30)
        err = "".join(proc.stderr_lines)
        assert rc == 0, f"exit {rc} after {sent} signals during the shutdown:\n{err[-2000:]}"
        assert "Exception ignored" not in err and "Traceback" not in err, err[-2000:]
    finally:
        proc.stop()
        at.disconnect()

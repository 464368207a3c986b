"""Remote configuration over MQTT with the real gateway process and a real mosquitto.

Each test sends ``config/set`` as an operator would, and reads ``config/result``,
``events`` and the retained ``config/current`` as the fleet's tooling would; the file on
disk is checked to be exactly the old or the new one.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from ..conftest import REPO, Proc, sim_device
from ..support.broker import Mosquitto, free_port
from ..support.collector import Collector

SCHEMA = json.loads((REPO / "gateway" / "contract" / "config.schema.json").read_text())
GW = "gw-r"


def _validator(part: str) -> Draft202012Validator:
    return Draft202012Validator({**SCHEMA, "$ref": f"#/$defs/{part}"})


def config_text(tmp: Path, port: int, devices: int = 2, probation: str = "20s", extra: str = "") -> str:
    return (
        f"gateway: {{id: {GW}, data_dir: {tmp / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {port}, reconnect_min: 0.1s, reconnect_max: 0.5s, connect_timeout: 2s}}\n"
        "buffer: {flush_interval: 50ms}\n"
        "web: {enabled: false}\n"
        f"remote_config: {{enabled: true, probation: {probation}}}\n"
        f"{extra}"
        "devices:\n" + "".join(sim_device(f"d{i}", poll_interval="0.1s") for i in range(devices))
    )


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Rig:
    """One gateway process with remote configuration on, its broker and an operator's client."""

    def __init__(self, tmp: Path, broker: Mosquitto, start: Callable[..., Proc]) -> None:
        self.tmp, self.broker, self._start = tmp, broker, start
        self.path = tmp / "etc" / "fieldgate.yaml"
        self.path.parent.mkdir()
        self.col = Collector.for_broker(broker, topic=f"fieldgate/{GW}/#").connect()
        self.proc: Proc | None = None

    def run(self) -> Proc:
        self.proc = self._start("run", "-c", str(self.path))
        self.col.wait_for(lambda: self.current() is not None, timeout=30, what="the retained config/current")
        return self.proc

    def send(self, change: dict[str, Any] | bytes) -> None:
        if isinstance(change, dict):
            _validator("set").validate(change)
        self.col.publish(f"fieldgate/{GW}/config/set", change if isinstance(change, bytes) else json.dumps(change))

    def results(self, change_id: str | None = None) -> list[dict[str, Any]]:
        out = [m.json() for m in self.col.messages if m.topic == f"fieldgate/{GW}/config/result"]
        for r in out:
            _validator("result").validate(r)
        return [r for r in out if change_id is None or r["id"] == change_id]

    def wait_result(self, change_id: str | None, status: str, timeout: float = 30) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((r for r in self.results(change_id) if r["status"] == status), None)
        got = self.col.wait_for(found, timeout=timeout, what=f"result {status} for {change_id}")
        assert got is not None
        return got

    def current(self) -> dict[str, Any] | None:
        msgs = [m for m in self.col.messages if m.topic == f"fieldgate/{GW}/config/current"]
        if not msgs:
            return None
        doc: dict[str, Any] = msgs[-1].json()
        _validator("current").validate(doc)
        return doc

    def event_kinds(self) -> list[str]:
        return [e["kind"] for e in self.col.events()]

    def close(self) -> None:
        if self.proc is not None and self.proc.popen.poll() is None:
            self.proc.popen.send_signal(signal.SIGTERM)
            self.proc.popen.wait(30)
        if self.proc is not None:
            print("".join(self.proc.stderr_lines[-60:]))  # shown when the test failed
        self.col.disconnect()


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]) -> Iterator[Rig]:
    r = Rig(tmp_path, mosquitto, fieldgate_proc)
    yield r
    r.close()


def test_a_valid_change_is_applied_kept_and_announced(rig: Rig) -> None:
    old = config_text(rig.tmp, rig.broker.port)
    rig.path.write_text(old)
    rig.run()
    assert rig.current() == {**rig.current(), "hash": sha(old.encode()), "source": "local"}  # type: ignore[dict-item]
    new = config_text(rig.tmp, rig.broker.port, devices=3)
    rig.send({"id": "chg-1", "version": "v2", "config": new})
    rig.wait_result("chg-1", "probation")
    applied = rig.wait_result("chg-1", "applied")
    assert applied["hash"] == sha(new.encode()) and applied["version"] == "v2"
    assert rig.path.read_text() == new
    assert rig.path.with_name("fieldgate.yaml.prev").read_text() == old
    rig.col.wait_for(lambda: (c := rig.current()) and c["hash"] == sha(new.encode()), what="current is the new one")
    assert rig.current()["version"] == "v2"  # type: ignore[index]
    rig.col.wait_for(lambda: any(r["device"] == "d2" for r in rig.col.readings()), what="the added device")
    steps = ["config_remote_received", "config_reloaded", "config_remote_applied", "config_remote_committed"]
    rig.col.wait_for(lambda: all(k in rig.event_kinds() for k in steps), what=f"the events {steps}")
    # doctor shows the last remote change
    done = subprocess.run([sys.executable, "-m", "fieldgate.cli", "doctor", "-c", str(rig.path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "chg-1" in done.stdout and "applied" in done.stdout, done.stdout + done.stderr


def test_an_invalid_change_is_refused_with_the_errors_of_validate(rig: Rig) -> None:
    old = config_text(rig.tmp, rig.broker.port)
    rig.path.write_text(old)
    rig.run()
    bad = old.replace("poll_interval: 0.1s", "pol_interval: 0.1s", 1).replace("driver: sim", "driver: simm", 1)
    rig.send({"id": "chg-bad", "config": bad})
    refused = rig.wait_result("chg-bad", "refused")
    # The same diagnostics as `fieldgate validate` prints for that file, beside the real one.
    probe = rig.path.with_name("probe.yaml")
    probe.write_text(bad)
    done = subprocess.run([sys.executable, "-m", "fieldgate.cli", "validate", str(probe)],
                          capture_output=True, text=True, timeout=60, check=False)
    expected = [line.split(": ", 1)[1] for line in done.stderr.splitlines() if line.startswith(str(probe))]
    got = [e.split(": ", 1)[1] for e in refused["errors"]]
    assert expected and all(e in got for e in expected), (expected, got)
    assert len(got) >= 2
    # Valid, but naming a file the gateway does not have (files are never sent along).
    no_file = old.replace("connect_timeout: 2s}", f"connect_timeout: 2s, tls: {{ca_file: {rig.tmp}/no-such-ca.pem}}}}")
    rig.send({"id": "chg-nofile", "config": no_file})
    missing = rig.wait_result("chg-nofile", "refused")
    assert any("no-such-ca.pem" in e and "must exist on the gateway" in e for e in missing["errors"]), missing
    assert rig.path.read_text() == old
    assert "config_remote_refused" in rig.event_kinds()
    # Not JSON at all: a named error, and the gateway goes on.
    rig.send(b"\xff not json")
    nj = rig.col.wait_for(lambda: next((r for r in rig.results() if r["id"] is None), None), what="a refusal")
    assert nj["status"] == "refused"
    assert "not JSON" in nj["errors"][0]
    n = len(rig.col.readings())
    rig.col.wait_for(lambda: len(rig.col.readings()) > n + 5, what="readings go on")


def test_a_change_that_breaks_the_uplink_is_rolled_back_within_probation(rig: Rig) -> None:
    old = config_text(rig.tmp, rig.broker.port, probation="3s")
    rig.path.write_text(old)
    rig.run()
    wrong = old.replace(f"port: {rig.broker.port}", f"port: {free_port()}")
    rig.send({"id": "chg-port", "version": "v-wrong", "config": wrong})
    rig.wait_result("chg-port", "probation", timeout=20)
    # The gateway is away from the broker now: the result comes once it is back on the old settings.
    rolled = rig.wait_result("chg-port", "rolled_back", timeout=30)
    assert any("uplink" in e for e in rolled["errors"]), rolled
    assert rolled["hash"] == sha(old.encode())
    assert rig.path.read_text() == old
    rig.col.wait_for(lambda: "config_remote_rolled_back" in rig.event_kinds(), what="the rollback event")
    n = len(rig.col.readings())
    rig.col.wait_for(lambda: len(rig.col.readings()) > n + 5, what="readings flow again")
    assert rig.current()["hash"] == sha(old.encode())  # type: ignore[index]


def test_a_change_sent_twice_is_applied_once(rig: Rig) -> None:
    old = config_text(rig.tmp, rig.broker.port)
    rig.path.write_text(old)
    rig.run()
    change = {"id": "chg-twice", "version": "v3", "config": config_text(rig.tmp, rig.broker.port, devices=1)}
    rig.send(change)
    rig.send(change)
    rig.wait_result("chg-twice", "applied")
    dup = rig.wait_result("chg-twice", "duplicate")
    assert dup["first_status"] == "applied"
    assert [r["status"] for r in rig.results("chg-twice")].count("applied") == 1
    # The same content under a new id is no change either.
    rig.send({**change, "id": "chg-again"})
    rig.wait_result("chg-again", "unchanged")
    rig.col.wait_for(lambda: rig.event_kinds().count("config_remote_received") == 3, what="the third event")
    rig.col.sync()
    assert rig.event_kinds().count("config_remote_applied") == 1
    assert rig.event_kinds().count("config_reloaded") == 1


@pytest.mark.parametrize("after_s", [0.0, 0.01, 0.05])
def test_sigkill_during_apply_restarts_into_the_old_or_the_new_config(
        rig: Rig, after_s: float, fieldgate_proc: Callable[..., Proc]) -> None:
    old = config_text(rig.tmp, rig.broker.port)
    new = config_text(rig.tmp, rig.broker.port, devices=3)
    rig.path.write_text(old)
    proc = rig.run()
    rig.send({"id": "chg-kill", "version": "v9", "config": new})
    proc.wait_stderr("chg-kill: applying", timeout=30)
    if after_s:
        # Spread the kill over the apply (write .prev, the record, the rename, the reload);
        # a deliberate offset of the fault, not a wait for anything.
        import time
        time.sleep(after_s)
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(10)
    on_disk = rig.path.read_bytes()
    assert on_disk in (old.encode(), new.encode()), "the config file is neither the old nor the new one"
    n_current = len(rig.col.on("/config/current"))
    rig.proc = fieldgate_proc("run", "-c", str(rig.path))
    # Its first config/current is published after it subscribed to config/set (same connection).
    rig.col.wait_for(lambda: len(rig.col.on("/config/current")) > n_current, timeout=30,
                     what="the restarted gateway's config/current")
    assert rig.current()["hash"] == sha(on_disk)  # type: ignore[index]
    if on_disk == old.encode():
        # The change never landed: the operator saw no "applied" and sends it again; the same id is
        # applied now (a change interrupted before its rename is not a duplicate).
        rig.send({"id": "chg-kill", "version": "v9", "config": new})
    final = rig.col.wait_for(
        lambda: next((r for r in rig.results("chg-kill") if r["status"] == "applied"), None),
        timeout=40, what="the change applied (before the kill, or after the restart)")
    assert final["hash"] == sha(new.encode())
    assert rig.path.read_bytes() == new.encode()
    rig.col.wait_for(lambda: any(r["device"] == "d2" for r in rig.col.readings()), what="the new device")


@pytest.mark.parametrize("landed", [True, False])
def test_a_crash_record_is_finished_after_the_restart(rig: Rig, landed: bool) -> None:
    """The state a kill leaves between the record and the end of the probation, made exactly.

    landed: the rename happened (the new file runs): the probation starts again and passes.
    Not landed: the old file runs: the change is answered failed and may be sent again.
    """
    old = config_text(rig.tmp, rig.broker.port)
    new = config_text(rig.tmp, rig.broker.port, devices=3)
    rig.path.write_text(new if landed else old)
    rig.path.with_name("fieldgate.yaml.prev").write_text(old)
    data = rig.tmp / "data"
    data.mkdir()
    (data / "remote_config.json").write_text(json.dumps({
        "seen": ["chg-crash"], "last": None, "current": {"hash": sha(old.encode()), "version": None, "id": None,
                                                          "source": "local"},
        "probation": {"id": "chg-crash", "version": "v5", "hash": sha(new.encode()),
                      "prev_hash": sha(old.encode()), "online_before": ["d0", "d1"]}}))
    rig.run()
    if landed:
        done = rig.wait_result("chg-crash", "applied")
        assert done["hash"] == sha(new.encode())
        rig.col.wait_for(lambda: "config_remote_resumed" in rig.event_kinds(), what="the resumed probation")
        rig.col.wait_for(lambda: (c := rig.current()) and c["version"] == "v5", what="current names v5")
    else:
        failed = rig.wait_result("chg-crash", "failed")
        assert "stopped before the change was applied" in failed["errors"][0]
        rig.send({"id": "chg-crash", "version": "v5", "config": new})
        rig.wait_result("chg-crash", "applied")
        assert rig.path.read_text() == new
    state = json.loads((data / "remote_config.json").read_text())
    assert state["probation"] is None and state["last"]["status"] == "applied"


def test_a_change_that_takes_devices_offline_is_rolled_back(rig: Rig) -> None:
    old = config_text(rig.tmp, rig.broker.port, probation="3s")
    rig.path.write_text(old)
    rig.run()
    rig.col.wait_for(lambda: {r["device"] for r in rig.col.readings()} >= {"d0", "d1"}, what="both devices")
    # d0 becomes a Modbus meter on a port where nothing answers: it never comes online.
    sim_d0 = next(line for line in old.splitlines() if "id: d0" in line)
    broken = old.replace(sim_d0, f"  - {{id: d0, driver: modbus, profile: eastron/sdm120, poll_interval: 0.5s, "
                                 f"connection: {{host: 127.0.0.1, port: {free_port()}, unit: 1}}}}")
    rig.send({"id": "chg-offline", "config": broken})
    rolled = rig.wait_result("chg-offline", "rolled_back", timeout=30)
    assert any("device(s) online" in e and "d0" in e for e in rolled["errors"]), rolled
    assert rig.path.read_text() == old
    n = len(rig.col.seqs(device="d0"))
    rig.col.wait_for(lambda: len(rig.col.seqs(device="d0")) > n, what="d0 (sim) reading again")


def test_the_last_result_is_said_again_after_a_restart(rig: Rig) -> None:
    """A kill right after the probation passed: the record says applied, the result may never have left."""
    new = config_text(rig.tmp, rig.broker.port)
    rig.path.write_text(new)
    data = rig.tmp / "data"
    data.mkdir()
    last = {"id": "chg-sent", "status": "applied", "ts": "2026-12-02T01:00:00.000Z", "version": "v7",
            "hash": sha(new.encode())}
    (data / "remote_config.json").write_text(json.dumps({
        "seen": ["chg-sent"], "last": last, "probation": None,
        "current": {"hash": sha(new.encode()), "version": "v7", "id": "chg-sent", "source": "remote"}}))
    rig.run()
    assert rig.wait_result("chg-sent", "applied") == last
    assert rig.current()["version"] == "v7"  # type: ignore[index]

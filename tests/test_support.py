"""Self-tests of the test infrastructure: broker, PKI, collector and contract validators.

If these fail, every end-to-end test built on them is suspect, so they run first-hand against a
real mosquitto: restarts on the same port, persistence across a restart, TLS, mTLS, passwords.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import broker as broker_mod
from tests.support.broker import BrokerError, Mosquitto
from tests.support.certs import TlsFiles
from tests.support.collector import Collector, CollectorConnectError
from tests.support.contract import (
    SHIPPED_SCHEMA,
    shipped_schema_matches_shared,
    validate_batch,
    validate_event,
    validate_gateway_status,
    validate_message,
    validate_reading,
    validate_status,
)

CONTRACT_MD = SHIPPED_SCHEMA.parent / "CONTRACT.md"
TS = "2026-11-22T08:15:30.250Z"


def contract_example() -> dict[str, Any]:
    """The reading example printed in CONTRACT.md (the first ```json block)."""
    match = re.search(r"```json\n(.*?)```", CONTRACT_MD.read_text(), re.DOTALL)
    assert match, f"no json example in {CONTRACT_MD}"
    example: dict[str, Any] = json.loads(match.group(1))
    return example


def reading(seq: int, device: str = "meter-12", gateway: str = "gw-01") -> dict[str, Any]:
    """A minimal valid reading."""
    return {
        "schema": "fieldgate.reading/1", "gateway": gateway, "device": device, "seq": seq, "ts": TS,
        "metrics": {"voltage": {"value": 229.7, "unit": "V", "quality": "good"}},
    }


def publisher(broker: Mosquitto, **options: Any) -> Collector:
    """A plain publishing client: clean session, subscribed to a topic nobody uses."""
    return Collector.for_broker(broker, topic="unused/nothing", clean_session=True, **options)


# -- broker ----------------------------------------------------------------------------------------


def test_broker_start_stop_restart_keeps_port(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    assert mosquitto.running
    assert "running" in mosquitto.log_text()
    with socket.create_connection((mosquitto.host, port), timeout=2):
        pass
    mosquitto.restart()
    assert mosquitto.port == port and mosquitto.running
    assert mosquitto.stop() == 0
    assert not mosquitto.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((mosquitto.host, port), timeout=2).close()
    mosquitto.start()
    assert mosquitto.port == port
    assert mosquitto.log_text().count(" running") == 3
    assert mosquitto.kill() is not None and not mosquitto.running


def test_broker_retries_when_the_free_port_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lose the race for the first free port: someone else binds it before mosquitto does.
    squatter = socket.socket()
    squatter.bind((broker_mod.HOST, 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks = iter([taken])
    real_free_port = broker_mod.free_port
    monkeypatch.setattr(broker_mod, "free_port", lambda host=broker_mod.HOST: next(picks, None) or real_free_port())
    try:
        with Mosquitto(tmp_path / "b") as b:
            assert b.port != taken
            assert "Address already in use" in b.log_text()
    finally:
        squatter.close()


def test_broker_start_failure_shows_the_log(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="no_such_option"):
        Mosquitto(tmp_path / "b", extra_config=["no_such_option 1"]).start()


# -- collector -------------------------------------------------------------------------------------


def test_qos1_messages_while_connected(mosquitto: Mosquitto) -> None:
    with Collector.for_broker(mosquitto) as c, publisher(mosquitto) as pub:
        for seq in (1, 2, 3):
            pub.publish("fieldgate/gw-01/meter-12/reading", reading(seq))
        pub.publish("fieldgate/gw-01/readings", {"schema": "fieldgate.batch/1", "readings": [reading(4), reading(5)]})
        pub.publish("fieldgate/gw-01/events", {"ts": TS, "kind": "buffer_drop", "dropped": 3})
        c.wait_readings(5, timeout=5)
        c.wait_count("/events", 1, timeout=5)
        assert c.seqs() == [1, 2, 3, 4, 5]
        assert all(m.qos == 1 for m in c.messages)
        assert c.events() == [{"ts": TS, "kind": "buffer_drop", "dropped": 3}]
        assert c.per_device_in_order() and not c.duplicates() and c.gaps() == {"gw-01": []}
        c.check_contract()


def test_collector_order_duplicate_and_gap_checks(mosquitto: Mosquitto) -> None:
    with Collector.for_broker(mosquitto) as c, publisher(mosquitto) as pub:
        # An exact redelivery of seq 2 is fine; seq 1 after 3 on the same device is out of order;
        # seq 3 again with other content is a reused seq; 4 is missing.
        for r in (reading(1), reading(2), reading(2), reading(3), reading(5, device="meter-13"), reading(1)):
            pub.publish(f"fieldgate/gw-01/{r['device']}/reading", r)
        reused = reading(3)
        reused["metrics"]["voltage"]["value"] = 1.0
        pub.publish("fieldgate/gw-01/meter-12/reading", reused)
        c.wait_readings(7, timeout=5)
        assert c.duplicates() == [("gw-01", 2), ("gw-01", 1), ("gw-01", 3)]
        problems = c.order_violations()
        assert not c.per_device_in_order()
        assert len(problems) == 1 and "reused" in problems[0], problems
        assert c.gaps() == {"gw-01": [4]}
        # seq 1 redelivered after 3 is an exact redelivery: allowed, not reported as disorder.
        assert not any("arrived after" in p for p in problems)


def test_collector_gets_messages_queued_while_away_across_broker_restart(mosquitto: Mosquitto) -> None:
    c = Collector.for_broker(mosquitto).connect()
    try:
        c.disconnect()
        with publisher(mosquitto) as pub:
            for seq in range(1, 6):
                pub.publish("fieldgate/gw-01/meter-12/reading", reading(seq))
        mosquitto.restart()  # SIGTERM: mosquitto saves the session and its queue
        c.connect()
        assert c.session_present is True
        c.wait_readings(5, timeout=5)
        assert c.seqs() == [1, 2, 3, 4, 5]
    finally:
        c.disconnect()


def test_collector_reconnects_by_itself_after_a_restart(mosquitto: Mosquitto) -> None:
    with Collector.for_broker(mosquitto) as c:
        mosquitto.stop()
        c.wait_disconnected(timeout=5)
        mosquitto.start()
        c.wait_connected(timeout=10)
        assert c.connect_count == 2 and c.session_present is True
        with publisher(mosquitto) as pub:
            pub.publish("fieldgate/gw-01/meter-12/reading", reading(7))
        assert c.wait_readings(1, timeout=5)[0]["seq"] == 7


def test_retained_query_and_sync_barrier(mosquitto: Mosquitto) -> None:
    status = {"state": "online", "ts": TS, "version": "0.1.0"}
    with Collector.for_broker(mosquitto) as c, publisher(mosquitto) as pub:
        pub.publish("fieldgate/gw-01/status", status, retain=True)
        c.wait_count("/status", 1, timeout=5)
        assert c.messages[0].retain is False  # live delivery clears RETAIN: hence retained() asks anew
        got = c.retained("fieldgate/gw-01/status")
        assert got is not None and got.retain and got.json() == status
        assert c.retained("fieldgate/gw-02/status") is None
        c.sync()
        assert len(c.messages) == 1  # nothing else was sent before the barrier
        c.check_contract()


# -- TLS -------------------------------------------------------------------------------------------


def test_tls_with_the_ca_and_refused_with_a_rogue_ca(mosquitto_factory: Callable[..., Mosquitto],
                                                     test_pki: TlsFiles) -> None:
    b = mosquitto_factory(tls=test_pki)
    with Collector.for_broker(b) as c, publisher(b) as pub:
        pub.publish("fieldgate/gw-01/meter-12/reading", reading(1))
        assert c.wait_readings(1, timeout=5)[0]["seq"] == 1
    rogue = Collector(b.host, b.port, ca_cert=test_pki.rogue_ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        rogue.connect(timeout=5)


def test_mtls_refuses_a_client_without_certificate(mosquitto_factory: Callable[..., Mosquitto],
                                                   test_pki: TlsFiles) -> None:
    b = mosquitto_factory(tls=test_pki, require_client_cert=True)
    anonymous = Collector(b.host, b.port, ca_cert=test_pki.ca_cert)
    # TLS 1.3 reports the refusal after the client's handshake (an EOF or reset on the first read,
    # so the collector adds a hint); TLS 1.2 during the handshake, as an SSL error.
    with pytest.raises((CollectorConnectError, ssl.SSLError)) as info:
        anonymous.connect(timeout=5)
    assert isinstance(info.value, ssl.SSLError) or "client certificate" in str(info.value), info.value
    assert "peer did not return a certificate" in b.log_text()
    with Collector.for_broker(b) as c:  # for_broker adds the client certificate
        assert c.connected


# -- passwords -------------------------------------------------------------------------------------


def test_password_broker(mosquitto_factory: Callable[..., Mosquitto]) -> None:
    b = mosquitto_factory(users={"alice": "s3cret", "bob": "hunter2"})
    for user, password in (("alice", "wrong"), (None, None), ("mallory", "s3cret")):
        with pytest.raises(CollectorConnectError) as info:
            Collector.for_broker(b, username=user, password=password).connect(timeout=5)
        assert info.value.reason in ("Not authorized", "Bad user name or password"), info.value
    for user, password in (("alice", "s3cret"), ("bob", "hunter2")):
        with Collector.for_broker(b, username=user, password=password) as c:
            assert c.connected


# -- contract --------------------------------------------------------------------------------------


def test_contract_example_is_valid_and_schema_matches_shared() -> None:
    example = contract_example()
    validate_reading(example)
    assert validate_message("fieldgate/gw-01/meter-12/reading", json.dumps(example)) == "reading"
    assert shipped_schema_matches_shared() in (True, None)


def test_contract_rejects_bad_quality_without_reason() -> None:
    msg = contract_example()
    del msg["metrics"]["temperature"]["reason"]
    with pytest.raises(AssertionError, match=r"metrics\.temperature.*'reason' is a required property"):
        validate_reading(msg)


def test_contract_lists_every_error() -> None:
    msg = copy.deepcopy(contract_example())
    msg["ts"] = "2026-11-22 08:15:30"
    msg["seq"] = -1
    msg["metrics"]["voltage"]["quality"] = "ok"
    with pytest.raises(AssertionError) as info:
        validate_reading(msg)
    text = str(info.value)
    assert "3 errors" in text and ".ts:" in text and ".seq:" in text and ".metrics.voltage.quality:" in text


def test_contract_other_messages() -> None:
    validate_status({"state": "degraded", "ts": TS, "error": "timeout"})
    validate_status({"state": "online", "ts": TS, "error": None})
    validate_gateway_status({"state": "offline", "ts": TS, "version": "0.1.0"})
    validate_event({"ts": TS, "kind": "config_reload", "changed": ["devices"]})
    validate_batch({"schema": "fieldgate.batch/1", "readings": [reading(1), reading(2)]})
    with pytest.raises(AssertionError, match=r"readings\[1\]\.seq"):
        validate_batch({"schema": "fieldgate.batch/1", "readings": [reading(1), {**reading(2), "seq": "2"}]})
    with pytest.raises(AssertionError, match="state"):
        validate_gateway_status({"state": "degraded", "ts": TS, "version": "0.1.0"})
    with pytest.raises(AssertionError, match="kind"):
        validate_event({"ts": TS})
    assert validate_message("fieldgate/gw-01/status", {"state": "online", "ts": TS, "version": "1"}) == "gateway status"
    assert validate_message("fieldgate/gw-01/meter-12/status", {"state": "online", "ts": TS, "error": None}) == (
        "device status"
    )
    with pytest.raises(AssertionError, match="carries gateway"):
        validate_message("fieldgate/gw-02/meter-12/reading", reading(1))
    with pytest.raises(AssertionError, match="not a topic of the contract"):
        validate_message("fieldgate/gw-01/meter-12/other", {})

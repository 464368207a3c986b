"""The host simulator's checker catches what it claims to: a wrong stream names the assertion it breaks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fieldgate.sparkplug import codec
from fieldgate.sparkplug.node import Catalogue, EdgeNode

from tests.support.sparkplug_host import SparkplugHost


@dataclass
class _Msg:  # what paho hands to on_message
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


def _host() -> SparkplugHost:
    return SparkplugHost("127.0.0.1", 1, group="g", node="n")


def _feed(h: SparkplugHost, msgs: list[tuple[str, bytes]], qos: int = 0) -> None:
    for topic, payload in msgs:
        h._on_message(None, None, _Msg(topic, payload, 1 if "/NDEATH/" in topic else qos))


def _node(tmp_path: Path) -> EdgeNode:
    n = EdgeNode("g", "n", Catalogue(tmp_path))
    n.catalogue.learn("d", {"v": {"value": 1.0, "unit": "V"}})
    return n


def test_a_correct_stream_passes(tmp_path: Path) -> None:
    h, n = _host(), _node(tmp_path)
    _feed(h, [*n.birth(1), *n.data("d", {"v": {"value": 2.0}}, 2, 1, False, 2), *n.status("d", "offline", 3)])
    assert h.violations == []


def test_ddata_before_any_birth(tmp_path: Path) -> None:
    h, n = _host(), _node(tmp_path)
    n.birth(1)
    _feed(h, n.data("d", {"v": {"value": 2.0}}, 2, 1, False, 2))
    assert any(v.startswith("[tck-id-payloads-ddata-order]") for v in h.violations), h.violations


def test_a_skipped_seq_and_qos_1_data(tmp_path: Path) -> None:
    h, n = _host(), _node(tmp_path)
    _feed(h, n.birth(1))
    n.next_seq()  # one message lost
    _feed(h, n.data("d", {"v": {"value": 2.0}}, 2, 1, False, 2), qos=1)
    assert any(v.startswith("[tck-id-payloads-ddata-seq-inc]") for v in h.violations), h.violations
    assert any(v.startswith("[tck-id-payloads-ddata-qos]") for v in h.violations), h.violations


def test_a_birth_without_rebirth_metric_and_a_bad_quality(tmp_path: Path) -> None:
    h = _host()
    p = codec.Payload(timestamp=1, seq=0)
    m = p.metrics.add(name="bdSeq", datatype=4)
    m.long_value = 0
    d = codec.Payload(timestamp=1, seq=1)
    x = d.metrics.add(name="v", alias=1, datatype=10, double_value=1.0)
    x.properties.keys.append("Quality")
    x.properties.values.add(type=3, int_value=7)
    _feed(h, [("spBv1.0/g/NBIRTH/n", p.SerializeToString()), ("spBv1.0/g/DBIRTH/n/d", d.SerializeToString())])
    assert any(v.startswith("[tck-id-payloads-nbirth-rebirth-req]") for v in h.violations), h.violations
    assert any(v.startswith("[tck-id-payloads-propertyset-quality-value-value]") for v in h.violations)


def test_a_repeated_bdseq_after_death(tmp_path: Path) -> None:
    h, n = _host(), _node(tmp_path)
    _feed(h, [*n.birth(1), n.will(2), *n.birth(3)])
    assert any(v.startswith("[tck-id-topics-nbirth-bdseq-increment]") for v in h.violations), h.violations


def test_a_device_message_without_a_device_id(tmp_path: Path) -> None:
    h, n = _host(), _node(tmp_path)
    (_, nbirth), (_, dbirth) = n.birth(1)
    _feed(h, [("spBv1.0/g/NBIRTH/n", nbirth), ("spBv1.0/g/DBIRTH/n", dbirth)])
    assert any(v.startswith("[tck-id-topic-structure]") for v in h.violations), h.violations

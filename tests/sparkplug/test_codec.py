"""The pure parts of the Sparkplug output: datatypes, payloads, commands and STATE, and the node's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fieldgate.sparkplug import codec
from fieldgate.sparkplug.codec import (
    BOOLEAN,
    DOUBLE,
    INT64,
    STRING,
    UINT64,
    MetricDef,
    SparkplugError,
    decode,
    merge_datatype,
    metric_value,
    parse_state,
)
from fieldgate.sparkplug.node import BDSEQ_FILE, CATALOGUE_FILE, BdSeqStore, Catalogue, EdgeNode


@pytest.mark.parametrize(("known", "value", "expected"), [
    (None, 1, INT64), (None, 1.5, DOUBLE), (None, True, BOOLEAN), (None, "on", STRING), (None, None, DOUBLE),
    (None, 2**63, UINT64), (None, -(2**63), INT64), (None, 2**64, DOUBLE),
    (INT64, 2.5, DOUBLE),       # widened: a fractional value after whole ones
    (DOUBLE, 3, DOUBLE),        # a whole value of a Double metric stays Double
    (INT64, 2**63, DOUBLE),     # Int64 and UInt64 meet in Double
    (INT64, None, INT64),       # null says nothing
    (BOOLEAN, 1, INT64),        # any other change takes the new type (a rebirth says so)
    (DOUBLE, "n/a", STRING),
])
def test_datatype_follows_the_json_value(known: int | None, value: object, expected: int) -> None:
    assert merge_datatype(known, value) == expected


def _ddata(datatype: int, value: object, **point: object) -> codec.Payload.Metric:
    raw = codec.device_data(1000, 5, {"x": MetricDef("x", 7, datatype)}, {"x": {"value": value, **point}},
                            fg_seq=42, historical=False)
    return decode(raw).metrics[0]


@pytest.mark.parametrize(("datatype", "value"), [
    (INT64, -5), (INT64, 2**63 - 1), (INT64, -(2**63)), (UINT64, 2**64 - 1), (DOUBLE, -0.25),
    (BOOLEAN, False), (STRING, "ü"), (DOUBLE, None),
])
def test_values_round_trip(datatype: int, value: object) -> None:
    m = _ddata(datatype, value)
    m.datatype = datatype  # DDATA carries no datatype; the birth gives it
    assert metric_value(m) == value
    assert m.is_null == (value is None)


def _props(m: codec.Payload.Metric) -> dict[str, object]:
    return {k: getattr(v, v.WhichOneof("value") or "is_null") for k, v in
            zip(m.properties.keys, m.properties.values, strict=True)}


@pytest.mark.parametrize(("quality", "code"), [("good", None), ("bad", 0), ("uncertain", 500)])
def test_quality_is_the_standard_property_and_the_seq_is_kept(quality: str, code: int | None) -> None:
    reason = None if quality == "good" else "timeout"
    m = _ddata(DOUBLE, 1.0, quality=quality, reason=reason)
    props = _props(m)
    assert props.get("Quality") == code
    if code is not None:
        pv = m.properties.values[list(m.properties.keys).index("Quality")]
        assert pv.type == 3  # [tck-id-payloads-propertyset-quality-value-type]
    assert props.get("reason") == reason
    assert props["fieldgate_seq"] == 42
    assert not m.name and m.alias == 7 and not m.HasField("datatype")  # [tck-id-payloads-alias-data-cmd-requirement]


def test_nbirth_and_ndeath() -> None:
    b = decode(codec.node_birth(123, 17))
    assert b.seq == 0 and b.timestamp == 123
    metrics = {m.name: m for m in b.metrics}
    assert metric_value(metrics["bdSeq"]) == 17 and metrics["bdSeq"].datatype == INT64
    rebirth = metrics["Node Control/Rebirth"]
    assert rebirth.datatype == BOOLEAN and rebirth.boolean_value is False and not rebirth.HasField("alias")
    d = decode(codec.node_death(124, 17))
    assert not d.HasField("seq") and metric_value(d.metrics[0]) == 17


@pytest.mark.parametrize("payload", [b"{not json", b"[]", b'{"online": "yes", "timestamp": 1}',
                                     b'{"online": true, "timestamp": true}', b'{"online": true}', b"\xff\xfe"])
def test_a_bad_state_is_a_named_error(payload: bytes) -> None:
    with pytest.raises(SparkplugError, match="STATE"):
        parse_state(payload)


def test_state() -> None:
    assert parse_state(b'{"online": true, "timestamp": 1700000000000}') == (True, 1700000000000)


def test_garbage_is_not_a_payload() -> None:
    with pytest.raises(SparkplugError, match="not a Sparkplug B payload"):
        decode(b"\xff\xfe\xfd")
    assert not codec.rebirth_requested(decode(b""))


# --- the node's files -------------------------------------------------------------------------


def test_bdseq_increments_per_connect_survives_restarts_and_wraps(tmp_path: Path) -> None:
    s = BdSeqStore(tmp_path)
    assert [s.next() for _ in range(3)] == [0, 1, 2]
    assert BdSeqStore(tmp_path).next() == 3  # a new process goes on
    (tmp_path / BDSEQ_FILE).write_text("255\n")
    assert BdSeqStore(tmp_path).next() == 0


@pytest.mark.parametrize("damage", ["text", "range", "binary", "directory", "empty"])
def test_a_damaged_bdseq_file_starts_at_zero_and_says_why(tmp_path: Path, damage: str) -> None:
    path = tmp_path / BDSEQ_FILE
    if damage == "directory":
        path.mkdir()
    else:
        path.write_bytes({"text": b"seven", "range": b"300", "binary": b"\x00\xff" * 100, "empty": b""}[damage])
    s = BdSeqStore(tmp_path)
    if damage == "directory":
        assert s.next() == 0 and s.problem is not None  # cannot store it either: said, not fatal
        return
    assert s.next() == 0
    assert s.problem is not None and BDSEQ_FILE in s.problem
    assert BdSeqStore(tmp_path).next() == 1  # repaired by the write


def test_catalogue_learns_keeps_aliases_unique_and_survives_a_restart(tmp_path: Path) -> None:
    c = Catalogue(tmp_path)
    assert c.learn("a", {"v": {"value": 1, "unit": "V"}, "s": {"value": "x"}})
    assert not c.learn("a", {"v": {"value": 2, "unit": "V"}})
    assert c.learn("b", {"v": {"value": 1.5}})
    assert c.learn("a", {"v": {"value": 2.5, "unit": "V"}})  # widened to Double
    aliases = [d.alias for m in c.devices.values() for d in m.values()]
    assert len(aliases) == len(set(aliases)) == 3  # [tck-id-payloads-alias-uniqueness]
    c.save()
    again = Catalogue(tmp_path)
    again.load()
    assert again.problem is None
    assert again.devices == c.devices and again.next_alias == 4
    assert again.devices["a"]["v"].datatype == DOUBLE and again.devices["a"]["v"].unit == "V"


@pytest.mark.parametrize("text", ["{", "[]", "[" * 200_000, '{"devices": ' * 50_000, '{"devices": {"a": {"v": [1]}}}',
                                  '{"devices": {"a": {"v": [1, 4, null]}, "b": {"w": [1, 4, null]}}}',
                                  '{"devices": {"a": {"v": [1180591620717411303424, 4, null]}}}',
                                  '{"devices": {"a": {"v": [1, 99, null]}}}', '{"devices": {"a": {"v": [1, 4, 7]}}}'])
def test_a_damaged_catalogue_is_learned_again(tmp_path: Path, text: str) -> None:
    (tmp_path / CATALOGUE_FILE).write_text(text)
    c = Catalogue(tmp_path)
    c.load()
    assert c.problem is not None and c.devices == {}


def test_seq_wraps_and_births_reset_it(tmp_path: Path) -> None:
    n = EdgeNode("g", "n", Catalogue(tmp_path))
    n.catalogue.learn("d", {"v": {"value": 1}})
    msgs = n.birth(0)
    seqs = [decode(p).seq for _t, p in msgs]
    assert seqs == [0, 1]
    for _ in range(300):
        (_t, p), = n.data("d", {"v": {"value": 1}}, 0, 1, False, 0)
    assert decode(p).seq == (1 + 300) % 256
    assert decode(n.birth(0)[0][1]).seq == 0


def test_an_offline_device_is_born_then_declared_dead(tmp_path: Path) -> None:
    n = EdgeNode("g", "n", Catalogue(tmp_path))
    n.catalogue.learn("d", {"v": {"value": 1}})
    n.status("d", "offline", 0)
    kinds = [t.split("/")[2] for t, _p in n.birth(0)]
    assert kinds == ["NBIRTH", "DBIRTH", "DDEATH"]
    # its backlog: DBIRTH, DDATA..., and one DDEATH when the turn ends (it is still away)
    kinds = [t.split("/")[2] for i in range(3) for t, _p in n.data("d", {"v": {"value": i}}, 0, i, True, 0)]
    kinds += [t.split("/")[2] for t, _p in n.settle(0)]
    assert kinds == ["DBIRTH", "DDATA", "DDATA", "DDATA", "DDEATH"]
    assert n.settle(0) == []
    assert [t.split("/")[2] for t, _p in n.status("d", "online", 0)] == ["DBIRTH"]
    assert n.status("d", "degraded", 0) == []


def test_the_catalogue_file_is_compact_json(tmp_path: Path) -> None:
    c = Catalogue(tmp_path)
    c.learn("a", {"v": {"value": 1, "unit": "V"}})
    c.save()
    assert json.loads((tmp_path / CATALOGUE_FILE).read_text()) == {"version": 1, "devices": {"a": {"v": [1, 4, "V"]}}}


def test_forgetting_a_device_declares_it_dead_and_drops_its_metrics(tmp_path: Path) -> None:
    n = EdgeNode("g", "n", Catalogue(tmp_path))
    n.catalogue.learn("a", {"v": {"value": 1}})
    n.catalogue.learn("b", {"v": {"value": 1}})
    n.birth(0)
    msgs = n.keep_only({"a"}, 5)
    assert [t for t, _p in msgs] == ["spBv1.0/g/DDEATH/n/b"]
    assert set(n.catalogue.devices) == {"a"} and all(dev == "a" for dev, _ in n.catalogue.by_alias.values())
    assert n.keep_only({"a"}, 6) == []


def test_an_unsynced_clock_is_said_on_every_value(tmp_path: Path) -> None:
    raw = codec.device_data(1, 1, {"x": MetricDef("x", 7, DOUBLE)}, {"x": {"value": 1.0}}, fg_seq=3,
                            historical=False, clock_unsynced=True)
    assert _props(decode(raw).metrics[0])["clock"] == "unsynced"


@pytest.mark.parametrize("name", [BDSEQ_FILE, CATALOGUE_FILE])
@pytest.mark.timeout(10)
def test_a_fifo_or_device_in_place_of_a_state_file_does_not_hang(tmp_path: Path, name: str) -> None:
    import os
    import threading

    os.mkfifo(tmp_path / name)  # opening a FIFO for reading blocks until a writer comes: never
    done = threading.Event()

    def load() -> None:
        if name == BDSEQ_FILE:
            BdSeqStore(tmp_path).next()
        else:
            Catalogue(tmp_path).load()
        done.set()

    threading.Thread(target=load, daemon=True).start()
    assert done.wait(2), f"reading {name} as a FIFO hangs"

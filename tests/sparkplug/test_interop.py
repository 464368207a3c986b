"""Our payloads read by Sparkplug libraries the project did not write: pysparkplug and mqtt-spb-wrapper.

Both pin what fieldgate cannot have (pysparkplug ``paho-mqtt<2``; mqtt-spb-wrapper
``paho_mqtt==1.6.1, protobuf==3.20.3``), so neither can be in the ``test`` extra (pip would
refuse the set). Install them beside, without their dependencies, to run these checks:
``pip install --no-deps pysparkplug mqtt-spb-wrapper``. Only their payload decoders are used
(protobuf), never their MQTT clients. Each test skips when its library is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fieldgate.sparkplug import codec
from fieldgate.sparkplug.node import Catalogue, EdgeNode


def _node(tmp_path: Path) -> EdgeNode:
    node = EdgeNode("plant", "gw-1", Catalogue(tmp_path))
    node.bdseq = 9
    node.catalogue.learn("m1", {"voltage": {"value": 229.5, "unit": "V"}, "count": {"value": -3},
                                "on": {"value": True}, "mode": {"value": "auto"}})
    return node


def test_pysparkplug_decodes_births_data_and_death(tmp_path: Path) -> None:
    spb = pytest.importorskip("pysparkplug", reason="pip install --no-deps pysparkplug (see the module docstring)")
    node = _node(tmp_path)
    (_, nbirth), (_, dbirth_raw) = node.birth(1_700_000_000_000)
    nb = spb.NBirth.decode(nbirth)
    assert nb.seq == 0
    by_name = {m.name: m for m in nb.metrics}
    assert by_name["bdSeq"].value == 9 and by_name["bdSeq"].datatype == spb.DataType.INT64
    assert by_name["Node Control/Rebirth"].value is False
    db = spb.DBirth.decode(dbirth_raw)
    assert {m.name: m.datatype for m in db.metrics} == {
        "voltage": spb.DataType.DOUBLE, "count": spb.DataType.INT64, "on": spb.DataType.BOOLEAN,
        "mode": spb.DataType.STRING}
    assert all(m.is_null for m in db.metrics)  # no value published yet ([...-dbirth-values])
    reading = {"voltage": {"value": 230.1, "unit": "V", "quality": "good"}, "count": {"value": -3},
               "on": {"value": False}, "mode": {"value": "manual", "quality": "bad", "reason": "timeout"}}
    (_, ddata_raw), = node.data("m1", reading, 1_700_000_000_500, 77, True, 1_700_000_000_600)
    dd = spb.DData.decode(ddata_raw, birth=db)
    values = {m.name: (m.value, m.is_historical, m.timestamp) for m in dd.metrics}
    assert values == {"voltage": (230.1, True, 1_700_000_000_500), "count": (-3, True, 1_700_000_000_500),
                      "on": (False, True, 1_700_000_000_500), "mode": ("manual", True, 1_700_000_000_500)}
    nd = spb.NDeath.decode(node.will(1_700_000_000_900)[1])
    assert nd.bd_seq_metric.name == "bdSeq" and nd.bd_seq_metric.value == 9
    assert codec.decode(node.will(1)[1]).metrics[0].name == "bdSeq"


def test_mqtt_spb_wrapper_decodes_births_and_data_with_their_properties(tmp_path: Path) -> None:
    wrapper = pytest.importorskip("mqtt_spb_wrapper",
                                  reason="pip install --no-deps mqtt-spb-wrapper (see the module docstring)")
    node = _node(tmp_path)
    (_, nbirth), (_, dbirth) = node.birth(1_700_000_000_000)
    nb = wrapper.SpbPayloadParser(nbirth).payload
    assert nb["seq"] in (0, "0")
    assert {m["name"]: m["value"] for m in nb["metrics"]} == {"bdSeq": 9, "Node Control/Rebirth": False}
    db = wrapper.SpbPayloadParser(dbirth).payload
    voltage = next(m for m in db["metrics"] if m["name"] == "voltage")
    assert voltage["properties"]["key_value"] == {"engUnit": "V"} and voltage["datatype"] == codec.DOUBLE
    reading = {"voltage": {"value": 230.1, "unit": "V", "quality": "uncertain", "reason": "stale"}}
    (_, ddata), = node.data("m1", reading, 1_700_000_000_500, 77, False, 1_700_000_000_600)
    dd = wrapper.SpbPayloadParser(ddata).payload
    (m,) = dd["metrics"]
    assert int(m["alias"]) == int(voltage["alias"]) and m["doubleValue"] == 230.1 and "name" not in m
    assert m["properties"]["key_value"] == {"Quality": 500, "reason": "stale", "fieldgate_seq": 77}

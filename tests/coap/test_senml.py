"""SenML golden tests with the RFC 8428 examples (sections 5 and 6), through to schema-valid reading messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fieldgate.drivers.coap.payload import CF_SENML_CBOR, CF_SENML_JSON, PayloadDecoder, PayloadError
from fieldgate.drivers.coap.profile import CoapProfile
from fieldgate.drivers.coap.senml import Record, SenmlError, loads_cbor, loads_json, resolve
from fieldgate.normalize import Normalizer

NOW = 1_700_000_000.0

# RFC 8428 section 5.1.1: a single datapoint
SINGLE = '[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]'
# section 5.1.2: multiple datapoints
MULTIPLE = ('[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},'
            '{"n":"current","u":"A","v":1.2}]')
# section 5.1.3: multiple measurements (base time, base unit, version, relative times)
MEASUREMENTS = """[
 {"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
 {"n":"current","t":-5,"v":1.2},
 {"n":"current","t":-4,"v":1.3},
 {"n":"current","t":-3,"v":1.4},
 {"n":"current","t":-2,"v":1.5},
 {"n":"current","t":-1,"v":1.6},
 {"n":"current","v":1.7}
]"""
# section 6: the same pack in CBOR, as the RFC prints it
MEASUREMENTS_CBOR = bytes.fromhex(
    "87a721781b75726e3a6465763a6f773a3130653230373361303130383030363a"
    "22fb41d303a15b00106223614120050067766f6c7461676501615602fb405e06"
    "6666666666a3006763757272656e74062402fb3ff3333333333333a300676375"
    "7272656e74062302fb3ff4cccccccccccda3006763757272656e74062202fb3f"
    "f6666666666666a3006763757272656e74062102f93e00a3006763757272656e"
    "74062002fb3ff999999999999aa3006763757272656e74060002fb3ffb333333"
    "333333")
# section 5.1.4: the resolved form of 5.1.3
RESOLVED = [("urn:dev:ow:10e2073a0108006:voltage", "V", 120.1, 1.276020076001e+09)] + [
    ("urn:dev:ow:10e2073a0108006:current", "A", v, 1.276020076001e+09 + dt)
    for v, dt in ((1.2, -5), (1.3, -4), (1.4, -3), (1.5, -2), (1.6, -1), (1.7, 0))]
# section 5.1.5: multiple data types
TYPES = ('[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},'
         '{"n":"label","vs":"Machine Room"},{"n":"open","vb":false},{"n":"nfc-reader","vd":"aGkgCg"}]')


def senml_profile(*points: dict[str, Any]) -> CoapProfile:
    return CoapProfile.model_validate({"schema_version": 1, "driver": "coap", "vendor": "x", "model": "y",
                                       "payload": {"format": "senml"}, "points": list(points)})


def messages(profile: CoapProfile, payload: bytes, cf: int) -> list[dict[str, Any]]:
    raws = PayloadDecoder(profile).decode(payload, cf, now=NOW)
    out = [Normalizer("gw-1", "dev-1", profile, {"driver": "coap", "profile": "inline"}).normalize(r) for r in raws]
    assert all(m is not None for m in out)
    return out  # type: ignore[return-value]


def test_resolution_of_the_multiple_measurements_example_matches_section_5_1_4() -> None:
    for records in (loads_json(MEASUREMENTS), loads_cbor(MEASUREMENTS_CBOR)):
        got = [(r.name, r.unit, r.value, r.time) for r in resolve(records, NOW)]
        assert [(n, u) for n, u, _, _ in got] == [(n, u) for n, u, _, _ in RESOLVED]
        assert [v for _, _, v, _ in got] == pytest.approx([v for _, _, v, _ in RESOLVED])
        assert [t for _, _, _, t in got] == pytest.approx([t for _, _, _, t in RESOLVED], abs=1e-6)


def test_single_datapoint_golden(validate_reading: Callable[[dict[str, Any]], None]) -> None:
    prof = senml_profile({"name": "temperature", "senml": "urn:dev:ow:10e2073a01080063", "unit": "Cel"})
    [msg] = messages(prof, SINGLE.encode(), CF_SENML_JSON)
    validate_reading(msg)
    assert msg == {"schema": "fieldgate.reading/1", "gateway": "gw-1", "device": "dev-1",
                   "ts": "2023-11-14T22:13:20.000Z",  # no time in the pack: "roughly now"
                   "metrics": {"temperature": {"value": 23.1, "quality": "good", "unit": "Cel"}},
                   "meta": {"driver": "coap", "profile": "inline"}}


def test_multiple_datapoints_golden_by_local_name(validate_reading: Callable[[dict[str, Any]], None]) -> None:
    prof = senml_profile({"name": "voltage", "unit": "V"}, {"name": "current", "unit": "A"})
    [msg] = messages(prof, MULTIPLE.encode(), CF_SENML_JSON)
    validate_reading(msg)
    assert msg["metrics"] == {"voltage": {"value": 120.1, "quality": "good", "unit": "V"},
                              "current": {"value": 1.2, "quality": "good", "unit": "A"}}


@pytest.mark.parametrize(("payload", "cf"), [(MEASUREMENTS.encode(), CF_SENML_JSON),
                                             (MEASUREMENTS_CBOR, CF_SENML_CBOR)], ids=["json", "cbor"])
def test_multiple_measurements_golden_json_and_cbor(payload: bytes, cf: int,
                                                    validate_reading: Callable[[dict[str, Any]], None]) -> None:
    prof = senml_profile({"name": "voltage", "unit": "V"}, {"name": "current", "unit": "A"})
    msgs = messages(prof, payload, cf)
    for m in msgs:
        validate_reading(m)
    # one message per measurement time, oldest first; voltage and the last current share t = bt
    assert [m["ts"] for m in msgs] == ["2010-06-08T18:01:11.001Z", "2010-06-08T18:01:12.001Z",
                                       "2010-06-08T18:01:13.001Z", "2010-06-08T18:01:14.001Z",
                                       "2010-06-08T18:01:15.001Z", "2010-06-08T18:01:16.001Z"]
    assert [m["metrics"]["current"]["value"] for m in msgs] == pytest.approx([1.2, 1.3, 1.4, 1.5, 1.6, 1.7])
    assert msgs[-1]["metrics"]["voltage"] == {"value": 120.1, "quality": "good", "unit": "V"}
    assert all("voltage" not in m["metrics"] for m in msgs[:-1])


def test_multiple_data_types_golden(validate_reading: Callable[[dict[str, Any]], None]) -> None:
    prof = senml_profile({"name": "temperature", "senml": "temp", "unit": "Cel"}, {"name": "label"},
                         {"name": "open"}, {"name": "nfc", "senml": "nfc-reader"})
    [msg] = messages(prof, TYPES.encode(), CF_SENML_JSON)
    validate_reading(msg)
    assert msg["metrics"] == {"temperature": {"value": 23.1, "quality": "good", "unit": "Cel"},
                              "label": {"value": "Machine Room", "quality": "good"},
                              "open": {"value": False, "quality": "good"},
                              "nfc": {"value": "aGkgCg", "quality": "good"}}


def test_a_unit_that_differs_from_the_profile_is_flagged(validate_reading: Callable[[dict[str, Any]], None]) -> None:
    prof = senml_profile({"name": "temperature", "senml": "urn:dev:ow:10e2073a01080063", "unit": "K"})
    [msg] = messages(prof, SINGLE.encode(), CF_SENML_JSON)
    validate_reading(msg)
    assert msg["metrics"]["temperature"] == {"value": None, "quality": "bad", "unit": "K", "reason": "unit_mismatch"}


def test_cbor_without_content_format_is_sniffed() -> None:
    prof = senml_profile({"name": "current", "unit": "A"})
    assert len(PayloadDecoder(prof).decode(MEASUREMENTS_CBOR, None, NOW)) == 6
    assert len(PayloadDecoder(prof).decode(MEASUREMENTS.encode(), None, NOW)) == 6


@pytest.mark.parametrize(("pack", "message"), [
    ('{"n": "x", "v": 1}', "array of records"),
    ('[{"n": "x", "v": 1, "vs": "a"}]', "more than one value"),
    ('[{"n": "x"}]', "no value"),
    ('[{"v": 1}]', "no name"),
    ('[{"bver": 11, "n": "x", "v": 1}]', "version 11"),
    ('[{"n": "x", "v": 1, "foo_": 2}]', "must-understand"),
    ('[{"n": "x", "v": "1"}]', "must be a number"),
    ('[{"n": "x", "vb": 1}]', "true or false"),
    ('[{"n": "x", "v": 1e400}]', "not finite"),
])
def test_malformed_packs_are_refused_with_a_reason(pack: str, message: str) -> None:
    with pytest.raises(SenmlError, match=message):
        resolve(loads_json(pack), NOW)


def test_a_pack_without_a_known_record_is_a_payload_error() -> None:
    prof = senml_profile({"name": "humidity", "unit": "%RH"})
    with pytest.raises(PayloadError, match="no record names a point"):
        PayloadDecoder(prof).decode(SINGLE.encode(), CF_SENML_JSON, NOW)


def test_relative_time_counts_from_now() -> None:
    [rec] = resolve(loads_json('[{"n": "x", "v": 1, "t": -60}]'), NOW)
    assert rec == Record("x", "x", None, 1, NOW - 60)
    json.dumps(rec.value)

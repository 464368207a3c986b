"""Timestamps from devices: ``schema.iso_ms`` never raises and always writes the contract's format;
``plausible_time`` is the window readings' times must fall in; the CoAP decoders apply it."""

from __future__ import annotations

import json
import math
import re

import cbor2
import pytest
from fieldgate.drivers.coap.payload import CF_JSON, CF_SENML_CBOR, CF_SENML_JSON, PayloadDecoder
from fieldgate.drivers.coap.profile import CoapProfile
from fieldgate.normalize import Normalizer
from fieldgate.schema import TIME_MAX, TIME_MIN, Quality, iso_ms, plausible_time

from tests.support.contract import validate_reading

from .conftest import profile

TS = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$")  # reading.schema.json
NOW = 1_764_600_000.0  # 2025-12-01


@pytest.mark.parametrize("ts", [1e300, -1e300, 1e16, 2.0**63, 2**64, 253402300800.0, 1e12, -1e11, -0.5,
                                math.inf, -math.inf, math.nan, 0.0, NOW])
def test_iso_ms_never_raises_and_keeps_the_contract_format(ts: float) -> None:
    assert TS.match(iso_ms(ts)), iso_ms(ts)


def test_iso_ms_values_and_clamping() -> None:
    assert iso_ms(NOW + 0.25) == "2025-12-01T14:40:00.250Z"
    assert iso_ms(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(TIME_MAX) == "9999-12-31T23:59:59.999Z"
    assert iso_ms(1e16) == iso_ms(math.inf) == "9999-12-31T23:59:59.999Z"  # the last instant the format holds
    assert iso_ms(-5.0) == iso_ms(-math.inf) == iso_ms(math.nan) == "1970-01-01T00:00:00.000Z"


def test_plausible_window() -> None:
    assert plausible_time(NOW, NOW) and plausible_time(TIME_MIN, NOW) and plausible_time(NOW + 86_000, NOW)
    for bad in (TIME_MIN - 1, NOW + 86_401, 1e300, -1e300, math.nan, math.inf, 1e16):
        assert not plausible_time(bad, NOW), bad
    # a gateway clock that is plainly unset (before 2000) cannot judge the future: only the fixed bounds apply
    assert plausible_time(NOW, 3600.0) and not plausible_time(TIME_MAX + 1, 3600.0)


@pytest.mark.parametrize("t", [1e300, -1e300, 1e16, 2.0**62, 1e12, 1.5e308])
def test_senml_time_outside_the_window_is_flagged_not_fatal(t: float) -> None:
    prof = profile("generic/senml")
    dec = PayloadDecoder(prof)
    norm = Normalizer("gw", "d", prof)
    for payload, cf in ((json.dumps([{"n": "temp", "u": "Cel", "v": 20.5, "t": t}]).encode(), CF_SENML_JSON),
                        (cbor2.dumps([{0: "temp", 1: "Cel", 2: 20.5, 6: t}]), CF_SENML_CBOR),
                        (cbor2.dumps([{-3: t, 0: "temp", 1: "Cel", 2: 20.5, 6: t}]), CF_SENML_CBOR)):
        [raw] = dec.decode(payload, cf, now=NOW)
        assert raw.ts == NOW and raw.quality == {"temperature": (Quality.UNCERTAIN, "implausible_time")}
        msg = norm.normalize(raw)
        assert msg is not None
        validate_reading({**msg, "seq": 1})
        assert msg["metrics"]["temperature"]["quality"] == "uncertain"


def test_several_implausible_times_stay_several_readings() -> None:
    dec = PayloadDecoder(profile("generic/senml"))
    pack = [{"n": "temp", "u": "Cel", "v": 1.0, "t": 1e12}, {"n": "temp", "u": "Cel", "v": 2.0, "t": 2e12}]
    raws = dec.decode(json.dumps(pack).encode(), CF_SENML_JSON, now=NOW)
    assert [r.values["temperature"] for r in raws] == [1.0, 2.0] and {r.ts for r in raws} == {NOW}


def test_mapped_time_outside_the_window_is_flagged() -> None:
    prof = CoapProfile.model_validate({"schema_version": 1, "driver": "coap", "vendor": "x", "model": "y",
                                       "payload": {"format": "json", "time": "ts"},
                                       "points": [{"name": "a", "path": "a"}]})
    dec = PayloadDecoder(prof)
    [ok] = dec.decode(b'{"a": 1, "ts": 1764590000}', CF_JSON, now=NOW)
    assert ok.ts == 1764590000 and not ok.quality
    for t in ("1e300", "17000000000", "5"):
        [raw] = dec.decode(f'{{"a": 1, "ts": {t}}}'.encode(), CF_JSON, now=NOW)
        assert raw.ts == NOW and raw.quality == {"a": (Quality.UNCERTAIN, "implausible_time")}

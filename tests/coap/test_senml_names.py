"""SenML record names (issue 20): records that match no point and two records for one point are never
dropped in silence: they are counted, announced once on the events topic, and named in the message."""

from __future__ import annotations

from typing import Any

from fieldgate.drivers.coap.payload import CF_SENML_JSON, PayloadDecoder
from fieldgate.schema import PointError

from tests.coap.test_senml import NOW, senml_profile

PROFILE = senml_profile({"name": "temperature", "senml": "temp", "unit": "Cel"}, {"name": "humidity", "unit": "%RH"})


def decoder() -> tuple[PayloadDecoder, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    dec = PayloadDecoder(PROFILE)
    dec.on_event = lambda kind, **fields: events.append((kind, fields))
    return dec, events


def test_a_record_named_after_the_point_not_its_senml_name_is_counted_and_announced() -> None:
    dec, events = decoder()
    pack = b'[{"bn":"urn:dev:1:","n":"temperature","u":"Cel","v":21.5},{"n":"humidity","u":"%RH","v":40}]'
    for _ in range(3):
        [raw] = dec.decode(pack, CF_SENML_JSON, now=NOW)
        assert raw.values == {"humidity": 40}
    assert dec.unmatched == {"urn:dev:1:temperature": 3}
    # once per new name, not once per report
    assert len(events) == 1
    kind, fields = events[0]
    assert kind == "senml_unmatched"
    assert fields["names"] == ["urn:dev:1:temperature"]
    assert "'temperature' matches records named 'temp'" in fields["message"], fields


def test_two_records_for_one_point_make_that_point_bad_not_the_whole_pack() -> None:
    dec, events = decoder()
    # RFC 8428 5.1.6 would let the last one win; which one the device meant cannot be known
    pack = (b'[{"bn":"urn:dev:1:","n":"temp","u":"Cel","v":21.5},{"n":"humidity","u":"%RH","v":40},'
            b'{"bn":"","n":"temp","u":"Cel","v":35.0}]')
    [raw] = dec.decode(pack, CF_SENML_JSON, now=NOW)
    assert raw.values["humidity"] == 40
    assert isinstance(raw.values["temperature"], PointError)
    assert raw.values["temperature"].reason == "duplicate_record"
    assert dec.duplicates == 1
    [(kind, fields)] = events
    assert kind == "senml_duplicate"
    assert fields["names"] == ["temp", "urn:dev:1:temp"] and fields["point"] == "temperature"


def test_unmatched_names_are_bounded() -> None:
    dec, _ = decoder()
    pack = "[" + ",".join(f'{{"n":"x{i}","v":{i}}}' for i in range(100)) + ',{"n":"humidity","v":1}]'
    dec.decode(pack.encode(), CF_SENML_JSON, now=NOW)
    assert len(dec.unmatched) <= 33 and sum(dec.unmatched.values()) == 100


def test_two_points_for_one_record_name_are_refused() -> None:
    """The decoder would feed only one of them: a profile error with both positions."""
    import pytest

    with pytest.raises(ValueError, match=r"points\[1\] \(temp\): matches the same SenML records as "
                                         r"points\[0\] \(temperature, senml: temp\)"):
        senml_profile({"name": "temperature", "senml": "temp"}, {"name": "temp"})

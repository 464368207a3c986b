"""Field decoding: types, byte orders, bit fields, text conversions (table tests)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fieldgate.codecs.fields import BinaryDecoder, FieldSpec, TextDecoder, nmea_degrees
from fieldgate.schema import PointError
from pydantic import ValidationError

FRAME = bytes.fromhex("01 FF 80 00 3F C0 00 00 12 34 56 78 A5")


@pytest.mark.parametrize(("spec", "expected"), [
    ({"at": 0, "type": "u8"}, 1),
    ({"at": 1, "type": "i8"}, -1),
    ({"at": 1, "type": "u16"}, 0xFF80),
    ({"at": 1, "type": "u16", "byte_order": "little"}, 0x80FF),
    ({"at": 2, "type": "i16"}, -32768),
    ({"at": 4, "type": "f32"}, 1.5),
    ({"at": 8, "type": "u32"}, 0x12345678),
    ({"at": 8, "type": "u32", "byte_order": "little"}, 0x78563412),
    ({"at": 8, "type": "i32"}, 0x12345678),
    ({"at": 12, "type": "u8", "bits": [0, 1]}, True),
    ({"at": 12, "type": "u8", "bits": [1, 1]}, False),
    ({"at": 12, "type": "u8", "bits": [4, 4]}, 0xA),
    ({"at": 0, "type": "bool"}, True),
    ({"at": 2, "type": "f16"}, -0.0),
])
def test_binary_types(spec: dict[str, Any], expected: Any) -> None:
    value = BinaryDecoder([("x", FieldSpec(**spec))]).decode(FRAME)["x"]
    assert value == expected and type(value) is type(expected)


def test_frame_default_byte_order_applies_unless_the_field_overrides() -> None:
    dec = BinaryDecoder([("a", FieldSpec(at=0, type="u16")), ("b", FieldSpec(at=0, type="u16", byte_order="big"))],
                        byte_order="little")
    assert dec.decode(b"\x01\x02") == {"a": 0x0201, "b": 0x0102}


def test_field_beyond_a_short_frame_is_a_decode_error() -> None:
    out = BinaryDecoder([("a", FieldSpec(at=0, type="u8")), ("b", FieldSpec(at=1, type="u32"))]).decode(b"\x07\x00")
    assert out == {"a": 7, "b": PointError("decode_error")}


def test_nan_float_passes_through_for_the_core_to_flag() -> None:
    value = BinaryDecoder([("x", FieldSpec(at=0, type="f32"))]).decode(b"\x7f\xc0\x00\x00")["x"]
    assert math.isnan(value)


@pytest.mark.parametrize(("spec", "message"), [
    ({}, "exactly one of 'at'"),
    ({"at": 0, "group": "g"}, "exactly one of 'at'"),
    ({"at": 0, "type": "float"}, "is for text lines"),
    ({"group": "g", "type": "u16"}, "is for binary frames"),
    ({"at": 0, "type": "f32", "bits": [0, 1]}, "needs an integer type"),
    ({"at": 0, "type": "u8", "bits": [4, 5]}, "do not fit"),
    ({"group": "g", "type": "nmea_coord"}, "go together"),
    ({"at": 0, "map": {"A": True}}, "apply to text fields"),
])
def test_inconsistent_fields_are_rejected(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FieldSpec(**spec)


@pytest.mark.parametrize(("text", "expected"), [
    ("4807.038", 48.1173), ("01131.000", 11.516666666666667), ("0000.000", 0.0), ("9000.0000", 90.0),
])
def test_nmea_degrees(text: str, expected: float) -> None:
    assert nmea_degrees(text) == pytest.approx(expected)


def _text(patterns: list[str], **points: dict[str, Any]) -> TextDecoder:
    return TextDecoder(patterns, [(name, FieldSpec(**spec)) for name, spec in points.items()])


def test_text_decoding_conversions_map_and_hemisphere() -> None:
    dec = _text([r"^(?P<a>[^,]*),(?P<b>[^,]*),(?P<c>[^,]*),(?P<d>[^,]*),(?P<h>[^,]*),(?P<s>[^,]*),(?P<x>.*)$"],
                a={"group": "a"}, b={"group": "b", "type": "int"}, c={"group": "c", "type": "hex"},
                d={"group": "d", "type": "nmea_coord", "hemisphere": "h"}, s={"group": "s", "map": {"A": True}},
                x={"group": "x", "type": "str"})
    assert dec.decode("1.5,-3,1F,4807.038,S,A, hello ") == {
        "a": 1.5, "b": -3, "c": 31, "d": pytest.approx(-48.1173), "s": True, "x": "hello"}


def test_text_empty_is_none_and_junk_is_a_decode_error() -> None:
    dec = _text([r"^(?P<a>[^,]*),(?P<b>[^,]*),(?P<s>[^,]*)$"], a={"group": "a"}, b={"group": "b", "type": "int"},
                s={"group": "s", "map": {"A": True}})
    assert dec.decode(",x1,Q") == {"a": None, "b": PointError("decode_error"), "s": PointError("decode_error")}


def test_text_first_matching_pattern_wins_and_gives_only_its_points() -> None:
    dec = _text([r"^T=(?P<t>\S+)", r"^H=(?P<h>\S+)"], t={"group": "t"}, h={"group": "h"})
    assert dec.decode("H=40") == {"h": 40.0}
    assert dec.decode("T=21.5") == {"t": 21.5}
    assert dec.decode("nothing") is None


def test_invalid_when_consults_only_the_matched_patterns_groups() -> None:
    point = FieldSpec(group="v", invalid_when={"q": ["0"], "s": ["V"]}, invalid_reason="no_fix")
    dec = TextDecoder([r"^A,(?P<v>[^,]*),(?P<q>[^,]*)$", r"^B,(?P<v>[^,]*),(?P<s>[^,]*)$"], [("x", point)])
    assert dec.decode("A,1.5,1") == {"x": 1.5}
    assert dec.decode("A,1.5,0") == {"x": PointError("no_fix")}
    assert dec.decode("A,,0") == {"x": PointError("no_fix")}
    assert dec.decode("B,2.5,A") == {"x": 2.5}
    assert dec.decode("B,2.5,V") == {"x": PointError("no_fix")}


def test_invalid_when_is_for_text_fields() -> None:
    with pytest.raises(ValidationError, match="invalid_when"):
        FieldSpec(at=0, invalid_when={"q": ["0"]})


def test_profile_rejects_invalid_when_naming_a_group_no_pattern_has() -> None:
    from fieldgate.drivers.serial.profile import SerialProfile

    with pytest.raises(ValidationError, match=r"invalid_when names 'fixx', which no pattern has"):
        SerialProfile.model_validate({
            "schema_version": 1, "driver": "serial", "vendor": "v", "model": "m",
            "frame": {"kind": "line", "pattern": r"^(?P<v>[^,]*),(?P<fix>\d)"},
            "points": [{"name": "x", "group": "v", "invalid_when": {"fixx": ["0"]}}]})

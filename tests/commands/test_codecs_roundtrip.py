"""One codec, tested both ways: what the write path encodes, the read path decodes back.

Modbus: ``decode(encode(v))`` for every register type and byte/word order, and the write plan
(inverse scale/offset, rounding, the type's limits) against the read path's ``decode`` plus the
core's ``raw * scale + offset``. Binary fields (CoAP bodies, GATT values): ``BinaryDecoder`` of
``BinaryEncoder``'s frame.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from fieldgate.codecs.fields import BINARY_TYPES, BinaryDecoder, BinaryEncoder, EncodeError, FieldSpec
from fieldgate.drivers.modbus.decode import decode, encode
from fieldgate.drivers.modbus.profile import ModbusPoint, ModbusProfile
from fieldgate.drivers.modbus.writeplan import INT_LIMITS, WriteRefused, plan_write, raw_value, readback_tolerance
from hypothesis import given, settings
from hypothesis import strategies as st

ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]
FLOATS = {"float32": st.floats(width=32, allow_nan=False, allow_infinity=False),
          "float64": st.floats(allow_nan=False, allow_infinity=False)}


def _values(kind: str) -> st.SearchStrategy[Any]:
    if kind in INT_LIMITS:
        lo, hi = INT_LIMITS[kind]
        return st.integers(lo, hi)
    return FLOATS[kind]


@pytest.mark.parametrize("kind", [*INT_LIMITS, *FLOATS])
@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_modbus_registers_round_trip_every_type_and_order(kind: str, byte_order: str, word_order: str,
                                                          data: st.DataObject) -> None:
    value = data.draw(_values(kind))
    words = encode(value, kind, byte_order, word_order)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, kind, byte_order, word_order) == value


@pytest.mark.parametrize(("value", "kind", "orders", "words"), [
    (21.5, "float32", ("big", "big"), [0x41AC, 0x0000]),          # ABCD
    (21.5, "float32", ("big", "little"), [0x0000, 0x41AC]),       # CDAB
    (21.5, "float32", ("little", "big"), [0xAC41, 0x0000]),       # BADC
    (70000, "int32", ("big", "little"), [0x1170, 0x0001]),
    (-2, "int16", ("big", "big"), [0xFFFE]),
])
def test_modbus_known_words(value: float, kind: str, orders: tuple[str, str], words: list[int]) -> None:
    assert encode(value, kind, *orders) == words
    assert decode(words, kind, *orders) == value


def _profile(**point: Any) -> tuple[ModbusProfile, ModbusPoint]:
    profile = ModbusProfile.model_validate({
        "schema_version": 1, "driver": "modbus", "vendor": "t", "model": "t",
        "points": [{"name": "p", "address": 0, "writable": True, "write_range": [-1e40, 1e40], **point}]})
    return profile, profile.points[0]


@pytest.mark.parametrize("kind", ["int16", "uint16", "int32", "uint32", "float32"])
@pytest.mark.parametrize("scale_offset", [(1.0, 0.0), (0.1, 0.0), (0.01, -40.0), (10.0, 5.0)])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_write_plan_reads_back_what_was_written(kind: str, scale_offset: tuple[float, float],
                                               data: st.DataObject) -> None:
    scale, offset = scale_offset
    profile, point = _profile(type=kind, scale=scale, offset=offset, word_order="little")
    if kind in INT_LIMITS:
        lo, hi = INT_LIMITS[kind]
        value = data.draw(st.floats(lo * scale + offset, hi * scale + offset, allow_nan=False))
    else:
        value = data.draw(st.floats(-1e6, 1e6, allow_nan=False))
    req = plan_write(profile, point, value)
    assert req.function == (6 if point.width == 1 else 16) and req.address == 0
    back = decode(list(req.values), kind, *profile.order_of(point)) * scale + offset  # the read path
    assert math.isclose(back, value, abs_tol=readback_tolerance(point, value) + 1e-9, rel_tol=1e-6)


def test_write_plan_refuses_what_the_type_cannot_hold() -> None:
    _, int16 = _profile(type="int16", scale=0.1)
    assert raw_value(int16, 3276.7) == 32767
    with pytest.raises(WriteRefused) as exc:
        raw_value(int16, 3276.8)
    assert exc.value.reason == "out_of_range"
    _, uint16 = _profile(type="uint16")
    with pytest.raises(WriteRefused):
        raw_value(uint16, -1)
    with pytest.raises(WriteRefused) as exc:
        raw_value(uint16, True)
    assert exc.value.reason == "bad_value"
    coil = ModbusPoint(name="c", table="coil", address=0, writable=True)
    assert raw_value(coil, True) is True
    with pytest.raises(WriteRefused):
        raw_value(coil, 1)


def _field_values(kind: str) -> st.SearchStrategy[Any]:
    code = BINARY_TYPES[kind]
    if kind == "bool":
        return st.booleans()
    if code in "efd":
        width = {"e": 16, "f": 32, "d": 64}[code]
        return st.floats(width=width, allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]
    bits = struct.calcsize(code) * 8
    signed = code.islower()
    return st.integers(-(2 ** (bits - 1)) if signed else 0, 2 ** (bits - 1) - 1 if signed else 2**bits - 1)


@pytest.mark.parametrize("kind", list(BINARY_TYPES))
@pytest.mark.parametrize("order", ["big", "little"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_binary_fields_round_trip(kind: str, order: str, data: st.DataObject) -> None:
    spec = FieldSpec.model_validate({"at": 3, "type": kind, "byte_order": order})
    points = [("v", spec)]
    value = data.draw(_field_values(kind))
    frame = BinaryEncoder(points).encode({"v": value})
    assert BinaryDecoder(points).decode(frame) == {"v": value}


@settings(max_examples=60, deadline=None)
@given(flag=st.booleans(), level=st.integers(0, 7), other=st.integers(0, 255))
def test_bit_fields_merge_into_the_template(flag: bool, level: int, other: int) -> None:
    points = [("flag", FieldSpec.model_validate({"at": 0, "type": "u8", "bits": [7, 1]})),
              ("level", FieldSpec.model_validate({"at": 0, "type": "u8", "bits": [0, 3]}))]
    enc = BinaryEncoder(points)
    frame = enc.encode({"flag": flag, "level": level}, template=bytes([other, 0x55]))
    assert BinaryDecoder(points).decode(frame) == {"flag": flag, "level": level}
    assert frame[0] & 0b0111_1000 == other & 0b0111_1000  # the bits no field names are kept
    assert frame[1] == 0x55


@pytest.mark.parametrize(("kind", "value"), [("u8", 256), ("i16", 1.5), ("bool", 1), ("u16", -1)])
def test_binary_encoder_names_what_does_not_fit(kind: str, value: Any) -> None:
    with pytest.raises(EncodeError, match="v"):
        BinaryEncoder([("v", FieldSpec.model_validate({"at": 0, "type": kind}))]).encode({"v": value})

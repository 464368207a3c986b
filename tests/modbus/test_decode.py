"""Decoding: every type and byte/word order, and the datasheet vectors of every shipped profile."""

from __future__ import annotations

import math

import pytest
from fieldgate.drivers.modbus.decode import DecodeError, decode, encode, hex_words, parse_hex_words

from tests.modbus.conftest import MODBUS_PROFILES, profile

# (type, registers as on the wire for ABCD = big/big, value)
CASES = [
    ("uint16", "0x0131", 305),
    ("int16", "0xFF33", -205),                      # XY-MD02 datasheet: -20.5 °C
    ("uint16", "0xFFFF", 65535),
    ("int32", "0xFFFF 0xCFC7", -12345),
    ("uint32", "0x5375 0x6E53", 0x53756E53),        # SunSpec "SunS" marker
    ("int64", "0xFFFF 0xFFFF 0xFFFF 0xFFFE", -2),
    ("uint64", "0x0000 0x0001 0x0000 0x0000", 2**32),
    ("float32", "0x4366 0x0000", 230.0),            # Eastron: 230 V
    ("float32", "0xBF00 0x0000", -0.5),
    ("float64", "0x4059 0x0000 0x0000 0x0000", 100.0),
]

# The four byte/word orders of datasheets, as a permutation of the big/big bytes.
ORDERS = {
    ("big", "big"): "ABCD",
    ("big", "little"): "CDAB",     # word-swapped: Carlo Gavazzi, many PLCs
    ("little", "big"): "BADC",     # byte-swapped
    ("little", "little"): "DCBA",
}


def reorder(words: list[int], byte_order: str, word_order: str) -> list[int]:
    pairs = [(w >> 8, w & 0xFF) for w in words]
    if word_order == "little":
        pairs.reverse()
    if byte_order == "little":
        pairs = [(lo, hi) for hi, lo in pairs]
    return [hi << 8 | lo for hi, lo in pairs]


@pytest.mark.parametrize(("byte_order", "word_order"), list(ORDERS))
@pytest.mark.parametrize(("kind", "wire", "value"), CASES)
def test_every_type_and_order(kind: str, wire: str, value: float, byte_order: str, word_order: str) -> None:
    words = reorder(parse_hex_words(wire), byte_order, word_order)
    assert decode(words, kind, byte_order, word_order) == value
    assert encode(value, kind, byte_order, word_order) == words


def test_cdab_example_by_hand() -> None:
    # 123456 = 0x0001E240; word-swapped (CDAB) it travels as 0xE240 0x0001 (EM111 energy register).
    assert decode([0xE240, 0x0001], "int32", "big", "little") == 123456


@pytest.mark.parametrize(("words", "byte_order", "text"), [
    ([0x536F, 0x6C61, 0x7245, 0x6467, 0x6500, 0x0000], "big", "SolarEdge"),
    ([0x6F53, 0x616C, 0x4572, 0x6764, 0x0065], "little", "SolarEdge"),
    ([0x2020, 0x2020], "big", ""),
    ([0x4142, 0x0043], "big", "AB"),   # text ends at the first NUL
])
def test_strings(words: list[int], byte_order: str, text: str) -> None:
    assert decode(words, "string", byte_order) == text


@pytest.mark.parametrize(("bit", "expected"), [(0, False), (2, True), (5, True), (15, True), (14, False)])
def test_bit_in_register(bit: int, expected: bool) -> None:
    assert decode([0x8024], "bit", bit=bit) is expected


def test_nan_decodes_and_is_left_to_the_normalizer() -> None:
    assert math.isnan(decode([0x7FC0, 0x0000], "float32"))  # type: ignore[arg-type]


def test_wrong_width_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode([0x0001], "float32")


def test_hex_words_round_trip() -> None:
    assert hex_words([0x4366, 0]) == "0x4366 0x0000"
    assert parse_hex_words("0x4366 0x0000") == [0x4366, 0]


@pytest.mark.parametrize("name", MODBUS_PROFILES)
def test_datasheet_vectors(name: str) -> None:
    """Each profile's test_vectors decode, and scale to the documented value."""
    p = profile(name)
    assert p.test_vectors, f"{name} has no test vectors"
    points = {x.name: x for x in p.points}
    for vec in p.test_vectors:
        pt = points[vec["point"]]
        byte_order, word_order = p.order_of(pt)
        raw = decode(parse_hex_words(vec["registers"]), pt.kind, byte_order, word_order, pt.bit)
        assert raw == vec["raw"], vec
        if "value" in vec and not isinstance(raw, bool | str):
            value = raw * pt.scale + pt.offset  # and rounded to the point's decimals, as the normalizer does
            assert round(value, 6 if pt.decimals is None else pt.decimals) == pytest.approx(vec["value"]), vec

"""The Modbus driver's ``decode_vector`` hook: a datasheet vector's registers → the point's raw value.

A vector is ``{point, registers: "0x4366 0x0000", raw, value}``: the words a device sends
for one point, decoded with the point's type and the profile's byte and word order, as a poll
decodes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .decode import decode, parse_hex_words
from .profile import ModbusProfile


def decode_vector(profile: ModbusProfile, vector: Mapping[str, Any]) -> dict[str, Any]:
    """``{point: raw}`` of one vector (``KeyError`` names a point the profile lacks)."""
    point = next(p for p in profile.points if p.name == vector["point"])
    byte_order, word_order = profile.order_of(point)
    words = parse_hex_words(vector["registers"])
    return {point.name: decode(words, point.kind, byte_order, word_order, point.bit)}

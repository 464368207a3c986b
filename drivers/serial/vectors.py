"""The serial driver's ``decode_vector`` hook: a datasheet vector's bytes or line → raw values by point.

A vector is ``{hex: "AA C0 ..."} | {text: "$GPGGA,..."}`` with ``expect``: what the device
sends, through the profile's framer and decoder, as the driver reads it from the port.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fieldgate.codecs.fields import BinaryDecoder, TextDecoder
from fieldgate.codecs.frames import make_framer

from . import nmea
from .profile import SerialProfile


def decode_vector(profile: SerialProfile, vector: Mapping[str, Any]) -> dict[str, Any]:
    """The raw values of every frame in the vector (merged; the later frame wins)."""
    data = bytes.fromhex(vector["hex"]) if "hex" in vector else str(vector["text"]).encode("latin-1")
    points = [(p.name, p) for p in profile.points]
    frame = profile.frame
    text = TextDecoder(frame.patterns, points) if frame.is_text else None
    binary = None if frame.is_text else BinaryDecoder(points, frame.byte_order)
    values: dict[str, Any] = {}
    for unit in make_framer(frame).feed(data):  # lines for a text protocol, frames for a binary one
        if isinstance(unit, str) and text is not None:
            line = text.decode(unit) or {}
            if line and profile.nmea is not None:
                nmea.apply(profile.nmea, line)  # signs from N/S E/W fields, as the driver does per frame
            values.update(line)
        elif isinstance(unit, bytes) and binary is not None:
            values.update(binary.decode(unit))
    return values

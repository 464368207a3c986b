"""The CoAP driver's ``decode_vector`` hook: a datasheet vector's payload → raw values by point.

A vector is ``{raw: {hex: "..."} | {text: "..."}, expect: {...}}``: the bytes a device sends
(hex) or a text payload (JSON, SenML), decoded by the same ``PayloadDecoder`` as a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fieldgate.codecs.frames import parse_hex

from .payload import PayloadDecoder
from .profile import CoapProfile

#: The receive time a vector is decoded at (a payload's own time, if any, is checked against it).
VECTOR_TIME = 1.7e9


def decode_vector(profile: CoapProfile, vector: Mapping[str, Any]) -> dict[str, Any]:
    """The raw values of one vector's payload (several records merge, the later wins)."""
    raw = vector["raw"]
    payload = parse_hex(raw["hex"]) if "hex" in raw else str(raw["text"]).encode("utf-8")
    values: dict[str, Any] = {}
    for reading in PayloadDecoder(profile).decode(payload, None, now=VECTOR_TIME):
        values.update(reading.values)
    return values

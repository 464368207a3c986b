"""The readings' JSON encoder: orjson where installed, the stdlib otherwise, the same text either way."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fieldgate.uplink import encode

from .support.contract import validate_reading

MESSAGES: list[dict[str, Any]] = [
    {"schema": "fieldgate.reading/1", "gateway": "gw-1", "device": "meter-12", "ts": "2026-12-02T00:00:00.250Z",
     "metrics": {"voltage": {"value": 229.7, "unit": "V", "quality": "good"},
                 "relay": {"value": True, "quality": "good"},
                 "label": {"value": "Zähler \"Süd\" \u2028 \U0001f321", "quality": "good"},
                 "gone": {"value": None, "quality": "bad", "reason": "no_value"},
                 "count": {"value": 2**63 + 5, "quality": "good"}},
     "meta": {"tags": {"site": "dépôt"}}},
    # Beyond 64 bits (a scaled 128-bit counter): orjson refuses it, the stdlib writes it.
    {"schema": "fieldgate.reading/1", "gateway": "gw-1", "device": "d", "ts": "2026-12-02T00:00:00.000Z",
     "metrics": {"big": {"value": 2**70, "quality": "good"}}},
    # A lone surrogate (a driver decoding raw bytes badly): orjson refuses it, the stdlib escapes it.
    {"schema": "fieldgate.reading/1", "gateway": "gw-1", "device": "d", "ts": "2026-12-02T00:00:00.000Z",
     "metrics": {"s": {"value": "a\udc80b", "quality": "good"}}},
]


@pytest.mark.parametrize("message", MESSAGES)
def test_the_fast_encoder_writes_what_the_stdlib_writes(message: dict[str, Any]) -> None:
    text = encode.reading_json(message)
    assert json.loads(text) == json.loads(encode.dumps(message))
    assert list(json.loads(text)) == list(message), "key order is kept (seq is spliced in first)"
    validate_reading({"seq": 1, **json.loads(text)})


def test_orjson_is_used_where_installed() -> None:
    pytest.importorskip("orjson")
    assert encode.FAST


def test_non_finite_floats_are_refused_not_written_as_non_json() -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        encode.dumps({"value": float("nan")})

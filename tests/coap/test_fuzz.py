"""Fuzzing payload decoding: whatever a device sends decodes or raises PayloadError, nothing else."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest
from fieldgate.drivers.coap.payload import (
    CF_CBOR,
    CF_JSON,
    CF_OCTETS,
    CF_SENML_CBOR,
    CF_SENML_JSON,
    PayloadDecoder,
    PayloadError,
)
from fieldgate.drivers.coap.profile import CoapProfile
from fieldgate.normalize import Normalizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import profile


def _profile(fmt: str, points: list[dict[str, Any]], **payload: Any) -> CoapProfile:
    return CoapProfile.model_validate({"schema_version": 1, "driver": "coap", "vendor": "x", "model": "y",
                                       "payload": {"format": fmt, **payload}, "points": points})


DECODERS = [
    (PayloadDecoder(profile("generic/senml")), [None, CF_SENML_JSON, CF_SENML_CBOR, CF_JSON, CF_CBOR]),
    (PayloadDecoder(_profile("json", [{"name": "a", "path": "data.a"}, {"name": "b", "path": "list.0"}],
                             time="ts")), [None, CF_JSON]),
    (PayloadDecoder(_profile("cbor", [{"name": "a", "path": "data.a"}, {"name": "b", "path": "1"}])),
     [None, CF_CBOR]),
    (PayloadDecoder(profile("dragino/ndds75")), [None, CF_OCTETS]),
    (PayloadDecoder(_profile("binary", [{"name": "a", "at": 0, "type": "f32"}, {"name": "b", "at": 4, "type": "i16"}],
                             checksum={"type": "crc16-modbus"})), [None, CF_OCTETS]),
]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)
senml_keys = st.sampled_from(["bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut",
                              "temp", "x_", "humidity"])
senml_records = st.lists(st.dictionaries(senml_keys, json_values, max_size=6), max_size=6)


def check(payload: bytes, cf: int | None) -> None:
    for decoder, formats in DECODERS:
        for fmt in {cf, *formats}:
            try:
                readings = decoder.decode(payload, fmt, now=1.7e9)
            except PayloadError:
                continue
            assert readings
            norm = Normalizer("g", "d", _profile("senml", [{"name": p.name} for p in decoder.points]))
            for r in readings:
                json.dumps(norm.normalize(r), allow_nan=False)


@SETTINGS
@given(st.binary(max_size=80))
def test_random_bytes(payload: bytes) -> None:
    check(payload, None)


@SETTINGS
@given(senml_records)
def test_senml_shaped_json_and_cbor(records: list[dict[str, Any]]) -> None:
    try:
        text = json.dumps(records).encode()
    except ValueError:
        text = b"[]"
    check(text, CF_SENML_JSON)
    labels = {"bver": -1, "bn": -2, "bt": -3, "bu": -4, "bv": -5, "bs": -6, "n": 0, "u": 1, "v": 2, "vs": 3,
              "vb": 4, "s": 5, "t": 6, "ut": 7, "vd": 8}
    check(cbor2.dumps([{labels.get(k, k): v for k, v in r.items()} for r in records]), CF_SENML_CBOR)


@SETTINGS
@given(json_values)
def test_mapped_documents(doc: Any) -> None:
    try:
        check(json.dumps(doc).encode(), CF_JSON)
    except ValueError:
        pass
    check(cbor2.dumps(doc), CF_CBOR)


@SETTINGS
@given(st.binary(min_size=0, max_size=40), st.integers(0, 39))
def test_truncated_and_corrupted_binary(payload: bytes, cut: int) -> None:
    good = bytes.fromhex("41105675647100640cd1070a1600")
    check(good[:cut] + payload, CF_OCTETS)


def test_hostile_cbor_is_a_payload_error() -> None:
    decoder = PayloadDecoder(profile("generic/senml"))
    for payload in (b"\x9f" * 2000, b"\xbf" * 2000, b"\xc2\x5a\xff\xff\xff\xff", b"\x1b" + b"\xff" * 8,
                    b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00"):
        try:
            decoder.decode(payload, CF_SENML_CBOR)
        except PayloadError:
            pass


cbor_leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**200), max_value=2**200) | st.floats()
               | st.text(max_size=8) | st.binary(max_size=8))
cbor_values = st.recursive(
    cbor_leaves,
    lambda inner: (st.lists(inner, max_size=4) | st.dictionaries(st.integers(-8, 9) | st.text(max_size=4), inner,
                                                                  max_size=4)
                   | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 3, 4, 5, 24, 28, 29, 30, 32, 258, 55799,
                                                               2**32]), inner)),
    max_leaves=16)


@SETTINGS
@given(st.lists(st.dictionaries(st.integers(-8, 9) | st.sampled_from(["temp", "x_", "bn"]), cbor_values, max_size=6),
                max_size=5))
def test_senml_cbor_with_tags_bignums_and_non_finite_floats(records: list[dict[Any, Any]]) -> None:
    try:
        payload = cbor2.dumps(records)
    except (TypeError, ValueError, cbor2.CBOREncodeError):
        return  # a value cbor2 will not write (e.g. a malformed tag) is not a datagram anyone can send
    check(payload, CF_SENML_CBOR)
    check(payload, CF_CBOR)


def test_huge_labels_and_nesting_bombs_are_payload_errors() -> None:
    """A 3000-byte bignum label made str() raise ValueError (Python's 4300-digit limit) out of the decoder."""
    decoder = PayloadDecoder(profile("generic/senml"))
    big = b"\xff" * 3000
    bombs = [b"\x81\xa1\xc2\x59" + len(big).to_bytes(2, "big") + big + b"\x01",  # {bignum: 1}
             b"\x81" * 4000 + b"\x00", b"[" * 4000 + b"]" * 4000, b"\x9a\xff\xff\xff\xff", b"\xd8\x1c\x81\xd8\x1d\x00"]
    for payload in bombs:
        for cf in (CF_SENML_CBOR, CF_SENML_JSON, None):
            with pytest.raises(PayloadError):
                decoder.decode(payload[:4096], cf)

"""The datagram check in front of aiocoap: table tests from RFC 7252 section 3, and fuzzing against aiocoap's decoder.

The property that matters: whatever ``wire.check`` lets through, aiocoap decodes or refuses with its own
``UnparsableMessage`` (which it handles), never another exception out of the socket callback.
"""

from __future__ import annotations

import aiocoap
import aiocoap.error
import pytest
from fieldgate.drivers.coap import wire
from fieldgate_hwsim.coap_hostile import CON, NON, POST, encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD = encode(POST, 0x1234, b"tk", [(11, b"t"), (11, b"bin-1"), (12, b"\x2a")], b"\x01\x02")


@pytest.mark.parametrize(("data", "reason", "reply"), [
    (b"", "truncated_header", None),
    (b"\x40\x02\x12", "truncated_header", None),
    (b"\x80" + GOOD[1:], "bad_version", None),
    (b"\x49" + GOOD[1:], "bad_token_length", "RST"),
    (b"\x59" + GOOD[1:], "bad_token_length", None),  # NON: nothing to reset
    (GOOD[:5], "format_error", "RST"),
    (GOOD[:4 + 2] + b"\xf1", "format_error", "RST"),  # delta nibble 15 that is not the payload marker
    (GOOD[:4 + 2] + b"\xff", "format_error", "RST"),  # payload marker, no payload
    (GOOD[:4 + 2] + b"\xb5abc", "format_error", "RST"),  # value runs past the end
    (GOOD[:4 + 2] + b"\xd1", "format_error", "RST"),  # extended delta byte missing
    (encode(POST, 1, b"tk", [(11, b"\xff")]), "option_not_utf8", "4.02"),
    (encode(POST, 1, b"tk", [(15, b"a=\xc3")], mtype=NON), "option_not_utf8", "4.02"),
    (encode(POST, 1, b"tk", [(12, b"\x00\x00\x6e")]), "bad_option", "4.00"),
    (encode(POST, 1, b"tk", [(12, b"\x6e"), (12, b"\x70")]), "bad_option", "4.00"),
    (encode(POST, 1, b"tk", [(11, b"t")], b"x" * 1200), "too_large", "4.13"),
    (encode(0x45, 1, b"tk", [(8, b"\xff")]), "option_not_utf8", None),  # a response: never answered
])
def test_faults_and_their_answers(data: bytes, reason: str, reply: str | None) -> None:
    fault = wire.check(data)
    assert fault is not None and fault.reason == reason, fault
    out = wire.answer(fault)
    if reply is None:
        assert out is None
        return
    assert out is not None
    msg = aiocoap.Message.decode(out)
    assert msg.mid == fault.mid or msg.mtype == aiocoap.NON
    if reply == "RST":
        assert msg.mtype == aiocoap.RST and msg.code == aiocoap.EMPTY
        return
    assert str(msg.code).startswith(reply) and msg.token == b"tk"
    assert msg.mtype == (aiocoap.ACK if data[0] >> 4 & 3 == CON else aiocoap.NON)
    assert msg.payload.decode("utf-8")  # a diagnostic, as section 5.5.2 wants it: UTF-8 text
    if reply == "4.13":
        assert msg.opt.size1 == wire.MAX_DATAGRAM


def test_well_formed_messages_pass_and_a_cut_one_does_not() -> None:
    assert wire.check(GOOD) is None
    assert wire.check(encode(0, 7, b"", mtype=CON)) is None  # a CoAP ping is aiocoap's to answer
    fault = wire.check(GOOD, truncated=True)
    assert fault is not None and fault.reason == "too_large" and "receive buffer" in fault.text


def _aiocoap_copes(data: bytes) -> None:
    if wire.check(data) is not None:
        return
    try:
        msg = aiocoap.Message.decode(data)
    except aiocoap.error.UnparsableMessage:
        return  # aiocoap catches this one itself
    _ = (msg.opt.uri_path, msg.opt.uri_query, msg.opt.content_format, msg.opt.accept, msg.payload)


@SETTINGS
@given(st.binary(max_size=64))
def test_random_bytes_never_reach_aiocoap_as_a_crash(data: bytes) -> None:
    _aiocoap_copes(b"\x40" + data[1:] if data else data)  # mostly version 1, so the options get parsed


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 300), st.binary(max_size=12)), max_size=6), st.binary(max_size=8),
       st.integers(0, 40), st.binary(max_size=3))
def test_mutated_requests(options: list[tuple[int, bytes]], payload: bytes, cut: int, junk: bytes) -> None:
    data = encode(POST, 9, b"ab", options, payload)
    _aiocoap_copes(data)
    _aiocoap_copes(data[: max(4, len(data) - cut)])
    _aiocoap_copes(data[:6] + junk + data[6:])
    fault = wire.check(data)
    if fault is not None:
        wire.answer(fault)

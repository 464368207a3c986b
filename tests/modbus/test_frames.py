"""Table tests of the answer check (drivers/modbus/frames.py): raw bytes in, a verdict out."""

from __future__ import annotations

import pytest
from fieldgate.drivers.modbus.frames import Expect, at_timeout, check, crc16


def rtu(hexstr: str) -> bytes:
    body = bytes.fromhex(hexstr)
    return body + crc16(body).to_bytes(2, "big")


def mbap(tid: int, unit: int, pdu_hex: str, length: int | None = None) -> bytes:
    pdu = bytes.fromhex(pdu_hex)
    n = len(pdu) + 1 if length is None else length
    return tid.to_bytes(2, "big") + b"\0\0" + n.to_bytes(2, "big") + bytes([unit]) + pdu


TCP = Expect(unit=1, function=3, count=2, tid=7)
RTU = Expect(unit=1, function=3, count=2)
GOOD = "0304 4366 0000"


def test_crc_of_the_spec_example() -> None:
    # Read holding register 10 of unit 1: the example every Modbus RTU guide prints, CRC bytes A4 08.
    assert crc16(bytes.fromhex("0103000a0001")) == 0xA408


@pytest.mark.parametrize(("data", "kind", "reason"), [
    (mbap(7, 1, GOOD), "answer", ""),
    (mbap(7, 1, "8302"), "answer", ""),                       # exception 02: an answer, decoded by pymodbus
    (mbap(6, 1, GOOD) + mbap(7, 1, GOOD), "answer", ""),     # a late answer first, then ours
    (mbap(6, 1, GOOD), "wait", ""),                           # only a late answer so far
    (mbap(7, 1, GOOD)[:9], "wait", ""),                       # ours, still arriving
    (b"\x12\x34\x56\x78\x9a", "fault", "bad_frame"),          # protocol id 0x5678
    (mbap(7, 1, GOOD, length=400), "fault", "bad_length"),    # MBAP length beyond any frame
    (mbap(7, 2, GOOD), "fault", "wrong_unit"),
    (mbap(7, 1, "0404 4366 0000"), "fault", "wrong_function"),
    (mbap(7, 1, "0306 4366 0000"), "fault", "bad_length"),    # byte count says 6, 4 bytes follow
    (mbap(7, 1, "0302 4366"), "fault", "bad_length"),         # one register to a request for two
    (mbap(7, 1, "830201"), "fault", "bad_length"),            # exception frame with a byte too many
])
def test_tcp(data: bytes, kind: str, reason: str) -> None:
    v = check(TCP, data)
    assert (v.kind, v.reason) == (kind, reason), v
    if kind == "answer":
        assert data[v.start:v.end] == data[-len(data[v.start:v.end]):]


@pytest.mark.parametrize(("data", "kind", "reason"), [
    (rtu("01" + GOOD), "answer", ""),
    (rtu("018302"), "answer", ""),
    (b"\x00\x7f" + rtu("01" + GOOD), "answer", ""),           # stray bytes before the answer are hunted past
    (rtu("02" + GOOD) + rtu("01" + GOOD), "answer", ""),     # another unit's frame first
    (rtu("01" + GOOD)[:5], "wait", ""),
    (rtu("01" + "0404 4366 0000"), "stale", "wrong_function"),
    (rtu("01" + "0302 4366"), "stale", "bad_length"),         # a sound frame answering another count
    (rtu("02" + GOOD), "wait", ""),                            # named at the timeout (wrong_unit)
    (b"\xde\xad\xbe\xef\x01\x02\x03", "wait", ""),             # junk: named at the timeout
])
def test_rtu(data: bytes, kind: str, reason: str) -> None:
    v = check(RTU, data)
    assert (v.kind, v.reason) == (kind, reason), v


@pytest.mark.parametrize(("expect", "data", "reason"), [
    (TCP, b"", "timeout"),
    (TCP, mbap(6, 1, GOOD), "wrong_transaction"),
    (TCP, mbap(7, 1, GOOD)[:9], "incomplete_frame"),
    (TCP, b"\x00\x07\x00", "incomplete_frame"),
    (TCP, mbap(7, 1, GOOD, length=14), "bad_length"),         # a whole answer, MBAP claims 7 bytes more
    (TCP, mbap(7, 1, "8302", length=9), "bad_length"),        # a whole exception, MBAP claims more
    (RTU, b"", "timeout"),
    (RTU, rtu("02" + GOOD), "wrong_unit"),
    (RTU, b"\xde\xad\xbe\xef\x01\x02\x03", "bad_frame"),
    (RTU, rtu("01" + GOOD)[:-1] + b"\x00", "bad_crc"),
    (RTU, rtu("01" + GOOD)[:6], "incomplete_frame"),
    (RTU, rtu("01" + "0306 4366 0000"), "bad_length"),        # byte count 6, CRC right after 4 bytes
])
def test_named_at_the_timeout(expect: Expect, data: bytes, reason: str) -> None:
    assert at_timeout(expect, data, check(expect, data).note)[0] == reason


def test_bits_are_counted_in_bytes() -> None:
    coils = Expect(unit=1, function=1, count=9, tid=1)
    assert check(coils, mbap(1, 1, "0102 ff01")).kind == "answer"
    assert check(coils, mbap(1, 1, "0101 ff")).reason == "bad_length"


def test_a_late_largest_answer_before_ours_is_skipped() -> None:
    big = Expect(unit=1, function=3, count=125, tid=2)
    regs = "03fa" + "0000" * 125
    data = mbap(1, 1, regs) + mbap(2, 1, regs)  # 518 bytes: more than pymodbus keeps by itself
    v = check(big, data)
    assert (v.kind, v.start, v.end) == ("answer", 259, 518)

"""Checksums against published check values and datasheet frames."""

from __future__ import annotations

import pytest
from fieldgate.codecs.checksums import CHECKSUMS, CRC_CHECK_VALUES, lrc8, nmea, sum8, sum16, xor8

CHECK_INPUT = b"123456789"


@pytest.mark.parametrize(("name", "expected"), sorted(CRC_CHECK_VALUES.items()))
def test_crc_check_values(name: str, expected: int) -> None:
    assert CHECKSUMS[name].compute(CHECK_INPUT) == expected


def test_crc_of_empty_input_is_init_xor_xorout() -> None:
    assert CHECKSUMS["crc16-modbus"].compute(b"") == 0xFFFF
    assert CHECKSUMS["crc16-xmodem"].compute(b"") == 0x0000


def test_modbus_rtu_request_crc_is_sent_low_byte_first() -> None:
    # read holding registers 0..1 of unit 1: 01 03 00 00 00 01, CRC on the wire 84 0A
    assert CHECKSUMS["crc16-modbus"].compute(bytes.fromhex("010300000001")).to_bytes(2, "little") == b"\x84\x0a"


def test_simple_sums() -> None:
    data = bytes.fromhex("D4043A0AA160")  # SDS011 control protocol example: checksum 1D
    assert sum8(data) == 0x1D
    assert sum16(b"\xff\xff\x02") == 0x0200
    assert xor8(b"\x01\x02\x04") == 0x07
    assert (sum(b"\x01\x02\x03") + lrc8(b"\x01\x02\x03")) & 0xFF == 0


@pytest.mark.parametrize(("sentence", "expected"), [
    (b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47", 0x47),
    (b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A", 0x6A),
    (b"GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W", 0x6A),
])
def test_nmea(sentence: bytes, expected: int) -> None:
    assert nmea(sentence) == expected


def test_every_checksum_has_a_size_and_accepts_any_bytes() -> None:
    for algo in CHECKSUMS.values():
        assert algo.size in (1, 2)
        assert 0 <= algo.compute(bytes(range(256))) < 256 ** algo.size

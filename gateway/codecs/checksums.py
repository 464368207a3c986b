"""Frame checksums by name: a table of pure functions over bytes, no I/O.

Profiles name a checksum (``sum8``, ``crc16-modbus``, ...) and the framers
look it up here. CRCs are table-driven and described by their Rocksoft
parameters, so adding a variant is one line in ``_CRC_PARAMS``; each variant
is tested against its published check value (the CRC of ``b"123456789"``).
This module is shared by every driver that decodes binary frames (serial,
CoAP payloads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from operator import xor


@dataclass(frozen=True, slots=True)
class Checksum:
    """A named checksum algorithm.

    Attributes:
        name: the name profiles use.
        size: bytes the value takes in a binary frame.
        compute: bytes covered → checksum value (an unsigned integer).
        description: one line for the README and error messages.
    """

    name: str
    size: int
    compute: Callable[[bytes], int]
    description: str


def sum8(data: bytes) -> int:
    """Sum of the bytes, modulo 256 (Nova Fitness SDS011)."""
    return sum(data) & 0xFF


def sum16(data: bytes) -> int:
    """Sum of the bytes, modulo 65536 (Plantower PMSx003)."""
    return sum(data) & 0xFFFF


def xor8(data: bytes) -> int:
    """XOR of the bytes."""
    return reduce(xor, data, 0)


def lrc8(data: bytes) -> int:
    """Two's complement of the byte sum (Modbus ASCII LRC): sum of data and LRC is 0."""
    return -sum(data) & 0xFF


def nmea(data: bytes) -> int:
    """NMEA 0183: XOR of the characters between ``$`` (or ``!``) and ``*``.

    Given a whole sentence it finds the span itself; given just the body it
    XORs everything.
    """
    start = 1 if data[:1] in (b"$", b"!") else 0
    end = data.find(b"*", start)
    return reduce(xor, data[start:] if end < 0 else data[start:end], 0)


def _reflect(value: int, width: int) -> int:
    out = 0
    for _ in range(width):
        out = (out << 1) | (value & 1)
        value >>= 1
    return out


def make_crc(width: int, poly: int, init: int, reflected: bool, xorout: int) -> Callable[[bytes], int]:
    """A table-driven CRC of 8 or 16 bits from its Rocksoft model parameters.

    Args:
        width: 8 or 16.
        poly: generator polynomial, normal (MSB-first) form, e.g. 0x8005.
        init: register value before the first byte.
        reflected: input and output reflected (refin = refout, true of all
            common variants).
        xorout: XORed into the final register.
    """
    top = 1 << (width - 1)
    mask = (1 << width) - 1
    table: list[int] = []
    if reflected:
        rpoly = _reflect(poly, width)
        for byte in range(256):
            crc = byte
            for _ in range(8):
                crc = (crc >> 1) ^ rpoly if crc & 1 else crc >> 1
            table.append(crc)
        rinit = _reflect(init, width)

        def crc_reflected(data: bytes) -> int:
            crc = rinit
            for b in data:
                crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
            return crc ^ xorout

        return crc_reflected
    shift = width - 8
    for byte in range(256):
        crc = byte << shift
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & top else crc << 1
        table.append(crc & mask)

    def crc_normal(data: bytes) -> int:
        crc = init
        for b in data:
            crc = ((crc << 8) & mask) ^ table[((crc >> shift) ^ b) & 0xFF]
        return crc ^ xorout

    return crc_normal


# name: (width, poly, init, reflected, xorout, check value of b"123456789")
_CRC_PARAMS: dict[str, tuple[int, int, int, bool, int, int]] = {
    "crc8": (8, 0x07, 0x00, False, 0x00, 0xF4),
    "crc8-maxim": (8, 0x31, 0x00, True, 0x00, 0xA1),          # 1-Wire / Dallas
    "crc8-sensirion": (8, 0x31, 0xFF, False, 0x00, 0xF7),     # Sensirion SHT/SCD/SPS
    "crc16-modbus": (16, 0x8005, 0xFFFF, True, 0x0000, 0x4B37),
    "crc16-arc": (16, 0x8005, 0x0000, True, 0x0000, 0xBB3D),
    "crc16-usb": (16, 0x8005, 0xFFFF, True, 0xFFFF, 0xB4C8),
    "crc16-xmodem": (16, 0x1021, 0x0000, False, 0x0000, 0x31C3),
    "crc16-ccitt-false": (16, 0x1021, 0xFFFF, False, 0x0000, 0x29B1),  # a.k.a. IBM-3740
    "crc16-kermit": (16, 0x1021, 0x0000, True, 0x0000, 0x2189),        # a.k.a. CCITT (true)
    "crc16-x25": (16, 0x1021, 0xFFFF, True, 0xFFFF, 0x906E),
    "crc16-dnp": (16, 0x3D65, 0x0000, True, 0xFFFF, 0xEA82),
}

CRC_CHECK_VALUES: dict[str, int] = {name: p[5] for name, p in _CRC_PARAMS.items()}
"""Published check values, the CRC of ``b"123456789"`` (for tests)."""

CHECKSUMS: dict[str, Checksum] = {
    "sum8": Checksum("sum8", 1, sum8, "sum of the bytes modulo 256"),
    "sum16": Checksum("sum16", 2, sum16, "sum of the bytes modulo 65536"),
    "xor8": Checksum("xor8", 1, xor8, "XOR of the bytes"),
    "lrc8": Checksum("lrc8", 1, lrc8, "two's complement of the byte sum (Modbus ASCII LRC)"),
    "nmea": Checksum("nmea", 1, nmea, "NMEA 0183: XOR between '$' and '*', written as two hex digits"),
    **{
        name: Checksum(name, width // 8, make_crc(width, poly, init, refl, xorout),
                       f"CRC-{width} poly 0x{poly:0{width // 4}X} init 0x{init:0{width // 4}X}"
                       f"{' reflected' if refl else ''} xorout 0x{xorout:0{width // 4}X}")
        for name, (width, poly, init, refl, xorout, _check) in _CRC_PARAMS.items()
    },
}
"""Every checksum a profile may name."""

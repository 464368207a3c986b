"""Register decoding and encoding (pure): 16-bit words ↔ typed values.

Byte order is the order of the two bytes inside each register (``big``: high
byte first, as the Modbus spec sends them). Word order is the order of the
registers of a 32/64-bit value (``big``: most significant register first,
as Eastron and SunSpec devices do; ``little``: least significant first, as
Carlo Gavazzi and many PLCs do). The four combinations are the ABCD / CDAB /
BADC / DCBA orders of datasheets. ``encode`` is the exact inverse and feeds
the simulators and the table tests.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_STRUCT = {
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
    "float32": "f", "float64": "d",
}


class DecodeError(ValueError):
    """The registers cannot hold a value of the requested type."""


def _to_bytes(words: Sequence[int], byte_order: str, word_order: str) -> bytes:
    ordered = list(words) if word_order == "big" else list(reversed(words))
    if byte_order == "big":
        return b"".join(w.to_bytes(2, "big") for w in ordered)
    return b"".join(w.to_bytes(2, "little") for w in ordered)


def _from_bytes(data: bytes, byte_order: str, word_order: str) -> list[int]:
    words = [int.from_bytes(data[i:i + 2], byte_order) for i in range(0, len(data), 2)]  # type: ignore[arg-type]  # byte_order is "big"/"little", checked by the profile model
    return words if word_order == "big" else list(reversed(words))


def decode(
    words: Sequence[int], kind: str, byte_order: str = "big", word_order: str = "big", bit: int | None = None
) -> int | float | str | bool:
    """Decode the registers of one point.

    Args:
        words: the point's registers, in address order.
        kind: a point type (int16 ... float64, string, bit).
        byte_order: ``big`` or ``little`` inside each register.
        word_order: ``big`` or ``little`` across registers (ignored for strings).
        bit: for ``bit``, the bit number (0 = least significant).

    Raises:
        DecodeError: wrong number of registers for the type.
    """
    if kind == "bit":
        return bool((words[0] >> (bit or 0)) & 1)
    if kind == "string":
        raw = _to_bytes(words, byte_order, "big")
        return raw.split(b"\x00", 1)[0].decode("latin-1").strip()
    fmt = _STRUCT.get(kind)
    if fmt is None:
        raise DecodeError(f"unknown type {kind!r}")
    size = struct.calcsize(fmt)
    if len(words) * 2 != size:
        raise DecodeError(f"{kind} needs {size // 2} registers, got {len(words)}")
    value = struct.unpack(">" + fmt, _to_bytes(words, byte_order, word_order))[0]
    return value  # type: ignore[no-any-return]  # struct.unpack is typed Any; the format makes it int or float


def encode(
    value: int | float | str | bool, kind: str, byte_order: str = "big", word_order: str = "big",
    count: int | None = None,
) -> list[int]:
    """Registers that ``decode`` turns back into ``value`` (for simulators and tests).

    For ``bit``, returns a one-register mask with the bit set or clear at
    position 0; callers merge bits into a shared register themselves.
    """
    if kind in ("bit", "bool"):
        return [1 if value else 0]
    if kind == "string":
        n = count or 1
        data = str(value).encode("latin-1")[: n * 2].ljust(n * 2, b"\x00")
        return _from_bytes(data, byte_order, "big")
    fmt = _STRUCT[kind]
    data = struct.pack(">" + fmt, float(value) if fmt in "fd" else int(value))
    return _from_bytes(data, byte_order, word_order)


def hex_words(words: Sequence[int]) -> str:
    """``0x4366 0x0000``: how ``fieldgate probe`` shows raw registers."""
    return " ".join(f"0x{w:04X}" for w in words)


def parse_hex_words(text: str) -> list[int]:
    """Inverse of ``hex_words`` (used by profile test vectors)."""
    return [int(w, 16) for w in text.split()]

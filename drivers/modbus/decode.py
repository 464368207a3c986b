"""Register decoding and encoding (pure): 16-bit words ↔ typed values.

Byte order is the order of the two bytes inside each register (``big``: high
byte first, as the Modbus spec sends them). Word order is the order of the
registers of a 32/64-bit value (``big``: most significant register first,
as Eastron and SunSpec devices do; ``little``: least significant first, as
Carlo Gavazzi and many PLCs do). The four combinations are the ABCD / CDAB /
BADC / DCBA orders of datasheets. ``encode`` is the exact inverse and feeds
the simulators, the table tests (and a write path). ``BlockDecoder`` is the
poll loop's form of ``decode``: compiled once per merged read, it decodes
every point of the block in a few C calls instead of a Python call per point.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

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


#: One point of a block for ``BlockDecoder``: (offset in the block, type, byte order, word order, bit, width).
PointLayout = tuple[int, str, str, str, int | None, int]


class BlockDecoder:
    """Decodes all points of one merged read at once; same results as ``decode`` point by point.

    Built once per block of a poll plan. Numeric points in big-endian byte
    order (word order big, or one register) that do not overlap are read by
    one ``struct`` format spanning the whole block (pad bytes over gaps); a
    block of nothing but such 16-bit points skips even that and picks the
    registers by index. Everything else (strings, bits, swapped orders,
    shared registers) gets its own small reader, compiled here too.

    Args:
        layout: the block's points, in the order ``decode`` returns their values.
    """

    __slots__ = ("_direct", "_fast", "_fast_at", "_need", "_pack", "_readers", "_slots")

    def __init__(self, layout: Sequence[PointLayout]) -> None:
        self._need = max((at + width for at, _k, _b, _w, _bit, width in layout), default=0)
        self._pack = struct.Struct(f">{self._need}H").pack
        plain: list[tuple[int, int, str]] = []  # (offset, position in the output, struct code)
        readers: list[tuple[int, Callable[[Sequence[int], bytes], Any]]] = []
        end = 0
        for pos, (at, kind, bo, wo, bit, width) in enumerate(layout):
            code = _STRUCT.get(kind)
            if code is not None and bo == "big" and (wo == "big" or width == 1) and at >= end:
                plain.append((at, pos, code))
                end = at + width
            else:
                readers.append((pos, _reader(at, kind, bo, wo, bit, width)))
        self._readers = readers
        self._slots = len(layout)
        # 16-bit points only, all plain: the registers are the values (int16 needs its sign).
        self._direct: Callable[[Sequence[int]], Any] | None = None
        if not readers and plain and all(code == "H" for _a, _p, code in plain):
            offsets = [a for a, _p, _c in plain]
            self._direct = itemgetter(*offsets) if len(offsets) > 1 else (lambda w, _a=offsets[0]: (w[_a],))
        fmt, at = [">"], 0
        for a, _pos, code in plain:
            if a > at:
                fmt.append(f"{2 * (a - at)}x")
            fmt.append(code)
            at = a + struct.calcsize(code) // 2
        self._fast = struct.Struct("".join(fmt)).unpack_from if plain else None
        self._fast_at = [pos for _a, pos, _c in plain]

    def decode(self, words: Sequence[int]) -> list[Any]:
        """The values of the block's points, in layout order.

        Raises:
            DecodeError: fewer registers than the layout covers.
        """
        if len(words) < self._need:
            raise DecodeError(f"the block needs {self._need} registers, got {len(words)}")
        if self._direct is not None:
            return list(self._direct(words))
        out: list[Any] = [None] * self._slots
        buf = b""
        if self._fast is not None or self._readers:
            buf = self._pack(*words[:self._need])
        if self._fast is not None:
            for pos, value in zip(self._fast_at, self._fast(buf), strict=True):
                out[pos] = value
        for pos, read in self._readers:
            out[pos] = read(words, buf)
        return out


def _reader(at: int, kind: str, bo: str, wo: str, bit: int | None,
            width: int) -> Callable[[Sequence[int], bytes], Any]:
    """A compiled reader of one point that the block's shared format cannot take."""
    if kind == "bit":
        b = bit or 0
        return lambda w, _buf: bool((w[at] >> b) & 1)
    if kind == "bool":
        return lambda w, _buf: bool(w[at])
    code = _STRUCT.get(kind)
    if code is not None and (wo == bo or width == 1):
        # ABCD and DCBA: the value's bytes are in one endianness on the wire, read in place.
        unpack = struct.Struct((">" if bo == "big" else "<") + code).unpack_from
        return lambda _w, buf: unpack(buf, 2 * at)[0]
    return lambda w, _buf: decode(w[at:at + width], kind, bo, wo, bit)


def apply_scale_factor(value: float, sf: int) -> float:
    """``value * 10**sf`` (a SunSpec scale factor register) without binary noise in the result.

    ``1304 * 10.0 ** -2`` is 13.040000000000001, because 0.01 has no exact binary form; dividing
    by the exact integer power of ten rounds once, correctly: 13.04.
    """
    scaled: float = value / 10 ** -sf if sf < 0 else value * 10 ** sf
    return scaled


def hex_words(words: Sequence[int]) -> str:
    """``0x4366 0x0000``: how ``fieldgate probe`` shows raw registers."""
    return " ".join(f"0x{w:04X}" for w in words)


def parse_hex_words(text: str) -> list[int]:
    """Inverse of ``hex_words`` (used by profile test vectors)."""
    return [int(w, 16) for w in text.split()]

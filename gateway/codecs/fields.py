"""Field descriptions and frame decoding: where each value sits and how to read it.

A ``FieldSpec`` says where one point's raw value is: at a byte offset of a
binary frame (``at``, ``type``, ``byte_order``, ``bits``) or in a named group
of a text line's regular expression (``group``, ``type``, ``map``,
``hemisphere``, ``invalid_when``). Decoders compile a list of them once and turn each frame
into ``{point name: raw value}`` (before scale/offset, which the core
applies), or a ``PointError`` for a value that cannot be read. Pure: no I/O,
no pyserial; the CoAP driver decodes its payloads with the same models.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from ..profile import Model
from ..schema import PointError

# struct codes of the binary types; "bool" reads one byte, non-zero is true.
BINARY_TYPES: dict[str, str] = {
    "u8": "B", "i8": "b", "u16": "H", "i16": "h", "u32": "I", "i32": "i",
    "u64": "Q", "i64": "q", "f16": "e", "f32": "f", "f64": "d", "bool": "?",
}
TEXT_TYPES: tuple[str, ...] = ("float", "int", "hex", "str", "bool", "nmea_coord")
_INT_TYPES = {"u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64"}

FieldType = Literal["u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f16", "f32", "f64", "bool",
                    "float", "int", "hex", "str", "nmea_coord"]
ByteOrder = Literal["big", "little"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class FieldSpec(Model):
    """Where one value sits in a frame; mixed into a driver's point model.

    Exactly one of ``at`` (binary frames) or ``group`` (line frames) is given.
    """

    at: int | None = Field(None, ge=0, description="binary frames: byte offset of the value, counted from the "
                                                   "first header byte (0)")
    group: str | None = Field(None, description="line frames: name of the pattern's group holding the value")
    type: FieldType | None = Field(
        None, description="binary: u8 i8 u16 i16 u32 i32 u64 i64 f16 f32 f64 bool (default u16); "
                          "text: float int hex str bool nmea_coord (default float)")
    byte_order: ByteOrder | None = Field(None, description="binary: big or little; default: the frame's byte_order")
    bits: list[int] | None = Field(
        None, min_length=2, max_length=2,
        description="binary integers: [first bit, bit count], bit 0 the least significant; one bit gives a bool")
    map: dict[str, bool | int | float | str] | None = Field(
        None, description="text: raw text → value, e.g. {A: true, V: false}; other text is a decode_error")
    hemisphere: str | None = Field(
        None, description="nmea_coord: group holding N/S/E/W; S and W make the value negative")
    # A receiver without a fix may repeat its last position (GGA quality 0,
    # RMC status V): the value is there but must not be trusted, so the line's
    # own status field decides, not whether the value field is empty.
    invalid_when: dict[str, list[str]] | None = Field(
        None, description="text: group → raw texts that make this value bad, e.g. {fix: ['0'], status: [V]}; "
                          "a group the matched pattern lacks is not consulted")
    invalid_reason: str = Field(
        "invalid", min_length=1, pattern=r"^[a-z0-9_:]+$",
        description="text: the reason reported when invalid_when applies (e.g. no_fix)")

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if (self.at is None) == (self.group is None):
            raise ValueError("give exactly one of 'at' (byte offset in a binary frame) or 'group' "
                             "(named group of a line pattern)")
        kind = self.value_type
        if self.at is not None:
            if kind not in BINARY_TYPES:
                raise ValueError(f"type {kind!r} is for text lines; binary fields take one of: "
                                 f"{', '.join(BINARY_TYPES)}")
            if self.map is not None or self.hemisphere is not None or self.invalid_when is not None:
                raise ValueError("'map', 'hemisphere' and 'invalid_when' apply to text fields (with 'group')")
            if self.bits is not None:
                if kind not in _INT_TYPES:
                    raise ValueError(f"'bits' needs an integer type, not {kind!r}")
                first, count = self.bits
                width = struct.calcsize(BINARY_TYPES[kind]) * 8
                if first < 0 or count < 1 or first + count > width:
                    raise ValueError(f"bits [{first}, {count}] do not fit in a {width}-bit {kind}")
        else:
            if kind not in TEXT_TYPES:
                raise ValueError(f"type {kind!r} is for binary frames; text fields take one of: "
                                 f"{', '.join(TEXT_TYPES)}")
            if self.byte_order is not None or self.bits is not None:
                raise ValueError("'byte_order' and 'bits' apply to binary fields (with 'at')")
            if (kind == "nmea_coord") != (self.hemisphere is not None):
                raise ValueError("type nmea_coord and 'hemisphere' go together")
        return self

    @property
    def value_type(self) -> str:
        """The declared type, or the default for the field's kind."""
        return self.type or ("u16" if self.at is not None else "float")

    @property
    def size(self) -> int:
        """Bytes a binary field occupies (0 for text fields)."""
        return struct.calcsize(BINARY_TYPES[self.value_type]) if self.at is not None else 0


# --- binary -----------------------------------------------------------------

class BinaryDecoder:
    """Decodes binary frames into raw values, one compiled reader per field.

    Args:
        points: (point name, field) pairs; every field has ``at``.
        byte_order: default byte order of the frame's fields.
    """

    def __init__(self, points: Sequence[tuple[str, FieldSpec]], byte_order: ByteOrder = "big") -> None:
        self._items: list[tuple[str, Callable[[Any, int], tuple[Any, ...]], int, int, int, int, bool]] = []
        for name, spec in points:
            if spec.at is None:
                raise ValueError(f"point {name!r} has no byte offset 'at'")
            order = ">" if (spec.byte_order or byte_order) == "big" else "<"
            st = struct.Struct(order + BINARY_TYPES[spec.value_type])
            shift, mask, as_bool = 0, 0, False
            if spec.bits is not None:
                shift, count = spec.bits
                mask = (1 << count) - 1
                as_bool = count == 1
            self._items.append((name, st.unpack_from, spec.at, spec.at + st.size, shift, mask, as_bool))

    def decode(self, frame: bytes) -> dict[str, Any]:
        """Raw values of one frame; a field beyond the frame's end is a ``decode_error``."""
        out: dict[str, Any] = {}
        n = len(frame)
        for name, unpack, at, end, shift, mask, as_bool in self._items:
            if end > n:
                out[name] = PointError("decode_error")
                continue
            value = unpack(frame, at)[0]
            if mask:
                value = (value >> shift) & mask
                if as_bool:
                    value = bool(value)
            out[name] = value
        return out


class EncodeError(ValueError):
    """A raw value does not fit its field (wrong kind, outside the type or its bits)."""


class BinaryEncoder:
    """The inverse of ``BinaryDecoder``: raw values into a binary frame (a CoAP PUT body, a GATT write).

    Built from the same ``(point name, field)`` pairs, so one description reads and writes a frame
    and the two are tested against each other (tests/commands/test_codecs_roundtrip.py). Fields
    with ``bits`` are merged into the bytes already there (a template, e.g. the last frame read),
    so writing one flag keeps the other bits of its byte.

    Args:
        points: (point name, field) pairs; every field has ``at``.
        byte_order: default byte order of the frame's fields.
    """

    def __init__(self, points: Sequence[tuple[str, FieldSpec]], byte_order: ByteOrder = "big") -> None:
        self._items: dict[str, tuple[struct.Struct, int, int, int, str]] = {}
        for name, spec in points:
            if spec.at is None:
                raise ValueError(f"point {name!r} has no byte offset 'at'")
            order = ">" if (spec.byte_order or byte_order) == "big" else "<"
            kind = spec.value_type
            shift, mask = (spec.bits[0], (1 << spec.bits[1]) - 1) if spec.bits is not None else (0, 0)
            self._items[name] = (struct.Struct(order + BINARY_TYPES[kind]), spec.at, shift, mask, kind)

    @property
    def size(self) -> int:
        """The shortest frame that holds every field."""
        return max((at + st.size for st, at, _s, _m, _k in self._items.values()), default=0)

    def encode(self, values: dict[str, Any], template: bytes | None = None) -> bytes:
        """A frame holding ``values`` (point name → raw value); bytes no field names come from ``template``.

        Raises:
            EncodeError: an unknown point, or a value its field cannot hold.
        """
        frame = bytearray(template or b"")
        if len(frame) < self.size:
            frame.extend(bytes(self.size - len(frame)))
        for name, value in values.items():
            item = self._items.get(name)
            if item is None:
                raise EncodeError(f"no field for point {name!r}")
            st, at, shift, mask, kind = item
            try:
                if mask:
                    if isinstance(value, float) or not 0 <= int(value) <= mask:
                        raise EncodeError(f"{name}: {value!r} does not fit {mask.bit_length()} bit(s)")
                    word = st.unpack_from(frame, at)[0]
                    value = (word & ~(mask << shift)) | (int(value) << shift)
                elif kind in _INT_TYPES and (isinstance(value, float) or isinstance(value, bool)):
                    raise EncodeError(f"{name}: {kind} takes an integer, not {value!r}")
                elif kind == "bool" and not isinstance(value, bool):
                    raise EncodeError(f"{name}: bool takes true or false, not {value!r}")
                st.pack_into(frame, at, value)
            except (struct.error, OverflowError, TypeError) as exc:
                raise EncodeError(f"{name}: {value!r} does not fit {kind}: {exc}") from exc
        return bytes(frame)


# --- text -------------------------------------------------------------------

def nmea_degrees(text: str) -> float:
    """NMEA ``[d]ddmm.mmmm`` → decimal degrees (unsigned)."""
    value = float(text)
    if value < 0:
        raise ValueError("negative NMEA coordinate")
    degrees = int(value // 100)
    minutes = value - degrees * 100
    if minutes >= 60:
        raise ValueError(f"{text!r}: minutes {minutes} out of range")
    return degrees + minutes / 60


def _to_bool(text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (give a map)")


_CONVERT: dict[str, Callable[[str], Any]] = {
    "float": float,
    "int": int,
    "hex": lambda s: int(s, 16),
    "str": str,
    "bool": _to_bool,
    "nmea_coord": nmea_degrees,
}


# (point, group, converter, map, hemisphere group, (status group, invalid texts)..., error when invalid)
_TextItem = tuple[str, str, Callable[[str], Any], dict[str, Any] | None, str | None,
                  tuple[tuple[str, frozenset[str]], ...], PointError]


class TextDecoder:
    """Decodes text lines with regular expressions of named groups.

    The first pattern that matches (``re.search``: anchor with ``^`` when
    needed) decodes the line; only the points whose group belongs to that
    pattern get a value, so one profile can read several sentence types
    (NMEA GGA and RMC) that share point names. An empty group is ``None``
    (the core reports it as ``no_value``); text that does not convert is a
    ``decode_error``; a value whose ``invalid_when`` status group holds one
    of the listed texts is a ``PointError`` with the point's ``invalid_reason``
    (``no_fix``), whatever the value field holds.

    Args:
        patterns: regular expressions, tried in order.
        points: (point name, field) pairs; every field has ``group``.
    """

    def __init__(self, patterns: Sequence[str], points: Sequence[tuple[str, FieldSpec]]) -> None:
        self._patterns: list[tuple[re.Pattern[str], list[_TextItem]]] = []
        for pattern in patterns:
            rx = re.compile(pattern)
            items = []
            for name, spec in points:
                if spec.group is None:
                    raise ValueError(f"point {name!r} has no pattern group")
                if spec.group in rx.groupindex:
                    # only the status groups this pattern has: GGA has no RMC status and vice versa
                    invalid = tuple((g, frozenset(v.strip() for v in texts))
                                    for g, texts in (spec.invalid_when or {}).items() if g in rx.groupindex)
                    items.append((name, spec.group, _CONVERT[spec.value_type], spec.map, spec.hemisphere,
                                  invalid, PointError(spec.invalid_reason)))
            self._patterns.append((rx, items))

    def decode(self, line: str) -> dict[str, Any] | None:
        """Raw values of one line, or ``None`` when no pattern matches it."""
        for rx, items in self._patterns:
            m = rx.search(line)
            if m is None:
                continue
            out: dict[str, Any] = {}
            for name, group, convert, mapping, hemisphere, invalid, invalid_error in items:
                raw = m.group(group)
                if raw is None:  # the group sits in an alternative that did not match
                    continue
                raw = raw.strip()
                if any((m.group(g) or "").strip() in texts for g, texts in invalid):
                    out[name] = invalid_error
                    continue
                if not raw:
                    out[name] = None
                    continue
                try:
                    if mapping is not None:
                        out[name] = mapping[raw]
                        continue
                    value = convert(raw)
                    if hemisphere is not None:
                        side = (m.group(hemisphere) or "").strip().upper()
                        if side not in ("N", "S", "E", "W"):
                            raise ValueError(f"hemisphere {side!r}")
                        if side in ("S", "W"):
                            value = -value
                    out[name] = value
                except (ValueError, KeyError, IndexError):
                    out[name] = PointError("decode_error")
            return out
        return None

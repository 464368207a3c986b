"""Framing: cut a byte stream into frames, resynchronizing after garbage.

A profile's ``frame:`` section (``FrameSpec``) describes one of three
framings: text lines (``line``), binary frames of a fixed length
(``fixed``) or binary frames whose length is in a header field
(``length_prefixed``), each with optional header/footer bytes and checksum.
``make_framer`` turns it into an incremental framer: ``feed(bytes)`` returns
the complete, verified frames found so far and keeps at most one partial
frame, so memory stays bounded whatever arrives. Garbage bytes, bad
checksums and malformed frames are counted in ``stats``, never raised.
Pure: no I/O, no pyserial; the CoAP driver shares these models.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ..profile import Model
from ..validation import did_you_mean
from .checksums import CHECKSUMS, nmea

_HEX_PREFIX = re.compile(r"0x", re.IGNORECASE)
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "0": "\0", "\\": "\\", "'": "'", '"': '"',
                   "e": "\x1b", "a": "\x07"}


def parse_hex(value: Any) -> bytes:
    """``"AA C0"``, ``"aac0"``, ``"0xAA 0xC0"`` or ``[170, 192]`` → bytes."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, list):
        if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
            raise ValueError("a byte list holds integers 0..255")
        return bytes(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return bytes([value])  # YAML reads a bare `AB`-less `42` as a number
    if not isinstance(value, str):
        raise ValueError("expected hex bytes such as \"AA C0\" or a list of byte values")
    text = _HEX_PREFIX.sub("", value).replace(" ", "").replace(":", "").replace("-", "")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{value!r} is not hex bytes; write e.g. \"AA C0\" (two hex digits per byte)") from None


def parse_text(value: Any) -> bytes:
    r"""Text with backslash escapes (``\r``, ``\n``, ``\t``, ``\xNN``, ``\\``) → bytes (Latin-1)."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("expected text such as \"SEND\\r\" (backslash escapes allowed)")

    def _sub(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc.startswith("x") and len(esc) == 3:
            return chr(int(esc[1:], 16))
        if esc in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[esc]
        raise ValueError(f"unknown escape '\\{esc}' (use \\r \\n \\t \\xNN \\\\)")

    text = _ESCAPE.sub(_sub, value)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("text must be ASCII/Latin-1; write other bytes as \\xNN") from None


def parse_payload(value: Any) -> bytes:
    """Bytes to send: escaped text (``"SEND\\r\\n"``) or ``{hex: "AA B4 ..."}``."""
    if isinstance(value, dict):
        if set(value) != {"hex"}:
            raise ValueError("write bytes as text (\"SEND\\r\") or as {hex: \"AA B4 04\"}")
        return parse_hex(value["hex"])
    return parse_text(value)


HexBytes = Annotated[bytes, BeforeValidator(parse_hex)]
"""Binary bytes written in hex: ``"AA C0"``."""
TextBytes = Annotated[bytes, BeforeValidator(parse_text)]
"""Bytes written as text with escapes: ``"\\r\\n"``."""
Payload = Annotated[bytes, BeforeValidator(parse_payload)]
"""Bytes to send: escaped text or ``{hex: ...}``."""

_LENGTH_TYPES = {"u8": "B", "u16": "H", "u32": "I"}


class ChecksumSpec(Model):
    """Where a binary frame's checksum sits and what it covers.

    Positions count from the frame start (0 = first header byte); negative
    ones count from its end (-1 = last byte).
    """

    type: str = Field(description="algorithm: " + ", ".join(CHECKSUMS))
    over: list[int] | None = Field(
        None, min_length=2, max_length=2,
        description="[start, end) of the bytes covered; default: after the header up to the checksum")
    at: int | None = Field(None, description="position of the checksum; default: just before the footer")
    byte_order: Literal["big", "little"] = Field("big", description="byte order of a multi-byte checksum")

    @field_validator("type")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in CHECKSUMS:
            raise ValueError(f"unknown checksum {v!r}{did_you_mean(v, CHECKSUMS)} "
                             f"(known: {', '.join(CHECKSUMS)})")
        return v


class FrameSpec(Model):
    """How a byte stream is cut into frames (a profile's ``frame:`` section)."""

    kind: Literal["line", "fixed", "length_prefixed"] = Field(
        description="line: text lines; fixed: binary frames of one length; "
                    "length_prefixed: binary frames carrying their length")
    header: HexBytes = Field(b"", description="binary: bytes every frame starts with, in hex (\"42 4D\")")
    footer: HexBytes = Field(b"", description="binary: bytes every frame ends with, in hex")
    length: int | None = Field(None, ge=1, le=65536, description="fixed: total frame length in bytes")
    length_at: int | None = Field(None, ge=0, description="length_prefixed: offset of the length field")
    length_type: Literal["u8", "u16", "u32"] = Field("u16", description="length_prefixed: type of the length field")
    length_byte_order: Literal["big", "little"] = "big"
    length_adjust: int = Field(
        0, description="length_prefixed: total = length_at + size of the length field + value + length_adjust")
    min_length: int = Field(1, ge=1, description="length_prefixed: shortest plausible total frame length")
    max_length: int = Field(256, ge=1, le=65536,
                            description="longest frame (binary) or line (text); longer ones are dropped")
    byte_order: Literal["big", "little"] = Field("big", description="binary: default byte order of fields")
    checksum: ChecksumSpec | None = Field(None, description="binary: {type, over, at, byte_order}; line: nmea")
    terminator: TextBytes = Field(b"\n", description="line: end of a line (escapes allowed); a trailing \\r "
                                                     "is stripped")
    start: TextBytes | None = Field(None, description="line: a line begins at the last occurrence of this "
                                                      "marker (e.g. \"$\"); bytes before it are garbage")
    encoding: Literal["ascii", "latin-1", "utf-8"] = "ascii"
    patterns: list[str] = Field(
        default_factory=list,
        description="line: regular expressions with named groups (?P<name>...), tried in order")

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("checksum"), str):
                data["checksum"] = {"type": data["checksum"]}
            if "pattern" in data:
                if "patterns" in data:
                    raise ValueError("give 'pattern' (one) or 'patterns' (a list), not both")
                data["patterns"] = [data.pop("pattern")]
        return data

    @field_validator("patterns")
    @classmethod
    def _compile(cls, v: list[str]) -> list[str]:
        for i, p in enumerate(v):
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"patterns[{i}] is not a valid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _kind_keys(self) -> FrameSpec:
        if self.kind == "line":
            if not self.patterns:
                raise ValueError("a line frame needs 'pattern' or 'patterns' (regular expressions "
                                 "with named groups)")
            if not self.terminator:
                raise ValueError("terminator must not be empty")
            if self.checksum is not None and self.checksum.type != "nmea":
                raise ValueError(f"line frames verify only the nmea checksum (*hh), not {self.checksum.type!r}")
            return self
        if not self.header:
            raise ValueError(f"a {self.kind} frame needs 'header' bytes to find frame starts")
        if self.patterns:
            raise ValueError("'patterns' apply to line frames")
        if self.kind == "fixed":
            if self.length is None:
                raise ValueError("a fixed frame needs 'length' (total bytes)")
            if self.length < len(self.header) + len(self.footer):
                raise ValueError("length is shorter than header and footer")
            self._check_positions(self.length)
        else:
            if self.length_at is None:
                raise ValueError("a length_prefixed frame needs 'length_at' (offset of the length field)")
            if self.min_length > self.max_length:
                raise ValueError("min_length is above max_length")
        return self

    def _check_positions(self, total: int) -> None:
        c = self.checksum
        if c is None:
            return
        size = CHECKSUMS[c.type].size
        at, (start, end) = self.checksum_layout()
        pos = [at if at >= 0 else total + at, start if start >= 0 else total + start,
               end if end >= 0 else total + end]
        if not (pos[0] >= 0 and pos[0] + size <= total and 0 <= pos[1] <= pos[2] <= total):
            raise ValueError(f"checksum position/range does not fit in a {total}-byte frame")

    def checksum_layout(self) -> tuple[int, tuple[int, int]]:
        """(position of the checksum, [start, end) covered), defaults applied."""
        assert self.checksum is not None
        size = CHECKSUMS[self.checksum.type].size
        at = self.checksum.at if self.checksum.at is not None else -(len(self.footer) + size)
        if self.checksum.over is not None:
            return at, (self.checksum.over[0], self.checksum.over[1])
        return at, (len(self.header), at)

    @property
    def is_text(self) -> bool:
        """True for line framing."""
        return self.kind == "line"


@dataclass(slots=True)
class FramerStats:
    """What a framer saw; counters only grow.

    Attributes:
        frames: complete frames handed out.
        garbage_bytes: bytes skipped while looking for a frame start.
        bad_checksums: frames (or lines) dropped for a wrong or missing checksum.
        bad_frames: frame candidates dropped for a wrong footer or implausible length.
        oversize: lines dropped for exceeding ``max_length``.
    """

    frames: int = 0
    garbage_bytes: int = 0
    bad_checksums: int = 0
    bad_frames: int = 0
    oversize: int = 0


class Framer(Protocol):
    """An incremental framer."""

    stats: FramerStats

    def feed(self, data: bytes) -> list[Any]:
        """Append received bytes; return complete verified frames (bytes, or str for lines)."""
        ...

    def reset(self) -> None:
        """Forget a partial frame (before sending a query)."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes held for a partial frame."""
        ...


def _checker(spec: FrameSpec) -> Callable[[bytes], bool] | None:
    if spec.checksum is None:
        return None
    algo = CHECKSUMS[spec.checksum.type]
    compute, size, order = algo.compute, algo.size, spec.checksum.byte_order
    at, (start, end) = spec.checksum_layout()

    def ok(frame: bytes) -> bool:
        n = len(frame)
        a = at if at >= 0 else n + at
        if a < 0 or a + size > n:
            return False
        return compute(frame[start:end]) == int.from_bytes(frame[a:a + size], order)

    return ok


class BinaryFramer:
    """Fixed-length or length-prefixed binary frames with header, footer, checksum.

    Scans for the header; a candidate whose footer, length or checksum is
    wrong is dropped one byte at a time, so a real frame hiding right after a
    false header (a header byte pattern inside garbage) is still found.
    """

    def __init__(self, spec: FrameSpec) -> None:
        if spec.is_text:
            raise ValueError("BinaryFramer needs a binary frame spec")
        self.header = spec.header
        self.footer = spec.footer
        self.stats = FramerStats()
        self._buf = bytearray()
        self._ok = _checker(spec)
        self._fixed = spec.length
        self.max_length = spec.length if spec.length is not None else spec.max_length
        self._min = spec.min_length
        if spec.length_at is not None:
            st = struct.Struct((">" if spec.length_byte_order == "big" else "<") + _LENGTH_TYPES[spec.length_type])
            self._len_unpack = st.unpack_from
            self._len_end = spec.length_at + st.size
            self._len_at = spec.length_at
            self._len_base = self._len_end + spec.length_adjust

    @property
    def buffered(self) -> int:
        """Bytes held for a partial frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial frame."""
        self._buf.clear()

    def _total(self, buf: bytearray, pos: int, n: int) -> int | None:
        """Total length of the frame starting at ``pos``; None: need more bytes; -1: implausible."""
        if self._fixed is not None:
            return self._fixed
        if n - pos < self._len_end:
            return None
        total: int = self._len_base + self._len_unpack(buf, pos + self._len_at)[0]
        if total < self._min or total > self.max_length or total < self._len_end:
            return -1
        return total

    def feed(self, data: bytes) -> list[bytes]:
        """Append received bytes; return the complete frames that check out."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        stats = self.stats
        header, footer, ok = self.header, self.footer, self._ok
        hlen = len(header)
        n = len(buf)
        pos = 0
        while True:
            i = buf.find(header, pos)
            if i < 0:
                keep = max(pos, n - (hlen - 1))  # the tail may be the start of a header
                stats.garbage_bytes += keep - pos
                pos = keep
                break
            stats.garbage_bytes += i - pos
            pos = i
            total = self._total(buf, pos, n)
            if total is None:
                break
            if total < 0:
                stats.bad_frames += 1
                stats.garbage_bytes += 1
                pos += 1
                continue
            if n - pos < total:
                break
            frame = bytes(buf[pos:pos + total])
            if footer and not frame.endswith(footer):
                stats.bad_frames += 1
                stats.garbage_bytes += 1
                pos += 1
                continue
            if ok is not None and not ok(frame):
                stats.bad_checksums += 1
                stats.garbage_bytes += 1
                pos += 1
                continue
            out.append(frame)
            stats.frames += 1
            pos += total
        if pos:
            del buf[:pos]
        return out


class LineFramer:
    """Text lines ended by a terminator, optionally NMEA-checksummed.

    A line longer than ``max_length`` is dropped whole (also when its end
    arrives later), so a stream without terminators (wrong baud rate) cannot
    grow the buffer.
    """

    def __init__(self, spec: FrameSpec) -> None:
        if not spec.is_text:
            raise ValueError("LineFramer needs a line frame spec")
        self.terminator = spec.terminator
        self.start = spec.start
        self.encoding = spec.encoding
        self.max_length = spec.max_length
        self.nmea = spec.checksum is not None
        self.stats = FramerStats()
        self._buf = bytearray()
        self._skipping = False

    @property
    def buffered(self) -> int:
        """Bytes held for a partial line."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial line."""
        self._buf.clear()
        self._skipping = False

    def feed(self, data: bytes) -> list[str]:
        """Append received bytes; return complete lines (without terminator) that check out."""
        buf = self._buf
        buf += data
        out: list[str] = []
        stats = self.stats
        term = self.terminator
        tlen = len(term)
        limit = self.max_length
        pos = 0
        while True:
            i = buf.find(term, pos)
            if i < 0:
                # keep len(term)-1 extra bytes: a terminator may be arriving in pieces
                if len(buf) - pos > limit + tlen - 1:
                    if not self._skipping:
                        stats.oversize += 1
                    self._skipping = True
                    cut = len(buf) - (tlen - 1)
                    stats.garbage_bytes += cut - pos
                    pos = cut
                break
            raw = bytes(buf[pos:i])
            pos = i + tlen
            if self._skipping:  # the tail of an over-long line
                self._skipping = False
                stats.garbage_bytes += len(raw)
                continue
            if len(raw) > limit:
                stats.oversize += 1
                stats.garbage_bytes += len(raw)
                continue
            if self.start is not None:
                j = raw.rfind(self.start)
                if j < 0:
                    stats.garbage_bytes += len(raw)
                    continue
                stats.garbage_bytes += j
                raw = raw[j:]
            raw = raw.strip(b"\r\n\x00 ")
            if not raw:
                continue
            if self.nmea and not _nmea_ok(raw):
                stats.bad_checksums += 1
                continue
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError:
                stats.garbage_bytes += len(raw)
                continue
            out.append(text)
            stats.frames += 1
        if pos:
            del buf[:pos]
        return out


def _nmea_ok(raw: bytes) -> bool:
    star = raw.rfind(b"*")
    if star < 0 or len(raw) - star != 3:
        return False
    try:
        expected = int(raw[star + 1:], 16)
    except ValueError:
        return False
    return nmea(raw[:star]) == expected


def make_framer(spec: FrameSpec) -> BinaryFramer | LineFramer:
    """A fresh incremental framer for a frame description."""
    return LineFramer(spec) if spec.is_text else BinaryFramer(spec)

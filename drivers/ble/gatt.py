"""The GATT value codec: a characteristic's bytes ↔ a point's value, both ways from the point's ``format``.

Pure (``struct`` only, no bleak): the poll reads with ``unpack_point``, a command's write encodes
with ``pack_point``, and the profile's ``write_problem`` asks ``pack_point`` before any radio
traffic, so a value the format cannot hold is refused before the device is touched.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Protocol

from fieldgate.errors import DriverError
from fieldgate.schema import PointError


class BlePoint(Protocol):
    """What the codec reads of a GATT point (``profile.BlePoint``; named here so profile.py can ask the codec)."""

    @property
    def name(self) -> str: ...
    @property
    def format(self) -> str | None: ...
    @property
    def index(self) -> int: ...
    @property
    def scale(self) -> float: ...
    @property
    def offset(self) -> float: ...

_INT_CODES = "bBhHiIlLqQnN"
_FLOAT_CODES = "efd"


def pack_point(point: BlePoint, value: float | bool) -> bytes:
    """The characteristic's bytes for one point's engineering value: the inverse of ``unpack_point``.

    Numbers are unscaled (``(value - offset) / scale``) and, for integer formats, rounded to the
    nearest step.

    Raises:
        DriverError: reason ``not_supported`` (a format of several values: writing one would need
            the others), or ``encode_error`` (the value does not fit the format).
    """
    fmt = point.format
    assert fmt is not None
    codes = fmt[1:]
    if len(struct.unpack(fmt, bytes(struct.calcsize(fmt)))) != 1:
        raise DriverError(f"{point.name!r}: format {fmt!r} holds several values; a write of one would need "
                          "the others", reason="not_supported")
    code = codes[-1]
    if code == "?":
        if not isinstance(value, bool):
            raise DriverError(f"{point.name!r} takes true or false, not {value!r}", reason="encode_error")
        return struct.pack(fmt, value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DriverError(f"{point.name!r} takes a number, not {value!r}", reason="encode_error")
    raw: float = (value - point.offset) / point.scale
    try:
        if code in _FLOAT_CODES:
            data = struct.pack(fmt, raw)
            if math.isinf(struct.unpack(fmt, data)[0]):  # past its range 'e' packs +-inf (or raises)
                raise OverflowError
            return data
        if code in _INT_CODES:
            return struct.pack(fmt, round(raw))
    except (struct.error, OverflowError):
        raise DriverError(f"{point.name!r}: {value!r} is {raw:g} raw, beyond what format {fmt!r} holds",
                          reason="encode_error") from None
    raise DriverError(f"{point.name!r}: format {fmt!r} cannot be written", reason="not_supported")


#: Relative precision of the float formats (half, single, double): one unit in the last place.
_FLOAT_EPS = {"e": 2.0**-10, "f": 2.0**-23, "d": 2.0**-52}


def resolution(point: BlePoint, value: float) -> float:
    """How far a read-back of ``value`` may be from it after ``pack_point``'s rounding (half a raw step)."""
    code = (point.format or "<?")[-1]
    if code in _INT_CODES:
        return 0.5 * abs(point.scale)
    if code in _FLOAT_EPS:
        return abs(value) * _FLOAT_EPS[code]
    return 0.0


def unpack_point(point: BlePoint, data: bytes) -> Any:
    """One point's raw value from a characteristic's bytes, or ``PointError('decode_error')``."""
    assert point.format is not None
    size = struct.calcsize(point.format)
    if len(data) < size:
        return PointError("decode_error")
    return struct.unpack_from(point.format, data)[point.index]


__all__ = ["pack_point", "resolution", "unpack_point"]

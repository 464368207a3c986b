"""Planning a Modbus write (pure): engineering value → raw value → registers or coil, FC 5/6/15/16.

The inverse of the read path. The core applies ``raw * scale + offset`` to what a read
decodes, so a write takes ``(value - offset) / scale``, rounds it for integer
types, refuses what the type cannot hold, and encodes it with the very
``encode`` that is the read path's ``decode`` inverse (decode.py: one codec,
tested both ways), in the point's byte and word order.

``write.py`` sends what this plans. Pure and apart from it so that the profile
model can ask what a point can be written with (``write_problem``) without
importing the bus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from .decode import encode


class PointLike(Protocol):
    """What planning reads of a point (``profile.ModbusPoint``; a protocol: the profile imports this module)."""

    @property
    def name(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def address(self) -> int: ...
    @property
    def scale(self) -> float: ...
    @property
    def offset(self) -> float: ...
    @property
    def write_function(self) -> int | None: ...
    @property
    def scale_factor_point(self) -> str | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def width(self) -> int: ...


class ProfileLike(Protocol):
    """What planning reads of a profile: the byte and word order of a point."""

    def order_of(self, point: Any) -> tuple[str, str]: ...  # Any: the profile's own point class

#: Integer types and the raw values they hold.
INT_LIMITS: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}
FLOAT_MAX = {"float32": 3.4028234663852886e38, "float64": math.inf}
#: Relative resolution of the float types (half a unit in the last place).
FLOAT_EPS = {"float32": 2.0**-24, "float64": 2.0**-53}
WRITABLE_TYPES = (*INT_LIMITS, *FLOAT_MAX, "bool")


class WriteRefused(ValueError):
    """The value cannot be written to the point (``reason``: a result reason word)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One Modbus write: function code, first address and what goes there."""

    point: str
    function: int
    address: int
    values: tuple[int, ...] | tuple[bool, ...]


def default_function(point: PointLike) -> int:
    """FC 5 for a coil, FC 6 for a one-register value, FC 16 for wider ones (unless the point names one)."""
    if point.write_function is not None:
        return point.write_function
    if point.table == "coil":
        return 5
    return 6 if point.width == 1 else 16


def raw_value(point: PointLike, value: float | int | bool) -> int | float | bool:
    """The raw register value that the read path turns back into ``value``.

    Raises:
        WriteRefused: ``bad_value`` (a number for a coil, a boolean for a register) or
            ``out_of_range`` (the type cannot hold it after the inverse scaling).
    """
    kind = point.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise WriteRefused("bad_value", f"{point.name} is a coil: write true or false")
        return value
    if isinstance(value, bool):
        raise WriteRefused("bad_value", f"{point.name} is a {kind}: write a number")
    raw = (float(value) - point.offset) / point.scale
    if kind in INT_LIMITS:
        lo, hi = INT_LIMITS[kind]
        if not math.isfinite(raw) or not lo <= round(raw) <= hi:
            raise WriteRefused("out_of_range", f"{point.name}: raw {raw:g} does not fit {kind}")
        return round(raw)
    if kind in FLOAT_MAX:
        if not math.isfinite(raw) or abs(raw) > FLOAT_MAX[kind]:
            raise WriteRefused("out_of_range", f"{point.name}: raw {raw:g} does not fit {kind}")
        return raw
    raise WriteRefused("not_supported", f"{point.name}: type {kind} cannot be written")


def plan_write(profile: ProfileLike, point: PointLike, value: float | int | bool) -> WriteRequest:
    """The request that writes ``value`` to ``point``.

    Raises:
        WriteRefused: the value or the point cannot be written (see ``raw_value``).
    """
    raw = raw_value(point, value)
    fc = default_function(point)
    if point.table == "coil":
        return WriteRequest(point.name, fc, point.address, (bool(raw),))
    byte_order, word_order = profile.order_of(point)
    return WriteRequest(point.name, fc, point.address, tuple(encode(raw, point.kind, byte_order, word_order)))


def write_problem(point: PointLike, value: object) -> str | None:
    """What the Modbus point adds to the core's check of a written value (None: it can be written)."""
    if point.kind not in WRITABLE_TYPES or point.scale_factor_point is not None:
        return "not_supported"
    if not isinstance(value, bool | int | float):
        return "bad_value"
    try:
        raw_value(point, value)
    except WriteRefused as exc:
        return exc.reason
    return None


def readback_tolerance(point: PointLike, value: float) -> float:
    """How far the read-back may lie from the written value: half a raw step of integer types (the
    rounding of the inverse scaling), the float type's own resolution for floats."""
    if point.kind in INT_LIMITS:
        return abs(point.scale) / 2 + 1e-9 * max(1.0, abs(value))
    return FLOAT_EPS.get(point.kind, 0.0) * max(abs(value), abs(point.offset), 1e-30) * 2 + 1e-12


__all__ = ["INT_LIMITS", "WRITABLE_TYPES", "WriteRefused", "WriteRequest", "default_function", "plan_write",
           "raw_value", "readback_tolerance", "write_problem"]

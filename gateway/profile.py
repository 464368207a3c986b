"""Device profiles: what a device model exposes, in YAML.

A profile lives in ``profiles/<vendor>/<model>.yaml`` and names the driver it
is written for. Its points share the fields here (name, unit, scaling, valid
range, report-by-exception); each driver extends ``BasePoint`` with its own
addressing and raw type, and ``BaseProfile`` with its own ``points`` list.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .units import Duration, MetricName, unit_warning

SCHEMA_VERSION = 1


class Model(BaseModel):
    """Base of every config/profile model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BasePoint(Model):
    """One value a device exposes.

    The normalized value is ``raw * scale + offset`` for numbers; booleans and
    strings pass through unchanged.
    """

    name: MetricName = Field(description="metric name in the reading message")
    unit: str | None = Field(None, description="SenML unit symbol, e.g. V, kWh, Cel, %RH, ug/m3")
    description: str | None = None
    scale: float = Field(1.0, description="multiplier applied to the raw value")
    offset: float = Field(0.0, description="added after scaling")
    decimals: int | None = Field(None, ge=0, le=12, description="round the normalized value")
    range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = Field(
        None, description="[min, max] of plausible values; outside: quality bad, reason out_of_range"
    )
    deadband: float | None = Field(
        None, ge=0, description="report only when the value moved by more than this (report by exception)"
    )
    heartbeat: Duration | None = Field(
        None, description="with deadband: report at least this often even without change"
    )

    writable: bool = Field(False, description="commands (fieldgate.command/1 write) may set this point")
    write_range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = Field(
        None, description="[min, max] of the engineering values a command may write; default: range"
    )

    @field_validator("write_range")
    @classmethod
    def _write_range_ordered(cls, v: list[float] | None) -> list[float] | None:
        # (a reversed `range` is reported by point_field_checks, with every other problem at once)
        if v is not None and v[0] > v[1]:
            raise ValueError(f"write_range minimum {v[0]} is above its maximum {v[1]}")
        return v


    @property
    def write_limits(self) -> tuple[float, float] | None:
        """The ``[min, max]`` a command may write (``write_range``, else ``range``), or None for no bound."""
        r = self.write_range or self.range
        return (r[0], r[1]) if r is not None else None

    def write_problem(self, value: object) -> str | None:
        """Why a command may not write ``value`` to this point, as a reason word; None when it may.

        Reasons: ``read_only``, ``bad_value`` (not a finite number or a boolean), ``out_of_range``.
        Drivers extend this with what their raw type can hold (``not_supported`` for a type they
        cannot write); it runs before any device I/O.
        """
        if not self.writable:
            return "read_only"
        if isinstance(value, bool):
            return None
        if not isinstance(value, int | float) or not math.isfinite(value):
            return "bad_value"
        limits = self.write_limits
        if limits is not None and not limits[0] <= value <= limits[1]:
            return "out_of_range"
        return None

    def readback_tolerance(self, value: float) -> float:
        """How far a value read back may lie from ``value`` written and still be equal: the resolution.

        The base knows only the rounding of ``decimals``; drivers add their raw type's step.
        """
        tol = 1e-9 * max(1.0, abs(value))
        if self.decimals is not None:
            tol += 0.5 * 10.0 ** -self.decimals
        return tol


class DerivedPoint(Model):
    """A point computed from others of the same reading (``expr``, see ``fieldgate.expr``)."""

    name: MetricName = Field(description="metric name in the reading message")
    expr: str = Field(description="arithmetic over point names: + - * /, parentheses, abs min max sqrt")
    unit: str | None = Field(None, description="SenML unit symbol")
    description: str | None = None
    decimals: int | None = Field(None, ge=0, le=12, description="round the value")
    range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = Field(
        None, description="[min, max] of plausible values; outside: quality bad, reason out_of_range")


class BaseProfile(Model):
    """A device model's description, shared by all drivers."""

    schema_version: Literal[1] = Field(description="profile format version; this release reads 1")
    driver: str = Field(description="driver this profile is written for")
    vendor: str
    model: str
    description: str | None = None
    datasheet: str | None = Field(None, description="document and table the addresses come from")
    points: list[BasePoint] = Field(min_length=1)
    derived: list[DerivedPoint] = Field(
        default_factory=list, description="points computed from the others of each reading (sum of phases, ...)")
    test_vectors: list[dict[str, Any]] | None = Field(
        None, description="datasheet examples: raw input and expected values, used by tests"
    )

    def checks(self) -> list[tuple[tuple[str | int, ...], str, str]]:
        """Semantic checks beyond the schema: ``(key path, message, severity)``.

        Drivers extend this (e.g. Modbus warns when addresses look 1-based).
        """
        out: list[tuple[tuple[str | int, ...], str, str]] = []
        first: dict[str, int] = {}
        for i, point in enumerate(self.points):
            if point.name in first:
                out.append(((("points", i, "name")), f"point name {point.name!r} is already used by "
                            f"points[{first[point.name]}]", "error"))
            first.setdefault(point.name, i)
            out.extend(point_field_checks(i, point.range, point.unit))
            if point.write_range is not None and not point.writable:
                out.append((("points", i, "write_range"), "write_range has no effect without writable: true",
                            "warning"))
            if point.heartbeat is not None and point.deadband is None:
                out.append((("points", i, "heartbeat"), "heartbeat has no effect without deadband",
                            "warning"))
        out.extend(self._derived_checks(set(first)))
        return out

    def _derived_checks(self, points: set[str]) -> list[tuple[tuple[str | int, ...], str, str]]:
        """Each derived point reads only points and derived points defined before it."""
        from .expr import ExpressionError, parse

        out: list[tuple[tuple[str | int, ...], str, str]] = []
        known = set(points)
        for i, d in enumerate(self.derived):
            if d.name in known:
                what = "a point" if d.name in points else "a derived point"
                out.append((("derived", i, "name"), f"{d.name!r} is already {what} of this profile", "error"))
            try:
                parse(d.expr, frozenset(known))
            except ExpressionError as exc:
                out.append((("derived", i, "expr"), str(exc), "error"))
            out.extend(((("derived", *path[1:]), message, severity)
                        for path, message, severity in point_field_checks(i, d.range, d.unit)))
            known.add(d.name)
        return out


Check = tuple[tuple[str | int, ...], str, str]


def point_field_checks(i: int, value_range: Any, unit: Any) -> list[Check]:
    """Checks of a point's shared fields that need no validated model: ``(key path, message, severity)``.

    A reversed range is checked here, not by a field validator: a schema error stops validation
    before the semantic checks and would hide every other problem, so that errors arrived in
    stages. The same checks run on the raw points when the schema fails (``raw_point_checks``).
    """
    out: list[Check] = []
    if (isinstance(value_range, list | tuple) and len(value_range) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value_range)
            and value_range[0] > value_range[1]):
        out.append((("points", i, "range"), f"range minimum {float(value_range[0])} is above its maximum "
                    f"{float(value_range[1])}", "error"))
    if isinstance(unit, str) and (problem := unit_warning(unit)) is not None:
        out.append((("points", i, "unit"), problem, "warning"))
    return out


def raw_point_checks(points: Any) -> list[Check]:
    """``point_field_checks`` of unvalidated points, for a profile whose schema failed."""
    if not isinstance(points, list):
        return []
    return [c for i, p in enumerate(points) if isinstance(p, dict)
            for c in point_field_checks(i, p.get("range"), p.get("unit"))]

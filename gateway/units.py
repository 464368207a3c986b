"""Field types shared by configs and profiles: durations, sizes, ids, units.

Technicians write ``10s``, ``500ms``, ``30d``, ``512MB``; the models hold
seconds and bytes. Units are SenML symbols (RFC 8428 and the RFC 8798
secondary registry), which the wire contract requires.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "kB": 1000, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
               "GB": 1000**3, "GiB": 1024**3}


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 500ms, 5m, 2h or 30d")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration; write e.g. 10s, 500ms, 5m, 2h or 30d")


def _size(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MB or 2GiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ValueError(f"{value!r} is not a size; write e.g. 512MB, 64MiB or 2GB")


Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
"""Seconds; accepts numbers (seconds) or strings with ms/s/m/h/d."""

PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]

ByteSize = Annotated[int, BeforeValidator(_size), Field(gt=0)]
"""Bytes; accepts integers or strings with B/kB/MB/GB/KiB/MiB/GiB."""

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Identifier = Annotated[str, Field(pattern=ID_PATTERN)]
"""A gateway or device id as the contract allows in topics: no /, + or #."""

METRIC_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MetricName = Annotated[str, Field(pattern=METRIC_PATTERN)]

# SenML units: RFC 8428 section 12.1 and the secondary units of RFC 8798.
SENML_UNITS: frozenset[str] = frozenset([
    "m", "kg", "g", "s", "A", "K", "cd", "mol", "Hz", "rad", "sr", "N", "Pa", "J", "W", "C", "V", "F", "Ohm",
    "S", "Wb", "T", "H", "Cel", "lm", "lx", "Bq", "Gy", "Sv", "kat", "m2", "m3", "l", "m/s", "m/s2", "m3/s",
    "l/s", "W/m2", "cd/m2", "bit", "bit/s", "lat", "lon", "pH", "dB", "dBW", "Bspl", "count", "/", "%", "%RH",
    "%EL", "EL", "1/s", "1/min", "beat/min", "beats", "S/m", "B", "VA", "VAs", "var", "vars", "J/m", "kg/m3",
    "deg", "ms", "min", "h", "MHz", "kW", "kVA", "kvar", "Ah", "Wh", "kWh", "varh", "kvarh", "kVAh", "Wh/km",
    "KiB", "GB", "Mbit/s", "B/s", "MB/s", "mV", "mA", "dBm", "ug/m3", "mm/h", "m/h", "ppm", "/100", "/1000",
    "hPa", "mm", "cm", "km", "km/h",
])


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


RelPath = Annotated[Path, AfterValidator(_relative_to_config)]
"""A path; relative paths are taken from the configuration file's folder."""

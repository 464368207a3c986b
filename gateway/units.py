"""Field types shared by configs and profiles: durations, sizes, ids, units.

Technicians write ``10s``, ``500ms``, ``30d``, ``512MB``; the models hold
seconds and bytes. Units are SenML symbols (RFC 8428 and the RFC 8798
secondary registry), which the wire contract requires; ``unit_warning``
tells a technician who wrote ``volt`` or ``degC`` which symbol to use.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "kB": 1000, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
               "GB": 1000**3, "GiB": 1024**3}


def _finite(seconds: float, value: Any) -> float:
    # `.inf`, `.nan` and 400-digit numbers parse as floats; an infinite poll interval or timeout
    # would pass `ge=0` and then hang or overflow whatever schedules with it.
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration; write e.g. 10s, 500ms, 5m, 2h or 30d")
    return seconds


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 500ms, 5m, 2h or 30d")
    if isinstance(value, int | float):
        return _finite(float(value), value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return _finite(float(m.group(1)) * _DURATION_UNITS[m.group(2)], value)
    raise ValueError(f"{value!r} is not a duration; write e.g. 10s, 500ms, 5m, 2h or 30d")


def _size(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MB or 2GiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            size = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
            if not math.isfinite(size):  # a 400-digit number: int(inf) would raise OverflowError
                raise ValueError(f"{value!r} is too large a size; write e.g. 512MB, 64MiB or 2GB")
            return int(size)
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


# Spellings seen in datasheets and hand-written profiles → the SenML symbol
# meant. Keys are in the form _alias_key() gives (case-folded, no spaces,
# micro sign as 'u', superscripts as digits). A table comes first because
# spelling distance misleads on short symbols: 'v' is one edit from 'Sv',
# 'degC' one from 'deg', and 'mg/m3' one from 'ug/m3' (a factor of 1000).
UNIT_ALIASES: dict[str, str] = {
    # electrical
    "v": "V", "volt": "V", "volts": "V", "vac": "V", "vdc": "V", "vrms": "V",
    "mv": "mV", "millivolt": "mV", "millivolts": "mV",
    "a": "A", "amp": "A", "amps": "A", "ampere": "A", "amperes": "A", "arms": "A",
    "ma": "mA", "milliamp": "mA", "milliamps": "mA",
    "w": "W", "watt": "W", "watts": "W", "kw": "kW", "kilowatt": "kW", "kilowatts": "kW",
    "va": "VA", "kva": "kVA", "var": "var", "kvar": "kvar", "varh": "varh", "kvarh": "kvarh",
    "kvah": "kVAh", "wh": "Wh", "kwh": "kWh", "ah": "Ah",
    "ohm": "Ohm", "ohms": "Ohm", "\u03c9": "Ohm", "\u2126": "Ohm",
    "hz": "Hz", "hertz": "Hz", "mhz": "MHz",
    # temperature (degrees Fahrenheit have no symbol: see _NO_SYMBOL)
    "cel": "Cel", "c": "Cel", "degc": "Cel", "deg.c": "Cel", "\u00b0c": "Cel", "\u2103": "Cel", "'c": "Cel",
    "celsius": "Cel", "degreesc": "Cel", "degreescelsius": "Cel", "k": "K", "kelvin": "K",
    # humidity, air quality, pressure
    "%rh": "%RH", "rh": "%RH", "rh%": "%RH", "ug/m3": "ug/m3", "ug/m^3": "ug/m3",
    "ppm": "ppm", "hpa": "hPa", "mbar": "hPa", "millibar": "hPa", "pa": "Pa", "pascal": "Pa",
    # angles, light, sound, radio
    "deg": "deg", "\u00b0": "deg", "degree": "deg", "degrees": "deg",
    "lux": "lx", "db": "dB", "dbm": "dBm", "dbw": "dBW",
    # time, rate, speed, volume, ratios
    "sec": "s", "secs": "s", "second": "s", "seconds": "s", "msec": "ms", "minute": "min", "minutes": "min",
    "hour": "h", "hours": "h", "hr": "h", "rpm": "1/min", "kmh": "km/h", "kph": "km/h", "km/hr": "km/h",
    "m^3": "m3", "m^2": "m2", "liter": "l", "litre": "l", "liters": "l", "litres": "l", "mm/hr": "mm/h",
    "percent": "%", "pct": "%", "counts": "count",
}

# Spellings of quantities SenML has no symbol for, and what to write instead.
_FAHRENHEIT = "degrees Fahrenheit have no SenML symbol: publish Cel with scale: 0.5555556, offset: -17.7777778"
_NO_SYMBOL: dict[str, str] = {key: _FAHRENHEIT for key in ("f", "degf", "\u00b0f", "fahrenheit", "\u2109")}

# Valid symbols that are nearly always written meaning another one.
_CONFUSABLE: dict[str, tuple[str, str]] = {
    "C": ("Cel", "'C' is the SenML symbol for coulomb; for degrees Celsius write 'Cel'"),
}

_FOLDED: dict[str, str] = {u.casefold(): u for u in SENML_UNITS if u.casefold() not in ("h", "s")}


def _alias_key(text: str) -> str:
    """Case-folded, without spaces, micro signs as 'u', superscript 2 and 3 as digits."""
    key = "".join(text.split()).casefold()
    for old, new in (("\u00b5", "u"), ("\u03bc", "u"), ("\u00b3", "3"), ("\u00b2", "2")):
        key = key.replace(old, new)
    return key


def _one_edit(a: str, b: str) -> bool:
    """True if one insertion, deletion or swap of neighbours turns ``a`` into ``b``.

    Substitutions do not count: on unit symbols they change the quantity or
    its prefix (mg/ug, kW/MW) more often than they fix a typo.
    """
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    if abs(len(a) - len(b)) != 1:
        return False
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def suggest_unit(text: str) -> str | None:
    """The SenML symbol a technician most likely meant by ``text``, or None.

    In order: the alias table, a case-insensitive match, then (for words of
    four characters or more) a single unambiguous insertion, deletion or
    swap. No suggestion is better than a wrong one.
    """
    if text in _CONFUSABLE:
        return _CONFUSABLE[text][0]
    key = _alias_key(text)
    if key in _NO_SYMBOL:
        return None
    if key in UNIT_ALIASES:
        return UNIT_ALIASES[key]
    if key in _FOLDED:
        return _FOLDED[key]
    if len(key) < 4:
        return None
    near = {u for k, u in _FOLDED.items() if _one_edit(key, k)}
    near |= {u for k, u in UNIT_ALIASES.items() if len(k) >= 3 and _one_edit(key, k)}
    return near.pop() if len(near) == 1 else None


def unit_warning(unit: str) -> str | None:
    """What is wrong with a profile's unit, with the symbol to use; None for a proper SenML symbol."""
    if unit in _CONFUSABLE:
        return _CONFUSABLE[unit][1]
    if unit in SENML_UNITS:
        return None
    message = f"{unit!r} is not a SenML unit symbol"
    advice = _NO_SYMBOL.get(_alias_key(unit))
    if advice is not None:
        return f"{message}: {advice}"
    meant = suggest_unit(unit)
    return f"{message}, did you mean {meant!r}?" if meant else message


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


RelPath = Annotated[Path, AfterValidator(_relative_to_config)]
"""A path; relative paths are taken from the configuration file's folder."""

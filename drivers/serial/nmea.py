"""NMEA 0183 rules the generic line decoder cannot express: the fix time and signed directions.

The profile's patterns and points decode each field of a sentence (see
``fieldgate.codecs.fields.TextDecoder``); two NMEA conventions need more than
one field at once, and a profile asks for them in its ``nmea:`` section:

* ``fix_time``: RMC carries the fix's date (ddmmyy) and time (hhmmss.ss), so
  a reading can carry the time the position was measured instead of the
  time the line arrived: a receiver that buffers, or a serial server that
  batches, otherwise shifts every fix by its delay. Only a valid fix is
  trusted; a receiver without one often sends the time of its own clock.
* ``signed_by``: a magnitude whose sign is a separate E/W field (RMC's
  magnetic variation); east is positive, as in the World Magnetic Model.
* ``optional``: fields a sentence leaves empty when they do not apply (no
  DGPS correction in use, no variation computed, a mode field of an older
  NMEA version). Empty, they are left out of the reading instead of being
  published every second as ``no_value``, which would hide a real gap.
"""

from __future__ import annotations

import calendar

from fieldgate.profile import Model
from pydantic import Field

#: Two-digit NMEA years below this are 20yy, the rest 19yy (receivers made before 1980 do not exist).
_PIVOT = 80


class FixTime(Model):
    """Which points hold the fix's date and time, and the validity flag that must be true."""

    date: str = Field(description="point holding the date as ddmmyy (RMC field 9)")
    time: str = Field(description="point holding the UTC time as hhmmss[.ss]")
    valid: str | None = Field(None, description="bool point that must be true for the time to be used (RMC status)")


class NmeaRules(Model):
    """A profile's ``nmea:`` section."""

    fix_time: FixTime | None = Field(None, description="stamp readings with the fix time instead of the receive time")
    signed_by: dict[str, str] = Field(
        default_factory=dict,
        description="point -> point holding E or W: W makes the value negative (RMC magnetic variation)")

    optional: list[str] = Field(
        default_factory=list, description="points left out of the reading when their field is empty")

    def points(self) -> list[str]:
        """Every point name the rules refer to (the profile checks they exist)."""
        names = [*self.signed_by, *self.signed_by.values(), *self.optional]
        if self.fix_time is not None:
            names += [self.fix_time.date, self.fix_time.time]
            if self.fix_time.valid:
                names.append(self.fix_time.valid)
        return names


def fix_timestamp(date: str, hms: str) -> float | None:
    """Seconds since the epoch of an NMEA date (ddmmyy) and UTC time (hhmmss[.sss]); None if malformed."""
    if len(date) != 6 or not date.isdigit() or len(hms) < 6 or not hms[:6].isdigit():
        return None
    frac = 0.0
    if len(hms) > 6:
        if hms[6] != "." or not hms[7:].isdigit():
            return None
        frac = float(hms[6:]) if len(hms) > 7 else 0.0
    day, month, yy = int(date[:2]), int(date[2:4]), int(date[4:])
    hour, minute, second = int(hms[:2]), int(hms[2:4]), int(hms[4:6])
    year = 2000 + yy if yy < _PIVOT else 1900 + yy
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        return None
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second
        return None
    return calendar.timegm((year, month, day, hour, minute, second)) + frac


def apply(rules: NmeaRules, values: dict[str, object]) -> float | None:
    """Apply the rules to one frame's values in place; return its fix time, or None when it has none."""
    for point, side_point in rules.signed_by.items():
        value = values.get(point)
        if isinstance(value, int | float) and not isinstance(value, bool):
            side = values.get(side_point)
            if side == "W":
                values[point] = -value
            elif side != "E":
                values[point] = None  # a magnitude without its direction means nothing
    for point in rules.optional:
        if point in values and values[point] is None:
            del values[point]
    ft = rules.fix_time
    if ft is None:
        return None
    date, hms = values.get(ft.date), values.get(ft.time)
    if not isinstance(date, str) or not isinstance(hms, str):
        return None
    if ft.valid is not None and values.get(ft.valid) is not True:
        return None
    return fix_timestamp(date, hms)

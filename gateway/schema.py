"""What drivers hand to the core, and what the core hands to the uplink.

Drivers produce ``RawReading``s: raw point values (before scaling) keyed by
point name, or a ``PointError`` where one point failed. The normalizer turns a
raw reading into the contract's reading message (``fieldgate.reading/1``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

READING_SCHEMA = "fieldgate.reading/1"
BATCH_SCHEMA = "fieldgate.batch/1"


class Quality(StrEnum):
    """Reading quality as the contract defines it."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class PointError:
    """A point that could not be read in an otherwise working poll.

    Attributes:
        reason: a short machine word (``timeout``, ``exception:02``, ``decode_error``).
        quality: ``bad`` unless the driver knows the value is merely doubtful.
    """

    reason: str
    quality: Quality = Quality.BAD


@dataclass(slots=True)
class RawReading:
    """Raw values of one poll (or one pushed report) of one device.

    Attributes:
        values: point name → raw value (number, bool, str) or ``PointError``.
        ts: measurement time in seconds since the epoch; defaults to now.
        quality: per-point quality overrides for values the driver doubts
            (e.g. a sensor's own status flag), point name → (quality, reason).
    """

    values: dict[str, Any]
    ts: float = field(default_factory=time.time)
    quality: dict[str, tuple[Quality, str]] | None = None


#: The plausible window of a measurement time (see ``plausible_time``): from 2000-01-01T00:00:00Z ...
TIME_MIN = 946_684_800.0
#: ... to one day past the gateway clock (clock skew and time zones set wrong on a device fit well inside).
TIME_FUTURE_SLACK = 86_400.0
#: The last instant the contract's format (a four-digit year, milliseconds) can write: 9999-12-31T23:59:59.999Z.
TIME_MAX = 253_402_300_799.999
#: The reason a reading's metrics carry when its device-supplied time was outside the window.
IMPLAUSIBLE_TIME = "implausible_time"


def plausible_time(ts: float, now: float | None = None) -> bool:
    """Whether a measurement time from a device can be believed.

    Plausible is from 2000-01-01 to one day after the gateway clock (``now``,
    default the current time). A gateway clock that reads before 2000 is
    plainly unset (a Raspberry Pi without RTC before NTP), so it cannot judge
    the future: then only the fixed bounds apply, up to ``TIME_MAX``. NaN and
    infinities are never plausible. Drivers that take times from devices
    replace an implausible one with the receive time and mark the values
    ``uncertain`` with reason ``IMPLAUSIBLE_TIME`` (the contract's quality
    rules), rather than publish a time no consumer can use.
    """
    if not TIME_MIN <= ts <= TIME_MAX:  # also False for NaN
        return False
    now = time.time() if now is None else now
    return now < TIME_MIN or ts <= now + TIME_FUTURE_SLACK


def iso_ms(ts: float) -> str:
    """UTC RFC 3339 with milliseconds and ``Z``, as the contract requires; never raises.

    Times the format cannot hold are clamped: past ``TIME_MAX`` (a year beyond 9999,
    +inf) to ``TIME_MAX``, before the epoch (and NaN) to the epoch. ``gmtime`` would
    raise OverflowError past year 2**31 and write years of five digits and more
    below that, and ``int()`` of a non-finite float raises; every message and status
    page that formats a time goes through here, so a device's nonsense must not
    reach either. Clamping is the last line, not the policy: drivers vet device
    times with ``plausible_time`` first.
    """
    if not 0.0 <= ts <= TIME_MAX:  # the common case costs one chained comparison
        ts = TIME_MAX if ts > TIME_MAX else 0.0  # NaN compares False both ways: the epoch
    ms = int(ts * 1000)
    secs, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:03d}Z"

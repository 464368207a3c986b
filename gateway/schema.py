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


def iso_ms(ts: float) -> str:
    """UTC RFC 3339 with milliseconds and ``Z``, as the contract requires."""
    ms = int(ts * 1000)
    secs, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:03d}Z"

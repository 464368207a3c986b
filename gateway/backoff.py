"""Retry pacing: the one backoff formula, capped exponential with full jitter.

Devices (app.py) and the broker connection (uplink.py) both retry with it, so a
site full of gateways that lost the same broker, or a bus full of devices that
lost power together, spreads its retries instead of hammering in step.
"""

from __future__ import annotations

import random

# 2**64 steps is beyond any cap; bounding the exponent keeps a device that has
# been failing for days (thousands of failures) from overflowing the float.
_MAX_EXPONENT = 64


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random, floor: float | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures.

    The step doubles from ``base`` up to ``cap``; the delay is drawn uniformly
    between ``floor`` (default ``base``) and the step (full jitter). The floor
    keeps a dead peer from being retried at once; the jitter spreads retries.

    Args:
        failures: consecutive failures so far (1 for the first).
        base: the first step, in seconds.
        cap: the largest step, in seconds.
        rng: the random source (tests seed their own).
        floor: the shortest delay; never above the step's upper end.
    """
    low = base if floor is None else floor
    step = min(cap, base * 2.0 ** min(max(0, failures - 1), _MAX_EXPONENT))
    return rng.uniform(low, max(low, step))


__all__ = ["backoff_delay"]

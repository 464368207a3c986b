"""The one rate limiter: a token bucket, pure and clock-injected.

CoAP pushes per source and the uplink's replay of a backlog both meter with
it. It holds no clock of its own: callers pass monotonic ``now`` so tests can
drive it with a table and the hot paths pay no extra call.
"""

from __future__ import annotations

import math


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full.

    Attributes:
        rate: tokens added per second.
        burst: the most tokens held.
        tokens: tokens held at ``last``.
        last: the time of the last refill (callers evict idle buckets by it).
    """

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not rate > 0 or not burst >= 1:  # also refuses NaN
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 (got rate={rate}, burst={burst})")
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.last = float(burst), now

    def _refill(self, now: float) -> None:
        # a clock that steps back (it should not: callers pass monotonic time) adds nothing
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now

    def take(self, now: float) -> bool:
        """Take one token if one is there."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def take_up_to(self, now: float, wanted: int) -> int:
        """Take as many whole tokens as are there, at most ``wanted``; 0 when none."""
        self._refill(now)
        got = min(wanted, math.floor(self.tokens))
        if got <= 0:
            return 0
        self.tokens -= got
        return got

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0 when one is there now)."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)


__all__ = ["TokenBucket"]

"""Rate limits: a token bucket per session for frames per wall-clock second."""
from __future__ import annotations

import time


class TokenBucket:
    """`rate` events per second on average with bursts of up to `burst`; `take()` says whether one may pass."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic):
        self.rate, self.burst, self.clock = float(rate), float(burst if burst is not None else rate), clock
        self.level, self.t = self.burst, clock()

    def take(self) -> bool:
        """Spend one token if there is one; False when the caller is over the rate."""
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self.t) * self.rate)
        self.t = now
        if self.level >= 1.0:
            self.level -= 1.0
            return True
        return False

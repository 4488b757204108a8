"""Rate limits: a token bucket per session for frames per wall-clock second, and per address for failures."""
from __future__ import annotations

import collections
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


class AddressThrottle:
    """A token bucket per remote address (e.g. for failed authentications), for at most `max_addresses`
    addresses: the least recently seen is forgotten first, so a flood of addresses costs bounded memory."""

    def __init__(self, per_min: float, *, max_addresses: int = 10_000, clock=time.monotonic):
        self.rate, self.burst, self.max_addresses, self.clock = per_min / 60.0, per_min, max_addresses, clock
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def blocked(self, address: str) -> bool:
        """Whether `address` has no tries left (it spends none)."""
        b = self._buckets.get(address)
        if b is None:
            return False
        b.level = min(b.burst, b.level + (self.clock() - b.t) * b.rate)
        b.t = self.clock()
        return b.level < 1.0

    def spend(self, address: str) -> None:
        """Count one try (a failure) against `address`."""
        b = self._buckets.pop(address, None) or TokenBucket(self.rate, self.burst, clock=self.clock)
        self._buckets[address] = b
        b.take()
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)

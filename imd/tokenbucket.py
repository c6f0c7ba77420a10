"""The token bucket: every rate limit of imd counts with this one.

A WebSocket connection's packet and ``H`` rates (imd.transport.session)
and the http limits keyed by caller (imd.http.ratelimit) alike.  Pure: the
time is passed in.
"""

import math


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` at once; full when made."""
    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = self.burst
        self.at = now

    def take(self, now: float, cost: float = 1) -> bool:
        """``cost`` tokens (at most the burst) if there are as many."""
        if cost > self.burst:
            cost = self.burst
        tokens = self.tokens
        if now > self.at:
            # (a clock that went back refills nothing, and takes nothing either)
            tokens += (now - self.at) * self.rate
            if tokens > self.burst:
                tokens = self.burst
        self.at = now
        if tokens < cost:
            self.tokens = tokens
            return False
        self.tokens = tokens - cost
        return True

    def wait(self, cost: float = 1) -> int:
        """After a refused :meth:`take`: the whole seconds until ``cost``
        (at most the burst) would be there (for ``Retry-After``), at least 1."""
        cost = min(float(cost), self.burst)
        if self.rate <= 0:
            return 1
        return max(1, math.ceil((cost - self.tokens) / self.rate))

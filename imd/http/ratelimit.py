"""Token buckets keyed by caller (a user id, a remote address), in memory.

Each process limits on its own: behind several http nodes the allowance is
per node.  The number of buckets is bounded, so callers that keep changing
their key (many user ids, many IPv6 addresses) cannot grow memory: past
``max_keys`` the least recently seen bucket is forgotten (that caller starts
again with a full bucket, which costs an attacker more requests than it
gains).
"""

import math
from collections import OrderedDict
from typing import Hashable, Tuple

MAX_KEYS = 100000


class RateLimiter:
    """``rate`` requests per second per key, ``burst`` at once; rate 0 = no limit."""

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_KEYS):
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: "OrderedDict[Hashable, Tuple[float, float]]" = OrderedDict()   # key -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: Hashable, now: float, cost: float = 1) -> int:
        """Spend ``cost`` (one request; at most the burst) of ``key``: 0
        when allowed, else the whole seconds to wait before it would be (for
        ``Retry-After``)."""
        if not self.enabled:
            return 0
        cost = min(float(cost), float(self.burst))
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
        if tokens >= cost:
            tokens -= cost
            wait = 0
        else:
            wait = max(1, math.ceil((cost - tokens) / self.rate))
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)

"""Token buckets (imd.tokenbucket) keyed by caller (a user id, a remote
address), in memory.

Each process limits on its own: behind several http nodes the allowance is
per node.  The number of buckets is bounded, so callers that keep changing
their key (many user ids, many IPv6 addresses) cannot grow memory: past
``max_keys`` the least recently seen bucket is forgotten (that caller starts
again with a full bucket, which costs an attacker more requests than it
gains).
"""

from collections import OrderedDict
from typing import Hashable

from imd.tokenbucket import TokenBucket

MAX_KEYS = 100000


class RateLimiter:
    """``rate`` requests per second per key, ``burst`` at once; rate 0 = no limit."""

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_KEYS):
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._full = float(burst)   # (one float object, shared by every bucket)
        self._buckets: "OrderedDict[Hashable, TokenBucket]" = OrderedDict()   # least recently seen first

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: Hashable, now: float, cost: float = 1) -> int:
        """Spend ``cost`` (one request; at most the burst) of ``key``: 0
        when allowed, else the whole seconds to wait before it would be (for
        ``Retry-After``)."""
        if not self.enabled:
            return 0
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self._full, now)
        wait = 0 if bucket.take(now, cost) else bucket.wait(cost)
        buckets[key] = bucket
        while len(buckets) > self._max_keys:
            buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)

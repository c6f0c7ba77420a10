"""Per-user budgets in Redis: token buckets that every connection of a user,
on every node, spends from.

A connection's own bucket (``[websocket] rate``, ``history_rate``) lives in
the connection; a user holding several connections, on several nodes, got
that much per connection.  What costs imd real work per request (``H``
reading a user's pending entries and MySQL, an ``R`` naming ids that must be
looked up) is also charged here, per user, inside the script that the
request runs anyway: no extra round trip.

Keys (imd.stores.keys): ``budget:<kind>:<uid>``, a hash ``{t: tokens, at:
Unix ms}``, which expires once it would be full again (a user who stopped
asking costs no memory).  Times come from the caller's clock (the node's),
so a node whose clock lags refills nobody: ``at`` never moves back.
"""

from typing import List, NamedTuple, Union


class Budget(NamedTuple):
    """``rate`` per second (0: no limit), at most ``burst`` at once."""
    rate: float
    burst: int

    def args(self, now_ms: int) -> List[Union[float, int]]:
        """The script arguments of this budget at ``now_ms``: rate, burst, now."""
        return [float(self.rate), self.burst, now_ms]

"""The end of order-made friendships (contract §7.3), in the migrate role.

Closing an order puts it on ``orders:ending`` (a Redis sorted set, score:
when its friendship ends).  Every ``interval`` seconds the leading migrator's
process takes the orders that are due and runs each one's end: one script
that removes the order from the schedule and from the pair's links and,
unless another order still links the pair or the friendship is kept, takes
the two out of each other's ``URS:`` set (imd.stores.orders).

Exactly once, whatever runs: the schedule lives in Redis, so it survives
every imd process; the end script does its work only while the order is
still on the schedule and due, and removes it in the same step, so two
runners (a leader that lost its lock without knowing yet, say) cannot both
end it, and a runner killed before the script leaves it for the next one.
Only the holder of ``MQ:lock`` runs, which keeps the others from doing the
reads for nothing.
"""

from typing import Any, Callable, Dict, Optional

from twisted.internet import defer
from twisted.logger import Logger

from imd.clock import Clock
from imd.leadertask import LeaderTask
from imd.stores.orders import ENDED

_log = Logger()

INTERVAL = 1.0   # seconds between looks at the schedule: an end runs at most this late
BATCH = 100      # ends per look (more are taken at once on the next look)


class OrderEnds(LeaderTask):
    """``ended`` counts the ends this process ran, by outcome."""

    name = "order ends"
    unavailable_format = "order ends: {why}; trying again in {interval}s"
    unexpected_format = "order ends: unexpected error"

    def __init__(self, orders: Any, clock: Clock, leading: Callable[[], bool], interval: float = INTERVAL,
                 batch: int = BATCH) -> None:
        super().__init__(clock, leading, interval, _log)
        self._orders = orders
        self.batch = batch
        self.ended: Dict[str, int] = {}
        self._running_call: Optional[defer.Deferred] = None

    def _stopping(self) -> Optional[defer.Deferred]:
        # an end already sent to Redis is atomic: waiting for its reply only
        # keeps the log and counts right
        return self._running_call

    def _tick(self) -> defer.Deferred:
        d = defer.ensureDeferred(self.run_due())
        self._running_call = d

        def done(_: Any) -> None:
            self._running_call = None
        # a failure must not stop the LoopingCall: log it and look again later
        d.addErrback(self._failed)
        d.addBoth(done)
        return d

    async def run_due(self) -> int:
        """Run the ends that are due now (if this process leads); how many ran."""
        if not self._leading():
            return 0
        now = int(self._clock.seconds() * 1000)
        ran = 0
        for order in await self._orders.due_ends(now, self.batch):
            outcome = await self._orders.end_order(order, now)
            if outcome is None:
                continue   # another runner did it, or nothing was left
            ran += 1
            key = "ended" if outcome == ENDED else "kept"
            self.ended[key] = self.ended.get(key, 0) + 1
            _log.info("order {order}: conversation end ran: {outcome}", order=order, outcome=outcome)
        return ran

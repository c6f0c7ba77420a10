"""Retention (``[retention] days``): messages older than that leave MySQL,
with their receipts; room messages and room recalls too.

The leading migrator's process runs it (like the ends of closed orders:
only the holder of ``MQ:lock``), once every :data:`RUN_EVERY` seconds;
``imd-admin retention purge --older-than DAYS`` runs the same loop once.

It never holds up the migrator's inserts: each batch is the :data:`BATCH`
oldest rows, found through ``message_by_ts`` (sql/005; room rows through
their own ts keys, sql/011) and deleted by primary key in one
short transaction of its own (imd.stores.mysql
``MessageRows.purge_older``), which locks only the rows it deletes -- the
inserts add rows at the other end of ``ts``.  Between batches it waits as
long as the last batch took (at least :data:`PAUSE`): whatever MySQL has to
spare, the purge takes at most half of one connection's time, and the
migrator's transactions always find MySQL between two of its batches.  Figures (migrator rows/s
while 1M rows are purged): docs/operations.md, "Retention".
"""

from typing import Any, Awaitable, Callable, Optional, Tuple

from twisted.internet import defer, task
from twisted.logger import Logger

from imd.clock import Clock, reactor_time
from imd.leadertask import LeaderTask

_log = Logger()

BATCH = 1000          # rows deleted per transaction
PAUSE = 0.05          # seconds between two batches at least (else as long as the last one took)
RUN_EVERY = 3600.0    # seconds between two runs of the leader's purge
CHECK_EVERY = 60.0    # seconds between looks whether a run is due (and this process leads)
DAY_MS = 86400 * 1000


def cutoff(now: float, days: float) -> int:
    """Unix ms before which a message is older than ``days`` days at ``now`` (s)."""
    return int(now * 1000) - int(days * DAY_MS)


async def purge(rows: Any, before: int, sleep: Callable[[float], Awaitable[Any]], now: Callable[[], float],
                batch: int = BATCH, pause: float = PAUSE, keep_going: Callable[[], bool] = lambda: True,
                progress: Optional[Callable[[int], None]] = None) -> Tuple[int, int]:
    """Delete every message with ``ts < before`` (and its receipts), oldest
    first, ``batch`` rows a transaction, while ``keep_going()``; between
    two batches ``sleep`` as long as the last one took by ``now()``, and at
    least ``pause`` seconds.  ``progress(n)`` hears of each batch.  Returns
    ``(messages, receipts)`` deleted."""
    messages = receipts = 0
    while keep_going():
        started = now()
        deleted, receipts_deleted = await rows.purge_older(before, batch)
        messages += deleted
        receipts += receipts_deleted
        if progress is not None and deleted:
            progress(deleted)
        if deleted < batch:
            break
        await sleep(max(pause, now() - started))
    return messages, receipts


class RetentionPurge(LeaderTask):
    """The leader's purge.  ``deleted`` and ``receipts_deleted`` count what
    this process removed; ``last_run`` is when its last complete run began
    (clock seconds).  It looks every ``check_every`` seconds whether a run
    is due."""

    name = "retention"
    unavailable_format = "retention: {why}; trying again in {interval:.0f}s"
    unexpected_format = "retention: unexpected error"

    def __init__(self, rows: Any, days: int, clock: Clock, leading: Callable[[], bool],
                 check_every: float = CHECK_EVERY, run_every: float = RUN_EVERY, batch: int = BATCH,
                 pause: float = PAUSE) -> None:
        super().__init__(clock, leading, check_every, _log)
        self._rows = rows
        self.days = days
        self.run_every = run_every
        self.batch = batch
        self.pause = pause
        self.deleted = 0
        self.receipts_deleted = 0
        self.last_run: Optional[float] = None
        self._run: Optional[defer.Deferred] = None
        self._sleeping: Optional[defer.Deferred] = None

    def _stopping(self) -> Optional[defer.Deferred]:
        if self._sleeping is not None:
            self._sleeping.cancel()
        # a batch already sent finishes (one short transaction); no other starts
        return self._run

    def _due(self) -> bool:
        if not self.running or not self._leading() or self._run is not None:
            return False
        return self.last_run is None or self._clock.seconds() - self.last_run >= self.run_every

    def _tick(self) -> None:
        if not self._due():
            return
        d = self._run = defer.ensureDeferred(self.run_once())
        d.addErrback(self._failed)

        def done(_: Any) -> None:
            self._run = None
        d.addBoth(done)

    def _sleep(self, seconds: float) -> defer.Deferred:
        d = self._sleeping = task.deferLater(reactor_time(self._clock), seconds, lambda: None)

        def woke(result: Any) -> Any:
            self._sleeping = None
            return result
        return d.addBoth(woke)

    async def run_once(self) -> int:
        """One run now: every message older than ``days`` days goes.  How many did."""
        started = self._clock.seconds()
        before = cutoff(started, self.days)
        messages, receipts = await purge(self._rows, before, self._sleep, self._clock.seconds, self.batch,
                                         self.pause, keep_going=lambda: bool(self.running) and self._leading())
        self.deleted += messages
        self.receipts_deleted += receipts
        self.last_run = started
        if messages:
            _log.info("retention: deleted {messages} messages and {receipts} receipts older than {days} days"
                      " in {seconds:.1f}s", messages=messages, receipts=receipts, days=self.days,
                      seconds=self._clock.seconds() - started)
        return messages

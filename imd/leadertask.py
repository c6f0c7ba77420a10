"""The base of the periodic tasks that only the leading migrator's process
runs (the holder of ``MQ:lock``): the ends of closed orders
(:mod:`imd.order_ends`), the push drainer (:mod:`imd.push.drainer`) and the
retention purge (:mod:`imd.retention`).

Each looks every ``interval`` seconds (a LoopingCall on the clock it is
given, the first look one interval after its start) and does its work only
while ``leading()``; a look that fails is logged and the next look tries
again (a store that does not answer as a warning, anything else with its
traceback), so a failure never stops the loop; on stop the loop ends and
the stop waits for what the task is still doing.
"""

from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from imd.clock import Clock, reactor_time
from imd.errors import StoreUnavailable


class LeaderTask(Service):
    """Subclasses give :meth:`_tick` (one look), :meth:`_stopping` (what a
    stop waits for) and the two log lines of :meth:`_failed`."""

    #: the warning when a look fails because a store does not answer (fields ``why``, ``interval``)
    unavailable_format = "{why}"
    #: the error logged, with the traceback, when a look fails otherwise
    unexpected_format = "unexpected error"

    def __init__(self, clock: Clock, leading: Callable[[], bool], interval: float, log: Logger) -> None:
        self._clock = clock
        self._leading = leading
        self.interval = interval
        self._log = log   # the subclass's module's, so its lines keep their namespace
        self._loop: Optional[task.LoopingCall] = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor_time(self._clock)
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Optional[defer.Deferred]:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        return self._stopping()

    def _tick(self) -> Any:
        """One look (the LoopingCall's call): it must not fail, or the loop stops."""
        raise NotImplementedError

    def _stopping(self) -> Optional[defer.Deferred]:
        """What a stop waits for: the work still under way, if any."""
        return None

    def _failed(self, failure: Failure) -> None:
        """Log a look that failed (an errback: the failure ends here)."""
        if failure.check(defer.CancelledError):
            return   # cut short by the stop
        if failure.check(StoreUnavailable):
            self._log.warn(self.unavailable_format, why=failure.getErrorMessage(), interval=self.interval)
        else:
            self._log.failure(self.unexpected_format, failure)

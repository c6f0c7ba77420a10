"""Positions are never reused (contract §10): at start-up every process
that stores entries or moves them (ws, http, migrate) raises ``MQ:seq`` to
at least the highest ``accept_seq`` in MySQL, once.

``MQ:seq`` only ever grows while Redis keeps its data; a Redis restored
from an older snapshot (or one that lost its data) would hand out again
positions that migrated messages already have.  The raise is one query by
``message_by_pos`` (sql/007) and one Lua compare-and-set
(imd.stores.messages ``raise_seq``): it never lowers the counter, so
processes starting together, in any order, leave the highest value.

It does not hold the process up: a ws node takes messages while MySQL is
down, as before.  Until MySQL answers it is tried again every
:data:`RETRY` seconds, with a warning.
"""

from typing import Callable, Optional, cast

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.base import DelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from imd.clock import Clock

_log = Logger()

RETRY = 5.0   # seconds between two tries while MySQL or Redis does not answer


class SeqFloor(Service):
    """Runs ``raise_seq()`` (MySQL's highest accept_seq into ``MQ:seq``)
    once it succeeds; ``value`` is what ``MQ:seq`` was then."""

    name = "seq-floor"

    def __init__(self, raise_seq: Callable[[], Deferred], clock: Clock, retry: float = RETRY) -> None:
        self._raise_seq = raise_seq
        self._clock = clock
        self.retry = retry
        self.value: Optional[int] = None
        self._call: Optional[DelayedCall] = None
        self._running: Optional[Deferred] = None

    def startService(self) -> None:
        super().startService()
        self._try()

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        return self._running

    def _try(self) -> None:
        self._call = None
        if not self.running or self.value is not None:
            return
        d = self._running = defer.maybeDeferred(self._raise_seq)
        d.addCallbacks(self._done, self._failed)

        def finished(_: object) -> None:
            self._running = None
        d.addBoth(finished)

    def _done(self, value: int) -> None:
        self.value = value
        _log.info("MQ:seq is {value}: at least the highest accept_seq in MySQL", value=self.value)

    def _failed(self, failure: Failure) -> None:
        _log.warn("MQ:seq not yet raised to MySQL's highest accept_seq ({why}); trying again in {retry:g}s",
                  why=failure.getErrorMessage(), retry=self.retry)
        if self.running:
            self._call = cast(DelayedCall, self._clock.callLater(self.retry, self._try))

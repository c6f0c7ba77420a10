"""The push drainer (contract §7.5): the one process that sends pending
pushes, in the migrate role while its migrator leads (as imd.order_ends).

Every ``interval`` seconds, and again as soon as a send ends while more are
waiting, it takes what is due (imd.stores.push: users whose ``[push] delay``
window has ended, and in-flight pushes whose retry time or lease has come),
at most as many as it has free sending slots, and POSTs each
(imd.push.gateway).  A 2xx ends a push (sent), a 4xx too (failed, not
retried: the platform refused it); a timeout, a 5xx or any other answer, or
no connection, schedules the next try after a backoff: 1 s, doubling, capped
at 60 s, each wait shortened by up to a fifth at random (jitter), so pushes
that failed together do not retry together.  Once the next try would come
more than ``[push] max_age`` seconds after the first, the push is dropped
(failed, expired).

At least once: a push stays in Redis until one of those outcomes is
written; a drainer killed in between leaves it leased, and the next drainer
takes it when the lease ends and sends it under the same ``X-Imd-Delivery``
key.

One push per recipient at a time: while one waits for its retry, newer
messages of that recipient join it (imd.stores.push), so each retry names
the newest message and the unread count as they are then, under the same
key, and a failing gateway sees each recipient at most once per backoff
step however many messages arrive.
"""

import os
import random
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer
from twisted.logger import Logger

from imd.clock import Clock
from imd.errors import StoreUnavailable
from imd.leadertask import LeaderTask
from imd.push import payload
from imd.stores.push import InFlight

_log = Logger()

INTERVAL = 0.25       # seconds between looks at the queue: a push goes out at most this late
CONNECTIONS = 32      # POSTs at once (and pooled connections to the gateway)
TAKE_BATCH = 8        # pushes taken (and started) at once: a bigger batch is work in one reactor turn
LEASE_MARGIN = 5.0    # seconds past [push] timeout before another drainer may take an attempt over
FIRST_STEP = 1.0      # seconds before the first retry
MAX_STEP = 60.0       # the longest wait between tries
JITTER = 0.2          # each wait is shortened by up to this share of it

SENT, REJECTED, RETRY, EXPIRED = "sent", "rejected", "retry", "expired"


def backoff(attempts: int, rng: Any) -> float:
    """Seconds to wait after the ``attempts``-th try failed."""
    step = min(MAX_STEP, FIRST_STEP * 2 ** (attempts - 1))
    return step - rng.uniform(0, step * JITTER)


def outcome_of(status: Optional[int]) -> str:
    """What an answer means: ``status`` None when there was none."""
    if status is not None and 200 <= status < 300:
        return SENT
    if status is not None and 400 <= status < 500:
        return REJECTED
    return RETRY


class PushDrainer(LeaderTask):
    """For ``/metrics``: ``sent``, ``rejected`` (4xx), ``expired`` (given up
    after ``max_age``), ``retried`` (tries scheduled again)."""

    name = "push drainer"
    unavailable_format = "push: {why}; looking again in {interval}s"
    unexpected_format = "push: unexpected error"

    def __init__(self, store: Any, gateway: Any, settings: Any, clock: Clock, leading: Callable[[], bool],
                 interval: float = INTERVAL, connections: int = CONNECTIONS, rng: Any = None) -> None:
        super().__init__(clock, leading, interval, _log)
        self._store = store
        self._gateway = gateway
        self.connections = connections
        self._rng = rng or random.SystemRandom()
        self._preview = settings.preview
        self._delay_ms = int(round(settings.delay * 1000))
        self._max_age_ms = int(round(settings.max_age * 1000))
        self._lease_ms = int(round((settings.timeout + LEASE_MARGIN) * 1000))
        self.sent = self.rejected = self.expired = self.retried = 0
        self._sending: Dict[str, defer.Deferred] = {}
        self._taking: Optional[defer.Deferred] = None
        self._more = False          # the last take filled every free slot
        self._failing = False       # the gateway's last answer was a failure (logged once)

    # --- service -------------------------------------------------------------

    def _stopping(self) -> defer.Deferred:
        # pushes being sent end within [push] timeout; one cut short by the
        # stop is still in Redis and goes out again (same delivery key)
        waiting = [d for d in [self._taking] + list(self._sending.values()) if d is not None]
        d = defer.DeferredList(waiting, consumeErrors=True)
        return d.addBoth(lambda _: self._gateway.close())

    # --- taking --------------------------------------------------------------

    def _tick(self) -> None:
        if self._taking is None:
            self.take_due().addErrback(self._failed)

    def take_due(self) -> defer.Deferred:
        """Take what is due (if this process leads) and start sending it;
        fires with one Deferred per push taken, each firing with its
        outcome once written to Redis."""
        room = min(TAKE_BATCH, self.connections - len(self._sending))
        if not self._leading() or room <= 0 or self._taking is not None:
            return defer.succeed([])
        now = self._now_ms()
        d = self._taking = self._store.take(now, room, self._lease_ms, os.urandom(8).hex(), self._delay_ms)

        def taken(pushes: List[InFlight]) -> List[defer.Deferred]:
            self._taking = None
            self._more = len(pushes) >= room
            return [self._send(push) for push in pushes if push.key not in self._sending]

        def failed(failure: Any) -> Any:
            self._taking = None
            return failure
        return d.addCallbacks(taken, failed)

    async def run_due(self) -> List[str]:
        """Take what is due and send it; the outcomes once all are written."""
        sends = await self.take_due()
        return list(await defer.gatherResults(sends, consumeErrors=True))

    # --- sending -------------------------------------------------------------

    def _send(self, push: InFlight) -> defer.Deferred:
        """Fires with the outcome, or None when it could not be written
        (then the push is still in Redis, and its lease ends)."""
        d = defer.ensureDeferred(self._attempt(push))
        self._sending[push.key] = d

        def failed(failure: Any) -> None:
            if failure.check(StoreUnavailable):
                _log.warn("push {key}: {why}; it goes again once its lease ends", key=push.key,
                          why=failure.getErrorMessage())
            else:
                _log.failure("push {key}: unexpected error", failure, key=push.key)

        def done(result: Any) -> Any:
            self._sending.pop(push.key, None)
            if self._more and self._taking is None and self.running:
                self._tick()
            return result
        return d.addErrback(failed).addBoth(done)

    async def _attempt(self, push: InFlight) -> str:
        try:
            body = payload.body(push.to, push.packet, push.unread, self._preview)
        except ValueError as e:
            _log.error("push {key}: unreadable message ({why}); dropped: {packet!r}", key=push.key, why=e,
                       packet=push.packet[:200])
            await self._store.finish(push.key, push.packet, self._now_ms())
            self.rejected += 1
            return REJECTED
        status, why = None, ""
        try:
            status = await self._gateway.post(body, push.key)
        except Exception as e:
            why = str(e) or type(e).__name__
        outcome = outcome_of(status)
        if outcome == RETRY:
            self._gateway_failing("HTTP %d" % status if status is not None else why)
            wait = backoff(push.attempts, self._rng)
            at = int((self._clock.seconds() + wait) * 1000)
            if at - push.first > self._max_age_ms:
                outcome = EXPIRED
                _log.warn("push {key} to {to}: given up after {attempts} tries over {age:.0f}s",
                          key=push.key, to=push.to, attempts=push.attempts, age=(at - push.first) / 1000.0)
            else:
                await self._store.retry(push.key, at)
                self.retried += 1
                return RETRY
        else:
            self._gateway_answering()
        if outcome == REJECTED:
            _log.warn("push {key} to {to}: the gateway refused it (HTTP {status}); not retried",
                      key=push.key, to=push.to, status=status)
        await self._store.finish(push.key, push.packet, self._now_ms())
        if outcome == SENT:
            self.sent += 1
        elif outcome == REJECTED:
            self.rejected += 1
        else:
            self.expired += 1
        return outcome

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _gateway_failing(self, why: str) -> None:
        if not self._failing:
            self._failing = True
            _log.warn("push: the gateway is failing ({why}); retrying with backoff", why=why)

    def _gateway_answering(self) -> None:
        if self._failing:
            self._failing = False
            _log.info("push: the gateway answers again")

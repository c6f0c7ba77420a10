"""``GET /metrics``: the App's Prometheus registry as text.

Figures that live in the stores are read at scrape time (a gauge callback
cannot wait for Redis), all at once: the ``MQ`` and ``MQ:dead`` lengths, how
many WebSocket nodes are registered, the pending pushes and the age of the
oldest, and whether Redis and MySQL answer.  A
store that does not answer reads NaN (and ``imd_store_up`` 0).

``imd_redis_master_info`` names the Redis address: like the Redis figures of
``/healthz`` it is left out of an answer that may be public.  It is there on
``[imd] metrics_listen`` (an internal listener), and on the http role's
listener only to a request straight from this machine's loopback (no proxy
header); through a proxy or from another host, everything else.
"""

import typing
from typing import TYPE_CHECKING, Any, Generator, List, Tuple, cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.server import Request

from imd.errors import StoreUnavailable
from imd.http.resource import JsonResource, JsonResult, Raw, direct_from_loopback
from imd.clock import Clock
from imd.metrics import CONTENT_TYPE, Metrics
from imd.stores.push import PushStats

if TYPE_CHECKING:
    from imd.config import Settings
    from imd.stores.deadletter import DeadLetters
    from imd.stores.mysql import MysqlStore
    from imd.stores.processes import ProcessRegistry
    from imd.stores.push import PushStore

MYSQL_TIMEOUT = 5


class MetricsApp(typing.Protocol):
    """What ``/metrics`` uses of imd.app.App (which imports this package)."""

    @property
    def settings(self) -> "Settings": ...

    @property
    def dead_letters(self) -> "DeadLetters": ...

    @property
    def process_registry(self) -> "ProcessRegistry": ...

    @property
    def push_store(self) -> "PushStore": ...

    @property
    def mysql(self) -> "MysqlStore": ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def clock(self) -> Clock: ...


class MetricsResource(JsonResource):
    methods = ("GET",)

    def __init__(self, app: MetricsApp, details: bool = False) -> None:
        """``details``: always add the figures that name an address (the
        private metrics listener); otherwise only for a request straight
        from this machine's loopback, as ``/healthz``."""
        super().__init__(app.settings.http.cors_origins)
        self._app = app
        self._details = details
        self._dead = app.dead_letters
        self._processes = app.process_registry
        self._push = app.push_store

    @defer.inlineCallbacks
    def render_GET(self, request: Request) -> Generator[defer.Deferred, Any, JsonResult]:
        metrics = self._app.metrics
        # (the gauges, a read firing with one figure for each)
        from_redis = (
            ((metrics.mq_length,), lambda: self._dead.queued().addCallback(_one)),
            ((metrics.mq_dead_length,), lambda: self._dead.length().addCallback(_one)),
            ((metrics.nodes_registered,), lambda: self._processes.ready_nodes().addCallback(_one)),
            ((metrics.push_pending, metrics.push_oldest_age), self._push_figures),
        )
        reads = [defer.maybeDeferred(read) for _, read in from_redis] + [self._mysql_up()]
        results = yield defer.DeferredList(reads, consumeErrors=True)
        failures: List[str] = []
        for (gauges, _), (ok, value) in zip(from_redis, results):
            if ok:
                for gauge, figure in zip(gauges, value):
                    gauge.set(float(figure))
            else:
                value.trap(StoreUnavailable)   # anything else is a bug: logged, answered 500
                for gauge in gauges:
                    gauge.set(float("nan"))
                failures.append(value.getErrorMessage())
        if failures:
            metrics.store_error(failures[0])
        metrics.store_up.labels("redis").set(0 if failures else 1)
        metrics.store_up.labels("mysql").set(results[-1][1])
        private = self._details or direct_from_loopback(request)
        return 200, Raw(metrics.exposition(private=private), CONTENT_TYPE)

    def _push_figures(self) -> defer.Deferred:
        """(pending pushes, seconds since the oldest one's window opened)."""
        def figures(stats: PushStats) -> Tuple[int, float]:
            age = 0.0 if stats.oldest is None else max(0.0, self._app.clock.seconds() - stats.oldest / 1000.0)
            return stats.waiting + stats.in_flight, age
        delay_ms = int(round(self._app.settings.push.delay * 1000))
        return self._push.stats(delay_ms).addCallback(figures)

    def _mysql_up(self) -> defer.Deferred:
        """Fires with 1 or 0, never fails."""
        d = self._app.mysql.ping().addTimeout(MYSQL_TIMEOUT, cast(IReactorTime, self._app.clock))

        def down(failure: Failure) -> int:
            assert failure.type is not None   # a Failure always has its exception's class
            self._app.metrics.store_error("mysql: %s" % (failure.getErrorMessage() or failure.type.__name__))
            return 0
        return d.addCallbacks(lambda _: 1, down)


def _one(figure: Any) -> Tuple[Any]:
    return (figure,)

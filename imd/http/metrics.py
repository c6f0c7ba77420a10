"""``GET /metrics``: the App's Prometheus registry as text.

Figures that live in the stores are read at scrape time (a gauge callback
cannot wait for Redis), all at once: the ``MQ`` and ``MQ:dead`` lengths, how
many WebSocket nodes are registered, and whether Redis and MySQL answer.  A
store that does not answer reads NaN (and ``imd_store_up`` 0).
"""

from twisted.internet import defer

from imd.errors import StoreUnavailable
from imd.http.resource import JsonResource, Raw
from imd.metrics import CONTENT_TYPE
from imd.stores.deadletter import DeadLetters
from imd.stores.processes import ProcessRegistry

MYSQL_TIMEOUT = 5


class MetricsResource(JsonResource):
    methods = ("GET",)

    def __init__(self, app):
        super().__init__(app.settings.http.cors_origins)
        self._app = app
        self._dead = DeadLetters(app.redis_client, app.keys)
        self._processes = ProcessRegistry(app.redis_client, app.keys)

    @defer.inlineCallbacks
    def render_GET(self, request):
        app, metrics = self._app, self._app.metrics
        from_redis = (
            (metrics.mq_length, lambda: app.redis_client.command("LLEN", app.keys.mq)),
            (metrics.mq_dead_length, self._dead.length),
            (metrics.nodes_registered, self._processes.ready_nodes),
        )
        reads = [defer.maybeDeferred(read) for _, read in from_redis] + [self._mysql_up()]
        results = yield defer.DeferredList(reads, consumeErrors=True)
        failures = []
        for (gauge, _), (ok, value) in zip(from_redis, results):
            if ok:
                gauge.set(float(value))
            else:
                value.trap(StoreUnavailable)   # anything else is a bug: logged, answered 500
                gauge.set(float("nan"))
                failures.append(value.getErrorMessage())
        if failures:
            metrics.store_error(failures[0])
        metrics.store_up.labels("redis").set(0 if failures else 1)
        metrics.store_up.labels("mysql").set(results[-1][1])
        return 200, Raw(metrics.exposition(), CONTENT_TYPE)

    def _mysql_up(self):
        """Fires with 1 or 0, never fails."""
        d = self._app.mysql.ping().addTimeout(MYSQL_TIMEOUT, self._app.clock)

        def down(failure):
            self._app.metrics.store_error("mysql: %s" % (failure.getErrorMessage() or failure.type.__name__))
            return 0
        return d.addCallbacks(lambda _: 1, down)

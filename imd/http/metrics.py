"""``GET /metrics``: the App's Prometheus registry as text.

The ``MQ`` length is read from Redis at scrape time (a gauge callback cannot
wait for Redis); when Redis does not answer it reads NaN.
"""

from twisted.internet import defer

from imd.errors import StoreUnavailable
from imd.http.resource import JsonResource, Raw
from imd.metrics import CONTENT_TYPE


class MetricsResource(JsonResource):
    methods = ("GET",)

    def __init__(self, app):
        super().__init__(app.settings.http.cors_origins)
        self._app = app

    @defer.inlineCallbacks
    def render_GET(self, request):
        metrics = self._app.metrics
        try:
            length = yield self._app.redis_client.command("LLEN", self._app.keys.mq)
        except StoreUnavailable as e:
            metrics.store_error(str(e))
            metrics.mq_length.set(float("nan"))
        else:
            metrics.mq_length.set(int(length))
        return 200, Raw(metrics.exposition(), CONTENT_TYPE)

"""``GET /healthz``: can this process reach Redis and MySQL right now?

200 ``{"redis": "ok", "mysql": "ok"}``; otherwise 503 with ``"down"`` for each
store that failed.  Why it failed (the driver's message, which names hosts
and ports) goes to the log only: the answer may be public (a proxy in front,
a load balancer's probe).  Redis is asked ``PING`` through
the App's own client (so the answer is about the connection the daemon uses);
MySQL ``SELECT 1`` through the App's MySQL pool.
"""

from twisted.internet import defer
from twisted.logger import Logger

from imd.http.resource import JsonResource

_log = Logger()

MYSQL_TIMEOUT = 5


class HealthResource(JsonResource):
    methods = ("GET",)

    def __init__(self, app):
        super().__init__(app.settings.http.cors_origins)
        self._app = app

    def check_redis(self):
        return self._app.redis_client.command("PING")

    def check_mysql(self):
        return self._app.mysql.ping().addTimeout(MYSQL_TIMEOUT, self._app.clock)

    @defer.inlineCallbacks
    def render_GET(self, request):
        names = ("redis", "mysql")
        results = yield defer.DeferredList([defer.maybeDeferred(self.check_redis),
                                            defer.maybeDeferred(self.check_mysql)],
                                           consumeErrors=True)
        body, problems = {}, []
        for name, (ok, value) in zip(names, results):
            body[name] = "ok" if ok else "down"
            if not ok:
                problems.append("%s: %s" % (name, value.getErrorMessage() or value.type.__name__))
        if problems:
            _log.warn("health check failed: {problems}", problems="; ".join(problems))
            return 503, body
        return 200, body

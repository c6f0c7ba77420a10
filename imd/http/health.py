"""``GET /healthz``: can this process reach Redis and MySQL right now?

200 ``{"redis": "ok", "mysql": "ok"}``; otherwise 503 with ``"down"`` for each
store that failed and ``error`` saying why.  Redis is asked ``PING`` through
the App's own client (so the answer is about the connection the daemon uses);
MySQL ``SELECT 1`` through the App's MySQL store when it has one, else over a
short-lived connection of its own.
"""

import pymysql
from twisted.internet import defer, threads
from twisted.logger import Logger

from imd.http.resource import JsonResource

_log = Logger()

MYSQL_TIMEOUT = 5


def _select_one(settings):
    """Blocking: connect, ``SELECT 1``, disconnect (runs in a thread)."""
    conn = pymysql.connect(host=settings.host, port=settings.port, user=settings.user,
                           password=settings.password, database=settings.database,
                           connect_timeout=MYSQL_TIMEOUT, read_timeout=MYSQL_TIMEOUT,
                           write_timeout=MYSQL_TIMEOUT)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()
    finally:
        conn.close()


class HealthResource(JsonResource):
    methods = ("GET",)

    def __init__(self, app):
        super().__init__(app.settings.http.cors_origins)
        self._app = app

    def check_redis(self):
        return self._app.redis_client.call("PING")

    def check_mysql(self):
        store = getattr(self._app, "mysql", None)
        if store is not None and hasattr(store, "ping"):
            d = store.ping()
        else:
            d = threads.deferToThreadPool(self._app.reactor, self._app.reactor.getThreadPool(),
                                          _select_one, self._app.settings.mysql)
        return d.addTimeout(MYSQL_TIMEOUT + 1, self._app.clock)

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
            body["error"] = "; ".join(problems)
            _log.warn("health check failed: {problems}", problems=body["error"])
            return 503, body
        return 200, body

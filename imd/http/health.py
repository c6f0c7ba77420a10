"""``GET /healthz``: can this process reach Redis and MySQL right now?

200 ``{"redis": "ok", "mysql": "ok", ...}``; otherwise 503 with ``"down"`` for
each store that failed.  While the process is starting (imd.startup: Redis
not answering yet, the key pair not set, a ws node not registered), 503 with
``"status": "starting"`` first, whatever the stores say.  Why a store failed
(the driver's message, which names hosts and ports) goes to the log only.
Redis is asked ``PING`` through the App's own client (so the answer is about
the connection the daemon uses); MySQL ``SELECT 1`` through the App's MySQL
pool.

The Redis figures, whatever the status: ``redis_master`` (the ``host:port``
that connection is on, null while down; behind Sentinel, the master it
found), ``redis_failovers`` (times it came back on another master) and, with
``[redis] min_replicas``, ``redis_replicas``: how many are required, how many
confirmed the last ``WAIT``, how many ``WAIT`` s fell short, and their mean
latency.  They name an address, so they are shown only where the answer
cannot be public: on ``[imd] metrics_listen``, and to a request that came
straight from this machine's loopback (no proxy header).  Through a proxy,
or from another host, ``/healthz`` says ok/down and nothing more.

When the migrator runs as this process's child (``[imd] migrator =
child``, imd.migrator_child), ``"migrator"`` says ``"running"`` or
``"restarting"`` (it died and is started again after a back-off); the
details add ``migrator_pid`` and ``migrator_restarts``.  It does not make
the answer 503 either: the clients of this node are served all the same,
and what the queue does is on ``/metrics`` (``imd_migrator_*``).

With ``[http] auth = jwks:<url>``, ``"jwks"`` says ``"ok"`` or ``"down"``
(the platform's key set cannot be had).  It does not make the answer 503:
held keys keep verifying, and every node shares the same key set, so a
load balancer taking nodes out for it would refuse every user.  The
details add ``jwks_keys`` (held), ``jwks_age`` (seconds since fetched),
``jwks_refetch_wait`` (seconds before an unknown kid may refetch) and
``jwks_problem`` (why it cannot be had).
"""

import typing
from typing import TYPE_CHECKING, Any, Dict, Generator, List, Optional, cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request

from imd.http.resource import JsonResource, JsonResult, direct_from_loopback
from imd.clock import Clock

if TYPE_CHECKING:
    from imd.config import Settings
    from imd.http.jwks import JwksKeys
    from imd.startup import StartupGate
    from imd.stores.mysql import MysqlStore
    from imd.stores.redis import RedisClient

_log = Logger()

MYSQL_TIMEOUT = 5


class HealthApp(typing.Protocol):
    """What ``/healthz`` uses of imd.app.App (which imports this package)."""

    @property
    def settings(self) -> "Settings": ...

    @property
    def redis_client(self) -> "RedisClient": ...

    @property
    def mysql(self) -> "MysqlStore": ...

    @property
    def clock(self) -> Clock: ...

    @property
    def jwks(self) -> "Optional[JwksKeys]": ...

    @property
    def startup(self) -> "StartupGate": ...

    @property
    def migrator_process(self) -> "Optional[ChildStatus]": ...


class ChildStatus(typing.Protocol):
    """What ``/healthz`` reads of imd.migrator_child.MigratorProcess."""

    @property
    def running_child(self) -> bool: ...

    @property
    def pid(self) -> Optional[int]: ...

    @property
    def restarts(self) -> int: ...


class HealthResource(JsonResource):
    methods = ("GET",)

    def __init__(self, app: HealthApp, details: bool = False) -> None:
        """``details``: always add the Redis figures (the private metrics listener)."""
        super().__init__(app.settings.http.cors_origins)
        self._app = app
        self._details = details

    def check_redis(self) -> defer.Deferred:
        return self._app.redis_client.command("PING")

    def check_mysql(self) -> defer.Deferred:
        return self._app.mysql.ping().addTimeout(MYSQL_TIMEOUT, cast(IReactorTime, self._app.clock))

    def redis_figures(self) -> Dict[str, Any]:
        client = self._app.redis_client
        figures: Dict[str, Any] = {"redis_master": client.master_address, "redis_failovers": client.master_changes}
        if client.min_replicas:
            waits = client.wait_figures
            figures["redis_replicas"] = {
                "required": client.min_replicas,
                "acknowledged": waits.acknowledged if waits.acknowledged >= 0 else None,
                "waits": waits.waits, "waits_short": waits.failed,
                "wait_ms_mean": round(waits.seconds * 1000.0 / waits.waits, 3) if waits.waits else None}
        return figures

    @defer.inlineCallbacks
    def render_GET(self, request: Request) -> Generator[defer.Deferred, Any, JsonResult]:
        names = ("redis", "mysql")
        results = yield defer.DeferredList([defer.maybeDeferred(self.check_redis),
                                            defer.maybeDeferred(self.check_mysql)],
                                           consumeErrors=True)
        body: Dict[str, Any] = {}
        problems: List[str] = []
        for name, (ok, value) in zip(names, results):
            body[name] = "ok" if ok else "down"
            if not ok:
                problems.append("%s: %s" % (name, value.getErrorMessage() or value.type.__name__))
        jwks = self._app.jwks
        if jwks is not None:
            body["jwks"] = "ok" if jwks.available else "down"
        child = self._app.migrator_process
        if child is not None:
            body["migrator"] = "running" if child.running_child else "restarting"
        if self._details or direct_from_loopback(request):
            body.update(self.redis_figures())
            if child is not None:
                body.update(migrator_pid=child.pid if child.running_child else None,
                            migrator_restarts=child.restarts)
            if jwks is not None:
                age = jwks.fetch_age()
                body.update(jwks_keys=len(jwks.keys), jwks_age=None if age is None else round(age, 1),
                            jwks_refetch_wait=round(jwks.refetch_wait(), 1), jwks_problem=jwks.problem)
        if self._app.startup.starting:
            # requests under /IM/ are held meanwhile (imd.startup)
            return 503, dict(status="starting", **body)
        if problems:
            _log.warn("health check failed: {problems}", problems="; ".join(problems))
            return 503, body
        return 200, body

"""Where this process can be scraped: the ``[imd] metrics_listen`` listener
(``/metrics`` and ``/healthz``, whatever the roles) and this process's entry
in the Redis process registry (imd.stores.processes), which ``imd-admin top``
reads to find every node and ``/metrics`` to count the WebSocket nodes up.

Every process registers, with the URL of its ``/metrics``: the
``metrics_listen`` one, else the http role's ``[http] listen`` one, else none.
"""

import os
import socket
import typing
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from imd import __version__, endpoints
from imd.errors import StoreUnavailable
from imd.listeners import ListeningService
from imd.stores.processes import ProcessRegistry, process_identity

if TYPE_CHECKING:
    from imd.config import Settings
    from imd.http.health import ChildStatus
    from imd.http.jwks import JwksKeys
    from imd.metrics import Metrics
    from imd.startup import StartupGate
    from imd.stores.deadletter import DeadLetters
    from imd.stores.push import PushStore
    from imd.stores.mysql import MysqlStore
    from imd.stores.redis import RedisClient

_log = Logger()

_ANY_ADDRESS = ("", "0.0.0.0", "::")


def metrics_url(host: str, port: int, secure: bool = False) -> str:
    """``http://HOST:PORT/metrics``; a listener on every address is named by
    this machine's host name."""
    if host in _ANY_ADDRESS:
        host = socket.gethostname()
    elif ":" in host:
        host = "[%s]" % host
    return "%s://%s:%d/metrics" % ("https" if secure else "http", host, port)


def configured_metrics_url(description: str) -> str:
    """The URL of a ``tcp:``/``ssl:`` listener string with a fixed port, else ``""``."""
    try:
        endpoint = endpoints.parse(description)
    except endpoints.EndpointError:
        return ""
    if endpoint.kind not in ("tcp", "tcp6", "ssl") or not endpoint.port:
        return ""
    return metrics_url(endpoint.interface or "", endpoint.port, secure=endpoint.is_tls)


class ListeningPort(typing.Protocol):
    """What is read of a listening port (twisted's IListeningPort is a zope
    interface, which mypy cannot call)."""

    def getHost(self) -> Any: ...   # an IAddress: host and port for tcp and ssl


class ServerEndpoint(typing.Protocol):
    """A stream server endpoint (IStreamServerEndpoint), as this module uses it."""

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred: ...


class _RecordingEndpoint:
    """A server endpoint that reports the port it got (``tcp:0`` in tests)."""

    def __init__(self, endpoint: ServerEndpoint, listening: Callable[[ListeningPort], ListeningPort]) -> None:
        self._endpoint = endpoint
        self._listening = listening

    def listen(self, factory: IProtocolFactory) -> defer.Deferred:
        return self._endpoint.listen(factory).addCallback(self._listening)


class MetricsListener(ListeningService):
    """``[imd] metrics_listen``: fails start-up like any listener when it
    cannot bind; ``url`` is set once it listens."""

    url = ""

    def __init__(self, description: str, endpoint: ServerEndpoint, site: Site, secure: bool = False,
                 on_url: Callable[[str], object] = lambda url: None) -> None:
        super().__init__(description, _RecordingEndpoint(endpoint, self._listening), site, "metrics")
        self.name = "metrics-listener"
        self._secure = secure
        self._on_url = on_url

    def _listening(self, port: ListeningPort) -> ListeningPort:
        address = port.getHost()
        if getattr(address, "port", None):
            self.url = metrics_url(address.host, address.port, self._secure)
            _log.info("metrics on {url}", url=self.url)
            self._on_url(self.url)
        return port


class ProcessAnnouncer(Service):
    """Keeps this process's registry entry alive; removes it on a clean stop."""

    name = "process-announcer"

    def __init__(self, registry: ProcessRegistry, identity: str, info: Callable[[], Dict[str, Any]], ttl: float,
                 clock: IReactorTime) -> None:
        """``info()``: the dict to store, asked at each refresh."""
        self._registry = registry
        self._identity = identity
        self._info = info
        self._ttl = ttl
        self._clock = clock
        self._loop: Optional[task.LoopingCall] = None
        self._connecting: Optional[defer.Deferred] = None
        self._warned = False

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.announce)
        self._loop.clock = self._clock
        self._loop.start(self._ttl / 3.0, now=False)
        # The first entry as soon as Redis is connected (the loop retries
        # if it is not within ttl).
        self._connecting = self._registry.wait_connected(self._ttl)
        self._connecting.addCallbacks(lambda _: self.announce(),
                                      lambda f: f.trap(StoreUnavailable, defer.CancelledError))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        d = self._registry.unregister(self._identity)
        return d.addErrback(lambda f: f.trap(StoreUnavailable))

    def announce(self) -> Optional[defer.Deferred]:
        """Refresh the entry now; a failure is logged once and retried."""
        if not self.running or not self._registry.connected:
            return None
        d = self._registry.register(self._identity, self._info(), self._ttl)
        d.addCallbacks(self._announced, self._failed)
        return d

    def _announced(self, _: object) -> None:
        self._warned = False

    def _failed(self, failure: Failure) -> None:
        failure.trap(StoreUnavailable)
        if not self._warned:
            _log.warn("cannot register this process in redis: {why}", why=failure.getErrorMessage())
            self._warned = True


class ScrapedApp(typing.Protocol):
    """What :func:`scrape_services` uses of imd.app.App (which imports this module),
    the metrics site's (imd.http.build_metrics_site) included."""

    @property
    def settings(self) -> "Settings": ...

    @property
    def redis_client(self) -> "RedisClient": ...

    @property
    def process_registry(self) -> ProcessRegistry: ...

    @property
    def dead_letters(self) -> "DeadLetters": ...

    @property
    def push_store(self) -> "PushStore": ...

    @property
    def mysql(self) -> "MysqlStore": ...

    @property
    def metrics(self) -> "Metrics": ...

    @property
    def node_id(self) -> str: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def jwks(self) -> "Optional[JwksKeys]": ...

    @property
    def startup(self) -> "StartupGate": ...   # /healthz says "starting" meanwhile

    @property
    def migrator_process(self) -> "Optional[ChildStatus]": ...

    def server_endpoint(self, description: str) -> ServerEndpoint: ...


def scrape_services(app: ScrapedApp) -> MultiService:
    """The metrics listener (when ``[imd] metrics_listen`` is set) and the
    announcer of this process, for ``App.build_service``."""
    settings = app.settings
    group = MultiService()
    group.setName("scrape")
    fallback = configured_metrics_url(settings.http.listen) if "http" in settings.imd.roles else ""
    listener: Optional[MetricsListener] = None
    registry = app.process_registry

    def info() -> Dict[str, Any]:
        return {"node": app.node_id, "roles": ",".join(sorted(settings.imd.roles)),
                "metrics": (listener.url if listener is not None else "") or fallback,
                "host": socket.gethostname(), "pid": os.getpid(), "version": __version__}

    announcer = ProcessAnnouncer(registry, process_identity(app.node_id, settings.imd.roles), info,
                                 settings.presence.ttl, app.clock)
    if settings.imd.metrics_listen:
        from imd.http import build_metrics_site
        from imd.tls import is_tls_endpoint
        description = settings.imd.metrics_listen
        listener = MetricsListener(description, app.server_endpoint(description), build_metrics_site(app),
                                   secure=is_tls_endpoint(description),
                                   on_url=lambda url: announcer.announce())
        listener.setServiceParent(group)
    announcer.setServiceParent(group)
    return group

"""The container: builds the stores, handlers and listeners from settings and
hands each its dependencies.  Nothing here does I/O until the service starts.
"""

import itertools
import socket

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString

from imd.auth import TokenVerifier
from imd.handlers.commands import OnlineHandler, PingHandler
from imd.handlers.history import HistoryHandler
from imd.handlers.messages import MessageHandler
from imd.handlers.orders import TakeOrderHandler
from imd.handlers.site import SiteHandler
from imd.metrics import Metrics
from imd.shutdown import ConnectionDrainer, GracefulMultiService
from imd.stores.mysql import MysqlStore
from imd.stores.queue import QueueStore
from imd.stores.presence import PresenceStore
from imd.stores.redis import RedisClient, RedisStore
from imd.tls import TlsReloader, is_tls_endpoint
from imd.transport.bus import NodeBus
from imd.transport.flush import TurnFlusher
from imd.transport.routing import LocalRouter
from imd.transport.sessions import SessionRegistry


def endpoint_port(description):
    """The port of a ``tcp:PORT:...`` / ``ssl:PORT:...`` string, or None."""
    parts = description.split(":")
    for part in parts[1:]:
        if part.startswith("port="):
            part = part[len("port="):]
        if part.isdigit():
            return int(part)
    return None


def default_node_id(settings):
    return "%s:%s" % (socket.gethostname(), endpoint_port(settings.websocket.listen) or 0)


class App:
    # Set once a graceful shutdown has begun: new logins get C + 1001.
    shutting_down = False
    _http_site = None

    def __init__(self, settings, reactor, clock=None):
        self.settings = settings
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.node_id = settings.imd.node_id or default_node_id(settings)
        self._server_id_prefix = "%x" % int(self.clock.seconds() * 1000)
        self._server_ids = itertools.count(1)

        self.flusher = TurnFlusher(self.clock)
        self.redis_client = RedisClient(settings.redis.url, settings.redis.timeout, self.clock,
                                        flusher=self.flusher)
        self.redis = RedisStore(self.redis_client, settings.redis.prefix, settings.redis.dedup_ttl)
        self.verifier = TokenVerifier(self.redis, self.clock, settings.auth.single_use, settings.auth.token_ttl)
        self.sessions = SessionRegistry()
        self.router = LocalRouter(self.sessions)
        self.presence = PresenceStore(self.redis_client, settings.redis.prefix, settings.redis.url.db,
                                      self.node_id, settings.redis.dedup_ttl)
        self.bus = NodeBus(self.presence, settings.redis.url, self.clock, reactor, self._server_id_prefix,
                           settings.presence.ttl, settings.redis.timeout,
                           {"d": self.router.deliver_frame, "k": self.kick_local, "r": self.replace_local},
                           self.local_connections)
        self.mysql = MysqlStore(settings.mysql)
        self.queue = QueueStore(self.redis_client, settings.redis.prefix)
        self.migrator = None
        self.metrics = Metrics(migrator=lambda: self.migrator)
        self.tls = TlsReloader(reactor)

        messages = MessageHandler(self.presence, self.clock, can_route=lambda: self.bus.healthy)
        self.handlers = {
            "t": messages.handle,
            "i": messages.handle,
            "P": PingHandler().handle,
            "O": OnlineHandler(self.presence).handle,
            "T": TakeOrderHandler(self.mysql, settings.orders, self.presence, self.clock).handle,
            "S": SiteHandler(self.presence, self.router, self.clock, settings.site.min_interval,
                             self.next_server_id).handle,
            "H": HistoryHandler(self.queue, self.mysql).handle,
        }

    def local_connections(self):
        """``(uid, conn_id, login score)`` of every connection on this node."""
        for uid in self.sessions.users():
            for session in self.sessions.sessions_of(uid):
                if session.conn_id is not None:
                    yield uid, session.conn_id, session.login_score

    def kick_local(self, uid, reason):
        """Close this node's connections of ``uid`` with C + 4003."""
        from imd.transport.websocket import CLOSE_KICKED
        for session in list(self.sessions.sessions_of(uid)):
            session.close_with(CLOSE_KICKED, reason or "kicked by an operator")

    def replace_local(self, uid, conn_id):
        """A newer device of ``uid`` pushed this node's ``conn_id`` out: C + 4002."""
        from imd.transport.websocket import CLOSE_REPLACED
        session = self.sessions.find(uid, conn_id)
        if session is not None:
            session.close_with(CLOSE_REPLACED, "replaced by a newer device")

    def next_server_id(self):
        """An id for server-made packets (``L``, ``C``), unique per process run."""
        return "%s-%d" % (self._server_id_prefix, next(self._server_ids))

    def websocket_factory(self, secure=False):
        from imd.transport.websocket import ImdServerFactory
        return ImdServerFactory(self, url="wss://localhost" if secure else None)

    def build_service(self):
        """The MultiService twistd runs: Redis first, then the listeners of the roles.

        On SIGTERM the children stop one by one in reverse order of addition
        (imd.shutdown): listeners, then the drainer (C + 1001 to every
        client), then whatever was added before it (migrator, stores).
        """
        top = GracefulMultiService(self.settings.imd.shutdown_grace, self.clock, self.reactor)
        self.redis_client.setServiceParent(top)
        self.mysql.setServiceParent(top)
        if "migrate" in self.settings.imd.roles:
            self.migrator_service().setServiceParent(top)
        if "ws" in self.settings.imd.roles:
            self.bus.setServiceParent(top)
            ConnectionDrainer(self).setServiceParent(top)
            self.websocket_service(self.settings.websocket.listen).setServiceParent(top)
            if self.settings.websocket.tls_listen:
                self.websocket_service(self.settings.websocket.tls_listen, secure=True).setServiceParent(top)
        if "http" in self.settings.imd.roles:
            for description in (self.settings.http.listen, self.settings.http.tls_listen):
                if description:
                    self.http_service(description).setServiceParent(top)
        # SIGHUP reloads the certificates of every ssl: listener built through
        # server_endpoint (and is harmless without any: see imd.tls).
        self.tls.setServiceParent(top)
        return top

    def server_endpoint(self, description):
        """The endpoint for a listener string; ``ssl:`` ones reload their certificate on SIGHUP."""
        if is_tls_endpoint(description):
            return self.tls.endpoint(description)
        return serverFromString(self.reactor, description)

    def http_site(self):
        """The one Site of the http role (token, page, /healthz, /metrics)."""
        if self._http_site is None:
            from imd.http import build_site
            self._http_site = build_site(self)
        return self._http_site

    def http_service(self, description):
        return StreamServerEndpointService(self.server_endpoint(description), self.http_site())

    def migrator_service(self):
        """The migrate role (it uses ``self.mysql``, started by the caller):
        its own Redis connection, so its batches never queue behind client
        traffic, and the :class:`imd.migrator.Migrator`."""
        from imd.migrator import Migrator
        redis = self.settings.redis
        client = RedisClient(redis.url, redis.timeout, self.clock)
        self.migrator = Migrator(QueueStore(client, redis.prefix), self.mysql, self.settings.migrate, self.clock)
        # Stopped in order: the migrator finishes its batch before its Redis
        # connection closes.
        group = GracefulMultiService(self.settings.imd.shutdown_grace, self.clock)
        client.setServiceParent(group)
        self.migrator.setServiceParent(group)
        return group

    def websocket_service(self, description, secure=False):
        endpoint = self.server_endpoint(description)
        return StreamServerEndpointService(endpoint, self.websocket_factory(secure))

"""The container: builds the stores, handlers and listeners from settings and
hands each its dependencies.  Nothing here does I/O until the service starts.
"""

import itertools
import socket

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString

from imd.auth import TokenVerifier
from imd.handlers.commands import PingHandler
from imd.handlers.messages import MessageHandler
from imd.stores.redis import RedisClient, RedisStore
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
    def __init__(self, settings, reactor, clock=None):
        self.settings = settings
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.node_id = settings.imd.node_id or default_node_id(settings)
        self._server_id_prefix = "%x" % int(self.clock.seconds() * 1000)
        self._server_ids = itertools.count(1)

        self.redis_client = RedisClient(settings.redis.url, settings.redis.timeout, self.clock)
        self.redis = RedisStore(self.redis_client, settings.redis.prefix, settings.redis.dedup_ttl)
        self.verifier = TokenVerifier(self.redis, self.clock, settings.auth.single_use)
        self.sessions = SessionRegistry(settings.websocket.max_devices)
        self.router = LocalRouter(self.sessions)

        messages = MessageHandler(self.redis, self.clock)
        self.handlers = {
            "t": messages.handle,
            "i": messages.handle,
            "P": PingHandler().handle,
        }

    def next_server_id(self):
        """An id for server-made packets (``L``, ``C``), unique per process run."""
        return "%s-%d" % (self._server_id_prefix, next(self._server_ids))

    def websocket_factory(self, secure=False):
        from imd.transport.websocket import ImdServerFactory
        return ImdServerFactory(self, url="wss://localhost" if secure else None)

    def build_service(self):
        """The MultiService twistd runs: Redis first, then the listeners of the roles."""
        top = MultiService()
        self.redis_client.setServiceParent(top)
        if "ws" in self.settings.imd.roles:
            self.websocket_service(self.settings.websocket.listen).setServiceParent(top)
            if self.settings.websocket.tls_listen:
                self.websocket_service(self.settings.websocket.tls_listen, secure=True).setServiceParent(top)
        return top

    def websocket_service(self, description, secure=False):
        endpoint = serverFromString(self.reactor, description)
        return StreamServerEndpointService(endpoint, self.websocket_factory(secure))

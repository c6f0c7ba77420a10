"""The node's link to the other nodes: its Redis subscription and heartbeat.

Each node subscribes to its own channel (see imd.stores.presence) on a
connection of its own (a subscribed connection can run nothing else) and
re-subscribes by itself after losing it; while it is not subscribed the node
is not ``healthy`` and refuses logins and messages rather than ack what it
could not route.  The heartbeat keeps ``node:<node_id>`` alive so that this
node's users read as online.
"""

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger

_log = Logger()


class _SubscriberProtocol(txredisapi.SubscriberProtocol):

    def connectionMade(self):
        d = defer.maybeDeferred(super().connectionMade)
        d.addCallback(lambda _: self.subscribe(self.bus.presence.channel))
        d.addCallbacks(lambda _: self.bus._subscribed(self), self._failed)
        return d

    def _failed(self, failure):
        _log.warn("redis subscription failed: {why}", why=failure.getErrorMessage())
        self.transport.abortConnection()

    def messageReceived(self, pattern, channel, message):
        self.bus.frame_received(message)

    def connectionLost(self, why):
        self.bus._unsubscribed(self)
        super().connectionLost(why)


class _SubscriberFactory(protocol.Factory):
    def __init__(self, bus):
        self.bus = bus
        self.isLazy = True

    def buildProtocol(self, addr):
        address = self.bus.address
        p = _SubscriberProtocol(replyTimeout=None, password=address.password, convertNumbers=False)
        p.factory = self
        p.bus = self.bus
        return p

    # txredisapi calls these when AUTH fails
    def stopTrying(self):
        pass

    def connectionError(self, why):
        _log.error("redis subscription: {why}", why=why)


class NodeBus(Service):
    """Subscription + heartbeat of one node; hands frames to ``deliver``,
    ``kick`` and ``replace`` (callables of the transport)."""

    def __init__(self, presence, address, clock, reactor, run_id, ttl, timeout, handlers,
                 local_connections=lambda: ()):
        self.presence = presence
        self.address = address
        self._clock = clock
        self._reactor = reactor
        self._run_id = run_id
        self._ttl = ttl
        self._timeout = timeout
        self._handlers = handlers  # {"d": fn(uid, rest), "k": ..., "r": ...}
        self._local_connections = local_connections  # -> [(uid, conn_id, score)]
        self._subscriber = None
        self._started_node = False
        self._registered = False
        self._service = None
        self._beat = None

    @property
    def healthy(self):
        """Subscribed, and since then this node's heartbeat and connections
        are registered in Redis (its users read online)."""
        return self._subscriber is not None and self._registered

    def startService(self):
        super().startService()
        endpoint = TCP4ClientEndpoint(self._reactor, self.address.host, self.address.port,
                                      timeout=self._timeout)
        self._service = ClientService(endpoint, _SubscriberFactory(self),
                                      retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=5.0),
                                      clock=self._clock)
        self._service.startService()
        self._beat = task.LoopingCall(self._heartbeat)
        self._beat.clock = self._clock
        self._beat.start(max(0.2, self._ttl / 3.0), now=True)

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self._service is not None:
            yield self._service.stopService()
        try:
            yield self.presence.stop_node()
        except Exception:
            pass

    def _heartbeat(self):
        if not self.presence.client.connected:
            return None  # (re)connecting: _subscribed registers as soon as it can
        if self._subscriber is not None and not self._registered:
            d = self._register()
        elif self._started_node:
            d = self.presence.heartbeat(self._run_id, self._ttl)
        else:
            return None
        return d.addErrback(lambda f: _log.warn("node heartbeat failed: {why}", why=f.getErrorMessage()))

    def _subscribed(self, subscriber):
        _log.info("subscribed to {channel}", channel=self.presence.channel)
        self._subscriber = subscriber
        self._registered = False
        d = self.presence.client.wait_connected()
        d.addCallback(lambda _: self._register())
        d.addErrback(lambda f: _log.warn("registering this node failed: {why}", why=f.getErrorMessage()))

    @defer.inlineCallbacks
    def _register(self):
        """Beat at once (Redis may have restarted and lost node:<id>), then say
        again who is connected here, in case it lost dev:<uid> as well."""
        if self._started_node:
            yield self.presence.heartbeat(self._run_id, self._ttl)
        else:
            yield self.presence.start_node(self._run_id, self._ttl)
            self._started_node = True
        connections = list(self._local_connections())
        if connections:
            yield self.presence.reassert(connections)
        self._registered = True
        _log.info("node {node} registered in redis: taking logins and messages", node=self.presence.node_id)

    def _unsubscribed(self, subscriber):
        if self._subscriber is subscriber:
            _log.warn("lost the redis subscription of {channel}; re-subscribing", channel=self.presence.channel)
            self._subscriber = None

    def drop_subscription(self):
        """Cut the subscribed connection (fault tests); it comes back by itself."""
        if self._subscriber is not None:
            subscriber, self._subscriber = self._subscriber, None
            subscriber.transport.abortConnection()

    def frame_received(self, frame):
        if isinstance(frame, bytes):
            frame = frame.decode("utf-8")
        try:
            kind, uid, rest = frame.split(" ", 2)
            handler = self._handlers[kind]
            uid = int(uid)
        except (ValueError, KeyError):
            _log.warn("ignoring a malformed bus frame: {frame!r}", frame=frame[:80])
            return
        try:
            handler(uid, rest)
        except Exception:
            _log.failure("handling a bus frame")

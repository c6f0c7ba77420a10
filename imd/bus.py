"""The node's link to the other nodes: its Redis subscription and heartbeat.

Each node subscribes to its own channel on a connection of its own
(imd.stores.redis.RedisSubscriber) and subscribes again by itself after
losing it; while it is not subscribed the node is not ``healthy`` and
refuses logins and messages rather than ack what it could not route.  The
heartbeat keeps the node in ``nodes`` so that its users read as online, and
after every (re)subscription the node registers again: Redis may have
restarted and lost its heartbeat and its connections.
"""

from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from imd.stores.redis import RedisSubscriber

if TYPE_CHECKING:
    from imd.stores.presence import PresenceStore

_log = Logger()


class NodeBus(Service):
    """Subscription + heartbeat of one node; frames go to ``on_frame``."""

    name = "node-bus"

    def __init__(self, presence: "PresenceStore", subscriber_factory: Callable[..., RedisSubscriber],
                 clock: IReactorTime,
                 run_id: str, ttl: float, on_frame: Callable[[Any], None],
                 local_connections: Callable[[], Iterable[Tuple[int, str, int]]] = lambda: ()) -> None:
        self.presence = presence
        self._clock = clock
        self._run_id = run_id
        self._ttl = ttl
        self._local_connections = local_connections
        self._subscriber = subscriber_factory(channels=[presence.channel], on_message=on_frame, raw=True,
                                              on_subscribed=self._subscribed, on_lost=self._unsubscribed)
        self._started_node = False
        self._registered = False
        self._stopping = False
        self._beat: Optional[task.LoopingCall] = None

    @property
    def healthy(self) -> bool:
        """Subscribed, and since then this node's heartbeat and connections
        are registered in Redis (its users read online)."""
        return self._subscriber.subscribed and self._registered

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._subscriber.startService()
        self._beat = task.LoopingCall(self._heartbeat)
        self._beat.clock = self._clock
        self._beat.start(max(0.2, self._ttl / 3.0), now=True)

    # a Deferred; it yields the subscriber's Optional[Deferred], which
    # twisted's annotation of inlineCallbacks does not allow
    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        self._stopping = True
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        yield self._subscriber.stopService()
        try:
            yield self.presence.stop_node()
        except Exception as e:
            _log.info("node {node} not removed from redis on stop ({why}); it expires by itself",
                      node=self.presence.node_id, why=str(e))

    def _heartbeat(self) -> Optional[defer.Deferred]:
        if not self.presence.connected:
            return None  # (re)connecting: _subscribed registers as soon as it can
        if self._subscriber.subscribed and not self._registered:
            d = self._register()
        elif self._started_node:
            d = self.presence.heartbeat(self._ttl)
        else:
            return None
        return d.addErrback(lambda f: _log.warn("node heartbeat failed: {why}", why=f.getErrorMessage()))

    def _subscribed(self) -> None:
        _log.info("subscribed to {channel}", channel=self.presence.channel)
        self._registered = False
        d = self.presence.wait_connected()
        d.addCallback(lambda _: self._register())
        d.addErrback(lambda f: _log.warn("registering this node failed: {why}", why=f.getErrorMessage()))

    @defer.inlineCallbacks
    def _register(self) -> Generator[defer.Deferred, Any, None]:
        """Beat at once (Redis may have restarted and lost this node), then
        say again who is connected here, in case it lost ``dev:<uid>`` too."""
        if self._started_node:
            yield self.presence.heartbeat(self._ttl)
        else:
            yield self.presence.start_node(self._run_id, self._ttl)
            self._started_node = True
        connections = list(self._local_connections())
        if connections:
            yield self.presence.reassert(connections)
        if self._subscriber.subscribed:
            self._registered = True
            _log.info("node {node} registered in redis: taking logins and messages",
                      node=self.presence.node_id)

    def _unsubscribed(self) -> None:
        self._registered = False
        if self._stopping or not self.running:
            return  # a planned stop
        _log.warn("lost the redis subscription of {channel}; re-subscribing", channel=self.presence.channel)

    def drop_subscription(self) -> None:
        """Cut the subscribed connection (fault tests); it comes back by itself."""
        self._subscriber.drop_connection()

"""Presence and cross-node routing, kept in Redis.

Keys (imd.stores.keys): ``dev:<uid>``, ``nodes``, ``nodeusers:<node>``;
``URS:<uid>`` is read by the online check.

- ``dev:<uid>``: sorted set of the user's live connections, member
  ``"<node_id> <conn_id>"``, score = login time (µs).  Its size is what
  ``[websocket] max_devices`` limits, across all nodes.
- ``nodes``: sorted set of node ids, score = when the node's heartbeat
  expires (Unix ms), renewed every ``ttl/3`` seconds.  A user is online while
  one of their connections is on a node whose heartbeat has not expired, so
  the users of a node that dies read as offline within ``[presence] ttl``
  without any clean-up.
- ``nodeusers:<node_id>``: the uids with connections on that node, so that a
  node restarting under the same id can drop what its previous life left.

Routing: every node subscribes to one channel of its own
(:meth:`Keys.channel`).  :meth:`PresenceStore.route` publishes packets to
every *other* node holding a connection of their recipients; the frames are
those of :mod:`imd.busframes`.
"""

from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import Arg, RedisClient, RedisStore, Script

ROUTE = Script.load("route")
ROUTE_ROOM = Script.load("route_room")
LOGIN = Script.load("login")
LOGOUT = Script.load("logout")
NODE_START = Script.load("node_start")
HEARTBEAT = Script.load("heartbeat")
REASSERT = Script.load("reassert")
ONLINE = Script.load("online")
ONLINE_MANY = Script.load("online_many")
KICK = Script.load("kick")


class PresenceStore(RedisStore):
    """Connections, node heartbeats, online checks, and publishing to other nodes."""

    def __init__(self, client: RedisClient, keys: Keys, node_id: str) -> None:
        self._client = client
        self.keys = keys
        self.node_id = node_id
        self.channel = keys.channel(node_id)

    # --- routing ---------------------------------------------------------------

    def route(self, deliveries: Sequence[Tuple[int, bytes]]) -> Deferred:
        """Publish each ``(uid, packet)`` to the other nodes holding a connection of ``uid``."""
        keys = self.keys
        args: List[Any] = [self.node_id, keys.channel_prefix]
        for uid, packet in deliveries:
            args.append(uid)
            args.append(packet)
        return self._client.run(ROUTE, [keys.devices(uid) for uid, _ in deliveries], args)

    def route_room(self, packets: Sequence[Tuple[Sequence[int], bytes]]) -> Deferred:
        """Publish each room packet ``(uids, packet)`` once to every other
        node holding a connection of any of its ``uids``, naming those it
        holds (a ``g`` frame, imd.busframes); all in one script."""
        keys = self.keys
        index: Dict[int, int] = {}
        tail: List[Union[str, bytes, int]] = []
        for uids, packet in packets:
            tail.append(packet)
            tail.append(len(uids))
            for uid in uids:
                number = index.get(uid)
                if number is None:
                    number = index[uid] = len(index) + 1
                tail.append(number)
        head: List[Union[str, bytes, int]] = [self.node_id, keys.channel_prefix]
        return self._client.run(ROUTE_ROOM, [keys.devices(uid) for uid in index], head + list(index) + tail)

    def kick(self, uid: int, reason: str) -> Deferred:
        """Tell every node holding a connection of ``uid``; fires with how many."""
        d = self._client.run(KICK, [self.keys.devices(uid)], [uid, reason, self.keys.channel_prefix])
        return d.addCallback(int)

    # --- connections -------------------------------------------------------------

    def login(self, uid: int, conn_id: str, score: int, max_devices: int) -> Deferred:
        """Register a connection; fires with the local conn ids it replaces."""
        keys = self.keys
        d = self._client.run(LOGIN, [keys.devices(uid), keys.node_users(self.node_id)],
                            ["%s %s" % (self.node_id, conn_id), score, max_devices, self.node_id,
                             keys.channel_prefix, uid])
        if self._client.min_replicas:
            d.addCallback(self._replicated_login, uid, conn_id)
        return d

    def _replicated_login(self, replaced: Any, uid: int, conn_id: str) -> Deferred:
        """[redis] min_replicas: the login waits for the replicas.  The WAIT
        after this write also covers the token id claimed just before on the
        same connection, so a failover cannot let a single-use token in
        twice.  A login refused for want of replicas takes its entry back."""
        def undo(failure: Any) -> Any:
            self.logout(uid, conn_id).addErrback(lambda f: None)
            return failure
        return self._client.replicated(replaced).addErrback(undo)

    def logout(self, uid: int, conn_id: str) -> Deferred:
        keys = self.keys
        return self._client.run(LOGOUT, [keys.devices(uid), keys.node_users(self.node_id)],
                               ["%s %s" % (self.node_id, conn_id), self.node_id, uid])

    def reassert(self, connections: Iterable[Tuple[int, str, int]]) -> Deferred:
        """Register again ``[(uid, conn_id, score)]`` of this node, e.g. after
        Redis restarted without its data."""
        keys = self.keys
        dev_keys = [keys.node_users(self.node_id)]
        args: List[Arg] = [self.node_id]   # then uid, conn_id, score per connection
        for uid, conn_id, score in connections:
            dev_keys.append(keys.devices(uid))
            args.extend((uid, conn_id, score))
        return self._client.run(REASSERT, dev_keys, args)

    # --- the node ------------------------------------------------------------------

    @defer.inlineCallbacks
    def start_node(self, run_id: str, ttl: float) -> Any:
        """Forget an earlier run's connections of this node id, then beat."""
        keys = self.keys
        members = yield self._client.command("SMEMBERS", keys.node_users(self.node_id))
        uids = [int(m) for m in members or ()]
        yield self._client.run(NODE_START,
                              [keys.node_users(self.node_id), keys.nodes] + [keys.devices(u) for u in uids],
                              [self.node_id, run_id, int(ttl * 1000)] + uids)

    def heartbeat(self, ttl: float) -> Deferred:
        return self._client.run(HEARTBEAT, [self.keys.nodes], [self.node_id, int(ttl * 1000)])

    def stop_node(self) -> Deferred:
        return self._client.command("ZREM", self.keys.nodes, self.node_id)

    # --- online ----------------------------------------------------------------------

    def is_online(self, asker: int, uid: int) -> Deferred:
        """True/False, or None when ``uid`` is neither ``asker`` nor a friend."""
        keys = self.keys
        d = self._client.run(ONLINE, [keys.friends(asker), keys.devices(uid), keys.nodes], [asker, uid])
        return d.addCallback(_online_answer)

    def online_many(self, uids: Sequence[int]) -> Deferred:
        """``{uid: bool}`` for every uid, in one round trip (no friendship check)."""
        keys = self.keys
        d = self._client.run(ONLINE_MANY, [keys.nodes] + [keys.devices(u) for u in uids], [])
        return d.addCallback(lambda answers: {u: bool(int(a)) for u, a in zip(uids, answers or ())})

    def connection_count(self, uid: int) -> Deferred:
        """How many connections of ``uid`` are registered, on every node."""
        return self._client.command("ZCARD", self.keys.devices(uid)).addCallback(int)


def _online_answer(reply: Any) -> Any:
    reply = int(reply)
    return None if reply < 0 else bool(reply)

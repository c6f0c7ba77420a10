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

from typing import Any, Iterable, List, Sequence, Tuple

from twisted.internet import defer
from twisted.internet.defer import Deferred

from imd import busframes
from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, Script

_NODE_OF = busframes.LUA + """
local function node_of(member)
  return string.sub(member, 1, string.find(member, ' ', 1, true) - 1)
end
"""

# KEYS: dev:<uid> of each packet.  ARGV: own node, channel prefix, then a
# (uid, packet) pair per key.  Publishes each packet once to every other
# node holding a connection of its user.
ROUTE = Script(_NODE_OF + """
for i = 1, #KEYS do
  local seen = {}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    local node = node_of(m)
    if node ~= ARGV[1] and not seen[node] then
      seen[node] = true
      redis.call('PUBLISH', ARGV[2] .. node, frame('d', ARGV[2 * i + 1], ARGV[2 * i + 2]))
    end
  end
end
return 1
""", "route")

# KEYS: dev:<uid>, nodeusers:<node>
# ARGV: member, score, max devices, own node, channel prefix, uid
# Returns the conn ids on this node that the new login pushes out; the
# other nodes hear of theirs through an 'r' frame.
LOGIN = Script(_NODE_OF + """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[6])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
local here = {}
if extra > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, extra - 1)) do
    redis.call('ZREM', KEYS[1], m)
    local node = node_of(m)
    local conn = string.sub(m, #node + 2)
    if node == ARGV[4] then
      table.insert(here, conn)
    else
      redis.call('PUBLISH', ARGV[5] .. node, frame('r', ARGV[6], conn))
    end
  end
end
return here
""", "login")

# KEYS: dev:<uid>, nodeusers:<node>; ARGV: member, own node, uid
LOGOUT = Script("""
redis.call('ZREM', KEYS[1], ARGV[1])
local mine = ARGV[2] .. ' '
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, #mine) == mine then return 0 end
end
redis.call('SREM', KEYS[2], ARGV[3])
return 1
""", "logout")

# KEYS: nodeusers:<node>, nodes, then dev:<uid> of each uid in ARGV[5..]
# ARGV: own node, this run's conn-id prefix, heartbeat ms, (unused), uids
# Drops the connections an earlier run of this node left behind (they have
# another conn-id prefix), then beats.
NODE_START = Script("""
local mine = ARGV[1] .. ' '
local current = mine .. ARGV[2]
for i = 3, #KEYS do
  local left = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    if string.sub(m, 1, #mine) == mine then
      if string.sub(m, 1, #current) == current then
        left = left + 1
      else
        redis.call('ZREM', KEYS[i], m)
      end
    end
  end
  if left == 0 then redis.call('SREM', KEYS[1], ARGV[i + 2]) end
end
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[3]), ARGV[1])
return 1
""", "node_start")

# KEYS: nodes.  ARGV: own node, heartbeat ms.  Also forgets nodes silent for a day.
HEARTBEAT = Script("""
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - 86400000)
return 1
""", "heartbeat")

# KEYS: nodeusers:<node>, then dev:<uid> of each connection
# ARGV: own node, then (uid, conn id, score) per dev key
# Re-registers this node's live connections (after Redis lost them).
REASSERT = Script("""
for i = 2, #KEYS do
  local j = 3 * (i - 2) + 2
  redis.call('ZADD', KEYS[i], ARGV[j + 2], ARGV[1] .. ' ' .. ARGV[j + 1])
  redis.call('SADD', KEYS[1], ARGV[j])
end
return 1
""", "reassert")

# Lua: is any connection of dev key ``key`` on a node whose heartbeat lives?
_ANY_LIVE = _NODE_OF + """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local function any_live(key, nodes)
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local until_ms = redis.call('ZSCORE', nodes, node_of(m))
    if until_ms and tonumber(until_ms) > now_ms then return true end
  end
  return false
end
"""

# KEYS: URS:<asker>, dev:<uid>, nodes; ARGV: asker, uid
ONLINE = Script(_ANY_LIVE + """
if ARGV[1] ~= ARGV[2] and redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return -1 end
if any_live(KEYS[2], KEYS[3]) then return 1 end
return 0
""", "online")

# KEYS: nodes, then dev:<uid> of each uid asked about.  One 0/1 per dev key.
ONLINE_MANY = Script(_ANY_LIVE + """
local answers = {}
for i = 2, #KEYS do
  answers[i - 1] = any_live(KEYS[i], KEYS[1]) and 1 or 0
end
return answers
""", "online_many")

# KEYS: dev:<uid>; ARGV: uid, reason, channel prefix.  How many nodes were told.
KICK = Script(_NODE_OF + """
local seen, count = {}, 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local node = node_of(m)
  if not seen[node] then
    seen[node] = true
    count = count + 1
    redis.call('PUBLISH', ARGV[3] .. node, frame('k', ARGV[1], ARGV[2]))
  end
end
return count
""", "kick")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class PresenceStore:
    """Connections, node heartbeats, online checks, and publishing to other nodes."""

    def __init__(self, client: RedisClient, keys: Keys, node_id: str) -> None:
        self.client = client
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
        return self.client.run(ROUTE, [keys.devices(uid) for uid, _ in deliveries], args)

    def kick(self, uid: int, reason: str) -> Deferred:
        """Tell every node holding a connection of ``uid``; fires with how many."""
        d = self.client.run(KICK, [self.keys.devices(uid)], [uid, reason, self.keys.channel_prefix])
        return d.addCallback(int)

    # --- connections -------------------------------------------------------------

    def login(self, uid: int, conn_id: str, score: int, max_devices: int) -> Deferred:
        """Register a connection; fires with the local conn ids it replaces."""
        keys = self.keys
        d = self.client.run(LOGIN, [keys.devices(uid), keys.node_users(self.node_id)],
                            ["%s %s" % (self.node_id, conn_id), score, max_devices, self.node_id,
                             keys.channel_prefix, uid])
        if self.client.min_replicas:
            d.addCallback(self._replicated_login, uid, conn_id)
        return d.addCallback(lambda replaced: [_text(c) for c in replaced or ()])

    def _replicated_login(self, replaced: Any, uid: int, conn_id: str) -> Deferred:
        """[redis] min_replicas: the login waits for the replicas.  The WAIT
        after this write also covers the token id claimed just before on the
        same connection, so a failover cannot let a single-use token in
        twice.  A login refused for want of replicas takes its entry back."""
        def undo(failure: Any) -> Any:
            self.logout(uid, conn_id).addErrback(lambda f: None)
            return failure
        return self.client.replicated(replaced).addErrback(undo)

    def logout(self, uid: int, conn_id: str) -> Deferred:
        keys = self.keys
        return self.client.run(LOGOUT, [keys.devices(uid), keys.node_users(self.node_id)],
                               ["%s %s" % (self.node_id, conn_id), self.node_id, uid])

    def reassert(self, connections: Iterable[Tuple[int, str, int]]) -> Deferred:
        """Register again ``[(uid, conn_id, score)]`` of this node, e.g. after
        Redis restarted without its data."""
        keys = self.keys
        dev_keys, args = [keys.node_users(self.node_id)], [self.node_id]
        for uid, conn_id, score in connections:
            dev_keys.append(keys.devices(uid))
            args.extend((uid, conn_id, score))
        return self.client.run(REASSERT, dev_keys, args)

    # --- the node ------------------------------------------------------------------

    @defer.inlineCallbacks
    def start_node(self, run_id: str, ttl: float) -> Any:
        """Forget an earlier run's connections of this node id, then beat."""
        keys = self.keys
        members = yield self.client.command("SMEMBERS", keys.node_users(self.node_id))
        uids = [int(m) for m in members or ()]
        yield self.client.run(NODE_START,
                              [keys.node_users(self.node_id), keys.nodes] + [keys.devices(u) for u in uids],
                              [self.node_id, run_id, int(ttl * 1000), ""] + uids)

    def heartbeat(self, ttl: float) -> Deferred:
        return self.client.run(HEARTBEAT, [self.keys.nodes], [self.node_id, int(ttl * 1000)])

    def stop_node(self) -> Deferred:
        return self.client.command("ZREM", self.keys.nodes, self.node_id)

    # --- online ----------------------------------------------------------------------

    def is_online(self, asker: int, uid: int) -> Deferred:
        """True/False, or None when ``uid`` is neither ``asker`` nor a friend."""
        keys = self.keys
        d = self.client.run(ONLINE, [keys.friends(asker), keys.devices(uid), keys.nodes], [asker, uid])
        return d.addCallback(_online_answer)

    def online_many(self, uids: Sequence[int]) -> Deferred:
        """``{uid: bool}`` for every uid, in one round trip (no friendship check)."""
        keys = self.keys
        d = self.client.run(ONLINE_MANY, [keys.nodes] + [keys.devices(u) for u in uids], [])
        return d.addCallback(lambda answers: {u: bool(int(a)) for u, a in zip(uids, answers or ())})

    def connection_count(self, uid: int) -> Deferred:
        """How many connections of ``uid`` are registered, on every node."""
        return self.client.command("ZCARD", self.keys.devices(uid)).addCallback(int)

    def live_nodes(self) -> Deferred:
        """The ids of nodes whose heartbeat has not expired."""
        d = self.client.command("TIME")

        def ask(now: Any) -> Deferred:
            ms = int(now[0]) * 1000 + int(now[1]) // 1000
            return self.client.command("ZRANGEBYSCORE", self.keys.nodes, "(%d" % ms, "+inf")
        return d.addCallback(ask).addCallback(lambda ids: [_text(i) for i in ids or ()])


def _online_answer(reply: Any) -> Any:
    reply = int(reply)
    return None if reply < 0 else bool(reply)

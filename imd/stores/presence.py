"""Presence and cross-node routing, kept in Redis.

Keys (after ``[redis] prefix``):

- ``dev:<uid>``: sorted set of the user's live connections, member
  ``"<node_id> <conn_id>"``, score = login time (µs).  Its size is what
  ``[websocket] max_devices`` limits, across all nodes.
- ``node:<node_id>``: a node's heartbeat, refreshed every ``ttl/3`` seconds
  with an expiry of ``[presence] ttl``.  A user is online while one of their
  connections is on a node whose heartbeat exists, so the users of a node
  that dies read as offline within ``ttl`` without any clean-up.
- ``nodeusers:<node_id>``: the uids with connections on that node, so that a
  node restarting under the same id can drop what its previous life left.
- ``taken:<order>``: the courier who took an order (makes ``T`` idempotent).
- ``geo:couriers`` (GEO set) and ``site:<uid>`` (hash lon, lat, ts): the
  latest position of each courier.

Routing: every node subscribes to one channel of its own,
``<prefix>imd:<db>:node:<node_id>``.  A script that stores a message also
looks up the recipient's connections and PUBLISHes the packet to each other
node holding one, in the same round trip; the local copy is delivered by the
node itself.  Frames on a channel: ``d <uid> <packet>`` deliver,
``k <uid> <reason>`` kick, ``r <uid> <conn_id>`` replaced by a newer device.
"""

from twisted.internet import defer

from imd.stores.redis import STORE_RESULTS

# Lua shared by the scripts below: publish ``frame`` to every other node
# holding a connection of ``uid``.
_ROUTE = """
local function node_of(member)
  return string.sub(member, 1, string.find(member, ' ', 1, true) - 1)
end
local function route(prefix, chan_prefix, self_node, uid, frame)
  local seen = {}
  for _, m in ipairs(redis.call('ZRANGE', prefix .. 'dev:' .. uid, 0, -1)) do
    local node = node_of(m)
    if node ~= self_node and not seen[node] then
      seen[node] = true
      redis.call('PUBLISH', chan_prefix .. node, frame)
    end
  end
end
"""

# KEYS: URS:<from>, dedup:<from>:<id>, MQ
# ARGV: to, packet, dedup ttl, prefix, channel prefix, own node
STORE_MESSAGE = _ROUTE + """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then return 2 end
redis.call('LPUSH', KEYS[3], ARGV[2])
route(ARGV[4], ARGV[5], ARGV[6], ARGV[1], 'd ' .. ARGV[1] .. ' ' .. ARGV[2])
return 1
"""

# KEYS: dev:<uid>, nodeusers:<node>
# ARGV: member, score, max devices, own node, channel prefix, uid
# Returns the conn ids on this node that the new login pushes out.
LOGIN = _ROUTE + """
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
      redis.call('PUBLISH', ARGV[5] .. node, 'r ' .. ARGV[6] .. ' ' .. conn)
    end
  end
end
return here
"""

# KEYS: dev:<uid>, nodeusers:<node>; ARGV: member, own node, uid
LOGOUT = """
redis.call('ZREM', KEYS[1], ARGV[1])
local mine = ARGV[2] .. ' '
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, #mine) == mine then return 0 end
end
redis.call('SREM', KEYS[2], ARGV[3])
return 1
"""

# KEYS: nodeusers:<node>, node:<node>
# ARGV: own node, prefix, this run's conn-id prefix, heartbeat ms
# Drops the connections an earlier run of this node left behind (they have
# another conn-id prefix), then beats.
NODE_START = """
local mine = ARGV[1] .. ' '
local current = mine .. ARGV[3]
for _, uid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[2] .. 'dev:' .. uid
  local left = 0
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if string.sub(m, 1, #mine) == mine then
      if string.sub(m, 1, #current) == current then
        left = left + 1
      else
        redis.call('ZREM', key, m)
      end
    end
  end
  if left == 0 then redis.call('SREM', KEYS[1], uid) end
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
"""

# KEYS: nodeusers:<node>; ARGV: prefix, own node, then uid, conn id, score triples
# Re-registers this node's live connections (after Redis lost them).
REASSERT = """
for i = 3, #ARGV, 3 do
  redis.call('ZADD', ARGV[1] .. 'dev:' .. ARGV[i], ARGV[i + 2], ARGV[2] .. ' ' .. ARGV[i + 1])
  redis.call('SADD', KEYS[1], ARGV[i])
end
return 1
"""

# KEYS: URS:<asker>, dev:<uid>; ARGV: asker, uid, prefix
ONLINE = """
if ARGV[1] ~= ARGV[2] and redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return -1 end
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local node = string.sub(m, 1, string.find(m, ' ', 1, true) - 1)
  if redis.call('EXISTS', ARGV[3] .. 'node:' .. node) == 1 then return 1 end
end
return 0
"""

# KEYS: dev:<uid>; ARGV: uid, reason, channel prefix
KICK = """
local seen, count = {}, 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local node = string.sub(m, 1, string.find(m, ' ', 1, true) - 1)
  if not seen[node] then
    seen[node] = true
    count = count + 1
    redis.call('PUBLISH', ARGV[3] .. node, 'k ' .. ARGV[1] .. ' ' .. ARGV[2])
  end
end
return count
"""

# KEYS: URS:<courier>, URS:<customer>, taken:<order>, MQ
# ARGV: courier, customer, s packet, prefix, channel prefix, own node, taken ttl
TAKE_ORDER = _ROUTE + """
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[7]) then return 0 end
redis.call('LPUSH', KEYS[4], ARGV[3])
route(ARGV[4], ARGV[5], ARGV[6], ARGV[2], 'd ' .. ARGV[2] .. ' ' .. ARGV[3])
return 1
"""

# KEYS: geo:couriers, site:<uid>; ARGV: uid, longitude, latitude, ts
RECORD_SITE = """
redis.call('GEOADD', KEYS[1], ARGV[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'longitude', ARGV[2], 'latitude', ARGV[3], 'ts', ARGV[4])
return 1
"""

# KEYS: URS:<courier>; ARGV: S packet, prefix, channel prefix, own node
# Returns the courier's friends (the caller delivers to its own connections).
PUSH_SITE = _ROUTE + """
local friends = redis.call('SMEMBERS', KEYS[1])
for _, uid in ipairs(friends) do
  route(ARGV[2], ARGV[3], ARGV[4], uid, 'd ' .. uid .. ' ' .. ARGV[1])
end
return friends
"""

TAKEN_TTL = 30 * 86400


def channel_prefix(prefix, db):
    """Pub/sub channels are not per-db in Redis: the db index keeps installations apart."""
    return "%simd:%d:node:" % (prefix, db)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


class PresenceStore:
    """Connections, presence, routing scripts and courier positions."""

    def __init__(self, client, prefix, db, node_id, dedup_ttl=3600):
        self.client = client
        self.dedup_ttl = dedup_ttl
        self.prefix = prefix
        self.node_id = node_id
        self.channel_prefix = channel_prefix(prefix, db)
        self.channel = self.channel_prefix + node_id
        self._mq = prefix + "MQ"

    def _key(self, name, *parts):
        return self.prefix + name + "".join(":%s" % p for p in parts)

    def _eval(self, script, keys, args):
        return self.client.eval_script(script, keys, args)

    # messages: the store + route script (contract §2 steps 1-4)
    def store_message(self, sender, to, dedup_id, payload):
        """Friend check + dedup + LPUSH onto MQ + PUBLISH to the recipient's
        other nodes, atomically, in one round trip.

        Fires with STORED, NOT_FRIEND or DUPLICATE (imd.stores.redis).
        """
        prefix = self.prefix
        d = self._eval(STORE_MESSAGE,
                       ["%sURS:%d" % (prefix, sender), "%sdedup:%d:%s" % (prefix, sender, dedup_id), self._mq],
                       [to, payload, self.dedup_ttl, prefix, self.channel_prefix, self.node_id])
        return d.addCallback(lambda reply: STORE_RESULTS[int(reply)])

    # connections
    def login(self, uid, conn_id, score, max_devices):
        """Register a connection; fires with the local conn ids it replaces."""
        d = self._eval(LOGIN, [self._key("dev", uid), self._key("nodeusers", self.node_id)],
                       ["%s %s" % (self.node_id, conn_id), score, max_devices, self.node_id,
                        self.channel_prefix, uid])
        return d.addCallback(lambda replaced: [_text(c) for c in replaced or ()])

    def logout(self, uid, conn_id):
        return self._eval(LOGOUT, [self._key("dev", uid), self._key("nodeusers", self.node_id)],
                          ["%s %s" % (self.node_id, conn_id), self.node_id, uid])

    def reassert(self, connections):
        """Register again ``[(uid, conn_id, score)]`` of this node, e.g. after
        Redis restarted without its data."""
        args = [self.prefix, self.node_id]
        for uid, conn_id, score in connections:
            args.extend((uid, conn_id, score))
        return self._eval(REASSERT, [self._key("nodeusers", self.node_id)], args)

    def start_node(self, run_id, ttl):
        """Forget an earlier run's connections of this node id, then beat."""
        return self._eval(NODE_START, [self._key("nodeusers", self.node_id), self._key("node", self.node_id)],
                          [self.node_id, self.prefix, run_id, int(ttl * 1000)])

    def heartbeat(self, run_id, ttl):
        return self.client.call("SET", self._key("node", self.node_id), run_id, "PX", int(ttl * 1000))

    def stop_node(self):
        return self.client.call("DEL", self._key("node", self.node_id))

    @defer.inlineCallbacks
    def is_online(self, asker, uid):
        """True/False, or None when ``uid`` is neither ``asker`` nor a friend."""
        reply = yield self._eval(ONLINE, [self._key("URS", asker), self._key("dev", uid)],
                                 [asker, uid, self.prefix])
        reply = int(reply)
        return None if reply < 0 else bool(reply)

    def kick(self, uid, reason):
        """Tell every node holding a connection of ``uid``; fires with how many."""
        return self._eval(KICK, [self._key("dev", uid)], [uid, reason, self.channel_prefix])

    # orders (contract §4 T)
    def take_order(self, order, courier, customer, payload):
        """Friends both ways; store and route the ``s`` packet the first time only.
        Fires True the first time."""
        d = self._eval(TAKE_ORDER,
                       [self._key("URS", courier), self._key("URS", customer), self._key("taken", order),
                        self._key("MQ")],
                       [courier, customer, payload, self.prefix, self.channel_prefix, self.node_id, TAKEN_TTL])
        return d.addCallback(lambda reply: int(reply) == 1)

    # positions (contract §4 S)
    def record_site(self, uid, longitude, latitude, ts):
        return self._eval(RECORD_SITE, [self._key("geo", "couriers"), self._key("site", uid)],
                          [uid, repr(longitude), repr(latitude), ts])

    def push_site(self, courier, payload):
        d = self._eval(PUSH_SITE, [self._key("URS", courier)],
                       [payload, self.prefix, self.channel_prefix, self.node_id])
        return d.addCallback(lambda friends: [int(f) for f in friends or ()])

"""The migration queue in Redis: ``MQ``, the batch in flight, the leader lock.

A reliable queue: a batch is *moved* from ``MQ`` into ``MQ:processing`` (one
Lua call, atomic) and deleted from there only after the MySQL transaction
holding it has committed.  A migrator that dies at any point leaves its
batch in ``MQ:processing``; the next leader inserts it again first (the
insert ignores rows already present).

Only the holder of ``MQ:lock`` may move or delete: every script checks the
caller's token, so a migrator that lost the lock (paused, partitioned) can
no longer touch the queue even if it still believes it leads.
"""

from imd.stores.redis import RedisKeys

# Entries as one newline-joined string (one bulk reply parses far faster
# than hundreds; stored JSON never holds a raw newline), or as a list when
# one does.
JOIN_ENTRIES = """
local function joined(entries)
  for i = 1, #entries do
    if string.find(entries[i], '\\n', 1, true) then return entries end
  end
  return table.concat(entries, '\\n')
end
"""

# KEYS: lock, processing, MQ.  ARGV: token, batch size.
# Returns false when the caller does not hold the lock, else
# {replayed (0/1), entries newest first, count}.
# The batch is the oldest ``batch`` entries (the tail of MQ), moved with one
# LRANGE, LTRIM and RPUSH (in slices: Lua's unpack has a limit) rather than
# one LMOVE each: 2.4 -> 1.4 ms of Redis per 500 entries, during which Redis
# serves nobody else.  MQ:processing holds them in MQ's order.
CLAIM = JOIN_ENTRIES + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local entries = redis.call('LRANGE', KEYS[2], 0, -1)
if #entries > 0 then return {1, joined(entries), #entries} end
local n = tonumber(ARGV[2])
entries = redis.call('LRANGE', KEYS[3], -n, -1)
if #entries > 0 then
  redis.call('LTRIM', KEYS[3], 0, -n - 1)
  for i = 1, #entries, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(entries, i, math.min(i + 999, #entries)))
  end
end
return {0, joined(entries), #entries}
"""

# KEYS: lock, processing, dead.  ARGV: token, entries that cannot be stored...
# Called only after the batch's COMMIT.
ACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV do redis.call('LPUSH', KEYS[3], ARGV[i]) end
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: lock.  ARGV: token, ttl in ms.  Take a free lock or extend one's own.
HOLD_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: MQ, processing.  {len MQ, len processing, oldest entry or false}
LAG = """
local oldest = redis.call('LINDEX', KEYS[2], -1)
if not oldest then oldest = redis.call('LINDEX', KEYS[1], -1) end
return {redis.call('LLEN', KEYS[1]), redis.call('LLEN', KEYS[2]), oldest}
"""

# KEYS: processing, MQ.  ARGV: substrings, any of which an entry must hold.
# Both lists in one atomic read: every unmigrated entry is in exactly one of
# them at any instant.  The filter runs in Redis so that a history request
# transfers the user's entries only, not the whole backlog.
PENDING = JOIN_ENTRIES + """
local function matching(entries)
  local kept = {}
  for _, entry in ipairs(entries) do
    for i = 1, #ARGV do
      if string.find(entry, ARGV[i], 1, true) then
        kept[#kept + 1] = entry
        break
      end
    end
  end
  return kept
end
local in_flight = matching(redis.call('LRANGE', KEYS[1], 0, -1))
local queued = matching(redis.call('LRANGE', KEYS[2], 0, -1))
return {joined(in_flight), #in_flight, joined(queued), #queued}
"""


def _split(joined, count):
    """Entries from a ``JOIN_ENTRIES`` reply."""
    if not count:
        return []
    if isinstance(joined, list):
        return joined
    if isinstance(joined, bytes):  # not UTF-8: left undecoded by txredisapi
        joined = joined.decode("utf-8", "replace")
    return joined.split("\n")


class QueueStore:
    def __init__(self, client, prefix=""):
        self.client = client
        self.keys = RedisKeys(prefix)

    def claim(self, token, batch):
        """The batch to insert, oldest first: the one left in flight if any
        (``replayed`` True), else up to ``batch`` entries moved from ``MQ``.
        Fires with ``(replayed, entries)``, or None when not the leader."""
        k = self.keys
        d = self.client.call("eval", CLAIM, [k.mq_lock, k.mq_processing, k.mq], [token, batch])

        def parsed(reply):
            if not reply:
                return None
            replayed, entries, count = reply
            entries = _split(entries, int(count))
            entries.reverse()
            return bool(int(replayed)), entries
        return d.addCallback(parsed)

    def ack(self, token, dead=()):
        """Forget the batch in flight (after COMMIT); ``dead`` entries go to
        ``MQ:dead``.  Fires with False when the lock was lost meanwhile."""
        k = self.keys
        d = self.client.call("eval", ACK, [k.mq_lock, k.mq_processing, k.mq_dead], [token] + list(dead))
        return d.addCallback(lambda reply: bool(int(reply)))

    def hold_lock(self, token, ttl):
        d = self.client.call("eval", HOLD_LOCK, [self.keys.mq_lock], [token, max(1, int(ttl * 1000))])
        return d.addCallback(lambda reply: bool(int(reply)))

    def release_lock(self, token):
        return self.client.call("eval", RELEASE_LOCK, [self.keys.mq_lock], [token])

    def lag(self):
        """``(len MQ, len processing, oldest unmigrated entry or None)``."""
        d = self.client.call("eval", LAG, [self.keys.mq, self.keys.mq_processing], [])
        return d.addCallback(lambda reply: (int(reply[0]), int(reply[1]), reply[2] if len(reply) > 2 else None))

    def pending(self, uid):
        """The stored entries not yet deleted from Redis (MQ + the batch in
        flight) that ``uid`` sent or received — and possibly a few more: the
        caller checks each entry it keeps.

        Entries are JSON made by :func:`imd.protocol.message_json`, keys in
        the order id, from, to: a quote cannot follow a comma inside a JSON
        string, so ``,"from":<uid>,`` only matches the field itself.
        """
        patterns = [',"from":%d,"to":' % uid, ',"to":%d,"type":' % uid]
        d = self.client.call("eval", PENDING, [self.keys.mq_processing, self.keys.mq], patterns)
        return d.addCallback(lambda r: _split(r[0], int(r[1])) + _split(r[2], int(r[3])))

"""The migration queue in Redis: ``MQ``, the batch in flight, the leader lock.

A reliable queue: a batch is *moved* from ``MQ`` into ``MQ:processing`` (one
Lua call, atomic) and deleted from there only after the MySQL transaction
holding it has committed.  A migrator that dies at any point leaves its
batch in ``MQ:processing``; the next leader inserts it again first (the
insert ignores rows already present).

Only the holder of ``MQ:lock`` may move or delete: every script checks the
caller's token, so a migrator that lost the lock (paused, partitioned) can
no longer touch the queue even if it still believes it leads.

Keys (imd.stores.keys): ``MQ``, ``MQ:processing``, ``MQ:lock``, ``MQ:dead``,
and ``pending:<uid>`` (trimmed after a commit).
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, Script

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
CLAIM = Script(JOIN_ENTRIES + """
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
""", "claim")

# KEYS: lock, processing, dead, then pending:<uid> of every party of the batch.
# ARGV: token, number of dead entries, the dead entries, then for each
# pending key the highest accept order of the batch for that user.
# Called only after the batch's COMMIT.  A user's entries are claimed in
# accept order, so everything of theirs up to that seq is in MySQL now.
ACK = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local dead = tonumber(ARGV[2])
for i = 3, 2 + dead do redis.call('LPUSH', KEYS[3], ARGV[i]) end
for i = 4, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[dead + i - 1])
end
redis.call('DEL', KEYS[2])
return 1
""", "ack")

# KEYS: lock.  ARGV: token, ttl in ms.  Take a free lock or extend one's own.
HOLD_LOCK = Script("""
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
""", "hold_lock")

RELEASE_LOCK = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
""", "release_lock")

# KEYS: MQ, processing.  {len MQ, len processing, oldest entry or false}
LAG = Script("""
local oldest = redis.call('LINDEX', KEYS[2], -1)
if not oldest then oldest = redis.call('LINDEX', KEYS[1], -1) end
return {redis.call('LLEN', KEYS[1]), redis.call('LLEN', KEYS[2]), oldest}
""", "lag")


def _split(joined: Any, count: int) -> List[str]:
    """Entries from a ``JOIN_ENTRIES`` reply."""
    if not count:
        return []
    if isinstance(joined, list):
        return joined
    if isinstance(joined, bytes):  # not UTF-8: left undecoded by txredisapi
        joined = joined.decode("utf-8", "replace")
    return joined.split("\n")


class QueueStore:
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def claim(self, token: str, batch: int) -> Deferred:
        """The batch to insert, oldest first: the one left in flight if any
        (``replayed`` True), else up to ``batch`` entries moved from ``MQ``.
        Fires with ``(replayed, entries)``, or None when not the leader."""
        k = self.keys
        d = self.client.run(CLAIM, [k.mq_lock, k.mq_processing, k.mq], [token, batch])
        return d.addCallback(_claimed)

    def ack(self, token: str, dead: Sequence[str] = (), migrated: Optional[Dict[int, int]] = None) -> Deferred:
        """Forget the batch in flight (after COMMIT); ``dead`` entries go to
        ``MQ:dead``; ``migrated`` ({uid: highest seq}) trims each user's
        pending index.  Fires with False when the lock was lost meanwhile."""
        k = self.keys
        parties = sorted((migrated or {}).items())
        keys = [k.mq_lock, k.mq_processing, k.mq_dead] + [k.pending(uid) for uid, _ in parties]
        args = [token, len(dead)] + list(dead) + [seq for _, seq in parties]
        return self.client.run(ACK, keys, args).addCallback(_true)

    def hold_lock(self, token: str, ttl: float) -> Deferred:
        d = self.client.run(HOLD_LOCK, [self.keys.mq_lock], [token, max(1, int(ttl * 1000))])
        return d.addCallback(_true)

    def release_lock(self, token: str) -> Deferred:
        return self.client.run(RELEASE_LOCK, [self.keys.mq_lock], [token])

    def lag(self) -> Deferred:
        """``(len MQ, len processing, oldest unmigrated entry or None)``."""
        d = self.client.run(LAG, [self.keys.mq, self.keys.mq_processing], [])
        return d.addCallback(_lag)


def _claimed(reply: Any) -> Optional[Tuple[bool, List[str]]]:
    if not reply:
        return None
    replayed, entries, count = reply
    entries = _split(entries, int(count))
    entries.reverse()
    return bool(int(replayed)), entries


def _true(reply: Any) -> bool:
    return bool(int(reply))


def _lag(reply: Any) -> Tuple[int, int, Optional[str]]:
    return int(reply[0]), int(reply[1]), (reply[2] if len(reply) > 2 else None)

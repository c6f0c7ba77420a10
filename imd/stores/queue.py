"""The migration queue in Redis: ``MQ``, the batch in flight, the leader lock.

A reliable queue: a batch is *moved* from ``MQ`` into ``MQ:processing`` (one
Lua call, atomic) and deleted from there only after the MySQL transaction
holding it has committed.  The leader claims its next batch while the
previous one is inserted, so ``MQ:processing`` may hold two (batches are
acked in the order claimed, each the oldest there).  A migrator that dies
at any point leaves its batches in ``MQ:processing``; the next leader
inserts them again first (the insert ignores rows already present).

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

# KEYS: lock, processing, MQ.  ARGV: token, batch size, more (0/1).
# Returns false when the caller does not hold the lock, else
# {replayed (0/1), entries newest first, count}.
# With more = 0 (a leader's first claim, or its first after a failure) the
# batches left in MQ:processing, if any, come back whole (replayed = 1).
# With more = 1 the leader claims its next batch while the ones it claimed
# before are still being inserted: those stay where they are.
# A batch is the oldest ``batch`` entries (the tail of MQ), moved with one
# LRANGE, LTRIM and LPUSH (in slices: Lua's unpack has a limit) rather than
# one LMOVE each: 2.4 -> 1.4 ms of Redis per 500 entries, during which Redis
# serves nobody else.  It goes on at the head of MQ:processing, so that list
# holds its batches in MQ's order, the oldest batch at the tail.
CLAIM = Script(JOIN_ENTRIES + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local entries
if ARGV[3] ~= '1' then
  entries = redis.call('LRANGE', KEYS[2], 0, -1)
  if #entries > 0 then return {1, joined(entries), #entries} end
end
local n = tonumber(ARGV[2])
entries = redis.call('LRANGE', KEYS[3], -n, -1)
if #entries > 0 then
  redis.call('LTRIM', KEYS[3], 0, -n - 1)
  local reversed = {}
  for i = #entries, 1, -1 do reversed[#reversed + 1] = entries[i] end
  for i = 1, #reversed, 1000 do
    redis.call('LPUSH', KEYS[2], unpack(reversed, i, math.min(i + 999, #reversed)))
  end
end
return {0, joined(entries), #entries}
""", "claim")

# KEYS: lock, processing, dead, then pending:<uid> of every party of the batch.
# ARGV: token, size of the batch, number of dead entries, the dead entries,
# then for each pending key the highest accept order of the batch for that user.
# Called only after the batch's COMMIT, and after the ack of every batch
# claimed before it: the batch is then the oldest in MQ:processing, its
# tail, which goes.  A user's entries are claimed in accept order and
# batches commit in the order claimed, so everything of theirs up to that
# seq is in MySQL now.
ACK = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local size = tonumber(ARGV[2])
local dead = tonumber(ARGV[3])
for i = 4, 3 + dead do redis.call('LPUSH', KEYS[3], ARGV[i]) end
for i = 4, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[dead + i])
end
redis.call('LTRIM', KEYS[2], 0, -size - 1)
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

# KEYS: lock.  ARGV: token, ttl ms.  Extends the caller's own lock only:
# a leader whose lock lapsed must not take a free lock back from its renew
# timer, mid-step -- an ack of its old term would then carry a valid token
# and trim the batch another leader claimed since (and has not committed).
# Only a step's start takes a free lock (HOLD_LOCK), once the acks of the
# step before have settled.
EXTEND_LOCK = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""", "extend_lock")

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

    def claim(self, token: str, batch: int, more: bool = False) -> Deferred:
        """The batch to insert, oldest first: the batches left in flight if
        any (``replayed`` True), else up to ``batch`` entries moved from
        ``MQ``.  With ``more`` the caller still has batches in flight (their
        inserts are under way) and this is the next one after them: never a
        replay.  Fires with ``(replayed, entries)``, or None when not the
        leader."""
        k = self.keys
        d = self.client.run(CLAIM, [k.mq_lock, k.mq_processing, k.mq], [token, batch, 1 if more else 0])
        return d.addCallback(_claimed)

    def ack(self, token: str, size: int, dead: Sequence[str] = (),
            migrated: Optional[Dict[int, int]] = None) -> Deferred:
        """Forget the oldest batch in flight, of ``size`` entries (after its
        COMMIT, and after the ack of every batch claimed before it);
        ``dead`` entries go to ``MQ:dead``; ``migrated`` ({uid: highest
        seq}) trims each user's pending index.  Fires with False when the
        lock was lost meanwhile."""
        k = self.keys
        parties = sorted((migrated or {}).items())
        keys = [k.mq_lock, k.mq_processing, k.mq_dead] + [k.pending(uid) for uid, _ in parties]
        args = [token, size, len(dead)] + list(dead) + [seq for _, seq in parties]
        return self.client.run(ACK, keys, args).addCallback(_true)

    def hold_lock(self, token: str, ttl: float) -> Deferred:
        d = self.client.run(HOLD_LOCK, [self.keys.mq_lock], [token, max(1, int(ttl * 1000))])
        return d.addCallback(_true)

    def extend_lock(self, token: str, ttl: float) -> Deferred:
        """Extend the lock ``token`` holds; fires False when it does not
        hold it (lapsed, or another's), never taking a free lock."""
        d = self.client.run(EXTEND_LOCK, [self.keys.mq_lock], [token, max(1, int(ttl * 1000))])
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

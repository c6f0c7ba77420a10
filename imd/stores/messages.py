"""Stored messages in Redis: the store script, the dedup records, the accept
order and the per-user index that history reads.

Keys (imd.stores.keys): ``URS:<uid>`` (read), ``dedup:<uid>:<id>``,
``dedup:0:<to>:<id>``, ``MQ``, ``MQ:seq``, ``pending:<uid>``.

An entry on ``MQ`` is the packet's JSON exactly as delivered, with one field
added at the end: ``"seq"``, the accept order (``MQ:seq``, taken in the same
script).  History sorts by ``(ts, seq)``, so a sender's messages keep the
order they were sent in whatever their ids; the migrator copies ``seq`` into
MySQL and stores the packet without it (see :mod:`imd.stored`).

Each entry is also in ``pending:<uid>`` of its sender and its recipient
(score: ``seq``) until the migrator has committed it, so that history of
not-yet-migrated messages costs time in proportion to the user's own
entries, not to the length of ``MQ``.
"""

from typing import Any, List

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, Script

STORED, NOT_FRIEND, DUPLICATE = "stored", "not_friend", "duplicate"
STORE_RESULTS = {1: STORED, 0: NOT_FRIEND, 2: DUPLICATE}

# Lua shared by every script that stores an entry: the accept order, MQ and
# both parties' pending index, in one go.
# store_entry(MQ, MQ:seq, pending:<a>, pending:<b>, packet JSON) -> seq
STORE_ENTRY_LUA = """
local function store_entry(mq, seq_key, pending_a, pending_b, packet)
  local seq = redis.call('INCR', seq_key)
  local entry = string.sub(packet, 1, -2) .. ',"seq":' .. seq .. '}'
  redis.call('LPUSH', mq, entry)
  redis.call('ZADD', pending_a, seq, entry)
  if pending_b ~= pending_a then redis.call('ZADD', pending_b, seq, entry) end
  return seq
end
"""

# KEYS: URS:<from>, dedup:<from>:<id>, MQ, MQ:seq, pending:<from>, pending:<to>
# ARGV: to, packet, dedup ttl
# A duplicate renews its dedup record: that write is what a WAIT after it
# counts ([redis] min_replicas), so the retry is acked only once the
# replicas are past the first store, even on a connection that never made it.
STORE_MESSAGE = Script(STORE_ENTRY_LUA + """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[3]) then
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return 2
end
store_entry(KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[2])
return 1
""", "store_message")


class MessageStore:
    """Friend check + dedup + MQ + pending index, atomically, in one round trip."""

    def __init__(self, client: RedisClient, keys: Keys, dedup_ttl: int = 3600) -> None:
        self.client = client
        self.keys = keys
        self.dedup_ttl = dedup_ttl

    def store_message(self, sender: int, to: int, dedup_id: str, packet: bytes) -> Deferred:
        """Fires with STORED, NOT_FRIEND or DUPLICATE."""
        keys = self.keys
        d = self.client.run(STORE_MESSAGE,
                            [keys.friends(sender), keys.dedup(sender, dedup_id, to), keys.mq, keys.mq_seq,
                             keys.pending(sender), keys.pending(to)],
                            [to, packet, self.dedup_ttl])
        return d.addCallback(_store_result)

    def pending(self, uid: int) -> Deferred:
        """The user's entries not yet migrated (sent and received), in accept order."""
        return self.client.command("ZRANGE", self.keys.pending(uid), 0, -1).addCallback(_entries)


def _store_result(reply: Any) -> str:
    return STORE_RESULTS[int(reply)]


def _entries(reply: Any) -> List[str]:
    return [e.decode("utf-8", "replace") if isinstance(e, bytes) else e for e in reply or ()]

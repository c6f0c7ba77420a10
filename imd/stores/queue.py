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
from imd.stores.redis import RedisClient, RedisStore, Script

CLAIM = Script.load("claim")
ACK = Script.load("ack")
HOLD_LOCK = Script.load("hold_lock")
EXTEND_LOCK = Script.load("extend_lock")
RELEASE_LOCK = Script.load("release_lock")
LAG = Script.load("lag")


def _split(joined: Any, count: int) -> List[str]:
    """Entries from a ``join_entries`` (lua/join_entries.lua) reply."""
    if not count:
        return []
    if isinstance(joined, list):
        return joined
    return joined.split("\n")


class QueueStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    def claim(self, token: str, batch: int, more: bool = False) -> Deferred:
        """The batch to insert, oldest first: the batches left in flight if
        any (``replayed`` True), else up to ``batch`` entries moved from
        ``MQ``.  With ``more`` the caller still has batches in flight (their
        inserts are under way) and this is the next one after them: never a
        replay.  Fires with ``(replayed, entries)``, or None when not the
        leader."""
        k = self.keys
        d = self._client.run(CLAIM, [k.mq_lock, k.mq_processing, k.mq], [token, batch, 1 if more else 0])
        return d.addCallback(_claimed)

    def ack(self, token: str, size: int, dead: Sequence[str] = (),
            migrated: Optional[Dict[int, int]] = None, rooms: Optional[Dict[str, int]] = None) -> Deferred:
        """Forget the oldest batch in flight, of ``size`` entries (after its
        COMMIT, and after the ack of every batch claimed before it);
        ``dead`` entries go to ``MQ:dead``; ``migrated`` ({uid: highest
        seq}) trims each user's pending index, ``rooms`` ({room: highest
        pos}) each room's (``roompending:<room>``).  Fires with False when
        the lock was lost meanwhile."""
        k = self.keys
        parties = sorted((migrated or {}).items())
        room_parts = sorted((rooms or {}).items())
        keys = ([k.mq_lock, k.mq_processing, k.mq_dead] + [k.pending(uid) for uid, _ in parties]
                + [k.room_pending(room) for room, _ in room_parts])
        args = ([token, size, len(dead)] + list(dead) + [seq for _, seq in parties]
                + [pos for _, pos in room_parts])
        return self._client.run(ACK, keys, args).addCallback(_true)

    def hold_lock(self, token: str, ttl: float) -> Deferred:
        d = self._client.run(HOLD_LOCK, [self.keys.mq_lock], [token, max(1, int(ttl * 1000))])
        return d.addCallback(_true)

    def extend_lock(self, token: str, ttl: float) -> Deferred:
        """Extend the lock ``token`` holds; fires False when it does not
        hold it (lapsed, or another's), never taking a free lock."""
        d = self._client.run(EXTEND_LOCK, [self.keys.mq_lock], [token, max(1, int(ttl * 1000))])
        return d.addCallback(_true)

    def release_lock(self, token: str) -> Deferred:
        return self._client.run(RELEASE_LOCK, [self.keys.mq_lock], [token])

    def lag(self) -> Deferred:
        """``(len MQ, len processing, oldest unmigrated entry or None)``."""
        d = self._client.run(LAG, [self.keys.mq, self.keys.mq_processing], [])
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

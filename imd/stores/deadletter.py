"""The operator's side of the migration queue (``imd-admin mq``): one
snapshot of its lists, and ``MQ:dead``'s entries listed, replayed or dropped.

``MQ:dead`` holds the entries the migrator could not read (imd.stores.queue),
newest at the head like ``MQ``.  Replay and drop each take the *oldest* N
entries in one Lua call: an entry leaves ``MQ:dead`` exactly once however many
replays or drops run at the same time, and entries that arrive meanwhile (at
the head) are not touched.
"""

from collections import namedtuple
from typing import Any, Generator, List, Optional, Tuple

from twisted.internet import defer

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

STATUS = Script.load("status")
REPLAY = Script.load("replay")
DROP = Script.load("drop")

QueueStatus = namedtuple("QueueStatus", "queued oldest_queued in_flight oldest_in_flight dead leader lock_ms")


def _opt(value: Optional[str]) -> Optional[str]:
    """A Lua false (nil) comes back as None."""
    return value if value not in (None, False) else None


class DeadLetters(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    def status(self) -> defer.Deferred:
        """Fires with a :class:`QueueStatus` (entries as Redis gave them)."""
        k = self.keys
        d = self._client.run(STATUS, [k.mq, k.mq_processing, k.mq_dead, k.mq_lock], [])

        def parsed(r: List[Any]) -> QueueStatus:
            return QueueStatus(int(r[0]), _opt(r[1]), int(r[2]), _opt(r[3]), int(r[4]), _opt(r[5]),
                               max(0, int(r[6])))
        return d.addCallback(parsed)

    def length(self) -> defer.Deferred:
        return self._client.command("LLEN", self.keys.mq_dead).addCallback(int)

    def queued(self) -> defer.Deferred:
        """How many entries ``MQ`` holds (not migrated, not claimed)."""
        return self._client.command("LLEN", self.keys.mq).addCallback(int)

    @defer.inlineCallbacks
    def oldest(self, limit: int) -> Generator[defer.Deferred, Any, Tuple[int, List[str]]]:
        """``(total, entries)``: the ``limit`` oldest entries, oldest first."""
        total = int((yield self._client.command("LLEN", self.keys.mq_dead)))
        entries: List[str] = []
        if total and limit > 0:
            entries = yield self._client.command("LRANGE", self.keys.mq_dead, -limit, -1)
            entries = list(reversed(entries))
        return total, entries

    def replay(self, count: int = 0) -> defer.Deferred:
        """Move the ``count`` oldest entries (0 = all) back to ``MQ``; fires with how many moved."""
        d = self._client.run(REPLAY, [self.keys.mq_dead, self.keys.mq], [max(0, int(count))])
        return d.addCallback(int)

    def drop(self, count: int = 0) -> defer.Deferred:
        """Delete the ``count`` oldest entries (0 = all); fires with how many went."""
        d = self._client.run(DROP, [self.keys.mq_dead], [max(0, int(count))])
        return d.addCallback(int)

"""Erasure of a user (contract v3 §11, a user's right to be forgotten):
the text of every message it sent, removed as a recall (its ``D`` reaches
the other party), then its friendships, last position and pending push
(one script, lua/erase_user.lua), and its connections closed (4003).
Room memberships join here once rooms exist.

Progress is the messages' own state, so an erasure cut short (the process
killed, Redis or MySQL away) is finished by running it again: the messages
still in Redis (``pending:<uid>``) are read once, those in MySQL in pages of
:data:`PAGE` by ``seq``; each is recalled by the recall script with no
window, :data:`AT_ONCE` at a time (the reactor serves everybody else in
between), and one already recalled (its tombstone, or a ``D`` about it not
yet migrated) is skipped and not counted.  The answer counts the messages
recalled by this run: repeating it, or an unknown uid, answers 0.

Audited: a log line at the start and one at the end with the count, and
``imd_user_erasures`` / ``imd_erased_messages`` on ``/metrics``.
"""

from typing import Generator, List, Optional, Protocol, Sequence, Tuple, cast

from twisted.internet import defer
from twisted.logger import Logger

from imd.handlers.recall import RECALLED, Recaller
from imd.messagelog.entry import parse_stored
from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

_log = Logger()

ERASE_USER = Script.load("erase_user")
PAGE = 1000       # MySQL rows read per page
AT_ONCE = 64      # recalls in flight at once
ERASED_BY = "erased"   # the C packet's msg (4003)


class SentRows(Protocol):
    """The user's messages in MySQL not recalled yet (imd.stores.mysql.MysqlStore)."""

    def sent_messages(self, uid: int, after: Tuple[int, int], limit: int) -> defer.Deferred: ...


class Kick(Protocol):
    def __call__(self, uid: int, reason: str) -> defer.Deferred: ...


class ErasureFigures(Protocol):
    def user_erased(self, messages: int) -> None: ...


class ErasureStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    @defer.inlineCallbacks
    def erase_rest(self, uid: int) -> Generator[defer.Deferred, object, int]:
        """Friendships, last position, pending push; fires with the number of friends it had."""
        k = self.keys
        friends = cast(List[bytes], (yield self._client.command("SMEMBERS", k.friends(uid))))
        pairs = ["%s\n%s" % (k.friends(int(f)), k.kept(int(f))) for f in friends or ()]
        reply = yield self._client.run(ERASE_USER, [k.friends(uid), k.kept(uid), k.geo_couriers, k.site(uid),
                                                    k.push_unread, k.push_last, k.push_due], [uid] + pairs)
        return int(cast(int, reply))

    def pending(self, uid: int) -> defer.Deferred:
        return self._client.command("ZRANGE", self.keys.pending(uid), 0, -1)


class Eraser:
    def __init__(self, store: ErasureStore, rows: "SentRows", recaller: Recaller, kick: "Kick",
                 metrics: Optional["ErasureFigures"] = None) -> None:
        self._store = store
        self._rows = rows
        self._recaller = recaller
        self._kick = kick
        self._metrics = metrics

    @defer.inlineCallbacks
    def erase(self, uid: int) -> Generator[defer.Deferred, object, int]:
        """Fires with the number of messages recalled now."""
        _log.info("erasure of uid {uid}: started", uid=uid)
        yield self._kick(uid, ERASED_BY)
        erased = 0
        entries = cast(Sequence[str], (yield self._store.pending(uid)))
        in_redis = []
        for entry in entries or ():
            try:
                message = parse_stored(entry)
            except ValueError:
                continue
            if message.from_id == uid and message.type in ("t", "i"):
                in_redis.append((message.msg_id.decode("utf-8"), message.to_id))
        erased += cast(int, (yield self._recall_all(uid, in_redis, False)))
        after = (-1, 0)
        while True:
            page = cast(List[Tuple[int, int, str, int]], (yield self._rows.sent_messages(uid, after, PAGE)))
            if not page:
                break
            erased += cast(int, (yield self._recall_all(uid, [(msg_id, to) for _, _, msg_id, to in page], True)))
            after = (page[-1][0], page[-1][1])
        friends = yield self._store.erase_rest(uid)
        _log.info("erasure of uid {uid}: done, {messages} messages recalled, {friends} friendships ended",
                  uid=uid, messages=erased, friends=friends)
        if self._metrics is not None:
            self._metrics.user_erased(erased)
        return erased

    @defer.inlineCallbacks
    def _recall_all(self, uid: int, messages: List[Tuple[str, int]],
                    in_mysql: bool) -> Generator[defer.Deferred, object, int]:
        """Recall each of ``messages``, :data:`AT_ONCE` at a time: those read
        from Redis looked for there first, those read from MySQL straight
        (``in_mysql``); the number recalled now."""
        done = 0
        for start in range(0, len(messages), AT_ONCE):
            results = cast(List[Tuple[str, Optional[int]]], (yield defer.gatherResults(
                [self._recaller.recall(uid, to, msg_id, self._recaller.server_id(), None, known=in_mysql)
                 for msg_id, to in messages[start:start + AT_ONCE]], consumeErrors=True)))
            done += sum(1 for outcome, _ in results if outcome == RECALLED)
        return done


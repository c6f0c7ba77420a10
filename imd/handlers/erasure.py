"""Erasure of a user (contract v3 §11, a user's right to be forgotten):
the text of every message it sent, removed as a recall (its ``D`` reaches
the other party), then its friendships, last position and pending push
(one script, lua/erase_user.lua), and its connections closed (4003).

In rooms (:class:`RoomErasure`): the text of every room message it sent,
recalled the same way (the ``D`` reaches the room's members; counted in the
answer), then its memberships: it is removed from each room it is a member
of as the platform's ``rm`` does it, so the other members get its ``left``
event (a member gone without a word would look like one still there), and
last what the rooms kept about it: ``roomsof:<uid>``, its spans and read
cursors (``roomspans:<room>``, ``roomread:<room>``) and its ``room_read``
rows.  Those go last: the rooms to look through are read from
``roomsof:<uid>``, so a run cut short finds them again.

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

from typing import Callable, Generator, List, Optional, Protocol, Sequence, Tuple, cast

from twisted.internet import defer
from twisted.logger import Logger

from imd import protocol
from imd.errors import ImdError
from imd.handlers.recall import RECALLED, Recaller
from imd.messagelog.entry import StoredRoomMessage, parse_entry, parse_stored
from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

_log = Logger()

ERASE_USER = Script.load("erase_user")
FORGET_ROOMS = Script.load("forget_rooms")
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


class SentRoomRows(Protocol):
    """The user's room messages in MySQL not recalled yet, and its cursors (imd.stores.mysql.MysqlStore)."""

    def sent_room_messages(self, uid: int, after: Tuple[str, str, int], limit: int) -> defer.Deferred: ...

    def forget_room_reads(self, uid: int) -> defer.Deferred: ...


class RoomRecall(Protocol):
    """imd.handlers.recall.RoomRecaller."""

    def recall(self, sender: int, room: str, msg_id: str, d_id: protocol.PacketId, window_ms: Optional[int],
               origin: Optional[str] = None, known: bool = False) -> defer.Deferred: ...


class RoomMembers(Protocol):
    """imd.handlers.rooms.RoomAdmin."""

    def change(self, room: str, add: Sequence[int], rm: Sequence[int]) -> defer.Deferred: ...


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

    @defer.inlineCallbacks
    def forget_conversations(self, uid: int) -> Generator[defer.Deferred, object, None]:
        """The user's own conversation list (contract §10): ``conv:``,
        ``convlast:`` and ``unread:`` of its one-to-one conversations,
        ``roomconv:``, ``roomsync:``, ``roomgone:`` and ``roommine:`` of its rooms.  (Each
        holds packets, its own and others'; the others' lists keep their
        rows, whose text the recalls emptied.)  Repeating it changes nothing."""
        k = self.keys
        others = cast(List[bytes], (yield self._client.command("ZRANGE", k.conversations(uid), 0, -1)))
        rooms = cast(List[bytes], (yield self._client.command("ZRANGE", k.room_conversations(uid), 0, -1)))
        gone = cast(List[bytes], (yield self._client.command("HKEYS", k.room_gone(uid))))
        names = {_text(r) for r in list(rooms or ()) + list(gone or ())}
        key_list = [k.conversations(uid), k.conversation_last(uid), k.room_conversations(uid), k.room_sync(uid),
                    k.room_gone(uid)]
        key_list += [k.unread(uid, int(_text(o))) for o in others or () if _text(o).isdigit()]
        key_list += [k.room_mine(room, uid) for room in sorted(names)]
        for at in range(0, len(key_list), 500):
            yield self._client.command("DEL", *key_list[at:at + 500])

    def pending(self, uid: int) -> defer.Deferred:
        return self._client.command("ZRANGE", self.keys.pending(uid), 0, -1)

    def rooms_of(self, uid: int) -> defer.Deferred:
        return self._client.command("SMEMBERS", self.keys.rooms_of(uid))

    def room_pending(self, room: str) -> defer.Deferred:
        return self._client.command("ZRANGE", self.keys.room_pending(room), 0, -1)

    def forget_rooms(self, uid: int, rooms: Sequence[str]) -> defer.Deferred:
        """What the rooms kept about ``uid``: its spans, cursors, and last ``roomsof:<uid>``."""
        k = self.keys
        key_list: List[str] = []
        for room in rooms:
            key_list += [k.room_spans(room), k.room_read(room)]
        return self._client.run(FORGET_ROOMS, key_list + [k.rooms_of(uid)], [uid])


class RoomErasure:
    """An erasure's room part (see the module's text)."""

    def __init__(self, store: ErasureStore, rows: SentRoomRows, recaller: RoomRecall, members: RoomMembers,
                 server_id: Callable[[], str]) -> None:
        self._store = store
        self._rows = rows
        self._recaller = recaller
        self._members = members
        self._server_id = server_id

    @defer.inlineCallbacks
    def erase_messages(self, uid: int) -> Generator[defer.Deferred, object, int]:
        """Every room message ``uid`` sent, recalled; fires with the number recalled now."""
        rooms = sorted(_text(r) for r in cast(Sequence[object], (yield self._store.rooms_of(uid))) or ())
        erased = 0
        for room in rooms:
            in_redis = []
            for entry in cast(Sequence[object], (yield self._store.room_pending(room))) or ():
                try:
                    value = parse_entry(_text(entry))
                except ValueError:
                    continue
                if isinstance(value, StoredRoomMessage) and value.from_id == uid and value.type in ("t", "i"):
                    in_redis.append((room, value.msg_id.decode("utf-8")))
            erased += cast(int, (yield self._recall_all(uid, in_redis, False)))
        after: Tuple[str, str, int] = ("", "", 0)
        while True:
            page = cast(List[Tuple[str, str, int]], (yield self._rows.sent_room_messages(uid, after, PAGE)))
            if not page:
                break
            erased += cast(int, (yield self._recall_all(uid, [(room, msg_id) for msg_id, room, _ in page], True)))
            after = page[-1]
        return erased

    @defer.inlineCallbacks
    def _recall_all(self, uid: int, messages: List[Tuple[str, str]],
                    in_mysql: bool) -> Generator[defer.Deferred, object, int]:
        done = 0
        for start in range(0, len(messages), AT_ONCE):
            results = cast(List[Tuple[str, Optional[int]]], (yield defer.gatherResults(
                [self._recaller.recall(uid, room, msg_id, self._server_id(), None, known=in_mysql)
                 for room, msg_id in messages[start:start + AT_ONCE]], consumeErrors=True)))
            done += sum(1 for outcome, _ in results if outcome == RECALLED)
        return done

    @defer.inlineCallbacks
    def erase_memberships(self, uid: int) -> Generator[defer.Deferred, object, int]:
        """``uid`` out of every room it is a member of (its ``left`` to the
        members), then what the rooms kept about it; fires with the number
        of rooms it was in (members or not)."""
        rooms = sorted(_text(r) for r in cast(Sequence[object], (yield self._store.rooms_of(uid))) or ())
        for room in rooms:
            try:
                yield self._members.change(room, (), (uid,))   # (a no-op where it is no longer a member)
            except ImdError:
                continue   # (the room is gone)
        yield self._rows.forget_room_reads(uid)
        yield self._store.forget_rooms(uid, rooms)
        return len(rooms)


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Eraser:
    def __init__(self, store: ErasureStore, rows: "SentRows", recaller: Recaller, kick: "Kick",
                 metrics: Optional["ErasureFigures"] = None, rooms: Optional[RoomErasure] = None) -> None:
        self.rooms = rooms   # the room part (None: no rooms here)
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
        rooms = 0
        if self.rooms is not None:
            erased += cast(int, (yield self.rooms.erase_messages(uid)))
            rooms = cast(int, (yield self.rooms.erase_memberships(uid)))
        friends = yield self._store.erase_rest(uid)
        yield self._store.forget_conversations(uid)
        _log.info("erasure of uid {uid}: done, {messages} messages recalled, {friends} friendships ended, "
                  "out of the {rooms} rooms it was in", uid=uid, messages=erased, friends=friends, rooms=rooms)
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

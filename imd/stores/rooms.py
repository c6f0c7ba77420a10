"""Rooms (contract v3 §9) in Redis: members, meta, the per-room ``seq``,
read cursors, close, and the room's messages until they are migrated.

Keys (imd.stores.keys): ``room:<room>`` (hash: seq, meta, created_at,
closed_at, ends_at), ``roommembers:<room>``, ``roomread:<room>``,
``roompending:<room>``, ``rdedup:<uid>:<room>/<id>``,
``rtyping:<room>:<uid>``, and the message log's ``MQ`` and ``MQ:seq``.

A room's message is stored once, whatever the number of members: one entry
on ``MQ`` (the packet as delivered, with its room ``seq`` and its ``pos``,
the accept order, written by the message log's ``store_room_entry``
snippet), indexed in ``roompending:<room>`` by its pos until the migrator
has committed it to ``room_message``.  The room's ``seq`` is taken in the
same script that stores the entry (HINCRBY of the hash's ``seq``): no gap,
never reused; membership is checked there too, against the stored set.
A read cursor that moves goes onto ``MQ`` as an ``R`` entry naming the
room; the migrator writes it to ``room_read``.  None of these keys expire:
a room lives as long as its messages (``rdedup:`` and ``rtyping:`` do).

Every stored room packet (a member's message, the API's, ``joined``,
``left``, ``closed``, and a recall's ``D``: imd.stores.roomrecalls, through
:meth:`RoomStore.run_fresh`) is published by the script that stores it,
one ``g`` frame to each node holding a recipient's connection, this one included
(lua/room_fanout.lua, as lua/fanout.lua for one-to-one), so every
connection gets room packets and the rest in ``pos`` order (contract
§10); the same script keeps the conversation list's rows (``roomconv:``,
the hash's ``last``, ``roommine:``, ``roomgone:``: imd.stores.room_conversations
reads them).  A script only touches the keys it is given, and the members
are known only inside it: the store passes the members it last saw (a
small cache per room), and a script that finds other members stores
nothing and answers them (``stale``), and the store calls it again.
With ``[redis] min_replicas`` nothing is published (the caller delivers
once the replicas have it).
"""

import json
from collections import OrderedDict
from typing import Callable, Dict, Generator, List, NamedTuple, Optional, Sequence, Tuple, Union, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from imd.errors import StoreUnavailable
from imd.stores.budgets import Budget
from imd.stores.keys import Keys
from imd.stores.push import PushNotes
from imd.stores.redis import RedisClient, RedisStore, Script

STORE_ROOM = Script.load("store_room")
ROOM_MEMBERS = Script.load("room_members")
CLOSE_ROOM = Script.load("close_room")
ROOM_READ = Script.load("room_read")
ROOM_TYPING = Script.load("room_typing")
STREAM_PENDING = Script.load("room_stream_pending")
ROOM_PENDING = Script.load("room_pending")
NO_BUDGET = Budget(0, 0)

Span = Tuple[int, Optional[int]]   # a member's positions in a room: above the first, up to the second (None: open)


def parse_spans(text: str) -> List[Span]:
    """``"from:to,from:"`` -> ``[(from, to), (from, None)]``."""
    spans: List[Span] = []
    for part in text.split(","):
        start, _, end = part.partition(":")
        if start:
            spans.append((int(start), int(end) if end else None))
    return spans


def in_spans(pos: int, spans: Sequence[Span]) -> bool:
    return any(pos > start and (end is None or pos <= end) for start, end in spans)

# outcomes (the scripts' negative answers)
NO_ROOM, NOT_MEMBER, CLOSED, PAST_LAST, TOO_MANY = "no_room", "not_member", "closed", "past_last", "too_many"
STORED, DUPLICATE, UNCHANGED, MOVED, RELAY, COALESCED = "stored", "duplicate", "unchanged", "moved", "relay", \
    "coalesced"


class RoomStored(NamedTuple):
    """What :meth:`RoomStore.store` did: ``status`` (STORED, DUPLICATE,
    NO_ROOM, NOT_MEMBER, CLOSED), the room ``seq`` and ``pos`` (the first
    store's for a DUPLICATE), the entry (the packet as delivered, STORED
    only) and the members it goes to."""
    status: str
    seq: int = 0
    pos: int = 0
    entry: bytes = b""
    members: Tuple[int, ...] = ()


class RoomEvent(NamedTuple):
    """A stored membership or close event: its packet and who gets it."""
    entry: bytes
    recipients: Tuple[int, ...]


class RoomState(NamedTuple):
    """A room as Redis has it (:meth:`RoomStore.state`)."""
    members: Tuple[int, ...]
    meta: object
    last_seq: int
    read: Dict[str, int]          # every member's cursor (0: never read)
    closed_at: Optional[int]
    ends_at: Optional[int]


MakeCall = Callable[[Tuple[int, ...]], Tuple[List[str], List[object]]]   # members -> (KEYS, ARGV)
RoomChange = Tuple[Tuple[int, ...], List[RoomEvent]]   # the members after it, the events it stored
Reply = object   # a Redis reply: int, str/bytes, or a list of them


def _uids(text: object) -> Tuple[int, ...]:
    value = _text(text)
    return tuple(sorted(int(u) for u in value.split(",") if u)) if value else ()


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")


def _int(value: object) -> int:
    return int(_text(value))


_NEGATIVE = {0: NO_ROOM, -1: NOT_MEMBER, -2: CLOSED}
MEMBERS_CACHED = 10000   # rooms whose members a store remembers (the scripts check them)
STALE_TRIES = 5          # calls of a script whose members changed meanwhile, at most


class StaleMembers(StoreUnavailable):
    """The room's members changed under a script :data:`STALE_TRIES` times
    in a row (nothing stored: the client's retry is as good as ours, so it
    answers ``unavailable`` like any store that could not do its work)."""


def _stale(reply: Reply) -> Optional[Tuple[int, ...]]:
    """The members a script answered ``stale`` with, or None."""
    if isinstance(reply, list) and reply and _text(reply[0]) == "stale":
        return tuple(sorted(_int(m) for m in reply[1:]))
    return None


class RoomStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys, dedup_ttl: int = 3600, typing_interval: float = 2.0,
                 push: Optional[PushNotes] = None, node_id: str = "") -> None:
        """``push``: set when ``[push] url`` is (each stored room message
        then notes every other member's pending push, contract §7.5).
        ``node_id``: this node's, the one whose connections messages come on."""
        self._client = client
        self.push = push
        self.keys = keys
        self.dedup_ttl = dedup_ttl
        self.typing_ms = int(round(typing_interval * 1000))
        self.node_id = node_id
        # True: the store scripts publish what they store (in pos order);
        # False ([redis] min_replicas): the caller delivers once replicated
        self.publishes = not client.min_replicas
        self._prefix = keys.channel_prefix if self.publishes else ""
        self._members: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()

    def _known(self, room: str) -> Tuple[int, ...]:
        return self._members.get(room, ())

    def _learn(self, room: str, members: Tuple[int, ...]) -> None:
        cache = self._members
        cache[room] = members
        cache.move_to_end(room)
        if len(cache) > MEMBERS_CACHED:
            cache.popitem(last=False)

    @defer.inlineCallbacks
    def run_fresh(self, room: str, script: Script,
                   call: "MakeCall") -> Generator[Deferred, object, Tuple[Reply, Tuple[int, ...]]]:
        """Run ``script`` with the keys and args ``call`` makes of the
        members this store knows, again with the ones it answers ``stale``
        with: ``(reply, the members it was given)``.  (Also for the room
        scripts of other stores: imd.stores.roomrecalls.)"""
        members = self._known(room)
        for _ in range(STALE_TRIES):
            key_list, args = call(members)
            reply = cast(Reply, (yield self._client.run(script, key_list, args)))
            fresh = _stale(reply)
            if fresh is None:
                return reply, members
            members = fresh
            self._learn(room, members)
        raise StaleMembers("room %s: its members kept changing, retry" % room)

    def store(self, room: str, sender: int, dedup_id: str, head: bytes, now_ms: int,
              origin: Optional[str] = None) -> Deferred:
        """Store a room message (``head``: imd.protocol.room_message_head)
        from ``sender`` (0: the server API); fires with a
        :class:`RoomStored`, once on ``[redis] min_replicas`` replicas.
        When :attr:`publishes`, a message stored now is on its way to every
        connection of every member but ``origin`` (the conn id, on this
        node, it came on)."""
        k, push = self.keys, self.push
        fixed = [k.room(room), k.room_members(room), k.room_dedup(room, sender, dedup_id), k.mq, k.mq_seq,
                 k.room_pending(room), k.room_mine(room, sender), k.push_unread, k.push_last, k.push_due]
        head_args: List[object] = [sender, head, self.dedup_ttl, now_ms, push.due(now_ms) if push is not None else "",
                                   room, self._prefix, "%s %s" % (self.node_id, origin) if origin is not None else ""]

        def call(members: Tuple[int, ...]) -> Tuple[List[str], List[object]]:
            key_list = list(fixed)
            for m in members:
                key_list += [k.devices(m), k.room_conversations(m)]
            return key_list, head_args + list(members)
        d = self.run_fresh(room, STORE_ROOM, call)
        d.addCallback(_stored, head)
        return self._replicated(d)

    def set_members(self, room: str, add: Sequence[int], rm: Sequence[int], now_ms: int, max_members: int,
                    meta: Optional[Dict[str, object]] = None, create: bool = False) -> Deferred:
        """``create``: create the room with members ``add`` (and ``meta``),
        or, when it exists, make ``add`` its members; else add ``add`` and
        remove ``rm``.  Fires with ``(members, [RoomEvent])``, or NO_ROOM,
        TOO_MANY (nothing changed)."""
        k = self.keys
        meta_json = json.dumps(meta, ensure_ascii=False, separators=(",", ":")) if meta is not None else ""
        args: List[object] = ["set" if create else "change", now_ms, max_members, meta_json, room, len(add)]
        args += list(add) + list(rm)
        fixed = [k.room(room), k.room_members(room), k.mq, k.mq_seq, k.room_pending(room), k.room_read(room),
                 k.room_spans(room)] + [k.rooms_of(uid) for uid in add]

        def call(members: Tuple[int, ...]) -> Tuple[List[str], List[object]]:
            keyed = sorted(set(members) | set(add))
            key_list = list(fixed)
            for m in keyed:
                key_list += [k.devices(m), k.room_conversations(m), k.room_gone(m), k.room_mine(room, m)]
            return key_list, args + [self._prefix, ",".join(str(m) for m in keyed)]
        d = self.run_fresh(room, ROOM_MEMBERS, call)
        d.addCallback(self._changed, room)
        return self._replicated(d)

    def _changed(self, ran: Tuple[Reply, Tuple[int, ...]], room: str) -> Union[str, RoomChange]:
        result = _changed(ran[0])
        if isinstance(result, tuple):
            self._learn(room, result[0])
        return result

    def close(self, room: str, now_ms: int, grace_ms: int) -> Deferred:
        """Fires with ``(ends_at, RoomEvent or None)`` (None: closed
        before), or NO_ROOM."""
        k = self.keys
        fixed = [k.room(room), k.room_members(room), k.mq, k.mq_seq, k.room_pending(room)]

        def call(members: Tuple[int, ...]) -> Tuple[List[str], List[object]]:
            key_list = list(fixed)
            for m in members:
                key_list += [k.devices(m), k.room_conversations(m)]
            return key_list, [now_ms, grace_ms, room, self._prefix] + list(members)
        d = self.run_fresh(room, CLOSE_ROOM, call)
        d.addCallback(lambda ran: _closed(ran[0]))
        return self._replicated(d)

    def read(self, room: str, reader: int, seq: int, entry: bytes) -> Deferred:
        """Move ``reader``'s cursor to ``seq``; fires with ``(MOVED,
        members)``, ``(UNCHANGED, ())``, or NO_ROOM, NOT_MEMBER, PAST_LAST."""
        k = self.keys
        push_keys = self.push.keys if self.push is not None else []
        d = self._client.run(ROOM_READ, [k.room(room), k.room_members(room), k.room_read(room), k.mq,
                                         k.room_mine(room, reader)] + push_keys, [reader, seq, entry])
        d.addCallback(_read)
        return self._replicated(d)

    def typing(self, room: str, uid: int, is_typing: bool) -> Deferred:
        """Fires with ``(RELAY, members)``, ``(COALESCED, ())``, or NO_ROOM, NOT_MEMBER."""
        k = self.keys
        d = self._client.run(ROOM_TYPING, [k.room(room), k.room_members(room), k.room_typing(room, uid)],
                             [uid, 1 if is_typing else 0, self.typing_ms])
        return d.addCallback(_typing)

    def state(self, room: str) -> Deferred:
        """The room as Redis has it: a :class:`RoomState`, or None (no such room)."""
        k = self.keys
        client = self._client
        d = defer.gatherResults([client.command("HGETALL", k.room(room)),
                                 client.command("SMEMBERS", k.room_members(room)),
                                 client.command("HGETALL", k.room_read(room))], consumeErrors=True)
        return d.addCallback(_state).addErrback(_first_error)

    def rooms_of(self, uid: int) -> Deferred:
        """The rooms ``uid`` is or was a member of (for its sync stream)."""
        return self._client.command("SMEMBERS", self.keys.rooms_of(uid))

    def rooms_since(self, uid: int, after_pos: int) -> Deferred:
        """The rooms where ``uid`` got a packet above ``after_pos``: its
        ``roomconv:<uid>`` rows scored above it (the pos of the latest
        room packet it got there, written by every script that stores one
        for the members) and its ``roomsync:<uid>`` ones (the pos of the
        latest recall's ``D``, which does not move the room in the
        conversation list).  A room of its stream above ``after_pos`` is one
        of them; the rooms it left or that stayed quiet before cost nothing.
        Fires with the room ids (bytes), each once."""
        since = "(%d" % after_pos
        d = defer.gatherResults([
            self._client.command("ZRANGEBYSCORE", self.keys.room_conversations(uid), since, "+inf"),
            self._client.command("ZRANGEBYSCORE", self.keys.room_sync(uid), since, "+inf")], consumeErrors=True)
        return d.addCallback(lambda found: sorted(set(found[0] or ()) | set(found[1] or ()))).addErrback(_first_error)

    def stream_pending(self, uid: int, rooms: Sequence[str], after_pos: int, count: int) -> Deferred:
        """For each of ``rooms``: ``uid``'s spans there and the room's
        entries not yet migrated above ``after_pos`` within them, the first
        ``count`` of each span (a page of ``count`` needs no more of one
        source), in one script; fires with ``{room: (spans, entries)}``
        (spans: ``[(from, to or None)]``, positions above ``from`` up to
        ``to`` included)."""
        k = self.keys
        key_list: List[str] = []
        for room in rooms:
            key_list += [k.room_spans(room), k.room_pending(room)]
        d = self._client.run(STREAM_PENDING, key_list, [uid, after_pos, count])
        return d.addCallback(_stream_pending, list(rooms))

    def pending(self, room: str, uid: int, after_seq: int, count: int, budget: Optional[Budget] = None,
                now_ms: int = 0) -> Deferred:
        """The room's first ``count`` entries not yet migrated with a seq
        above ``after_seq``, in accept order (found in log(n) steps: the
        backlog's size costs nothing), once one ``H`` is taken from
        ``uid``'s ``budget`` (``budget:history:<uid>``, shared with every
        other ``H`` of the user; None: no budget), in the same call; fires
        with None when the budget is spent."""
        keys = self.keys
        return self._client.run(ROOM_PENDING, [keys.room_pending(room), keys.budget("history", uid)],
                                (budget or NO_BUDGET).args(now_ms) + [after_seq, count])


def _members(values: List[object]) -> Tuple[int, ...]:
    return tuple(sorted(_int(m) for m in values))


def _stored(ran: Tuple[Reply, Tuple[int, ...]], head: bytes) -> RoomStored:
    reply, members = ran
    if not isinstance(reply, list):
        return RoomStored(_NEGATIVE[_int(reply)])
    seq, pos = _int(reply[1]), _int(reply[2])
    if _int(reply[0]) == 2:
        return RoomStored(DUPLICATE, seq, pos)
    # the entry as the store_room_entry snippet wrote it; the members the script checked
    return RoomStored(STORED, seq, pos, head + b',"seq":%d,"pos":%d}' % (seq, pos), members)


def _changed(reply: Reply) -> Union[str, RoomChange]:
    if not isinstance(reply, list):
        return NO_ROOM if _int(reply) == 0 else TOO_MANY
    events = [RoomEvent(_bytes(reply[i]), _uids(reply[i + 1])) for i in range(2, len(reply), 2)]
    return _uids(reply[1]), events


def _closed(reply: Reply) -> Union[str, Tuple[int, Optional[RoomEvent]]]:
    if not isinstance(reply, list):
        return NO_ROOM
    ends_at, entry, members = reply
    return _int(ends_at), (RoomEvent(_bytes(entry), _uids(members)) if entry else None)


def _read(reply: Reply) -> Union[str, Tuple[str, Tuple[int, ...]]]:
    if isinstance(reply, list):
        return MOVED, _members(reply[1:])
    answers: Dict[int, Union[str, Tuple[str, Tuple[int, ...]]]] = {0: NO_ROOM, -1: NOT_MEMBER, -2: PAST_LAST,
                                                                   1: (UNCHANGED, ())}
    return answers[_int(reply)]


def _typing(reply: Reply) -> Union[str, Tuple[str, Tuple[int, ...]]]:
    if isinstance(reply, list):
        return RELAY, _members(reply[1:])
    answers: Dict[int, Union[str, Tuple[str, Tuple[int, ...]]]] = {0: NO_ROOM, -1: NOT_MEMBER, 2: (COALESCED, ())}
    return answers[_int(reply)]


def _pairs(flat: object) -> Dict[str, str]:
    if isinstance(flat, dict):
        return {_text(a): _text(b) for a, b in flat.items()}
    items = flat if isinstance(flat, list) else []
    return {_text(items[i]): _text(items[i + 1]) for i in range(0, len(items), 2)}


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _state(replies: List[object]) -> Optional[RoomState]:
    room, members, read = replies
    fields = _pairs(room)
    if not fields:
        return None
    cursors = _pairs(read)
    member_ids = _members(members if isinstance(members, list) else [])
    return RoomState(member_ids, json.loads(fields.get("meta", "{}")), int(fields.get("seq", "0")),
                     {str(m): int(cursors.get(str(m), "0")) for m in member_ids},
                     int(fields["closed_at"]) if "closed_at" in fields else None,
                     int(fields["ends_at"]) if "ends_at" in fields else None)


def _first_error(failure: Failure) -> Failure:
    """The store's own error (StoreUnavailable), not gatherResults' wrapper."""
    error = failure.value
    if isinstance(error, defer.FirstError):
        return error.subFailure
    return failure


def _stream_pending(reply: List[object], rooms: List[str]) -> Dict[str, Tuple[List[Span], List[str]]]:
    out: Dict[str, Tuple[List[Span], List[str]]] = {}
    for room, spans, entries in zip(rooms, reply[0::2], reply[1::2]):
        parsed = parse_spans(_text(spans)) if spans else []
        listed = entries if isinstance(entries, list) else []
        out[room] = (parsed, [_text(e) for e in listed])
    return out

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
"""

import json
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from imd.stores.keys import Keys
from imd.stores.push import PushNotes
from imd.stores.redis import RedisClient, RedisStore, Script

STORE_ROOM = Script.load("store_room")
ROOM_MEMBERS = Script.load("room_members")
CLOSE_ROOM = Script.load("close_room")
ROOM_READ = Script.load("room_read")
ROOM_TYPING = Script.load("room_typing")
STREAM_PENDING = Script.load("room_stream_pending")

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


class RoomStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys, dedup_ttl: int = 3600, typing_interval: float = 2.0,
                 push: Optional[PushNotes] = None) -> None:
        """``push``: set when ``[push] url`` is (each stored room message
        then notes every other member's pending push, contract §7.5)."""
        self._client = client
        self.push = push
        self.keys = keys
        self.dedup_ttl = dedup_ttl
        self.typing_ms = int(round(typing_interval * 1000))

    def store(self, room: str, sender: int, dedup_id: str, head: bytes, now_ms: int) -> Deferred:
        """Store a room message (``head``: imd.protocol.room_message_head)
        from ``sender`` (0: the server API); fires with a
        :class:`RoomStored`, once on ``[redis] min_replicas`` replicas."""
        k, push = self.keys, self.push
        key_list = [k.room(room), k.room_members(room), k.room_dedup(room, sender, dedup_id), k.mq, k.mq_seq,
                    k.room_pending(room)]
        args: List[Union[str, bytes, int]] = [sender, head, self.dedup_ttl, now_ms]
        if push is not None:
            key_list += push.keys
            args.append(push.due(now_ms))
        d = self._client.run(STORE_ROOM, key_list, args)
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
        args: List[Union[str, int]] = ["set" if create else "change", now_ms, max_members, meta_json, room, len(add)]
        args += list(add) + list(rm)
        d = self._client.run(ROOM_MEMBERS, [k.room(room), k.room_members(room), k.mq, k.mq_seq,
                                            k.room_pending(room), k.room_read(room), k.room_spans(room)]
                             + [k.rooms_of(uid) for uid in add], args)
        d.addCallback(_changed)
        return self._replicated(d)

    def close(self, room: str, now_ms: int, grace_ms: int) -> Deferred:
        """Fires with ``(ends_at, RoomEvent or None)`` (None: closed
        before), or NO_ROOM."""
        k = self.keys
        d = self._client.run(CLOSE_ROOM, [k.room(room), k.room_members(room), k.mq, k.mq_seq, k.room_pending(room)],
                             [now_ms, grace_ms, room])
        d.addCallback(_closed)
        return self._replicated(d)

    def read(self, room: str, reader: int, seq: int, entry: bytes) -> Deferred:
        """Move ``reader``'s cursor to ``seq``; fires with ``(MOVED,
        members)``, ``(UNCHANGED, ())``, or NO_ROOM, NOT_MEMBER, PAST_LAST."""
        k = self.keys
        push_keys = self.push.keys if self.push is not None else []
        d = self._client.run(ROOM_READ, [k.room(room), k.room_members(room), k.room_read(room), k.mq] + push_keys,
                             [reader, seq, entry])
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

    def stream_pending(self, uid: int, rooms: Sequence[str], after_pos: int) -> Deferred:
        """For each of ``rooms``: ``uid``'s spans there and the room's
        entries not yet migrated above ``after_pos`` within them, in one
        script; fires with ``{room: (spans, entries)}`` (spans: ``[(from,
        to or None)]``, positions above ``from`` up to ``to`` included)."""
        k = self.keys
        key_list: List[str] = []
        for room in rooms:
            key_list += [k.room_spans(room), k.room_pending(room)]
        d = self._client.run(STREAM_PENDING, key_list, [uid, after_pos])
        return d.addCallback(_stream_pending, list(rooms))

    def pending(self, room: str) -> Deferred:
        """The room's entries not yet migrated, in accept order."""
        return self._client.command("ZRANGE", self.keys.room_pending(room), 0, -1)


def _members(values: List[object]) -> Tuple[int, ...]:
    return tuple(sorted(_int(m) for m in values))


def _stored(reply: Reply, head: bytes) -> RoomStored:
    if not isinstance(reply, list):
        return RoomStored(_NEGATIVE[_int(reply)])
    seq, pos = _int(reply[1]), _int(reply[2])
    if _int(reply[0]) == 2:
        return RoomStored(DUPLICATE, seq, pos)
    # the entry as the store_room_entry snippet wrote it
    return RoomStored(STORED, seq, pos, head + b',"seq":%d,"pos":%d}' % (seq, pos), _members(reply[3:]))


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

"""Rooms (contract v3 §9): a room's messages, read cursors, typing and
history for its members, and the platform's side (create, members, send,
close, show) for the server API and ``imd-admin room``.

A room message is stored once (imd.stores.rooms: one ``MQ`` entry, the
room's next ``seq`` and the accept order taken in the same script, which
also checks membership against the stored set); the sender's connection
gets its ``A`` with ``seq`` and ``pos``, every connection of every member
(the sender's other devices included) gets the packet: the store script
publishes it, one frame to each node holding members, this one included
(lua/room_fanout.lua), in ``pos`` order with every other stored packet
(contract §10); the ``A`` leaves once this node has handled the frame
naming the sending connection (imd.node.LocalNode.wait_frame), as for
one-to-one messages.  With ``[redis] min_replicas`` nothing is published:
the node delivers once the replicas have it (LocalNode.deliver_room, as
it does for cursors and typing, which take no ``pos``).

Membership changes and the close store a system message from 0 each
(``joined``, ``left``, ``closed``), which takes a ``seq`` like any room
message and goes to the members (a removed member gets its own ``left``,
the last thing it gets from the room).

``H {"room"}`` merges the room's entries still in Redis with the rows in
MySQL (Redis read first: an entry leaves Redis only after its row has
committed), each ``seq`` once, and adds every member's read cursor.
"""

import base64
import binascii
import json
from typing import TYPE_CHECKING, Callable, Dict, Generator, Iterable, List, Optional, Sequence, Tuple, Union, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from imd import protocol
from imd.clock import Clock
from imd.errors import ImdError
from imd.handlers import Reply
from imd.handlers.api import new_message_id
from imd.handlers.ports import RoomNode
from imd.messagelog.entry import StoredRoomMessage, StoredRoomRecall, parse_entry, tombstone
from imd.moderation import TextPolicy
from imd.stores.roomrecalls import room_message_heads
from imd.stores.budgets import Budget
from imd.stores.rooms import (CLOSED, COALESCED, DUPLICATE, MOVED, NO_ROOM, NOT_MEMBER, PAST_LAST, TOO_MANY,
                              RoomChange, RoomEvent, RoomState, RoomStore, RoomStored, Span, in_spans)

if TYPE_CHECKING:
    from imd.stores.mysql import MysqlStore

Json = Dict[str, object]
Handler = Callable[[int, protocol.ClientPacket], object]
Outcome = Union[str, Tuple[str, Tuple[int, ...]]]   # a refusal, or (what happened, the members)

_log = Logger()

ROOM_CURSOR_VERSION = 4   # [4, room, seq, limit]: an H {"room"}'s next page
MAX_REPLY_BYTES = 1024 * 1024


def encode_room_cursor(room: str, seq: int, limit: int) -> str:
    body = json.dumps([ROOM_CURSOR_VERSION, room, seq, limit], separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")


def decode_room_cursor(cursor: str) -> Optional[Tuple[str, int, int]]:
    """``(room, after_seq, limit)`` from a room history's cursor; None for any other text."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        return None
    if type(body) is list and len(body) == 4 and body[0] == ROOM_CURSOR_VERSION:
        _, room, seq, limit = body
        if (protocol.valid_room(room) and type(seq) is int and 0 <= seq < 2 ** 63
                and type(limit) is int and 1 <= limit <= protocol.HISTORY_MAX_LIMIT):
            return room, seq, limit
    return None


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _refused(outcome: object, room: str) -> None:
    if outcome == NO_ROOM:
        raise ImdError("not_found", "no room %s" % room)
    if outcome == NOT_MEMBER:
        raise ImdError("forbidden", "you are not a member of room %s" % room)
    if outcome == CLOSED:
        raise ImdError("forbidden", "room %s is closed" % room)


class RoomHandler:
    """The members' side: ``t``/``i``, ``R``, ``Y`` and ``H`` naming a room."""

    def __init__(self, rooms: RoomStore, mysql: "MysqlStore", node: RoomNode, clock: Clock,
                 text_policy: Optional[TextPolicy] = None, user_budget: Optional[Budget] = None,
                 log_messages: bool = False) -> None:
        """``user_budget``: the per-user ``H`` budget that ``H {"room"}``
        spends, as every other ``H`` (imd.handlers.history); None: none."""
        self._rooms = rooms
        self._user_budget = user_budget
        self._mysql = mysql
        self._node = node
        self._clock = clock
        # [log] messages: each stored room message, as stored (masked: contract §11)
        self._log_messages = log_messages
        self._text_policy = text_policy if text_policy is not None and text_policy.active else None

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def message(self, sender: int, packet: protocol.MessagePacket) -> Deferred:
        if not self._node.healthy:
            raise ImdError("unavailable", "this node lost its message bus, retry")
        room = cast(str, packet.room)
        masked = False
        if self._text_policy is not None and packet.type == "t":
            packet.msg, masked = self._text_policy.apply(cast(str, packet.msg))
        now = self._now_ms()
        head = protocol.room_message_head(packet.id, sender, room, packet.type, packet.msg, now)
        d = self._rooms.store(room, sender, packet.dedup_id, head, now, packet.origin)
        return d.addCallback(self._stored, sender, packet, masked)

    def _stored(self, result: RoomStored, sender: int, packet: protocol.MessagePacket,
                masked: bool) -> Union[Reply, Deferred]:
        _refused(result.status, cast(str, packet.room))
        if result.status == DUPLICATE:
            return Reply(protocol.ack_room(packet.id, result.seq, result.pos, duplicate=True, masked=masked))
        if self._log_messages:
            _log.info("room message uid={uid} room={room}: {packet}", uid=sender, room=packet.room,
                      packet=result.entry.decode("utf-8", "replace"))
        reply = Reply(protocol.ack_room(packet.id, result.seq, result.pos, masked=masked))
        if self._rooms.publishes:
            # published by the store script, in pos order: the A goes once
            # this node has handled its frame (acks never outrun deliveries)
            if packet.origin is not None:
                return self._node.wait_frame(result.pos, reply)
            return reply
        self._node.deliver_room(result.members, result.entry, packet.origin)
        return reply

    def read(self, reader: int, packet: protocol.RoomReadPacket) -> Deferred:
        now = self._now_ms()
        relayed = protocol.room_read(packet.id, reader, packet.room, packet.seq, now)
        entry = relayed[:-1] + b',"ts":%d}' % now
        d = self._rooms.read(packet.room, reader, packet.seq, entry)
        return d.addCallback(self._read, reader, packet, relayed)

    def _read(self, outcome: Outcome, reader: int, packet: protocol.RoomReadPacket, relayed: bytes) -> Reply:
        if outcome == PAST_LAST:
            raise ImdError("bad_packet", "R: seq %d is past the room's last message" % packet.seq)
        _refused(outcome, packet.room)
        status, members = cast(Tuple[str, Tuple[int, ...]], outcome)
        if status == MOVED:
            self._node.deliver_room([m for m in members if m != reader], relayed)
        return Reply(protocol.ack(packet.id))

    def typing(self, sender: int, packet: protocol.RoomTypingPacket) -> Deferred:
        d = self._rooms.typing(packet.room, sender, packet.typing)
        return d.addCallback(self._typed, sender, packet)

    def _typed(self, outcome: Outcome, sender: int, packet: protocol.RoomTypingPacket) -> Reply:
        _refused(outcome, packet.room)
        status, members = cast(Tuple[str, Tuple[int, ...]], outcome)
        if status != COALESCED:
            self._node.deliver_room([m for m in members if m != sender],
                                    protocol.room_typing(packet.id, sender, packet.room, packet.typing))
        return Reply(protocol.ack(packet.id))

    @defer.inlineCallbacks
    def stream(self, uid: int, after_pos: int, limit: int) -> Generator[Deferred, object, List[Tuple[int, bytes]]]:
        """``uid``'s room messages for its sync (contract §10): those of its
        rooms while it was a member (its spans), with pos above
        ``after_pos``, ascending, at most ``limit``: ``[(pos, packet)]``.
        Redis is read before MySQL (no gap at the boundary)."""
        # (only the rooms with a packet for uid above after_pos: not every room it ever was in)
        rooms = sorted(_text(r) for r in cast(List[object], (yield self._rooms.rooms_since(uid, after_pos))))
        if not rooms:
            return []
        pending = cast(Dict[str, Tuple[List[Span], List[str]]],
                       (yield self._rooms.stream_pending(uid, rooms, after_pos, limit)))
        spans = {room: found[0] for room, found in pending.items() if found[0]}
        if not spans:
            return []
        rows = cast(List[Tuple[int, str, int, str]], (yield self._mysql.room_stream(spans, after_pos, limit)))
        # a recall's D (seq 0 in the rows: it takes none) is keyed by its pos
        items: Dict[Tuple[str, int], Tuple[int, bytes]] = {}
        recalls: Dict[str, List[StoredRoomRecall]] = {}
        for room, (room_spans, entries) in pending.items():
            for entry in entries:
                try:
                    value = parse_entry(entry)
                except ValueError:
                    continue
                if isinstance(value, StoredRoomRecall):
                    # (its row may not be emptied yet: Redis was read first)
                    recalls.setdefault(room, []).append(value)
                    if value.seq > after_pos and in_spans(value.seq, room_spans):
                        items[(room, -value.seq)] = (value.seq, value.packet.encode("utf-8"))
                elif isinstance(value, StoredRoomMessage) and value.seq > after_pos \
                        and in_spans(value.seq, room_spans):
                    items[(room, value.room_seq)] = (value.seq, value.packet.encode("utf-8"))
        for pos, room, seq, packet in rows:
            items.setdefault((room, seq) if seq else (room, -pos), (pos, packet.encode("utf-8")))
        for (room, seq), (pos, data) in list(items.items()):
            if seq > 0 and room in recalls:
                items[(room, seq)] = (pos, recalled_packet(data.decode("utf-8"), recalls[room]).encode("utf-8"))
        ordered = sorted(items.values())
        if len(rows) >= limit:
            # beyond the last row read, MySQL may hold more: stop there
            ordered = [item for item in ordered if item[0] <= rows[-1][0]]
        return ordered[:limit]

    def history(self, uid: int, packet: Union[protocol.RoomHistoryPacket, protocol.HistoryPacket]) -> Deferred:
        if isinstance(packet, protocol.RoomHistoryPacket):
            return self._history(uid, packet.id, packet.room, packet.after_seq, packet.limit)
        room, after_seq, limit = cast(Tuple[str, int, int], decode_room_cursor(cast(str, packet.after)))
        return self._history(uid, packet.id, room, after_seq, limit)

    @defer.inlineCallbacks
    def _history(self, uid: int, packet_id: protocol.PacketId, room: str, after_seq: int,
                 limit: int) -> Generator[Deferred, object, Reply]:
        state = cast(Optional[RoomState], (yield self._rooms.state(room)))
        if state is None:
            raise ImdError("not_found", "no room %s" % room)
        if uid not in state.members:
            raise ImdError("forbidden", "you are not a member of room %s" % room)
        # Redis first: no gap at the boundary
        # (the first limit + 1 above after_seq: no more can be on the page)
        pending = cast(Optional[List[str]], (yield self._rooms.pending(room, uid, after_seq, limit + 1,
                                                                       self._user_budget, self._now_ms())))
        if pending is None:
            raise ImdError("rate_limited", "H: over this user's history budget "
                                           "([websocket] history_user_rate), retry later")
        rows = cast(List[Tuple[int, str]], (yield self._mysql.room_history(room, after_seq, limit + 1)))
        page = merge_room(pending, rows, after_seq, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        items: List[bytes] = []
        last = after_seq
        size = 200 + len(json.dumps(state.read))
        for seq, packet in page:
            size += len(packet) + 1
            if items and size > MAX_REPLY_BYTES:
                more = True
                break
            items.append(packet)
            last = seq
        next_cursor = encode_room_cursor(room, last, limit) if more else None
        return Reply(protocol.room_history(packet_id, items, more, next_cursor, state.read))


def room_entries(pending: Iterable[Union[str, bytes]]) -> Tuple[List[StoredRoomMessage], List[StoredRoomRecall]]:
    """A room's entries still in Redis, read: its messages and its recalls'
    ``D`` (an entry that does not read is left out)."""
    messages: List[StoredRoomMessage] = []
    recalls: List[StoredRoomRecall] = []
    for entry in pending:
        try:
            value = parse_entry(entry.decode("utf-8") if isinstance(entry, bytes) else entry)
        except ValueError:
            continue
        if isinstance(value, StoredRoomMessage):
            messages.append(value)
        elif isinstance(value, StoredRoomRecall):
            recalls.append(value)
    return messages, recalls


def merge_room(pending: Sequence[Union[str, bytes]], rows: Sequence[Tuple[int, str]], after_seq: int,
               limit: int) -> List[Tuple[int, bytes]]:
    """The room's entries still in Redis and its rows in MySQL, each seq
    once, above ``after_seq``, ascending: ``[(seq, packet)]``, at most ``limit``.
    A recall's ``D`` is not listed; a row whose message a ``D`` still in
    Redis recalls is shown emptied (its row is emptied when the D migrates)."""
    messages, recalls = room_entries(pending)
    return merge_room_entries(messages, recalls, rows, after_seq, limit)


def merge_room_entries(messages: Iterable[StoredRoomMessage], recalls: Sequence[StoredRoomRecall],
                       rows: Sequence[Tuple[int, str]], after_seq: int, limit: int) -> List[Tuple[int, bytes]]:
    """:func:`merge_room` of entries already read (:func:`room_entries`)."""
    by_seq: Dict[int, bytes] = {m.room_seq: m.packet.encode("utf-8") for m in messages if m.room_seq > after_seq}
    for seq, packet in rows:
        if seq not in by_seq:
            by_seq[seq] = packet.encode("utf-8") if isinstance(packet, str) else packet
    if recalls:
        # (a copy still in Redis keeps its text when the recall found the
        # message migrated: its batch committed, not yet trimmed)
        by_seq = {seq: recalled_packet(packet.decode("utf-8"), recalls).encode("utf-8")
                  for seq, packet in by_seq.items()}
    # rows are the first ``limit`` migrated ones: a pending seq beyond the
    # last row is only complete when the rows ran out before the limit
    ordered = sorted(by_seq.items())
    if len(rows) >= limit:
        cut = rows[-1][0]
        ordered = [item for item in ordered if item[0] <= cut]
    return ordered[:limit]


def recalled_packet(packet: str, recalls: Sequence[StoredRoomRecall]) -> str:
    """A room message's migrated ``packet``, emptied (contract §11) when one
    of ``recalls`` (D entries still in Redis: their rows are emptied when
    they migrate) names it."""
    for recall in recalls:
        for head in room_message_heads(recall.from_id, recall.room, recall.recalled_id.decode("utf-8")):
            if head and packet.startswith(head):
                return tombstone(packet)
    return packet


class RoomAdmin:
    """The platform's side (server API, ``imd-admin room``)."""

    def __init__(self, rooms: RoomStore, node: RoomNode, clock: Clock, max_members: int, close_grace: float,
                 track: Optional[Callable[[int, str], Deferred]] = None) -> None:
        """``track(courier, room)``: notes, before a meta naming ``"track":
        <courier>`` is stored, that the room may follow the courier's
        positions (contract §11; imd.stores.positions.PositionAudience.track_room)."""
        self._rooms = rooms
        self._track = track
        self._node = node
        self._clock = clock
        self.max_members = max_members
        self.close_grace = close_grace

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _announce(self, events: Sequence[RoomEvent]) -> None:
        if self._rooms.publishes:
            return   # the script that stored them published them
        for event in events:
            self._node.deliver_room(event.recipients, event.entry)

    def _too_many(self, count: int) -> None:
        if count > self.max_members:
            raise ImdError("bad_packet", "at most %d members ([rooms] max_members)" % self.max_members)

    @defer.inlineCallbacks
    def create(self, room: str, members: Sequence[int],
               meta: Optional[Json] = None) -> Generator[Deferred, object, Json]:
        """Create ``room`` with ``members``, or make them its members."""
        self._too_many(len(set(members)))
        courier = tracked_courier(meta)
        if courier is not None and self._track is not None:
            yield self._track(courier, room)
        result = yield self._rooms.set_members(room, sorted(set(members)), (), self._now_ms(), self.max_members,
                                               meta, create=True)
        return self._changed(room, result)

    @defer.inlineCallbacks
    def change(self, room: str, add: Sequence[int], rm: Sequence[int]) -> Generator[Deferred, object, Json]:
        result = yield self._rooms.set_members(room, sorted(set(add)), sorted(set(rm) - set(add)), self._now_ms(),
                                               self.max_members)
        return self._changed(room, result)

    def _changed(self, room: str, result: object) -> Json:
        if result == NO_ROOM:
            raise ImdError("not_found", "no room %s" % room)
        if result == TOO_MANY:
            raise ImdError("bad_packet", "at most %d members ([rooms] max_members)" % self.max_members)
        members, events = cast(RoomChange, result)
        self._announce(events)
        return {"room": room, "members": list(members)}

    @defer.inlineCallbacks
    def send(self, room: str, msg: Json, packet_id: Optional[str] = None) -> Generator[Deferred, object, Json]:
        """A system ``s`` from 0 into the room (``packet_id``: one is made
        when None); the same id again answers the first seq."""
        packet_id = packet_id or new_message_id(self._clock)
        now = self._now_ms()
        head = protocol.room_message_head(packet_id, 0, room, "s", msg, now)
        result = cast(RoomStored, (yield self._rooms.store(room, 0, packet_id, head, now)))
        _refused(result.status, room)
        if result.status != DUPLICATE and not self._rooms.publishes:
            self._node.deliver_room(result.members, result.entry)
        return {"id": packet_id, "seq": result.seq}

    @defer.inlineCallbacks
    def close(self, room: str) -> Generator[Deferred, object, Json]:
        result = yield self._rooms.close(room, self._now_ms(), int(round(self.close_grace * 1000)))
        if result == NO_ROOM:
            raise ImdError("not_found", "no room %s" % room)
        ends_at, event = cast(Tuple[int, Optional[RoomEvent]], result)
        if event is not None:
            self._announce([event])
        return {"room": room, "ends_at": ends_at}

    @defer.inlineCallbacks
    def show(self, room: str) -> Generator[Deferred, object, Json]:
        state = cast(Optional[RoomState], (yield self._rooms.state(room)))
        if state is None:
            raise ImdError("not_found", "no room %s" % room)
        return {"room": room, "members": list(state.members), "meta": state.meta, "last_seq": state.last_seq,
                "read": state.read, "closed_at": state.closed_at, "ends_at": state.ends_at}


def tracked_courier(meta: Optional[Json]) -> Optional[int]:
    """The courier a room's meta tracks (``"track": <uid>``, contract §11),
    None when it tracks none; a ``track`` that is not a user id is refused."""
    if meta is None or meta.get("track") is None:
        return None
    courier = meta["track"]
    if type(courier) is not int or not 0 < courier <= protocol.MAX_UID:
        raise ImdError("bad_packet", "meta.track: not a user id: %r" % (courier,))
    return courier


def dispatch(room_handler: Callable[..., object], plain: Callable[..., object]) -> Handler:
    """A packet type's handler: the room form to ``room_handler``, the rest to ``plain``."""
    def handle(uid: int, packet: protocol.ClientPacket) -> object:
        if getattr(packet, "room", None) is not None:
            return room_handler(uid, packet)
        return plain(uid, packet)
    return handle


def history_dispatch(rooms: RoomHandler, plain: Callable[..., object]) -> Handler:
    """``H``: the room form, or a room history's cursor, to the room handler."""
    def handle(uid: int, packet: protocol.ClientPacket) -> object:
        if isinstance(packet, protocol.RoomHistoryPacket) or (
                isinstance(packet, protocol.HistoryPacket) and packet.after is not None
                and decode_room_cursor(packet.after) is not None):
            return rooms.history(uid, packet)
        return plain(uid, packet)
    return handle

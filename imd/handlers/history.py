"""``H``: the user's stored messages, oldest first, paged by an opaque cursor.

Every message is ordered by ``(ts, seq)``: its server time, then the order
the server accepted it in (``seq``, taken in Redis by the script that stored
it), so one sender's messages come back in the order sent, whatever their
ids.  A message has that key from the moment it is stored, before the
migrator copies it.  A page is the union of the rows in MySQL and the
user's entries still in Redis (``pending:<uid>``), merged by the message
log (imd.messagelog.merge: Redis read first, each ``(from, id, to)`` once)
and cut at the cursor's key.

Only messages where the user is the sender or the recipient are ever read,
on both sides.

A reply holds at most :data:`MAX_REPLY_BYTES` (1 MiB) of JSON (contract §3):
a page that would be larger ends early, with ``more`` and a cursor right
after its last message, so 500 messages of 1023 four-byte characters page
as several replies, never one of 2 MB.

Each message carries ``"pos"`` (its accept order ``seq``: its position in
the user's stream, contract §10; none for an entry an older imd stored
without one) and ``"state"`` (contract §7.1): the furthest of its receipts
in MySQL and among the same pending entries (imd.messagelog.merge).

``H {"sync": P, "limit": L}`` (contract §10) reads the user's stream after
position P: the same merge in stream order (by ``seq`` alone; pending
entries above P, read by score in Redis, and MySQL's rows with accept_seq
above P), paged by a cursor of its own (the last ``pos`` sent), so paging
never skips or repeats: positions are unique and every entry has its own
from the moment it is stored.  A P below the highest position retention
removed (``log_mark``, written by the purge) answers from the oldest kept
with ``"truncated": true``.
"""

import base64
import binascii
import itertools
import json
from typing import Any, Callable, Generator, List, Optional, Sequence, Tuple, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred

from imd import protocol
from imd.errors import ImdError
from imd.handlers import Reply
from imd.handlers.ports import ConversationRow, ConversationSource, HistoryRows, Messages
from imd.stores.budgets import Budget
from imd.messagelog.merge import LogRow, Pending, Position, Selection, merged

CURSOR_VERSION = 2
SYNC_CURSOR_VERSION = 3   # [3, pos, limit]: a sync's next page
CONVERSATIONS_CURSOR_VERSION = 4   # [4, pos, limit]: the conversation list's next page
# An H reply holds at most this much JSON (contract §3): a page that would be
# larger ends early, with ``more`` and a cursor right after its last message.
MAX_REPLY_BYTES = 1024 * 1024


def encode_cursor(key: Tuple[int, int], with_uid: Optional[int], limit: int) -> str:
    ts, seq = key
    body = json.dumps([CURSOR_VERSION, ts, seq, with_uid, limit], separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")


def encode_sync_cursor(pos: int, limit: int, version: int = SYNC_CURSOR_VERSION) -> str:
    body = json.dumps([version, pos, limit], separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")


def _cursor_body(cursor: str) -> object:
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        return json.loads(raw.decode("utf-8"))
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        return None


def decode_sync_cursor(cursor: str, version: int = SYNC_CURSOR_VERSION,
                       max_limit: int = protocol.HISTORY_MAX_LIMIT) -> Optional[Tuple[int, int]]:
    """``(pos, limit)`` from a sync's cursor (``version``: or the
    conversation list's); None for any other text."""
    body = _cursor_body(cursor)
    if type(body) is list and len(body) == 3 and body[0] == version:
        _, pos, limit = body
        if (type(pos) is int and 0 <= pos < 2 ** 63
                and type(limit) is int and 1 <= limit <= max_limit):
            return pos, limit
    return None


def _valid_uid(value: Any) -> bool:
    return type(value) is int and 0 < value <= protocol.MAX_UID


def decode_cursor(cursor: str) -> Tuple[Position, Optional[int], int]:
    """``(position, with_uid, limit)`` from a cursor, or ImdError bad_packet."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        version, ts, seq, with_uid, limit = json.loads(raw.decode("utf-8"))
        valid = (version == CURSOR_VERSION and type(ts) is int and 0 <= ts < 2 ** 63
                 and type(seq) is int and 0 <= seq < 2 ** 63
                 and (with_uid is None or _valid_uid(with_uid))
                 and type(limit) is int and 1 <= limit <= protocol.HISTORY_MAX_LIMIT)
        if valid:
            return (ts, seq), with_uid, limit
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        pass
    raise ImdError("bad_packet", "H: after is not a cursor from a previous reply (start a fresh query)")


def _fitting(items: List[bytes], packet_id: Any, with_uid: Optional[int], limit: int,
             max_bytes: int = MAX_REPLY_BYTES, sync: bool = False) -> int:
    """How many of ``items`` (oldest first) an H reply can hold in
    ``max_bytes`` of JSON, with ``more`` and the longest cursor (a sync's:
    and ``truncated``); at least one, so paging always moves on (one
    message is far below the cap)."""
    if sync:
        empty = protocol.history(packet_id, (), True, encode_sync_cursor(2 ** 63 - 1, limit), truncated=True)
    else:
        empty = protocol.history(packet_id, (), True, encode_cursor((2 ** 63 - 1, 2 ** 63 - 1), with_uid, limit))
    room = max_bytes - len(empty)
    for count, item in enumerate(items):
        room -= len(item) + (1 if count else 0)   # the comma before it
        if room < 0:
            return max(count, 1)
    return len(items)


class HistoryHandler:
    def __init__(self, messages: Messages, mysql: HistoryRows, clock: Any = None,
                 user_budget: Optional[Budget] = None,
                 conversation_sources: Sequence[ConversationSource] = (),
                 room_stream: Optional[Callable[[int, int, int], Deferred]] = None) -> None:
        """``user_budget``: an imd.stores.budgets.Budget that every ``H`` of
        a user, on any connection and node, spends from (with ``clock``);
        None: no such budget.  ``conversation_sources``: what ``H
        {"conversations": true}`` lists (the first spends the budget)."""
        self._messages = messages
        self._mysql = mysql
        self._clock = clock
        self._user_budget = user_budget
        self._conversation_sources = list(conversation_sources)
        # the user's room messages for its sync (imd.handlers.rooms): [(pos, packet)]
        self._room_stream = room_stream

    @defer.inlineCallbacks
    def handle(self, uid: int, packet: protocol.HistoryPacket) -> Any:
        if packet.sync is not None:
            reply = yield self._sync(uid, packet.id, packet.sync, packet.limit)
            return reply
        if packet.conversations:
            reply = yield self._conversations(uid, packet.id, None, packet.limit)
            return reply
        if packet.after is not None:
            sync = decode_sync_cursor(packet.after)
            if sync is not None:
                reply = yield self._sync(uid, packet.id, *sync)
                return reply
            listed = decode_sync_cursor(packet.after, CONVERSATIONS_CURSOR_VERSION, protocol.CONVERSATIONS_MAX_LIMIT)
            if listed is not None:
                reply = yield self._conversations(uid, packet.id, *listed)
                return reply
            position, with_uid, limit = decode_cursor(packet.after)
        else:
            position, with_uid, limit = (packet.since, None), packet.with_uid, packet.limit
        if self._user_budget is None:
            pending = yield self._messages.pending(uid)
        else:
            pending = yield self._messages.pending_for_history(uid, self._user_budget,
                                                               int(self._clock.seconds() * 1000))
            if pending is None:
                raise ImdError("rate_limited", "H: over this user's history budget "
                                               "([websocket] history_user_rate), retry later")
        rows = yield self._mysql.history(uid, with_uid, position, limit + 1)
        selection = Selection(uid, with_uid, after=position)
        page = list(itertools.islice(merged(rows, Pending(pending, selection.matches)), limit + 1))
        page, more = page[:limit], len(page) > limit
        items = [protocol.history_item(message.packet, state, message.seq) for message, state in page]
        fitting = _fitting(items, packet.id, with_uid, limit)
        if fitting < len(items):
            page, items, more = page[:fitting], items[:fitting], True
        next_cursor = encode_cursor(page[-1][0].key, with_uid, limit) if more else None
        return Reply(protocol.history(packet.id, items, more, next_cursor))

    @defer.inlineCallbacks
    def _sync(self, uid: int, packet_id: protocol.PacketId, after_pos: int,
              limit: int) -> Generator[Deferred, object, Reply]:
        """The stream after ``after_pos`` (contract §10): Redis read first,
        then MySQL (imd.messagelog.merge: no gap at the boundary)."""
        now_ms = int(self._clock.seconds() * 1000) if self._clock is not None else 0
        pending = cast(Optional[List[str]],
                       (yield self._messages.pending_for_sync(uid, after_pos, self._user_budget, now_ms)))
        if pending is None:
            raise ImdError("rate_limited", "H: over this user's history budget "
                                           "([websocket] history_user_rate), retry later")
        rows, purged = cast(Tuple[List[LogRow], int], (yield self._mysql.stream(uid, after_pos, limit + 1)))
        selection = Selection(uid, after_pos=after_pos)
        page = list(itertools.islice(merged(rows, Pending(pending, selection.matches, by_pos=True), by_pos=True),
                                     limit + 1))
        stream = [(message.seq, protocol.history_item(message.packet, state, message.seq)) for message, state in page]
        if self._room_stream is not None:
            # rooms' messages while a member (contract §9, §10), by pos with the rest
            rooms = cast(List[Tuple[int, bytes]], (yield self._room_stream(uid, after_pos, limit + 1)))
            if rooms:
                # a side that filled its page may hold more beyond its last
                # pos: the merge is complete only up to the lowest such pos
                full = [side[-1][0] for side in (stream, rooms) if len(side) > limit]
                merged_items = sorted(stream + rooms)
                stream = [item for item in merged_items if item[0] <= min(full)] if full else merged_items
        stream, more = stream[:limit], len(stream) > limit
        items = [item for _, item in stream]
        fitting = _fitting(items, packet_id, None, limit, sync=True)
        if fitting < len(items):
            stream, items, more = stream[:fitting], items[:fitting], True
        next_cursor = encode_sync_cursor(stream[-1][0], limit) if more else None
        return Reply(protocol.history(packet_id, items, more, next_cursor, truncated=after_pos < purged))

    @defer.inlineCallbacks
    def _conversations(self, uid: int, packet_id: protocol.PacketId, below_pos: Optional[int],
                       limit: int) -> Generator[Deferred, object, Reply]:
        """The conversation list (contract §10): every source's newest
        below ``below_pos``, merged newest first; a page ends at ``limit``
        and its cursor is the ``pos`` of its last row (positions are unique
        per user: nothing is skipped or repeated while the rows stand
        still; a conversation with a new message moves to the front)."""
        now_ms = int(self._clock.seconds() * 1000) if self._clock is not None else 0
        rows: List[ConversationRow] = []
        for source in self._conversation_sources:
            got = yield source.newest(uid, below_pos, limit + 1, now_ms)
            if got is None:
                raise ImdError("rate_limited", "H: over this user's history budget "
                                               "([websocket] history_user_rate), retry later")
            rows.extend(cast(List[ConversationRow], got))
        rows.sort(key=lambda row: row.pos, reverse=True)
        page, more = rows[:limit], len(rows) > limit
        items = [row.item for row in page]
        empty = protocol.history(packet_id, (), True, encode_sync_cursor(2 ** 63 - 1, limit))
        room = MAX_REPLY_BYTES - len(empty)
        for count, item in enumerate(items):
            room -= len(item) + 1
            if room < 0:
                page, items, more = page[:max(count, 1)], items[:max(count, 1)], True
                break
        next_cursor = encode_sync_cursor(page[-1].pos, limit, CONVERSATIONS_CURSOR_VERSION) if more else None
        return Reply(protocol.history(packet_id, items, more, next_cursor))

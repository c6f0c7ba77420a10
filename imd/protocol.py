"""Packets in and out: the JSON of the WebSocket packets (docs/protocol.md),
client frames parsed and server packets built.  (The server API's JSON is
:mod:`imd.http.api`'s, a push's body :mod:`imd.push.payload`'s.)

Pure: bytes in, small typed packets out; server packets built as bytes.
Every problem with a client frame raises :class:`PacketError`, carrying the
contract's error code and the packet's ``id`` when one could be read.
"""

import json
import platform
import re
from array import array
from itertools import accumulate
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type, Union

from imd import jsonfast
from imd.errors import ImdError

MAX_TEXT_CHARS = 1023
MAX_IMAGE_ID_CHARS = 128
_IMAGE_INT_LIMIT = 10 ** MAX_IMAGE_ID_CHARS
MAX_ID_CHARS = 64
MAX_UID = 2 ** 63 - 1
MAX_CURSOR_CHARS = 512
HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 500
MAX_LONGITUDE = 180.0
MAX_LATITUDE = 85.05112878
MAX_RECEIPT_IDS = 100
# An R takes one token of the connection's rate per this many ids it names
RECEIPT_IDS_PER_TOKEN = 10

# WebSocket close codes (contract §1, §2 "Close")
CLOSE_GOING_AWAY = 1001
CLOSE_UNAUTHORIZED = 4001
CLOSE_REPLACED = 4002
CLOSE_KICKED = 4003
CLOSE_IDLE = 4004
CLOSE_TOO_MANY_ERRORS = 4008

MESSAGE_TYPES = frozenset("ti")
COMMAND_TYPES = frozenset("PTSOH")
# Addressed to a user (``to``) like messages, never stored as one: R, Y
SIGNAL_TYPES = frozenset("RY")

# Receipt states in the order they move (contract §7.1); 0 = "sent", none yet
RECEIPT_STATES = {"delivered": 1, "read": 2}
STATE_NAMES = ("sent", "delivered", "read")

# A packet's ``id``: as the client sent it (a string or an integer), or a server-made string
PacketId = Union[int, str]
# A decoded JSON object, as the client sent it
JsonObject = Dict[str, Any]


class PacketError(ImdError):
    """A client frame that cannot be served; ``packet_id`` is echoed in ``E``."""

    def __init__(self, code: str, reason: Optional[str] = None, packet_id: Optional[PacketId] = None) -> None:
        super().__init__(code, reason)
        self.packet_id = packet_id


# --- typed client packets -----------------------------------------------------

class Packet:
    __slots__ = ("id", "dedup_id")
    type: Optional[str] = None
    cost = 1   # tokens of the connection's rate ([websocket] rate) it takes

    def __init__(self, packet_id: PacketId) -> None:
        self.id = packet_id                  # echoed exactly as sent
        self.dedup_id = str(packet_id)       # the (from, id) key for retries

    def __repr__(self) -> str:
        fields = ", ".join("%s=%r" % (n, getattr(self, n))
                           for c in type(self).__mro__ for n in getattr(c, "__slots__", ()))
        return "%s(%s)" % (type(self).__name__, fields)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)


class MessagePacket(Packet):
    """``t`` (text) or ``i`` (image id): stored, then relayed to ``to`` and
    to the sender's other connections.  ``origin``: the id of the
    connection it came on (set by the transport, not parsed; None
    elsewhere), which gets only the ``A``."""
    __slots__ = ("type", "to", "msg", "origin", "room")
    type: str

    def __init__(self, packet_id: PacketId, type: str, to: int, msg: Union[str, int],
                 room: Optional[str] = None) -> None:
        super().__init__(packet_id)
        self.type, self.to, self.msg = type, to, msg
        self.origin: Optional[str] = None
        # contract v3 §9: a room's message (``to`` is then 0)
        self.room = room


class PingPacket(Packet):
    __slots__ = ()
    type = "P"


class TakeOrderPacket(Packet):
    __slots__ = ("order",)
    type = "T"

    def __init__(self, packet_id: PacketId, order: int) -> None:
        super().__init__(packet_id)
        self.order = order


class SitePacket(Packet):
    __slots__ = ("longitude", "latitude")
    type = "S"

    def __init__(self, packet_id: PacketId, longitude: float, latitude: float) -> None:
        super().__init__(packet_id)
        self.longitude, self.latitude = longitude, latitude


class OnlinePacket(Packet):
    __slots__ = ("uid",)
    type = "O"

    def __init__(self, packet_id: PacketId, uid: int) -> None:
        super().__init__(packet_id)
        self.uid = uid


class HistoryPacket(Packet):
    """``H``: either a fresh query (``since``, ``limit``, ``with_uid``), a
    sync (``sync``: the stream after that position, contract §10, with
    ``limit``) or ``after``, an opaque cursor from a previous reply."""
    __slots__ = ("since", "limit", "with_uid", "after", "sync", "conversations")
    type = "H"

    def __init__(self, packet_id: PacketId, since: int = 0, limit: int = HISTORY_DEFAULT_LIMIT,
                 with_uid: Optional[int] = None, after: Optional[str] = None, sync: Optional[int] = None,
                 conversations: bool = False) -> None:
        super().__init__(packet_id)
        self.since, self.limit, self.with_uid, self.after = since, limit, with_uid, after
        self.sync = sync
        # the conversation list (contract §10), ``limit`` conversations a page
        self.conversations = conversations


class ReceiptPacket(Packet):
    """``R``: ``state`` (1 delivered, 2 read) of the messages ``ids`` that
    ``to`` sent to the reader; ``to`` 0 names system messages.  ``ids`` as
    the client sent them; ``dedup_ids`` their decimal-string form."""
    __slots__ = ("to", "state", "ids", "dedup_ids", "cost")
    type = "R"

    def __init__(self, packet_id: PacketId, to: int, state: int, ids: List[PacketId]) -> None:
        super().__init__(packet_id)
        self.to, self.state, self.ids = to, state, ids
        self.dedup_ids = [str(i) for i in ids]
        # charged by the ids it names: each is a Redis read, maybe more
        self.cost = -(-len(ids) // RECEIPT_IDS_PER_TOKEN)


class TypingPacket(Packet):
    """``Y``: the sender is typing to ``to`` (``typing`` True) or stopped."""
    __slots__ = ("to", "typing")
    type = "Y"

    def __init__(self, packet_id: PacketId, to: int, typing: bool) -> None:
        super().__init__(packet_id)
        self.to, self.typing = to, typing


class RoomReadPacket(Packet):
    """``R`` in a room (contract v3 §9): the reader's cursor to ``seq``."""
    __slots__ = ("room", "seq")
    type = "R"

    def __init__(self, packet_id: PacketId, room: str, seq: int) -> None:
        super().__init__(packet_id)
        self.room, self.seq = room, seq


class RoomTypingPacket(Packet):
    """``Y`` in a room (contract v3 §9)."""
    __slots__ = ("room", "typing")
    type = "Y"

    def __init__(self, packet_id: PacketId, room: str, typing: bool) -> None:
        super().__init__(packet_id)
        self.room, self.typing = room, typing


class RoomHistoryPacket(Packet):
    """``H {"room", "after_seq", "limit"}`` (contract v3 §9)."""
    __slots__ = ("room", "after_seq", "limit")
    type = "H"

    def __init__(self, packet_id: PacketId, room: str, after_seq: int = 0,
                 limit: int = HISTORY_DEFAULT_LIMIT) -> None:
        super().__init__(packet_id)
        self.room, self.after_seq, self.limit = room, after_seq, limit


# What parse_frame returns: each has a ``type`` string
class RecallPacket(Packet):
    """``D`` (contract v3 §11): recall ``msg``, the id of one of the
    sender's own messages to ``to`` (or, once rooms exist, in ``room``).
    ``msg`` is the id in its dedup form (a number as its decimal string).
    ``origin``: as for :class:`MessagePacket`, the connection it came on,
    which gets only the ``A``; the sender's other connections get the D."""
    __slots__ = ("to", "room", "msg", "origin")
    type = "D"

    def __init__(self, packet_id: PacketId, to: Optional[int], room: Optional[object], msg: str) -> None:
        super().__init__(packet_id)
        self.to, self.room, self.msg = to, room, msg
        self.origin: Optional[str] = None


ClientPacket = Union[MessagePacket, PingPacket, TakeOrderPacket, SitePacket, OnlinePacket, HistoryPacket,
                     ReceiptPacket, TypingPacket, RecallPacket, RoomReadPacket, RoomTypingPacket,
                     RoomHistoryPacket]

MAX_ROOM_CHARS = 64
# ("." and ".." are not ids: in the API's paths, /IM/api/rooms/<room>/...,
# a proxy that normalises paths would turn them into another route)
_ROOM_ID = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.:-]{1,%d}\Z" % MAX_ROOM_CHARS)


def valid_room(value: object) -> bool:
    """A room id (contract v3 §9): 1-64 characters of ``A-Z a-z 0-9 _ . : -``,
    but not ``.`` or ``..``."""
    return isinstance(value, str) and _ROOM_ID.match(value) is not None


_STORED_ROOM_ID = re.compile(r"[A-Za-z0-9_.:-]{1,%d}\Z" % MAX_ROOM_CHARS)


def valid_stored_room(value: object) -> bool:
    """A room id as the message log may hold it: :func:`valid_room`'s, and
    ``.`` and ``..``, ids until they were refused (a room made before keeps
    its entries: they must still reach MySQL, not ``MQ:dead``)."""
    return isinstance(value, str) and _STORED_ROOM_ID.match(value) is not None


def _room_of(packet_id: PacketId, obj: JsonObject, kind: str) -> Optional[str]:
    """The packet's room, or None when it names none; bad_packet for a bad
    room id, or a room packet that also names a recipient."""
    if "room" not in obj:
        return None
    room = obj["room"]
    if not valid_room(room):
        raise PacketError("bad_packet", "%s: room must be 1-%d characters of A-Z a-z 0-9 _ . : -"
                          % (kind, MAX_ROOM_CHARS), packet_id)
    to = obj.get("to", 0)
    if to not in (0, "0", None) or type(to) is bool:
        raise PacketError("bad_packet", "%s: a room packet names no recipient (to absent or 0)" % kind, packet_id)
    return room


# --- parsing ------------------------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not JSON" % name)


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
# A packet nests at most this deep.  The decoders recurse once or more per
# level, so where they give up depends on the interpreter, the stack the
# call starts from and, on PyPy, on what the JIT has compiled: the same
# packet was taken by one call and refused by the next.  The limit is
# checked first, so the answer is always the same.
MAX_NESTING = 100
# A text with at most this many brackets cannot nest past MAX_NESTING, and
# PyPy's plain json.loads may read it; any other text is measured first.
_PLAIN_MAX_BRACKETS = MAX_NESTING
# A JSON string, or an unterminated one running to the end: never failing
# once it has started, so the scan stays linear whatever the text.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)
# Each byte of the text, strings taken out, as its step in depth.
_DEPTH_STEPS = bytes(1 if byte in b"[{" else 255 if byte in b"]}" else 0 for byte in range(256))


def nesting(text: str) -> int:
    """How deep ``text``'s arrays and objects nest, brackets inside JSON
    strings not counted (for a text that is not JSON, a bound the decoder
    would have refused or not reached anyway)."""
    steps = _JSON_STRING.sub("", text).encode("utf-8", "surrogatepass").translate(_DEPTH_STEPS)
    return max(accumulate(array("b", steps)), default=0)


# PyPy's hooked decoder is the pure-Python one, which reads a "\\uXXXX"
# escape with int(XXXX, 16): that also takes "_", "+", spaces and "0x", where
# JSON (and the C scanners, and json.loads) want four hex digits.  On PyPy a
# "\\u" escape (one not itself escaped) without them is refused first.
_BAD_ESCAPE = re.compile(r"(?:^|[^\\])(?:\\\\)*\\u(?![0-9a-fA-F]{4})")
_CHECK_ESCAPES = platform.python_implementation() == "PyPy"


def _loads(text: str) -> object:
    """``_decoder.decode``; through plain ``json.loads`` where
    :mod:`imd.jsonfast` chose it (PyPy), no constant can be in the text and
    it cannot nest past :data:`MAX_NESTING`; a text nested deeper is refused
    before either reads it."""
    if text.count("[") + text.count("{") <= _PLAIN_MAX_BRACKETS:
        if jsonfast.plain_loads and "NaN" not in text and "Infinity" not in text:
            return json.loads(text)
    elif nesting(text) > MAX_NESTING:
        raise ValueError("nested more than %d deep" % MAX_NESTING)
    if _CHECK_ESCAPES and "\\u" in text and _BAD_ESCAPE.search(text):
        raise ValueError("a \\u escape without four hex digits")
    return _decoder.decode(text)


def _is_int(value: Any) -> bool:
    return type(value) is int


def _encodable(text: str) -> bool:
    """False for strings holding lone surrogates (JSON allows "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _packet_id(obj: JsonObject) -> PacketId:
    if "id" not in obj:
        raise PacketError("bad_packet", "missing field: id")
    value = obj["id"]
    if _is_int(value):
        if len(str(value)) > MAX_ID_CHARS:
            raise PacketError("bad_packet", "id: at most %d characters" % MAX_ID_CHARS)
        return value
    if isinstance(value, str):
        if not 1 <= len(value) <= MAX_ID_CHARS or not _encodable(value):
            raise PacketError("bad_packet", "id: a string of 1-%d characters" % MAX_ID_CHARS)
        return value
    raise PacketError("bad_packet", "id: must be a string or an integer")


def parse_uid(value: Any, field: str = "to") -> int:
    """A user id: a positive integer or a string of digits.  Returns int."""
    if _is_int(value):
        uid = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        uid = int(value)
    else:
        raise ValueError("%s: a user id (positive integer or string of digits)" % field)
    if not 0 < uid <= MAX_UID:
        raise ValueError("%s: a user id must be a positive integer" % field)
    return uid


def _message(packet_id: PacketId, kind: str, obj: JsonObject) -> MessagePacket:
    room = _room_of(packet_id, obj, kind) if "room" in obj else None
    if room is not None:
        to = 0
    else:
        try:
            to = parse_uid(obj.get("to"))
        except ValueError as e:
            raise PacketError("bad_packet", str(e), packet_id)
    if "msg" not in obj:
        raise PacketError("bad_packet", "missing field: msg", packet_id)
    msg = obj["msg"]
    if kind == "t":
        if not isinstance(msg, str) or not msg:
            raise PacketError("bad_packet", "t: msg must be a non-empty string", packet_id)
        if len(msg) > MAX_TEXT_CHARS:
            raise PacketError("too_long", "t: at most %d characters" % MAX_TEXT_CHARS, packet_id)
    else:
        if _is_int(msg):
            if msg <= 0:
                raise PacketError("bad_packet", "i: msg must be a positive integer or a string", packet_id)
            if msg >= _IMAGE_INT_LIMIT:  # more than 128 digits
                raise PacketError("too_long", "i: at most %d characters" % MAX_IMAGE_ID_CHARS, packet_id)
        elif isinstance(msg, str) and msg:
            if len(msg) > MAX_IMAGE_ID_CHARS:
                raise PacketError("too_long", "i: at most %d characters" % MAX_IMAGE_ID_CHARS, packet_id)
        else:
            raise PacketError("bad_packet", "i: msg must be an image id (string or positive integer)", packet_id)
    if isinstance(msg, str) and not _encodable(msg):
        raise PacketError("bad_packet", "msg: not valid Unicode", packet_id)
    return MessagePacket(packet_id, kind, to, msg, room)


def _coordinate(msg: JsonObject, names: Tuple[str, ...], bound: float, packet_id: PacketId) -> float:
    for name in names:
        if name in msg:
            value = msg[name]
            if type(value) not in (int, float):
                raise PacketError("bad_packet", "S: %s must be a number" % name, packet_id)
            if not -bound <= value <= bound:
                raise PacketError("bad_packet", "S: %s must be within [-%s, %s]" % (name, bound, bound), packet_id)
            return float(value)
    raise PacketError("bad_packet", "S: missing %s" % names[0], packet_id)


def _site(packet_id: PacketId, obj: JsonObject) -> SitePacket:
    msg = obj.get("msg")
    if not isinstance(msg, dict):
        raise PacketError("bad_packet", "S: msg must be an object {longitude, latitude}", packet_id)
    longitude = _coordinate(msg, ("longitude", "longtitude"), MAX_LONGITUDE, packet_id)
    latitude = _coordinate(msg, ("latitude",), MAX_LATITUDE, packet_id)
    return SitePacket(packet_id, longitude, latitude)


def _timestamp(value: Any, name: str, packet_id: PacketId) -> int:
    if type(value) not in (int, float) or not 0 <= value < 2 ** 53:
        raise PacketError("bad_packet", "H: %s must be a Unix time in milliseconds" % name, packet_id)
    return int(value)


def _history(packet_id: PacketId, obj: JsonObject) -> Union[HistoryPacket, RoomHistoryPacket]:
    if "msg" not in obj:
        raise PacketError("bad_packet", "missing field: msg", packet_id)
    msg = obj["msg"]
    if type(msg) in (int, float):
        return HistoryPacket(packet_id, since=_timestamp(msg, "msg", packet_id))
    if not isinstance(msg, dict):
        raise PacketError("bad_packet", "H: msg must be a time, a query object or {after}", packet_id)
    if "after" in msg:
        cursor = msg["after"]
        if set(msg) != {"after"} or not isinstance(cursor, str) or not 0 < len(cursor) <= MAX_CURSOR_CHARS:
            raise PacketError("bad_packet", "H: after must be a cursor string from a previous reply", packet_id)
        return HistoryPacket(packet_id, after=cursor)
    if "sync" in msg:
        return _sync(packet_id, msg)
    if "conversations" in msg:
        return _conversations(packet_id, msg)
    if "room" in msg:
        return _room_history(packet_id, msg)
    unknown = set(msg) - {"since", "limit", "with"}
    if unknown:
        raise PacketError("bad_packet", "H: unknown field %s" % sorted(unknown)[0], packet_id)
    since = _timestamp(msg.get("since", 0), "since", packet_id)
    limit = msg.get("limit", HISTORY_DEFAULT_LIMIT)
    if not _is_int(limit) or not 1 <= limit <= HISTORY_MAX_LIMIT:
        raise PacketError("bad_packet", "H: limit must be an integer in 1..%d" % HISTORY_MAX_LIMIT, packet_id)
    with_uid = None
    if msg.get("with") is not None:
        try:
            with_uid = parse_uid(msg["with"], "with")
        except ValueError as e:
            raise PacketError("bad_packet", "H: " + str(e), packet_id)
    return HistoryPacket(packet_id, since=since, limit=limit, with_uid=with_uid)


def _sync(packet_id: PacketId, msg: JsonObject) -> HistoryPacket:
    """``{"sync": P, "limit": L}`` (contract §10): P ≥ 0, L 1..500."""
    unknown = set(msg) - {"sync", "limit"}
    if unknown:
        raise PacketError("bad_packet", "H: sync takes only limit besides it, not %s" % sorted(unknown)[0], packet_id)
    pos = msg["sync"]
    if not _is_int(pos) or not 0 <= pos < 2 ** 63:
        raise PacketError("bad_packet", "H: sync must be a position: an integer >= 0", packet_id)
    limit = msg.get("limit", HISTORY_DEFAULT_LIMIT)
    if not _is_int(limit) or not 1 <= limit <= HISTORY_MAX_LIMIT:
        raise PacketError("bad_packet", "H: limit must be an integer in 1..%d" % HISTORY_MAX_LIMIT, packet_id)
    return HistoryPacket(packet_id, limit=limit, sync=pos)


CONVERSATIONS_DEFAULT_LIMIT = 50
CONVERSATIONS_MAX_LIMIT = 200


def _conversations(packet_id: PacketId, msg: JsonObject) -> HistoryPacket:
    """``{"conversations": true, "limit": L}`` (contract §10): L 1..200, default 50."""
    unknown = set(msg) - {"conversations", "limit"}
    if unknown:
        raise PacketError("bad_packet", "H: conversations takes only limit besides it, not %s" % sorted(unknown)[0],
                          packet_id)
    if msg["conversations"] is not True:
        raise PacketError("bad_packet", "H: conversations must be true", packet_id)
    limit = msg.get("limit", CONVERSATIONS_DEFAULT_LIMIT)
    if not _is_int(limit) or not 1 <= limit <= CONVERSATIONS_MAX_LIMIT:
        raise PacketError("bad_packet", "H: limit must be an integer in 1..%d" % CONVERSATIONS_MAX_LIMIT, packet_id)
    return HistoryPacket(packet_id, limit=limit, conversations=True)


def _room_history(packet_id: PacketId, msg: JsonObject) -> RoomHistoryPacket:
    """``{"room", "after_seq": N, "limit": L}`` (contract v3 §9)."""
    unknown = set(msg) - {"room", "after_seq", "limit"}
    if unknown:
        raise PacketError("bad_packet", "H: room takes after_seq and limit, not %s" % sorted(unknown)[0], packet_id)
    room = msg["room"]
    if not valid_room(room):
        raise PacketError("bad_packet", "H: room must be 1-%d characters of A-Z a-z 0-9 _ . : -" % MAX_ROOM_CHARS,
                          packet_id)
    after = msg.get("after_seq", 0)
    if not _is_int(after) or not 0 <= after < 2 ** 63:
        raise PacketError("bad_packet", "H: after_seq must be an integer >= 0", packet_id)
    limit = msg.get("limit", HISTORY_DEFAULT_LIMIT)
    if not _is_int(limit) or not 1 <= limit <= HISTORY_MAX_LIMIT:
        raise PacketError("bad_packet", "H: limit must be an integer in 1..%d" % HISTORY_MAX_LIMIT, packet_id)
    return RoomHistoryPacket(packet_id, room, after, limit)


def _message_id(value: Any) -> bool:
    """A message id named in a receipt: what ``_packet_id`` accepts."""
    if _is_int(value):
        return len(str(value)) <= MAX_ID_CHARS
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS and _encodable(value)


def _receipt(packet_id: PacketId, obj: JsonObject) -> Union[ReceiptPacket, RoomReadPacket]:
    room = _room_of(packet_id, obj, "R")
    if room is not None:
        msg = obj.get("msg")
        if (not isinstance(msg, dict) or set(msg) != {"state", "seq"} or msg["state"] != "read"
                or not _is_int(msg["seq"]) or not 0 <= msg["seq"] < 2 ** 63):
            raise PacketError("bad_packet", 'R: in a room msg must be {"state": "read", "seq": N}', packet_id)
        return RoomReadPacket(packet_id, room, msg["seq"])
    to = obj.get("to")
    try:
        to = 0 if (type(to) is int and to == 0) or to == "0" else parse_uid(to)
    except ValueError:
        raise PacketError("bad_packet", "R: to must be the uid of the messages' sender (0: the system)", packet_id)
    msg = obj.get("msg")
    if not isinstance(msg, dict) or set(msg) != {"state", "ids"}:
        raise PacketError("bad_packet", 'R: msg must be {"state": "delivered"|"read", "ids": [...]}', packet_id)
    state = RECEIPT_STATES.get(msg["state"]) if isinstance(msg["state"], str) else None
    if state is None:
        raise PacketError("bad_packet", 'R: state must be "delivered" or "read"', packet_id)
    ids = msg["ids"]
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_RECEIPT_IDS:
        raise PacketError("bad_packet", "R: ids must be a list of 1-%d message ids" % MAX_RECEIPT_IDS, packet_id)
    if not all(_message_id(i) for i in ids):
        raise PacketError("bad_packet", "R: each id must be a string of 1-%d characters or an integer"
                          % MAX_ID_CHARS, packet_id)
    return ReceiptPacket(packet_id, to, state, ids)


def _typing(packet_id: PacketId, obj: JsonObject) -> Union[TypingPacket, RoomTypingPacket]:
    room = _room_of(packet_id, obj, "Y")
    if room is not None:
        if type(obj.get("msg")) is not bool:
            raise PacketError("bad_packet", "Y: msg must be true or false", packet_id)
        return RoomTypingPacket(packet_id, room, obj["msg"])
    try:
        to = parse_uid(obj.get("to"))
    except ValueError as e:
        raise PacketError("bad_packet", "Y: " + str(e), packet_id)
    msg = obj.get("msg")
    if type(msg) is not bool:
        raise PacketError("bad_packet", "Y: msg must be true or false", packet_id)
    return TypingPacket(packet_id, to, msg)


def _recall(packet_id: PacketId, obj: JsonObject) -> RecallPacket:
    to, room = None, None
    if "room" in obj and "to" not in obj:
        room = obj["room"]
        if not valid_room(room):
            raise PacketError("bad_packet", "D: room must be 1-%d characters of A-Z a-z 0-9 _ . : -" % MAX_ROOM_CHARS,
                              packet_id)
    else:
        try:
            to = parse_uid(obj.get("to"))
        except ValueError as e:
            raise PacketError("bad_packet", "D: " + str(e), packet_id)
    msg = obj.get("msg")
    if not _message_id(msg):
        raise PacketError("bad_packet", "D: msg must be the id of one of your messages (a string of 1-%d"
                          " characters or an integer)" % MAX_ID_CHARS, packet_id)
    return RecallPacket(packet_id, to, room, str(msg))


def _uid_command(packet_cls: Union[Type[TakeOrderPacket], Type[OnlinePacket]],
                 field: str) -> Callable[[PacketId, JsonObject], ClientPacket]:
    def build(packet_id: PacketId, obj: JsonObject) -> ClientPacket:
        try:
            value = parse_uid(obj.get("msg"), "msg")
        except ValueError:
            raise PacketError("bad_packet", "%s: msg must be %s" % (packet_cls.type, field), packet_id)
        return packet_cls(packet_id, value)
    return build


_COMMANDS: Dict[str, Callable[[PacketId, JsonObject], ClientPacket]] = {
    "P": lambda packet_id, obj: PingPacket(packet_id),
    "T": _uid_command(TakeOrderPacket, "an order id"),
    "S": _site,
    "O": _uid_command(OnlinePacket, "a user id"),
    "H": _history,
    "R": _receipt,
    "D": _recall,
    "Y": _typing,
}


def parse_frame(payload: Union[bytes, str], is_binary: bool = False) -> ClientPacket:
    """One client frame -> a typed packet, or :class:`PacketError`."""
    if is_binary:
        raise PacketError("bad_packet", "binary frames are not accepted; send JSON text")
    try:
        obj = _loads(payload.decode("utf-8") if isinstance(payload, bytes) else payload)
    except (ValueError, RecursionError):
        raise PacketError("bad_packet", "not JSON")
    if not isinstance(obj, dict):
        raise PacketError("bad_packet", "a packet must be a JSON object")
    packet_id = _packet_id(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise PacketError("bad_packet", "type: must be a one-letter string", packet_id)
    if kind in MESSAGE_TYPES:
        return _message(packet_id, kind, obj)
    build = _COMMANDS.get(kind)
    if build is None:
        raise PacketError("unknown_type", "unknown type %r" % kind[:8], packet_id)
    return build(packet_id, obj)


# --- server packets -----------------------------------------------------------

def _dump(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _dump_fast(obj: Any) -> bytes:
    """``_dump`` for the message path (two per message): orjson, 0.2 µs
    instead of 4 µs, where :mod:`imd.jsonfast` has it.  For str and int
    values its bytes are the same as ``_dump``'s; an int past 64 bits (a
    long numeric packet id) is left to ``_dump``."""
    fast = jsonfast.orjson
    if fast is not None:
        try:
            return fast.dumps(obj)
        except TypeError:
            return _dump(obj)
    flat = jsonfast.flat_dumps   # without orjson (PyPy): strings and ints only
    if flat is not None:
        try:
            return flat(obj)
        except TypeError:
            pass
    return _dump(obj)


def dump_fast(obj: object) -> bytes:
    """The compact JSON (UTF-8) of a flat object of strings and ints, the
    fast way (``_dump_fast``): for imd.messagelog, which writes the stored
    form of a receipt."""
    return _dump_fast(obj)


def message_json(packet: MessagePacket, sender: int, ts: int) -> bytes:
    """The stored and delivered form of a message: ``{"id","from","to","type","msg","ts"}``."""
    return _dump_fast({"id": packet.id, "from": sender, "to": packet.to,
                       "type": packet.type, "msg": packet.msg, "ts": ts})


def system_message_json(packet_id: PacketId, sender: int, to: int, msg: Any, ts: int) -> bytes:
    """An ``s`` packet (server-made, stored like any message)."""
    return _dump({"id": packet_id, "from": sender, "to": to, "type": "s", "msg": msg, "ts": ts})


def system_message_parts(packet_id: PacketId, msg: Any, ts: int) -> Tuple[bytes, bytes]:
    """:func:`system_message_json` from 0 around its ``to``, for many
    recipients at once: ``head + b"<uid>" + tail`` is each one's packet."""
    head = _dump({"id": packet_id, "from": 0})[:-1] + b',"to":'
    return head, b',"type":"s","msg":' + _dump(msg) + b',"ts":%d}' % ts


def ack(packet_id: PacketId, msg: Any = "success") -> bytes:
    if type(msg) is not str:  # T's {"order", "uid"}: the general encoder
        return _dump({"id": packet_id, "from": 0, "type": "A", "msg": msg})
    return _dump_fast({"id": packet_id, "from": 0, "type": "A", "msg": msg})


def ack_stored(packet_id: PacketId, pos: int) -> bytes:
    """The ``A`` of a stored ``t`` or ``i`` (contract §10): ``pos``, its
    position in the sender's stream (the same as the recipient's)."""
    return _dump_fast({"id": packet_id, "from": 0, "type": "A", "msg": "success", "pos": pos})


def recall_json(packet_id: PacketId, sender: int, to: int, recalled_id: str, ts: int) -> bytes:
    """The stored form of a ``D`` (contract v3 §11): ``{"id","from","to",
    "type":"D","msg":<recalled id>,"ts"}``; delivered with ``"pos"``
    (:func:`with_pos`)."""
    return _dump({"id": packet_id, "from": sender, "to": to, "type": "D", "msg": recalled_id, "ts": ts})


def room_recall_head(packet_id: PacketId, sender: int, room: str, recalled_id: str, ts: int) -> bytes:
    """A ``D`` in a room (contract v3 §11) as stored and delivered up to its
    ``pos``, which the store script appends: ``{"id","from","room",
    "type":"D","msg":<recalled id>,"ts"`` (no closing brace; no ``seq``)."""
    return _dump({"id": packet_id, "from": sender, "room": room, "type": "D", "msg": recalled_id, "ts": ts})[:-1]


def ack_pos(packet_id: PacketId, pos: int, duplicate: bool = False) -> bytes:
    """The ``A`` of a stored ``D``: the sender's ``pos`` of it (a retry's, or
    a message already recalled: ``"dup": true`` and no pos)."""
    if duplicate:
        return _dump({"id": packet_id, "from": 0, "type": "A", "msg": "success", "dup": True})
    return _dump({"id": packet_id, "from": 0, "type": "A", "msg": "success", "pos": pos})


def ack_duplicate(packet_id: PacketId, masked: bool = False, pos: int = 0) -> bytes:
    """The ``A`` of a retry that was stored the first time (contract §2 item
    4): ``"dup": true`` tells a person trying packets by hand why nothing
    arrived this time; ``pos`` the first store's (left out when 0: not
    known); ``masked`` as for :func:`ack_masked`."""
    obj: Dict[str, object] = {"id": packet_id, "from": 0, "type": "A", "msg": "success", "dup": True}
    if pos:
        obj["pos"] = pos
    if masked:
        obj["masked"] = True
    return _dump(obj)


def ack_masked(packet_id: PacketId, pos: int) -> bytes:
    """The ``A`` of a ``t`` stored with something replaced (a phone number,
    an address, a blocked word: contract §11), with its ``pos``."""
    return _dump({"id": packet_id, "from": 0, "type": "A", "msg": "success", "pos": pos, "masked": True})


def room_message_head(packet_id: PacketId, sender: int, room: str, kind: str, msg: object, ts: int) -> bytes:
    """A room message as stored and delivered (contract v3 §9) up to its
    ``seq``, which the store script appends, then ``"pos"``:
    ``{"id","from","room","type","msg","ts"`` (no closing brace)."""
    return _dump({"id": packet_id, "from": sender, "room": room, "type": kind, "msg": msg, "ts": ts})[:-1]


def ack_room(packet_id: PacketId, seq: int, pos: int, duplicate: bool = False, masked: bool = False) -> bytes:
    """The ``A`` of a room message: its room ``seq`` and the sender's ``pos``."""
    obj: Dict[str, object] = {"id": packet_id, "from": 0, "type": "A", "msg": "success", "seq": seq}
    if pos:
        obj["pos"] = pos
    if duplicate:
        obj["dup"] = True
    if masked:
        obj["masked"] = True
    return _dump(obj)


def room_read(packet_id: PacketId, reader: int, room: str, seq: int, ts: int) -> bytes:
    """The ``R`` relayed to a room's other members when a cursor moved."""
    return _dump({"id": packet_id, "from": reader, "room": room, "type": "R",
                  "msg": {"state": "read", "seq": seq, "ts": ts}})


def room_typing(packet_id: PacketId, sender: int, room: str, is_typing: bool) -> bytes:
    return _dump({"id": packet_id, "from": sender, "room": room, "type": "Y", "msg": is_typing})


def room_history(packet_id: PacketId, messages: Iterable[bytes], more: bool, next_cursor: Optional[str],
                 read: Dict[str, int]) -> bytes:
    """The ``H {"room"}`` reply: :func:`history` with ``"read"``, every
    member's read cursor."""
    return history(packet_id, messages, more, next_cursor)[:-1] + b',"read":' + _dump(read) + b"}"


def with_pos(packet: bytes, pos: int) -> bytes:
    """A stored message's packet as delivered live (contract §10): the
    packet (a JSON object) with ``"pos"`` as its last member."""
    return packet[:-1] + b',"pos":%d}' % pos


def error(packet_id: Optional[PacketId], code: str, reason: str) -> bytes:
    return _dump({"id": packet_id, "from": 0, "type": "E", "msg": reason, "code": code})


def pong(packet_id: PacketId) -> bytes:
    return _dump({"id": packet_id, "from": 0, "type": "P", "msg": "pong"})


def login(server_id: str, uid: int) -> bytes:
    return _dump({"id": server_id, "from": 0, "type": "L", "msg": "login in", "uid": uid})


def close(server_id: str, reason: str) -> bytes:
    return _dump({"id": server_id, "from": 0, "type": "C", "msg": reason})


def online(packet_id: PacketId, uid: int, is_online: bool) -> bytes:
    return _dump({"id": packet_id, "from": 0, "type": "O", "msg": {"uid": uid, "online": is_online}})


def site(server_id: str, courier: int, longitude: float, latitude: float, ts: int) -> bytes:
    return _dump({"id": server_id, "from": courier, "type": "S",
                  "msg": {"longitude": longitude, "latitude": latitude, "ts": ts}})


def room_site(server_id: str, courier: int, room: str, longitude: float, latitude: float, ts: int) -> bytes:
    """A courier's position to the members of a room tracking it (contract §11)."""
    return _dump({"id": server_id, "from": courier, "room": room, "type": "S",
                  "msg": {"longitude": longitude, "latitude": latitude, "ts": ts}})


def receipt(packet_id: PacketId, reader: int, sender: int, state: int, ids: List[PacketId], ts: int) -> bytes:
    """The ``R`` relayed to the messages' sender: only the ids that advanced."""
    return _dump_fast({"id": packet_id, "from": reader, "to": sender, "type": "R",
                       "msg": {"state": STATE_NAMES[state], "ids": ids, "ts": ts}})


def typing(packet_id: PacketId, sender: int, to: int, is_typing: bool) -> bytes:
    return _dump_fast({"id": packet_id, "from": sender, "to": to, "type": "Y", "msg": is_typing})


def history_item(packet: Union[bytes, str], state: int, pos: int = 0) -> bytes:
    """One message of an ``H`` reply (and of ``imd-admin export``'s JSON
    lines): its packet as delivered (a JSON object, replayed verbatim:
    bytes or str) with ``"pos"`` (its accept order; left out when 0: an
    entry an older imd stored without one) and its receipt state as
    ``"state"``, its last member."""
    if isinstance(packet, str):
        packet = packet.encode("utf-8")
    if pos:
        return packet[:-1] + b',"pos":%d' % pos + _STATE_MEMBERS[state]
    return packet[:-1] + _STATE_MEMBERS[state]


# ``,"state":"<name>"}``: what an H item ends with, per state
_STATE_MEMBERS = tuple(b',"state":%s}' % _dump(name) for name in STATE_NAMES)


def history(packet_id: PacketId, messages: Iterable[Union[bytes, str]], more: bool,
            next_cursor: Optional[str] = None, truncated: bool = False) -> bytes:
    """The ``H`` reply: ``messages``, each a :func:`history_item` (bytes
    or str), oldest first; ``next`` only with ``more``; ``"truncated":
    true`` when a sync asked for positions retention has removed
    (contract §10)."""
    items = b",".join(m if isinstance(m, bytes) else m.encode("utf-8") for m in messages)
    out = b'{"id":' + _dump(packet_id) + b',"from":0,"type":"H","msg":[' + items + b'],"more":' + _dump(more)
    if more:
        out += b',"next":' + _dump(next_cursor)
    if truncated:
        out += b',"truncated":true'
    return out + b"}"

"""The entry of the message log: an entry of ``MQ`` (and of both parties'
``pending:<uid>``) is the packet's JSON exactly as delivered (built by
:func:`imd.protocol.message_json`; a receipt's by
:func:`receipt_entry_parts`), with one field added at its end by the
``store_entry`` Lua snippet (``lua/store_entry.lua``): ``"seq"``, the
accept order.  This module is the one place that knows that format: it
builds the receipt entry, reads an entry back as one typed value (a
:class:`StoredMessage`, or for an ``R`` entry a :class:`StoredReceipt`),
gives the packet as delivered (the entry without its ``seq``), maps a value
to its MySQL rows (the migrator; :mod:`imd.messagelog.merge` reads them
back as values), and names the text that finds a conversation's entries in
Redis (:func:`conversation_needles`; the ``entry_ts`` snippet reads an
entry's ``ts`` there).

Every message has its history key ``(ts, seq)`` from the moment it is
stored, so entries still in Redis and rows in MySQL sort alike.
"""

import json
from collections import namedtuple
from typing import Any, Dict, List, Optional, Tuple, Union, cast

from imd import jsonfast
from imd.protocol import (MAX_ID_CHARS, MAX_RECEIPT_IDS, MAX_UID, RECEIPT_STATES, STATE_NAMES, PacketId, dump_fast,
                          valid_stored_room)

MAX_TEXT_BYTES = 65535          # message.msg is TEXT
MAX_PACKET_BYTES = 16 * 1024 * 1024 - 1   # message.packet is MEDIUMTEXT


Identity = Tuple[int, bytes, int]   # (from, id as UTF-8, to): a message, once, wherever it is read


class StoredMessage(namedtuple("StoredMessage", "msg_id from_id to_id type msg ts seq packet")):
    """``msg_id`` is the id as its decimal string for numbers (the dedup key),
    as UTF-8 bytes; ``msg`` is text (JSON for non-strings; None when read
    from MySQL for ``H``, which replays ``packet`` only); ``seq`` the
    accept order (0 for an entry an older imd stored); ``packet`` the packet
    exactly as delivered (the entry without its ``seq``)."""
    __slots__ = ()

    @property
    def key(self) -> Tuple[int, int]:
        """Its place in history: by ``ts``, then in the order accepted."""
        return (self.ts, self.seq)

    @property
    def identity(self) -> Identity:
        return (self.from_id, self.msg_id, self.to_id)

    @property
    def parties(self) -> Tuple[int, ...]:
        """The users whose ``pending:<uid>`` holds the entry: its sender (0
        for the system) and its recipient."""
        return (self[1], self[2])   # (by index: the migrator asks it of every entry)

    def row(self) -> Tuple[Any, ...]:
        """The ``message`` row: (msg_id, from_id, to_id, type, msg, ts, seq,
        packet), every string as str."""
        # (unpacked: a third cheaper than tuple(self)[1:] and a concatenation;
        # the migrator asks it of every entry)
        msg_id, from_id, to_id, kind, msg, ts, seq, packet = self
        return (msg_id.decode("utf-8"), from_id, to_id, kind, msg, ts, seq, packet)


class StoredReceipt(namedtuple("StoredReceipt", "reader sender state msg_ids ts seq")):
    """An ``R`` that moved ``state`` (1 delivered, 2 read) forward for the
    messages ``msg_ids`` (UTF-8 bytes, numbers as their decimal string) that
    ``sender`` (0: the system) sent to ``reader``."""
    __slots__ = ()

    def identities(self) -> List[Identity]:
        """The ``(from, id, to)`` of each message it is about."""
        return [(self.sender, msg_id, self.reader) for msg_id in self.msg_ids]

    @property
    def parties(self) -> Tuple[int, ...]:
        """The users whose ``pending:<uid>`` holds the entry: the reader, and
        the sender unless it is the system."""
        return (self.reader, self.sender) if self.sender else (self.reader,)

    def rows(self) -> List[Tuple[Any, ...]]:
        """The ``receipt`` rows: (from_id, msg_id, to_id, state, ts, seq)."""
        return [(self.sender, msg_id.decode("utf-8"), self.reader, self.state, self.ts, self.seq)
                for msg_id in self.msg_ids]


# (room, seq, accept_seq, msg_id, from_id, type, msg, ts, packet) and (room, uid, seq, ts)
RoomMessageRow = Tuple[str, int, int, str, int, str, str, int, str]
RoomReadRow = Tuple[str, int, int, int]


class StoredRoomMessage(namedtuple("StoredRoomMessage", "room room_seq seq msg_id from_id type msg ts packet")):
    """A room's message (contract v3 §9), as the ``store_room_entry``
    snippet stored it: the packet as delivered, ending with ``"seq"`` (the
    room's: ``room_seq`` here) and ``"pos"`` (the accept order: ``seq``
    here, as for every entry).  ``from_id`` 0 for the system's; ``msg`` as
    text (JSON for an ``s``)."""
    __slots__ = ()

    parties: Tuple[int, ...] = ()   # in no user's pending: in roompending:<room>

    def row(self) -> "RoomMessageRow":
        """The ``room_message`` row: (room, seq, accept_seq, msg_id, from_id,
        type, msg, ts, packet), every string as str."""
        return (self.room, self.room_seq, self.seq, self.msg_id.decode("utf-8"), self.from_id, self.type,
                self.msg, self.ts, self.packet)


class StoredRoomRead(namedtuple("StoredRoomRead", "room reader read_seq ts")):
    """A member's read cursor that moved (``R`` in a room): for ``room_read``."""
    __slots__ = ()

    seq = 0   # (not a message of any stream)
    parties: Tuple[int, ...] = ()

    def row(self) -> "RoomReadRow":
        return (self.room, self.reader, self.read_seq, self.ts)


# (accept_seq, room, msg_id, from_id, recalled_id, ts, packet)
RoomRecallRow = Tuple[int, str, str, int, str, int, str]


class StoredRoomRecall(namedtuple("StoredRoomRecall", "room seq msg_id from_id recalled_id ts packet")):
    """A recall (``D``) in a room (contract v3 §11): not a room message (no
    room ``seq``: it ends with ``"pos"``, its accept order, ``seq`` here),
    in the members' streams; ``recalled_id`` the id (UTF-8) of the message of
    ``from_id`` it empties; ``packet`` the D as delivered."""
    __slots__ = ()

    parties: Tuple[int, ...] = ()   # in roompending:<room>

    def row(self) -> "RoomRecallRow":
        """The ``room_recall`` row."""
        return (self.seq, self.room, self.msg_id.decode("utf-8"), self.from_id, self.recalled_id.decode("utf-8"),
                self.ts, self.packet)


def _room_recall(entry: str, obj: Dict[str, object], room: str, ts: int) -> StoredRoomRecall:
    packet_id, recalled, pos = obj.get("id"), obj.get("msg"), obj.get("pos")
    msg_id = str(packet_id) if type(packet_id) is int else packet_id
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= MAX_ID_CHARS:
        raise ValueError("D: id: %r" % (packet_id,))
    if not isinstance(recalled, str) or not 0 < len(recalled) <= MAX_ID_CHARS:
        raise ValueError("D: msg: %r" % (recalled,))
    if type(pos) is not int or not 0 < pos < 2 ** 63 or not entry.rstrip().endswith(',"pos":%d}' % pos):
        raise ValueError("D: pos %r is not its last field" % (pos,))
    return StoredRoomRecall(room, pos, msg_id.encode("utf-8"), _uid(obj.get("from"), "from"),
                            recalled.encode("utf-8"), ts, entry)


def _room_entry(entry: str, obj: Dict[str, object]) -> Union[StoredRoomMessage, StoredRoomRead, StoredRoomRecall]:
    room = obj.get("room")
    if not valid_stored_room(room):   # ("." and ".." too: rooms made before they were refused)
        raise ValueError("the room id %r" % (room,))
    ts = obj.get("ts")
    if type(ts) is not int or not 0 <= ts < 2 ** 63:
        raise ValueError("ts: %r" % (ts,))
    if obj.get("type") == "R":
        msg = obj.get("msg")
        seq = msg.get("seq") if isinstance(msg, dict) else None
        if type(seq) is not int or not 0 < seq < 2 ** 63:
            raise ValueError("R: seq: %r" % (seq,))
        return StoredRoomRead(room, _uid(obj.get("from"), "from"), seq, ts)
    if obj.get("type") == "D" and "seq" not in obj:
        return _room_recall(entry, obj, cast(str, room), ts)
    # the checks of any message (id, type, sizes), on the packet without its room's fields
    message = _message(entry, {**{k: v for k, v in obj.items() if k not in ("seq", "pos")}, "to": 1})
    seq, pos = obj.get("seq"), obj.get("pos")
    if type(seq) is not int or not 0 < seq < 2 ** 63 or type(pos) is not int or not 0 < pos < 2 ** 63:
        raise ValueError("room message: seq %r, pos %r" % (seq, pos))
    if not entry.rstrip().endswith(',"seq":%d,"pos":%d}' % (seq, pos)):
        raise ValueError("seq and pos are not the last fields")
    return StoredRoomMessage(room, seq, pos, message.msg_id, message.from_id, message.type, message.msg, ts, entry)


def _uid(value: Any, name: str) -> int:
    if type(value) is not int or not 0 < value <= MAX_UID:
        raise ValueError("%s: not a user id: %r" % (name, value))
    return value


def _load(entry: str) -> Any:
    """``json.loads(entry)``, through orjson (~4 us a row faster) when that
    gives the same: orjson refuses what json takes (NaN, lone surrogates)
    and reads integers past 64 bits as floats, so anything but the plain
    shape of a stored text message is read again by json.  Without orjson
    (:mod:`imd.jsonfast`), json alone."""
    fast = jsonfast.orjson
    if fast is None:
        return json.loads(entry)
    try:
        obj = fast.loads(entry)
    except fast.JSONDecodeError:
        return json.loads(entry)
    if (type(obj) is dict and type(obj.get("id")) in (int, str) and type(obj.get("from")) is int
            and type(obj.get("to")) is int and type(obj.get("ts")) is int and type(obj.get("seq", 0)) is int):
        msg = obj.get("msg")
        if type(msg) is str:
            return obj
        # a receipt: {"state", "ids", "ts"}, its ids as the reader sent them
        if (type(msg) is dict and type(msg.get("ids")) is list and type(msg.get("ts")) is int
                and all(type(i) in (int, str) for i in msg["ids"])):
            return obj
    return json.loads(entry)


# The field the store_entry snippet appends to a packet: ``,"seq":<n>}``
SEQ_FIELD = ',"seq":'


def _receipt(obj: Any) -> StoredReceipt:
    msg = obj.get("msg")
    if not isinstance(msg, dict):
        raise ValueError("R: msg: %r" % (msg,))
    state_name = msg.get("state")
    state = RECEIPT_STATES.get(state_name) if isinstance(state_name, str) else None
    if state is None:
        raise ValueError("R: state: %r" % (state_name,))
    ids = msg.get("ids")
    if not isinstance(ids, list) or not 0 < len(ids) <= MAX_RECEIPT_IDS:
        raise ValueError("R: ids: %r" % (ids,))
    msg_ids = []
    for value in ids:
        text = str(value) if type(value) is int else value
        if not isinstance(text, str) or not 0 < len(text) <= MAX_ID_CHARS:
            raise ValueError("R: id: %r" % (value,))
        msg_ids.append(text.encode("utf-8"))
    ts, seq = obj.get("ts"), obj.get("seq", 0)
    if type(ts) is not int or not 0 <= ts < 2 ** 63:
        raise ValueError("ts: %r" % (ts,))
    if type(seq) is not int or not 0 <= seq < 2 ** 63:
        raise ValueError("seq: %r" % (seq,))
    sender = obj.get("to")
    sender = 0 if sender == 0 and type(sender) is int else _uid(sender, "to")
    return StoredReceipt(_uid(obj.get("from"), "from"), sender, state, tuple(msg_ids), ts, seq)


def readable(entry: str) -> str:
    """``entry`` as text a client or MySQL can take: each byte that was not
    UTF-8 in Redis (which imd.stores.redis hands up as a lone surrogate, so
    that it can be written back as it was) becomes U+FFFD."""
    try:
        entry.encode("utf-8")
        return entry
    except UnicodeEncodeError:
        return entry.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


Entry = Union[StoredMessage, StoredReceipt, StoredRoomMessage, StoredRoomRead, StoredRoomRecall]


def parse_entry(entry: str) -> Entry:
    """One ``MQ`` entry (str) -> :class:`StoredMessage` or
    :class:`StoredReceipt`, or ValueError.  An entry holding bytes that are
    not UTF-8 is read as :func:`readable` makes it (each such byte U+FFFD)."""
    try:
        return _parse(entry)
    except UnicodeEncodeError:
        # (only such an entry fails to encode, or one with a lone surrogate
        # escaped in its JSON: every message's is encoded below to check its
        # size, every receipt's ids, all that is read of it)
        clean = readable(entry)
        if clean is entry:
            raise
        return _parse(clean)


def _parse(entry: str) -> Entry:
    obj = _load(entry)
    if isinstance(obj, dict) and "room" in obj:
        return _room_entry(entry, obj)
    if isinstance(obj, dict) and obj.get("type") == "R":
        return _receipt(obj)
    return _message(entry, obj)


def parse_stored(entry: str) -> StoredMessage:
    """One ``MQ`` entry (str) that must be a message -> :class:`StoredMessage`,
    or ValueError (bytes that are not UTF-8 as :func:`parse_entry` reads them)."""
    try:
        obj = _load(entry)
        if isinstance(obj, dict) and "room" in obj:
            raise ValueError("a room's entry")
        return _message(entry, obj)
    except UnicodeEncodeError:
        clean = readable(entry)
        if clean is entry:
            raise
        return _message(clean, _load(clean))


def _message(entry: str, obj: Any) -> StoredMessage:
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    packet_id = obj.get("id")
    if type(packet_id) is int:
        msg_id = str(packet_id)
    elif isinstance(packet_id, str) and packet_id:
        msg_id = packet_id
    else:
        raise ValueError("id: %r" % (packet_id,))
    if len(msg_id) > MAX_ID_CHARS:
        raise ValueError("id: longer than %d characters" % MAX_ID_CHARS)
    kind = obj.get("type")
    if not isinstance(kind, str) or len(kind) != 1 or kind == "R":
        raise ValueError("type: %r" % (kind,))
    ts = obj.get("ts")
    if type(ts) is not int or not 0 <= ts < 2 ** 63:
        raise ValueError("ts: %r" % (ts,))
    if "msg" not in obj:
        raise ValueError("missing msg")
    msg = obj["msg"]
    text = msg if isinstance(msg, str) else json.dumps(msg, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES or len(entry.encode("utf-8")) > MAX_PACKET_BYTES:
        raise ValueError("too large to store")
    seq = obj.get("seq", 0)
    packet = entry
    if "seq" in obj:
        if type(seq) is not int or not 0 <= seq < 2 ** 63:
            raise ValueError("seq: %r" % (seq,))
        # the store script appended it last: the packet as delivered is before it
        cut = entry.rfind(SEQ_FIELD)
        if cut < 0 or entry[cut + len(SEQ_FIELD):].rstrip() != "%d}" % seq:
            raise ValueError("seq is not the last field")
        packet = entry[:cut] + "}"
    from_id = _uid(obj.get("from"), "from") if kind != "s" or obj.get("from") != 0 else 0
    return StoredMessage(msg_id.encode("utf-8"), from_id, _uid(obj.get("to"), "to"), kind, text, ts, seq, packet)


def tombstone(packet: str) -> str:
    """A stored packet (as delivered, or as the ``tombstone_entry`` snippet
    left it) with its text gone, as every reader shows a recalled or
    deleted message (contract v3 §11): ``"msg": ""`` and ``"recalled":
    true`` in place of its msg, every other field as it was."""
    obj = _load(packet)
    if not isinstance(obj, dict):
        return packet
    out = {}
    for name, value in obj.items():
        if name == "recalled":
            continue
        out[name] = "" if name == "msg" else value
        if name == "msg":
            out["recalled"] = True
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def recalled_identity(message: StoredMessage) -> Optional[Identity]:
    """The message a ``D`` entry recalls (its sender's, to its recipient);
    None for any other entry."""
    if message.type != "D":
        return None
    return (message.from_id, message.msg.encode("utf-8"), message.to_id)


def receipt_entry_parts(packet_id: PacketId, reader: int, sender: int, state: int,
                        ts: int) -> Tuple[bytes, bytes]:
    """The stored form of a receipt, around its ids (joined by commas in
    Redis, where it is known which advanced): the relayed ``R``
    (:func:`imd.protocol.receipt`) with ``ts`` at the top level too, like
    every stored entry."""
    head = dump_fast({"id": packet_id, "from": reader, "to": sender, "type": "R"})[:-1]
    return (head + b',"msg":{"state":"%s","ids":[' % STATE_NAMES[state].encode("ascii"),
            b'],"ts":%d},"ts":%d}' % (ts, ts))


def id_json(message_id: PacketId) -> bytes:
    """One id as JSON, for the stored receipt."""
    return dump_fast(message_id)


def conversation_needles(sender: int, reader: int) -> List[bytes]:
    """What an entry between ``sender`` and ``reader`` holds as text (for a
    Lua scan of ``pending:<reader>``, imd.stores.receipts): a message from
    ``sender`` to ``reader``, and a receipt of ``reader``'s about
    ``sender``'s messages."""
    return [b',"from":%d,"to":%d,' % (sender, reader), b',"from":%d,"to":%d,"type":"R"' % (reader, sender)]

"""A stored message read back: the JSON pushed onto ``MQ`` (built by
:func:`imd.protocol.message_json`) as one typed row.

Shared by the migrator (entry -> ``message`` row) and history (entries still
in Redis, merged with rows from MySQL).  Every message has its history key
``(ts, from_id, msg_id)`` before it is migrated, so both sides sort alike.
"""

import json
from collections import namedtuple

from imd import jsonfast
from imd.protocol import MAX_ID_CHARS, MAX_UID

MAX_TEXT_BYTES = 65535          # message.msg is TEXT
MAX_PACKET_BYTES = 16 * 1024 * 1024 - 1   # message.packet is MEDIUMTEXT


class StoredMessage(namedtuple("StoredMessage", "msg_id from_id to_id type msg ts packet")):
    """``msg_id`` is the id as its decimal string for numbers (the dedup key),
    as UTF-8 bytes; ``msg`` is text (JSON for non-strings); ``packet`` the
    entry exactly as stored."""
    __slots__ = ()

    @property
    def key(self):
        return (self.ts, self.from_id, self.msg_id)

    @property
    def identity(self):
        return (self.from_id, self.msg_id)

    def row(self):
        """The ``message`` row: (msg_id, from_id, to_id, type, msg, ts, packet),
        every string as str."""
        return (self.msg_id.decode("utf-8"),) + tuple(self)[1:]


def _uid(value, name):
    if type(value) is not int or not 0 < value <= MAX_UID:
        raise ValueError("%s: not a user id: %r" % (name, value))
    return value


def _load(entry):
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
            and type(obj.get("to")) is int and type(obj.get("ts")) is int and type(obj.get("msg")) is str):
        return obj
    return json.loads(entry)


def parse_stored(entry):
    """One ``MQ`` entry (str) -> :class:`StoredMessage`, or ValueError."""
    obj = _load(entry)
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
    if not isinstance(kind, str) or len(kind) != 1:
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
    return StoredMessage(msg_id.encode("utf-8"), _uid(obj.get("from"), "from"), _uid(obj.get("to"), "to"),
                         kind, text, ts, entry)

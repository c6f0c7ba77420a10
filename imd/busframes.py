"""The frames nodes send each other over Redis pub/sub: one codec, used by the
Python side (:func:`encode`, :func:`decode`) and, as the Lua function
``frame`` of ``imd/stores/lua/frame.lua``, by the scripts that publish from
inside Redis.

A frame is text: ``<kind> <uid> <rest>``.

- ``d <uid> <packet>``: deliver ``packet`` (a server packet's JSON) to every
  connection of ``uid`` on the receiving node;
- ``x <uid> <conn id> <pos>[ <also> <packet>]``: to the node of the
  connection ``conn id`` a message (or recall) at ``pos`` came on, which
  gets only its ``A`` (the frame is what lets it go): ``packet``, when
  there, to every other connection of ``uid`` on the receiving node and,
  ``also`` not 0, to every connection there of that uid (the recipient's);
  one frame for both parties where the store script can;
- ``k <uid> <reason>``: close them with ``C`` + 4003 (an operator's kick);
- ``r <uid> <conn id>``: close that one connection with ``C`` + 4002 (a newer
  device pushed it out);
- ``g <uid> <uids>[/<conn id>] <packet>``: a room's packet (contract v3
  §9) to every connection on the receiving node of each of ``uids``
  (comma-separated; ``uid`` is the first of them) but the connection
  ``conn id`` when named (the one a room message came on, which gets only
  its ``A``: the script that stored it names it to that connection's node,
  whose ``A`` waits for the frame): one frame per node, not per member.
"""

from typing import List, NamedTuple, Optional, Tuple, Union

DELIVER, DELIVER_EXCEPT, KICK, REPLACE, ROOM = "d", "x", "k", "r", "g"
KINDS = frozenset((DELIVER, DELIVER_EXCEPT, KICK, REPLACE, ROOM))


class Frame(NamedTuple):
    kind: str
    uid: int
    rest: Union[str, bytes]


class BadFrame(ValueError):
    pass


def encode(kind: str, uid: int, rest: Union[str, bytes]) -> bytes:
    if kind not in KINDS:
        raise ValueError("unknown bus frame kind %r" % (kind,))
    if isinstance(rest, str):
        rest = rest.encode("utf-8")
    return b"%s %d %s" % (kind.encode("ascii"), uid, rest)


_KIND_OF = {kind.encode("ascii"): kind for kind in KINDS}


def decode(frame: Union[str, bytes]) -> Frame:
    """A :class:`Frame`, or :class:`BadFrame`; its ``rest`` is bytes when
    ``frame`` is (valid UTF-8: checked here, not decoded), else str."""
    if isinstance(frame, bytes):
        return _decode_bytes(frame)
    try:
        kind, uid, rest = frame.split(" ", 2)
        number = int(uid)
    except ValueError:
        raise BadFrame("not '<kind> <uid> <rest>'")
    if kind not in KINDS or number <= 0 or not uid.isdigit():
        raise BadFrame("unknown kind or bad uid")
    return Frame(kind, number, rest)


def _decode_bytes(frame: bytes) -> "Frame":
    # (every packet a node delivers comes this way: no decode, no encode
    # back; isascii is the common case's whole UTF-8 check)
    if not frame.isascii():
        try:
            frame.decode("utf-8")
        except UnicodeDecodeError:
            raise BadFrame("not UTF-8")
    parts = frame.split(b" ", 2)
    if len(parts) != 3:
        raise BadFrame("not '<kind> <uid> <rest>'")
    kind, uid, rest = parts
    if kind not in _KIND_OF or not uid.isdigit() or not 0 < int(uid):
        raise BadFrame("unknown kind or bad uid")
    return Frame(_KIND_OF[kind], int(uid), rest)


def room_recipients(rest: str) -> Tuple[List[int], Optional[str], str]:
    """A ``g`` frame's rest -> (its uids, the conn id to leave out or
    None, the packet), or :class:`BadFrame`."""
    named, sep, packet = rest.partition(" ")
    uids, slash, skip = named.partition("/")
    if slash and not skip:
        raise BadFrame("an empty conn id")
    try:
        numbers = [int(u) for u in uids.split(",")]
    except ValueError:
        raise BadFrame("not '<uids> <packet>'")
    if not sep or not all(0 < n and str(n) == u for n, u in zip(numbers, uids.split(","))):
        raise BadFrame("bad uids")
    return numbers, skip if slash else None, packet


def own_message(rest: bytes) -> Tuple[str, int, int, Optional[bytes]]:
    """An ``x`` frame's rest (bytes, as :func:`decode` gives it) -> (the conn
    id, the pos, the other uid or 0, the packet or None), or :class:`BadFrame`."""
    parts = rest.split(b" ", 3)
    try:
        if len(parts) == 2:
            return parts[0].decode("ascii"), int(parts[1]), 0, None
        if len(parts) == 4:
            return parts[0].decode("ascii"), int(parts[1]), int(parts[2]), parts[3]
    except ValueError:   # (UnicodeDecodeError is one)
        pass
    raise BadFrame("not '<conn id> <pos>[ <uid> <packet>]'")

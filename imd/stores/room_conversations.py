"""The rooms' side of the conversation list (contract §10): a
*conversation source* of ``H {"conversations": true}``
(imd.handlers.ports.ConversationSource), beside the one-to-one rows of
imd.stores.conversations.

The scripts that store room packets keep what it reads (imd.stores.rooms,
lua/room_fanout.lua): ``roomconv:<uid>`` (the user's rooms, by the ``pos``
of the latest packet it got there), the room hash's ``last`` (that
packet), ``roommine:<room>:<uid>`` (the member's own messages above its
read cursor) and ``roomgone:<uid>`` (a removed member's row, frozen at its
``left``).  A page is two round trips whatever the history: the newest
rooms below a ``pos``, then their rows (lua/room_rows.lua).

A member's ``unread``: the room's messages after its read cursor (``seq``
minus the cursor) but its own; system messages from 0 (``joined``,
``left``, ``closed``, the API's) count, as from others.  A member that
never read counts from the room's first message; a removed member's
cursor goes with its membership, so one that joins again counts afresh
(but never its own messages: ``roommine`` stays).
A removed member's row stays in its list as it was at its ``left`` (that
packet as ``last``, the unread it had then) until it joins again.
"""

import json
from typing import Generator, List, Optional, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred

from imd.stores.conversations import Conversation
from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

ROOM_ROWS = Script.load("room_rows")


class RoomConversations(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    @defer.inlineCallbacks
    def newest(self, uid: int, below_pos: Optional[int], limit: int,
               now_ms: int) -> Generator[Deferred, object, Optional[List[Conversation]]]:
        """Up to ``limit`` of ``uid``'s rooms whose latest ``pos`` is below
        ``below_pos`` (None: all), newest first.  (The one-to-one source
        spends the user's ``H`` budget: this one never answers None.)"""
        keys = self.keys
        below = "+inf" if below_pos is None else "(%d" % below_pos
        flat = cast(List[object], (yield self._client.command(
            "ZREVRANGEBYSCORE", keys.room_conversations(uid), below, "-inf", "WITHSCORES", "LIMIT", 0, limit)))
        rooms = [_text(flat[i]) for i in range(0, len(flat), 2)]
        scores = [int(float(_text(flat[i]))) for i in range(1, len(flat), 2)]
        if not rooms:
            return []
        key_list = [keys.room_gone(uid)]
        for room in rooms:
            key_list += [keys.room(room), keys.room_members(room), keys.room_read(room), keys.room_mine(room, uid)]
        rows = cast(List[object], (yield self._client.run(ROOM_ROWS, key_list, [uid] + rooms)))
        out: List[Conversation] = []
        for k, (room, pos) in enumerate(zip(rooms, scores)):
            last, unread = rows[2 * k], int(_text(rows[2 * k + 1]))
            if last is None:
                continue   # (erased, or a lost key: no row rather than half a one)
            out.append(Conversation(pos, b'{"room":%s,"last":%s,"unread":%d}'
                                    % (json.dumps(room).encode("ascii"), _bytes(last), unread)))
        return out


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")

"""Recall and moderation delete of one room message in Redis (contract v3
§11): the ``room_recall`` script (lua/room_recall.lua) finds the message
among the room's entries not yet migrated (``roompending:<room>``, by the
pos its dedup record ``rdedup:<from>:<room>/<id>`` names), checks it, takes
its text out of every key that holds it (``MQ``, ``MQ:processing``,
``roompending:<room>``, each entry rewritten in its place), stores the
``D`` (an ``MQ`` entry with a ``pos`` and no room ``seq``: the migrator
copies it to ``room_recall`` and empties the message's ``room_message``
row in the same transaction, imd.stores.mysql), with ``[push] url`` set
cancels a push not yet sent for it, and publishes the ``D`` to every node
holding a member's connection (lua/room_fanout.lua, as every other stored
room packet: in ``pos`` order with the rest, contract §10).  The members
are checked in the script against those the room store last saw
(imd.stores.rooms.RoomStore.run_fresh: its cache, and the call again
when they changed).  With ``[redis] min_replicas`` nothing is published
(the caller delivers once the replicas have it).

A message no longer in Redis is in MySQL if it exists (an entry leaves
``roompending:<room>`` only after its row committed): the caller reads it
there and calls again with ``force``.

Keys (imd.stores.keys): ``room:<room>``, ``roommembers:<room>``,
``roomread:<room>``, ``roompending:<room>``, ``rdedup:<from>:<room>/<id>``
(the message's, and the D's own: a retry is acked once),
``rrecalled:<from>:<room>/<id>`` (recalled, until its D is migrated),
``MQ``, ``MQ:seq``, ``MQ:processing``, and ``push:unread``, ``push:last``,
``push:due``, and each member's ``dev:<uid>`` and ``roomsync:<uid>`` (the
rooms with a ``D`` for the user, where its sync finds them: a ``D`` does
not move the room in the conversation list, ``roomconv:<uid>``).
"""

from typing import List, NamedTuple, Optional, Sequence, Tuple, cast

from twisted.internet.defer import Deferred

from imd.messagelog.entry import id_json
from imd.stores.keys import Keys
from imd.stores.push import PushNotes
from imd.stores.recalls import RECALLED_TTL
from imd.stores.redis import RedisClient, RedisStore, Script
from imd.stores.rooms import Reply, RoomStore

ROOM_RECALL = Script.load("room_recall")

STORED, DUPLICATE, ALREADY, TOO_LATE, NO_ROOM, NOT_IN_REDIS = ("stored", "duplicate", "already", "too_late",
                                                               "no_room", "not_in_redis")
_RESULTS = {1: STORED, 2: DUPLICATE, 3: ALREADY, 4: TOO_LATE, 5: NO_ROOM, 0: NOT_IN_REDIS}


class RoomRecallResult(NamedTuple):
    outcome: str                   # one of the outcomes above
    pos: int = 0                   # the D's pos (STORED; the first store's for a DUPLICATE)
    members: Tuple[int, ...] = ()  # who gets the D (STORED: the room's members)


def room_message_heads(sender: int, room: str, msg_id: str) -> List[str]:
    """How the entry of ``sender``'s message ``msg_id`` in ``room`` begins:
    its id as a JSON string, and (for an id of digits, which the client may
    have sent as a number) as a JSON number; '' when there is no second form.
    (A room id needs no escaping in JSON: imd.protocol.valid_room.)"""
    tail = ',"from":%d,"room":"%s","type":"' % (sender, room)
    heads = ['{"id":' + id_json(msg_id).decode("utf-8") + tail]
    heads.append('{"id":' + msg_id + tail if msg_id.isascii() and msg_id.isdigit()
                 and (msg_id == "0" or not msg_id.startswith("0")) else "")
    return heads


class RoomRecallStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys, rooms: RoomStore, dedup_ttl: int = 3600,
                 push: Optional[PushNotes] = None) -> None:
        """``rooms``: the room store whose members cache (and its call
        again when they changed) the script's calls go through."""
        self._client = client
        self.keys = keys
        self.rooms = rooms
        self.dedup_ttl = dedup_ttl
        self.push = push

    @property
    def publishes(self) -> bool:
        """The room store's (:attr:`RoomStore.publishes`): True, the script
        publishes the D; False (``[redis] min_replicas``), the caller
        delivers it."""
        return self.rooms.publishes

    def recall(self, sender: int, room: str, d_id: str, msg_id: str, d_head: bytes, now_ms: int,
               window_ms: Optional[int], force: bool = False, origin: Optional[str] = None) -> Deferred:
        """Recall ``sender``'s message ``msg_id`` in ``room`` by the D whose
        packet without its closing brace is ``d_head`` (id ``d_id``, dedup
        form); ``window_ms``: how old (from its ts) it may be, None for any
        age.  Fires with a :class:`RoomRecallResult` once ``[redis]
        min_replicas`` have it.  When :attr:`publishes`, a D stored now is
        on its way to every connection of every member (the sender's other
        devices too while it is one) but ``origin`` (the conn id, on this
        node, it came on), whose node always gets a frame (its ``A`` waits
        for it: imd.node.LocalNode.wait_frame)."""
        k = self.keys
        fixed = [k.room_dedup(room, sender, msg_id), k.room_pending(room), k.mq, k.mq_processing, k.mq_seq,
                 k.room(room), k.room_members(room), k.room_dedup(room, sender, d_id),
                 k.room_recalled(room, sender, msg_id), k.room_read(room), k.push_unread, k.push_last, k.push_due]
        heads = room_message_heads(sender, room, msg_id)
        args: List[object] = [d_head, self.dedup_ttl, heads[0], heads[1], RECALLED_TTL, now_ms,
                              -1 if window_ms is None else window_ms, 1 if force else 0, sender,
                              1 if self.push is not None else "",
                              self.keys.channel_prefix if self.publishes else "",
                              "%s %s" % (self.rooms.node_id, origin) if origin is not None else "", room]

        def call(members: Tuple[int, ...]) -> Tuple[List[str], List[object]]:
            key_list = list(fixed)
            for m in members:
                key_list += [k.devices(m), k.room_sync(m)]
            return key_list, args + list(members)
        d = self.rooms.run_fresh(room, ROOM_RECALL, call).addCallback(_result)
        return self._replicated(d)


def _result(ran: Tuple[Reply, Tuple[int, ...]]) -> RoomRecallResult:
    reply, members = ran
    values = cast(Sequence[int], reply)
    outcome = _RESULTS[int(values[0])]
    if outcome == STORED:
        return RoomRecallResult(outcome, int(values[1]), members)
    if outcome == DUPLICATE:
        return RoomRecallResult(outcome, int(values[1]))
    return RoomRecallResult(outcome)

"""Recall (``D``) and moderation delete of one message (contract v3 §11).

One path for both (:class:`Recaller`): the store script looks for the
message among its sender's entries still in Redis (imd.stores.recalls);
one no longer there is looked for in MySQL (an entry leaves Redis only
after its row committed, so Redis then MySQL misses nothing), and the
script is called again to store the ``D``.  The stored ``D`` (its ``seq``
is its ``pos``) goes to every connection of the recipient through the
node, on every node; a delete (no sending connection) also goes to every
connection of the message's sender.

In a room (:class:`RoomRecaller`) the same, through imd.stores.roomrecalls:
the message is looked for among the room's entries still in Redis, then in
``room_message``; the stored ``D`` (a ``pos``, no room ``seq``) goes to
every connection of every member (the sender's other devices included, not
the connection it came on), on every node: the script that stores it
publishes it (lua/room_fanout.lua), in ``pos`` order with every other
stored packet (contract §10), and a client's ``A`` waits for this node's
frame (imd.node.LocalNode.wait_frame) as a room message's does.  With
``[redis] min_replicas`` the node delivers it once the replicas have it.
"""

from typing import Generator, Optional, Tuple, cast

from twisted.internet import defer
from twisted.logger import Logger

from imd import protocol
from imd.clock import Clock
from imd.errors import ImdError
from imd.handlers import Reply
from imd.handlers.ports import Node, RecallRows, Recalls, RoomNode, RoomRecallRows, RoomRecalls
from imd.stores import roomrecalls
from imd.stores.recalls import ALREADY, DUPLICATE, NOT_IN_REDIS, STORED, TOO_LATE, RecallResult

_log = Logger()

# What became of a recall or delete
RECALLED, RETRY, WAS_RECALLED, LATE, NOT_FOUND = "recalled", "retry", "was_recalled", "late", "not_found"


def refusal_by_row(row: Optional[Tuple[int, bool]], now_ms: int, window_ms: Optional[int]) -> Optional[str]:
    """A message no longer in Redis, as MySQL has it (``(ts, recalled)`` or
    None): why its recall is refused (NOT_FOUND, WAS_RECALLED, LATE), or
    None when the script is to recall it there (``force``)."""
    if row is None:
        return NOT_FOUND
    message_ts, recalled = row
    if recalled:
        return WAS_RECALLED
    if window_ms is not None and now_ms - message_ts > window_ms:
        return LATE
    return None


class RoomRecaller:
    """Recall and moderation delete of a room's message (contract v3 §11)."""

    def __init__(self, store: RoomRecalls, rows: RoomRecallRows, node: RoomNode, clock: Clock) -> None:
        self._store = store
        self._rows = rows
        self._node = node
        self._clock = clock

    @defer.inlineCallbacks
    def recall(self, sender: int, room: str, msg_id: str, d_id: protocol.PacketId, window_ms: Optional[int],
               origin: Optional[str] = None, known: bool = False
               ) -> Generator[defer.Deferred, object, Tuple[str, Optional[int]]]:
        """Recall ``sender``'s message ``msg_id`` (dedup form) in ``room`` by
        a ``D`` of id ``d_id``; ``window_ms`` None: any age; ``origin`` the
        connection a client's D came on (it gets only the A); ``known``: the
        message is known to be in MySQL, unrecalled, if not in Redis
        (erasure).  Fires with ``(outcome, pos)``."""
        ts = int(self._clock.seconds() * 1000)
        head = protocol.room_recall_head(d_id, sender, room, msg_id, ts)
        d_key = str(d_id)
        result = cast(roomrecalls.RoomRecallResult,
                      (yield self._store.recall(sender, room, d_key, msg_id, head, ts, window_ms, force=known,
                                                origin=origin)))
        if result.outcome == roomrecalls.NOT_IN_REDIS:
            row = cast(Optional[Tuple[int, bool]], (yield self._rows.room_message_for_recall(sender, msg_id, room)))
            refused = refusal_by_row(row, ts, window_ms)
            if refused is not None:
                return refused, None
            result = cast(roomrecalls.RoomRecallResult,
                          (yield self._store.recall(sender, room, d_key, msg_id, head, ts, window_ms, force=True,
                                                    origin=origin)))
        if result.outcome == roomrecalls.STORED and self._store.publishes:
            # the script published it (in pos order); a client's A waits for
            # its frame here, as a room message's does
            if origin is not None:
                waiting = self._node.wait_frame(result.pos, None)
                if isinstance(waiting, defer.Deferred):
                    yield waiting
            return RECALLED, result.pos
        if result.outcome == roomrecalls.STORED:
            self._node.deliver_room(result.members, head + b',"pos":%d}' % result.pos, origin)
            return RECALLED, result.pos
        return {roomrecalls.DUPLICATE: RETRY, roomrecalls.ALREADY: WAS_RECALLED, roomrecalls.TOO_LATE: LATE,
                roomrecalls.NO_ROOM: NOT_FOUND}[result.outcome], None


class Recaller:
    def __init__(self, store: Recalls, rows: RecallRows, node: Node, clock: Clock,
                 rooms: Optional[RoomRecaller] = None) -> None:
        self._store = store
        self._rows = rows
        self._node = node
        self._clock = clock
        self.rooms = rooms   # the recall of a room's message (None: no rooms here)

    @defer.inlineCallbacks
    def recall(self, sender: int, to: int, msg_id: str, d_id: protocol.PacketId,
               window_ms: Optional[int],
               to_sender: bool = False,
               known: bool = False,
               origin: Optional[str] = None) -> Generator[defer.Deferred, object, Tuple[str, Optional[int]]]:
        """Recall ``sender``'s message ``msg_id`` (dedup form) to ``to`` by a
        ``D`` of id ``d_id``; ``window_ms`` None: any age; ``to_sender``:
        the D goes to every connection of the sender too but ``origin`` (the
        connection a client's D came on, which gets only the A); ``known``: the
        message is known to exist, unrecalled in MySQL if not in Redis
        (erasure: no lookup).  Fires with
        ``(outcome, pos)``; RECALLED once stored and handed to the node."""
        ts = int(self._clock.seconds() * 1000)
        packet = protocol.recall_json(d_id, sender, to, msg_id, ts)
        d_key = str(d_id)
        result = cast(RecallResult, (yield self._store.recall(sender, to, d_key, msg_id, packet, ts, window_ms,
                                                              force=known, to_sender=to_sender, origin=origin)))
        if result.outcome == NOT_IN_REDIS:
            row = cast(Optional[Tuple[int, bool]], (yield self._rows.message_for_recall(sender, msg_id, to)))
            refused = refusal_by_row(row, ts, window_ms)
            if refused is not None:
                return refused, None
            result = cast(RecallResult, (yield self._store.recall(sender, to, d_key, msg_id, packet, ts, window_ms,
                                                                  force=True, to_sender=to_sender,
                                                                  origin=origin)))
        if result.outcome == STORED and self._store.publishes:
            # the script published it (in pos order); a client's A waits for
            # its frame here, as a message's does
            if to_sender and origin is not None:
                waiting = self._node.wait_frame(result.pos, None)
                if isinstance(waiting, defer.Deferred):
                    yield waiting
            return RECALLED, result.pos
        if result.outcome == STORED:
            delivered = protocol.with_pos(packet, result.pos)
            self._node.deliver(to, delivered)
            if to_sender and sender != to:
                self._node.deliver(sender, delivered, origin)
            return RECALLED, result.pos
        return {DUPLICATE: RETRY, ALREADY: WAS_RECALLED, TOO_LATE: LATE}[result.outcome], None

    def server_id(self) -> str:
        """A fresh id for a D the server makes (delete, erasure)."""
        return self._node.next_server_id()

    @defer.inlineCallbacks
    def delete(self, sender: int, to: int, msg_id: str) -> Generator[defer.Deferred, object, Optional[bool]]:
        """The moderation delete: True deleted now, False already recalled or
        deleted, None no such message.  The ``D`` (from the message's
        sender, a server id) goes to the recipient's and the sender's
        connections."""
        d_id = self._node.next_server_id()
        outcome, _ = cast(Tuple[str, Optional[int]],
                          (yield self.recall(sender, to, msg_id, d_id, None, to_sender=True)))
        if outcome == NOT_FOUND:
            return None
        if outcome != RECALLED:
            return False
        _log.info("message deleted: from={sender} to={to} id={id}", sender=sender, to=to, id=msg_id)
        return True

    @defer.inlineCallbacks
    def delete_room(self, sender: int, room: str, msg_id: str) -> Generator[defer.Deferred, object, Optional[bool]]:
        """The moderation delete of a room's message, as :meth:`delete`; the
        ``D`` goes to every member's connections."""
        if self.rooms is None:
            return None
        outcome, _ = cast(Tuple[str, Optional[int]],
                          (yield self.rooms.recall(sender, room, msg_id, self._node.next_server_id(), None)))
        if outcome == NOT_FOUND:
            return None
        if outcome != RECALLED:
            return False
        _log.info("room message deleted: from={sender} room={room} id={id}", sender=sender, room=room, id=msg_id)
        return True


class RecallHandler:
    """``D`` from a client: its own message, within ``[messages] recall_window``."""

    def __init__(self, recaller: Recaller, window: float) -> None:
        self._recaller = recaller
        self._window_ms = int(round(window * 1000))

    def handle(self, sender: int, packet: protocol.RecallPacket) -> defer.Deferred:
        if packet.to is None:
            rooms = self._recaller.rooms
            if rooms is None:
                raise ImdError("not_found", "no such room")
            d = rooms.recall(sender, cast(str, packet.room), packet.msg, packet.id, self._window_ms,
                             origin=packet.origin)
            return d.addCallback(self._done, packet)
        # the D reaches the sender's other devices too (contract v3 §11)
        d = self._recaller.recall(sender, packet.to, packet.msg, packet.id, self._window_ms, to_sender=True,
                                  origin=packet.origin)
        return d.addCallback(self._done, packet)

    def _done(self, result: Tuple[str, Optional[int]], packet: protocol.RecallPacket) -> Reply:
        outcome, pos = result
        if outcome == NOT_FOUND:
            raise ImdError("not_found", "no such message of yours to that user"
                           if packet.to is not None else "no such message of yours in that room")
        if outcome == LATE:
            raise ImdError("forbidden", "too late to recall that message")
        if outcome == RECALLED and pos is not None:
            return Reply(protocol.ack_pos(packet.id, pos))
        return Reply(protocol.ack_pos(packet.id, 0, duplicate=True))

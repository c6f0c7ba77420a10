"""Recall (``D``) and moderation delete of one message (contract v3 §11).

One path for both (:class:`Recaller`): the store script looks for the
message among its sender's entries still in Redis (imd.stores.recalls);
one no longer there is looked for in MySQL (an entry leaves Redis only
after its row committed, so Redis then MySQL misses nothing), and the
script is called again to store the ``D``.  The stored ``D`` (its ``seq``
is its ``pos``) goes to every connection of the recipient through the
node, on every node; a delete (no sending connection) also goes to every
connection of the message's sender.

Rooms do not exist yet: a ``D`` naming a ``room`` is ``not_found``, in
:meth:`RecallHandler.handle`, the one place a room's recall plugs in.
"""

from typing import Generator, Optional, Tuple, cast

from twisted.internet import defer
from twisted.logger import Logger

from imd import protocol
from imd.clock import Clock
from imd.errors import ImdError
from imd.handlers import Reply
from imd.handlers.ports import Node, RecallRows, Recalls
from imd.stores.recalls import ALREADY, DUPLICATE, NOT_IN_REDIS, STORED, TOO_LATE, RecallResult

_log = Logger()

# What became of a recall or delete
RECALLED, RETRY, WAS_RECALLED, LATE, NOT_FOUND = "recalled", "retry", "was_recalled", "late", "not_found"


class Recaller:
    def __init__(self, store: Recalls, rows: RecallRows, node: Node, clock: Clock) -> None:
        self._store = store
        self._rows = rows
        self._node = node
        self._clock = clock

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
            if row is None:
                return NOT_FOUND, None
            message_ts, recalled = row
            if recalled:
                return WAS_RECALLED, None
            if window_ms is not None and ts - message_ts > window_ms:
                return LATE, None
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


class RecallHandler:
    """``D`` from a client: its own message, within ``[messages] recall_window``."""

    def __init__(self, recaller: Recaller, window: float) -> None:
        self._recaller = recaller
        self._window_ms = int(round(window * 1000))

    def handle(self, sender: int, packet: protocol.RecallPacket) -> defer.Deferred:
        if packet.to is None:
            # rooms (a later step) plug in here; until then no room exists
            raise ImdError("not_found", "no such room")
        # the D reaches the sender's other devices too (contract v3 §11)
        d = self._recaller.recall(sender, packet.to, packet.msg, packet.id, self._window_ms, to_sender=True,
                                  origin=packet.origin)
        return d.addCallback(self._done, packet)

    def _done(self, result: Tuple[str, Optional[int]], packet: protocol.RecallPacket) -> Reply:
        outcome, pos = result
        if outcome == NOT_FOUND:
            raise ImdError("not_found", "no such message of yours to that user")
        if outcome == LATE:
            raise ImdError("forbidden", "too late to recall that message")
        if outcome == RECALLED and pos is not None:
            return Reply(protocol.ack_pos(packet.id, pos))
        return Reply(protocol.ack_pos(packet.id, 0, duplicate=True))

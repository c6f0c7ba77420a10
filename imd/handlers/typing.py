"""``Y`` typing (contract §7.2): relayed to a friend's connections on every
node, never stored.

At most one ``true`` per (sender, recipient) is relayed per ``[typing]
min_interval`` (a window kept in Redis, so it holds across the sender's
devices and nodes); the others are acked and dropped.  A ``false`` is always
relayed: the friend must learn that the typing stopped.
"""

from typing import Optional

from twisted.internet.defer import Deferred

from imd import protocol
from imd.errors import ImdError
from imd.handlers import Reply
from imd.handlers.ports import Node, Typing, TypingFigures
from imd.stores.typing import NOT_FRIEND, RELAY


class TypingHandler:
    def __init__(self, typing: Typing, node: Node, metrics: Optional[TypingFigures] = None) -> None:
        self._typing = typing
        self._node = node
        self._metrics = metrics

    def handle(self, sender: int, packet: protocol.TypingPacket) -> Deferred:
        d = self._typing.check(sender, packet.to, packet.typing)
        return d.addCallback(self._checked, sender, packet)

    def _checked(self, outcome: int, sender: int, packet: protocol.TypingPacket) -> Reply:
        if outcome == NOT_FRIEND:
            raise ImdError("not_friend", "user %d is not your friend" % packet.to)
        relayed = outcome == RELAY
        if relayed:
            self._node.deliver(packet.to, protocol.typing(packet.id, sender, packet.to, packet.typing))
        if self._metrics is not None:
            self._metrics.typing(relayed)
        return Reply(protocol.ack(packet.id))

"""Commands answered from what is at hand: ``P`` and ``O``."""

from typing import Any

from twisted.internet.defer import Deferred

from imd import protocol
from imd.errors import ImdError
from imd.handlers import Reply
from imd.handlers.ports import Presence


class PingHandler:
    def handle(self, sender: int, packet: protocol.PingPacket) -> Reply:
        return Reply(protocol.pong(packet.id))


class OnlineHandler:
    """``O``: is a friend (or oneself) connected on any node?"""

    def __init__(self, presence: Presence) -> None:
        self._presence = presence

    def handle(self, sender: int, packet: protocol.OnlinePacket) -> Deferred:
        d = self._presence.is_online(sender, packet.uid)
        return d.addCallback(self._answer, packet)

    @staticmethod
    def _answer(online: Any, packet: protocol.OnlinePacket) -> Reply:
        if online is None:
            raise ImdError("forbidden", "user %d is not your friend" % packet.uid)
        return Reply(protocol.online(packet.id, packet.uid, online))

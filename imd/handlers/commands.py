"""Commands answered without storage: ``P``."""

from imd import protocol
from imd.handlers import Reply


class PingHandler:
    def handle(self, sender, packet):
        return Reply(protocol.pong(packet.id))

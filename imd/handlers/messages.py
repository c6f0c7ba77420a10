"""``t`` and ``i``: store in Redis (friend check, dedup, MQ), then relay.

The store script also routes the packet to the recipient's connections on
other nodes; the local ones get it from the transport (``Reply.deliver_to``).
"""

from imd import protocol
from imd.errors import ImdError
from imd.handlers import Reply
from imd.stores.redis import DUPLICATE, NOT_FRIEND


class MessageHandler:
    def __init__(self, store, clock, can_route=lambda: True):
        self._store = store
        self._clock = clock
        self._can_route = can_route

    def handle(self, sender, packet):
        if not self._can_route():
            # Without its subscription this node cannot route replies or
            # deliveries reliably: no A for what it cannot stand behind.
            raise ImdError("unavailable", "this node lost its message bus, retry")
        ts = int(self._clock.seconds() * 1000)
        payload = protocol.message_json(packet, sender, ts)
        d = self._store.store_message(sender, packet.to, packet.dedup_id, payload)
        return d.addCallback(self._stored, packet, payload)

    @staticmethod
    def _stored(result, packet, payload):
        if result == NOT_FRIEND:
            raise ImdError("not_friend", "user %d is not your friend" % packet.to)
        ack = protocol.ack(packet.id)
        if result == DUPLICATE:
            # Stored and delivered the first time: acked again, nothing more.
            return Reply(ack)
        return Reply(ack, packet.to, payload)

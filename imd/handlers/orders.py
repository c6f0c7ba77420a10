"""``T`` take order (contract §4): the courier takes an order and the
customer hears of it through a stored ``s`` packet."""

from twisted.internet import defer

from imd import protocol
from imd.errors import ImdError
from imd.handlers import Reply


class TakeOrderHandler:
    def __init__(self, orders_db, orders_settings, presence, clock):
        self._orders_db = orders_db
        self._orders_settings = orders_settings
        self._presence = presence
        self._clock = clock

    @defer.inlineCallbacks
    def handle(self, sender, packet):
        parties = yield self._orders_db.order_parties(self._orders_settings, packet.order)
        if parties is None:
            raise ImdError("not_found", "no order %d" % packet.order)
        customer, courier = parties
        if courier != sender:
            raise ImdError("forbidden", "order %d is not yours" % packet.order)
        ts = int(self._clock.seconds() * 1000)
        notice = {"order": packet.order, "event": "taken", "courier": sender}
        # A fixed id per order: the MySQL unique key (from, id) backs up the
        # taken:<order> guard in Redis, so the s packet is stored once.
        payload = protocol.system_message_json("taken-%d" % packet.order, sender, customer, notice, ts)
        first = yield self._presence.take_order(packet.order, sender, customer, payload)
        ack = protocol.ack(packet.id, {"order": packet.order, "uid": customer})
        if not first:
            return Reply(ack)
        return Reply(ack, customer, payload)

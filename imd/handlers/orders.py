"""``T`` take order (contract §4): the courier takes an order and the
customer hears of it through a stored ``s`` packet."""

from typing import Any

from twisted.internet import defer

from imd import protocol
from imd.errors import ImdError
from imd.handlers import Reply


class TakeOrderHandler:
    def __init__(self, orders_db: Any, orders_settings: Any, orders: Any, node: Any, clock: Any) -> None:
        self._orders_db = orders_db
        self._orders_settings = orders_settings
        self._orders = orders
        self._node = node
        self._clock = clock

    @defer.inlineCallbacks
    def handle(self, sender: int, packet: protocol.TakeOrderPacket) -> Any:
        parties = yield self._orders_db.order_parties(self._orders_settings, packet.order)
        if parties is None:
            raise ImdError("not_found", "no order %d" % packet.order)
        customer, courier = parties
        if courier != sender:
            raise ImdError("forbidden", "order %d is not yours" % packet.order)
        ts = int(self._clock.seconds() * 1000)
        notice = {"order": packet.order, "event": "taken", "courier": sender}
        # A fixed id per order: the MySQL unique key (from, id, to) backs up
        # the taken:<order> guard in Redis, so the s packet is stored once.
        payload = protocol.system_message_json("taken-%d" % packet.order, sender, customer, notice, ts)
        first = yield self._orders.take_order(packet.order, sender, customer, payload)
        first = yield self._orders.client.replicated(first)   # [redis] min_replicas
        if first:
            self._node.deliver(customer, payload)
        return Reply(protocol.ack(packet.id, {"order": packet.order, "uid": customer}))

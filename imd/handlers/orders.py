"""An order's conversation: ``T`` (take order, contract §4) links the
courier and the customer; :class:`OrderLifecycle` closes the order (§7.3),
telling both through a stored ``s`` packet and scheduling the end of the
friendship the order made (run by :mod:`imd.order_ends`)."""

from typing import Any, Dict, Generator, Optional, Protocol, Tuple, cast

from twisted.internet import defer
from twisted.logger import Logger

from imd import protocol
from imd.clock import Clock
from imd.config import OrdersSettings
from imd.errors import ImdError, Refused
from imd.handlers import Reply
from imd.handlers.ports import Node, OrderRows, Orders
from imd.stores.orders import (CLOSED_AFTER_TAKE, CLOSED_UNTAKEN, OTHER_COURIER, REASSIGNED, TAKEN, TAKEN_AGAIN,
                               taken_id)

_log = Logger()


class _OrderState(Protocol):
    """What the order's Redis record and MySQL's ``order_conversation`` both tell."""
    customer: Optional[int]
    courier: Optional[int]
    taken_at: Optional[int]
    closed_at: Optional[int]


CLOSE_TRIES = 3   # a T racing the close of an order nobody had taken: read again
TAKE_TRIES = 3    # a T racing changes of the order's users (POST /IM/api/orders): read again


class TakeOrderHandler:
    """``T``.  The order's Redis record decides while it lives; MySQL's
    ``order_conversation`` row (written at the first ``T`` and at the close)
    outlives it, so a ``T`` long after the order closed, or after an open
    order's record expired, changes nothing either."""

    def __init__(self, orders_db: OrderRows, orders_settings: OrdersSettings, orders: Orders, node: Node,
                 clock: Clock) -> None:
        self._orders_db = orders_db
        self._orders_settings = orders_settings
        self._orders = orders
        self._node = node
        self._clock = clock

    @defer.inlineCallbacks
    def handle(self, sender: int, packet: protocol.TakeOrderPacket) -> Any:
        for _ in range(TAKE_TRIES):
            # read before the row: POST /IM/api/orders writes a new token after
            # the row, so a take with this token knows the row it read is current
            assigned = yield self._orders.assignment(packet.order)
            parties, kept = yield self._orders_db.order_for_take(self._orders_settings, packet.order)
            if parties is None:
                raise ImdError("not_found", "no order %d" % packet.order)
            customer, courier = parties
            if courier != sender:
                raise ImdError("forbidden", "order %d is not yours" % packet.order)
            answer = Reply(protocol.ack(packet.id, {"order": packet.order, "uid": customer}))
            if kept is not None and kept.closed_at is not None:
                # closed: final, whether or not Redis still has the record
                _refuse_closed(packet.order, CLOSED_UNTAKEN if kept.courier is None else
                               OTHER_COURIER if kept.courier != sender else CLOSED_AFTER_TAKE)
                return answer   # a repeat after the close: acked, nothing changes
            earlier = (kept.courier, kept.taken_at, kept.friends_before) if kept is not None and kept.taken_at else None
            ts = int(self._clock.seconds() * 1000)
            notice = {"order": packet.order, "event": "taken", "courier": sender}
            # A fixed id per order: the MySQL unique key (from, id, to) backs up
            # the order's record in Redis, so the s packet is stored once.
            payload = protocol.system_message_json(taken_id(packet.order), sender, customer, notice, ts)
            # ([redis] min_replicas: it fires once the replicas have it)
            take = yield self._orders.take_order(packet.order, sender, customer, payload, ts, earlier, assigned)
            if take.outcome == REASSIGNED:
                continue   # its users changed since the row was read: read again
            _refuse_closed(packet.order, take.outcome)
            if take.outcome == TAKEN and not self._orders.publishes:   # (else the script published it)
                self._node.deliver(customer, protocol.with_pos(payload, take.pos))
            if earlier is None and take.outcome in (TAKEN, TAKEN_AGAIN):
                # kept for good (after the live delivery: if MySQL fails now,
                # the client's retry of this E unavailable writes it)
                yield self._orders_db.record_taken(packet.order, customer, sender, take.before, take.taken_at)
            # (a repeat, before or after the close, is acked again and changes nothing more)
            return answer
        raise ImdError("unavailable", "order %d kept being reassigned while it was taken, retry" % packet.order)


def _refuse_closed(order: int, outcome: str) -> None:
    if outcome == CLOSED_UNTAKEN:
        raise ImdError("forbidden", "order %d is closed" % order)
    if outcome == OTHER_COURIER:
        raise ImdError("forbidden", "order %d was taken by another courier" % order)


class OrderLifecycle:
    """Creating and updating orders (``POST /IM/api/orders``, ``imd-admin
    order create``) and closing them (the server API and ``imd-admin order
    close``).

    ``put`` writes the row ``T`` reads (``[orders] table``), unless the
    order's conversation already exists in another shape: once a ``T`` took
    the order, its courier and customer are the conversation's, and a put
    naming another courier or customer (or no courier) is refused with 409,
    as is any change to a closed order; the same values again are answered
    200 (a retry).  An IM user would otherwise be told "courier B" while
    courier A still talks with the customer and B's ``T`` is ``forbidden``.

    ``close`` is idempotent and safe to call on several nodes at once: the
    store's close script decides, atomically, which call closes the order;
    only that call delivers the ``closed`` events, and every call answers
    with the same ``ends_at``.
    """

    def __init__(self, orders: Orders, orders_db: OrderRows, orders_settings: OrdersSettings, node: Node,
                 clock: Clock, dedup_ttl: int) -> None:
        self._orders = orders
        self._orders_db = orders_db
        self._settings = orders_settings
        self._node = node
        self._clock = clock
        self._dedup_ttl = dedup_ttl

    @defer.inlineCallbacks
    def put(self, order_id: int, customer: int,
            courier: Optional[int]) -> Generator[defer.Deferred, object, Dict[str, Optional[int]]]:
        """Create or update the order's row; fires with ``{"order",
        "customer", "courier"}``.  :class:`Refused` 409 (nothing changed)
        when the order is closed, or was taken by ``T`` and the put names
        other users; 403 when imd may not write the table."""
        for name, value in (("order", order_id), ("customer", customer), ("courier", courier)):
            if value is None and name == "courier":
                continue
            if type(value) is not int or not 0 < value <= protocol.MAX_UID:
                raise ImdError("bad_packet", "%s: a positive integer" % name)
        if courier == customer:
            raise ImdError("bad_packet", "courier: must be another user than the customer")
        yield self._check_changeable(order_id, customer, courier)
        before = cast(Optional[Tuple[int, Optional[int]]],
                      (yield self._orders_db.create_order(self._settings, order_id, customer, courier)))
        if before is not None and before[1] is not None and before != (customer, courier):
            # A T that read the row before this write may take the order with
            # its old courier.  The new token refuses every take by a T that
            # read the token (and so the row) before it; a take that came
            # before it is in Redis now, for the look below.  Either way the
            # conversation and the row cannot disagree: when the look finds
            # the order taken with other users, the write is undone (also
            # when Redis cannot say: the platform's retry does it again).
            try:
                yield self._orders.reassign(order_id)
                yield self._check_changeable(order_id, customer, courier)
            except Exception:
                yield self._orders_db.create_order(self._settings, order_id, before[0], before[1])
                raise
        if before != (customer, courier):
            _log.info("order {order}: customer {customer}, courier {courier}", order=order_id, customer=customer,
                      courier=courier)
        return {"order": order_id, "customer": customer, "courier": courier}

    @defer.inlineCallbacks
    def _check_changeable(self, order_id: int, customer: int,
                          courier: Optional[int]) -> Generator[defer.Deferred, object, None]:
        """Refused 409 unless the order may have these users: not closed,
        and not taken by ``T`` with other users (a repeat of what the order
        already is passes)."""
        record = yield self._orders.record(order_id)
        kept = yield self._orders_db.order_conversation(order_id)
        state = cast(Optional[_OrderState], record if record is not None else kept)
        if state is None:
            return
        taken = state.taken_at is not None
        if taken and (state.customer, state.courier) == (customer, courier):
            return   # what it is already (closed or not): a retry
        if state.closed_at is not None:
            if not taken:
                parties = yield self._orders_db.order_parties(self._settings, order_id)
                if parties == (customer, courier):
                    return
            raise Refused(409, "order %d is closed: it can no longer change" % order_id)
        if taken:
            raise Refused(409, "order %d was taken by courier %s for customer %s (T): its conversation stays "
                               "theirs; close it and create another order" % (order_id, state.courier,
                                                                               state.customer))

    @defer.inlineCallbacks
    def close(self, order_id: int) -> Any:
        """Fires with ``{"order": order_id, "ends_at": <Unix ms>}``: when the
        friendship the order made ends (for an order no ``T`` ever linked,
        the close itself: there is no conversation to end).  ImdError
        ``not_found`` for an order neither Redis nor the orders table knows;
        StoreUnavailable when Redis or MySQL cannot be reached."""
        if type(order_id) is not int or not 0 < order_id <= protocol.MAX_UID:
            raise ImdError("bad_packet", "an order id is a positive integer")
        for _ in range(CLOSE_TRIES):
            record = yield self._orders.record(order_id)
            now = int(self._clock.seconds() * 1000)
            if record is None:
                # no record in Redis: expired (30 days after the end, or
                # after an open order's last T), or never made
                kept = yield self._orders_db.order_conversation(order_id)
                if kept is not None and kept.closed_at is not None:
                    return {"order": order_id, "ends_at": kept.ends_at}
                if kept is not None and kept.courier is not None and kept.taken_at is not None:
                    # taken and still open: its close must end the friendship its T made
                    yield self._orders.restore_taken(order_id, kept.courier, kept.customer, kept.taken_at,
                                                     kept.friends_before, now)
                    continue
            if record is not None and record.taken:
                closed = yield self._close_taken(record, now)
            elif record is not None and record.closed_at is not None:
                closed = record   # closed before anybody took it
                assert record.customer is not None and record.ends_at is not None
                yield self._orders_db.record_closed(order_id, record.customer, None, None, None, record.closed_at,
                                                    record.ends_at)
            else:
                closed = yield self._close_untaken(order_id, now)
            if closed is not None:
                return {"order": order_id, "ends_at": closed.ends_at}
        raise ImdError("unavailable", "order %d kept changing while it was closed, retry" % order_id)

    @defer.inlineCallbacks
    def _close_taken(self, record: Any, now: int) -> Any:
        notice = {"order": record.order, "event": "closed"}
        packet_id = "closed-%d" % record.order
        packets: Dict[int, bytes] = {uid: protocol.system_message_json(packet_id, 0, uid, notice, now)
                                     for uid in (record.courier, record.customer)}
        grace_ms = int(round(self._settings.close_grace * 1000))
        closed = yield self._orders.close_order(record, now, grace_ms, packets, self._dedup_ttl)
        if closed is not None and closed.now:
            _log.info("order {order} closed: the conversation of {courier} and {customer} ends at {ends_at}",
                      order=record.order, courier=record.courier, customer=record.customer, ends_at=closed.ends_at)
            for uid in closed.stored if not self._orders.publishes else ():   # (else the script published them)
                self._node.deliver(uid, protocol.with_pos(packets[uid], closed.positions[uid]))
        if closed is not None:
            # kept for good, every time (a close whose write failed is
            # answered 503, and its retry writes it)
            yield self._orders_db.record_closed(record.order, record.customer, record.courier, record.before,
                                                record.taken_at, closed.closed_at, closed.ends_at)
        return closed

    @defer.inlineCallbacks
    def _close_untaken(self, order_id: int, now: int) -> Any:
        parties = yield self._orders_db.order_parties(self._settings, order_id)
        if parties is None:
            raise ImdError("not_found", "no order %d" % order_id)
        customer, courier = parties
        closed = yield self._orders.close_untaken(order_id, customer, courier, now)
        if closed is not None and closed.now:
            _log.info("order {order} closed before any T: nobody to tell, no friendship to end", order=order_id)
        if closed is not None:
            yield self._orders_db.record_closed(order_id, customer, None, None, None, closed.closed_at,
                                                closed.ends_at)
        return closed

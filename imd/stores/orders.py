"""What an order's conversation keeps in Redis: ``T`` links a courier and a
customer, the order's close schedules the end of that link, and the end
(run by :mod:`imd.order_ends`) takes them out of each other's friend sets.

Keys (imd.stores.keys): ``order:<order>`` (the order's record),
``links:<a>:<b>`` (the orders that keep a pair friends), ``open:<courier>``
(the courier's open orders: who its positions go to), ``orders:ending``
(the schedule of ends), ``URS:<uid>`` and ``kept:<uid>`` of both parties,
and, for the stored ``s`` packets, those of imd.stores.messages (``MQ``,
``MQ:seq``, ``pending:<uid>``, ``dedup:0:<to>:<id>``, and with ``[push] url``
set ``push:unread``, ``push:last``, ``push:due`` of imd.stores.push).

A friendship ends when its last link goes, unless it is kept: ``kept:<uid>``
holds the friends made explicitly (imd.stores.friends) and those who were
friends already when an order's first ``T`` came.  A link of an open order
lasts :data:`OPEN_TTL` after its last ``T`` (an order never closed does not
keep a pair linked for ever); a closed order's link lasts until its end.
"""

import os
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.push import PushNotes
from imd.stores.redis import RedisClient, RedisStore, Script

OPEN_TTL = 30 * 86400     # seconds an order's record and link last after its last T while open
RECORD_TTL = 30 * 86400   # seconds a record is kept after its end (or after closing a never-taken order)

ASSIGNED_TTL = 3600       # seconds an order's assigned:<order> token lasts after a change of its users

# T's outcomes (REASSIGNED: the order's users changed since its T read them: read again)
TAKEN, TAKEN_AGAIN, CLOSED_AFTER_TAKE, CLOSED_UNTAKEN, OTHER_COURIER, REASSIGNED = (
    "taken", "taken_again", "closed_after_take", "closed_untaken", "other_courier", "reassigned")
_TAKE_RESULTS = {1: TAKEN, 0: TAKEN_AGAIN, 2: CLOSED_AFTER_TAKE, 3: CLOSED_UNTAKEN, 4: OTHER_COURIER,
                 5: REASSIGNED}


class Take(NamedTuple):
    """What a ``T`` did: its outcome, and for TAKEN and TAKEN_AGAIN the
    order's first ``T`` (``taken_at``, Unix ms) and whether the two were
    friends before it (``before``), to keep in MySQL; for TAKEN the
    stored ``s`` packet's ``pos`` (contract §10)."""
    outcome: str
    taken_at: Optional[int] = None
    before: Optional[str] = None
    pos: int = 0

TAKE_ORDER = Script.load("take_order")
RESTORE_TAKEN = Script.load("restore_taken")
CLOSE_ORDER = Script.load("close_order")
CLOSE_UNTAKEN = Script.load("close_untaken")
END_ORDER = Script.load("end_order")

# the end's outcomes (order:<order>'s "end")
ENDED, LINKED_BY_ANOTHER, FRIENDS_BEFORE = "ended", "another order links them", "friends before the order"


def taken_id(order: int) -> str:
    """The id of the ``s`` packet a first ``T`` sends the customer (one per order)."""
    return "taken-%d" % order


class OrderRecord(NamedTuple):
    """``order:<order>``: times are Unix ms, None until they happen."""
    order: int
    courier: Optional[int]
    customer: Optional[int]
    before: Optional[str]      # friends when T came: "no", "friends" (kept), "order" (another order)
    taken_at: Optional[int]
    closed_at: Optional[int]
    ends_at: Optional[int]
    ended_at: Optional[int]
    end: Optional[str]         # the end's outcome: ENDED, LINKED_BY_ANOTHER or FRIENDS_BEFORE

    @property
    def taken(self) -> bool:
        return self.taken_at is not None


class Closed(NamedTuple):
    """What a close did: ``now`` True for the call that closed it (and
    stored the events in ``stored``: the uids whose ``s`` packet is new,
    and in ``positions`` each one's ``pos``, contract §10)."""
    closed_at: int
    ends_at: int
    now: bool
    stored: List[int]
    positions: Dict[int, int]


class OrderStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys, push: Optional[PushNotes] = None,
                 dedup_ttl: int = 3600) -> None:
        """``push``: set when ``[push] url`` is (the stored ``s`` packets
        then note their recipients' pending pushes); ``dedup_ttl``: ``[redis]
        dedup_ttl``, the life of the "taken" packet's dedup record."""
        self._client = client
        self.keys = keys
        self.push = push
        self.dedup_ttl = dedup_ttl
        # as imd.stores.messages.MessageStore.publishes: the scripts publish
        # the s packets they store (in pos order), unless [redis] min_replicas
        self.publishes = not client.min_replicas
        self._prefix = keys.channel_prefix if self.publishes else ""

    def assignment(self, order: int) -> Deferred:
        """The order's ``assigned:<order>`` token ("" when none): read by a
        ``T`` before it reads the order's row, and handed to
        :meth:`take_order`."""
        d = self._client.command("GET", self.keys.assigned(order))
        return d.addCallback(lambda reply: reply or "")

    def reassign(self, order: int) -> Deferred:
        """A new ``assigned:<order>`` token, after the order's row got other
        users: a ``T`` that read the token before (and so maybe the row
        before) is refused with REASSIGNED.  Fires once the write is on
        ``[redis] min_replicas`` replicas."""
        token = os.urandom(8).hex()
        d = self._client.command("SET", self.keys.assigned(order), token, "EX", ASSIGNED_TTL)
        return self._replicated(d)

    def take_order(self, order: int, courier: int, customer: int, packet: bytes, now_ms: int,
                   earlier: Optional[Tuple[int, int, Optional[str]]] = None, assigned: str = "") -> Deferred:
        """Link the two (friends both ways) and store the ``s`` packet, the
        first time only.  ``earlier``: ``(courier, taken_at, before)`` of a
        ``T`` MySQL kept, which stands in for an expired record (it is
        restored; nothing else happens).  ``assigned``: the order's token
        (:meth:`assignment`) as read before the order's row; if it changed
        since, nothing happens and the outcome is REASSIGNED.  Fires with a
        :class:`Take`, once the write is on ``[redis] min_replicas``
        replicas."""
        k, push = self.keys, self.push
        key_list = [k.friends(courier), k.friends(customer), k.order(order), k.links(courier, customer),
                    k.kept(courier), k.kept(customer), k.mq, k.mq_seq, k.pending(courier), k.pending(customer),
                    k.dedup(courier, taken_id(order), customer), k.open_orders(courier), k.devices(customer),
                    k.conversations(courier), k.conversation_last(courier), k.conversations(customer),
                    k.conversation_last(customer), k.unread(customer, courier), k.assigned(order)]
        args: List[Any] = [courier, customer, packet, OPEN_TTL, now_ms, order]
        if earlier is None:
            args += ["", "", ""]
        else:
            args += [earlier[0], earlier[1], earlier[2] or ""]
        args.append(self.dedup_ttl)
        args.append(self._prefix)
        args.append(assigned)
        if push is not None:
            key_list += push.keys
            args.append(push.due(now_ms))
        d = self._client.run(TAKE_ORDER, key_list, args)
        return self._replicated(d.addCallback(_take))

    def restore_taken(self, order: int, courier: int, customer: int, taken_at: int, before: Optional[str],
                      now_ms: int) -> Deferred:
        """Make an open order's expired record again from what MySQL kept
        of its first ``T`` (no friendship added).  Fires True when restored,
        False when Redis had a record."""
        k = self.keys
        d = self._client.run(RESTORE_TAKEN, [k.order(order), k.links(courier, customer)],
                            [courier, customer, before or "", taken_at, OPEN_TTL, now_ms, order])
        return d.addCallback(lambda reply: bool(int(reply)))

    def record(self, order: int) -> Deferred:
        """The order's :class:`OrderRecord`, or None when Redis has none."""
        d = self._client.command("HGETALL", self.keys.order(order))
        return d.addCallback(_record, order)

    def close_order(self, record: OrderRecord, now_ms: int, grace_ms: int, packets: Dict[int, bytes],
                    dedup_ttl: int) -> Deferred:
        """Close a taken order: schedule its end ``grace_ms`` from now and
        store ``packets`` ({uid: the ``closed`` s packet}) once.  Fires with
        :class:`Closed`, or None when the record changed meanwhile."""
        k, push = self.keys, self.push
        order, courier, customer = record.order, record.courier, record.customer
        assert courier is not None and customer is not None   # a taken order has both
        packet_id = "closed-%d" % order
        key_list = [k.order(order), k.links(courier, customer), k.orders_ending, k.mq, k.mq_seq,
                    k.pending(courier), k.pending(customer),
                    k.dedup(0, packet_id, courier), k.dedup(0, packet_id, customer), k.open_orders(courier),
                    k.devices(courier), k.devices(customer),
                    k.conversations(courier), k.conversation_last(courier), k.unread(courier, 0),
                    k.conversations(customer), k.conversation_last(customer), k.unread(customer, 0)]
        args: List[Any] = [order, courier, customer, now_ms, grace_ms, packets[courier], packets[customer],
                           dedup_ttl, self._prefix]
        if push is not None:
            key_list += push.keys
            args.append(push.due(now_ms))
        d = self._client.run(CLOSE_ORDER, key_list, args)
        return d.addCallback(_closed, (courier, customer))

    def close_untaken(self, order: int, customer: int, courier: Optional[int], now_ms: int) -> Deferred:
        """Record an order no ``T`` linked as closed.  Fires with
        :class:`Closed`, or None when a ``T`` took it meanwhile."""
        d = self._client.run(CLOSE_UNTAKEN, [self.keys.order(order)], [now_ms, customer, courier or 0, RECORD_TTL])
        return d.addCallback(_closed, ())

    def due_ends(self, now_ms: int, limit: int) -> Deferred:
        """Up to ``limit`` order ids whose end is due, the most overdue first."""
        d = self._client.command("ZRANGEBYSCORE", self.keys.orders_ending, "-inf", now_ms, "LIMIT", 0, limit)
        return d.addCallback(lambda reply: [int(m) for m in reply or ()])

    def end_order(self, order: int, now_ms: int) -> Deferred:
        """Run the order's end if it is due and nobody ran it yet.  Fires
        with the outcome (ENDED, LINKED_BY_ANOTHER or FRIENDS_BEFORE), or None when there was
        nothing to do."""
        k = self.keys

        def run(reply: Any) -> Any:
            courier, customer = reply or (None, None)
            if courier is None or customer is None:
                # no record (an operator deleted it): nothing left to end
                return self._client.command("ZREM", k.orders_ending, order).addCallback(lambda _: None)
            a, b = int(courier), int(customer)
            return self._client.run(END_ORDER,
                                   [k.orders_ending, k.order(order), k.links(a, b), k.friends(a), k.friends(b),
                                    k.kept(a)],
                                   [order, now_ms, a, b, RECORD_TTL])
        return self._client.command("HMGET", k.order(order), "courier", "customer").addCallback(run)


def _take(reply: Any) -> Take:
    outcome = _TAKE_RESULTS[int(reply[0])]
    if len(reply) < 3:
        return Take(outcome)
    return Take(outcome, int(reply[1]), reply[2] or None, int(reply[3]) if len(reply) > 3 else 0)


def _int(value: Any) -> Optional[int]:
    return None if value is None else int(value)


def _record(reply: Any, order: int) -> Optional[OrderRecord]:
    if not reply:
        return None
    fields = dict(zip(reply[0::2], reply[1::2]))
    return OrderRecord(order, _int(fields.get("courier")), _int(fields.get("customer")), fields.get("before"),
                       _int(fields.get("taken_at")), _int(fields.get("closed_at")), _int(fields.get("ends_at")),
                       _int(fields.get("ended_at")), fields.get("end"))


def _closed(reply: Any, parties: Any) -> Optional[Closed]:
    state = int(reply[0])
    if state < 0:
        return None
    seqs = {uid: int(seq) for uid, seq in zip(parties, reply[3:]) if int(seq)} if state == 1 else {}
    return Closed(int(reply[1]), int(reply[2]), state != 0, [uid for uid in parties if uid in seqs], seqs)

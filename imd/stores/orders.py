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

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.messages import STORE_ENTRY_LUA
from imd.stores.push import NOTE_PUSH_LUA, PushNotes
from imd.stores.redis import RedisClient, Script

OPEN_TTL = 30 * 86400     # seconds an order's record and link last after its last T while open
RECORD_TTL = 30 * 86400   # seconds a record is kept after its end (or after closing a never-taken order)

# T's outcomes
TAKEN, TAKEN_AGAIN, CLOSED_AFTER_TAKE, CLOSED_UNTAKEN, OTHER_COURIER = (
    "taken", "taken_again", "closed_after_take", "closed_untaken", "other_courier")
_TAKE_RESULTS = {1: TAKEN, 0: TAKEN_AGAIN, 2: CLOSED_AFTER_TAKE, 3: CLOSED_UNTAKEN, 4: OTHER_COURIER}


class Take(NamedTuple):
    """What a ``T`` did: its outcome, and for TAKEN and TAKEN_AGAIN the
    order's first ``T`` (``taken_at``, Unix ms) and whether the two were
    friends before it (``before``), to keep in MySQL."""
    outcome: str
    taken_at: Optional[int] = None
    before: Optional[str] = None

# A link set's expiry follows its longest link: none while a closed order's
# link (score inf) is in it, gone with it once empty.
EXPIRE_LINKS_LUA = """
local function expire_links(key)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #top == 0 then return end
  if top[2] == 'inf' then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIREAT', key, string.format('%d', tonumber(top[2])))
  end
end
"""

# restore(order key, links key, courier, customer, before, taken_at, open
# ttl (s), now (ms), order): an open order's record that expired (30 days
# without a T) made again from what MySQL kept (order_conversation), with
# its link, and no friendship added: so that its close still ends the
# friendship its first T made.
RESTORE_LUA = EXPIRE_LINKS_LUA + """
local function restore(order_key, links_key, courier, customer, before, taken_at, ttl, now, order)
  redis.call('HSET', order_key, 'courier', courier, 'customer', customer, 'before', before, 'taken_at', taken_at)
  redis.call('EXPIRE', order_key, ttl)
  redis.call('ZADD', links_key, now + ttl * 1000, order)
  expire_links(links_key)
end
"""

# KEYS: URS:<courier>, URS:<customer>, order:<order>, links:<pair>,
#       kept:<courier>, kept:<customer>, MQ, MQ:seq, pending:<courier>, pending:<customer>,
#       dedup:<courier>:taken-<order>, open:<courier>
#       [, push:unread, push:last, push:due: only with [push] url set]
# ARGV: courier, customer, s packet, open ttl (s), now (ms), order,
#       what MySQL kept of an earlier T ('' when nothing: its courier,
#       taken_at, before), dedup ttl (s) [, push due (ms)]
# The s packet gets a dedup record like any message: the customer's
# receipts for it are verified against that, as for every message.
# {1, taken_at, before}: first T (friends, the s packet stored);
# {0, taken_at, before}: a repeat while open (the record and link renewed:
# nothing else, not even the friendship, which friend rm may have ended);
# {2}: a repeat after the close (nothing changes: a late retry must not
# bring an ended friendship back); {3}: the order was closed before any T;
# {4}: another courier took it.  With no record in Redis (it expired) but
# an earlier T in MySQL, the record is restored and it is a repeat.
TAKE_ORDER = Script(STORE_ENTRY_LUA + NOTE_PUSH_LUA + RESTORE_LUA + """
-- open while taken and not closed: the courier's positions go to this customer
local function mark_open(now, ttl)
  redis.call('ZREMRANGEBYSCORE', KEYS[12], '-inf', now)
  redis.call('ZADD', KEYS[12], now + ttl * 1000, ARGV[6] .. ':' .. ARGV[2])
  expire_links(KEYS[12])
end
local record = redis.call('HMGET', KEYS[3], 'courier', 'taken_at', 'closed_at', 'before')
if record[2] then
  if record[1] ~= ARGV[1] then return {4} end
  if record[3] then return {2} end
elseif record[3] then
  return {3}
end
local now, ttl = tonumber(ARGV[5]), tonumber(ARGV[4])
if not record[2] and ARGV[7] ~= '' then
  if ARGV[7] ~= ARGV[1] then return {4} end
  restore(KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[9], ARGV[8], ttl, now, ARGV[6])
  mark_open(now, ttl)
  return {0, tonumber(ARGV[8]), ARGV[9]}
end
if record[2] then
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('ZADD', KEYS[4], now + ttl * 1000, ARGV[6])
  expire_links(KEYS[4])
  mark_open(now, ttl)
  return {0, tonumber(record[2]), record[4] or ''}
end
-- friends already, and not through another order still linking them:
-- that friendship is not this order's to end
local before = 'no'
if redis.call('SISMEMBER', KEYS[5], ARGV[2]) == 1 then
  before = 'friends'
elseif redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then
  if redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[5], '+inf') > 0 then
    before = 'order'
  else
    before = 'friends'
    redis.call('SADD', KEYS[5], ARGV[2])
    redis.call('SADD', KEYS[6], ARGV[1])
  end
end
redis.call('HSET', KEYS[3], 'courier', ARGV[1], 'customer', ARGV[2], 'before', before, 'taken_at', ARGV[5])
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[4], now + ttl * 1000, ARGV[6])
expire_links(KEYS[4])
store_entry(KEYS[7], KEYS[8], KEYS[9], KEYS[10], ARGV[3])
redis.call('SET', KEYS[11], ARGV[2], 'NX', 'EX', ARGV[10])
mark_open(now, ttl)
if ARGV[11] then note_push(KEYS[13], KEYS[14], KEYS[15], ARGV[2], ARGV[3], ARGV[11]) end
return {1, now, before}
""", "take_order")

# KEYS: order:<order>, links:<pair>.  ARGV: courier, customer, before,
# taken_at, open ttl (s), now (ms), order.  1: restored; 0: Redis has a
# record (nothing changed).
RESTORE_TAKEN = Script(RESTORE_LUA + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
restore(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
return 1
""", "restore_taken")

# KEYS: order:<order>, links:<pair>, orders:ending, MQ, MQ:seq,
#       pending:<courier>, pending:<customer>,
#       dedup:0:<courier>:closed-<order>, dedup:0:<customer>:closed-<order>, open:<courier>
#       [, push:unread, push:last, push:due: only with [push] url set]
# ARGV: order, courier, customer, now (ms), grace (ms), s packet to the
#       courier, s packet to the customer, dedup ttl [, push due (ms)]
# {1, closed_at, ends_at, courier's stored, customer's stored}: closed now;
# {0, closed_at, ends_at}: closed before; {-1}: the record is not a take by
# that courier (gone meanwhile).
CLOSE_ORDER = Script(STORE_ENTRY_LUA + NOTE_PUSH_LUA + """
local record = redis.call('HMGET', KEYS[1], 'courier', 'taken_at', 'closed_at', 'ends_at')
if record[1] ~= ARGV[2] or not record[2] then return {-1} end
if record[3] then return {0, tonumber(record[3]), tonumber(record[4])} end
local ends = tonumber(ARGV[4]) + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'closed_at', ARGV[4], 'ends_at', ends)
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], 'inf', ARGV[1])
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[3], ends, ARGV[1])
-- no longer open: the courier's next position does not go to the customer
redis.call('ZREM', KEYS[10], ARGV[1] .. ':' .. ARGV[3])
local stored = {0, 0}
for i, to in ipairs({ARGV[2], ARGV[3]}) do
  if redis.call('SET', KEYS[7 + i], to, 'NX', 'EX', ARGV[8]) then
    store_entry(KEYS[4], KEYS[5], KEYS[5 + i], KEYS[5 + i], ARGV[5 + i])
    if ARGV[9] then note_push(KEYS[11], KEYS[12], KEYS[13], to, ARGV[5 + i], ARGV[9]) end
    stored[i] = 1
  end
end
return {1, tonumber(ARGV[4]), ends, stored[1], stored[2]}
""", "close_order")

# KEYS: order:<order>.  ARGV: now (ms), customer, courier (0: none), record ttl
# An order no T linked: recorded as closed (so a T that comes later is
# refused), with nothing to end.  {2, closed_at, ends_at}; {0, ...} closed
# before; {-1}: a T took it meanwhile.
CLOSE_UNTAKEN = Script("""
local record = redis.call('HMGET', KEYS[1], 'taken_at', 'closed_at', 'ends_at')
if record[1] then return {-1} end
if record[2] then return {0, tonumber(record[2]), tonumber(record[3])} end
redis.call('HSET', KEYS[1], 'customer', ARGV[2], 'closed_at', ARGV[1], 'ends_at', ARGV[1])
if ARGV[3] ~= '0' then redis.call('HSET', KEYS[1], 'courier', ARGV[3]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {2, tonumber(ARGV[1]), tonumber(ARGV[1])}
""", "close_untaken")

# KEYS: orders:ending, order:<order>, links:<pair>, URS:<a>, URS:<b>, kept:<a>
# ARGV: order, now (ms), a, b, record ttl
# The one place a friendship made by an order ends: only when the order's
# end is due and still scheduled (so it runs once, whoever calls it), and
# only if no other order links the pair and the friendship is not kept.
# false: not due or already done; else how it ended.
END_ORDER = Script(EXPIRE_LINKS_LUA + """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
local outcome = 'ended'
if redis.call('ZCARD', KEYS[3]) > 0 then
  outcome = 'another order links them'
elseif redis.call('SISMEMBER', KEYS[6], ARGV[4]) == 1 then
  outcome = 'friends before the order'
else
  redis.call('SREM', KEYS[4], ARGV[4])
  redis.call('SREM', KEYS[5], ARGV[3])
end
expire_links(KEYS[3])
redis.call('HSET', KEYS[2], 'ended_at', ARGV[2], 'end', outcome)
redis.call('EXPIRE', KEYS[2], ARGV[5])
return outcome
""", "end_order")

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
    stored the events in ``stored``: the uids whose ``s`` packet is new)."""
    closed_at: int
    ends_at: int
    now: bool
    stored: List[int]


class OrderStore:
    def __init__(self, client: RedisClient, keys: Keys, push: Optional[PushNotes] = None,
                 dedup_ttl: int = 3600) -> None:
        """``push``: set when ``[push] url`` is (the stored ``s`` packets
        then note their recipients' pending pushes); ``dedup_ttl``: ``[redis]
        dedup_ttl``, the life of the "taken" packet's dedup record."""
        self.client = client
        self.keys = keys
        self.push = push
        self.dedup_ttl = dedup_ttl

    def take_order(self, order: int, courier: int, customer: int, packet: bytes, now_ms: int,
                   earlier: Optional[Tuple[int, int, Optional[str]]] = None) -> Deferred:
        """Link the two (friends both ways) and store the ``s`` packet, the
        first time only.  ``earlier``: ``(courier, taken_at, before)`` of a
        ``T`` MySQL kept, which stands in for an expired record (it is
        restored; nothing else happens).  Fires with a :class:`Take`."""
        k, push = self.keys, self.push
        key_list = [k.friends(courier), k.friends(customer), k.order(order), k.links(courier, customer),
                    k.kept(courier), k.kept(customer), k.mq, k.mq_seq, k.pending(courier), k.pending(customer),
                    k.dedup(courier, taken_id(order), customer), k.open_orders(courier)]
        args: List[Any] = [courier, customer, packet, OPEN_TTL, now_ms, order]
        if earlier is None:
            args += ["", "", ""]
        else:
            args += [earlier[0], earlier[1], earlier[2] or ""]
        args.append(self.dedup_ttl)
        if push is not None:
            key_list += push.keys
            args.append(push.due(now_ms))
        d = self.client.run(TAKE_ORDER, key_list, args)
        return d.addCallback(_take)

    def restore_taken(self, order: int, courier: int, customer: int, taken_at: int, before: Optional[str],
                      now_ms: int) -> Deferred:
        """Make an open order's expired record again from what MySQL kept
        of its first ``T`` (no friendship added).  Fires True when restored,
        False when Redis had a record."""
        k = self.keys
        d = self.client.run(RESTORE_TAKEN, [k.order(order), k.links(courier, customer)],
                            [courier, customer, before or "", taken_at, OPEN_TTL, now_ms, order])
        return d.addCallback(lambda reply: bool(int(reply)))

    def record(self, order: int) -> Deferred:
        """The order's :class:`OrderRecord`, or None when Redis has none."""
        d = self.client.command("HGETALL", self.keys.order(order))
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
                    k.dedup(0, packet_id, courier), k.dedup(0, packet_id, customer), k.open_orders(courier)]
        args: List[Any] = [order, courier, customer, now_ms, grace_ms, packets[courier], packets[customer],
                           dedup_ttl]
        if push is not None:
            key_list += push.keys
            args.append(push.due(now_ms))
        d = self.client.run(CLOSE_ORDER, key_list, args)
        return d.addCallback(_closed, (courier, customer))

    def close_untaken(self, order: int, customer: int, courier: Optional[int], now_ms: int) -> Deferred:
        """Record an order no ``T`` linked as closed.  Fires with
        :class:`Closed`, or None when a ``T`` took it meanwhile."""
        d = self.client.run(CLOSE_UNTAKEN, [self.keys.order(order)], [now_ms, customer, courier or 0, RECORD_TTL])
        return d.addCallback(_closed, ())

    def due_ends(self, now_ms: int, limit: int) -> Deferred:
        """Up to ``limit`` order ids whose end is due, the most overdue first."""
        d = self.client.command("ZRANGEBYSCORE", self.keys.orders_ending, "-inf", now_ms, "LIMIT", 0, limit)
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
                return self.client.command("ZREM", k.orders_ending, order).addCallback(lambda _: None)
            a, b = int(courier), int(customer)
            d = self.client.run(END_ORDER,
                                [k.orders_ending, k.order(order), k.links(a, b), k.friends(a), k.friends(b),
                                 k.kept(a)],
                                [order, now_ms, a, b, RECORD_TTL])
            return d.addCallback(_text)
        return self.client.command("HMGET", k.order(order), "courier", "customer").addCallback(run)


def _take(reply: Any) -> Take:
    outcome = _TAKE_RESULTS[int(reply[0])]
    if len(reply) < 3:
        return Take(outcome)
    return Take(outcome, int(reply[1]), _text(reply[2]) or None)


def _text(reply: Any) -> Optional[str]:
    if reply is None:
        return None
    return reply.decode("utf-8") if isinstance(reply, bytes) else str(reply)


def _int(value: Any) -> Optional[int]:
    return None if value is None else int(value)


def _record(reply: Any, order: int) -> Optional[OrderRecord]:
    if not reply:
        return None
    fields = {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply), 2)}
    return OrderRecord(order, _int(fields.get("courier")), _int(fields.get("customer")), fields.get("before"),
                       _int(fields.get("taken_at")), _int(fields.get("closed_at")), _int(fields.get("ends_at")),
                       _int(fields.get("ended_at")), fields.get("end"))


def _closed(reply: Any, parties: Any) -> Optional[Closed]:
    state = int(reply[0])
    if state < 0:
        return None
    stored = [uid for uid, flag in zip(parties, reply[3:]) if int(flag)] if state == 1 else []
    return Closed(int(reply[1]), int(reply[2]), state != 0, stored)

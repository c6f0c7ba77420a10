"""Receipts (``R``, contract §7.1) in Redis: verified, moved forward and
stored in one script per packet.

Keys (imd.stores.keys): ``dedup:<uid>:<id>`` and ``dedup:0:<to>:<id>`` (read
and updated), ``MQ``, ``MQ:seq``, ``pending:<uid>`` (through
``STORE_ENTRY_LUA``; its oldest entries read by :meth:`ReceiptStore.old_pending`),
``budget:lookups:<uid>``, and with ``[push] url`` set ``push:unread``,
``push:last``, ``push:due`` (imd.stores.push: messages reported delivered
lower the reader's undelivered count; at 0 no push waits any more).

The state of a message lives in its dedup record, which the store script
wrote with the recipient's uid as its value: ``<to>`` (sent), ``<to>:d``
(delivered), ``<to>:r`` (read).  So the record both proves that the reader
really received the message (its value names the reader) and holds the state
that may only move forward, at the cost of one script per ``R`` whatever the
number of ids, like a message.

A record lives ``[redis] dedup_ttl`` from its message (receipts keep its
expiry: ``imd-admin reconcile`` dates a message by it).  For ids whose
record is gone (expired, or an id the reader never received) the first call
changes nothing and names them; the
caller verifies them against what is stored (the reader's pending entries,
then MySQL) and calls again with a *seed* per id: the state found there,
which is written back as the record, or :data:`UNKNOWN` for an id the reader
never received.  Only then is anything moved, so one ``R`` makes one stored
entry and one relay.

That verification is the expensive part of a receipt, and ids nobody sent
cost it every time: each ``R`` that needs it is charged to the reader's budget
(``budget:lookups:<uid>``, imd.stores.budgets), and the pending entries are
read only where such a message can be: one whose record is gone was
accepted more than ``dedup_ttl`` ago, so :meth:`ReceiptStore.old_pending`
reads the oldest entries only, and none while the migrator keeps up.  (A
receipt of it accepted later than that and not yet migrated is not seen:
with a migrator that far behind, a receipt repeated then may be relayed
again.)
"""

from typing import Any, List, NamedTuple, Optional, Sequence

from twisted.internet.defer import Deferred

from imd import protocol
from imd.stores.budgets import TAKE_TOKENS_LUA, Budget
from imd.stores.keys import Keys
from imd.stores.messages import STORE_ENTRY_LUA
from imd.stores.push import CANCEL_PUSH_LUA, PushNotes
from imd.stores.redis import RedisClient, Script

UNKNOWN = "x"   # seed of an id that was not found anywhere: ignored

# KEYS: MQ, MQ:seq, pending:<reader>, pending:<sender> (the reader's again
#       for the system), [push:unread, push:last, push:due: only with
#       [push] url set,] then the dedup record of each id.
# ARGV: reader, state (1|2), "check"|"final", dedup ttl, entry head, entry
#       tail, '1' with [push] url set (else '0'), then per id: its JSON and
#       its seed ('' none, 'x' unknown, else the state found in MySQL: 0, 1
#       or 2).
# Returns {0, {i...}}: the ids (1-based) without a record, nothing changed
# ("check" only); or {1, {i...}}: the ids whose state advanced (stored as one
# entry, the head .. their JSON .. the tail).  The ids that leave "sent"
# lower the reader's undelivered count, which cancels a waiting push at 0.
RECEIPT = Script(STORE_ENTRY_LUA + CANCEL_PUSH_LUA + """
local reader, state = ARGV[1], tonumber(ARGV[2])
local push = ARGV[7] == '1'
local first = push and 7 or 4
local n = #KEYS - first
local values = {}
for i = 1, n do values[i] = redis.call('GET', KEYS[first + i]) end
if ARGV[3] == 'check' then
  local missing = {}
  for i = 1, n do
    if not values[i] then missing[#missing + 1] = i end
  end
  if #missing > 0 then return {0, missing} end
end
local marks = {[0] = '', [1] = ':d', [2] = ':r'}
local advanced, ids, written, delivered = {}, {}, {}, 0
for i = 1, n do
  local key = KEYS[first + i]
  -- (an id named twice: its second time sees what the first wrote)
  local value = written[key] or values[i]
  local seed = ARGV[7 + 2 * i]
  if not value and seed ~= '' and seed ~= 'x' then
    value = reader .. marks[tonumber(seed)]
    redis.call('SET', key, value, 'EX', ARGV[4])
    written[key] = value
  end
  if value then
    local to, current = value, 0
    local sep = string.find(value, ':', 1, true)
    if sep then
      to = string.sub(value, 1, sep - 1)
      current = (string.sub(value, sep + 1) == 'r') and 2 or 1
    end
    if to == reader and state > current then
      written[key] = to .. marks[state]
      redis.call('SET', key, written[key], 'KEEPTTL')
      advanced[#advanced + 1] = i
      ids[#ids + 1] = ARGV[6 + 2 * i]
      if current == 0 then delivered = delivered + 1 end
    end
  end
end
if #advanced > 0 then
  store_entry(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[5] .. table.concat(ids, ',') .. ARGV[6])
end
if push and delivered > 0 then cancel_push(KEYS[5], KEYS[6], KEYS[7], reader, delivered) end
return {1, advanced}
""", "receipt")


# KEYS: pending:<reader>, budget:lookups:<reader>.
# ARGV: rate, burst, now (ms) of the lookup budget (rate 0: not charged),
#       the score to start after ('-inf' first, else '(<seq>'), the ts limit
#       (ms), how many entries to scan at most, then the needles.
# The reader's pending entries older than the limit (by accept order, from
# the oldest; the first one at or past the limit ends the scan) that hold
# one of the needles: {done (0/1), where to go on, matches...}; false when
# the budget is spent (nothing read).  Read 1, 8, 64... entries at a time:
# while the migrator keeps up, the oldest entry is young and the only one read.
OLD_PENDING = Script(TAKE_TOKENS_LUA + """
if not take_tokens(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), 1) then return false end
local limit, most = tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {0, ARGV[4]}
local scanned, step = 0, 1
while scanned < most do
  local n = math.min(step, most - scanned)
  local entries = redis.call('ZRANGEBYSCORE', KEYS[1], out[2], '+inf', 'WITHSCORES', 'LIMIT', 0, n)
  for i = 1, #entries, 2 do
    local entry = entries[i]
    local ts = tonumber(string.match(entry, '"ts":(%d+),"seq":%d+}$'))
    if ts and ts >= limit then
      out[1] = 1
      return out
    end
    out[2] = '(' .. entries[i + 1]
    for j = 7, #ARGV do
      if string.find(entry, ARGV[j], 1, true) then
        out[#out + 1] = entry
        break
      end
    end
  end
  if #entries < 2 * n then
    out[1] = 1
    return out
  end
  scanned = scanned + n
  step = math.min(step * 8, 512)
end
return out
""", "old_pending")

# Entries scanned by one OLD_PENDING call (Redis serves nobody else meanwhile)
OLD_PENDING_SCAN = 1000
# How far behind each other the clocks of imd's nodes and Redis's may be (ms)
CLOCK_SKEW_MS = 60000


class ReceiptResult(NamedTuple):
    """``missing``: indexes of ids without a record (nothing was changed);
    else ``advanced``: indexes of the ids whose state moved forward."""
    missing: List[int]
    advanced: List[int]


class ReceiptStore:
    def __init__(self, client: RedisClient, keys: Keys, dedup_ttl: int = 3600,
                 push: Optional[PushNotes] = None) -> None:
        """``push``: set when ``[push] url`` is (receipts then lower the
        reader's undelivered count, in the same script)."""
        self.client = client
        self.keys = keys
        self.dedup_ttl = dedup_ttl
        self.push = push

    def apply(self, packet: protocol.ReceiptPacket, reader: int, ts: int,
              seeds: Optional[Sequence[str]] = None) -> Deferred:
        """Move the state of ``packet.ids`` (messages from ``packet.to`` to
        ``reader``) forward and store what advanced; fires with a
        :class:`ReceiptResult`.  Without ``seeds`` nothing changes when an id
        has no record; with them (one per id: '' / :data:`UNKNOWN` / a state
        0-2 found elsewhere) every id is settled."""
        keys, sender = self.keys, packet.to
        head, tail = protocol.receipt_entry_parts(packet.id, reader, sender, packet.state, ts)
        pending_sender = keys.pending(sender if sender else reader)
        key_list = [keys.mq, keys.mq_seq, keys.pending(reader), pending_sender]
        if self.push is not None:
            key_list += self.push.keys
        args: List[Any] = [reader, packet.state, "check" if seeds is None else "final", self.dedup_ttl, head, tail,
                           "0" if self.push is None else "1"]
        for i, (message_id, dedup_id) in enumerate(zip(packet.ids, packet.dedup_ids)):
            key_list.append(keys.dedup(sender, dedup_id, reader))
            args.append(protocol.id_json(message_id))
            args.append("" if seeds is None else seeds[i])
        d = self.client.run(RECEIPT, key_list, args)
        return d.addCallback(_result)


    def old_pending(self, reader: int, sender: int, now_ms: int, lookups: Budget) -> Deferred:
        """The reader's pending entries that may hold a message from
        ``sender`` whose dedup record is gone, and the reader's receipts as
        old: entries accepted more than ``dedup_ttl`` ago (a record lives
        ``dedup_ttl`` from its message; a clock skew's margin kept), of the
        conversation of the two.  In a healthy system (the migrator keeps
        up) there are none, and one look at the oldest pending entry says
        so: the set is never read whole.

        One lookup is charged to the reader's budget (``lookups``) first:
        fires with None when it is spent, else with the entries (str)."""
        keys = self.keys
        limit = now_ms - self.dedup_ttl * 1000 + 2 * CLOCK_SKEW_MS
        needles = [b',"from":%d,"to":%d,' % (sender, reader), b',"from":%d,"to":%d,"type":"R"' % (reader, sender)]
        key_list = [keys.pending(reader), keys.budget("lookups", reader)]
        found: List[str] = []

        def scan(start: str, budget: List[Any]) -> Deferred:
            d = self.client.run(OLD_PENDING, key_list, budget + [start, limit, OLD_PENDING_SCAN] + needles)
            return d.addCallback(scanned)

        def scanned(reply: Any) -> Any:
            if reply is None:
                return None
            done, after = int(reply[0]), reply[1]
            found.extend(_entry_text(e) for e in reply[2:])
            if done:
                return found
            return scan(_entry_text(after), [0, 1, now_ms])   # charged once
        return scan("-inf", lookups.args(now_ms))


def _entry_text(entry: Any) -> str:
    return entry.decode("utf-8", "replace") if isinstance(entry, bytes) else entry


def _result(reply: Any) -> ReceiptResult:
    done, indexes = int(reply[0]), [int(i) - 1 for i in reply[1] or ()]
    if done:
        return ReceiptResult([], indexes)
    return ReceiptResult(indexes, [])

"""Pending offline pushes (contract §7.5) in Redis: what the message path
notes, what a receipt cancels, and what the drainer takes, retries and
finishes.

Keys (imd.stores.keys): ``push:unread``, ``push:last``, ``push:due`` (written
by the store scripts of imd.stores.messages and imd.stores.orders through
:data:`NOTE_PUSH_LUA`, lowered by the receipt script through
:data:`CANCEL_PUSH_LUA`), ``push:inflight``, ``push:sending``, ``push:born``,
``push:current`` (the drainer's).

The message path adds no round trip: each store script that stores a
message for a user also, when ``[push] url`` is set (the caller passes the
three push keys and the due time; without them the scripts skip it), counts
it in ``push:unread``, keeps it as the user's newest in ``push:last`` and
puts the user on ``push:due`` with ``ZADD NX``: the first undelivered
message opens a ``[push] delay`` window, later ones join it.  A receipt
that moves messages of the user from sent to delivered lowers the count;
at 0 the waiting push is gone.

The drainer takes due users (one script: off ``push:due``, their newest
message out of ``push:last``, a record under a fresh delivery key into
``push:inflight``), so a message is named by one push at most.  An in-flight
push stays in Redis until the gateway answered (or it is given up): killed
between taking and answering, its lease on ``push:sending`` runs out and the
next drainer sends it again under the same delivery key.

A user has one push in flight at most (``push:current``): while it waits
for a retry (the gateway failing), a window of that user that ends joins
it — its record takes the newest message — instead of making a second
record, and every retry carries the user's unread count as it is then.  So
a failing gateway costs one record and one retry schedule per user, however
many messages keep coming.  A push answered while a newer message had
joined it after its last try was taken hands that message back to
``push:last``, due at once: it goes in a push of its own.

An in-flight record is ``"<attempts> <first try ms> <window start ms> <to>
<unread> <message JSON>"``.
"""

from typing import Any, List, NamedTuple, Optional, Sequence

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, Script

# note_push(push:unread, push:last, push:due, to, packet, due ms): one more
# undelivered message for ``to``.
NOTE_PUSH_LUA = """
local function note_push(unread, last, due, to, packet, due_ms)
  redis.call('HINCRBY', unread, to, 1)
  redis.call('HSET', last, to, packet)
  redis.call('ZADD', due, 'NX', due_ms, to)
end
"""

# cancel_push(push:unread, push:last, push:due, to, n): ``n`` messages of
# ``to`` were reported delivered; none left undelivered: no push waits.
CANCEL_PUSH_LUA = """
local function cancel_push(unread, last, due, to, n)
  if redis.call('HINCRBY', unread, to, -n) <= 0 then
    redis.call('HDEL', unread, to)
    redis.call('HDEL', last, to)
    redis.call('ZREM', due, to)
  end
end
"""

# KEYS: push:due, push:unread, push:last, push:inflight, push:sending, push:born,
#       push:current
# ARGV: now (ms), limit, lease (ms), delivery key prefix, delay (ms), joins
# Up to ``limit`` pushes to try now, as a flat list key, record, key, ...:
# first the in-flight ones whose retry time (or lease) has come, each with
# its attempt count raised, the user's unread count as it is now, and the
# user's newest message if a window of the user has ended meanwhile (taken
# off push:due); then users whose window has ended, each taken off push:due
# and given a new record -- or, when the user has a push in flight already,
# joined to it (its record names the newest message from its next try on;
# not taken now; up to ``joins`` users looked at).  Every one taken is
# leased until now + lease.  A record that does not parse is dropped (it
# could only stall every take).
TAKE = Script("""
local now, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local taken = {}
local again = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1], 'LIMIT', 0, limit)
for _, key in ipairs(again) do
  local record = redis.call('HGET', KEYS[4], key)
  local attempts, head, to, packet
  if record then
    attempts, head, to, packet = string.match(record, '^(%d+) (%d+ %d+) (%d+) %-?%d+ (.*)$')
  end
  if attempts then
    local due_at = redis.call('ZSCORE', KEYS[1], to)
    if due_at and tonumber(due_at) <= now then
      redis.call('ZREM', KEYS[1], to)
      packet = redis.call('HGET', KEYS[3], to) or packet
      redis.call('HDEL', KEYS[3], to)
    end
    local unread = redis.call('HGET', KEYS[2], to) or '0'
    record = string.format('%d', tonumber(attempts) + 1) .. ' ' .. head .. ' ' .. to .. ' ' .. unread .. ' ' .. packet
    redis.call('HSET', KEYS[4], key, record)
    redis.call('ZADD', KEYS[5], now + lease, key)
    redis.call('HSETNX', KEYS[7], to, key)
    taken[#taken + 1] = key
    taken[#taken + 1] = record
  else
    redis.call('HDEL', KEYS[4], key)
    redis.call('ZREM', KEYS[5], key)
    redis.call('ZREM', KEYS[6], key)
  end
end
local room = limit - #again
if room <= 0 then return taken end
-- new pushes until ``room`` are taken; joins do not count, up to ``joins`` looked at
local fresh, looked, budget = 0, 0, math.max(room, tonumber(ARGV[6]))
while fresh < room and looked < budget do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
                        math.min(room - fresh, budget - looked))
  if #due == 0 then break end
  for i = 1, #due, 2 do
    looked = looked + 1
    local to = due[i]
    redis.call('ZREM', KEYS[1], to)
    local last = redis.call('HGET', KEYS[3], to)
    local unread = tonumber(redis.call('HGET', KEYS[2], to) or '0')
    if last and unread > 0 then
      redis.call('HDEL', KEYS[3], to)
      local current = redis.call('HGET', KEYS[7], to)
      local record = current and redis.call('HGET', KEYS[4], current)
      local head = record and string.match(record, '^(%d+ %d+ %d+ %d+) ')
      if head then
        redis.call('HSET', KEYS[4], current, head .. ' ' .. string.format('%d', unread) .. ' ' .. last)
      else
        fresh = fresh + 1
        local key = ARGV[4] .. '-' .. string.format('%d', fresh)
        local born = string.format('%d', tonumber(due[i + 1]) - tonumber(ARGV[5]))
        record = '1 ' .. ARGV[1] .. ' ' .. born .. ' ' .. to .. ' ' .. string.format('%d', unread) .. ' ' .. last
        redis.call('HSET', KEYS[4], key, record)
        redis.call('ZADD', KEYS[5], now + lease, key)
        redis.call('ZADD', KEYS[6], born, key)
        redis.call('HSET', KEYS[7], to, key)
        taken[#taken + 1] = key
        taken[#taken + 1] = record
      end
    end
  end
end
return taken
""", "push_take")

# KEYS: push:inflight, push:sending, push:born, push:current, push:unread,
#       push:last, push:due
# ARGV: delivery key, the message JSON its last try named, now (ms)
# The push is over (answered, refused or given up).  A newer message that
# joined it after that try was taken was not named by it: back to
# push:last (unless a newer one waits there), due now -- a push of its own.
FINISH = Script("""
local record = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if not record then return 0 end
local to, packet = string.match(record, '^%d+ %d+ %d+ (%d+) %-?%d+ (.*)$')
if not to then return 1 end
if redis.call('HGET', KEYS[4], to) == ARGV[1] then redis.call('HDEL', KEYS[4], to) end
if packet ~= ARGV[2] and tonumber(redis.call('HGET', KEYS[5], to) or '0') > 0 then
  redis.call('HSETNX', KEYS[6], to, packet)
  redis.call('ZADD', KEYS[7], 'NX', ARGV[3], to)
  return 2
end
return 1
""", "push_finish")

# KEYS: push:inflight, push:sending.  ARGV: delivery key, when (ms).
# Try it again then (unless it is over meanwhile).
RETRY = Script("""
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
""", "push_retry")

# KEYS: push:due, push:inflight, push:born.  ARGV: delay (ms).
# {users waiting for their window, pushes in flight, when the oldest
# pending push's window opened (ms) or false}
STATS = Script("""
local oldest = false
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first > 0 then oldest = tonumber(first[2]) - tonumber(ARGV[1]) end
local born = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if #born > 0 and (not oldest or tonumber(born[2]) < oldest) then oldest = tonumber(born[2]) end
return {redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[2]), oldest and string.format('%d', oldest) or false}
""", "push_stats")


# Due users looked at per take: a window that joins a push in flight is a
# few hash writes, not a POST, so a take goes on past its ``limit`` of new
# pushes for these (a bounded script: ~1 ms of Redis at most).
JOINS = 128


class PushNotes:
    """What a store script needs to note pushes when ``[push] url`` is set:
    the three keys it appends to its KEYS, and each message's due time."""

    __slots__ = ("keys", "delay_ms")

    def __init__(self, keys: Keys, delay: float) -> None:
        self.keys = [keys.push_unread, keys.push_last, keys.push_due]
        self.delay_ms = int(round(delay * 1000))

    def due(self, ts_ms: int) -> int:
        return ts_ms + self.delay_ms


class InFlight(NamedTuple):
    """A push taken by the drainer.  Times are Unix ms; ``attempts``
    counts this one."""
    key: str
    attempts: int
    first: int
    born: int
    to: int
    unread: int
    packet: str


class PushStats(NamedTuple):
    waiting: int             # users whose delay window has not ended
    in_flight: int           # pushes taken, not answered yet (retries included)
    oldest: Optional[int]    # when the oldest pending push's window opened (ms)


class PushStore:
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def take(self, now_ms: int, limit: int, lease_ms: int, key_prefix: str, delay_ms: int,
             joins: int = JOINS) -> Deferred:
        """Up to ``limit`` pushes to try now (:class:`InFlight`), each leased
        for ``lease_ms``; new ones get delivery keys ``<key_prefix>-<n>``
        (a user with a push in flight gets none: the window joins it; up to
        ``joins`` due users are looked at in one call)."""
        k = self.keys
        d = self.client.run(TAKE, [k.push_due, k.push_unread, k.push_last, k.push_inflight, k.push_sending,
                                   k.push_born, k.push_current],
                            [now_ms, limit, lease_ms, key_prefix, delay_ms, joins])
        return d.addCallback(_taken)

    def finish(self, key: str, packet: str, now_ms: int) -> Deferred:
        """The push is over; ``packet`` is the message its last try named
        (a newer one that joined it since goes out on its own, due at
        ``now_ms``)."""
        k = self.keys
        return self.client.run(FINISH, [k.push_inflight, k.push_sending, k.push_born, k.push_current,
                                        k.push_unread, k.push_last, k.push_due], [key, packet, now_ms])

    def retry(self, key: str, at_ms: int) -> Deferred:
        """Fires with False when the push was over meanwhile."""
        k = self.keys
        d = self.client.run(RETRY, [k.push_inflight, k.push_sending], [key, at_ms])
        return d.addCallback(lambda reply: bool(int(reply)))

    def stats(self, delay_ms: int) -> Deferred:
        """Fires with :class:`PushStats`."""
        k = self.keys
        d = self.client.run(STATS, [k.push_due, k.push_inflight, k.push_born], [delay_ms])
        return d.addCallback(lambda r: PushStats(int(r[0]), int(r[1]), None if r[2] is None else int(r[2])))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_record(key: str, record: str) -> InFlight:
    attempts, first, born, to, unread, packet = record.split(" ", 5)
    return InFlight(key, int(attempts), int(first), int(born), int(to), int(unread), packet)


def _taken(reply: Sequence[Any]) -> List[InFlight]:
    reply = list(reply or ())
    return [parse_record(_text(reply[i]), _text(reply[i + 1])) for i in range(0, len(reply), 2)]

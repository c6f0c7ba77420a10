"""Pending offline pushes (contract §7.5) in Redis: what the message path
notes, what a receipt cancels, and what the drainer takes, retries and
finishes.

Keys (imd.stores.keys): ``push:unread``, ``push:last``, ``push:due`` (written
by the store scripts of imd.stores.messages and imd.stores.orders through
the ``note_push`` Lua snippet, lowered by the receipt script through
``cancel_push``), ``push:inflight``, ``push:sending``, ``push:born``,
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
from imd.stores.redis import RedisClient, RedisStore, Script

TAKE = Script.load("push_take")
FINISH = Script.load("push_finish")
RETRY = Script.load("push_retry")
STATS = Script.load("push_stats")


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


class PushStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    def take(self, now_ms: int, limit: int, lease_ms: int, key_prefix: str, delay_ms: int,
             joins: int = JOINS) -> Deferred:
        """Up to ``limit`` pushes to try now (:class:`InFlight`), each leased
        for ``lease_ms``; new ones get delivery keys ``<key_prefix>-<n>``
        (a user with a push in flight gets none: the window joins it; up to
        ``joins`` due users are looked at in one call)."""
        k = self.keys
        d = self._client.run(TAKE, [k.push_due, k.push_unread, k.push_last, k.push_inflight, k.push_sending,
                                   k.push_born, k.push_current],
                            [now_ms, limit, lease_ms, key_prefix, delay_ms, joins])
        return d.addCallback(_taken)

    def finish(self, key: str, packet: str, now_ms: int) -> Deferred:
        """The push is over; ``packet`` is the message its last try named
        (a newer one that joined it since goes out on its own, due at
        ``now_ms``)."""
        k = self.keys
        return self._client.run(FINISH, [k.push_inflight, k.push_sending, k.push_born, k.push_current,
                                        k.push_unread, k.push_last, k.push_due], [key, packet, now_ms])

    def retry(self, key: str, at_ms: int) -> Deferred:
        """Fires with False when the push was over meanwhile."""
        k = self.keys
        d = self._client.run(RETRY, [k.push_inflight, k.push_sending], [key, at_ms])
        return d.addCallback(lambda reply: bool(int(reply)))

    def stats(self, delay_ms: int) -> Deferred:
        """Fires with :class:`PushStats`."""
        k = self.keys
        d = self._client.run(STATS, [k.push_due, k.push_inflight, k.push_born], [delay_ms])
        return d.addCallback(lambda r: PushStats(int(r[0]), int(r[1]), None if r[2] is None else int(r[2])))


def parse_record(key: str, record: str) -> InFlight:
    attempts, first, born, to, unread, packet = record.split(" ", 5)
    return InFlight(key, int(attempts), int(first), int(born), int(to), int(unread), packet)


def _taken(reply: Sequence[Any]) -> List[InFlight]:
    reply = list(reply or ())
    return [parse_record(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]

"""Couriers' positions (``S``): where they are, and who sees them.

Keys (imd.stores.keys): ``geo:couriers``, ``site:<uid>``; the audience
reads ``URS:<uid>`` (``[privacy] positions = friends``) or ``open:<courier>``
(``orders``, written by imd.stores.orders in the scripts that take and close
orders).
"""

from typing import Any, List, NamedTuple

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

RECORD_SITE = Script.load("record_site")

FRIENDS, ORDERS = "friends", "orders"


class PositionStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    def record_site(self, uid: int, longitude: float, latitude: float, ts: int) -> Deferred:
        return self._client.run(RECORD_SITE, [self.keys.geo_couriers, self.keys.site(uid)],
                               [uid, repr(longitude), repr(latitude), ts])


class Audience(NamedTuple):
    """Who gets one position of a courier: ``users`` get the plain ``S``.
    (Rooms whose ``meta`` tracks the courier, contract §11, join here as a
    field of their own: their packets carry ``"room"``.)"""
    users: List[int]


class PositionAudience(RedisStore):
    """Who a courier's ``S`` goes to (contract §4, §11), read from Redis at
    each push, so a close on any node counts from the next push on.

    ``orders`` (the default): the customers of the courier's open orders,
    taken and not closed (``open:<courier>``: one ``ZRANGEBYSCORE``).
    ``friends``: the courier's friends (``URS:<courier>``), as before."""

    def __init__(self, client: RedisClient, keys: Keys, mode: str = ORDERS) -> None:
        if mode not in (FRIENDS, ORDERS):
            raise ValueError("unknown positions mode %r" % (mode,))
        self._client = client
        self.keys = keys
        self.mode = mode

    def audience(self, courier: int, now_ms: int) -> Deferred:
        """Fires with the :class:`Audience` of a position of ``courier`` sent now."""
        if self.mode == FRIENDS:
            d = self._client.command("SMEMBERS", self.keys.friends(courier))
            return d.addCallback(lambda members: Audience(sorted(int(m) for m in members or ())))
        d = self._client.command("ZRANGEBYSCORE", self.keys.open_orders(courier), "(%d" % now_ms, "+inf")
        return d.addCallback(_customers)


def _customers(members: Any) -> Audience:
    """``<order>:<customer>`` members -> each customer once."""
    customers = set()
    for member in members or ():
        customers.add(int(member.rpartition(":")[2]))
    return Audience(sorted(customers))

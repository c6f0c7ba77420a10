"""Couriers' positions (``S``): where they are, and who sees them.

Keys (imd.stores.keys): ``geo:couriers``, ``site:<uid>``; the audience
reads ``URS:<uid>`` (``[privacy] positions = friends``) or ``open:<courier>``
(``orders``, written by imd.stores.orders in the scripts that take and close
orders) and ``roomtrack:<courier>`` with the rooms it names (``room:<room>``,
``roommembers:<room>``, imd.stores.rooms).

``roomtrack:<courier>`` is a hint: a room whose meta is set with ``"track":
<courier>`` is added to it before the meta is stored (so a process dying in
between leaves a room too many, never one too few), and every push checks
each room it names against the room's meta and close (lua/room_audience.lua),
dropping those that no longer track the courier, are closed or gone.
"""

from typing import Any, List, NamedTuple, Sequence, Tuple, Union, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

RECORD_SITE = Script.load("record_site")
ROOM_AUDIENCE = Script.load("room_audience")

FRIENDS, ORDERS = "friends", "orders"


class PositionStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    def record_site(self, uid: int, longitude: float, latitude: float, ts: int) -> Deferred:
        return self._client.run(RECORD_SITE, [self.keys.geo_couriers, self.keys.site(uid)],
                               [uid, repr(longitude), repr(latitude), ts])


class Audience(NamedTuple):
    """Who gets one position of a courier: ``users`` get the plain ``S``;
    ``rooms``: each open room whose ``meta`` tracks the courier (contract
    §11), with its members, who get the ``S`` with ``"room"``."""
    users: List[int]
    rooms: Sequence[Tuple[str, List[int]]] = ()


class PositionAudience(RedisStore):
    """Who a courier's ``S`` goes to (contract §4, §11), read from Redis at
    each push, so a close on any node counts from the next push on.

    ``orders`` (the default): the customers of the courier's open orders,
    taken and not closed (``open:<courier>``: one ``ZRANGEBYSCORE``), and
    the members of the open rooms whose meta tracks it (``roomtrack:<courier>``,
    then one script over those rooms).
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
        client = self._client
        d = defer.gatherResults([client.command("ZRANGEBYSCORE", self.keys.open_orders(courier), "(%d" % now_ms,
                                                "+inf"),
                                 client.command("SMEMBERS", self.keys.room_track(courier))], consumeErrors=True)
        return d.addCallback(self._with_rooms, courier)

    def _with_rooms(self, replies: List[object], courier: int) -> Union[Audience, Deferred]:
        customers = _customers(replies[0])
        rooms = sorted(_text(r) for r in cast(Sequence[object], replies[1] or ()))
        if not rooms:
            return customers
        keys: List[str] = []
        for room in rooms:
            keys += [self.keys.room(room), self.keys.room_members(room)]
        d = self._client.run(ROOM_AUDIENCE, keys, [courier])
        return d.addCallback(self._rooms, courier, rooms, customers)

    def _rooms(self, reply: List[object], courier: int, rooms: List[str], customers: Audience) -> Audience:
        tracking: List[Tuple[str, List[int]]] = []
        stale: List[str] = []
        for room, members in zip(rooms, reply):
            if isinstance(members, list):
                tracking.append((room, sorted(int(_text(m)) for m in members)))
            else:
                stale.append(room)
        if stale:
            # (a hint: dropping it late only costs one more check)
            self._client.command("SREM", self.keys.room_track(courier), *stale).addErrback(lambda _: None)
        return Audience(customers.users, tracking)

    def track_room(self, courier: int, room: str) -> Deferred:
        """Note that ``room``'s meta is about to track ``courier`` (before it is stored)."""
        return self._client.command("SADD", self.keys.room_track(courier), room)


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _customers(members: Any) -> Audience:
    """``<order>:<customer>`` members -> each customer once."""
    customers = set()
    for member in members or ():
        customers.add(int(_text(member).rpartition(":")[2]))
    return Audience(sorted(customers))

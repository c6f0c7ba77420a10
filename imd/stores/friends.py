"""Friend sets: ``URS:<uid>`` and ``kept:<uid>`` (imd.stores.keys), symmetric.

Friendship is symmetric (``imd-admin friend add A B``: both directions), so
both sets change in one script.  A friendship made here is explicit: it also
goes into both users' ``kept:`` sets, so that no order's close ends it
(imd.stores.orders); removing it here removes both marks too.
"""

from typing import List

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

SET_FRIENDS = Script.load("set_friends")


class FriendStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    def _set(self, op: str, a: int, b: int) -> Deferred:
        k = self.keys
        return self._client.run(SET_FRIENDS, [k.friends(a), k.friends(b), k.kept(a), k.kept(b)], [op, a, b])

    def add_friends(self, a: int, b: int) -> Deferred:
        """Friends both ways, for good: closing an order between them will not end it."""
        return self._set("SADD", a, b)

    def remove_friends(self, a: int, b: int) -> Deferred:
        return self._set("SREM", a, b)

    def list_friends(self, uid: int) -> Deferred:
        d = self._client.command("SMEMBERS", self.keys.friends(uid))
        return d.addCallback(_sorted_uids)


def _sorted_uids(members: List[str]) -> List[int]:
    return sorted(int(m) for m in members or ())

"""Friend sets: ``URS:<uid>`` (imd.stores.keys), symmetric.

Friendship is symmetric (``imd-admin friend add A B``: both directions), so
both sets change in one script.
"""

from typing import List

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, Script

# KEYS: URS:<a>, URS:<b>.  ARGV: SADD or SREM, a, b
SET_FRIENDS = Script("""
redis.call(ARGV[1], KEYS[1], ARGV[3])
redis.call(ARGV[1], KEYS[2], ARGV[2])
return 1
""", "set_friends")


class FriendStore:
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def add_friends(self, a: int, b: int) -> Deferred:
        return self.client.run(SET_FRIENDS, [self.keys.friends(a), self.keys.friends(b)], ["SADD", a, b])

    def remove_friends(self, a: int, b: int) -> Deferred:
        return self.client.run(SET_FRIENDS, [self.keys.friends(a), self.keys.friends(b)], ["SREM", a, b])

    def list_friends(self, uid: int) -> Deferred:
        d = self.client.command("SMEMBERS", self.keys.friends(uid))
        return d.addCallback(_sorted_uids)

    def are_friends(self, uid: int, other: int) -> Deferred:
        d = self.client.command("SISMEMBER", self.keys.friends(uid), other)
        return d.addCallback(lambda reply: bool(int(reply)))


def _sorted_uids(members: List[str]) -> List[int]:
    return sorted(int(m) for m in members or ())

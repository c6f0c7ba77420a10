"""Couriers' positions (``S``).

Keys (imd.stores.keys): ``geo:couriers``, ``site:<uid>``.
"""

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

RECORD_SITE = Script.load("record_site")


class PositionStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    def record_site(self, uid: int, longitude: float, latitude: float, ts: int) -> Deferred:
        return self._client.run(RECORD_SITE, [self.keys.geo_couriers, self.keys.site(uid)],
                               [uid, repr(longitude), repr(latitude), ts])

"""What logins need from Redis: the RSA pair and the used token ids.

Keys (imd.stores.keys): ``publicKey``, ``privateKey``, ``jti:<jti>``.
"""

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore


class TokenStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    def get_public_key(self) -> Deferred:
        return self._client.command("GET", self.keys.public_key)

    def get_private_key(self) -> Deferred:
        return self._client.command("GET", self.keys.private_key)

    def has_key_pair(self) -> Deferred:
        """Fires True when both keys are set."""
        d = self._client.command("EXISTS", self.keys.public_key, self.keys.private_key)
        return d.addCallback(lambda count: int(count) == 2)

    @defer.inlineCallbacks
    def set_key_pair(self, public_pem: str, private_pem: str, force: bool = False) -> Any:
        """Store a key pair; without ``force`` only when none is set.  True if set."""
        keys = self.keys
        if not force:
            existing = yield self._client.command("EXISTS", keys.public_key, keys.private_key)
            if int(existing):
                return False
        yield self._client.command("MSET", keys.public_key, public_pem, keys.private_key, private_pem)
        return True

    def claim_jti(self, jti: str, expires_at: float) -> Deferred:
        """Remember a token id until it expires; False if it was seen before."""
        d = self._client.command("SET", self.keys.used_jti(jti), "1", "NX", "EXAT", int(expires_at))
        return d.addCallback(_was_set)


def _was_set(reply: Optional[str]) -> bool:
    return reply is not None

"""Typing (``Y``, contract §7.2): the friend check and the coalescing window,
in one script; nothing is stored.

Keys (imd.stores.keys): ``URS:<uid>`` (read), ``typing:<uid>:<to>``.

``typing:<from>:<to>`` exists for ``[typing] min_interval`` after a
``true`` was relayed: while it does, further ``true`` are not relayed.  It
is shared by every node (a user typing on two devices, or reconnected to
another node, is still coalesced) and expires by itself.
"""

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

NOT_FRIEND, RELAY, COALESCED = 0, 1, 2

TYPING = Script.load("typing")


class TypingStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys, min_interval: float) -> None:
        self._client = client
        self.keys = keys
        self.window_ms = int(round(min_interval * 1000))

    def check(self, sender: int, to: int, is_typing: bool) -> Deferred:
        """Fires with NOT_FRIEND, RELAY or COALESCED (a ``true`` inside the window)."""
        d = self._client.run(TYPING, [self.keys.friends(sender), self.keys.typing(sender, to)],
                            [to, 1 if is_typing else 0, self.window_ms])
        return d.addCallback(int)

"""The one-to-one conversation lists in Redis (contract §10), as the store
scripts keep them: ``conv:<uid>`` (the other parties, by the ``pos`` of
the latest message), ``convlast:<uid>`` (that message's packet, with its
``pos``) and ``unread:<uid>:<other>`` (the messages from ``<other>`` after
the user's latest read receipt).  Written by ``store_message``,
``store_system``, ``receipt`` and ``recall`` (lua/note_conversation.lua and
those scripts); read here, a page at a time, without a look at the user's
history.

This is one *conversation source* of ``H {"conversations": true}``
(imd.handlers.history.ConversationSource): rooms add theirs.
"""

from typing import Generator, List, Optional, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred

from imd.stores.budgets import Budget
from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

CONVERSATIONS = Script.load("conversations")
CONVERSATION_ROWS = Script.load("conversation_rows")
NO_BUDGET = Budget(0, 0)


class Conversation:
    """One row of the list: ``pos`` (its latest message's: the list's
    order) and ``item``, its JSON as the ``H`` reply lists it."""
    __slots__ = ("pos", "item")

    def __init__(self, pos: int, item: bytes) -> None:
        self.pos, self.item = pos, item


class ConversationStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys, budget: Optional[Budget] = None) -> None:
        """``budget``: the user's ``H`` budget (``budget:history:<uid>``) a
        page spends, as every ``H`` does; None: none."""
        self._client = client
        self.keys = keys
        self._budget = budget or NO_BUDGET

    @defer.inlineCallbacks
    def newest(self, uid: int, below_pos: Optional[int], limit: int,
               now_ms: int) -> Generator[Deferred, object, Optional[List[Conversation]]]:
        """Up to ``limit`` of ``uid``'s conversations whose latest ``pos`` is
        below ``below_pos`` (None: all), newest first, as
        :class:`Conversation`; None when the user's ``H`` budget is spent."""
        keys = self.keys
        below = "+inf" if below_pos is None else "(%d" % below_pos
        d = self._client.run(CONVERSATIONS, [keys.conversations(uid), keys.budget("history", uid)],
                             self._budget.args(now_ms) + [below, limit])
        flat = cast(Optional[List[object]], (yield d))
        if flat is None:
            return None
        others = [_text(flat[i]) for i in range(0, len(flat), 2)]
        scores = [int(float(_text(flat[i]))) for i in range(1, len(flat), 2)]
        if not others:
            return []
        rows = cast(List[object], (yield self._client.run(
            CONVERSATION_ROWS, [keys.conversation_last(uid)] + [keys.unread(uid, int(o)) for o in others], others)))
        out: List[Conversation] = []
        for k, (other, pos) in enumerate(zip(others, scores)):
            last, unread = rows[2 * k], int(_text(rows[2 * k + 1]))
            if last is None:
                continue   # (written together with the score: only a lost key leaves one alone)
            out.append(Conversation(pos, b'{"with":%d,"last":%s,"unread":%d}'
                                    % (int(other), _bytes(last), unread)))
        return out


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")

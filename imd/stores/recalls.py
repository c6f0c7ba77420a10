"""Recall and moderation delete of one message in Redis (contract v3 §11):
the ``recall`` script (lua/recall.lua) finds the message among its
sender's entries not yet migrated (``pending:<from>``), checks it, takes
its text out of every key that holds it (the message log's
``tombstone_entry`` snippet: ``MQ``, ``MQ:processing``, both pending
indexes, each entry rewritten in its place so the migrator's positions
and scores hold), stores the ``D`` through the ``store_entry`` snippet (its
``seq`` is the D's ``pos``; the migrator copies it and sets the message's
row recalled, imd.stores.mysql) and, with ``[push] url`` set, cancels a
push not yet sent for it.

A message no longer in Redis is in MySQL if it exists (an entry leaves
``pending:<from>`` only after its row committed): the caller reads it
there and calls again with ``force``.

Keys (imd.stores.keys): ``dedup:<from>:<id>`` (the D's own id, like a
message's: a retry is acked once), ``recalled:<from>:<id>`` (the message
is recalled, until its D is migrated), ``MQ``, ``MQ:seq``,
``MQ:processing``, ``pending:<uid>``, and ``push:unread``, ``push:last``, ``push:due``.
"""

from typing import List, NamedTuple, Optional, Sequence, Union

from twisted.internet.defer import Deferred

from imd.messagelog.entry import id_json
from imd.stores.keys import Keys
from imd.stores.push import PushNotes
from imd.stores.redis import RedisClient, RedisStore, Script

RECALL = Script.load("recall")

# How long ``recalled:<from>:<id>`` says a message is recalled: until its D
# is migrated (MySQL's ``recalled`` column says it from then on), with a
# margin for a migrator that is down for a long time.
RECALLED_TTL = 30 * 24 * 3600

STORED, DUPLICATE, ALREADY, TOO_LATE, NOT_IN_REDIS = "stored", "duplicate", "already", "too_late", "not_in_redis"
_RESULTS = {1: STORED, 2: DUPLICATE, 3: ALREADY, 4: TOO_LATE, 0: NOT_IN_REDIS}


class RecallResult(NamedTuple):
    outcome: str          # one of STORED, DUPLICATE, ALREADY, TOO_LATE, NOT_IN_REDIS
    pos: int              # the D's seq when STORED (else 0)


def message_heads(sender: int, to: int, msg_id: str) -> List[str]:
    """How the entry of ``sender``'s message ``msg_id`` to ``to`` begins: its
    id as a JSON string, and (for an id of digits, which the client may have
    sent as a number) as a JSON number; '' when there is no second form."""
    tail = ',"from":%d,"to":%d,"type":"' % (sender, to)
    heads = ['{"id":' + id_json(msg_id).decode("utf-8") + tail]
    heads.append('{"id":' + msg_id + tail if msg_id.isascii() and msg_id.isdigit()
                 and (msg_id == "0" or not msg_id.startswith("0")) else "")
    return heads


class RecallStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys, dedup_ttl: int = 3600,
                 push: Optional[PushNotes] = None, node_id: str = "") -> None:
        self._client = client
        self.keys = keys
        self.dedup_ttl = dedup_ttl
        self.push = push
        self.node_id = node_id
        # as imd.stores.messages.MessageStore.publishes
        self.publishes = not client.min_replicas
        self._prefix = keys.channel_prefix if self.publishes else ""

    def recall(self, sender: int, to: int, d_id: str, msg_id: str, d_packet: bytes, now_ms: int,
               window_ms: Optional[int], force: bool = False, to_sender: bool = False,
               origin: Optional[str] = None) -> Deferred:
        """Recall ``sender``'s message ``msg_id`` to ``to`` by the D
        ``d_packet`` (id ``d_id``, dedup form); ``window_ms``: how old
        (from its ts) it may be, None for any age (moderation).  Fires with
        a :class:`RecallResult` once ``[redis] min_replicas`` have it.
        When :attr:`publishes`, a D stored now is on its way to every
        connection of ``to`` and, with ``to_sender``, of ``sender`` but
        ``origin`` (a conn id of this node)."""
        k, push = self.keys, self.push
        key_list = [k.dedup(sender, d_id, to), k.mq, k.mq_seq, k.pending(sender), k.pending(to),
                    k.mq_processing, k.dedup(sender, msg_id, to), k.recalled(sender, msg_id),
                    k.devices(to), k.devices(sender), k.unread(to, sender), k.conversation_last(to),
                    k.conversation_last(sender)]
        if push is not None:
            key_list += push.keys
        heads = message_heads(sender, to, msg_id)
        window = -1 if window_ms is None else window_ms
        args: List[Union[int, str, bytes]] = [to, d_packet, self.dedup_ttl, heads[0], heads[1],
                                              RECALLED_TTL, now_ms, window,
                                              1 if force else 0, 1 if push is not None else 0,
                                              sender, self._prefix, 1 if to_sender else 0,
                                              "%s %s" % (self.node_id, origin) if origin is not None else ""]
        d = self._client.run(RECALL, key_list, args).addCallback(_result)
        return self._replicated(d)


def _result(reply: Sequence[Union[int, bytes]]) -> RecallResult:
    outcome = _RESULTS[int(reply[0])]
    return RecallResult(outcome, int(reply[1]) if outcome == STORED else 0)

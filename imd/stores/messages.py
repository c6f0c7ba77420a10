"""Stored messages in Redis: the store script, the dedup records, the accept
order and the per-user index that history reads.

Keys (imd.stores.keys): ``URS:<uid>`` (read), ``dedup:<uid>:<id>``,
``dedup:0:<to>:<id>``, ``MQ``, ``MQ:seq``, ``pending:<uid>``,
``budget:history:<uid>`` (imd.stores.budgets, spent by ``H``); with
``[push] url`` set also ``push:unread``, ``push:last``, ``push:due``
(imd.stores.push: the recipient's pending push, noted in the same script).

System messages (from 0, ``POST /IM/api/send``) are stored per recipient,
deduplicated by ``dedup:0:<to>:<id>``, whose value is the recipient's uid
like every dedup record (receipts are verified against it); a ``t`` or
``i``'s record holds its accept order too, ``<to>/<seq>``, so a retry's
``A`` carries the first store's ``pos``.

An entry on ``MQ`` is the packet's JSON exactly as delivered, with one field
added at the end: ``"seq"``, the accept order (``MQ:seq``, taken in the same
script by the message log's ``store_entry`` snippet).  History sorts by ``(ts, seq)``, so a sender's messages keep the
order they were sent in whatever their ids; the migrator copies ``seq`` into
MySQL and stores the packet without it (see :mod:`imd.messagelog.entry`).

Each entry is also in ``pending:<uid>`` of its sender and its recipient
(score: ``seq``) until the migrator has committed it, so that history of
not-yet-migrated messages costs time in proportion to the user's own
entries, not to the length of ``MQ``.
"""

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred

from imd.stores.budgets import Budget
from imd.stores.keys import Keys
from imd.stores.push import PushNotes
from imd.stores.redis import RedisClient, RedisStore, Script

STORED, NOT_FRIEND, DUPLICATE = "stored", "not_friend", "duplicate"
STORE_RESULTS = {1: STORED, 0: NOT_FRIEND, 2: DUPLICATE}


class StoreResult(NamedTuple):
    """What :meth:`MessageStore.store_message` did: ``status`` (STORED,
    NOT_FRIEND or DUPLICATE) and ``pos``, the message's accept order (its
    position in both parties' streams, contract §10): this store's, or for a
    DUPLICATE the first store's (0 when its dedup record does not say: one
    written by an older imd, or seeded by a receipt); 0 for NOT_FRIEND."""
    status: str
    pos: int

STORE_MESSAGE = Script.load("store_message")
STORE_SYSTEM = Script.load("store_system")
PENDING_FOR_HISTORY = Script.load("pending_for_history")
PENDING_FOR_SYNC = Script.load("pending_for_sync")
RAISE_SEQ = Script.load("raise_seq")
NO_BUDGET = Budget(0, 0)


class MessageStore(RedisStore):
    """Friend check + dedup + MQ + pending index, atomically, in one round trip."""

    def __init__(self, client: RedisClient, keys: Keys, dedup_ttl: int = 3600,
                 push: Optional[PushNotes] = None, node_id: str = "") -> None:
        """``push``: set when ``[push] url`` is (each stored message then
        notes the recipient's pending push).  ``node_id``: this node's, the
        one whose connections a message comes on."""
        self._client = client
        self.keys = keys
        self.dedup_ttl = dedup_ttl
        self.push = push
        self.node_id = node_id
        # Without [redis] min_replicas the store scripts publish what they
        # store to the nodes of its users' connections (lua/fanout.lua), so
        # every connection gets its packets in pos order.  With it nothing
        # may reach a client before the WAIT says the replicas have it: the
        # caller delivers once the store fires, as before.
        self.publishes = not client.min_replicas
        self._prefix = keys.channel_prefix if self.publishes else ""
        # one callback per message either way
        self._store_result = self._store_result_replicated if client.min_replicas else _store_result

    def store_message(self, sender: int, to: int, dedup_id: str, packet: bytes, ts: int = 0,
                      origin: Optional[str] = None) -> Deferred:
        """Fires with a :class:`StoreResult` (STORED, NOT_FRIEND or
        DUPLICATE, and the pos), once the write is on
        ``[redis] min_replicas`` replicas whatever the outcome (a duplicate
        renews its dedup record: the WAIT after that write is what tells
        that the first store reached them).  ``ts``: the message's (Unix
        ms), from which its push's delay counts.  When :attr:`publishes`,
        a message stored now is on its way to every connection of both
        parties but ``origin`` (the conn id, on this node, it came on)."""
        keys, push = self.keys, self.push
        key_list = [keys.friends(sender), keys.dedup(sender, dedup_id, to), keys.mq, keys.mq_seq,
                    keys.pending(sender), keys.pending(to), keys.devices(to), keys.devices(sender),
                    keys.conversations(sender), keys.conversation_last(sender), keys.conversations(to),
                    keys.conversation_last(to), keys.unread(to, sender)]
        args: List[Any] = [to, packet, self.dedup_ttl, sender, self._prefix,
                           "%s %s" % (self.node_id, origin) if origin is not None else ""]
        if push is not None:
            key_list += push.keys
            args.append(push.due(ts))
        return self._client.run(STORE_MESSAGE, key_list, args).addCallback(self._store_result)

    def _store_result_replicated(self, reply: Any) -> Any:
        return self._client.replicated(_store_result(reply))

    def store_system_messages(self, packet_id: str, recipients: Sequence[int], head: bytes, tail: bytes,
                              ts: int = 0) -> Deferred:
        """A system ``s`` message (from 0, id ``packet_id``, sent at ``ts``)
        to each recipient, stored once per (recipient, id) — the dedup record
        ``dedup:0:<to>:<id>`` — in one round trip; the packet of recipient
        ``to`` is ``head + str(to) + tail``.  Fires with ``[(uid, pos)]``
        of the recipients stored now (the others had it already), once the
        write is on ``[redis] min_replicas`` replicas; when :attr:`publishes`
        those are on their way to the recipients' connections."""
        keys, push = self.keys, self.push
        key_list = [keys.mq, keys.mq_seq] + (push.keys if push is not None else [])
        for to in recipients:
            key_list.append(keys.dedup(0, packet_id, to))
            key_list.append(keys.pending(to))
            key_list.append(keys.devices(to))
            key_list.append(keys.conversations(to))
            key_list.append(keys.conversation_last(to))
            key_list.append(keys.unread(to, 0))
        due = push.due(ts) if push is not None else ""
        d = self._client.run(STORE_SYSTEM, key_list,
                             [self.dedup_ttl, head, tail, due, self._prefix] + list(recipients))
        return self._replicated(d.addCallback(_stored_pairs, recipients))

    def raise_seq(self, floor: int) -> Deferred:
        """Raise ``MQ:seq`` to at least ``floor`` (never lower it), in one
        script; fires with its value now.  Positions (contract §10) are
        never reused: every ws and migrate process does it at start-up
        with the highest accept_seq in MySQL (imd.startup)."""
        return self._client.run(RAISE_SEQ, [self.keys.mq_seq], [floor]).addCallback(int)

    def pending(self, uid: int) -> Deferred:
        """The user's entries not yet migrated (sent and received), in accept order."""
        return self._client.command("ZRANGE", self.keys.pending(uid), 0, -1)

    def pending_for_history(self, uid: int, budget: Budget, now_ms: int) -> Deferred:
        """:meth:`pending`, once one ``H`` is taken from the user's budget
        (every connection's, on every node: ``budget:history:<uid>``), in
        the same call; fires with None when the budget is spent."""
        keys = self.keys
        return self._client.run(PENDING_FOR_HISTORY, [keys.pending(uid), keys.budget("history", uid)],
                                budget.args(now_ms))

    def pending_for_sync(self, uid: int, after_pos: int, budget: Optional[Budget], now_ms: int) -> Deferred:
        """The user's entries not yet migrated whose pos (``seq``, their
        score) is above ``after_pos``, in accept order, once one ``H`` is
        taken from ``budget`` (as :meth:`pending_for_history`; None: no
        budget); fires with None when the budget is spent."""
        keys = self.keys
        return self._client.run(PENDING_FOR_SYNC, [keys.pending(uid), keys.budget("history", uid)],
                                [after_pos] + (budget or NO_BUDGET).args(now_ms))


def _stored_pairs(reply: Optional[List[int]], recipients: Sequence[int]) -> List[Tuple[int, int]]:
    flat = reply or []
    return [(recipients[int(flat[k]) - 1], int(flat[k + 1])) for k in range(0, len(flat), 2)]


def _store_result(reply: Any) -> StoreResult:
    if isinstance(reply, list):   # {1, seq} or {2, first seq}
        return StoreResult(STORE_RESULTS[int(reply[0])], int(reply[1]))
    return StoreResult(STORE_RESULTS[int(reply)], 0)


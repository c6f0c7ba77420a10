"""Receipts (``R``, contract §7.1) in Redis: verified, moved forward and
stored in one script per packet.

Keys (imd.stores.keys): ``dedup:<uid>:<id>`` and ``dedup:0:<to>:<id>`` (read
and updated), ``MQ``, ``MQ:seq``, ``pending:<uid>`` (through
the ``store_entry`` Lua snippet; its oldest entries read by :meth:`ReceiptStore.old_pending`),
``budget:lookups:<uid>``, and with ``[push] url`` set ``push:unread``,
``push:last``, ``push:due`` (imd.stores.push: messages reported delivered
lower the reader's undelivered count; at 0 no push waits any more).

The state of a message lives in its dedup record, which the store script
wrote with the recipient's uid as its value: ``<to>`` (sent), ``<to>:d``
(delivered), ``<to>:r`` (read); a ``t`` or ``i``'s record has the
message's accept order after the uid, ``<to>/<seq>`` (the ``pos`` a
retry's ``A`` carries), which receipts keep.  So the record both proves that the reader
really received the message (its value names the reader) and holds the state
that may only move forward, at the cost of one script per ``R`` whatever the
number of ids, like a message.

A record lives ``[redis] dedup_ttl`` from its message (receipts keep its
expiry: ``imd-admin reconcile`` dates a message by it).  For ids whose
record is gone (expired, or an id the reader never received) the first call
changes nothing and names them; the
caller verifies them against what is stored (the reader's pending entries,
then MySQL) and calls again with a *seed* per id: the state found there,
which is written back as the record, or :data:`UNKNOWN` for an id the reader
never received.  Only then is anything moved, so one ``R`` makes one stored
entry and one relay.

That verification is the expensive part of a receipt, and ids nobody sent
cost it every time: each ``R`` that needs it is charged to the reader's budget
(``budget:lookups:<uid>``, imd.stores.budgets), and the pending entries are
read only where such a message can be: one whose record is gone was
accepted more than ``dedup_ttl`` ago, so :meth:`ReceiptStore.old_pending`
reads the oldest entries only, and none while the migrator keeps up.  (A
receipt of it accepted later than that and not yet migrated is not seen:
with a migrator that far behind, a receipt repeated then may be relayed
again.)
"""

from typing import Any, List, NamedTuple, Optional, Sequence

from twisted.internet.defer import Deferred

from imd import protocol
from imd.messagelog.entry import conversation_needles, id_json, receipt_entry_parts
from imd.stores.budgets import Budget
from imd.stores.keys import Keys
from imd.stores.push import PushNotes
from imd.stores.redis import RedisClient, RedisStore, Script

UNKNOWN = "x"   # seed of an id that was not found anywhere: ignored

RECEIPT = Script.load("receipt")
OLD_PENDING = Script.load("old_pending")

# Entries scanned by one OLD_PENDING call (Redis serves nobody else meanwhile)
OLD_PENDING_SCAN = 1000
# How far behind each other the clocks of imd's nodes and Redis's may be (ms)
CLOCK_SKEW_MS = 60000


class ReceiptResult(NamedTuple):
    """``missing``: indexes of ids without a record (nothing was changed);
    else ``advanced``: indexes of the ids whose state moved forward."""
    missing: List[int]
    advanced: List[int]


class ReceiptStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys, dedup_ttl: int = 3600,
                 push: Optional[PushNotes] = None) -> None:
        """``push``: set when ``[push] url`` is (receipts then lower the
        reader's undelivered count, in the same script)."""
        self._client = client
        self.keys = keys
        self.dedup_ttl = dedup_ttl
        self.push = push
        self._result = self._result_replicated if client.min_replicas else _result

    def apply(self, packet: protocol.ReceiptPacket, reader: int, ts: int,
              seeds: Optional[Sequence[str]] = None) -> Deferred:
        """Move the state of ``packet.ids`` (messages from ``packet.to`` to
        ``reader``) forward and store what advanced; fires with a
        :class:`ReceiptResult`.  Without ``seeds`` nothing changes when an id
        has no record (``missing``: fires at once); with them (one per id: ''
        / :data:`UNKNOWN` / a state 0-2 found elsewhere) every id is settled.
        A settled result comes once the write is on ``[redis] min_replicas``
        replicas."""
        keys, sender = self.keys, packet.to
        head, tail = receipt_entry_parts(packet.id, reader, sender, packet.state, ts)
        pending_sender = keys.pending(sender if sender else reader)
        key_list = [keys.mq, keys.mq_seq, keys.pending(reader), pending_sender, keys.unread(reader, sender)]
        if self.push is not None:
            key_list += self.push.keys
        args: List[Any] = [reader, packet.state, "check" if seeds is None else "final", self.dedup_ttl, head, tail,
                           "0" if self.push is None else "1"]
        for i, (message_id, dedup_id) in enumerate(zip(packet.ids, packet.dedup_ids)):
            key_list.append(keys.dedup(sender, dedup_id, reader))
            args.append(id_json(message_id))
            args.append("" if seeds is None else seeds[i])
        d = self._client.run(RECEIPT, key_list, args)
        return d.addCallback(self._result)

    def _result_replicated(self, reply: Any) -> Any:
        result = _result(reply)
        return result if result.missing else self._client.replicated(result)


    def old_pending(self, reader: int, sender: int, now_ms: int, lookups: Budget) -> Deferred:
        """The reader's pending entries that may hold a message from
        ``sender`` whose dedup record is gone, and the reader's receipts as
        old: entries accepted more than ``dedup_ttl`` ago (a record lives
        ``dedup_ttl`` from its message; a clock skew's margin kept), of the
        conversation of the two.  In a healthy system (the migrator keeps
        up) there are none, and one look at the oldest pending entry says
        so: the set is never read whole.

        One lookup is charged to the reader's budget (``lookups``) first:
        fires with None when it is spent, else with the entries (str)."""
        keys = self.keys
        limit = now_ms - self.dedup_ttl * 1000 + 2 * CLOCK_SKEW_MS
        needles = conversation_needles(sender, reader)
        key_list = [keys.pending(reader), keys.budget("lookups", reader)]
        found: List[str] = []

        def scan(start: str, budget: List[Any]) -> Deferred:
            d = self._client.run(OLD_PENDING, key_list, budget + [start, limit, OLD_PENDING_SCAN] + needles)
            return d.addCallback(scanned)

        def scanned(reply: Any) -> Any:
            if reply is None:
                return None
            done, after = int(reply[0]), reply[1]
            found.extend(reply[2:])
            if done:
                return found
            return scan(after, [0, 1, now_ms])   # charged once
        return scan("-inf", lookups.args(now_ms))


def _result(reply: Any) -> ReceiptResult:
    done, indexes = int(reply[0]), [int(i) - 1 for i in reply[1] or ()]
    if done:
        return ReceiptResult([], indexes)
    return ReceiptResult(indexes, [])

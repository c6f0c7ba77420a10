"""``R`` receipts (contract §7.1): the reader tells the sender how far each
message got; the server believes only what it stored.

One script per ``R`` (imd.stores.receipts) checks every id against its dedup
record — the reader must be the message's recipient — moves each state
forward only, and stores what advanced as one entry (``MQ`` and both
parties' ``pending:``), which the migrator copies into the ``receipt`` table.
The ids that advanced are relayed to every connection of the sender.

Ids without a dedup record (expired after ``[redis] dedup_ttl``, or ids
the reader never received) are verified against what is stored: the
reader's entries still in Redis, then MySQL — read in that order, so a
message that is migrated in between is seen by the second read — and their
state found there is written back as the record before anything moves.
Anything not found is ignored: acked, not relayed, not stored.  Each ``R``
that needs this is charged to the reader's lookup budget (all its
connections, every node); past it ``E rate_limited`` and nothing changes.
Only the reader's pending entries old enough to have lost their record are
read (imd.stores.receipts), never the whole set.
"""

from typing import Any, List, Optional

from twisted.internet import defer

from imd import protocol
from imd.clock import Clock
from imd.errors import ImdError
from imd.handlers import Reply
from imd.handlers.ports import Node, ReceiptFigures, ReceiptRows, Receipts
from imd.messagelog.merge import Pending, found_states
from imd.stores.budgets import Budget
from imd.stores.receipts import UNKNOWN


class ReceiptHandler:
    def __init__(self, receipts: Receipts, mysql: ReceiptRows, node: Node, clock: Clock, lookups: Budget,
                 metrics: Optional[ReceiptFigures] = None) -> None:
        """``lookups``: the budget of ``R`` packets naming ids without a
        record, per reader."""
        self._receipts = receipts
        self._mysql = mysql
        self._node = node
        self._clock = clock
        self._lookups = lookups
        self._metrics = metrics

    def handle(self, reader: int, packet: protocol.ReceiptPacket) -> Any:
        if self._metrics is not None:
            self._metrics.receipt_in(packet.state, len(packet.ids))
        if packet.to == reader:
            # one's own messages: nothing to tell anybody
            return Reply(protocol.ack(packet.id))
        ts = int(self._clock.seconds() * 1000)
        d = self._receipts.apply(packet, reader, ts)
        return d.addCallback(self._applied, reader, packet, ts)

    def _applied(self, result: Any, reader: int, packet: protocol.ReceiptPacket, ts: int) -> Any:
        if result.missing:
            # (rare: records gone) verify, then settle every id in one more call
            d = self._verify(reader, packet, result.missing, ts)
            d.addCallback(lambda seeds: self._receipts.apply(packet, reader, ts, seeds))
            return d.addCallback(self._settled, reader, packet, ts)
        return self._settled(result, reader, packet, ts)

    def _settled(self, result: Any, reader: int, packet: protocol.ReceiptPacket, ts: int) -> Reply:
        if result.advanced:
            if self._metrics is not None:
                self._metrics.receipts_advanced(packet.state, len(result.advanced))
            if packet.to:
                ids = [packet.ids[i] for i in result.advanced]
                self._node.deliver(packet.to, protocol.receipt(packet.id, reader, packet.to, packet.state, ids, ts))
        return Reply(protocol.ack(packet.id))

    @defer.inlineCallbacks
    def _verify(self, reader: int, packet: protocol.ReceiptPacket, missing: List[int], ts: int) -> Any:
        """One seed per id: '' for ids that have a record, the state found
        for the others, UNKNOWN when the reader never received it."""
        wanted = {packet.dedup_ids[i].encode("utf-8") for i in missing}
        entries = yield self._receipts.old_pending(reader, packet.to, ts, self._lookups)
        if entries is None:
            raise ImdError("rate_limited", "R: too many receipts for unknown or old messages "
                                           "([websocket] receipt_lookup_rate), retry later")
        sender = packet.to
        pending = Pending(entries, lambda m: m.from_id == sender and m.to_id == reader and m.msg_id in wanted)
        in_pending = {m.msg_id for m in pending.messages}
        rest = [m.decode("utf-8") for m in wanted if m not in in_pending]
        states = (yield self._mysql.message_states(sender, reader, rest)) if rest else {}
        found = found_states(pending, sender, reader, {msg_id.encode("utf-8"): s for msg_id, s in states.items()})
        seeds = [""] * len(packet.ids)
        for i in missing:
            key = packet.dedup_ids[i].encode("utf-8")
            seeds[i] = str(found[key]) if key in found else UNKNOWN
        return seeds

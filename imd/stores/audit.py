"""What an audit reads from Redis (``imd-admin reconcile``), a page at a
time and never writing: the dedup records with their values and the time
they have left, and the migration queue's lists.

Keys (imd.stores.keys): ``dedup:<uid>:<id>`` and ``dedup:0:<to>:<id>``
(SCAN, GET, PTTL), ``MQ`` and ``MQ:processing`` (LLEN, LRANGE),
``MQ:dead`` (LLEN).  The users' ``pending:<uid>`` are read through
imd.stores.messages.

A dedup record is written by the script that stores its message
(imd.stores.messages), with an expiry of ``[redis] dedup_ttl`` that receipts
keep (``KEEPTTL``), and its value is the recipient's uid (for a ``t`` or
``i`` then ``/`` and its accept order), then ``:d`` or ``:r`` once receipts
moved the message's state (imd.stores.receipts).  So
each one names a message imd acked, and its time left tells when: ``now -
(dedup_ttl - time left)``.
"""

from typing import Any, List, NamedTuple, Optional, Tuple

from twisted.internet import defer
from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

SCAN_COUNT = 1000   # keys Redis looks at per SCAN call (about as many as it examines)

RECORDS = Script.load("dedup_records")
LENGTHS = Script.load("queue_lengths")

STATES = {"": "sent", "d": "delivered", "r": "read"}


class DedupRecord(NamedTuple):
    """A message imd acked: ``(sender, id, recipient)``, its state, and the
    ms its record has left (-1: it has no expiry)."""
    sender: int
    packet_id: str
    to: int
    state: str
    ms_left: int


def parse_record(name: Tuple[int, str, Optional[int]], value: Any, ms_left: Any) -> Optional[DedupRecord]:
    """The record of a parsed key name, its value and PTTL; None when it is
    gone or its value is not ``<to>[/<seq>][:d|:r]``."""
    if value is None or int(ms_left) == -2:
        return None
    head, _, mark = value.partition(":")
    to_text, slash, seq_text = head.partition("/")
    if slash and not seq_text.isdigit():
        return None
    if not to_text.isdigit() or mark not in STATES:
        return None
    sender, packet_id, to = name
    if to is not None and to != int(to_text):
        return None   # a system record names its recipient twice: they must agree
    return DedupRecord(sender, packet_id, int(to_text), STATES[mark], int(ms_left))


class AuditStore(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys, count: int = SCAN_COUNT) -> None:
        self._client = client
        self.keys = keys
        self.count = count

    def key_count(self) -> Deferred:
        """Keys in the database (``DBSIZE``): about what a full SCAN looks at."""
        return self._client.command("DBSIZE").addCallback(int)

    def dedup_page(self, cursor: int) -> Deferred:
        """One SCAN step over the dedup records: fires with ``(next cursor,
        [DedupRecord])``; the next cursor is 0 when the scan is complete.
        A key may come twice while Redis resizes its table (SCAN's
        guarantee is at least once)."""
        d = self._client.command("SCAN", cursor, "MATCH", self.keys.dedup_match, "COUNT", self.count)
        return d.addCallback(self._records)

    def _records(self, reply: Any) -> Deferred:
        cursor, names = int(reply[0]), reply[1] or []
        parsed = []
        for key in names:
            name = self.keys.parse_dedup(key)
            if name is not None:
                parsed.append((key, name))
        if not parsed:
            return defer.succeed((cursor, []))
        d = self._client.run(RECORDS, [key for key, _ in parsed], [])

        def read(reply: Any) -> Tuple[int, List[DedupRecord]]:
            records = []
            for (_, name), line in zip(parsed, reply.split("\n")):
                value, _, ms_left = line.rpartition(" ")
                record = parse_record(name, value or None, ms_left)
                if record is not None:
                    records.append(record)
            return cursor, records
        return d.addCallback(read)

    def lengths(self) -> Deferred:
        """``(len MQ, len MQ:processing, len MQ:dead)``."""
        k = self.keys
        d = self._client.run(LENGTHS, [k.mq, k.mq_processing, k.mq_dead], [])
        return d.addCallback(lambda r: (int(r[0]), int(r[1]), int(r[2])))

    def queue_page(self, processing: bool, start: int, stop: int) -> Deferred:
        """Entries ``start``..``stop`` (LRANGE indexes, 0 the newest) of
        ``MQ`` or ``MQ:processing``, as str."""
        key = self.keys.mq_processing if processing else self.keys.mq
        return self._client.command("LRANGE", key, start, stop)

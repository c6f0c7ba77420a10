"""The plan MariaDB picks for every read of ``message`` imd makes: a key
lookup or a range of a key, never a scan of the table (type ALL) or of a
whole index (type index), and the ordered reads of H, sync and retention
straight from their key (no filesort).  Each key of ``message`` costs the
migrator's inserts (docs/performance.md, "Migrator"), so a key is kept only
for a read that needs it; this is what tells when one is missing.

The statements are the ones imd runs: the store's functions are called
with a cursor that runs EXPLAIN on each statement before running it, on a
table of 6,360 rows between 60 users and the system (ANALYZE TABLE'd, so
the optimizer knows it is not tiny).  Other tables the same statements
read (rooms, log_mark) are empty here and not judged.
"""

from typing import Any, Dict, FrozenSet, List, Tuple

import pymysql
from twisted.internet import threads
from twisted.trial import unittest

from imd.messagelog.merge import Selection
from imd.stores import mysql as store
from imd.stores.mysql import connect_kwargs
from tests.mysql_support import MysqlTestMixin

USERS = 60
ROWS = 6000
TS0 = 1_700_000_000_000


def _parties(n: int) -> Tuple[int, int]:
    """Message n's sender and recipient: every user writes to every other,
    a pair's messages a few among the rows of each."""
    return 1 + n % USERS, 1 + (7 * (n // USERS) + n) % USERS


def _sent(sender: int, to: int) -> List[str]:
    return ["m%d" % n for n in range(ROWS) if _parties(n) == (sender, to)]


def _row(n: int) -> Tuple[Any, ...]:
    sender, to = _parties(n)
    packet = '{"id":"m%d","from":%d,"to":%d,"type":"t","msg":"hello %d","ts":%d}' % (n, sender, to, n, TS0 + n)
    return ("m%d" % n, sender, to, "t", "hello %d" % n, TS0 + n, n + 1, packet)


class ExplainingCursor:
    """A cursor that EXPLAINs each statement (but inserts) before it runs
    it: ``plans`` holds ``(statement, [EXPLAIN rows as dicts])``."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self.connection = cursor.connection
        self.plans: List[Tuple[str, List[Dict[str, Any]]]] = []

    def execute(self, statement: str, args: Any = None) -> int:
        if not statement.lstrip("( ").upper().startswith("INSERT"):
            self._cursor.execute("EXPLAIN " + statement, args)
            names = [d[0] for d in self._cursor.description]
            self.plans.append((statement, [dict(zip(names, row)) for row in self._cursor.fetchall()]))
        return int(self._cursor.execute(statement, args))

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> Any:
        return self._cursor.fetchall()


class QueryPlanTests(MysqlTestMixin, unittest.TestCase):

    def _fill(self, cur: Any) -> None:
        rows = [_row(n) for n in range(ROWS)]
        # the system's events, one id to two parties each (an order's "closed")
        rows += [("closed-%d" % k, 0, 1 + (k + side) % USERS, "s", "{}", TS0 + ROWS + k, ROWS + 2 * k + side + 1,
                  '{"id":"closed-%d","from":0,"to":%d,"type":"s","msg":{},"ts":%d}'
                  % (k, 1 + (k + side) % USERS, TS0 + ROWS + k)) for k in range(3 * USERS) for side in (0, 1)]
        for i in range(0, len(rows), 500):
            store._insert_messages_txn(cur, rows[i:i + 500])
        store._insert_receipts_txn(cur, [(r[1], r[0], r[2], 1, r[5], r[6] + 2 * ROWS) for r in rows[::3]])
        cur.execute("ANALYZE TABLE message, receipt")
        cur.fetchall()

    def _plans(self, calls: List[Tuple[str, Any, Tuple[Any, ...]]]) -> Dict[str, List[Tuple[str, List[Dict]]]]:
        conn = pymysql.connect(**connect_kwargs(self.mysql_settings))
        try:
            with conn.cursor() as cur:
                self._fill(cur)
                conn.commit()
                out = {}
                for name, function, args in calls:
                    explaining = ExplainingCursor(cur)
                    function(explaining, *args)
                    out[name] = explaining.plans
                conn.rollback()   # (retention's deletes)
                return out
        finally:
            conn.close()

    def assertRanges(self, name: str, plans: List[Tuple[str, List[Dict]]], keys: FrozenSet[str],
                     ordered: bool = True) -> None:
        """``message`` and ``receipt`` read by a key in each statement; ``message`` by one of
        ``keys`` (the key made for that read: another may give a range too,
        e.g. a look-up by identity through a pair's key, and read the whole
        conversation), straight in order when ``ordered``."""
        self.assertTrue(plans, name)
        for statement, rows in plans:
            for row in rows:
                if row.get("table") not in ("m", "message", "r", "receipt"):
                    # (no table: answered by the optimizer, e.g. MAX of a key;
                    # or another table, empty here: rooms, log_mark)
                    continue
                where = "%s: %s\n%s" % (name, statement, row)
                self.assertNotIn(row["type"], ("ALL", "index", None), where)
                self.assertIsNotNone(row["key"], where)
                if row["table"] in ("m", "message"):
                    self.assertIn(row["key"], keys, where)
                    if ordered:
                        self.assertNotIn("filesort", row.get("Extra") or "", where)

    async def test_every_read_of_message_is_a_key_range(self):
        uid, other = 5, 32
        mid = TS0 + ROWS // 2
        first, *more = _sent(uid, other)
        history = store._history_txn
        identity = frozenset(["message_identity"])
        calls = [
            ("history", history, (Selection(uid), 50), {"message_by_recipient", "message_by_sender"}),
            ("history after", history, (Selection(uid, after=(mid, ROWS // 2)), 50),
             {"message_by_recipient", "message_by_sender"}),
            ("history with", history, (Selection(uid, with_uid=other, after=(mid, None)), 50), {"message_by_pair"}),
            ("sync", history, (Selection(uid, after_pos=ROWS // 2), 50),
             {"message_recipient_pos", "message_sender_pos"}),
            ("sent", store._sent_messages_txn, (uid, (mid, 0), 50), {"message_by_sender"}),
            ("recall look-up", store._message_for_recall_txn, (uid, first, other), identity),
            ("recall", store._recall_txn, ([(uid, first.encode(), other)],), identity | {"PRIMARY"}),
            ("receipt states", store._message_states_txn, (uid, other, [first] + more), identity),
            ("copies (reconcile)", store._copies_txn, ([(uid, first), (other, "m11")],), identity),
            ("misfiled (reconcile)", store._misfiled_txn, (mid, mid + 100, 50), {"message_by_ts"}),
            ("retention count", store._count_older_txn, (TS0 + 200,), {"message_by_ts"}),
            ("retention purge", store._purge_older_txn, (TS0 + 200, 100), {"message_by_ts", "PRIMARY"}),
            ("floor of MQ:seq", store._max_accept_seq_txn, (), {"message_by_pos"}),
        ]
        found = await threads.deferToThread(self._plans, [call[:3] for call in calls])
        for name, _, _, keys in calls:
            self.assertRanges(name, found[name], frozenset(keys),
                              ordered=name not in ("receipt states", "copies (reconcile)"))
        # (the floor's MAX is read from the end of message_by_pos: no table at all)
        self.assertIn("Select tables optimized away", str(found["floor of MQ:seq"]))

    async def test_the_system_side_of_history_reads_by_the_unique_key(self):
        selection = Selection(5, with_uid=32, system_ids=("closed-3", "closed-4", "closed-31"))
        found = await threads.deferToThread(self._plans, [("system", store._history_txn, (selection, 50))])
        # (the user's own sides by their keys, as in the test above)
        self.assertRanges("system", found["system"][2:], frozenset(["message_identity"]), ordered=False)
        self.assertRanges("system", found["system"][:2], frozenset(["message_by_pair"]))

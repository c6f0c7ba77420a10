"""The message log's one merge (imd.messagelog.merge), which ``H``, export
and the receipts' verification all read through: a user's entries still in
Redis and the rows of MySQL in one history order, each message once, with
the furthest receipt state either side knows.  The logic on made-up rows,
then entries stored by the store_entry snippet in real Redis and rows
inserted into real MariaDB as the migrator inserts them."""

import json

from twisted.internet import threads
from twisted.trial import unittest

from imd import protocol
from imd.messagelog.entry import id_json, parse_entry, receipt_entry_parts
from imd.messagelog.merge import Pending, Selection, found_states, merged
from imd.migrator import Migrator
from imd.stores.keys import Keys
from imd.stores.mysql import LogReader, MysqlStore
from tests.mysql_support import MysqlTestMixin
from tests.support import RedisTestMixin
from tests.test_history import store_entries, stored

TS = 1_700_000_000_000


def entry(packet_id, sender, to, ts, seq, msg="x"):
    """A message's entry as the store_entry snippet leaves it (from 0: an ``s``)."""
    return stored(packet_id, sender, to, ts, msg, "s" if sender == 0 else "t")[:-1] + ',"seq":%d}' % seq


def receipt(reader, sender, state, ids, ts, seq=0):
    """A receipt's entry (with ``seq`` if given)."""
    head, tail = receipt_entry_parts("r%d" % ts, reader, sender, state, ts)
    text = (head + b",".join(id_json(i) for i in ids) + tail).decode("utf-8")
    return text[:-1] + ',"seq":%d}' % seq if seq else text


def row(text, state=0):
    """The row MySQL hands up for an entry (as the migrator stored it), with its state."""
    message = parse_entry(text)
    return (message.ts, message.seq, message.from_id, message.msg_id, message.to_id, message.type, message.msg,
            message.packet, state)


# user 1's messages and others', for the selections
SELECTION_ENTRIES = [entry("to-me", 2, 1, TS, 1), entry("from-me", 1, 3, TS + 1, 2), entry("others", 2, 3, TS, 3),
                     entry("self", 1, 1, TS + 2, 4), entry("closed-9", 0, 2, TS + 3, 5), entry("sys", 0, 1, TS + 3, 6),
                     entry("closed-9", 0, 3, TS + 3, 7)]


def ids(items):
    return [(message.msg_id.decode("utf-8"), state) for message, state in items]


class MergeTests(unittest.SynchronousTestCase):
    """The merge on rows and entries made here (pure)."""

    def test_one_history_order_each_message_once_with_the_furthest_state(self):
        rows = [row(entry("a", 1, 2, TS, 1), 1), row(entry("c", 2, 1, TS + 2, 3), 2), row(entry("e", 1, 2, TS + 4, 5))]
        pending = [entry("c", 2, 1, TS + 2, 3),             # migrated meanwhile: its row counts, once
                   entry("b", 1, 2, TS + 1, 2),
                   entry("d", 1, 2, TS + 2, 4),             # same ts as c, accepted after it
                   entry("b", 1, 2, TS + 1, 2),             # the same entry twice: once
                   receipt(2, 1, 2, ["a", "b"], TS + 6, 6),  # reads a (delivered in MySQL) and b
                   receipt(1, 2, 1, ["c"], TS + 7, 7),      # behind MySQL's read: stays read
                   "not an entry"]
        items = list(merged(rows, Pending(pending, Selection(1).matches)))
        self.assertEqual(ids(items), [("a", 2), ("b", 2), ("c", 2), ("d", 0), ("e", 0)])
        self.assertEqual([m.key for m, _ in items], [(TS, 1), (TS + 1, 2), (TS + 2, 3), (TS + 2, 4), (TS + 4, 5)])
        # c came from its row (it carries the row's text), b and d from Redis
        self.assertEqual([m.packet for m, _ in items], [r[7] for r in rows[:1]] + [parse_entry(pending[1]).packet]
                         + [rows[1][7], parse_entry(pending[2]).packet, rows[2][7]])

    def test_on_equal_keys_the_row_comes_first_and_its_pending_copy_is_dropped(self):
        text = entry("m", 1, 2, TS, 7, "pending copy")
        copy = row(text)[:7] + ('{"row":1}', 1)
        items = list(merged([copy], Pending([text], Selection(1).matches)))
        self.assertEqual([(m.packet, state) for m, state in items], [('{"row":1}', 1)])

    def test_rows_alone_and_pending_alone(self):
        rows = [row(entry(n, 1, 2, TS + n, n + 1), n % 3) for n in range(5)]
        self.assertEqual(ids(merged(rows, Pending([], Selection(1).matches))),
                         [(str(n), n % 3) for n in range(5)])
        pending = [entry(n, 2, 1, TS + 5 - n, 10 - n) for n in range(5)]
        self.assertEqual(ids(merged([], Pending(pending, Selection(1).matches))),
                         [(str(n), 0) for n in reversed(range(5))])

    def test_a_pending_d_shows_its_message_as_the_tombstone_and_is_not_listed(self):
        # m1 migrated (its row still holds the text), its D not yet; m2 untouched
        rows = [row(entry("m1", 1, 2, TS, 1, "secret")), row(entry("m2", 1, 2, TS + 1, 2, "kept"))]
        d = protocol.recall_json("d1", 1, 2, "m1", TS + 5).decode("utf-8")[:-1] + ',"seq":3}'
        items = list(merged(rows, Pending([d], Selection(1).matches)))
        self.assertEqual([json.loads(m.packet) for m, _ in items],
                         [{"id": "m1", "from": 1, "to": 2, "type": "t", "msg": "", "recalled": True, "ts": TS},
                          {"id": "m2", "from": 1, "to": 2, "type": "t", "msg": "kept", "ts": TS + 1}])
        self.assertEqual([m.msg for m, _ in items], ["", "kept"])
        # a D about someone else's message of the same id changes nothing
        other = protocol.recall_json("d2", 3, 2, "m1", TS + 5).decode("utf-8")[:-1] + ',"seq":4}'
        self.assertEqual([m.msg for m, _ in merged(rows, Pending([other], Selection(1).matches))],
                         ["secret", "kept"])

    def test_lazy(self):
        def rows():
            yield row(entry("a", 1, 2, TS, 1))
            raise AssertionError("read past the page")
        items = merged(rows(), Pending([entry("b", 1, 2, TS + 1, 2)], Selection(1).matches))
        self.assertEqual(next(items)[0].msg_id, b"a")

    def test_the_selection_picks_the_pending_messages_as_the_sql_reads_rows(self):
        def picked(selection):
            return [m.msg_id.decode("utf-8") for m in Pending(SELECTION_ENTRIES, selection.matches).messages]
        self.assertEqual(picked(Selection(1)), ["to-me", "from-me", "self", "sys"])
        self.assertEqual(picked(Selection(1, 2)), ["to-me"])
        self.assertEqual(picked(Selection(1, 1)), ["self"])
        self.assertEqual(picked(Selection(1, after=(TS, None))), ["from-me", "self", "sys"])
        self.assertEqual(picked(Selection(1, after=(TS, 1))), ["from-me", "self", "sys"])
        self.assertEqual(picked(Selection(1, after=(TS, 0))), ["to-me", "from-me", "self", "sys"])
        self.assertEqual(picked(Selection(1, since=TS + 1, until=TS + 3)), ["from-me", "self"])
        self.assertEqual(picked(Selection(1, 2, system_ids=("closed-9",))), ["to-me", "closed-9"])

    def test_found_states_for_the_receipts_verification(self):
        pending = Pending([entry("p", 2, 1, TS, 1), receipt(1, 2, 1, ["p", "q"], TS + 1, 2),
                           receipt(1, 3, 2, ["q"], TS + 2, 3)],
                          lambda m: m.from_id == 2 and m.to_id == 1)
        self.assertEqual(found_states(pending, 2, 1, {b"q": 0, b"r": 2}), {b"p": 1, b"q": 1, b"r": 2})


class StoredMergeTests(MysqlTestMixin, RedisTestMixin, unittest.TestCase):
    """Entries stored by the store_entry snippet in real Redis, some of them
    migrated into real MariaDB (and still pending, as between the
    migrator's commit and its trim), read back through H's reader and
    export's: the same merge, each message once, in order, with states."""

    def setUp(self):
        def started(_):
            self.store = MysqlStore(self.mysql_settings)
            self.store.startService()
            self.addCleanup(self.store.stopService)
        return super().setUp().addCallback(started)

    async def test_pending_entries_and_mysql_rows_in_order_once_with_states(self):
        packets = []
        for n in range(12):
            sender, to = (1, 2) if n % 2 else (2, 1)
            packets.append(stored("m%d" % n, sender, to, TS + n // 3, "text %d" % n))
        packets.append(stored("other", 2, 3, TS, "not 1's"))
        first = await store_entries(self.redis, packets)
        # 1 read m0, m2 (2's messages) and m1 was delivered to 2: stored too
        receipts = [receipt(1, 2, 2, ["m0", "m2"], TS + 10), receipt(2, 1, 1, ["m1"], TS + 11)]
        second = await store_entries(self.redis, receipts)
        # the first eight migrated (the migrator's own rows), the first receipt too, all still pending
        rows, receipt_rows = Migrator._rows(first[:8] + second[:1], [], {})
        self.assertEqual(await self.store.insert_entries(rows, receipt_rows), (8, 2))
        pending = await self.redis.zrange(Keys().pending(1), 0, -1)
        self.assertEqual(len(pending), 14)

        expected = [("m%d" % n, 2 if n in (0, 2) else 1 if n == 1 else 0) for n in range(12)]
        selection = Selection(1, after=(0, None))
        history_rows = await self.store.history(1, None, (0, None), 100)
        self.assertEqual(ids(merged(history_rows, Pending(pending, selection.matches))), expected)
        self.assertEqual({r[6] for r in history_rows}, {None}, "H reads no msg column: it replays the packet")

        def exported():
            selection = Selection(1, since=0, until=2 ** 63 - 1)
            with LogReader(self.mysql_settings, selection) as reader:
                self.assertEqual(reader.count(), 8)
                return [(m.msg_id.decode("utf-8"), state, m.msg)
                        for m, state in merged(reader.rows(), Pending(pending, selection.matches))]
        items = await threads.deferToThread(exported)
        self.assertEqual(items, [(msg_id, state, "text %s" % msg_id[1:]) for msg_id, state in expected])

        # once the migrator has trimmed pending: the rows alone, the same
        await self.redis.delete(Keys().pending(1))
        rows, receipt_rows = Migrator._rows(first[8:] + second[1:], [], {})
        await self.store.insert_entries(rows, receipt_rows)
        history_rows = await self.store.history(1, None, (0, None), 100)
        self.assertEqual(ids(merged(history_rows, Pending([], selection.matches))), expected)
        # H reads at most its limit from each side, after its position, in order
        self.assertEqual([r[3] for r in await self.store.history(1, 2, (TS, 1), 2)], [b"m1", b"m2", b"m3", b"m4"])

    async def test_mysql_reads_what_the_selection_picks_in_redis(self):
        # the one SQL reader reads the messages Selection.matches picks among entries
        rows, _ = Migrator._rows(SELECTION_ENTRIES, [], {})
        await self.store.insert_entries(rows, [])
        for selection in (Selection(1), Selection(1, 2), Selection(1, 1), Selection(1, since=TS + 1, until=TS + 3),
                          Selection(1, 2, system_ids=("closed-9",)), Selection(1, since=TS + 3, system_ids=("sys",)),
                          Selection(1, after=(TS, 1)), Selection(1, 3, after=(TS, None))):
            in_redis = [m.msg_id for m in Pending(SELECTION_ENTRIES, selection.matches).messages]
            if selection.after is None:
                def read(selection=selection):
                    with LogReader(self.mysql_settings, selection) as reader:
                        return [r[3] for r in reader.rows()]
                in_mysql = await threads.deferToThread(read)
            else:
                in_mysql = [r[3] for r in await self.store.history(1, selection.with_uid, selection.after, 100)]
            self.assertEqual(in_mysql, in_redis, selection)
            self.assertNotEqual(in_redis, [], selection)

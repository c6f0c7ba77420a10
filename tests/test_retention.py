"""Retention: ``imd-admin retention purge`` and the leader's hourly purge
(``[retention] days``) delete the old messages and their receipts, leave
the newer ones, and let the migrator's inserts go on meanwhile."""

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from imd import protocol
from imd.app import App
from imd.retention import DAY_MS, RetentionPurge, purge
from imd.stores.mysql import MessageRows, connect_kwargs
from tests.admin_support import AdminAppMixin
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import query
from tests.support import make_settings, wait_until


def insert_aged(settings, count, days_old, prefix, receipts=True):
    """``count`` messages 1 -> 2 ``days_old`` days old, each with a receipt."""
    import time

    import pymysql
    ts0 = int(time.time() * 1000) - int(days_old * DAY_MS)
    conn = pymysql.connect(**connect_kwargs(settings))
    try:
        with conn.cursor() as cur:
            for start in range(0, count, 5000):
                rows = []
                for i in range(start, min(count, start + 5000)):
                    packet = protocol.message_json(protocol.MessagePacket("%s%d" % (prefix, i), "t", 2, "old"), 1,
                                                   ts0 + i)
                    rows.append(("%s%d" % (prefix, i), 1, 2, "t", "old", ts0 + i, i, packet.decode("utf-8")))
                cur.executemany("INSERT INTO message (msg_id, from_id, to_id, type, msg, ts, accept_seq, packet)"
                                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", rows)
                if receipts:
                    cur.executemany("INSERT INTO receipt (from_id, msg_id, to_id, state, ts, accept_seq)"
                                    " VALUES (1, %s, 2, 2, %s, %s)", [(r[0], r[5] + 1, r[6]) for r in rows])
                conn.commit()
    finally:
        conn.close()


class PurgeCommandTests(AdminAppMixin, unittest.TestCase):

    async def counts(self):
        rows = await query(self.mysql_settings, "SELECT (SELECT COUNT(*) FROM message), (SELECT COUNT(*) FROM receipt)")
        return tuple(int(n) for n in rows[0])

    async def test_dry_run_then_purge_leaves_the_newer_rows(self):
        await threads.deferToThread(insert_aged, self.mysql_settings, 2500, 40, "old")
        await threads.deferToThread(insert_aged, self.mysql_settings, 300, 20, "new")
        out, _, _ = await self.admin("retention", "purge", "--older-than", "30", "--dry-run")
        self.assertRegex(out, r"^retention purge: would delete 2,500 messages older than 30 days \(before \S+Z\), "
                              r"the oldest from \S+Z, and their receipts \(dry run\)\n$")
        self.assertEqual(await self.counts(), (2800, 2800))
        out, _, progress_text = await self.admin("retention", "purge", "--older-than", "30")
        self.assertRegex(out, r"^retention purge: deleted 2,500 messages older than 30 days \(before \S+Z\) "
                              r"and 2,500 receipts in [\d.]+ s\n$")
        self.assertEqual(await self.counts(), (300, 300))
        left = await query(self.mysql_settings, "SELECT msg_id FROM message WHERE msg_id LIKE 'old%'")
        self.assertEqual(left, ())
        self.assertRegex(progress_text, r"(?m)^retention purge: 2,500 messages in 0:\d\d \([\d,]+ messages/s\)$")
        out, _, _ = await self.admin("retention", "purge", "--older-than", "30")
        self.assertRegex(out, r"^retention purge: no messages older than 30 days")

    async def test_days_must_be_whole_and_positive(self):
        for bad in ("0", "-3", "1.5", "x"):
            out, err, code = await self.run_admin("retention", "purge", "--older-than", bad)
            self.assertEqual(code, 2, bad)
            self.assertIn("expected a whole number of days, 1 or more, got %r" % bad, err.decode("utf-8"))

    async def test_runs_while_the_migrator_inserts(self):
        await threads.deferToThread(insert_aged, self.mysql_settings, 6000, 40, "old")
        fresh = [protocol.message_json(protocol.MessagePacket("n%d" % i, "t", 4, "new"), 3,
                                       int(reactor.seconds() * 1000)).decode("utf-8") for i in range(6000)]
        for start in range(0, len(fresh), 1000):
            await self.redis.lpush("MQ", fresh[start:start + 1000])
        migrator = start_migrator(self, self.settings)
        seen = []   # rows the migrator had inserted when each purge batch committed

        def batch_done(deleted):
            seen.append(migrator.rows_migrated)
        rows = MessageRows(self.app.mysql)
        messages, receipts = await purge(rows, int(reactor.seconds() * 1000) - 30 * DAY_MS,
                                         lambda s: task.deferLater(reactor, s, lambda: None), reactor.seconds,
                                         batch=200, progress=batch_done)
        await with_drain(migrator)
        self.assertEqual((messages, receipts), (6000, 6000))
        self.assertEqual(await query(self.mysql_settings, "SELECT COUNT(*) FROM message"), ((6000,),))
        self.assertEqual(await query(self.mysql_settings, "SELECT COUNT(*) FROM message WHERE from_id = 3"),
                         ((6000,),))
        # neither waited for the other to finish: the purge's first batch committed before the
        # migrator was done, and the migrator inserted rows while the purge was still deleting
        # (how many batches that spans depends on how fast this machine's MariaDB inserts)
        self.assertEqual(len(seen), 30)
        self.assertLess(seen[0], 6000, seen)
        self.assertGreater(seen[-1], seen[0], seen)


class LeaderPurgeTests(AdminAppMixin, unittest.TestCase):

    def test_only_with_days_set(self):
        app = App(make_settings({"imd": {"roles": "migrate"}}), reactor)
        app.migrator_service()
        self.assertIsNone(app.retention)
        app = App(make_settings({"imd": {"roles": "migrate"}, "retention": {"days": "180"}}), reactor)
        group = app.migrator_service()
        self.assertEqual((app.retention.days, app.retention.running), (180, False))
        self.assertIn(app.retention, list(group))

    async def test_while_leading_once_per_run_interval(self):
        await threads.deferToThread(insert_aged, self.mysql_settings, 40, 10, "old")
        await threads.deferToThread(insert_aged, self.mysql_settings, 5, 3, "new")
        clock = task.Clock()
        clock.advance(reactor.seconds())
        leading = [False]
        service = RetentionPurge(MessageRows(self.app.mysql), 7, clock, lambda: leading[0], check_every=60,
                                 run_every=3600)
        service.startService()
        self.addCleanup(service.stopService)
        clock.advance(60)
        self.assertEqual(service.deleted, 0)   # not leading: nothing
        leading[0] = True
        clock.advance(60)
        await wait_until(lambda: service.deleted == 40 and service._run is None, what="the purge")
        self.assertEqual(service.receipts_deleted, 40)
        await threads.deferToThread(insert_aged, self.mysql_settings, 10, 9, "later")
        clock.advance(60)   # not an hour yet
        self.assertIsNone(service._run)
        clock.advance(3600)
        await wait_until(lambda: service.deleted == 50 and service._run is None, what="the next hour's purge")
        self.assertEqual(await query(self.mysql_settings, "SELECT COUNT(*) FROM message"), ((5,),))

    async def test_a_stop_ends_the_run_between_batches(self):
        await threads.deferToThread(insert_aged, self.mysql_settings, 300, 10, "old", False)
        clock = task.Clock()
        clock.advance(reactor.seconds())
        service = RetentionPurge(MessageRows(self.app.mysql), 7, clock, lambda: True, check_every=1, batch=100,
                                 pause=5)
        service.startService()
        clock.advance(1)
        await wait_until(lambda: service._sleeping is not None, what="the pause after the first batch")
        await defer.maybeDeferred(service.stopService)
        self.assertEqual(await query(self.mysql_settings, "SELECT COUNT(*) FROM message"), ((200,),))


def insert_room_aged(settings, room, rows):
    """Room messages of ``room`` as ``[(seq, accept_seq, days_old)]``, and a
    room recall at accept_seq + 1 of each one 40 days old or more."""
    import time

    import pymysql
    now = int(time.time() * 1000)
    conn = pymysql.connect(**connect_kwargs(settings))
    try:
        with conn.cursor() as cur:
            for seq, accept_seq, days_old in rows:
                ts = now - int(days_old * DAY_MS)
                cur.execute("INSERT INTO room_message (room, seq, accept_seq, msg_id, from_id, type, msg, ts, packet)"
                            " VALUES (%s, %s, %s, %s, 1, 't', 'old', %s, '{}')",
                            (room, seq, accept_seq, "m%d" % seq, ts))
                if days_old >= 40:
                    cur.execute("INSERT INTO room_recall (accept_seq, room, msg_id, from_id, recalled_id, ts, packet)"
                                " VALUES (%s, %s, %s, 1, %s, %s, '{}')",
                                (accept_seq + 1, room, "d%d" % seq, "m%d" % seq, ts))
        conn.commit()
    finally:
        conn.close()


class RoomRetentionTests(AdminAppMixin, unittest.TestCase):
    """Room messages and room recalls go with the one-to-one messages, the
    oldest first by their ts keys."""

    async def test_room_rows_older_than_the_cut_off_go(self):
        await threads.deferToThread(insert_aged, self.mysql_settings, 30, 40, "old")
        # r1: seqs 1-5 old (accept_seq 1000..1008 step 2), 6-7 new; a recall row after each old one
        await threads.deferToThread(insert_room_aged, self.mysql_settings, "r1",
                                    [(i, 998 + 2 * i, 45) for i in range(1, 6)]
                                    + [(6, 2000, 5), (7, 2002, 5)])
        out, _, _ = await self.admin("retention", "purge", "--older-than", "30", "--dry-run")
        self.assertRegex(out, r"^retention purge: would delete 40 messages older than 30 days")
        rows = MessageRows(self.app.mysql)
        messages, receipts = await purge(rows, int(reactor.seconds() * 1000) - 30 * DAY_MS,
                                         lambda s: task.deferLater(reactor, s, lambda: None), reactor.seconds,
                                         batch=7)
        self.assertEqual((messages, receipts), (40, 30))
        self.assertEqual(await query(self.mysql_settings, "SELECT seq FROM room_message ORDER BY seq"), ((6,), (7,)))
        self.assertEqual(await query(self.mysql_settings, "SELECT COUNT(*) FROM room_recall"), ((0,),))
        # a sync from below what went says truncated: the mark is the highest pos removed (the last recall)
        self.assertEqual(await query(self.mysql_settings, "SELECT accept_seq FROM log_mark WHERE name = 'purged'"),
                         ((1009,),))

    async def test_a_row_from_a_clock_ahead_holds_nothing_back(self):
        # a node's clock a year ahead wrote seq 2: the old rows stored after it still go
        await threads.deferToThread(insert_room_aged, self.mysql_settings, "r2",
                                    [(1, 10, 35), (2, 20, -365), (3, 30, 35), (4, 40, 5)])
        rows = MessageRows(self.app.mysql)
        before = int(reactor.seconds() * 1000) - 30 * DAY_MS
        self.assertEqual((await rows.count_older(before))[0], 2)
        self.assertEqual(await rows.purge_older(before, 100), (2, 0))
        self.assertEqual(await query(self.mysql_settings, "SELECT seq FROM room_message ORDER BY seq"), ((2,), (4,)))

    async def test_positions_never_start_below_what_was_purged(self):
        # every row older than the cut-off: the purge takes them all, and MQ:seq's
        # floor at start-up is still the highest pos clients have seen
        await threads.deferToThread(insert_aged, self.mysql_settings, 10, 40, "old")
        await threads.deferToThread(insert_room_aged, self.mysql_settings, "r3", [(1, 500, 45)])
        rows = MessageRows(self.app.mysql)
        self.assertEqual(await self.app.mysql.max_accept_seq(), 501)
        await purge(rows, int(reactor.seconds() * 1000) - 30 * DAY_MS,
                    lambda s: task.deferLater(reactor, s, lambda: None), reactor.seconds)
        self.assertEqual(await query(self.mysql_settings, "SELECT (SELECT COUNT(*) FROM message)"
                                                          " + (SELECT COUNT(*) FROM room_message)"
                                                          " + (SELECT COUNT(*) FROM room_recall)"), ((0,),))
        self.assertEqual(await self.app.mysql.max_accept_seq(), 501)

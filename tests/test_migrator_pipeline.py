"""The migrator's overlapping stages: it claims the next batch while the
current one is inserted, so ``MQ:processing`` can hold two batches.  A
``kill -9`` or a stop in the middle of that loses nothing, doubles nothing,
and ``pending:<uid>`` keeps every entry MySQL does not have yet (what ``H``
relies on).

Deterministic: the test holds an uncommitted row with the identity of one
message of the second batch, so that batch's INSERT waits on InnoDB's lock
while the migrator claims the third behind it."""

import json

from twisted.internet import defer
from twisted.trial import unittest

from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import RowLock, query
from tests.support import DEADLINE, wait_until, with_deadline
from tests.test_migrator import MigratorTestMixin, send_and_collect
from tests import test_migrator_crash as crash

BATCH = 50            # under SPLIT_FROM: each batch is one insert
MESSAGES = 300
BLOCKED_ID = "75"     # in the second batch (ids 50-99, claimed in accept order)


class PipelineTestMixin(MigratorTestMixin):
    overrides = {"websocket": crash.CrashTests.overrides["websocket"],
                 "migrate": {"batch": str(BATCH), "interval": "0.02", "lock_ttl": "0.5"}}
    write_config = crash.CrashTests.write_config

    async def fill_and_block(self):
        """MESSAGES acked from 1 to 2 (in MQ); the second batch's insert to
        be held by a row lock."""
        await self.befriend(1, 2)
        alice = await self.login(1)
        acked = await send_and_collect(alice, 1, 2, [str(n) for n in range(MESSAGES)])
        self.assertEqual(len(acked), MESSAGES)
        lock = RowLock(self.mysql_settings)
        self.addCleanup(lock.release)
        await lock.take(1, BLOCKED_ID, 2)
        return acked, lock

    async def wait_two_batches_in_flight(self):
        """The first batch acked, the second held in its insert (one
        part: smaller than SPLIT_FROM), the third claimed behind it."""
        async def two_in_flight():
            return (await self.redis.llen("MQ:processing") == 2 * BATCH
                    and await self.redis.llen("MQ") == MESSAGES - 3 * BATCH
                    and len(await self.rows_set()) == BATCH)
        await wait_until(lambda: defer_of(two_in_flight()), what="two batches in MQ:processing")

    async def unmigrated_in_pending(self, uid):
        """Ids of ``uid``'s entries in ``pending:<uid>``."""
        members = await self.redis.zrange("pending:%d" % uid, 0, -1)
        return {(json.loads(m)["from"], str(json.loads(m)["id"])) for m in members}

    async def assert_history_sees_everything(self, acked):
        """Every acked message is in MySQL or in both parties' pending index."""
        in_mysql = await self.rows_set()
        for uid in (1, 2):
            missing = acked - in_mysql - await self.unmigrated_in_pending(uid)
            self.assertEqual(missing, set(), "neither in MySQL nor in pending:%d" % uid)

    async def assert_exactly_once_and_clean(self, acked):
        self.assertEqual(await self.rows_set(), acked)
        rows = await query(self.mysql_settings, "SELECT COUNT(*) FROM message")
        self.assertEqual(rows[0][0], len(acked))
        for key in ("MQ", "MQ:processing", "pending:1", "pending:2"):
            self.assertEqual(await self.redis.exists(key), 0, key)


def defer_of(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


class KilledMidPipelineTests(PipelineTestMixin, unittest.TestCase):

    async def test_kill_9_with_two_batches_in_flight_then_restart(self):
        acked, lock = await self.fill_and_block()
        process = crash.MigratorProcess(self.write_config()).start()
        self.addCleanup(process.kill)
        await with_deadline(process.leading, DEADLINE, "migrator leading")
        await self.wait_two_batches_in_flight()
        await with_deadline(process.kill(), DEADLINE, "migrator exit")
        await lock.release()
        # dead: the batches stay in MQ:processing, H still sees every message
        self.assertEqual(await self.redis.llen("MQ:processing"), 2 * BATCH)
        await self.assert_history_sees_everything(acked)

        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        await self.assert_exactly_once_and_clean(acked)
        self.assertEqual((migrator.rows_migrated, migrator.rows_skipped), (MESSAGES - BATCH, 0))


class StoppedMidPipelineTests(PipelineTestMixin, unittest.TestCase):

    async def test_a_stop_finishes_the_batches_it_claimed(self):
        acked, lock = await self.fill_and_block()
        migrator = start_migrator(self, self.server.app.settings)
        await self.wait_two_batches_in_flight()
        await self.assert_history_sees_everything(acked)
        stopping = migrator.stopService()
        self.assertFalse(stopping.called, "the stop waits for the insert under way")
        await lock.release()
        await with_deadline(stopping, DEADLINE, "migrator stopped")
        # both claimed batches committed and acked, nothing else claimed
        self.assertEqual(await self.redis.llen("MQ:processing"), 0)
        self.assertEqual(await self.redis.llen("MQ"), MESSAGES - 3 * BATCH)
        self.assertEqual(len(await self.rows_set()), 3 * BATCH)
        await self.assert_history_sees_everything(acked)

        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        await self.assert_exactly_once_and_clean(acked)


class SerialSwitchTests(PipelineTestMixin, unittest.TestCase):
    """``IMD_MIGRATOR_SERIAL=1``: one batch in flight at a time, as before."""

    async def test_serial_never_claims_behind_a_batch_in_flight(self):
        import imd.migrator
        self.patch(imd.migrator, "PIPELINE", False)
        acked, lock = await self.fill_and_block()
        migrator = start_migrator(self, self.server.app.settings)
        await wait_until(lambda: defer_of(self._second_batch_waits()), what="the second batch waiting")
        self.assertEqual(await self.redis.llen("MQ:processing"), BATCH)
        await lock.release()
        await with_drain(migrator)
        await self.assert_exactly_once_and_clean(acked)

    async def _second_batch_waits(self):
        return (await self.redis.llen("MQ") == MESSAGES - 2 * BATCH
                and len(await self.rows_set()) == BATCH)


class LapsedLockTests(PipelineTestMixin, unittest.TestCase):
    """A leader whose lock lapsed mid-step (a pause, Redis slow) has lost it,
    even once it is free again: its renew timer must not take it back, or
    an ack of its old term would carry a valid token and trim batches the
    next leader claimed and has not committed (the scripts' side of that:
    test_redis_scripts.ClaimTests)."""

    async def test_a_lapsed_lock_is_not_taken_back_by_the_renew_timer(self):
        acked, lock = await self.fill_and_block()
        migrator = start_migrator(self, self.server.app.settings)
        await self.wait_two_batches_in_flight()
        # the lock lapses while the second batch's insert waits
        await self.redis.delete("MQ:lock")
        await wait_until(lambda: not migrator.is_leader, what="the migrator standing by")
        self.assertEqual(await self.redis.exists("MQ:lock"), 0, "the renew timer took a free lock")
        await self.assert_history_sees_everything(acked)
        # once its step is over it leads again, replays what is in flight, drains the rest
        await lock.release()
        await with_drain(migrator)
        self.assertTrue(migrator.is_leader)
        await self.assert_exactly_once_and_clean(acked)

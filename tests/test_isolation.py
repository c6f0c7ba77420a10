"""Each test process's own Redis db and MySQL database (tests/isolation.py):
the lease on a private redis-server (so the shared one's dbs are never
touched), the stale-database clean-up on the shared MariaDB with names only
this code makes."""

import time

from twisted.internet import threads
from twisted.trial import unittest

from tests import isolation
from tests.isolation import LEASE_KEY, RUN, RUN_MARK, IsolationError, RunStores, redis_command
from tests.support import PrivateRedis, mysql_db, redis_db, wait_until


class RedisLeaseTests(unittest.TestCase):

    async def setUp(self):
        self.private = await PrivateRedis().start()
        self.addCleanup(self.private.stop)

    def stores(self, **environ):
        stores = RunStores(environ, redis_port=self.private.port, candidate_dbs=[1, 2, 3])
        self.addCleanup(stores.release_redis)
        return stores

    def call(self, db, *args):
        return redis_command(db, *args, port=self.private.port)

    def test_a_leased_db_and_one_with_foreign_data_are_skipped(self):
        self.call(1, "SET", LEASE_KEY, "someone else", "PX", 60000)
        self.call(2, "SET", "URS:1", "a developer's data")
        self.assertEqual(3, self.stores().redis_db())
        self.assertEqual("a developer's data", self.call(2, "GET", "URS:1"))
        self.assertEqual("someone else", self.call(1, "GET", LEASE_KEY))

    def test_two_runs_get_different_dbs(self):
        first, second = self.stores(), self.stores()
        self.assertEqual([1, 2], [first.redis_db(), second.redis_db()])
        self.assertEqual(second.redis_db(), second.redis_db())

    def test_a_dead_runs_db_is_taken_and_flushed(self):
        self.call(1, "SET", RUN_MARK, "1")
        self.call(1, "SET", "MQ", "left by a run that was killed")
        self.assertEqual(1, self.stores().redis_db())
        self.assertIsNone(self.call(1, "GET", "MQ"))

    def test_flushing_keeps_the_lease_and_exit_empties_the_db(self):
        stores = self.stores()
        db = stores.redis_db()
        self.call(db, "SET", "k", "v")
        script, keys, args = stores.flush_args()
        self.call(db, "EVAL", script, len(keys), *(keys + args))
        self.assertEqual([LEASE_KEY, RUN_MARK], sorted(self.call(db, "KEYS", "*")))
        self.assertEqual(stores.owner, self.call(db, "GET", LEASE_KEY))
        self.assertGreater(self.call(db, "PTTL", LEASE_KEY), 0)
        stores.release_redis()
        self.assertEqual(0, self.call(db, "DBSIZE"))

    def test_no_free_db_is_one_clear_error(self):
        for db in (1, 2, 3):
            self.call(db, "SET", "someone's", "data")
        error = self.assertRaises(IsolationError, self.stores().redis_db)
        self.assertIn("no free Redis db", str(error))
        self.assertIn("IMD_TEST_REDIS_DB", str(error))

    def test_a_forced_db_is_used_unless_another_run_holds_it(self):
        self.assertEqual(3, self.stores(IMD_TEST_REDIS_DB="3").redis_db())
        error = self.assertRaises(IsolationError, self.stores(IMD_TEST_REDIS_DB="3").redis_db)
        self.assertIn("leased by another test run", str(error))
        error = self.assertRaises(IsolationError, self.stores(IMD_TEST_REDIS_DB="0").redis_db)
        self.assertIn("never uses db 0", str(error))

    def test_the_lease_is_renewed_while_the_run_lives(self):
        self.patch(isolation, "RENEW_EVERY", 0.05)
        stores = self.stores()
        db = stores.redis_db()
        self.call(db, "PEXPIRE", LEASE_KEY, 1000)
        return wait_until(lambda: self.call(db, "PTTL", LEASE_KEY) > 10000, what="lease renewal")


class RunChoiceTests(unittest.TestCase):

    def test_this_run_has_its_own_db_and_database(self):
        self.assertNotIn(redis_db(), (0, 9, 11, 15))
        self.assertNotEqual("imd_test", mysql_db())
        self.assertEqual(RUN.owner, redis_command(redis_db(), "GET", LEASE_KEY))


class StaleDatabaseTests(unittest.TestCase):

    def test_databases_of_runs_dead_for_a_day_are_dropped_on_start(self):
        now = int(time.time())
        old = "imd_test_%d_1_abcdef" % (now - 2 * 86400)
        fresh = "imd_test_%d_1_abcdef" % (now - 60)
        for name in (old, fresh):
            _mysql("CREATE DATABASE IF NOT EXISTS `%s`" % name)
            self.addCleanup(_mysql, "DROP DATABASE IF EXISTS `%s`" % name)
        d = threads.deferToThread(RunStores({}).mysql_db)

        def check(name):
            self.assertRegex(name, r"^imd_test_\d+_\d+_[0-9a-f]+$")
            names = [row[0] for row in _mysql("SHOW DATABASES")]
            self.assertNotIn(old, names)
            self.assertIn(fresh, names)
        return d.addCallback(check)


def _mysql(statement):
    """Blocking: the rows of one statement on the shared MariaDB."""
    rows = []

    def work(cursor):
        cursor.execute(statement)
        rows.extend(cursor.fetchall())
    isolation._mysql_run(work)
    return rows

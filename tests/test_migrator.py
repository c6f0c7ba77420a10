"""The migrator: every acked message lands in ``message`` exactly once, across
bursts, MySQL outages, several migrators and ``kill -9``."""

import json

from twisted.internet import defer, reactor, task
from twisted.protocols.portforward import ProxyFactory
from twisted.trial import unittest

from imd.errors import StoreUnavailable
from imd.migrator import Migrator
from imd.stores.keys import Keys
from imd.stores.queue import QueueStore
from imd.stores.redis import RedisClient
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import MysqlTestMixin, query
from tests.support import ServerTestMixin, free_port, make_settings, wait_until

FAST = {"websocket": {"rate": "100000", "burst": "100000", "history_rate": "100000", "history_burst": "100000",
                      "history_user_rate": "0"},
        "migrate": {"batch": "50", "interval": "0.02", "lock_ttl": "0.6"}}


@defer.inlineCallbacks
def send_and_collect(client, sender, to, ids, text="m"):
    """Send a ``t`` per id (pipelined); the set of ids that got ``A``."""
    for packet_id in ids:
        client.send({"id": packet_id, "to": to, "type": "t", "msg": "%s %s" % (text, packet_id)})
    acked = set()
    for _ in ids:
        reply = yield client.next_of("AE")
        assert reply["type"] == "A", reply
        acked.add((sender, str(reply["id"])))
    return acked


class MigratorTestMixin(MysqlTestMixin, ServerTestMixin):
    overrides = FAST

    def rows_set(self):
        def as_set(rows):
            pairs = [(f, m) for f, m, _ in rows]
            self.assertEqual(len(pairs), len(set(pairs)), "a message is in the table twice")
            return set(pairs)
        return self.message_rows().addCallback(as_set)


class BurstTests(MigratorTestMixin, unittest.TestCase):

    async def test_every_acked_message_of_a_burst_lands_once(self):
        migrator = start_migrator(self, self.server.app.settings)
        senders = {}
        for uid in (11, 12, 13, 14):
            await self.befriend(uid, uid + 10)
            senders[uid] = await self.login(uid)
        results = await defer.gatherResults([
            send_and_collect(client, uid, uid + 10, ["%d-%d" % (uid, n) for n in range(400)] + list(range(100)))
            for uid, client in senders.items()])
        acked = set().union(*results)
        self.assertEqual(len(acked), 2000)
        await with_drain(migrator)
        self.assertEqual(await self.rows_set(), acked)
        self.assertEqual(migrator.rows_migrated, 2000)

    async def test_packet_is_stored_exactly_as_delivered(self):
        migrator = start_migrator(self, self.server.app.settings)
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        alice.send({"id": 77, "to": 2, "type": "t", "msg": "héllo 😀 \"quoted\""})
        alice.send({"id": "img", "to": "2", "type": "i", "msg": 4242})
        # every character MySQL string literals escape, raw in msg and in packet
        alice.send({"id": "esc\\'", "to": 2, "type": "t", "msg": "a\x00b\nc\rd\x1ae'f\"g\\h\\\\ '' \\'"})
        delivered = [await bob.next_of("ti") for _ in range(3)]
        await with_drain(migrator)
        rows = await self.message_rows()
        # (stored without the pos it was delivered with: the row has it as accept_seq)
        self.assertEqual([json.loads(p) for _, _, p in rows], [{k: v for k, v in d.items() if k != "pos"}
                                                                  for d in delivered])
        self.assertEqual([(f, m) for f, m, _ in rows], [(1, "77"), (1, "img"), (1, "esc\\'")])

    async def test_unreadable_entries_go_to_dead_list(self):
        migrator = start_migrator(self, self.server.app.settings)
        good = json.dumps({"id": "g", "from": 1, "to": 2, "type": "t", "msg": "ok", "ts": 5})
        await self.redis.lpush("MQ", ["not json", good, json.dumps({"id": "x", "from": 0})])
        await with_drain(migrator)
        self.assertEqual(await self.rows_set(), {(1, "g")})
        dead = await self.redis.lrange("MQ:dead", 0, -1)
        self.assertEqual(sorted(dead), sorted(["not json", json.dumps({"id": "x", "from": 0})]))
        self.assertEqual(migrator.dead_entries, 2)

    async def test_bytes_that_are_not_utf8_reach_mq_dead_as_they_were_and_mysql_as_u_fffd(self):
        migrator = start_migrator(self, self.server.app.settings)
        unreadable = b"not json \xff\xfe"
        readable = b'{"id":"u","from":1,"to":2,"type":"t","msg":"a\xffb","ts":5}'
        await self.redis.lpush("MQ", [unreadable, readable])
        await with_drain(migrator)
        self.assertEqual(await self.redis.lrange("MQ:dead", 0, -1), [unreadable])   # to be replayed as it was
        self.assertEqual(await self.message_rows(),
                         [(1, "u", '{"id":"u","from":1,"to":2,"type":"t","msg":"a\ufffdb","ts":5}')])


class MysqlAwayTests(MigratorTestMixin, unittest.TestCase):

    async def test_mysql_away_then_back_all_land_once(self):
        # The migrator talks to MySQL through a port forwarder that the test
        # closes and opens: while closed, connections are refused.
        proxy = ProxyFactory("127.0.0.1", self.mysql_settings.port)
        port = free_port()
        settings = self.server.app.settings.replace("mysql", port=port)
        migrator = start_migrator(self, settings)
        await self.befriend(1, 2)
        alice = await self.login(1)
        acked = await send_and_collect(alice, 1, 2, list(range(300)))
        await wait_until(lambda: not migrator.mysql_up, what="migrator noticing MySQL is away")
        in_flight = await self.redis.llen("MQ:processing")
        # a batch waits in MQ:processing: a whole one, or fewer when the
        # migrator claimed before the 300 were all stored (a busy machine)
        self.assertTrue(0 < in_flight <= 50, "a batch waits in MQ:processing: %d" % in_flight)
        # more acked messages while MySQL is away
        acked |= await send_and_collect(alice, 1, 2, ["late-%d" % n for n in range(200)])
        listening = reactor.listenTCP(port, proxy, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        await with_drain(migrator, 20)
        self.assertTrue(migrator.mysql_up)
        self.assertEqual(await self.rows_set(), acked)
        self.assertEqual(await self.redis.llen("MQ:processing"), 0)

    async def test_history_says_unavailable_while_mysql_is_away(self):
        await self.server.stop()
        from tests.support import ImdServer
        settings = make_settings(dict(FAST, mysql={"database": self.mysql_settings.database,
                                                    "port": str(free_port())}))
        self.server = ImdServer(settings)
        await self.server.start()
        self.addCleanup(self.server.stop)
        alice = await self.login(1)
        reply = await self.ask(alice, {"id": "h1", "to": 0, "type": "H", "msg": 0})
        self.assertEqual((reply["type"], reply["code"]), ("E", "unavailable"))
        reply = await self.ask(alice, {"id": "p1", "to": 0, "type": "P", "msg": 0})
        self.assertEqual(reply["type"], "P")


class SplitBatchTests(MigratorTestMixin, unittest.TestCase):

    async def test_a_half_that_fails_replays_the_batch_and_all_land_once(self):
        # A batch of 400 goes in as two inserts at once; the first one of the
        # first batch commits, the second fails as if MySQL went away.
        await self.befriend(1, 2)
        alice = await self.login(1)
        acked = await send_and_collect(alice, 1, 2, list(range(1000)))
        migrator = start_migrator(self, self.server.app.settings.replace("migrate", batch=400, inserts_at_once=2))
        insert, calls = migrator.mysql.insert_entries, []

        def second_half_fails_once(rows, receipts):
            calls.append(len(rows))
            if len(calls) == 2:
                return defer.fail(StoreUnavailable("mysql: injected failure"))
            return insert(rows, receipts)
        migrator.mysql.insert_entries = second_half_fails_once
        await with_drain(migrator)
        self.assertEqual(calls[:2], [200, 200])
        self.assertEqual(await self.rows_set(), acked)
        self.assertEqual(await self.redis.llen("MQ:processing"), 0)
        self.assertEqual((migrator.rows_migrated, migrator.rows_skipped), (1000, 200))


    async def test_by_default_a_batch_goes_in_as_one_insert(self):
        # ([migrate] inserts_at_once 1: two at once cost more CPU per row in
        # the migrator and in MariaDB, docs/performance.md "Migrator")
        await self.befriend(1, 2)
        alice = await self.login(1)
        acked = await send_and_collect(alice, 1, 2, list(range(1000)))
        migrator = start_migrator(self, self.server.app.settings.replace("migrate", batch=400))
        insert, calls = migrator.mysql.insert_entries, []

        def counted(rows, receipts):
            calls.append(len(rows))
            return insert(rows, receipts)
        migrator.mysql.insert_entries = counted
        await with_drain(migrator)
        self.assertEqual(calls, [400, 400, 200])
        self.assertEqual(await self.rows_set(), acked)


class LeaderTests(MigratorTestMixin, unittest.TestCase):

    async def test_one_leader_among_several_and_nothing_twice(self):
        settings = self.server.app.settings
        migrators = [start_migrator(self, settings) for _ in range(3)]
        await wait_until(lambda: any(m.is_leader for m in migrators), what="a leader")
        await self.befriend(1, 2)
        alice = await self.login(1)
        acked = await send_and_collect(alice, 1, 2, list(range(600)))
        leader = [m for m in migrators if m.is_leader]
        self.assertEqual(len(leader), 1)
        await with_drain(leader[0])
        self.assertEqual(sum(m.is_leader for m in migrators), 1)
        self.assertEqual(await self.rows_set(), acked)
        self.assertEqual(sum(m.rows_migrated for m in migrators), 600)

    async def test_standby_takes_over_when_the_leader_stops(self):
        settings = self.server.app.settings
        first = start_migrator(self, settings)
        await wait_until(lambda: first.is_leader, what="a leader")
        second = start_migrator(self, settings)
        await self.befriend(1, 2)
        alice = await self.login(1)
        acked = await send_and_collect(alice, 1, 2, list(range(100)))
        await with_drain(first)
        self.assertFalse(second.is_leader)
        await first.stopService()
        acked |= await send_and_collect(alice, 1, 2, list(range(100, 200)))
        await wait_until(lambda: second.is_leader, what="the standby leading")
        await with_drain(second)
        self.assertEqual(await self.rows_set(), acked)

    async def test_lag_is_sampled(self):
        settings = self.server.app.settings
        # Another holder keeps the lock: this migrator stands by and only measures.
        await self.redis.set("MQ:lock", "someone-else")
        clock = task.Clock()
        clock.advance(1000.0)
        client = RedisClient(settings.redis.url, settings.redis.timeout, reactor)
        client.startService()
        self.addCleanup(client.stopService)
        await client.wait_connected()
        migrator = Migrator(QueueStore(client, Keys()), None, settings.migrate, clock)
        for n, ts in enumerate((995000, 996000, 997000)):
            await self.redis.lpush("MQ", json.dumps({"id": n, "from": 1, "to": 2, "type": "t", "msg": "x", "ts": ts}))
        await migrator._sample_lag()
        self.assertEqual(migrator.queue_length, 3)
        self.assertAlmostEqual(migrator.oldest_age, 5.0)
        self.assertFalse(migrator.is_leader)


class ReconnectTests(MigratorTestMixin, unittest.TestCase):

    async def kill_pool_connections(self):
        from tests.mysql_support import query
        rows = await query(self.mysql_settings,
                           ("SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                            (self.mysql_settings.database,)))
        for (connection_id,) in rows:
            await query(self.mysql_settings, "KILL %d" % connection_id)
        return len(rows)

    async def test_connections_killed_by_the_server_are_replaced(self):
        migrator = start_migrator(self, self.server.app.settings)
        await self.befriend(1, 2)
        alice = await self.login(1)
        acked = await send_and_collect(alice, 1, 2, list(range(20)))
        await with_drain(migrator)
        reply = await self.ask(alice, {"id": "h1", "to": 0, "type": "H", "msg": 0})
        self.assertEqual(len(reply["msg"]), 20)
        # as after a MySQL restart or wait_timeout: every pooled connection is gone
        self.assertGreaterEqual(await self.kill_pool_connections(), 1)
        reply = await self.ask(alice, {"id": "h2", "to": 0, "type": "H", "msg": 0})
        self.assertEqual((reply["type"], len(reply["msg"])), ("H", 20))
        acked |= await send_and_collect(alice, 1, 2, list(range(20, 40)))
        await with_drain(migrator)
        self.assertEqual(await self.rows_set(), acked)


def _random_texts(count):
    import random
    rng = random.Random(5)
    alphabet = "ab \\\x00\n\r\x1a'\"\té中😀"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 24))) for _ in range(count)]


class QuoteTextTests(unittest.TestCase):
    """The migrator's string quoting is PyMySQL's escape_string but for the
    double quote, left as it is (pure logic); MariaDB reads each literal
    back as the text (below)."""

    def test_same_literal_as_pymysql_but_for_double_quotes(self):
        from pymysql.converters import escape_string

        from imd.stores.mysql import quote_text
        for text in _random_texts(5000):
            pymysql_way = "".join(escape_string(char) if char != '"' else char for char in text)
            self.assertEqual(quote_text(text), "'" + pymysql_way + "'", repr(text))


class QuoteTextServerTests(MysqlTestMixin, unittest.TestCase):

    async def test_mariadb_reads_each_literal_back_as_the_text(self):
        from imd.stores.mysql import quote_text
        texts = _random_texts(2000)
        for i in range(0, len(texts), 200):
            part = texts[i:i + 200]
            rows = await query(self.mysql_settings, "SELECT " + ",".join(quote_text(t) for t in part))
            self.assertEqual(list(rows[0]), part)

"""``R`` receipts (contract §7.1) over real WebSockets, Redis and MariaDB:
verified against what is stored, only forward, relayed to every connection
of the sender, stored through the migrator and shown by ``H`` to both sides."""

import json

from twisted.internet import defer
from twisted.trial import unittest

from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import MysqlTestMixin, query
from tests.support import (ClientMixin, ImdServer, PrivateRedis, RedisTestMixin, connect_client, drop,
                           make_settings, wait_until)
from tests.test_faults import prepare_redis
from tests.test_migrator import FAST, MigratorTestMixin


def receipt(packet_id, to, state, ids):
    return {"id": packet_id, "to": to, "type": "R", "msg": {"state": state, "ids": ids}}


class ReceiptTestMixin(MigratorTestMixin):
    overrides = FAST

    @defer.inlineCallbacks
    def send_texts(self, client, to, ids):
        for packet_id in ids:
            reply = yield self.ask(client, {"id": packet_id, "to": to, "type": "t", "msg": "text %s" % packet_id})
            self.assertEqual(reply["type"], "A", reply)

    @defer.inlineCallbacks
    def acked(self, client, packet):
        reply = yield self.ask(client, packet)
        self.assertEqual(reply["type"], "A", reply)
        return reply

    @defer.inlineCallbacks
    def nothing_relayed(self, reader, sender, reader_uid, sender_uid):
        """Nothing reached ``sender`` before a marker message sent now."""
        marker = "marker-%d" % id(object())
        yield self.acked(reader, {"id": marker, "to": sender_uid, "type": "t", "msg": "marker"})
        while True:
            packet = yield sender.next()
            self.assertNotIn(packet["type"], "RY", "something was relayed: %r" % packet)
            if packet["id"] == marker:
                return

    @defer.inlineCallbacks
    def states(self, client, with_uid):
        reply = yield self.ask(client, {"id": "h", "to": 0, "type": "H", "msg": {"since": 0, "with": with_uid}})
        self.assertEqual(reply["type"], "H", reply)
        return {(m["from"], str(m["id"])): m["state"] for m in reply["msg"] if not str(m["id"]).startswith("marker-")}

    def receipt_rows(self):
        d = query(self.mysql_settings, "SELECT from_id, msg_id, to_id, state FROM receipt ORDER BY accept_seq")
        return d.addCallback(lambda rows: [(f, bytes(m).decode("utf-8"), t, s) for f, m, t, s in rows])

    def mq_receipts(self):
        d = self.redis.lrange("MQ", 0, -1)
        return d.addCallback(lambda entries: [json.loads(e) for e in entries if json.loads(e)["type"] == "R"])


class ReceiptTests(ReceiptTestMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.befriend(1, 2)
        yield self.befriend(2, 3)
        self.alice = yield self.login(1)
        self.bob = yield self.login(2)

    async def test_delivered_then_read(self):
        await self.send_texts(self.alice, 2, ["m1", "m2"])
        await self.acked(self.bob, receipt("r1", 1, "delivered", ["m1", "m2"]))
        relayed = await self.alice.next()
        self.assertEqual({k: relayed[k] for k in ("id", "from", "to", "type")},
                         {"id": "r1", "from": 2, "to": 1, "type": "R"})
        self.assertEqual((relayed["msg"]["state"], relayed["msg"]["ids"]), ("delivered", ["m1", "m2"]))
        self.assertIsInstance(relayed["msg"]["ts"], int)
        await self.acked(self.bob, receipt("r2", 1, "read", ["m1"]))
        relayed = await self.alice.next()
        self.assertEqual((relayed["id"], relayed["msg"]["state"], relayed["msg"]["ids"]), ("r2", "read", ["m1"]))
        self.assertEqual(await self.states(self.alice, 2), {(1, "m1"): "read", (1, "m2"): "delivered"})
        self.assertEqual(await self.states(self.bob, 1), {(1, "m1"): "read", (1, "m2"): "delivered"})

    async def test_read_without_delivered_then_delivered_changes_nothing(self):
        await self.send_texts(self.alice, 2, [7])
        await self.acked(self.bob, receipt("r1", 1, "read", ["7"]))   # "7" names the id 7
        relayed = await self.alice.next()
        self.assertEqual((relayed["msg"]["state"], relayed["msg"]["ids"]), ("read", ["7"]))
        await self.acked(self.bob, receipt("r2", 1, "delivered", [7]))
        await self.nothing_relayed(self.bob, self.alice, 2, 1)
        self.assertEqual((await self.states(self.alice, 2))[(1, "7")], "read")

    async def test_repeated_and_out_of_order_receipts_relay_only_what_advanced(self):
        await self.send_texts(self.alice, 2, ["a", "b", "c"])
        await self.acked(self.bob, receipt("r1", 1, "read", ["b"]))
        self.assertEqual((await self.alice.next())["msg"]["ids"], ["b"])
        # b is read already, a and c advance; a repeated id counts once
        await self.acked(self.bob, receipt("r2", 1, "delivered", ["a", "b", "c", "a"]))
        relayed = await self.alice.next()
        self.assertEqual((relayed["msg"]["state"], relayed["msg"]["ids"]), ("delivered", ["a", "c"]))
        for packet_id in ("r3", "r4"):
            await self.acked(self.bob, receipt(packet_id, 1, "delivered", ["a", "b", "c"]))
        await self.nothing_relayed(self.bob, self.alice, 2, 1)
        self.assertEqual(len(await self.mq_receipts()), 2, "a receipt that changed nothing was stored")

    async def test_foreign_own_and_unknown_ids_are_ignored(self):
        carol = await self.login(3)
        await self.send_texts(self.alice, 2, ["secret"])
        await self.send_texts(self.bob, 3, ["to-carol"])
        await carol.next_of("t")
        # carol names alice's message to bob; bob names his own message to carol
        await self.acked(carol, receipt("r1", 1, "read", ["secret"]))
        await self.acked(self.bob, receipt("r2", 2, "read", ["to-carol"]))
        # alice claims bob's message to carol as hers; bob names ids nobody sent him
        await self.acked(self.alice, receipt("r3", 2, "read", ["to-carol"]))
        await self.acked(self.bob, receipt("r4", 1, "read", ["nope", 12345]))
        await self.acked(self.bob, receipt("r5", 3, "read", ["secret"]))
        await self.nothing_relayed(self.bob, self.alice, 2, 1)
        await self.nothing_relayed(self.alice, self.bob, 1, 2)
        self.assertEqual(await self.mq_receipts(), [])
        self.assertEqual(await self.states(self.alice, 2), {(1, "secret"): "sent"})
        self.assertEqual(await self.states(self.bob, 3), {(2, "to-carol"): "sent"})

    async def test_every_connection_of_the_sender_gets_it(self):
        alice_web = await self.login(1)
        await self.send_texts(self.alice, 2, ["m"])
        await self.acked(self.bob, receipt("r", 1, "read", ["m"]))
        for client in (self.alice, alice_web):
            self.assertEqual((await client.next_of("R"))["msg"]["ids"], ["m"])

    async def test_sender_offline_then_history_shows_read_before_and_after_migration(self):
        await self.send_texts(self.alice, 2, ["m1", "m2", "m3"])
        await drop(self.alice)
        await self.acked(self.bob, receipt("r1", 1, "delivered", ["m1", "m2", "m3"]))
        await self.acked(self.bob, receipt("r2", 1, "read", ["m1", "m2"]))
        alice = await self.login(1)
        expected = {(1, "m1"): "read", (1, "m2"): "read", (1, "m3"): "delivered"}
        self.assertEqual(await self.states(alice, 2), expected)
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        self.assertEqual(await self.redis.zcard("pending:1"), 0)
        self.assertEqual(await self.states(alice, 2), expected)
        self.assertEqual(await self.states(self.bob, 1), expected)
        self.assertEqual(sorted(await self.receipt_rows()),
                         [(1, "m1", 2, 1), (1, "m1", 2, 2), (1, "m2", 2, 1), (1, "m2", 2, 2), (1, "m3", 2, 1)])
        self.assertEqual(migrator.receipts_migrated, 5)

    async def test_expired_dedup_record_is_verified_against_mysql(self):
        await self.send_texts(self.alice, 2, ["old", "older"])
        await self.acked(self.bob, receipt("r1", 1, "delivered", ["older"]))
        await self.alice.next_of("R")
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        # as after [redis] dedup_ttl: the records are gone, MySQL has the messages
        self.assertEqual(await self.redis.delete("dedup:1:old", "dedup:1:older"), 2)
        await self.acked(self.bob, receipt("r2", 1, "delivered", ["older", "old", "never"]))
        relayed = await self.alice.next_of("R")
        self.assertEqual(relayed["msg"]["ids"], ["old"], "older was delivered already (MySQL says so)")
        # the records are back, with the state
        self.assertEqual(await self.redis.get("dedup:1:old"), "2:d")
        self.assertEqual(await self.redis.get("dedup:1:older"), "2:d")
        self.assertIsNone(await self.redis.get("dedup:1:never"))
        # carol cannot use MySQL to read alice's state either
        carol = await self.login(3)
        await self.redis.delete("dedup:1:old")
        await self.acked(carol, receipt("r3", 1, "read", ["old"]))
        self.assertIsNone(await self.redis.get("dedup:1:old"))
        await self.nothing_relayed(self.bob, self.alice, 2, 1)

    async def test_missing_record_of_an_unmigrated_message_is_verified_in_redis(self):
        await self.send_texts(self.alice, 2, ["m1", "m2"])
        await self.acked(self.bob, receipt("r1", 1, "delivered", ["m1"]))
        await self.alice.next_of("R")
        await self.redis.delete("dedup:1:m1", "dedup:1:m2")
        await self.acked(self.bob, receipt("r2", 1, "delivered", ["m1", "m2"]))
        self.assertEqual((await self.alice.next_of("R"))["msg"]["ids"], ["m2"])
        self.assertEqual(await self.redis.get("dedup:1:m1"), "2:d")

    async def test_a_message_to_the_reader_retried_after_a_receipt_is_still_a_duplicate(self):
        await self.send_texts(self.alice, 2, ["m"])
        await self.bob.next_of("t")
        await self.acked(self.bob, receipt("r1", 1, "read", ["m"]))
        await self.alice.next_of("R")
        await self.send_texts(self.alice, 2, ["m"])          # a retry: acked, not stored again
        self.assertEqual(len([e for e in await self.redis.lrange("MQ", 0, -1) if '"type":"t"' in e]), 1)

    async def test_bad_receipts(self):
        for n, msg in enumerate(({"state": "seen", "ids": ["a"]}, {"state": "read", "ids": []},
                                 {"state": "read", "ids": ["x"] * 101}, {"state": "read"},
                                 {"state": "read", "ids": "a"}, {"state": "read", "ids": [None]},
                                 {"state": "read", "ids": ["a" * 65]}, "read",
                                 {"state": "read", "ids": ["a"], "extra": 1})):
            reply = await self.ask(self.bob, {"id": n, "to": 1, "type": "R", "msg": msg})
            self.assertEqual((reply["type"], reply["code"]), ("E", "bad_packet"), msg)
        for to in (-1, "x", None, 1.5):
            reply = await self.ask(self.bob, receipt("t", to, "read", ["a"]))
            self.assertEqual((reply["type"], reply["code"]), ("E", "bad_packet"), to)
        await self.acked(self.bob, receipt("ok", 1, "read", ["x"] * 100))


class TwoNodeReceiptTests(ReceiptTestMixin, unittest.TestCase):
    overrides = dict(FAST)

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.node2 = yield ImdServer(make_settings(dict(self.overrides, imd={"node_id": "test-node-2"}))).start()
        self.addCleanup(self.node2.stop)

    @defer.inlineCallbacks
    def login_on(self, server, uid):
        client = yield connect_client(server.port, "/" + self.token(uid))
        self._clients.append(client)
        packet = yield client.next()
        assert packet["type"] == "L", packet
        return client

    async def test_sender_on_node_1_reader_on_node_2(self):
        await self.befriend(1, 2)
        alice = await self.login_on(self.server, 1)
        alice_phone = await self.login_on(self.node2, 1)
        bob = await self.login_on(self.node2, 2)
        await self.send_texts(alice, 2, ["m"])
        self.assertEqual((await bob.next_of("t"))["id"], "m")
        await self.acked(bob, receipt("r1", 1, "delivered", ["m"]))
        await self.acked(bob, receipt("r2", 1, "read", ["m"]))
        for client in (alice, alice_phone):
            self.assertEqual([(p["msg"]["state"], p["msg"]["ids"]) for p in
                              [await client.next_of("R"), await client.next_of("R")]],
                             [("delivered", ["m"]), ("read", ["m"])])
        # typing crosses nodes too
        self.assertEqual((await self.ask(bob, {"id": "y", "to": 1, "type": "Y", "msg": True}))["type"], "A")
        self.assertEqual((await alice.next_of("Y"))["msg"], True)


class RedisRestartTests(MysqlTestMixin, ClientMixin, RedisTestMixin, unittest.TestCase):
    """A private redis-server with AOF (appendfsync always), killed with
    SIGKILL and restarted: the states receipts reached survive, in history
    and in the dedup records that keep them moving forward only."""

    async def test_states_survive_a_redis_restart(self):
        private = PrivateRedis(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
        await private.start()
        self.addCleanup(private.stop)
        await prepare_redis(private.port)
        settings = make_settings(dict(FAST, redis={"timeout": "0.5"}, mysql={"database": self.mysql_settings.database}),
                                 redis_db=0, redis_port=private.port)
        server = await ImdServer(settings).start()
        self.addCleanup(server.stop)
        self.connect = lambda path: connect_client(server.port, path)
        alice, bob = await self.login(1), await self.login(2)
        for packet_id in ("m1", "m2"):
            self.assertEqual((await self.ask(alice, {"id": packet_id, "to": 2, "type": "t", "msg": "x"}))["type"], "A")
        self.assertEqual((await self.ask(bob, receipt("r1", 1, "read", ["m1"])))["type"], "A")
        self.assertEqual((await self.ask(bob, receipt("r2", 1, "delivered", ["m2"])))["type"], "A")
        await alice.next_of("R")
        await alice.next_of("R")
        private.process.kill()
        private.process.wait(10)
        await wait_until(lambda: not server.app.redis_client.connected, what="imd noticing redis is gone")
        await private.start()
        await wait_until(lambda: server.app.redis_client.connected and server.app.bus.healthy, seconds=30,
                         what="reconnection to the restarted redis")
        for client in (alice, bob):
            drop(client)
        alice, bob = await self.login(1), await self.login(2)
        reply = await self.ask(alice, {"id": "h", "to": 0, "type": "H", "msg": 0})
        self.assertEqual([(m["id"], m["state"]) for m in reply["msg"]], [("m1", "read"), ("m2", "delivered")])
        # still only forward: nothing relayed for what was reached before the restart
        self.assertEqual((await self.ask(bob, receipt("r3", 1, "delivered", ["m1", "m2"])))["type"], "A")
        self.assertEqual((await self.ask(bob, receipt("r4", 1, "read", ["m1", "m2"])))["type"], "A")
        relayed = await alice.next_of("R")
        self.assertEqual((relayed["id"], relayed["msg"]["ids"]), ("r4", ["m2"]))
        migrator = start_migrator(self, settings)
        await with_drain(migrator)
        rows = await query(self.mysql_settings, "SELECT msg_id, state FROM receipt ORDER BY accept_seq")
        self.assertEqual([(bytes(m).decode(), s) for m, s in rows], [("m1", 2), ("m2", 1), ("m2", 2)])

"""Redis going away: no A for an unstored message, refusals, self-healing."""

from twisted.internet import defer
from twisted.trial import unittest

from tests.support import (ImdServer, PrivateRedis, RedisTestMixin, connect_client, drop, key_pair,
                           make_settings, redis_connection, wait_until)


class OutageMixin(RedisTestMixin):
    """An imd on a private Redis of the test's own, which the test stops."""

    overrides: dict = {}

    async def prepare(self):
        conn = await redis_connection(db=0, port=self.private.port)
        public_pem, private_pem = key_pair()
        await conn.mset({"publicKey": public_pem, "privateKey": private_pem})
        await conn.sadd("URS:1", 2)
        await conn.sadd("URS:2", 1)
        await conn.disconnect()

    async def login(self, uid):
        client = await connect_client(self.server.port, "/" + self.token(uid))
        self.addCleanup(lambda: drop(client) if not client.closed.called else None)
        return client

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        self.private = yield PrivateRedis().start()
        self.addCleanup(self.private.stop)
        yield defer.ensureDeferred(self.prepare())
        settings = make_settings(dict(self.overrides, redis={"timeout": "0.5"}), redis_db=0,
                                 redis_port=self.private.port)
        self.server = yield ImdServer(settings).start()
        self.addCleanup(self.server.stop)


class RedisOutageTests(OutageMixin, unittest.TestCase):

    async def test_no_ack_while_redis_is_down_then_recovery(self):
        alice, bob = await self.login(1), await self.login(2)
        self.assertEqual((await alice.next())["type"], "L")
        self.assertEqual((await bob.next())["type"], "L")
        alice.send({"id": "before", "to": 2, "type": "t", "msg": "stored"})
        self.assertEqual((await alice.next())["type"], "A")
        self.assertEqual((await bob.next())["msg"], "stored")

        self.private.stop()
        for i in range(5):
            alice.send({"id": "down%d" % i, "to": 2, "type": "t", "msg": "lost?"})
        replies = [await alice.next() for _ in range(5)]
        self.assertEqual([(r["type"], r["code"]) for r in replies], [("E", "unavailable")] * 5)
        self.assertEqual([r["id"] for r in replies], ["down%d" % i for i in range(5)])

        refused = await connect_client(self.server.port, "/" + self.token(3))
        close = await refused.next()
        self.assertEqual(close["type"], "C")
        self.assertIn("unavailable", close["msg"])
        self.assertEqual((await refused.wait_closed())[0], 4001)

        await self.private.start()
        await self.prepare()
        app = self.server.app
        await wait_until(lambda: app.redis_client.connected and app.bus.healthy, seconds=30,
                         what="reconnection and re-subscription to redis")
        alice.send({"id": "down0", "to": 2, "type": "t", "msg": "retried"})
        self.assertEqual((await alice.next())["type"], "A")
        self.assertEqual((await bob.next())["msg"], "retried")
        # the node said again who is connected here, though Redis lost it all
        alice.send({"id": "o", "to": 0, "type": "O", "msg": 2})
        self.assertEqual((await alice.next())["msg"], {"uid": 2, "online": True})
        carol = await self.login(2)
        self.assertEqual((await carol.next())["type"], "L")


class RetryDuringOutageTests(OutageMixin, unittest.TestCase):
    """Issue 12 item 3: ``unavailable`` is the server's fault, not the
    client's: it never counts toward ``max_errors``."""

    overrides = {"websocket": {"max_errors": "3"}}

    async def test_a_client_retrying_through_an_outage_is_not_closed(self):
        alice = await self.login(1)
        self.assertEqual((await alice.next())["type"], "L")
        self.private.stop()
        retries = 12  # four times max_errors
        for i in range(retries):
            kind, msg = (("t", "retry"), ("O", 2), ("H", 0))[i % 3]
            alice.send({"id": i, "to": 2 if kind == "t" else 0, "type": kind, "msg": msg})
        replies = []
        while len(replies) < retries and (not replies or replies[-1]["type"] != "C"):
            replies.append(await alice.next())
        self.assertEqual([(r["type"], r.get("code"), r["id"]) for r in replies],
                         [("E", "unavailable", i) for i in range(retries)])
        alice.send({"id": "alive", "to": 0, "type": "P"})
        self.assertEqual(await alice.next(), {"id": "alive", "from": 0, "type": "P", "msg": "pong"})
        self.assertFalse(alice.closed.called)
        # the client's own mistakes still count
        for _ in range(3):
            alice.send_raw(b"x")
        self.assertEqual([(await alice.next())["type"] for _ in range(4)], ["E", "E", "E", "C"])
        self.assertEqual((await alice.wait_closed())[0], 4008)

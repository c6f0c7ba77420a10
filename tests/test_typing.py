"""``Y`` typing (contract §7.2): relayed to a friend, coalesced per
``[typing] min_interval``, refused for a non-friend, never stored."""

from twisted.internet import defer
from twisted.trial import unittest

from tests.migrator_support import start_migrator, with_drain
from tests.test_migrator import FAST, MigratorTestMixin


def typing(packet_id, to, value):
    return {"id": packet_id, "to": to, "type": "Y", "msg": value}


class TypingTests(MigratorTestMixin, unittest.TestCase):
    overrides = dict(FAST, typing={"min_interval": "0.5"})

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.befriend(1, 2)
        self.alice = yield self.login(1)
        self.bob = yield self.login(2)

    @defer.inlineCallbacks
    def acked(self, client, packet):
        reply = yield self.ask(client, packet)
        self.assertEqual(reply["type"], "A", reply)

    @defer.inlineCallbacks
    def relayed(self, client):
        """The Y packets ``client`` got before a marker text from its friend."""
        self.markers = getattr(self, "markers", 0) + 1
        marker = "marker-%d" % self.markers
        yield self.acked(self.alice, {"id": marker, "to": 2, "type": "t", "msg": "marker"})
        found = []
        while True:
            packet = yield client.next()
            if packet["id"] == marker:
                return found
            found.append((packet["type"], packet["from"], packet["to"], packet["msg"], packet["id"]))

    async def test_relayed_and_coalesced(self):
        await self.acked(self.alice, typing("y1", 2, True))
        await self.acked(self.alice, typing("y2", 2, True))       # inside the window: acked only
        await self.acked(self.alice, typing("y3", "2", False))    # a stop always goes
        await self.acked(self.alice, typing("y4", 2, True))       # still inside the window
        self.assertEqual(await self.relayed(self.bob), [("Y", 1, 2, True, "y1"), ("Y", 1, 2, False, "y3")])
        ttl = await self.redis.execute_command("PTTL", "typing:1:2")
        self.assertTrue(0 < ttl <= 500, ttl)
        # once the window is over (the key expired), the next true goes at once
        await self.redis.delete("typing:1:2")
        await self.acked(self.alice, typing("y5", 2, True))
        self.assertEqual(await self.relayed(self.bob), [("Y", 1, 2, True, "y5")])
        # the other direction has a window of its own
        await self.acked(self.bob, typing("b1", 1, True))
        self.assertEqual((await self.alice.next_of("Y"))["id"], "b1")

    async def test_non_friend_refused(self):
        reply = await self.ask(self.alice, typing("y", 3, True))
        self.assertEqual((reply["type"], reply["code"]), ("E", "not_friend"))
        for bad in ("yes", 1, None, {"typing": True}):
            reply = await self.ask(self.alice, typing("b", 2, bad))
            self.assertEqual((reply["type"], reply["code"]), ("E", "bad_packet"), bad)
        reply = await self.ask(self.alice, typing("b", 0, True))
        self.assertEqual((reply["type"], reply["code"]), ("E", "bad_packet"))

    async def test_never_stored(self):
        migrator = start_migrator(self, self.server.app.settings)
        await self.acked(self.alice, typing("y1", 2, True))
        await self.acked(self.alice, typing("y2", 2, False))
        await self.acked(self.alice, {"id": "t", "to": 2, "type": "t", "msg": "hello"})
        self.assertEqual([p["type"] for p in [await self.bob.next() for _ in range(3)]], ["Y", "Y", "t"])
        reply = await self.ask(self.bob, {"id": "h", "to": 0, "type": "H", "msg": 0})
        self.assertEqual([m["id"] for m in reply["msg"]], ["t"])
        await with_drain(migrator)
        rows = await self.message_rows()
        self.assertEqual([(f, m) for f, m, _ in rows], [(1, "t")])
        self.assertEqual(await self.redis.llen("MQ"), 0)

"""Erasure of a user (contract v3 §11) as the platform, the operator and the
other users see it: the answer's count, the D packets, the tombstones in H
and MySQL, friendships, position and pending push gone, connections closed
with 4003, a repeat answering 0; and an erasure killed half way (kill -9 of
``imd-admin user erase``) finished by running it again."""

import os
import signal

from twisted.internet import defer, protocol, reactor

from twisted.trial import unittest

from tests.admin_support import ADMIN, ROOT, AdminAppMixin
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import query
from tests.support import wait_until
from tests.test_api import ApiTestMixin
from tests.test_history import store_entries, stored
from tests.test_recall import SECRET, RecallMixin


class EraseApiTests(RecallMixin, ApiTestMixin, unittest.TestCase):

    async def test_erase_removes_what_the_contract_lists_and_a_repeat_answers_0(self):
        await self.befriend(1, 2)
        await self.befriend(1, 3)
        alice, bob, carol = await self.login(1), await self.login(2), await self.login(3)
        for n in range(3):
            self.assertEqual((await self.ask(alice, {"id": "a%d" % n, "to": 2, "type": "t", "msg": SECRET}))["type"],
                             "A")
        await self.ask(alice, {"id": "img", "to": 3, "type": "i", "msg": "image-id"})
        await self.ask(bob, {"id": "b0", "to": 1, "type": "t", "msg": "bob's own"})
        await self.ask(alice, {"id": "s", "to": 0, "type": "S", "msg": {"lng": 1.0, "lat": 2.0}})
        self.assertEqual(await self.redis.execute_command("EXISTS", "conv:1", "convlast:1", "unread:1:2"), 3)
        response = await self.api("POST", "users/1/erase")
        self.assertEqual((response.code, response.json()), (200, {"messages": 4}), response)
        self.assertEqual((await alice.wait_closed())[0], 4003)
        recalled = set()
        for client, count in ((bob, 3), (carol, 1)):
            for _ in range(count):
                packet = await client.next_of("D")
                self.assertEqual(packet["from"], 1)
                recalled.add(packet["msg"])
        self.assertEqual(recalled, {"a0", "a1", "a2", "img"})
        history = await self.history(bob)
        self.assertEqual([(m["id"], m["msg"], m.get("recalled")) for m in history],
                         [("a0", "", True), ("a1", "", True), ("a2", "", True), ("b0", "bob's own", None)])
        self.assertNotIn(SECRET, await self.redis_text())
        self.assertEqual(await self.redis.smembers("URS:1"), set())
        self.assertNotIn(b"1", {str(m).encode() for m in await self.redis.smembers("URS:2")})
        self.assertEqual(await self.redis.exists("site:1"), 0)
        # its own conversation list is gone; the others' keep their rows (the text emptied)
        self.assertEqual(await self.redis.execute_command("EXISTS", "conv:1", "convlast:1", "unread:1:2",
                                                          "unread:1:3"), 0)
        self.assertEqual(await self.redis.execute_command("EXISTS", "conv:2", "convlast:2"), 2)
        self.assertIsNone(await self.redis.zscore("geo:couriers", 1))
        for path in ("users/1/erase", "users/99/erase"):
            response = await self.api("POST", path)
            self.assertEqual((response.code, response.json()), (200, {"messages": 0}), response)
        # not banned: signs in again and starts afresh
        again = await self.login(1)
        history = await self.history(again)
        self.assertEqual([(m["id"], m["msg"]) for m in history if m["from"] == 1],
                         [("a0", ""), ("a1", ""), ("a2", ""), ("img", "")])
        response = await self.api("POST", "users/x/erase")
        self.assert_error(response, 400)


class Spawned(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()
        self.output = b""

    def childDataReceived(self, fd, data):
        self.output += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class EraseKilledTests(AdminAppMixin, unittest.TestCase):

    def d_count(self):
        return query(self.mysql_settings, "SELECT COUNT(*) FROM message WHERE type = 'D'")

    async def test_killed_half_way_then_run_again_finishes_with_one_d_each(self):
        now = int(reactor.seconds() * 1000)
        total = 3000
        await store_entries(self.redis, [stored("m%d" % n, 1, 2 + n % 3, now - total + n, SECRET)
                                         for n in range(total)])
        migrator = start_migrator(self, self.settings)
        await with_drain(migrator, 30)
        seq_before = int(await self.redis.get("MQ:seq"))
        proc = Spawned()
        transport = reactor.spawnProcess(proc, ADMIN, [ADMIN, "--config", self.config_file(), "user", "erase", "1"],
                                         env=dict(os.environ), path=ROOT)
        # each D takes one seq
        await wait_until(lambda: self.redis.get("MQ:seq").addCallback(lambda n: int(n) - seq_before >= 200),
                         what="some recalls")
        os.kill(transport.pid, signal.SIGKILL)
        await proc.ended
        first = int(await self.redis.get("MQ:seq")) - seq_before
        self.assertLess(first, total, "the erasure was not cut short")
        out, _, _ = await self.admin("user", "erase", "1")
        self.assertEqual(out, "erase: uid 1, %d message(s) recalled\n" % (total - first))
        await with_drain(migrator, 30)
        rows = await query(self.mysql_settings, "SELECT COUNT(*), SUM(recalled), SUM(msg = '') FROM message"
                                                " WHERE from_id = 1 AND type = 't'")
        self.assertEqual([tuple(int(v) for v in row) for row in rows], [(total, total, total)])
        self.assertEqual(int((await self.d_count())[0][0]), total)
        out, _, _ = await self.admin("user", "erase", "1")
        self.assertEqual(out, "erase: uid 1, 0 message(s) recalled\n")

"""Several imd nodes on one Redis: routing, multi-device, kick, a node killed with -9."""

import os
import subprocess
import sys

from twisted.internet import defer
from twisted.trial import unittest

from imd import busframes

from tests.daemon_support import start_daemon, write_config
from tests.mysql_support import MysqlTestMixin
from tests.support import ImdServer, ServerTestMixin, connect_client, drop, make_settings, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TwoNodeTests(ServerTestMixin, unittest.TestCase):
    overrides = {"websocket": {"rate": "1000", "burst": "1000"}}

    @defer.inlineCallbacks
    def setUp(self):
        yield ServerTestMixin.setUp(self)
        self.node2 = yield ImdServer(make_settings(dict(self.overrides, imd={"node_id": "test-node-2"}))).start()
        self.addCleanup(self.node2.stop)

    async def test_text_both_ways_between_nodes(self):
        await self.befriend(1, 2)
        alice = await self.login_on(self.server, 1)
        bob = await self.login_on(self.node2, 2)
        self.assertEqual((await self.ask(alice, {"id": "a", "to": 2, "type": "t", "msg": "to node 2"}))["type"], "A")
        self.assertEqual((await bob.next())["msg"], "to node 2")
        self.assertEqual((await self.ask(bob, {"id": "b", "to": 1, "type": "t", "msg": "to node 1"}))["type"], "A")
        self.assertEqual((await alice.next())["msg"], "to node 1")

    async def test_second_device_on_the_other_node_gets_a_copy(self):
        await self.befriend(1, 2)
        alice = await self.login_on(self.server, 1)
        bob_phone = await self.login_on(self.node2, 2)
        bob_web = await self.login_on(self.server, 2)
        for i in range(20):
            alice.send({"id": i, "to": 2, "type": "t", "msg": "m%d" % i})
        self.assertEqual([(await alice.next())["type"] for _ in range(20)], ["A"] * 20)
        self.assertEqual([(await bob_phone.next())["msg"] for _ in range(20)], ["m%d" % i for i in range(20)])
        self.assertEqual([(await bob_web.next())["msg"] for _ in range(20)], ["m%d" % i for i in range(20)])

    async def test_one_frame_per_message_and_node(self):
        # the sending node's frame carries the packet for the recipient's
        # and the sender's other connection there, and lets the A go; with
        # nobody else there it carries no packet at all (imd.busframes 'x')
        await self.befriend(1, 2)
        alice = await self.login_on(self.server, 1)
        bob_phone = await self.login_on(self.node2, 2)
        frames = []
        original = busframes.decode

        def decode(frame):
            frames.append(frame)
            return original(frame)
        self.patch(busframes, "decode", decode)
        ack = await self.ask(alice, {"id": "a", "to": 2, "type": "t", "msg": "one"})
        self.assertEqual(((await bob_phone.next())["msg"], ack["type"]), ("one", "A"))
        await wait_until(lambda: len(frames) == 2, what="both frames")
        own = [f for f in frames if f.startswith(b"x ")]
        self.assertEqual(len(own), 1, frames)
        self.assertEqual(own[0].split(b" ")[3], b"%d" % ack["pos"])
        self.assertEqual(len(own[0].split(b" ")), 4, "no packet: nobody else on that node")
        alice_web = await self.login_on(self.server, 1)
        bob_web = await self.login_on(self.server, 2)
        del frames[:]
        ack = await self.ask(alice, {"id": "b", "to": 2, "type": "t", "msg": "two"})
        for client in (bob_phone, bob_web, alice_web):
            packet = await client.next()
            self.assertEqual((packet["msg"], packet["pos"]), ("two", ack["pos"]))
        self.assertEqual(len(frames), 2, frames)   # one for each node
        self.assertEqual(sorted(f[:1] for f in frames), [b"d", b"x"])

    async def test_online_is_right_whichever_node_the_user_is_on(self):
        await self.befriend(1, 2)
        alice = await self.login_on(self.server, 1)
        bob = await self.login_on(self.node2, 2)
        reply = await self.ask(alice, {"id": "o", "to": 0, "type": "O", "msg": 2})
        self.assertEqual(reply["msg"], {"uid": 2, "online": True})
        await drop(bob)
        async def offline():
            return (await self.ask(alice, {"id": "o", "to": 0, "type": "O", "msg": 2}))["msg"]["online"] is False
        await wait_until(lambda: defer.ensureDeferred(offline()), what="bob offline")

    async def test_max_devices_counts_every_node(self):
        devices = []  # max_devices = 5 by default
        for i in range(5):
            devices.append(await self.login_on(self.server if i % 2 else self.node2, 7))
        newest = await self.login_on(self.server, 7)
        oldest = devices[0]  # on node 2
        close = await oldest.next()
        self.assertEqual(close["type"], "C")
        self.assertEqual((await oldest.wait_closed())[0], 4002)
        self.assertFalse(devices[1].closed.called)
        self.assertFalse(newest.closed.called)

    async def test_kick_reaches_every_node(self):
        here = await self.login_on(self.server, 9)
        there = await self.login_on(self.node2, 9)
        bystander = await self.login_on(self.node2, 10)
        config = write_config(self)
        result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "imd-admin"), "--config", config,
                                 "kick", "9", "--reason", "account suspended"],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("told 2 node(s)", result.stdout)
        for client in (here, there):
            close = await client.next()
            self.assertEqual((close["type"], close["msg"]), ("C", "account suspended"))
            self.assertEqual((await client.wait_closed())[0], 4003)
        self.assertFalse(bystander.closed.called)

    async def test_lost_subscription_refuses_then_heals(self):
        await self.befriend(1, 2)
        alice = await self.login_on(self.node2, 1)
        bob = await self.login_on(self.server, 2)
        bus = self.node2.app.bus
        bus.drop_subscription()
        self.assertFalse(bus.healthy)
        reply = await self.ask(alice, {"id": "x", "to": 2, "type": "t", "msg": "while cut off"})
        self.assertEqual((reply["type"], reply["code"]), ("E", "unavailable"))
        await wait_until(lambda: bus.healthy, what="re-subscription")
        self.assertEqual((await self.ask(alice, {"id": "x", "to": 2, "type": "t", "msg": "back"}))["type"], "A")
        self.assertEqual((await bob.next())["msg"], "back")
        self.assertEqual((await self.ask(bob, {"id": "y", "to": 1, "type": "t", "msg": "reply"}))["type"], "A")
        self.assertEqual((await alice.next())["msg"], "reply")


class KilledNodeTests(MysqlTestMixin, ServerTestMixin, unittest.TestCase):
    overrides = {"presence": {"ttl": "2"}, "websocket": {"rate": "1000", "burst": "1000"}}

    async def test_users_of_a_killed_node_go_offline_and_keep_their_messages(self):
        import signal
        await self.befriend(1, 2)
        config = write_config(self, {"imd": {"node_id": "test-node-doomed"}, "presence": {"ttl": "2"}})
        doomed = await start_daemon(self, config)
        bob = await connect_client(doomed.port, "/" + self.token(2))
        self.addCleanup(lambda: drop(bob) if not bob.closed.called else None)
        self.assertEqual((await bob.next())["type"], "L")
        alice = await self.login(1)
        reply = await self.ask(alice, {"id": "o1", "to": 0, "type": "O", "msg": 2})
        self.assertEqual(reply["msg"]["online"], True)

        doomed.signal(signal.SIGKILL)
        await doomed.wait_ended()
        started = self.server.app.clock.seconds()

        async def offline():
            reply = await self.ask(alice, {"id": "o2", "to": 0, "type": "O", "msg": 2})
            return reply["msg"]["online"] is False
        await wait_until(lambda: defer.ensureDeferred(offline()), seconds=6, what="bob offline")
        self.assertLessEqual(self.server.app.clock.seconds() - started, 2 + 1.0)

        for i in range(3):
            reply = await self.ask(alice, {"id": "k%d" % i, "to": 2, "type": "t", "msg": "while away %d" % i})
            self.assertEqual(reply["type"], "A", reply)
        self.assertEqual(await self.redis.llen("MQ"), 3)

        bob_again = await self.login(2)
        history = await self.ask(bob_again, {"id": "h", "to": 0, "type": "H", "msg": {"since": 0, "with": 1}})
        self.assertEqual([m["msg"] for m in history["msg"]], ["while away %d" % i for i in range(3)])

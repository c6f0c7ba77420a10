"""Contract §11 in rooms (§9): masked text and blocked words on room ``t``
messages as for one-to-one; positions of a courier to the members of the
rooms whose meta tracks it, stopping at the room's close on every node."""

import json
import os
import random
import socket
import time

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from imd.errors import ImdError
from imd.handlers import erasure
from tests.daemon_support import start_daemon, write_config
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import query
from tests.support import DEADLINE, connect_client, mq_entries, redis_db, wait_until, with_deadline
from tests.test_api import ApiTestMixin
from tests.test_migrator_crash import CrashTests, MigratorProcess
from tests.test_privacy import PositionTestMixin, next_is_pong, redis_dump
from tests.test_push import PushTestMixin
from tests.test_rooms import ROOM, RoomTestMixin, SyncTests, TwoNodeMixin


def monitor_lines(ready, until):
    """What Redis's MONITOR shows (lines, bytes) from ``ready()`` (called once
    it watches) to the first line holding ``until`` (in a thread)."""
    sock = socket.create_connection(("127.0.0.1", 6379), timeout=DEADLINE)
    try:
        sock.sendall(b"MONITOR\r\n")
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        data = data.split(b"\r\n", 1)[1]
        ready()
        lines = []
        while True:
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return lines
                data += chunk
            line, data = data.split(b"\r\n", 1)
            lines.append(line)
            if until in line:
                return lines
    finally:
        sock.close()


class RoomMaskingTests(RoomTestMixin, unittest.TestCase):
    overrides = dict(RoomTestMixin.overrides, privacy={"mask": "phone, email"})

    async def test_a_room_message_is_masked_before_it_is_stored(self):
        await self.admin.create(ROOM, [1, 2])
        alice, bob = await self.login(1), await self.login(2)
        reply = await self.send(alice, "m1", "call me on +44 20 7946 0958 or bob@example.com")
        self.assertEqual((reply["type"], reply["seq"], reply.get("masked")), ("A", 1, True))
        masked = "call me on [phone] or [email]"
        self.assertEqual((await bob.next())["msg"], masked)
        self.assertEqual([json.loads(e)["msg"] for e in await self.redis.lrange("MQ", 0, -1)], [masked])
        packets, _ = await self.room_history(bob)
        self.assertEqual([p["msg"] for p in packets], [masked])
        # nothing replaced, nothing said
        reply = await self.send(alice, "m2", "on my way")
        self.assertNotIn("masked", reply)
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        rows = await query(self.mysql_settings, "SELECT seq, msg FROM room_message WHERE room = '%s'" % ROOM)
        self.assertEqual(sorted((int(s), m) for s, m in rows), [(1, masked), (2, "on my way")])


class RoomBlocklistTests(RoomTestMixin, unittest.TestCase):

    def setUp(self):
        self.blocklist = os.path.abspath(self.mktemp())
        with open(self.blocklist, "w", encoding="utf-8") as f:
            f.write("scam\n坏蛋\n")
        self.overrides = dict(RoomTestMixin.overrides, moderation={"blocklist": self.blocklist, "action": "refuse"})
        return RoomTestMixin.setUp(self)

    async def test_a_blocked_word_is_refused_stores_nothing_takes_no_seq(self):
        await self.admin.create(ROOM, [1, 2])
        alice, bob = await self.login(1), await self.login(2)
        for text in ("a SCAM", "ｓｃａｍ", "你是坏蛋"):
            reply = await self.send(alice, text, text)
            self.assertEqual((reply["type"], reply["code"]), ("E", "blocked"), text)
        await next_is_pong(self, bob)
        self.assertEqual(await mq_entries(self.redis), [])
        self.assertEqual(await self.redis.zcard("roompending:%s" % ROOM), 0)
        reply = await self.send(alice, "ok", "a fair price")
        self.assertEqual((reply["type"], reply["seq"]), ("A", 1))
        self.assertEqual((await bob.next())["msg"], "a fair price")


class RoomNowhereButMaskedTests(RoomTestMixin, unittest.TestCase):
    """A daemon (ws + migrate, [log] messages = true) takes a room burst of
    texts full of numbers, addresses and blocked words: every Redis key,
    every MySQL row and the daemon's log hold only the masked text."""

    SECRETS = 10

    def secret_text(self, i):
        return "ring +44 20 7946 %04d, mail agent.%d@courier-mail.example, no forbiddenword%d" % (i, i, i)

    def secrets(self, i):
        return ["7946 %04d" % i, "agent.%d@" % i, "courier-mail", "forbiddenword"]

    async def test_the_original_text_of_a_room_message_is_written_nowhere(self):
        blocklist = os.path.abspath(self.mktemp())
        with open(blocklist, "w", encoding="utf-8") as f:
            f.write("forbiddenword\n")
        overrides = dict(self.overrides, imd={"roles": "ws, migrate"}, privacy={"mask": "phone, email"},
                         moderation={"blocklist": blocklist, "action": "mask"}, log={"messages": "true"},
                         migrate={"interval": "0.05"})
        daemon = await start_daemon(self, write_config(self, overrides))
        await self.admin.create(ROOM, [1, 2])
        alice = await connect_client(daemon.port, "/" + self.token(1))
        bob = await connect_client(daemon.port, "/" + self.token(2))
        for client in (alice, bob):
            self._clients.append(client)
            self.assertEqual((await client.next())["type"], "L")
        for i in range(self.SECRETS):
            alice.send({"id": "m%d" % i, "room": ROOM, "type": "t", "msg": self.secret_text(i)})
        acks = [await alice.next() for _ in range(self.SECRETS)]
        self.assertEqual([(a["type"], a["seq"], a.get("masked")) for a in acks],
                         [("A", i + 1, True) for i in range(self.SECRETS)])
        received = [(await bob.next())["msg"] for _ in range(self.SECRETS)]
        self.assertEqual(received[3], "ring [phone], mail [email], no *************3")

        async def migrated():
            rows = await query(self.mysql_settings, "SELECT COUNT(*) FROM room_message")
            return rows[0][0] == self.SECRETS
        await wait_until(migrated, seconds=30, what="the burst in MySQL")
        tables = await query(self.mysql_settings, "SHOW TABLES")
        mysql_rows = []
        for (table,) in tables:
            mysql_rows.append(repr(await query(self.mysql_settings, "SELECT * FROM `%s`" % table)))
        places = {"redis": await redis_dump(self.redis), "mysql": "\n".join(mysql_rows),
                  "log": daemon.output() + daemon.stderr.decode("utf-8", "replace")}
        for i in range(self.SECRETS):
            for secret in self.secrets(i):
                for place, text in places.items():
                    self.assertNotIn(secret, text, "%r found in %s" % (secret, place))
        masked = "ring [phone], mail [email], no *************7"
        for place in ("mysql", "log"):
            self.assertIn(masked, places[place], place)


class RoomPositionTests(PositionTestMixin, unittest.TestCase):
    """[privacy] positions = orders: a courier's S also goes to the members
    of the open rooms whose meta has "track": <courier>, with "room"."""

    async def next_room_position(self, client, room=ROOM):
        packet = await client.next()
        self.assertEqual((packet["type"], packet["from"], packet.get("room")), ("S", 20, room), packet)
        return packet["msg"]["longitude"]

    async def test_members_of_a_tracking_room_get_it_until_its_close_on_the_other_node(self):
        admin = self.server.app.room_admin
        await admin.create(ROOM, [10, 20, 30], {"track": 20})
        await admin.create("order:43", [11, 20], {"note": "tracks nobody"})
        courier = await self.login_on(self.server, 20)
        customer = await self.login_on(self.node2, 10)
        agent = await self.login_on(self.server, 30)
        other = await self.login_on(self.node2, 11)
        await self.position(courier, 3)
        self.assertEqual((await self.next_room_position(customer), await self.next_room_position(agent)), (3, 3))
        await self.gets_nothing(other)
        await self.gets_nothing(courier)
        # closed through the other node; its grace has only begun
        await self.node2.app.room_admin.close(ROOM)
        for client in (customer, agent, courier):
            self.assertEqual((await client.next())["msg"]["event"], "closed")
        await admin.create("order:44", [30, 20], {"track": 20})
        await self.position(courier, 4)
        self.assertEqual(await self.next_room_position(agent, "order:44"), 4)
        await self.gets_nothing(customer)
        self.assertEqual(await self.redis.smembers("roomtrack:20"), {"order:44"})

    async def test_a_meta_that_stops_tracking_stops_it(self):
        admin = self.server.app.room_admin
        await admin.create(ROOM, [10, 20], {"track": 20})
        courier, customer = await self.login(20), await self.login(10)
        await self.position(courier, 1)
        self.assertEqual(await self.next_room_position(customer), 1)
        await admin.create(ROOM, [10, 20], {"track": 21})
        await self.position(courier, 2)
        await self.gets_nothing(customer)

    async def test_a_track_that_is_not_a_user_id_is_refused(self):
        for bad in ("20", -1, 1.5, True, 2 ** 63):
            with self.assertRaises(ImdError) as refused:
                await self.server.app.room_admin.create(ROOM, [10, 20], {"track": bad})
            self.assertEqual(refused.exception.code, "bad_packet")
        self.assertEqual(await self.redis.exists("room:%s" % ROOM), 0)


class FriendsModeRoomPositionTests(PositionTestMixin, unittest.TestCase):
    overrides = dict(PositionTestMixin.overrides, privacy={"positions": "friends"})

    async def test_friends_mode_ignores_rooms(self):
        await self.server.app.room_admin.create(ROOM, [10, 20], {"track": 20})
        await self.befriend(20, 11)
        courier, customer, friend = await self.login(20), await self.login(10), await self.login(11)
        await self.position(courier, 1)
        self.assertEqual(await self.next_position(friend), 1)
        await self.gets_nothing(customer)


D_FIELDS = ("id", "from", "room", "type", "msg", "ts", "pos")


class RoomRecallTests(RoomTestMixin, unittest.TestCase):
    """Contract §11 recall in a room: D → A with pos, the D to every member
    and the sender's other devices, no seq, H {"room"} shows the tombstone,
    sync shows the D and the tombstone, the text leaves Redis and MySQL."""

    sync = SyncTests.sync

    async def setup_room(self):
        await self.admin.create(ROOM, [1, 2, 3])
        self.alice, self.alice_web = await self.login(1), await self.login(1)
        self.bob, self.carol = await self.login(2), await self.login(3)

    async def test_recall_reaches_every_member_and_takes_no_seq(self):
        await self.setup_room()
        sent = await self.send(self.alice, "m1", "wrong address, sorry")
        for client in (self.alice_web, self.bob, self.carol):
            self.assertEqual((await client.next())["id"], "m1")
        reply = await self.ask(self.alice, {"id": "d1", "room": ROOM, "type": "D", "msg": "m1"})
        self.assertEqual((reply["type"], reply["msg"]), ("A", "success"), reply)
        self.assertGreater(reply["pos"], sent["pos"])
        self.assertNotIn("seq", reply)
        for client in (self.alice_web, self.bob, self.carol):
            packet = await client.next()
            self.assertEqual(sorted(packet), sorted(D_FIELDS), packet)
            self.assertEqual({k: packet[k] for k in ("id", "from", "room", "type", "msg", "pos")},
                             {"id": "d1", "from": 1, "room": ROOM, "type": "D", "msg": "m1", "pos": reply["pos"]})
        await next_is_pong(self, self.alice)   # the sending connection got only its A
        # no seq taken: the next room message is 2
        self.assertEqual((await self.send(self.bob, "m2", "ok"))["seq"], 2)
        packets, _ = await self.room_history(self.carol)
        self.assertEqual([(p["id"], p["seq"], p["msg"], p.get("recalled")) for p in packets],
                         [("m1", 1, "", True), ("m2", 2, "ok", None)])
        stream = await self.sync(self.carol)
        self.assertEqual([(p["id"], p["type"], p["msg"]) for p in stream],
                         [("m1", "t", ""), ("d1", "D", "m1"), ("m2", "t", "ok")])
        self.assertNotIn("wrong address", await redis_dump(self.redis))
        # a retry of the D is acked again, nothing more; a second recall is a dup
        again = await self.ask(self.alice, {"id": "d1", "room": ROOM, "type": "D", "msg": "m1"})
        self.assertEqual((again["type"], again.get("dup")), ("A", True))
        other = await self.ask(self.alice_web, {"id": "d2", "room": ROOM, "type": "D", "msg": "m1"})
        self.assertEqual((other["type"], other.get("dup")), ("A", True))
        await next_is_pong(self, self.bob)

        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        self.assertEqual(await self.redis.zcard("roompending:%s" % ROOM), 0)
        rows = await query(self.mysql_settings, "SELECT seq, msg, packet FROM room_message WHERE room = '%s'" % ROOM)
        self.assertEqual(sorted((int(s), m) for s, m, _ in rows), [(1, ""), (2, "ok")])
        self.assertNotIn("wrong address", repr(rows))
        recalls = await query(self.mysql_settings, "SELECT accept_seq, room, msg_id, from_id, recalled_id"
                                                   " FROM room_recall")
        self.assertEqual([(int(p), r, bytes(i), int(f), bytes(m)) for p, r, i, f, m in recalls],
                         [(reply["pos"], ROOM, b"d1", 1, b"m1")])
        # all from MySQL now: the same as before
        packets, _ = await self.room_history(self.carol)
        self.assertEqual([(p["id"], p["seq"], p["msg"], p.get("recalled")) for p in packets],
                         [("m1", 1, "", True), ("m2", 2, "ok", None)])
        self.assertEqual([(p["id"], p["type"], p["msg"]) for p in await self.sync(self.carol)],
                         [("m1", "t", ""), ("d1", "D", "m1"), ("m2", "t", "ok")])
        later = await self.ask(self.alice, {"id": "d3", "room": ROOM, "type": "D", "msg": "m1"})
        self.assertEqual((later["type"], later.get("dup")), ("A", True))

    async def test_a_d_naming_no_message_reads_nothing_of_the_rooms_backlog(self):
        # a member's D for an id that was never sent has no dedup record: the
        # script looked through every entry of roompending:<room> for it (a
        # room's backlog while the migrator is behind: ~0.2 s of Redis per D
        # at 100,000 entries, every client of that Redis waiting). Within the
        # window a message has its record (dedup_ttl >= recall_window): the
        # script goes on to MySQL without looking
        await self.setup_room()
        await self.send(self.alice, "m1", "hello")
        db = redis_db()
        started, lines = defer.Deferred(), threads.deferToThread(monitor_lines, lambda: reactor.callFromThread(
            started.callback, None), b'"ECHO" "end of the D"')
        await started
        try:
            refused = await self.ask(self.bob, {"id": "d9", "room": ROOM, "type": "D", "msg": "never-sent"})
        finally:
            await self.redis.execute_command("ECHO", "end of the D")
        self.assertEqual((refused["type"], refused["code"]), ("E", "not_found"), refused)
        scans = [line for line in await lines
                 if (b"[%d lua]" % db) in line and b'"ZRANGE"' in line and b"roompending:" in line]
        self.assertEqual(scans, [])
        # a real recall still finds its message by its record
        reply = await self.ask(self.alice, {"id": "d1", "room": ROOM, "type": "D", "msg": "m1"})
        self.assertEqual((reply["type"], reply["msg"]), ("A", "success"), reply)

    async def test_a_sync_from_between_a_message_and_its_d_gets_the_d(self):
        # the D is the room's latest packet: a sync from the message's pos must still find the
        # room (a D does not move it in the conversation list, so not through roomconv:)
        await self.setup_room()
        sent = await self.send(self.alice, "m1", "wrong address, sorry")
        reply = await self.ask(self.alice, {"id": "d1", "room": ROOM, "type": "D", "msg": "m1"})
        self.assertEqual(reply["type"], "A", reply)
        for client in (self.bob, self.carol):
            self.assertEqual([(p["id"], p["type"]) for p in await self.sync(client, sent["pos"])], [("d1", "D")])
            self.assertEqual(await self.sync(client, reply["pos"]), [])
        # the same once the D and the message are in MySQL
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        self.assertEqual([(p["id"], p["type"]) for p in await self.sync(self.carol, sent["pos"])], [("d1", "D")])
        # the conversation list still has the room at its message, not at the D
        self.assertEqual(await self.redis.zscore("roomconv:3", ROOM), sent["pos"])
        self.assertEqual(await self.redis.zscore("roomsync:3", ROOM), reply["pos"])

    async def test_not_found_and_too_late(self):
        await self.setup_room()
        await self.admin.create("order:43", [1, 2])
        await self.send(self.alice, "m1", "mine")
        await self.send(self.bob, "b1", "bob's")
        for msg, room in (("m1", "order:43"), ("b1", ROOM), ("nope", ROOM), ("m1", "order:99")):
            reply = await self.ask(self.alice, {"id": "d-%s-%s" % (msg, room), "room": room, "type": "D",
                                                "msg": msg})
            self.assertEqual((reply["type"], reply.get("code")), ("E", "not_found"), (msg, room))
        reply = await self.ask(self.alice, {"id": "d", "room": "bad room", "type": "D", "msg": "m1"})
        self.assertEqual(reply["code"], "bad_packet")
        clock = task.Clock()
        clock.advance(time.time() + 121)
        self.patch(self.server.app.recaller.rooms, "_clock", clock)
        reply = await self.ask(self.alice, {"id": "late", "room": ROOM, "type": "D", "msg": "m1"})
        self.assertEqual((reply["type"], reply.get("code")), ("E", "forbidden"))
        packets, _ = await self.room_history(self.bob)
        self.assertEqual([p["msg"] for p in packets], ["mine", "bob's"])

    async def test_recall_of_a_migrated_message(self):
        await self.setup_room()
        await self.send(self.alice, "m1", "already in mysql")
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        migrator.stopService()
        reply = await self.ask(self.alice, {"id": "d1", "room": ROOM, "type": "D", "msg": "m1"})
        self.assertEqual(reply["type"], "A", reply)
        # before the D migrates, H and sync show the tombstone already
        packets, _ = await self.room_history(self.bob)
        self.assertEqual([(p["msg"], p.get("recalled")) for p in packets], [("", True)])
        self.assertEqual([(p["id"], p["msg"]) for p in await self.sync(self.bob)], [("m1", ""), ("d1", "m1")])
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        rows = await query(self.mysql_settings, "SELECT msg, packet FROM room_message")
        self.assertNotIn("already in mysql", repr(rows))
        self.assertEqual(json.loads(rows[0][1])["recalled"], True)

    async def test_recall_racing_the_migrator(self):
        """The message migrated before, with, or after its D: the row ends
        empty every time (the D always migrates after what it recalls)."""
        await self.setup_room()
        migrator = start_migrator(self, self.server.app.settings)
        for n in range(30):
            self.alice.send({"id": "r%d" % n, "room": ROOM, "type": "t", "msg": "secret %d" % n})
            self.alice.send({"id": "rd%d" % n, "room": ROOM, "type": "D", "msg": "r%d" % n})
        replies = [await self.alice.next_of("AE") for _ in range(60)]
        self.assertEqual([r["type"] for r in replies], ["A"] * 60, replies)
        await with_drain(migrator)
        rows = await query(self.mysql_settings, "SELECT msg FROM room_message WHERE room = '%s'" % ROOM)
        self.assertEqual([m for (m,) in rows], [""] * 30)
        self.assertEqual((await query(self.mysql_settings, "SELECT COUNT(*) FROM room_recall"))[0][0], 30)


class RoomDeleteApiTests(ApiTestMixin, unittest.TestCase):

    async def test_delete_with_room(self):
        self.assertEqual((await self.api("POST", "rooms", {"room": ROOM, "members": [1, 2]})).code, 200)
        alice, bob = await self.login(1), await self.login(2)
        reply = await self.ask(alice, {"id": "m1", "room": ROOM, "type": "t", "msg": "abuse"})
        self.assertEqual(reply["type"], "A")
        self.assertEqual((await bob.next())["id"], "m1")
        response = await self.api("POST", "messages/delete", {"from": 1, "id": "m1", "room": ROOM})
        self.assertEqual((response.code, response.json()), (200, {"deleted": True}))
        for client in (alice, bob):
            packet = await client.next()
            self.assertEqual((packet["type"], packet["from"], packet["room"], packet["msg"]), ("D", 1, ROOM, "m1"))
        response = await self.api("POST", "messages/delete", {"from": 1, "id": "m1", "room": ROOM})
        self.assertEqual((response.code, response.json()), (200, {"deleted": False}))
        for body in ({"from": 2, "id": "m1", "room": ROOM}, {"from": 1, "id": "m1", "room": "order:99"}):
            self.assertEqual((await self.api("POST", "messages/delete", body)).code, 404, body)
        for body in ({"from": 1, "id": "m1", "room": "bad room"}, {"from": 1, "id": "m1", "room": ROOM, "to": 2}):
            self.assertEqual((await self.api("POST", "messages/delete", body)).code, 400, body)


class RoomRecallPushTests(PushTestMixin, unittest.TestCase):
    """A push not yet sent for a recalled room message is not sent."""

    async def test_recalled_before_the_push_no_push(self):
        await self.server.app.room_admin.create(ROOM, [1, 2, 3])
        alice = await self.login(1)
        await self.ask(alice, {"id": "r1", "room": ROOM, "type": "t", "msg": "my pin is 4321"})
        self.assertIsNotNone(await self.due(2))
        reply = await self.ask(alice, {"id": "d1", "room": ROOM, "type": "D", "msg": "r1"})
        self.assertEqual(reply["type"], "A", reply)
        self.assertIsNone(await self.due(2))
        self.assertIsNone(await self.due(3))
        self.assertNotIn("4321", await redis_dump(self.redis))
        drainer = self.drainer()
        self.clock.advance(3600)
        await drainer.run_due()
        self.assertEqual(self.receiver.posts, [])

    async def test_the_push_for_the_others_names_it_without_its_text(self):
        await self.server.app.room_admin.create(ROOM, [1, 2])
        alice = await self.login(1)
        await self.ask(alice, {"id": "r1", "room": ROOM, "type": "t", "msg": "first"})
        await self.ask(alice, {"id": "r2", "room": ROOM, "type": "t", "msg": "my pin is 4321"})
        await self.ask(alice, {"id": "d2", "room": ROOM, "type": "D", "msg": "r2"})
        due = await self.due(2)
        self.assertIsNotNone(due)
        drainer = self.drainer()
        self.advance_to(due)
        await drainer.run_due()
        [post] = self.receiver.posts
        self.assertEqual((post.payload["to"], post.payload["unread"], post.payload["id"]), (2, 1, "r2"))
        self.assertNotIn("4321", json.dumps(post.payload))


class RoomErasureTests(RoomTestMixin, unittest.TestCase):
    """Erasure (contract §11) in rooms: the text of every room message the
    user sent recalled (counted, D to the members), its memberships removed
    (a left event each), what the rooms kept about it gone; resumable."""

    async def setup_rooms(self):
        await self.admin.create(ROOM, [1, 2, 3])
        await self.admin.create("order:43", [1, 2])
        alice = await self.login(1)
        for n in range(3):
            self.assertEqual((await self.send(alice, "a%d" % n, "secret %d" % n))["type"], "A")
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        migrator.stopService()
        for n in range(3, 5):
            await self.send(alice, "a%d" % n, "secret %d" % n)                # in Redis only
        await self.send(alice, "o1", "secret o", room="order:43")
        await self.ask(alice, {"id": "r", "room": ROOM, "type": "R", "msg": {"state": "read", "seq": 5}})
        return alice

    async def test_erase_recalls_room_messages_and_leaves_the_rooms(self):
        alice = await self.setup_rooms()
        bob = await self.login(2)
        await self.send(bob, "b1", "bob's own")
        self.assertEqual(await self.server.app.eraser.erase(1), 6)
        self.assertEqual((await alice.wait_closed())[0], 4003)
        got = [await bob.next() for _ in range(8)]
        self.assertEqual(sorted((p["room"], p["msg"]) for p in got if p["type"] == "D"),
                         sorted([(ROOM, "a%d" % n) for n in range(5)] + [("order:43", "o1")]))
        self.assertEqual(sorted((p["room"], p["msg"]["event"], p["msg"]["uid"]) for p in got if p["type"] == "s"),
                         [(ROOM, "left", 1), ("order:43", "left", 1)])
        packets, read = await self.room_history(bob)
        self.assertEqual([(p["id"], p["msg"]) for p in packets if p["type"] == "t"],
                         [("a%d" % n, "") for n in range(5)] + [("b1", "bob's own")])
        self.assertNotIn("1", read)
        self.assertEqual((await self.admin.show(ROOM))["members"], [2, 3])
        for room in (ROOM, "order:43"):
            self.assertIsNone(await self.redis.hget("roomspans:%s" % room, "1"))
            self.assertIsNone(await self.redis.hget("roomread:%s" % room, "1"))
        self.assertEqual(await self.redis.exists("roomsof:1"), 0)
        # its own conversation list's rooms are gone too
        self.assertEqual(await self.redis.execute_command("EXISTS", "roomconv:1", "roomsync:1", "roomgone:1",
                                                          "roommine:%s:1" % ROOM, "roommine:order:43:1"), 0)
        self.assertNotIn("secret", await redis_dump(self.redis))
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        rows = await query(self.mysql_settings, "SELECT msg, packet FROM room_message WHERE from_id = 1")
        self.assertEqual([m for m, _ in rows], [""] * 6)
        self.assertNotIn("secret", repr(rows))
        # (its cursor was still on its way to MySQL: a repeat, once migrated, removes it)
        self.assertEqual(await self.server.app.eraser.erase(1), 0)
        self.assertEqual(await query(self.mysql_settings, "SELECT * FROM room_read WHERE uid = 1"), ())
        # not banned: it may be added again and start afresh
        await self.admin.change(ROOM, [1], [])
        again = await self.login(1)
        self.assertEqual((await self.send(again, "new", "hello again"))["type"], "A")

    async def test_cut_short_then_run_again_finishes_with_one_d_each(self):
        await self.setup_rooms()
        rooms = self.server.app.eraser.rooms
        real = rooms._recaller.recall
        calls = []

        def dying(*args, **kwargs):
            calls.append(args)
            if len(calls) > 3:
                raise RuntimeError("the process died here")
            return real(*args, **kwargs)
        self.patch(rooms._recaller, "recall", dying)
        self.patch(erasure, "AT_ONCE", 1)
        with self.assertRaises(RuntimeError):
            await self.server.app.eraser.erase(1)
        self.assertEqual(await self.redis.scard("roomsof:1"), 2, "memberships go last")
        self.patch(rooms._recaller, "recall", real)
        self.assertEqual(await self.server.app.eraser.erase(1), 3)
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        rows = await query(self.mysql_settings, "SELECT recalled_id FROM room_recall")
        self.assertEqual(sorted(bytes(r).decode() for (r,) in rows), ["a0", "a1", "a2", "a3", "a4", "o1"])
        self.assertEqual(await self.server.app.eraser.erase(1), 0)


class RoomRecallTwoNodeTests(TwoNodeMixin, unittest.TestCase):

    async def test_the_d_reaches_members_and_the_senders_devices_on_the_other_node(self):
        await self.admin.create(ROOM, [1, 2])
        alice = await self.login_on(self.server, 1)
        alice_phone = await self.login_on(self.node2, 1)
        bob = await self.login_on(self.node2, 2)
        await self.send(alice, "m1", "oops")
        for client in (alice_phone, bob):
            self.assertEqual((await client.next())["id"], "m1")
        reply = await self.ask(alice, {"id": "d1", "room": ROOM, "type": "D", "msg": "m1"})
        for client in (alice_phone, bob):
            packet = await client.next()
            self.assertEqual((packet["type"], packet["msg"], packet["pos"]), ("D", "m1", reply["pos"]))


    async def test_a_removed_sender_recalls_the_d_goes_to_the_members_only(self):
        # (contract §11) its A still comes at once: its node gets a frame without the packet
        self.patch(self.server.app.node, "frame_timeout", 600.0)
        await self.admin.create(ROOM, [1, 2, 3])
        alice, alice_web = await self.login_on(self.server, 1), await self.login_on(self.server, 1)
        bob, carol = await self.login_on(self.node2, 2), await self.login_on(self.server, 3)
        await self.send(alice, "m1", "oops")
        for client in (alice_web, bob, carol):
            self.assertEqual((await client.next())["id"], "m1")
        await self.node2.app.room_admin.change(ROOM, [], [1])
        for client in (alice, alice_web, bob, carol):
            self.assertEqual((await client.next())["msg"]["event"], "left")
        reply = await self.ask(alice, {"id": "d1", "room": ROOM, "type": "D", "msg": "m1"})
        self.assertEqual(reply["type"], "A", reply)
        for client in (bob, carol):
            packet = await client.next()
            self.assertEqual((packet["type"], packet["msg"], packet["pos"]), ("D", "m1", reply["pos"]))
        for client in (alice, alice_web, bob, carol):
            await next_is_pong(self, client)

    async def test_members_changed_through_the_other_node_get_the_d(self):
        # node 1's room store knows [1, 2] from a first send; node 2 swaps bob for carol
        await self.admin.create(ROOM, [1, 2])
        alice, bob = await self.login_on(self.server, 1), await self.login_on(self.node2, 2)
        await self.send(alice, "m1", "oops")
        self.assertEqual((await bob.next())["id"], "m1")
        await self.node2.app.room_admin.change(ROOM, [3], [2])
        self.assertEqual((await bob.next())["msg"]["event"], "left")
        carol = await self.login_on(self.node2, 3)
        reply = await self.ask(alice, {"id": "d1", "room": ROOM, "type": "D", "msg": "m1"})
        packet = await carol.next()
        self.assertEqual((packet["type"], packet["msg"], packet["pos"]), ("D", "m1", reply["pos"]))
        await next_is_pong(self, bob)

    async def test_without_publishing_the_node_delivers_the_d(self):
        # [redis] min_replicas: the script publishes nothing, the node
        # delivers once stored (the API's delete as a member's recall)
        for server in (self.server, self.node2):
            self.patch(server.app.rooms, "publishes", False)
            self.patch(server.app.rooms, "_prefix", "")
        await self.admin.create(ROOM, [1, 2])
        alice, alice_web = await self.login_on(self.server, 1), await self.login_on(self.node2, 1)
        bob = await self.login_on(self.node2, 2)
        for packet_id in ("m1", "m2"):
            await self.send(alice, packet_id, "oops")
            for client in (alice_web, bob):
                self.assertEqual((await client.next())["id"], packet_id)
        reply = await self.ask(alice, {"id": "d1", "room": ROOM, "type": "D", "msg": "m1"})
        self.assertEqual(reply["type"], "A", reply)
        for client in (alice_web, bob):
            packet = await client.next()
            self.assertEqual((packet["type"], packet["msg"], packet["pos"]), ("D", "m1", reply["pos"]))
        self.assertTrue(await self.node2.app.recaller.delete_room(1, ROOM, "m2"))
        for client in (alice, alice_web, bob):
            packet = await client.next()
            self.assertEqual((packet["type"], packet["msg"]), ("D", "m2"))
        for client in (alice, alice_web, bob):
            await next_is_pong(self, client)

    async def test_the_a_waits_for_its_nodes_frame(self):
        """The D's A leaves once the sending connection's node has handled
        the frame the script published to it (so it never runs ahead of
        packets of lower pos that node delivers)."""
        await self.admin.create(ROOM, [1, 2])
        alice, bob = await self.login_on(self.server, 1), await self.login_on(self.node2, 2)
        await self.send(alice, "m1", "oops")
        self.assertEqual((await bob.next())["id"], "m1")
        subscriber = self.server.app.bus._subscriber
        deliver, held = subscriber.on_message, []
        self.patch(subscriber, "on_message", held.append)
        alice.send({"id": "d1", "room": ROOM, "type": "D", "msg": "m1"})
        packet = await bob.next()
        self.assertEqual((packet["type"], packet["msg"]), ("D", "m1"))
        await wait_until(lambda: held, what="the D's frame on node 1")
        await next_is_pong(self, bob)
        self.assertEqual(alice.received.pending, [], "the A came before its frame")
        for frame in held:
            deliver(frame)
        reply = await alice.next()
        self.assertEqual((reply["type"], reply["id"], reply["pos"]), ("A", "d1", packet["pos"]))

    async def test_recalls_racing_messages_reach_every_connection_in_pos_order(self):
        """Contract §10 with room recalls: alice (node 1) sends room
        messages and recalls each at once, while bob (node 2) and carol
        (node 1) send room and one-to-one messages to dave (on both nodes):
        every connection gets its packets, and its own A's, strictly
        ascending by pos (each D is published by the script that stores
        it, and its A waits for its node's frame)."""
        n = 30
        await self.admin.create(ROOM, [1, 2, 3, 4])
        for uid in (2, 3):
            await self.befriend(uid, 4)
        alice, alice_web = await self.login_on(self.server, 1), await self.login_on(self.node2, 1)
        bob, carol = await self.login_on(self.node2, 2), await self.login_on(self.server, 3)
        dave, dave_phone = await self.login_on(self.server, 4), await self.login_on(self.node2, 4)
        for i in range(n):
            alice.send({"id": "a%d" % i, "room": ROOM, "type": "t", "msg": "oops %d" % i})
            alice.send({"id": "da%d" % i, "room": ROOM, "type": "D", "msg": "a%d" % i})
            for client, name in ((bob, "b"), (carol, "c")):
                client.send({"id": "%s%d" % (name, i), "room": ROOM, "type": "t", "msg": "room"})
                client.send({"id": "%s1to1-%d" % (name, i), "to": 4, "type": "t", "msg": "to dave"})
        # what each connection gets: its A's, and every room packet and D
        # of the others, dave the one-to-one messages too
        expected = {"alice": (alice, 4 * n), "alice_web": (alice_web, 4 * n), "bob": (bob, 5 * n),
                    "carol": (carol, 5 * n), "dave": (dave, 6 * n), "dave_phone": (dave_phone, 6 * n)}
        for name, (client, count) in expected.items():
            got = [await client.next() for _ in range(count)]
            self.assertEqual([p for p in got if p["type"] == "E"], [], name)
            order = [(p["type"], p["id"], p["pos"]) for p in got]
            packets = [pos for kind, _, pos in order if kind != "A"]
            self.assertEqual(packets, sorted(set(packets)), "%s: packets out of pos order: %r" % (name, order))
            # (an A may come after packets of higher pos, never before one of lower pos)
            for at, (kind, _, pos) in enumerate(order):
                if kind == "A":
                    later = [p for k, _, p in order[at:] if k != "A" and p < pos]
                    self.assertEqual(later, [], "%s: the A at %d ran ahead: %r" % (name, pos, order))
            self.assertEqual(len([p for p in got if p["type"] == "D"]), 0 if name == "alice" else n, name)
        for client in (alice, bob, carol, dave):
            await next_is_pong(self, client)   # nothing more came


class RoomRecallCrashTests(RoomTestMixin, unittest.TestCase):
    """kill -9 of the migrator while room messages and their recalls flow
    (contract §5): every recalled message ends emptied in MySQL, every D
    once in room_recall, every other message with its text."""
    overrides = {"websocket": {"rate": "100000", "burst": "100000"},
                 "migrate": {"batch": "7", "interval": "0.02", "lock_ttl": "0.5"}}
    MESSAGES, KILLS = 240, 6

    async def test_kill_9_of_the_migrator_during_recalls(self):
        seed = random.randrange(2 ** 32)
        rng = random.Random(seed)
        config = CrashTests.write_config(self)
        await self.admin.create(ROOM, [1, 2])
        alice = await self.login(1)
        recalled = set()
        processes = []
        self.addCleanup(lambda: defer.gatherResults([p.kill() for p in processes]))
        chunk = self.MESSAGES // self.KILLS
        for cycle in range(self.KILLS):
            process = MigratorProcess(config).start()
            processes.append(process)
            await with_deadline(process.leading, DEADLINE, "migrator leading (seed %d)" % seed)
            kill_at = rng.randrange(chunk)
            for n in range(chunk):
                packet_id = "c%d-%d" % (cycle, n)
                self.assertEqual((await self.send(alice, packet_id, "text " + packet_id))["type"], "A")
                # recall one in three: some before the migrator took it, some after
                if rng.random() < 0.33:
                    reply = await self.ask(alice, {"id": "d" + packet_id, "room": ROOM, "type": "D",
                                                   "msg": packet_id})
                    self.assertEqual(reply["type"], "A", reply)
                    recalled.add(packet_id)
                if n == kill_at:
                    process.kill()
            await with_deadline(process.kill(), DEADLINE, "migrator exit")
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator, 30)
        rows = await query(self.mysql_settings, "SELECT msg_id, msg FROM room_message WHERE room = '%s'" % ROOM)
        texts = {bytes(i).decode(): m for i, m in rows}
        self.assertEqual(len(texts), self.MESSAGES, "seed %d" % seed)
        for packet_id, text in texts.items():
            self.assertEqual(text, "" if packet_id in recalled else "text " + packet_id, "seed %d" % seed)
        ds = await query(self.mysql_settings, "SELECT recalled_id FROM room_recall")
        self.assertEqual(sorted(bytes(r).decode() for (r,) in ds), sorted(recalled), "seed %d" % seed)

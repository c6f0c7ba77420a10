"""Contract §11 in rooms (§9): masked text and blocked words on room ``t``
messages as for one-to-one; positions of a courier to the members of the
rooms whose meta tracks it, stopping at the room's close on every node."""

import json
import os

from twisted.trial import unittest

from tests.daemon_support import start_daemon, write_config
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import query
from tests.support import connect_client, mq_entries, wait_until
from imd.errors import ImdError
from tests.test_privacy import PositionTestMixin, next_is_pong, redis_dump
from tests.test_rooms import ROOM, RoomTestMixin


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

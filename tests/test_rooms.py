"""Rooms (contract v3 §9), as members and the platform see them: a gapless
per-room ``seq`` across senders, nodes and membership events, one store per
message, read cursors, typing, history by ``seq``, close with its grace, and
MySQL holding every acked room message once."""

import random
import time

from twisted.internet import defer, task
from twisted.trial import unittest

from imd import busframes, protocol
from imd.errors import ImdError
from tests.admin_support import AdminAppMixin
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import query
from tests.support import DEADLINE, ImdServer, connect_client, drop, make_settings, with_deadline
from tests.daemon_support import start_daemon, write_config
from tests.test_api import ApiTestMixin
from tests.test_migrator_crash import CrashTests, MigratorProcess
from tests.test_push import PushTestMixin
from tests.test_migrator import FAST, MigratorTestMixin

ROOM = "order:42"
PER_SENDER = 1000   # room messages each of two senders pipelines when its node is killed


class RoomTestMixin(MigratorTestMixin):
    overrides = FAST

    @property
    def admin(self):
        return self.server.app.room_admin

    @defer.inlineCallbacks
    def send(self, client, packet_id, text, room=ROOM, kind="t"):
        reply = yield self.ask(client, {"id": packet_id, "room": room, "type": kind, "msg": text})
        return reply

    @defer.inlineCallbacks
    def room_history(self, client, after_seq=0, limit=100, room=ROOM):
        """Every packet of H {"room"}, following ``next``; the last reply's read map."""
        packets = []
        reply = yield self.ask(client, {"id": "h", "type": "H", "msg": {"room": room, "after_seq": after_seq,
                                                                         "limit": limit}})
        while True:
            self.assertEqual(reply["type"], "H", reply)
            self.assertLessEqual(len(reply["msg"]), limit)
            packets.extend(reply["msg"])
            if not reply["more"]:
                return packets, reply["read"]
            reply = yield self.ask(client, {"id": "h", "type": "H", "msg": {"after": reply["next"]}})


class RoomMessageTests(RoomTestMixin, unittest.TestCase):

    async def test_members_get_the_message_sender_gets_only_its_ack(self):
        await self.admin.create(ROOM, [1, 2, 3])
        alice, alice_web = await self.login(1), await self.login(1)
        bob, carol = await self.login(2), await self.login(3)
        alice.send({"id": "m1", "room": ROOM, "type": "t", "msg": "hello"})
        alice.send({"id": "p", "type": "P", "to": 0, "msg": ""})
        reply, pong = await alice.next(), await alice.next()
        # the sending connection gets its A and nothing else (then the pong)
        self.assertEqual((reply["type"], reply["seq"], pong["type"]), ("A", 1, "P"))
        for client in (alice_web, bob, carol):
            packet = await client.next()
            self.assertEqual({k: packet[k] for k in ("id", "from", "room", "type", "msg", "seq", "pos")},
                             {"id": "m1", "from": 1, "room": ROOM, "type": "t", "msg": "hello", "seq": 1,
                              "pos": reply["pos"]})
            self.assertNotIn("to", packet)
        self.assertEqual(alice.received.pending, [])

    async def test_stored_once_whatever_the_members(self):
        await self.admin.create(ROOM, list(range(1, 21)))
        alice = await self.login(1)
        before = await self.redis.llen("MQ")
        await self.send(alice, "m1", "to twenty")
        self.assertEqual(await self.redis.llen("MQ"), before + 1)

    async def test_retry_keeps_its_seq_and_is_stored_once(self):
        await self.admin.create(ROOM, [1, 2])
        alice, bob = await self.login(1), await self.login(2)
        first = await self.send(alice, "same", "once")
        await self.send(alice, "other", "two")
        again = await self.send(alice, "same", "once")
        self.assertEqual((again["seq"], again["pos"], again.get("dup")), (first["seq"], first["pos"], True))
        self.assertEqual([(await bob.next())["id"] for _ in range(2)], ["same", "other"])
        packets, _ = await self.room_history(bob)
        self.assertEqual([p["id"] for p in packets], ["same", "other"])

    async def test_refusals(self):
        await self.admin.create(ROOM, [1, 2])
        alice, mallory = await self.login(1), await self.login(9)
        self.assertEqual((await self.send(mallory, "x", "let me in"))["code"], "forbidden")
        self.assertEqual((await self.send(alice, "y", "where", room="order:43"))["code"], "not_found")
        for bad in ("", "a" * 65, "sp ace", "ü", ".", "..", 5, None):
            reply = await self.ask(alice, {"id": "z", "room": bad, "type": "t", "msg": "x"})
            self.assertEqual(reply["code"], "bad_packet", bad)
        reply = await self.ask(alice, {"id": "z", "room": ROOM, "to": 2, "type": "t", "msg": "x"})
        self.assertEqual(reply["code"], "bad_packet")
        self.assertEqual((await self.send(alice, "long", "x" * 1024))["code"], "too_long")
        # nothing refused took a seq
        self.assertEqual((await self.send(alice, "ok", "fine"))["seq"], 1)

    async def test_max_members(self):
        self.patch(self.admin, "max_members", 3)
        with self.assertRaises(ImdError) as refused:
            await self.admin.create(ROOM, [1, 2, 3, 4])
        self.assertEqual(refused.exception.code, "bad_packet")
        self.assertIsNone(await self.redis.get("room:%s" % ROOM) or None)
        await self.admin.create(ROOM, [1, 2, 3])
        with self.assertRaises(ImdError):
            await self.admin.change(ROOM, [4], [])
        self.assertEqual((await self.admin.show(ROOM))["members"], [1, 2, 3])
        # swapping one for another stays within the limit
        await self.admin.change(ROOM, [4], [3])
        self.assertEqual((await self.admin.show(ROOM))["members"], [1, 2, 4])


class RoomKeyTests(RoomTestMixin, unittest.TestCase):
    """Room ids may hold ``:``, as key names do: a room's keys must never be
    another room's (docs/reliability.md)."""

    async def test_a_room_id_naming_another_rooms_key_is_an_unknown_room(self):
        await self.admin.create("x", [1])
        alice = await self.login(1)
        await self.send(alice, "m1", "in x")
        await self.ask(alice, {"id": "r", "room": "x", "type": "R", "msg": {"state": "read", "seq": 1}})
        for room in ("x:members", "x:read", "x:pending", "x:spans"):
            for packet in ({"id": "s", "room": room, "type": "t", "msg": "hi"},
                           {"id": "h", "type": "H", "msg": {"room": room}},
                           {"id": "r", "room": room, "type": "R", "msg": {"state": "read", "seq": 1}},
                           {"id": "y", "room": room, "type": "Y", "msg": True}):
                reply = await self.ask(alice, packet)
                self.assertEqual((reply["type"], reply.get("code")), ("E", "not_found"), (room, reply))
        # the platform may make such a room: it is a room of its own
        await self.admin.create("x:members", [2])
        self.assertEqual((await self.admin.show("x"))["members"], [1])
        self.assertEqual((await self.admin.show("x:members"))["members"], [2])

    async def test_dedup_records_of_two_rooms_never_collide(self):
        await self.admin.create("a", [1, 2])
        await self.admin.create("a:1", [2])
        alice, bob = await self.login(1), await self.login(2)
        self.assertEqual((await self.send(alice, "2:x", "in a", room="a"))["seq"], 1)
        reply = await self.send(bob, "x", "in a:1", room="a:1")
        self.assertEqual((reply["type"], reply["seq"], reply.get("dup")), ("A", 1, None))
        packets, _ = await self.room_history(bob, room="a:1")
        self.assertEqual([p["id"] for p in packets], ["x"])


class MembershipTests(RoomTestMixin, unittest.TestCase):

    async def test_events_take_seqs_added_gets_its_joined_removed_its_left(self):
        await self.admin.create(ROOM, [1, 2])
        alice, bob, carol = await self.login(1), await self.login(2), await self.login(3)
        self.assertEqual((await self.send(alice, "m1", "one"))["seq"], 1)
        await self.admin.change(ROOM, [3], [])
        self.assertEqual((await self.send(alice, "m2", "two"))["seq"], 3)
        await self.admin.change(ROOM, [], [2])
        bob_got = [await bob.next() for _ in range(4)]
        self.assertEqual([(p["seq"], p["type"], p["msg"] if p["type"] == "s" else p["id"]) for p in bob_got],
                         [(1, "t", "m1"), (2, "s", {"room": ROOM, "event": "joined", "uid": 3}), (3, "t", "m2"),
                          (4, "s", {"room": ROOM, "event": "left", "uid": 2})])
        self.assertEqual([p["from"] for p in bob_got if p["type"] == "s"], [0, 0])
        carol_got = [await carol.next() for _ in range(3)]
        self.assertEqual([p["seq"] for p in carol_got], [2, 3, 4])
        # the removed member: forbidden from now on, and gets nothing more
        self.assertEqual((await self.send(bob, "b1", "still here?"))["code"], "forbidden")
        reply = await self.ask(bob, {"id": "h", "type": "H", "msg": {"room": ROOM}})
        self.assertEqual(reply["code"], "forbidden")
        await self.send(alice, "m3", "three")
        self.assertEqual((await carol.next())["seq"], 5)
        self.assertEqual(bob.received.pending, [])

    async def test_creating_announces_nothing_and_repeating_changes_nothing(self):
        await self.admin.create(ROOM, [1, 2], {"order": 42})
        await self.admin.create(ROOM, [2, 1])
        state = await self.admin.show(ROOM)
        self.assertEqual((state["members"], state["meta"], state["last_seq"]), ([1, 2], {"order": 42}, 0))
        await self.admin.create(ROOM, [1, 3])   # sets the members: 2 leaves, 3 joins
        state = await self.admin.show(ROOM)
        self.assertEqual((state["members"], state["last_seq"]), ([1, 3], 2))


class ReadCursorTests(RoomTestMixin, unittest.TestCase):

    async def test_cursor_moves_forward_only_and_is_relayed(self):
        await self.admin.create(ROOM, [1, 2, 3])
        alice, bob, carol = await self.login(1), await self.login(2), await self.login(3)
        for n in range(3):
            await self.send(alice, "m%d" % n, "x")
        for client in (bob, carol):
            for _ in range(3):
                await client.next()
        read = {"id": "r", "room": ROOM, "type": "R", "msg": {"state": "read", "seq": 2}}
        self.assertEqual((await self.ask(bob, read))["type"], "A")
        relayed = await alice.next()
        self.assertEqual({k: relayed[k] for k in ("from", "room", "type")}, {"from": 2, "room": ROOM, "type": "R"})
        self.assertEqual((relayed["msg"]["state"], relayed["msg"]["seq"]), ("read", 2))
        self.assertEqual((await carol.next())["msg"]["seq"], 2)
        # older or equal: acked, nothing relayed
        for seq in (2, 1):
            self.assertEqual((await self.ask(bob, dict(read, msg={"state": "read", "seq": seq})))["type"], "A")
        # past the last seq
        reply = await self.ask(bob, dict(read, msg={"state": "read", "seq": 4}))
        self.assertEqual(reply["code"], "bad_packet")
        self.assertEqual((await self.ask(bob, dict(read, msg={"state": "read", "seq": 3})))["type"], "A")
        self.assertEqual((await alice.next())["msg"]["seq"], 3)
        self.assertEqual(bob.received.pending, [])
        _, cursors = await self.room_history(carol)
        self.assertEqual(cursors, {"1": 0, "2": 3, "3": 0})

    async def test_cursor_reaches_mysql(self):
        migrator = start_migrator(self, self.server.app.settings)
        await self.admin.create(ROOM, [1, 2])
        alice, bob = await self.login(1), await self.login(2)
        await self.send(alice, "m1", "x")
        await self.send(alice, "m2", "y")
        for seq in (2, 1):
            await self.ask(bob, {"id": "r%d" % seq, "room": ROOM, "type": "R", "msg": {"state": "read", "seq": seq}})
        await with_drain(migrator)
        rows = await query(self.mysql_settings, "SELECT room, uid, seq FROM room_read")
        self.assertEqual([tuple(r) for r in rows], [(ROOM, 2, 2)])


class TypingTests(RoomTestMixin, unittest.TestCase):

    async def test_typing_relayed_to_the_others_coalesced_never_stored(self):
        await self.admin.create(ROOM, [1, 2])
        alice, bob = await self.login(1), await self.login(2)
        before = await self.redis.llen("MQ")
        for n in range(3):
            reply = await self.ask(alice, {"id": "y%d" % n, "room": ROOM, "type": "Y", "msg": True})
            self.assertEqual(reply["type"], "A")
        await self.ask(alice, {"id": "stop", "room": ROOM, "type": "Y", "msg": False})
        got = [await bob.next() for _ in range(2)]
        self.assertEqual([(p["id"], p["from"], p["room"], p["msg"]) for p in got],
                         [("y0", 1, ROOM, True), ("stop", 1, ROOM, False)])
        self.assertEqual(alice.received.pending, [])
        self.assertEqual(await self.redis.llen("MQ"), before)
        mallory = await self.login(9)
        reply = await self.ask(mallory, {"id": "y", "room": ROOM, "type": "Y", "msg": True})
        self.assertEqual(reply["code"], "forbidden")


class HistoryTests(RoomTestMixin, unittest.TestCase):

    async def test_history_by_seq_across_redis_and_mysql(self):
        await self.admin.create(ROOM, [1, 2])
        alice, bob = await self.login(1), await self.login(2)
        for n in range(1, 8):
            await self.send(alice if n % 2 else bob, "m%d" % n, "text %d" % n)
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        rows = await query(self.mysql_settings, "SELECT seq FROM room_message WHERE room = '%s'" % ROOM)
        self.assertEqual(sorted(r[0] for r in rows), list(range(1, 8)))
        self.assertEqual(await self.redis.zcard("roompending:%s" % ROOM), 0)
        migrator.stopService()
        for n in range(8, 12):
            await self.send(alice, "m%d" % n, "text %d" % n)
        packets, _ = await self.room_history(bob, limit=3)
        self.assertEqual([p["seq"] for p in packets], list(range(1, 12)))
        self.assertEqual([p["id"] for p in packets], ["m%d" % n for n in range(1, 12)])
        packets, _ = await self.room_history(alice, after_seq=5, limit=2)
        self.assertEqual([p["seq"] for p in packets], list(range(6, 12)))

    async def test_history_refusals(self):
        await self.admin.create(ROOM, [1])
        alice, mallory = await self.login(1), await self.login(9)
        self.assertEqual((await self.ask(mallory, {"id": "h", "type": "H", "msg": {"room": ROOM}}))["code"],
                         "forbidden")
        self.assertEqual((await self.ask(alice, {"id": "h", "type": "H", "msg": {"room": "nope"}}))["code"],
                         "not_found")
        for msg in ({"room": ROOM, "limit": 0}, {"room": ROOM, "limit": 501}, {"room": ROOM, "after_seq": -1},
                    {"room": ROOM, "with": 2}, {"room": "bad room"}):
            self.assertEqual((await self.ask(alice, {"id": "h", "type": "H", "msg": msg}))["code"], "bad_packet", msg)


class SyncTests(RoomTestMixin, unittest.TestCase):
    """Contract §10: room messages are in a member's sync stream by pos, only
    for the time it was a member, across Redis and MySQL."""

    @defer.inlineCallbacks
    def sync(self, client, pos=0, limit=100):
        packets = []
        reply = yield self.ask(client, {"id": "s", "type": "H", "msg": {"sync": pos, "limit": limit}})
        while True:
            self.assertEqual(reply["type"], "H", reply)
            self.assertLessEqual(len(reply["msg"]), limit)
            packets.extend(reply["msg"])
            if not reply["more"]:
                return packets
            reply = yield self.ask(client, {"id": "s", "type": "H", "msg": {"after": reply["next"]}})

    async def test_room_messages_in_the_stream_only_while_a_member(self):
        await self.befriend(1, 3)
        await self.admin.create(ROOM, [1, 2])
        alice, bob, carol = await self.login(1), await self.login(2), await self.login(3)
        await self.send(alice, "before", "before carol")                      # room seq 1
        await self.ask(alice, {"id": "dm1", "to": 3, "type": "t", "msg": "direct"})
        await self.admin.change(ROOM, [3], [])                                 # seq 2: joined 3
        await self.send(bob, "during", "with carol")                          # seq 3
        await self.admin.change(ROOM, [], [3])                                 # seq 4: left 3
        await self.send(alice, "after", "without carol")                      # seq 5
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        migrator.stopService()
        await self.send(alice, "later", "still without carol")                # seq 6, in Redis only
        await self.ask(alice, {"id": "dm2", "to": 3, "type": "t", "msg": "direct again"})
        for limit in (1, 2, 100):
            stream = await self.sync(carol, limit=limit)
            self.assertEqual([(p.get("room"), p.get("seq"), p["id"]) for p in stream],
                             [(None, None, "dm1"), (ROOM, 2, "joined-2"), (ROOM, 3, "during"), (ROOM, 4, "left-4"),
                              (None, None, "dm2")], limit)
            positions = [p["pos"] for p in stream]
            self.assertEqual(positions, sorted(set(positions)))
        stream = await self.sync(bob, limit=2)
        self.assertEqual([p["id"] for p in stream], ["before", "joined-2", "during", "left-4", "after", "later"])
        # from a position: only what came after it
        stream = await self.sync(bob, pos=stream[2]["pos"])
        self.assertEqual([p["id"] for p in stream], ["left-4", "after", "later"])


class ConversationListTests(RoomTestMixin, unittest.TestCase):
    """Rooms in ``H {"conversations": true}`` (contract §10): the room's
    latest packet, unread = messages from others (system ones included)
    after the member's read cursor, newest activity first with the
    one-to-one rows, a removed member's row as it was at its ``left``."""

    async def conversations(self, client, limit=None, n=[0]):
        n[0] += 1
        msg = {"conversations": True} if limit is None else {"conversations": True, "limit": limit}
        reply = await self.ask(client, {"id": "c%d" % n[0], "to": 0, "type": "H", "msg": msg})
        self.assertEqual(reply["type"], "H", reply)
        return reply

    async def summary(self, client):
        reply = await self.conversations(client)
        self.assertFalse(reply["more"])
        return [(c["with"] if "with" in c else c["room"], c["last"]["id"], c["unread"]) for c in reply["msg"]]

    async def read(self, client, seq, room=ROOM):
        reply = await self.ask(client, {"id": "r%d" % seq, "room": room, "type": "R",
                                        "msg": {"state": "read", "seq": seq}})
        self.assertEqual(reply["type"], "A", reply)

    async def test_unread_moves_with_cursors_and_others_sends_not_own(self):
        await self.befriend(1, 2)
        await self.admin.create(ROOM, [1, 2, 3])
        alice, bob, carol = await self.login(1), await self.login(2), await self.login(3)
        for packet_id in ("b1", "b2"):
            self.assertEqual((await self.send(bob, packet_id, "hi"))["type"], "A")
        acked = await self.send(alice, "a1", "hello")
        self.assertEqual(await self.summary(alice), [(ROOM, "a1", 2)])
        self.assertEqual(await self.summary(bob), [(ROOM, "a1", 1)])
        self.assertEqual(await self.summary(carol), [(ROOM, "a1", 3)])
        last = (await self.conversations(alice))["msg"][0]["last"]
        self.assertEqual((last["from"], last["room"], last["seq"], last["pos"]), (1, ROOM, 3, acked["pos"]))
        # alice's cursor moves: to b1, then past everything; an older seq changes nothing
        await self.read(alice, 1)
        self.assertEqual(await self.summary(alice), [(ROOM, "a1", 1)])
        await self.read(alice, 3)
        await self.read(alice, 2)
        self.assertEqual(await self.summary(alice), [(ROOM, "a1", 0)])
        # others' sends count, a one-to-one message interleaves by its pos
        await self.send(bob, "b3", "more")
        self.assertEqual(await self.summary(alice), [(ROOM, "b3", 1)])
        reply = await self.ask(bob, {"id": "d1", "to": 1, "type": "t", "msg": "direct"})
        self.assertEqual(reply["type"], "A", reply)
        self.assertEqual(await self.summary(alice), [(2, "d1", 1), (ROOM, "b3", 1)])
        await self.send(bob, "b4", "again")
        self.assertEqual(await self.summary(alice), [(ROOM, "b4", 2), (2, "d1", 1)])
        # a system message from 0 counts for everyone, as from others
        sent = await self.admin.send(ROOM, {"note": "courier assigned"}, "sys1")
        self.assertEqual(await self.summary(alice), [(ROOM, "sys1", 3), (2, "d1", 1)])
        self.assertEqual(await self.summary(bob), [(ROOM, "sys1", 2), (1, "d1", 0)])   # a1 and sys1
        self.assertEqual(await self.summary(carol), [(ROOM, "sys1", sent["seq"])])
        # bob reads up to b3: his own below it no longer matter, the rest stays
        await self.read(bob, 5)
        self.assertEqual(await self.summary(bob), [(ROOM, "sys1", 1), (1, "d1", 0)])

    async def test_a_removed_member_keeps_its_row_up_to_its_left(self):
        await self.admin.create(ROOM, [1, 2, 3])
        alice, carol = await self.login(1), await self.login(3)
        await self.send(alice, "a1", "one")
        await self.read(carol, 1)
        await self.send(carol, "c1", "mine")
        await self.send(alice, "a2", "two")
        await self.admin.change(ROOM, [], [3])
        left = await carol.next_of("s")
        while left["msg"].get("event") != "left":
            left = await carol.next_of("s")
        # carol's row: its left, and what was unread then (a2 and the left event)
        self.assertEqual(await self.summary(carol), [(ROOM, left["id"], 2)])
        await self.send(alice, "a3", "after carol left")
        await self.admin.close(ROOM)
        self.assertEqual(await self.summary(carol), [(ROOM, left["id"], 2)])
        self.assertEqual((await self.summary(alice))[0][:2], (ROOM, "closed-%d" % (left["seq"] + 2)))
        # back in: the row moves to its joined; its cursor went with the
        # membership, so everything from others counts afresh (not its own c1)
        await self.admin.change(ROOM, [3], [])
        rows = await self.summary(carol)
        self.assertEqual(rows, [(ROOM, "joined-%d" % (left["seq"] + 3), left["seq"] + 3 - 1)])

    async def test_pages_of_rooms_and_one_to_one_rows_without_skip_or_repeat(self):
        others = [10, 11, 12]
        for other in others:
            await self.befriend(1, other)
        rooms = ["r:%d" % n for n in range(6)]
        for room in rooms:
            await self.admin.create(room, [1, 10])
        alice = await self.login(1)
        expected = []
        for n in range(8):
            if n % 3 == 2:
                other = others[n // 3]
                reply = await self.ask(alice, {"id": "to%d" % other, "to": other, "type": "t", "msg": "x"})
                expected.append(other)
            else:
                room = rooms[len([e for e in expected if isinstance(e, str)])]
                reply = await self.send(alice, "in-" + room, "x", room=room)
                expected.append(room)
            self.assertEqual(reply["type"], "A", reply)
        expected.reverse()
        for limit in (1, 3, 8, 200):
            seen, msg, pages, positions = [], {"conversations": True, "limit": limit}, 0, []
            while True:
                pages += 1
                reply = await self.ask(alice, {"id": "p%d" % pages, "to": 0, "type": "H", "msg": msg})
                self.assertLessEqual(len(reply["msg"]), limit)
                seen.extend(c.get("room", c.get("with")) for c in reply["msg"])
                positions.extend(c["last"]["pos"] for c in reply["msg"])
                if not reply["more"]:
                    break
                msg = {"after": reply["next"]}
            self.assertEqual(seen, expected, limit)
            self.assertEqual(positions, sorted(positions, reverse=True))


class MigrationTests(RoomTestMixin, unittest.TestCase):

    async def test_every_acked_room_message_lands_once(self):
        migrator = start_migrator(self, self.server.app.settings)
        await self.admin.create(ROOM, [1, 2, 3, 4])
        clients = [await self.login(uid) for uid in (1, 2, 3, 4)]
        for uid, client in zip((1, 2), clients):
            for n in range(150):
                client.send({"id": "%d-%d" % (uid, n), "room": ROOM, "type": "t", "msg": "burst"})
        seqs = []
        for client in clients[:2]:
            for _ in range(150):
                reply = await client.next_of("AE")
                self.assertEqual(reply["type"], "A", reply)
                seqs.append(reply["seq"])
        self.assertEqual(sorted(seqs), list(range(1, 301)))
        await with_drain(migrator)
        rows = await query(self.mysql_settings, "SELECT seq, from_id, msg_id FROM room_message")
        self.assertEqual(sorted(r[0] for r in rows), list(range(1, 301)))
        self.assertEqual(len({(r[1], bytes(r[2])) for r in rows}), 300)

    async def test_a_room_named_dot_dot_before_they_were_refused_still_migrates(self):
        # "." and ".." were room ids until they were refused (the API's paths): a
        # room made before keeps its members, and the messages stored before the
        # upgrade still reach MySQL rather than MQ:dead
        migrator = start_migrator(self, self.server.app.settings)
        await self.admin.create("..", [1, 2])   # (the handler takes the id the API checked)
        now = int(time.time() * 1000)
        head = protocol.room_message_head("old", 1, "..", "t", "stored before", now)
        await self.server.app.rooms.store("..", 1, "old", head, now)
        await with_drain(migrator)
        self.assertEqual(await self.redis.lrange("MQ:dead", 0, -1), [])
        rows = await query(self.mysql_settings, "SELECT msg FROM room_message WHERE room = '..' AND msg_id = 'old'")
        self.assertEqual(rows, (("stored before",),))


class TwoNodeMixin(RoomTestMixin):
    """A second node, ``node2``, on the same Redis and MySQL."""

    @defer.inlineCallbacks
    def setUp(self):
        yield RoomTestMixin.setUp(self)
        self.node2 = yield ImdServer(make_settings(dict(self.overrides, imd={"node_id": "test-node-2"}))).start()
        self.addCleanup(self.node2.stop)


class TwoNodeTests(TwoNodeMixin, unittest.TestCase):

    async def test_gapless_seq_two_senders_two_nodes_with_events_between(self):
        await self.admin.create(ROOM, [1, 2, 3])
        alice = await self.login_on(self.server, 1)
        bob = await self.login_on(self.node2, 2)
        carol = await self.login_on(self.node2, 3)
        carol_here = await self.login_on(self.server, 3)
        for n in range(60):
            alice.send({"id": "a%d" % n, "room": ROOM, "type": "t", "msg": "a"})
            bob.send({"id": "b%d" % n, "room": ROOM, "type": "t", "msg": "b"})
            if n in (20, 40):
                # membership changes through node 2's API side while the burst runs
                await self.node2.app.room_admin.change(ROOM, [4 + n], [])
        seqs = []
        for client in (alice, bob):
            for _ in range(60):
                reply = await client.next_of("AE")
                self.assertEqual(reply["type"], "A", reply)
                seqs.append(reply["seq"])
        self.assertEqual(len(seqs), 120)
        for client in (carol, carol_here):
            got = [await client.next() for _ in range(122)]
            self.assertEqual(sorted(p["seq"] for p in got), list(range(1, 123)))
            events = [p["seq"] for p in got if p["type"] == "s"]
            self.assertEqual(len(events), 2)
            # the senders' acks and the events share one sequence: each seq once, no gap
            self.assertEqual(sorted(seqs + events), list(range(1, 123)))

    async def test_member_removed_on_one_node_cannot_send_through_another(self):
        await self.admin.create(ROOM, [1, 2])
        bob = await self.login_on(self.node2, 2)
        self.assertEqual((await self.send(bob, "b1", "hi"))["type"], "A")
        await self.admin.change(ROOM, [], [2])
        self.assertEqual((await bob.next())["msg"]["event"], "left")
        self.assertEqual((await self.send(bob, "b2", "hi again"))["code"], "forbidden")

    async def test_members_changed_through_another_node_get_the_next_message(self):
        # node 1's store knows the members [1, 2] from a first send; node 2 changes them
        await self.admin.create(ROOM, [1, 2])
        alice = await self.login_on(self.server, 1)
        bob = await self.login_on(self.node2, 2)
        self.assertEqual((await self.send(alice, "m1", "first"))["type"], "A")
        self.assertEqual((await bob.next())["id"], "m1")
        await self.node2.app.room_admin.change(ROOM, [3], [2])
        carol = await self.login_on(self.node2, 3)
        self.assertEqual((await bob.next())["msg"]["event"], "left")
        reply = await self.send(alice, "m2", "second")
        self.assertEqual((reply["type"], reply["seq"]), ("A", 4), reply)   # m1, left, joined, then m2
        self.assertEqual((await carol.next())["id"], "m2")
        self.assertEqual([p["id"] for p in await self.conversations_of(carol)], ["m2"])
        # bob, removed, got nothing more: its list still ends at its left
        self.assertEqual([p["msg"]["event"] for p in await self.conversations_of(bob)], ["left"])

    async def test_without_publishing_the_node_delivers(self):
        # [redis] min_replicas: the scripts publish nothing (nothing may reach
        # a client before the replicas have it); the node delivers once stored
        for server in (self.server, self.node2):
            self.patch(server.app.rooms, "publishes", False)
            self.patch(server.app.rooms, "_prefix", "")
        await self.admin.create(ROOM, [1, 2, 3])
        alice, alice_web = await self.login_on(self.server, 1), await self.login_on(self.node2, 1)
        bob = await self.login_on(self.node2, 2)
        reply = await self.send(alice, "m1", "not published")
        self.assertEqual(reply["type"], "A", reply)
        for client in (alice_web, bob):
            self.assertEqual(((await client.next())["id"]), "m1")
        await self.admin.change(ROOM, [], [3])
        for client in (alice, alice_web, bob):
            self.assertEqual(((await client.next())["msg"]["event"]), "left")
        self.assertEqual([p["id"] for p in await self.conversations_of(bob)], ["left-2"])

    async def conversations_of(self, client):
        reply = await self.ask(client, {"id": "c", "to": 0, "type": "H", "msg": {"conversations": True}})
        return [c["last"] for c in reply["msg"]]

    async def test_one_publish_per_node(self):
        await self.admin.create(ROOM, [1, 2, 3, 4])
        alice = await self.login_on(self.server, 1)
        others = [await self.login_on(self.node2, uid) for uid in (2, 3, 4)]
        frames = []
        original = busframes.decode

        def decode(frame):
            frames.append(frame)
            return original(frame)
        self.patch(busframes, "decode", decode)
        await self.send(alice, "m", "to three on node 2")
        for client in others:
            self.assertEqual((await client.next())["id"], "m")
        # one frame per node, the sender's own included (it names the
        # connection the message came on, whose A waited for it)
        rests = [original(frame).rest for frame in frames]
        parsed = sorted(busframes.room_recipients(rest.decode("utf-8") if isinstance(rest, bytes) else rest)[:2]
                        for rest in rests)
        self.assertEqual([uids for uids, _ in parsed], [[1], [2, 3, 4]])
        self.assertIsNotNone(parsed[0][1])
        self.assertIsNone(parsed[1][1])


class CloseTests(RoomTestMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        yield RoomTestMixin.setUp(self)
        self.start = int(time.time())   # (the tokens' iat is checked against the app's clock)
        self.clock = task.Clock()
        self.clock.advance(self.start)
        settings = make_settings(dict(self.overrides, imd={"node_id": "clock-node"}, rooms={"close_grace": "60"}))
        self.node_clock = yield ImdServer(settings, self.clock).start()
        self.addCleanup(self.node_clock.stop)

    async def test_close_then_grace(self):
        admin = self.node_clock.app.room_admin
        await admin.create(ROOM, [1, 2])
        alice = await self.login_on(self.node_clock, 1)
        bob = await self.login_on(self.node_clock, 2)
        answer = await admin.close(ROOM)
        self.assertEqual(answer["ends_at"], (self.start + 60) * 1000)
        event = await alice.next()
        self.assertEqual((event["from"], event["type"], event["msg"], event["seq"]),
                         (0, "s", {"room": ROOM, "event": "closed"}, 1))
        await bob.next()
        # within the grace: still open
        self.clock.advance(59)
        self.assertEqual((await self.send(alice, "m1", "last words"))["seq"], 2)
        self.clock.advance(1)
        self.assertEqual((await self.send(alice, "m2", "too late"))["code"], "forbidden")
        # closing again changes nothing; history stays readable
        self.assertEqual((await admin.close(ROOM))["ends_at"], (self.start + 60) * 1000)
        packets, _ = await self.room_history(bob)
        self.assertEqual([p["seq"] for p in packets], [1, 2])
        self.assertEqual((await admin.show(ROOM))["closed_at"], self.start * 1000)


class RoomApiTests(ApiTestMixin, unittest.TestCase):
    """The server API's room routes (contract v3 §9 with the §7.4 rules)."""

    async def test_create_members_send_close_show(self):
        bob = await self.login(2)
        response = await self.api("POST", "rooms", {"room": ROOM, "members": [1, 2], "meta": {"order": 42}})
        self.assertEqual((response.code, response.json()), (200, {"room": ROOM, "members": [1, 2]}), response)
        response = await self.api("POST", "rooms/%s/members" % ROOM, {"add": [3], "rm": [1]})
        self.assertEqual(response.json(), {"room": ROOM, "members": [2, 3]})
        got = [await bob.next() for _ in range(2)]
        self.assertEqual([(p["seq"], p["msg"]["event"], p["msg"]["uid"]) for p in got], [(1, "left", 1),
                                                                                          (2, "joined", 3)])
        response = await self.api("POST", "rooms/%s/send" % ROOM, {"msg": {"event": "near"}, "id": "n-1"})
        self.assertEqual(response.json(), {"id": "n-1", "seq": 3})
        packet = await bob.next()
        self.assertEqual((packet["id"], packet["from"], packet["type"], packet["msg"], packet["seq"]),
                         ("n-1", 0, "s", {"event": "near"}, 3))
        response = await self.api("POST", "rooms/%s/send" % ROOM, {"msg": {"event": "near"}, "id": "n-1"})
        self.assertEqual(response.json(), {"id": "n-1", "seq": 3})   # the first seq, stored once
        response = await self.api("POST", "rooms/%s/close" % ROOM)
        self.assertEqual(response.code, 200, response)
        ends_at = response.json()["ends_at"]
        self.assertEqual((await bob.next())["msg"], {"room": ROOM, "event": "closed"})
        response = await self.api("GET", "rooms/%s" % ROOM)
        state = response.json()
        self.assertEqual({k: state[k] for k in ("room", "members", "meta", "last_seq", "read")},
                         {"room": ROOM, "members": [2, 3], "meta": {"order": 42}, "last_seq": 4,
                          "read": {"2": 0, "3": 0}})
        self.assertEqual(state["ends_at"] - state["closed_at"], 1800 * 1000)
        self.assertEqual(state["ends_at"], ends_at)

    async def test_refusals_change_nothing(self):
        self.assert_error(await self.api("GET", "rooms/nope"), 404)
        self.assert_error(await self.api("POST", "rooms/nope/members", {"add": [1]}), 404)
        self.assert_error(await self.api("POST", "rooms/nope/send", {"msg": {}}), 404)
        self.assert_error(await self.api("POST", "rooms/nope/close"), 404)
        for body in ({"members": [1]}, {"room": "bad room", "members": [1]}, {"room": "a" * 65, "members": [1]},
                     {"room": ".", "members": [1]}, {"room": "..", "members": [1]},
                     {"room": ROOM}, {"room": ROOM, "members": [0]}, {"room": ROOM, "members": "1"},
                     {"room": ROOM, "members": [1], "meta": []}, {"room": ROOM, "members": [1], "x": 1},
                     {"room": ROOM, "members": list(range(1, 52))}):
            self.assert_error(await self.api("POST", "rooms", body), 400)
        self.assertEqual(await self.redis.keys("room:*"), [])
        await self.api("POST", "rooms", {"room": ROOM, "members": [1]})
        self.assert_error(await self.api("POST", "rooms/%s/members" % ROOM, {"add": list(range(2, 52))}), 400)
        self.assert_error(await self.api("POST", "rooms/%s/send" % ROOM, {"msg": "text"}), 400)
        self.assertEqual((await self.api("GET", "rooms/%s" % ROOM)).json()["members"], [1])
        self.assert_error(await self.api("POST", "rooms", {"room": ROOM, "members": [1]}, headers={}), 401)


class RoomAdminCommandTests(AdminAppMixin, unittest.TestCase):
    """``imd-admin room create|add|rm|close|show``."""

    async def test_room_commands(self):
        out, _, _ = await self.admin("room", "create", ROOM, "1", "2")
        self.assertEqual(out, "room %s: members 1 2\n" % ROOM)
        out, _, _ = await self.admin("room", "add", ROOM, "3")
        self.assertEqual(out, "room %s: members 1 2 3\n" % ROOM)
        out, _, _ = await self.admin("room", "rm", ROOM, "1")
        self.assertEqual(out, "room %s: members 2 3\n" % ROOM)
        out, _, _ = await self.admin("room", "close", ROOM)
        self.assertIn("room %s closed" % ROOM, out)
        out, _, _ = await self.admin("room", "show", ROOM)
        self.assertIn("members              2 3", out)
        self.assertIn("last seq             3", out)   # joined 3, left 1, closed
        self.assertIn("read                 2:0 3:0", out)
        self.assertIn("sends refused from", out)

    async def test_refusals_are_one_line(self):
        out, err, code = await self.run_admin("room", "show", "nope")
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(err, b"imd-admin: no room nope\n")
        out, err, code = await self.run_admin("room", "add", "bad room", "1")
        self.assertEqual(code, 2)
        self.assertIn(b"a room id is 1-64 characters", err)
        self.assertNotIn(b"Traceback", err)


class RoomPushTests(PushTestMixin, unittest.TestCase):
    """Offline push (contract §7.5) covers room messages: the payload gains ``room``."""

    async def test_offline_member_gets_a_push_naming_the_room(self):
        await self.server.app.room_admin.create(ROOM, [1, 2, 3])
        alice = await self.login(1)
        reply = await self.ask(alice, {"id": "r1", "room": ROOM, "type": "t", "msg": "gate code?"})
        self.assertEqual(reply["type"], "A", reply)
        self.assertIsNone(await self.due(1))    # not the sender's own
        due = await self.due(2)
        self.assertIsNotNone(due)
        drainer = self.drainer()
        self.advance_to(due)
        await drainer.run_due()
        posts = sorted(self.receiver.posts, key=lambda p: p.payload["to"])
        self.assertEqual([p.payload["to"] for p in posts], [2, 3])
        self.assertEqual({k: posts[0].payload[k] for k in ("from", "id", "type", "preview", "room", "unread")},
                         {"from": 1, "id": "r1", "type": "t", "preview": "gate code?", "room": ROOM, "unread": 1})

    async def test_reading_ends_the_pending_push(self):
        await self.server.app.room_admin.create(ROOM, [1, 2])
        alice, bob = await self.login(1), await self.login(2)
        await self.ask(alice, {"id": "r1", "room": ROOM, "type": "t", "msg": "one"})
        self.assertIsNotNone(await self.due(2))
        await self.ask(bob, {"id": "read", "room": ROOM, "type": "R", "msg": {"state": "read", "seq": 1}})
        self.assertIsNone(await self.due(2))


class RoomCrashTests(RoomTestMixin, unittest.TestCase):
    """``kill -9`` during a room burst (contract §5 for rooms): of the
    migrator, at random moments; of the ws process holding the senders.
    MySQL ends with every acked room message once, seqs without a gap."""
    overrides = {"websocket": {"rate": "100000", "burst": "100000"},
                 "migrate": {"batch": "50", "interval": "0.02", "lock_ttl": "0.5"}}
    MESSAGES, KILLS = 1200, 8

    async def room_rows(self):
        rows = await query(self.mysql_settings, "SELECT seq, from_id, msg_id FROM room_message WHERE room = '%s'"
                           % ROOM)
        pairs = [(int(f), bytes(m).decode("utf-8")) for _, f, m in rows]
        self.assertEqual(len(pairs), len(set(pairs)), "a room message is in the table twice")
        return sorted(int(r[0]) for r in rows), set(pairs)

    @defer.inlineCallbacks
    def burst(self, client, sender, ids, acked, on_ack=lambda: None):
        for packet_id in ids:
            client.send({"id": packet_id, "room": ROOM, "type": "t", "msg": "crash " + packet_id})
        for _ in ids:
            reply = yield client.next_of("AE")
            self.assertEqual(reply["type"], "A", reply)
            acked.add((sender, reply["id"]))
            on_ack()

    async def test_kill_9_of_the_migrator_during_a_room_burst(self):
        seed = random.randrange(2 ** 32)
        rng = random.Random(seed)
        config = CrashTests.write_config(self)
        await self.admin.create(ROOM, [21, 22, 23, 24])
        clients = {uid: await self.login(uid) for uid in (21, 22)}
        acked, processes = set(), []
        self.addCleanup(lambda: defer.gatherResults([p.kill() for p in processes]))
        chunk = self.MESSAGES // self.KILLS
        for cycle in range(self.KILLS):
            process = MigratorProcess(config).start()
            processes.append(process)
            await with_deadline(process.leading, DEADLINE, "migrator leading (seed %d)" % seed)
            kill_at, counted = rng.randrange(chunk), [0]

            def on_ack(process=process, kill_at=kill_at, counted=counted):
                counted[0] += 1
                if counted[0] == kill_at + 1:
                    process.kill()
            await defer.gatherResults([
                self.burst(client, uid, ["c%d-%d-%d" % (cycle, uid, n) for n in range(chunk // 2)], acked, on_ack)
                for uid, client in clients.items()])
            await with_deadline(process.kill(), DEADLINE, "migrator exit")
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator, 30)
        seqs, rows = await self.room_rows()
        self.assertEqual(rows, acked, "seed %d" % seed)
        self.assertEqual(seqs, list(range(1, len(acked) + 1)), "seed %d" % seed)
        self.assertEqual(await self.redis.zcard("roompending:%s" % ROOM), 0)

    async def test_kill_9_of_the_ws_process_during_a_room_burst(self):
        import signal
        await self.admin.create(ROOM, [31, 32, 33])
        config = write_config(self, dict(self.overrides, imd={"node_id": "test-node-doomed", "roles": "ws"}))
        doomed = await start_daemon(self, config)
        clients = {}
        for uid in (31, 32):
            client = await connect_client(doomed.port, "/" + self.token(uid))
            self.addCleanup(lambda c=client: drop(c) if not c.closed.called else None)
            self.assertEqual((await client.next())["type"], "L")
            clients[uid] = client
        sent = {uid: ["k-%d-%d" % (uid, n) for n in range(PER_SENDER)] for uid in clients}
        half = PER_SENDER // 2
        acked = set()
        # the first half acked, the second half written, then the node is
        # killed at once: mid-burst, whatever the interpreters' speeds
        for part in (sent[31][:half], sent[32][:half]), (sent[31][half:], sent[32][half:]):
            for (uid, client), ids in zip(clients.items(), part):
                for packet_id in ids:
                    client.send({"id": packet_id, "room": ROOM, "type": "t", "msg": "burst " + packet_id})
            if part[0][0] == sent[31][half]:
                doomed.signal(signal.SIGKILL)
                break
            for (uid, client), ids in zip(clients.items(), part):
                for _ in ids:
                    reply = await client.next_of("AE")
                    self.assertEqual(reply["type"], "A", reply)
                    acked.add((uid, reply["id"]))

        async def collect(uid, client):
            while True:
                try:
                    reply = await client.next(2)
                except Exception:
                    return
                if reply["type"] == "A":
                    acked.add((uid, reply["id"]))
        await defer.gatherResults([defer.ensureDeferred(collect(uid, c)) for uid, c in clients.items()])
        await doomed.wait_ended()
        self.assertLess(len(acked), 2 * PER_SENDER, "the kill came after the burst")
        # what was acked is stored; the senders retry everything on a live node
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator, 30)
        seqs, rows = await self.room_rows()
        self.assertLessEqual(acked, rows)
        self.assertEqual(seqs, list(range(1, len(rows) + 1)))
        for uid in clients:
            again = await self.login(uid)
            for packet_id in sent[uid]:
                reply = await self.send(again, packet_id, "burst " + packet_id)
                self.assertEqual(reply["type"], "A", reply)
                # stored before the kill (acked or not): acked again, not stored again
                self.assertEqual(reply.get("dup", False), (uid, packet_id) in rows)
        await with_drain(migrator, 30)
        seqs, rows = await self.room_rows()
        self.assertEqual(rows, {(uid, i) for uid in sent for i in sent[uid]})
        self.assertEqual(seqs, list(range(1, 2 * PER_SENDER + 1)))

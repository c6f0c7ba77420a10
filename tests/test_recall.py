"""Recall (``D``) and moderation delete (contract v3 §11) over real
WebSockets, Redis and MariaDB, as the clients and the operator see them:
the ``A`` with the sender's ``pos``, the ``D`` at the recipient, ``H``
showing the tombstone before and after migration, the text gone from Redis
and MySQL, and the refusals (forbidden, not_found)."""

import json

from twisted.internet import defer
from twisted.trial import unittest

from imd.stores.keys import Keys
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import query
from tests.support import ImdServer, connect_client, drop, make_settings
from tests.test_api import API_KEY, ApiTestMixin
from tests.test_history import store_entries, stored
from tests.test_migrator import FAST, MigratorTestMixin
from tests.test_push import DELAY, SENT, PushTestMixin

SECRET = "the secret text"


def recall(packet_id, to, msg_id):
    return {"id": packet_id, "to": to, "type": "D", "msg": msg_id}


class RecallMixin:

    @defer.inlineCallbacks
    def history(self, client, with_uid=None):
        query_ = {"since": 0, "limit": 500}
        if with_uid is not None:
            query_["with"] = with_uid
        reply = yield self.ask(client, {"id": "h", "to": 0, "type": "H", "msg": query_})
        self.assertEqual(reply["type"], "H", reply)
        return reply["msg"]

    @defer.inlineCallbacks
    def redis_text(self):
        """Every value of MQ, MQ:processing and the pending indexes, as one text."""
        texts = []
        for key in ("MQ", "MQ:processing"):
            texts += (yield self.redis.lrange(key, 0, -1))
        for uid in (1, 2):
            texts += (yield self.redis.zrange("pending:%d" % uid, 0, -1))
        return "\n".join(t if isinstance(t, str) else t.decode("utf-8") for t in texts)

    def mysql_rows(self):
        return query(self.mysql_settings, "SELECT msg_id, type, msg, recalled, packet FROM message ORDER BY seq")

    @defer.inlineCallbacks
    def assert_tombstone_everywhere(self, alice, bob, msg_id="m1"):
        for client, other in ((alice, 2), (bob, 1)):
            for with_uid in (None, other):
                items = yield self.history(client, with_uid)
                shown = [m for m in items if str(m["id"]) == msg_id]
                self.assertEqual(len(shown), 1, items)
                self.assertEqual((shown[0]["msg"], shown[0]["recalled"]), ("", True), shown)
                self.assertNotIn("D", [m["type"] for m in items])
        self.assertNotIn(SECRET, (yield self.redis_text()))


class RecallTests(RecallMixin, MigratorTestMixin, unittest.TestCase):
    overrides = FAST

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.befriend(1, 2)
        self.alice = yield self.login(1)
        self.bob = yield self.login(2)

    async def send(self, packet_id="m1", text=SECRET):
        reply = await self.ask(self.alice, {"id": packet_id, "to": 2, "type": "t", "msg": text})
        self.assertEqual(reply["type"], "A", reply)
        await self.bob.next_of("t")

    async def test_recall_acks_with_pos_reaches_the_recipient_and_leaves_a_tombstone(self):
        await self.send()
        reply = await self.ask(self.alice, recall("d1", 2, "m1"))
        self.assertEqual((reply["type"], reply["msg"]), ("A", "success"), reply)
        self.assertIsInstance(reply["pos"], int)
        packet = await self.bob.next_of("D")
        self.assertEqual({k: packet[k] for k in ("id", "from", "to", "type", "msg", "pos")},
                         {"id": "d1", "from": 1, "to": 2, "type": "D", "msg": "m1", "pos": reply["pos"]})
        self.assertIsInstance(packet["ts"], int)
        await self.assert_tombstone_everywhere(self.alice, self.bob)
        # the retry of the same D: acked again, nothing new
        again = await self.ask(self.alice, recall("d1", 2, "m1"))
        self.assertEqual((again["type"], again.get("dup")), ("A", True), again)
        # migrated: the same in MySQL, text gone there too
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        rows = await self.mysql_rows()
        self.assertEqual([(bytes(i).decode(), t, m, r) for i, t, m, r, _ in rows],
                         [("m1", "t", "", 1), ("d1", "D", "m1", 0)])
        self.assertNotIn(SECRET, rows[0][4])
        self.assertEqual(json.loads(rows[0][4])["recalled"], True)
        await self.assert_tombstone_everywhere(self.alice, self.bob)

    async def test_the_senders_other_device_gets_the_d_and_the_recalling_one_only_the_a(self):
        phone = await self.login(1)
        await self.send()
        self.assertEqual((await phone.next_of("t"))["id"], "m1")     # its other device got the message too
        reply = await self.ask(self.alice, recall("d2", 2, "m1"))
        self.assertEqual(reply["type"], "A", reply)
        other = await phone.next_of("D")
        self.assertEqual((other["id"], other["msg"], other["pos"]), ("d2", "m1", reply["pos"]))
        # the recalling connection: the A only; what comes before the answer to a P is no D
        self.alice.send({"id": "p", "to": 0, "type": "P"})
        before_p = []
        while True:
            packet = await self.alice.next()
            if packet["type"] == "P":
                break
            before_p.append(packet["type"])
        self.assertNotIn("D", before_p)

    async def test_a_numeric_id_is_recalled_by_its_digits(self):
        reply = await self.ask(self.alice, {"id": 77, "to": 2, "type": "t", "msg": SECRET})
        self.assertEqual(reply["type"], "A", reply)
        reply = await self.ask(self.alice, {"id": "d", "to": 2, "type": "D", "msg": 77})
        self.assertEqual(reply["type"], "A", reply)
        await self.assert_tombstone_everywhere(self.alice, self.bob, "77")

    async def test_found_by_its_dedup_record_and_without_it(self):
        # the recall script reads the one entry its dedup record's seq names;
        # once that record has expired ([redis] dedup_ttl) it looks through
        # the sender's unmigrated entries instead: both find the message
        await self.send("m1")
        await self.send("m2", "the other secret")
        await self.send("m3", "a third one")
        self.assertEqual(await self.redis.delete(Keys().dedup(1, "m2", 2)), 1)
        for d_id, msg_id in (("d1", "m1"), ("d2", "m2")):
            reply = await self.ask(self.alice, recall(d_id, 2, msg_id))
            self.assertEqual(reply["type"], "A", reply)
            self.assertEqual((await self.bob.next_of("D"))["msg"], msg_id)
        items = await self.history(self.bob, 1)
        self.assertEqual([(m["id"], m["msg"], m.get("recalled", False)) for m in items],
                         [("m1", "", True), ("m2", "", True), ("m3", "a third one", False)])
        self.assertNotIn(SECRET, await self.redis_text())

    async def test_refusals(self):
        await self.send()
        reply = await self.ask(self.bob, {"id": "b1", "to": 1, "type": "t", "msg": "bob's"})
        cases = [(self.alice, recall("x1", 2, "nope"), "not_found"),       # no such message
                 (self.alice, recall("x2", 2, "b1"), "not_found"),         # someone else's
                 (self.bob, recall("x3", 1, "m1"), "not_found"),           # someone else's, named right
                 (self.alice, recall("x4", 3, "m1"), "not_found"),         # own, wrong recipient
                 (self.alice, {"id": "x5", "room": "r1", "type": "D", "msg": "m1"}, "not_found")]   # no rooms
        for client, packet, code in cases:
            reply = await self.ask(client, packet)
            self.assertEqual((reply["type"], reply.get("code")), ("E", code), (packet, reply))
        for bad in ({"id": "y", "to": 2, "type": "D"}, {"id": "y", "to": 2, "type": "D", "msg": ""},
                    {"id": "y", "to": "x", "type": "D", "msg": "m1"}):
            reply = await self.ask(self.alice, bad)
            self.assertEqual((reply["type"], reply.get("code")), ("E", "bad_packet"), (bad, reply))
        history = await self.history(self.bob)
        self.assertEqual([m["msg"] for m in history], [SECRET, "bob's"])

    async def test_outside_the_window_is_forbidden_in_redis_and_in_mysql(self):
        now = int(self.server.app.clock.seconds() * 1000)
        await store_entries(self.redis, [stored("old", 1, 2, now - 121000, SECRET),
                                         stored("recent", 1, 2, now - 60000, "recent")])
        reply = await self.ask(self.alice, recall("d-old", 2, "old"))
        self.assertEqual((reply["type"], reply.get("code")), ("E", "forbidden"), reply)
        reply = await self.ask(self.alice, recall("d-recent", 2, "recent"))
        self.assertEqual(reply["type"], "A", reply)
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        reply = await self.ask(self.alice, recall("d-old-2", 2, "old"))
        self.assertEqual((reply["type"], reply.get("code")), ("E", "forbidden"), reply)

    async def test_recall_of_a_message_already_migrated(self):
        await self.send()
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        reply = await self.ask(self.alice, recall("d1", 2, "m1"))
        self.assertEqual(reply["type"], "A", reply)
        await self.bob.next_of("D")
        # before the D is migrated, H shows the row as a tombstone
        await self.assert_tombstone_everywhere(self.alice, self.bob)
        # a second recall of it: nothing more to do
        again = await self.ask(self.alice, recall("d2", 2, "m1"))
        self.assertEqual((again["type"], again.get("dup")), ("A", True), again)
        await with_drain(migrator)
        rows = await self.mysql_rows()
        self.assertEqual([(bytes(i).decode(), m, r) for i, _, m, r, _ in rows], [("m1", "", 1), ("d1", "m1", 0)])
        self.assertNotIn(SECRET, rows[0][4])
        await self.assert_tombstone_everywhere(self.alice, self.bob)
        again = await self.ask(self.alice, recall("d3", 2, "m1"))
        self.assertEqual((again["type"], again.get("dup")), ("A", True), again)


class RecallRacingMigratorTests(RecallMixin, MigratorTestMixin, unittest.TestCase):
    """The message migrated before, during and after the recall: the row ends
    as a tombstone every time."""
    overrides = FAST

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.befriend(1, 2)
        self.alice = yield self.login(1)
        self.bob = yield self.login(2)

    async def final_row(self, migrator=None):
        if migrator is None:
            migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        rows = await self.mysql_rows()
        self.assertEqual([(bytes(i).decode(), m, r) for i, _, m, r, _ in rows if bytes(i) == b"m1"], [("m1", "", 1)])
        for _, _, _, _, packet in rows:
            self.assertNotIn(SECRET, packet)
        await self.assert_tombstone_everywhere(self.alice, self.bob)

    async def send_and_recall(self):
        reply = await self.ask(self.alice, recall("d1", 2, "m1"))
        self.assertEqual(reply["type"], "A", reply)

    async def test_recalled_before_migration(self):
        await self.ask(self.alice, {"id": "m1", "to": 2, "type": "t", "msg": SECRET})
        await self.send_and_recall()
        await self.final_row()

    async def test_recalled_while_its_batch_is_in_flight_and_already_inserted(self):
        # A migrator claimed the batch (it sits in MQ:processing) and its
        # INSERT committed with the text; it dies before its ack.
        await self.ask(self.alice, {"id": "m1", "to": 2, "type": "t", "msg": SECRET})
        entry = await self.redis.rpoplpush("MQ", "MQ:processing")
        message = json.loads(entry)
        packet = entry[:entry.rindex(',"seq"')] + "}"
        self.assertNotIn("'", packet + SECRET)
        await query(self.mysql_settings,
                    "INSERT INTO message (msg_id, from_id, to_id, type, msg, ts, accept_seq, packet)"
                    " VALUES ('m1', 1, 2, 't', '%s', %d, %d, '%s')" % (SECRET, message["ts"], message["seq"], packet))
        await self.send_and_recall()
        self.assertNotIn(SECRET, await self.redis_text())
        await self.final_row()

    async def test_recalled_while_its_batch_is_in_flight_not_inserted(self):
        await self.ask(self.alice, {"id": "m1", "to": 2, "type": "t", "msg": SECRET})
        await self.redis.rpoplpush("MQ", "MQ:processing")
        await self.send_and_recall()
        await self.final_row()

    async def test_recalled_after_migration(self):
        await self.ask(self.alice, {"id": "m1", "to": 2, "type": "t", "msg": SECRET})
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        await self.send_and_recall()
        await self.final_row(migrator)

    async def test_recalled_in_the_batch_that_stores_it_split_in_parts(self):
        # a batch large enough to go in two parts at once, the message in the
        # first, the D in the second
        await self.ask(self.alice, {"id": "m1", "to": 2, "type": "t", "msg": SECRET})
        for n in range(300):
            self.alice.send({"id": "f%d" % n, "to": 2, "type": "t", "msg": "filler"})
        for n in range(300):
            await self.alice.next_of("A")
        await self.send_and_recall()
        keys = Keys()
        self.assertGreater(await self.redis.llen(keys.mq), 300)
        migrator = start_migrator(self, self.server.app.settings.replace("migrate", batch=400, inserts_at_once=2))
        await self.final_row(migrator)
        self.assertEqual(migrator.rows_migrated, 302)


class DeleteTests(RecallMixin, ApiTestMixin, unittest.TestCase):

    async def test_delete_any_age_answers_and_reaches_both_sides(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        now = int(self.http.app.clock.seconds() * 1000)
        await store_entries(self.redis, [stored("old", 1, 2, now - 10 ** 7, SECRET)])
        response = await self.api("POST", "messages/delete", {"from": 1, "id": "old", "to": 2})
        self.assertEqual((response.code, response.json()), (200, {"deleted": True}), response)
        for client in (alice, bob):
            packet = await client.next_of("D")
            self.assertEqual((packet["from"], packet["to"], packet["msg"]), (1, 2, "old"), packet)
            self.assertIsInstance(packet["pos"], int)
        response = await self.api("POST", "messages/delete", {"from": 1, "id": "old", "to": 2})
        self.assertEqual((response.code, response.json()), (200, {"deleted": False}), response)
        for body in ({"from": 1, "id": "nope", "to": 2}, {"from": 2, "id": "old", "to": 1},
                     {"from": 1, "id": "old", "room": "r"}):
            response = await self.api("POST", "messages/delete", body)
            self.assert_error(response, 404)
        for body in ({"id": "old", "to": 2}, {"from": 1, "to": 2}, {"from": 1, "id": "old", "to": 2, "x": 1}):
            response = await self.api("POST", "messages/delete", body)
            self.assert_error(response, 400)
        await self.assert_tombstone_everywhere(alice, bob, "old")
        self.assertTrue(API_KEY)


class RecallPushTests(PushTestMixin, unittest.TestCase):
    """A push not yet sent for a recalled message is not sent."""

    async def test_the_only_undelivered_message_recalled_no_push(self):
        await self.befriend(1, 2)
        alice = await self.login(1)
        await self.say(alice, 2, SECRET, "m1")
        self.assertIsNotNone(await self.due(2))
        reply = await self.ask(alice, recall("d1", 2, "m1"))
        self.assertEqual(reply["type"], "A", reply)
        self.assertIsNone(await self.due(2))
        drainer = self.drainer()
        self.clock.advance(DELAY * 10)
        self.assertEqual(await drainer.run_due(), [])
        self.assertEqual(self.receiver.posts, [])

    async def test_with_others_undelivered_the_push_counts_them_without_the_recalled_text(self):
        await self.befriend(1, 2)
        alice = await self.login(1)
        await self.say(alice, 2, "first", "m0")
        await self.say(alice, 2, SECRET, "m1")
        reply = await self.ask(alice, recall("d1", 2, "m1"))
        self.assertEqual(reply["type"], "A", reply)
        drainer = self.drainer()
        self.advance_to(await self.due(2))
        self.assertEqual(await drainer.run_due(), [SENT])
        [post] = self.receiver.posts
        self.assertEqual(post.payload["unread"], 1)
        self.assertNotIn(SECRET, json.dumps(post.payload))


class RecallAcrossNodesTests(RecallMixin, MigratorTestMixin, unittest.TestCase):
    overrides = FAST

    async def test_the_d_reaches_the_recipient_on_another_node(self):
        node2 = await ImdServer(make_settings(dict(FAST, imd={"node_id": "test-node-2"}))).start()
        self.addCleanup(node2.stop)
        await self.befriend(1, 2)
        alice = await self.login(1)
        bob = await connect_client(node2.port, "/" + self.token(2))
        self.addCleanup(drop, bob)
        self.assertEqual((await bob.next())["type"], "L")
        await self.ask(alice, {"id": "m1", "to": 2, "type": "t", "msg": SECRET})
        self.assertEqual((await bob.next_of("t"))["msg"], SECRET)
        reply = await self.ask(alice, recall("d1", 2, "m1"))
        packet = await bob.next_of("D")
        self.assertEqual((packet["from"], packet["msg"], packet["pos"]), (1, "m1", reply["pos"]))
        await self.assert_tombstone_everywhere(alice, bob)

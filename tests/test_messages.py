"""Contract §2: P, t and i between real WebSocket clients, stored in real Redis."""

import json

from twisted.trial import unittest

from tests.support import ServerTestMixin, mq_entries


def text(packet_id, to, msg="hello"):
    return {"id": packet_id, "to": to, "type": "t", "msg": msg}


class MessageTests(ServerTestMixin, unittest.TestCase):

    async def stored(self):
        """The MQ list as the migrator will read it: oldest first."""
        return await mq_entries(self.redis)

    async def until_pong(self, client):
        """Everything ``client`` receives before the answer to a fresh ping."""
        client.send({"id": "sync", "to": 0, "type": "P"})
        got = []
        while True:
            packet = await client.next()
            if packet["type"] == "P" and packet["id"] == "sync":
                return got
            got.append(packet)

    async def test_ping(self):
        alice = await self.login(1)
        reply = await self.ask(alice, {"id": "p1", "to": 0, "type": "P", "msg": "ping"})
        self.assertEqual(reply, {"id": "p1", "from": 0, "type": "P", "msg": "pong"})

    async def test_ping_without_msg(self):
        alice = await self.login(1)
        reply = await self.ask(alice, {"id": 5, "to": 0, "type": "P"})
        self.assertEqual(reply, {"id": 5, "from": 0, "type": "P", "msg": "pong"})

    async def test_text_between_friends_is_stored_then_relayed(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        reply = await self.ask(alice, text("m1", 2, "hi bob"))
        pos = reply.pop("pos")
        self.assertEqual(reply, {"id": "m1", "from": 0, "type": "A", "msg": "success"})
        self.assertTrue(type(pos) is int and pos > 0, pos)
        delivered = await bob.next()
        ts = delivered.pop("ts")
        # the recipient's pos is the sender's (contract §10: one accept order)
        self.assertEqual(delivered, {"id": "m1", "from": 1, "to": 2, "type": "t", "msg": "hi bob", "pos": pos})
        self.assertIsInstance(ts, int)
        del delivered["pos"]
        self.assertEqual(await self.stored(), [dict(delivered, ts=ts)])

    async def test_image_between_friends(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        for packet_id, image in (("i1", "img-abc"), ("i2", 99)):
            reply = await self.ask(alice, {"id": packet_id, "to": "2", "type": "i", "msg": image})
            self.assertEqual(reply["type"], "A")
            delivered = await bob.next()
            self.assertEqual((delivered["type"], delivered["msg"], delivered["to"]), ("i", image, 2))

    async def test_not_a_friend(self):
        await self.befriend(1, 3)
        alice = await self.login(1)
        bob = await self.login(2)
        reply = await self.ask(alice, text("m1", 2))
        self.assertEqual((reply["type"], reply["code"], reply["id"]), ("E", "not_friend", "m1"))
        self.assertEqual(await self.stored(), [])
        self.assertEqual(await self.until_pong(bob), [], "bob got nothing")

    async def test_friendship_is_checked_from_the_sender_side(self):
        await self.redis.sadd("URS:2", 1)  # only bob lists alice
        alice = await self.login(1)
        reply = await self.ask(alice, text("m1", 2))
        self.assertEqual(reply["code"], "not_friend")

    async def test_1023_characters_pass_1024_are_too_long(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        ok = "é" * 1023  # code points, not bytes
        self.assertEqual((await self.ask(alice, text("ok", 2, ok)))["type"], "A")
        self.assertEqual((await bob.next())["msg"], ok)
        reply = await self.ask(alice, text("long", 2, "x" * 1024))
        self.assertEqual((reply["type"], reply["code"], reply["id"]), ("E", "too_long", "long"))
        self.assertEqual(len(await self.stored()), 1)

    async def test_integer_image_id_over_128_digits_is_too_long_and_not_stored(self):
        # issue 13 item 8: 10**4000 was acked and stored as 4,001 characters
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        widest = 10 ** 128 - 1  # 128 digits: the longest image id there is
        self.assertEqual((await self.ask(alice, {"id": "ok", "to": 2, "type": "i", "msg": widest}))["type"], "A")
        self.assertEqual((await bob.next())["msg"], widest)
        for packet_id, image in (("129", 10 ** 128), ("huge", 10 ** 4000)):
            reply = await self.ask(alice, {"id": packet_id, "to": 2, "type": "i", "msg": image})
            self.assertEqual((reply["type"], reply.get("code"), reply["id"]), ("E", "too_long", packet_id))
        self.assertEqual([json.loads(e)["id"] for e in await self.redis.lrange("MQ", 0, -1)], ["ok"])
        self.assertEqual(await self.until_pong(bob), [], "bob got nothing more")

    async def test_empty_text_is_bad_packet(self):
        await self.befriend(1, 2)
        alice = await self.login(1)
        reply = await self.ask(alice, text("e", 2, ""))
        self.assertEqual(reply["code"], "bad_packet")

    async def test_bad_input_gets_errors_and_connection_stays(self):
        alice = await self.login(1)
        cases = [
            (b"{not json", False, None, "bad_packet"),
            (b"[1, 2]", False, None, "bad_packet"),
            (b'"a string"', False, None, "bad_packet"),
            (b'{"id": "b1", "to": 0, "type": "P"}', True, None, "bad_packet"),
            (b'{"id": "u1", "to": 0, "type": "Z", "msg": 1}', False, "u1", "unknown_type"),
            (b'{"id": "s1", "to": 2, "type": "s", "msg": {}}', False, "s1", "unknown_type"),
            (b'{"to": 2, "type": "t", "msg": "no id"}', False, None, "bad_packet"),
            (b'{"id": "n1", "to": 2, "msg": "no type"}', False, "n1", "bad_packet"),
            (b'{"id": "n2", "type": "t", "msg": "no to"}', False, "n2", "bad_packet"),
            (b'{"id": "n3", "to": 2, "type": "t"}', False, "n3", "bad_packet"),
            (b'{"id": "n4", "to": -2, "type": "t", "msg": "x"}', False, "n4", "bad_packet"),
            (b'{"id": "n5", "to": 2, "type": "t", "msg": 5}', False, "n5", "bad_packet"),
            (b'{"id": 7, "to": 2, "type": "i", "msg": ["x"]}', False, 7, "bad_packet"),
            (b'{"id": [1], "to": 2, "type": "t", "msg": "x"}', False, None, "bad_packet"),
        ]
        for payload, binary, packet_id, code in cases:
            alice.send_raw(payload, binary)
            reply = await alice.next()
            self.assertEqual((reply["type"], reply["id"], reply["code"], reply["from"]),
                             ("E", packet_id, code, 0), payload)
            self.assertIsInstance(reply["msg"], str)
        pong = await self.ask(alice, {"id": "still", "to": 0, "type": "P"})
        self.assertEqual(pong["msg"], "pong")

    async def test_spoofed_from_is_ignored(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        packet = dict(text("sp", 2), **{"from": 3})
        self.assertEqual((await self.ask(alice, packet))["type"], "A")
        self.assertEqual((await bob.next())["from"], 1)
        self.assertEqual([m["from"] for m in await self.stored()], [1])

    async def test_retry_is_acked_but_stored_and_delivered_once(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        # the first A says its pos; each retry's A says dup, with the first
        # store's pos (contract §2 item 4, §10)
        first = await self.ask(alice, text("same", 2))
        self.assertEqual(first, {"id": "same", "from": 0, "type": "A", "msg": "success", "pos": first["pos"]})
        for _ in range(2):
            self.assertEqual(await self.ask(alice, text("same", 2)), {"id": "same", "from": 0, "type": "A",
                                                                       "msg": "success", "dup": True,
                                                                       "pos": first["pos"]})
        # numeric 42 and "42" are the same id for dedup
        numeric = await self.ask(alice, text(42, 2))
        self.assertNotIn("dup", numeric)
        self.assertGreater(numeric["pos"], first["pos"])
        self.assertEqual(await self.ask(alice, text("42", 2)), {"id": "42", "from": 0, "type": "A",
                                                                 "msg": "success", "dup": True,
                                                                 "pos": numeric["pos"]})
        # an image retry too
        image = {"id": "img", "to": 2, "type": "i", "msg": 7}
        self.assertNotIn("dup", await self.ask(alice, image))
        self.assertIs((await self.ask(alice, image))["dup"], True)
        got = await self.until_pong(bob)
        self.assertEqual([p["id"] for p in got], ["same", 42, "img"])
        self.assertEqual([m["id"] for m in await self.stored()], ["same", 42, "img"])

    async def test_same_id_from_two_senders_is_two_messages(self):
        await self.befriend(1, 3)
        await self.befriend(2, 3)
        alice, bob, carol = await self.login(1), await self.login(2), await self.login(3)
        await self.ask(alice, text("x", 3))
        await self.ask(bob, text("x", 3))
        self.assertEqual(sorted([(await carol.next())["from"], (await carol.next())["from"]]), [1, 2])

    async def test_every_device_of_the_recipient_receives(self):
        await self.befriend(1, 2)
        alice = await self.login(1)
        phone, web = await self.login(2), await self.login(2)
        await self.ask(alice, text("m", 2, "both"))
        self.assertEqual((await phone.next())["msg"], "both")
        self.assertEqual((await web.next())["msg"], "both")

    async def test_sender_leaving_before_the_ack_still_delivers(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        alice.send(text("gone", 2, "bye"))
        alice.transport.loseConnection()
        self.assertEqual((await bob.next())["msg"], "bye")


class OrderTests(ServerTestMixin, unittest.TestCase):
    overrides = {"websocket": {"rate": "100000", "burst": "100000"}}

    async def stored(self):
        """The MQ list as the migrator will read it: oldest first."""
        return await mq_entries(self.redis)

    async def test_thousand_back_to_back_messages_keep_their_order(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        n = 1000
        for i in range(n):
            alice.send(text("m%d" % i, 2, "n%d" % i))
        acks = [await alice.next() for _ in range(n)]
        self.assertEqual([a["id"] for a in acks], ["m%d" % i for i in range(n)])
        self.assertEqual({a["type"] for a in acks}, {"A"})
        delivered = [await bob.next() for _ in range(n)]
        self.assertEqual([d["msg"] for d in delivered], ["n%d" % i for i in range(n)])
        self.assertEqual([m["msg"] for m in await self.stored()], ["n%d" % i for i in range(n)])
        stamps = [d["ts"] for d in delivered]
        self.assertEqual(stamps, sorted(stamps))


class RateLimitTests(ServerTestMixin, unittest.TestCase):
    overrides = {"websocket": {"rate": "0.001", "burst": "3"}}

    async def test_over_the_bucket_is_rate_limited(self):
        alice = await self.login(1)
        for i in range(5):
            alice.send({"id": i, "to": 0, "type": "P"})
        replies = [await alice.next() for _ in range(5)]
        self.assertEqual([r["type"] for r in replies], ["P", "P", "P", "E", "E"])
        self.assertEqual([r.get("code") for r in replies[3:]], ["rate_limited"] * 2)
        self.assertEqual([r["id"] for r in replies], [0, 1, 2, 3, 4])


class TooManyErrorsTests(ServerTestMixin, unittest.TestCase):
    overrides = {"websocket": {"max_errors": "3"}}

    async def test_consecutive_errors_close_with_4008(self):
        alice = await self.login(1)
        alice.send_raw(b"x")
        alice.send_raw(b"x")
        alice.send({"id": "ok", "to": 0, "type": "P"})  # resets the count
        for _ in range(3):
            alice.send_raw(b"x")
        kinds = [(await alice.next())["type"] for _ in range(7)]
        self.assertEqual(kinds, ["E", "E", "P", "E", "E", "E", "C"])
        code, _ = await alice.wait_closed()
        self.assertEqual(code, 4008)


class DevicesTests(ServerTestMixin, unittest.TestCase):
    overrides = {"websocket": {"max_devices": "2"}}

    async def test_oldest_device_is_replaced_with_4002(self):
        await self.befriend(1, 2)
        first, second = await self.login(2), await self.login(2)
        third = await self.login(2)
        close = await first.next()
        self.assertEqual(close["type"], "C")
        self.assertEqual((await first.wait_closed())[0], 4002)
        alice = await self.login(1)
        await self.ask(alice, text("m", 2, "to the newest two"))
        self.assertEqual((await second.next())["msg"], "to the newest two")
        self.assertEqual((await third.next())["msg"], "to the newest two")


class ReplyLineTests(ServerTestMixin, unittest.TestCase):
    """Issue 22 item 2: a reply whose send raised (a packet over 64 KiB did)
    took the replies pipelined behind it down with it: they waited for the
    next reply to flush them."""

    async def test_a_reply_that_cannot_be_sent_is_E_internal_and_the_line_goes_on(self):
        protocol_class = self.server._listening.factory.protocol
        send_text = protocol_class.send_text

        def failing(connection, payload):
            if b'"id":"boom"' in payload and b'"type":"P"' in payload:
                raise RuntimeError("the send failed")
            return send_text(connection, payload)
        self.patch(protocol_class, "send_text", failing)
        await self.befriend(1, 2)
        alice = await self.login(1)
        alice.send({"id": "o", "to": 0, "type": "O", "msg": 2})   # answered from Redis: the others wait behind it
        alice.send({"id": "boom", "to": 0, "type": "P"})
        alice.send({"id": "after", "to": 0, "type": "P"})
        alice.send({"id": "x", "to": 0, "type": "Q"})
        replies = [await alice.next() for _ in range(4)]
        self.assertEqual([(r["id"], r["type"], r.get("code")) for r in replies],
                         [("o", "O", None), ("boom", "E", "internal"), ("after", "P", None),
                          ("x", "E", "unknown_type")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

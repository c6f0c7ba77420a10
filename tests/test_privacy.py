"""Contract §11 from the client's side: masked phone numbers and addresses,
blocked words (refused or starred, re-read on SIGHUP), and positions that go
to the customers of open orders only and stop at the close on every node.
Last, a daemon after a burst: the original text is in no Redis key, no
MySQL row and no log line."""

import os
import signal
import time

from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.daemon_support import start_daemon, write_config
from tests.mysql_support import MysqlTestMixin, query
from tests.support import RedisTestMixin, ServerTestMixin, connect_client, mq_entries, wait_until, with_deadline
from tests.test_orders import OrderTestMixin


class Captured:
    """Every log event's text while the test runs."""

    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self):
        return [formatEvent(e) for e in self.events]


async def redis_dump(redis):
    """Every key of the test's Redis db and its whole value, as one text."""
    parts, cursor = [], "0"
    while True:
        cursor, keys = await redis.execute_command("SCAN", cursor, "COUNT", 1000)
        for key in keys:
            kind = await redis.execute_command("TYPE", key)
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind == "string":
                value = await redis.execute_command("GET", key)
            elif kind == "list":
                value = await redis.execute_command("LRANGE", key, 0, -1)
            elif kind == "hash":
                value = await redis.execute_command("HGETALL", key)
            elif kind == "set":
                value = await redis.execute_command("SMEMBERS", key)
            elif kind == "zset":
                value = await redis.execute_command("ZRANGE", key, 0, -1, "WITHSCORES")
            else:
                raise AssertionError("a key of type %s: %s" % (kind, key))
            parts.append("%s %s %r" % (key, kind, value))
        if str(cursor) == "0":
            return "\n".join(parts)


async def next_is_pong(testcase, client):
    """Nothing came for ``client`` before the pong of a ping sent now (``ask``
    would skip what came)."""
    client.send({"id": "sync", "to": 0, "type": "P"})
    packet = await client.next()
    testcase.assertEqual((packet["type"], packet["id"]), ("P", "sync"), "got %r first" % (packet,))


class MaskingTests(ServerTestMixin, unittest.TestCase):
    overrides = {"privacy": {"mask": "phone, email"}}

    async def test_phone_numbers_and_addresses_are_masked_before_they_are_stored(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        text = "call me on +33 6 12 34 56 78 or (555) 123-4567, or mail jo.doe@example.com"
        reply = await self.ask(alice, {"id": "m1", "to": 2, "type": "t", "msg": text})
        self.assertEqual(reply, {"id": "m1", "from": 0, "type": "A", "msg": "success", "masked": True, "pos": 1})
        masked = "call me on [phone] or [phone], or mail [email]"
        self.assertEqual((await bob.next())["msg"], masked)
        self.assertEqual([e["msg"] for e in await mq_entries(self.redis)], [masked])
        everything = await redis_dump(self.redis)
        for secret in ("12 34 56 78", "123-4567", "jo.doe", "example.com"):
            self.assertNotIn(secret, everything)

    async def test_nothing_replaced_nothing_said(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        reply = await self.ask(alice, {"id": "m", "to": 2, "type": "t", "msg": "order 1234567 at 12:30"})
        self.assertEqual(reply, {"id": "m", "from": 0, "type": "A", "msg": "success", "pos": 1})
        self.assertEqual((await bob.next())["msg"], "order 1234567 at 12:30")

    async def test_a_retry_is_acked_as_a_masked_duplicate(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        packet = {"id": "r", "to": 2, "type": "t", "msg": "0612345678"}
        first = await self.ask(alice, packet)
        self.assertTrue(first["masked"])
        again = await self.ask(alice, packet)
        self.assertEqual(again, {"id": "r", "from": 0, "type": "A", "msg": "success", "dup": True, "masked": True,
                                 "pos": first["pos"]})
        self.assertEqual(len(await mq_entries(self.redis)), 1)
        self.assertEqual((await bob.next())["msg"], "[phone]")
        await next_is_pong(self, bob)   # delivered once

    async def test_only_text_is_masked(self):
        # an image id is the platform's handle of an uploaded image, not text
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        reply = await self.ask(alice, {"id": "i", "to": 2, "type": "i", "msg": "0612345678"})
        self.assertNotIn("masked", reply)
        self.assertEqual((await bob.next())["msg"], "0612345678")


class PhoneDigitsTests(ServerTestMixin, unittest.TestCase):
    overrides = {"privacy": {"mask": "phone", "phone_min_digits": "10"}}

    async def test_the_minimum_is_the_configured_one(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        for text, expected in (("123 456 789", "123 456 789"), ("123 456 7890", "[phone]"),
                               ("a@b.co", "a@b.co")):   # email not in mask
            await self.ask(alice, {"id": text, "to": 2, "type": "t", "msg": text})
            self.assertEqual((await bob.next())["msg"], expected)


class BlocklistTestMixin(ServerTestMixin):
    action = "refuse"
    words = "scam\n坏蛋\npay cash\n"

    @defer.inlineCallbacks
    def setUp(self):
        self.blocklist = os.path.abspath(self.mktemp())
        self.write_blocklist(self.words)
        self.overrides = {"moderation": {"blocklist": self.blocklist, "action": self.action}}
        yield ServerTestMixin.setUp(self)
        yield self.befriend(1, 2)
        self.alice, self.bob = yield defer.gatherResults([self.login(1), self.login(2)])

    def write_blocklist(self, text):
        with open(self.blocklist, "w", encoding="utf-8") as f:
            f.write(text)

    async def send(self, text, packet_id=None):
        return await self.ask(self.alice, {"id": packet_id or text, "to": 2, "type": "t", "msg": text})

    async def nothing_more_for_bob(self):
        await next_is_pong(self, self.bob)


class BlocklistRefuseTests(BlocklistTestMixin, unittest.TestCase):

    async def test_a_blocked_word_anywhere_in_any_case_or_width_is_refused(self):
        for text in ("SCAM", "this is a sCaM!", "scammer", "ｓｃａｍ", "你是坏蛋", "Pay Cash now"):
            reply = await self.send(text)
            self.assertEqual((reply["type"], reply["code"], reply["id"]), ("E", "blocked", text))
        await self.nothing_more_for_bob()
        self.assertEqual(await mq_entries(self.redis), [])
        # the connection stays open and other text goes through
        reply = await self.send("a fair price")
        self.assertEqual(reply, {"id": "a fair price", "from": 0, "type": "A", "msg": "success", "pos": reply["pos"]})
        self.assertEqual((await self.bob.next())["msg"], "a fair price")

    async def test_sighup_reads_the_list_again(self):
        captured = Captured(self)
        self.server.app.tls.startService()   # the process's SIGHUP handler
        self.addCleanup(self.server.app.tls.stopService)
        self.assertEqual((await self.send("scam"))["code"], "blocked")
        self.write_blocklist("fraud\nswindle\n\nFRAUD\n")
        reloaded = self.server.app.tls.when_reloaded()
        os.kill(os.getpid(), signal.SIGHUP)
        await with_deadline(reloaded, what="reload")
        self.assertIn("blocklist reloaded from %s: 2 entries" % self.blocklist, captured.texts())
        self.assertEqual((await self.send("Fraud!"))["code"], "blocked")
        self.assertEqual((await self.send("scam"))["type"], "A")

        os.remove(self.blocklist)
        reloaded = self.server.app.tls.when_reloaded()
        os.kill(os.getpid(), signal.SIGHUP)
        await with_deadline(reloaded, what="reload")
        [line] = [t for t in captured.texts() if t.startswith("blocklist reload failed")]
        self.assertIn("keeping the old list (2 entries)", line)
        self.assertIn("No such file", line)
        self.assertEqual((await self.send("swindle"))["code"], "blocked", "the old list still holds")


class BlocklistMaskTests(BlocklistTestMixin, unittest.TestCase):
    action = "mask"

    async def test_each_occurrence_becomes_stars_and_the_message_is_stored(self):
        reply = await self.send("SCAM? a ｓｃａｍ, 你是坏蛋吗")
        self.assertEqual(reply["masked"], True)
        masked = "****? a ****, 你是**吗"
        self.assertEqual((await self.bob.next())["msg"], masked)
        self.assertEqual([e["msg"] for e in await mq_entries(self.redis)], [masked])

    async def test_stars_count_the_characters_of_the_original(self):
        # ﬁ is one character that folds to two; İ one that folds to two; e + U+0301 two that fold to one
        self.write_blocklist("fine\nscam\ncafé\n")
        self.server.app.tls.reload()
        for text, expected in (("ﬁne", "***"), ("İİ scam", "İİ ****"), ("CAFE\u0301", "*****")):
            reply = await self.send(text)
            self.assertTrue(reply["masked"], text)
            self.assertEqual((await self.bob.next())["msg"], expected)


class PositionTestMixin(OrderTestMixin):
    """Contract §11: [privacy] positions = orders (the default).  What must
    not arrive is checked after something that must (a packet for another
    user of the same push): a position not sent is not merely late."""
    overrides = dict(OrderTestMixin.overrides, site={"min_interval": "0"})

    async def position(self, courier, lon, packet_id=None):
        reply = await self.ask(courier, {"id": packet_id or "s%s" % lon, "to": 0, "type": "S",
                                         "msg": {"longitude": lon, "latitude": 1.5}})
        self.assertEqual(reply["type"], "A", reply)

    async def gets_nothing(self, client):
        await next_is_pong(self, client)

    async def next_position(self, client):
        packet = await client.next()
        self.assertEqual((packet["type"], packet["from"]), ("S", 20), packet)
        return packet["msg"]["longitude"]

    async def open_order(self, courier, order, customer_client):
        """``courier`` takes ``order`` (created beforehand); its customer hears it."""
        await self.take(courier, order, "take%d" % order)
        self.assertEqual((await customer_client.next())["msg"]["event"], "taken")


class PositionsFollowOrdersTests(PositionTestMixin, unittest.TestCase):

    async def test_the_customer_of_an_open_order_gets_it_a_plain_friend_does_not(self):
        await self.create_order(42, 10, 20)
        await self.create_order(43, 12, 20)
        await self.befriend(20, 11)
        courier, customer, friend = await self.login(20), await self.login(10), await self.login(11)
        other = await self.login(12)
        await self.open_order(courier, 43, other)
        await self.position(courier, 1)
        self.assertEqual(await self.next_position(other), 1)
        await self.gets_nothing(customer)   # before its T: no order of theirs is open
        await self.open_order(courier, 42, customer)
        await self.position(courier, 2)
        self.assertEqual((await self.next_position(customer), await self.next_position(other)), (2, 2))
        await self.gets_nothing(friend)
        self.assertEqual(sorted(await self.redis.zrange("open:20", 0, -1)), ["42:10", "43:12"])

    async def test_the_close_stops_it_at_once_on_the_other_node(self):
        await self.create_order(42, 10, 20)
        await self.create_order(43, 12, 20)
        courier = await self.login_on(self.server, 20)
        customer = await self.login_on(self.node2, 10)
        other = await self.login_on(self.node2, 12)
        await self.open_order(courier, 42, customer)
        await self.open_order(courier, 43, other)
        await self.position(courier, 3)
        self.assertEqual((await self.next_position(customer), await self.next_position(other)), (3, 3))
        # closed through the other node (as by the server API there); its grace has only begun
        await self.node2.app.order_lifecycle.close(42)
        self.assertEqual((await customer.next())["msg"]["event"], "closed")
        await self.position(courier, 4)
        self.assertEqual(await self.next_position(other), 4)
        await self.gets_nothing(customer)
        # still friends for the close's grace: they can talk, not see each other
        self.assertEqual(await self.say(customer, 20, "where are you?"), "A")
        self.assertEqual(await self.redis.zrange("open:20", 0, -1), ["43:12"])

    async def test_another_open_order_with_the_same_customer_keeps_them_posted(self):
        for order, customer in ((42, 10), (43, 10), (44, 12)):
            await self.create_order(order, customer, 20)
        courier, customer, other = await self.login(20), await self.login(10), await self.login(12)
        await self.open_order(courier, 42, customer)
        await self.open_order(courier, 43, customer)
        await self.open_order(courier, 44, other)
        await self.server.app.order_lifecycle.close(42)
        await customer.next()   # closed
        await self.position(courier, 5)
        self.assertEqual((await self.next_position(customer), await self.next_position(other)), (5, 5))
        await self.server.app.order_lifecycle.close(43)
        await customer.next()
        await self.position(courier, 6)
        self.assertEqual(await self.next_position(other), 6)
        await self.gets_nothing(customer)

    async def test_a_repeated_t_after_the_close_does_not_reopen_it(self):
        await self.create_order(42, 10, 20)
        await self.create_order(43, 12, 20)
        courier, customer, other = await self.login(20), await self.login(10), await self.login(12)
        await self.open_order(courier, 42, customer)
        await self.open_order(courier, 43, other)
        await self.server.app.order_lifecycle.close(42)
        await customer.next()
        await self.take(courier, 42, "late retry")
        await self.position(courier, 7)
        self.assertEqual(await self.next_position(other), 7)
        await self.gets_nothing(customer)


class ThrottledPositionTests(PositionTestMixin, unittest.TestCase):
    overrides = dict(OrderTestMixin.overrides, site={"min_interval": "5"})

    async def test_a_position_held_back_by_the_throttle_goes_only_to_orders_still_open(self):
        clock = task.Clock()
        clock.advance(time.time())
        self.server.app.handlers["S"].__self__._clock = clock
        await self.create_order(42, 10, 20)
        await self.create_order(43, 12, 20)
        courier, customer, other = await self.login(20), await self.login(10), await self.login(12)
        await self.open_order(courier, 42, customer)
        await self.open_order(courier, 43, other)
        await self.position(courier, 1)
        self.assertEqual((await self.next_position(customer), await self.next_position(other)), (1, 1))
        await self.position(courier, 2)   # held until the interval ends
        await self.server.app.order_lifecycle.close(42)
        await customer.next()   # closed
        clock.advance(5)
        self.assertEqual(await self.next_position(other), 2)
        await self.gets_nothing(customer)


class FriendsModeTests(PositionTestMixin, unittest.TestCase):
    """[privacy] positions = friends: §4 as in version 2."""
    overrides = dict(PositionTestMixin.overrides, privacy={"positions": "friends"})

    async def test_friends_get_it_and_the_close_does_not_stop_it(self):
        await self.create_order(42, 10, 20)
        await self.befriend(20, 11)
        courier, customer, friend = await self.login(20), await self.login(10), await self.login(11)
        await self.open_order(courier, 42, customer)
        await self.position(courier, 1)
        self.assertEqual((await self.next_position(customer), await self.next_position(friend)), (1, 1))
        await self.server.app.order_lifecycle.close(42)
        await customer.next()
        await self.position(courier, 2)
        self.assertEqual(await self.next_position(customer), 2, "friends until the end of the grace")


# --- after a burst: where the original text could have gone --------------------

SECRETS = 12   # messages of the burst


class NowhereButMaskedTests(MysqlTestMixin, RedisTestMixin, unittest.TestCase):
    """A daemon (ws + migrate, [log] messages = true, pushes on) takes a
    burst of texts full of numbers, addresses and blocked words; then every
    Redis key, every MySQL row and the daemon's log hold only the masked
    text.  A SIGHUP in the middle re-reads the blocklist."""

    def secret_text(self, i):
        return ("ring +44 20 7946 %04d or 07700 9%05d, mail agent.%d@courier-mail.example, "
                "no forbiddenword%d; 秘密词 %d" % (i, i, i, i, i))

    def secrets(self, i):
        # (each with a space or a letter: a timestamp's digits cannot hold one by chance)
        return ["7946 %04d" % i, "07700 9%05d" % i, "agent.%d@" % i, "courier-mail", "forbiddenword", "秘密词"]

    async def test_the_original_text_is_written_nowhere(self):
        blocklist = os.path.abspath(self.mktemp())
        with open(blocklist, "w", encoding="utf-8") as f:
            f.write("forbiddenword\n秘密词\n")
        overrides = {"imd": {"roles": "ws, migrate"},
                     "privacy": {"mask": "phone, email"},
                     "moderation": {"blocklist": blocklist, "action": "mask"},
                     "log": {"messages": "true"},
                     # a gateway nobody listens on: the push records stay, retried
                     "push": {"url": "http://127.0.0.1:9/push", "secret": "s" * 32, "delay": "0"},
                     "migrate": {"interval": "0.05"}}
        daemon = await start_daemon(self, write_config(self, overrides))
        await self.befriend(1, 2)
        alice = await connect_client(daemon.port, "/" + self.token(1))
        bob = await connect_client(daemon.port, "/" + self.token(2))
        for client in (alice, bob):
            self.assertEqual((await client.next())["type"], "L")
        for i in range(SECRETS):
            alice.send({"id": "m%d" % i, "to": 2, "type": "t", "msg": self.secret_text(i)})
        acks = [await alice.next() for _ in range(SECRETS)]
        self.assertEqual([(a["type"], a.get("masked")) for a in acks], [("A", True)] * SECRETS)
        received = [(await bob.next())["msg"] for _ in range(SECRETS)]
        self.assertEqual(received[3], "ring [phone] or [phone], mail [email], no *************3; *** 3")

        # a word added to the list, then SIGHUP: the next text has it starred
        with open(blocklist, "a", encoding="utf-8") as f:
            f.write("latecomer\n")
        daemon.signal(signal.SIGHUP)
        await wait_until(lambda: "blocklist reloaded from %s: 3 entries" % blocklist in daemon.output(),
                         what="the reload's log line")
        alice.send({"id": "late", "to": 2, "type": "t", "msg": "a LATECOMER"})
        self.assertEqual((await alice.next())["masked"], True)
        self.assertEqual((await bob.next())["msg"], "a *********")

        async def migrated():
            rows = await query(self.mysql_settings, "SELECT COUNT(*) FROM message")
            return rows[0][0] == SECRETS + 1
        await wait_until(migrated, seconds=30, what="the burst in MySQL")
        await wait_until(lambda: self.redis.exists("push:inflight"), seconds=30, what="a push record")

        tables = await query(self.mysql_settings, "SHOW TABLES")
        mysql_rows = []
        for (table,) in tables:
            mysql_rows.append(repr(await query(self.mysql_settings, "SELECT * FROM `%s`" % table)))
        places = {"redis": await redis_dump(self.redis), "mysql": "\n".join(mysql_rows),
                  "log": daemon.output() + daemon.stderr.decode("utf-8", "replace")}
        for i in range(SECRETS):
            for secret in self.secrets(i) + ["latecomer", "LATECOMER"]:
                for place, text in places.items():
                    self.assertNotIn(secret, text, "%r found in %s" % (secret, place))
        masked = "ring [phone] or [phone], mail [email], no *************7; *** 7"
        for place in ("mysql", "log"):
            self.assertIn(masked, places[place], place)
        # migrated, the messages left Redis; the push record holds the newest
        self.assertTrue("[email]" in places["redis"] or "a *********" in places["redis"], places["redis"])

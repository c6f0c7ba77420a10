"""``H`` (contract §3): a user's sent and received messages, oldest first,
paged with ``after``, from MySQL and from Redis alike."""

import base64
import json

from twisted.internet import defer, task
from twisted.trial import unittest

from imd import protocol
from imd.errors import ImdError
from imd.handlers.history import decode_cursor, encode_cursor
from imd.stores.keys import Keys
from imd.stores.redis import compose_lua
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import MysqlTestMixin, RowLock
from tests.support import (ClientMixin, ImdServer, PrivateRedis, RedisTestMixin, ServerTestMixin, connect_client,
                           drop, key_pair, make_settings, redis_connection, wait_until)
from tests.test_migrator import FAST, MigratorTestMixin, send_and_collect

TS = 1_700_000_000_000


def stored(packet_id, sender, to, ts, msg="x", kind="t"):
    """A packet exactly as the daemon delivers it (and stores it, with its seq)."""
    return protocol.message_json(protocol.MessagePacket(packet_id, kind, to, msg), sender, ts).decode("utf-8")


# The store script's own way of storing an entry (accept order, MQ, both
# parties' pending index), for many entries at once.
_STORE_ENTRIES = compose_lua("""-- include: store_entry
for i = 1, #ARGV do
  store_entry(KEYS[1], KEYS[2], KEYS[2 * i + 1], KEYS[2 * i + 2], ARGV[i])
end
return 1
""")


async def store_entries(redis, packets):
    """Store ``packets`` (JSON text) as the daemon does, in this order;
    their entries (with seq) as now in Redis."""
    keys = Keys()
    for start in range(0, len(packets), 500):
        chunk = packets[start:start + 500]
        pending = []
        for packet in chunk:
            message = json.loads(packet)
            pending += [keys.pending(message["from"]), keys.pending(message["to"])]
        await redis.eval(_STORE_ENTRIES, [keys.mq, keys.mq_seq] + pending, chunk)
    return list(reversed(await redis.lrange(keys.mq, 0, len(packets) - 1)))


def order_key(packet):
    # by ts, then in the order stored (a stable sort of packets in that order)
    return packet["ts"]


class CursorTests(unittest.SynchronousTestCase):
    def test_round_trip(self):
        key = (TS, 7)
        self.assertEqual(decode_cursor(encode_cursor(key, 3, 50)), (key, 3, 50))

    def test_longest_cursor_fits_the_cursor_limit(self):
        cursor = encode_cursor((2 ** 53, 2 ** 63 - 1), protocol.MAX_UID, 500)
        self.assertLessEqual(len(cursor), protocol.MAX_CURSOR_CHARS)

    def test_bad_cursors(self):
        def b64(obj):
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()
        for bad in ("!!", "abc", b64([2, TS, 1, None, 9999]), b64([1, TS, 1, "a", None, 5]),
                    b64([2, TS, -1, None, 5]), b64([2, TS, "1", None, 5]), b64({"a": 1}),
                    b64([2, -1, 1, None, 5]), b64([2, TS, 1, "2", 5]), b64([2, TS, 1, 0, 5])):
            with self.assertRaises(ImdError) as caught:
                decode_cursor(bad)
            self.assertEqual(caught.exception.code, "bad_packet", bad)


class HistoryTestMixin(MigratorTestMixin):
    overrides = FAST

    @defer.inlineCallbacks
    def history(self, client, msg, limit_check=None, keep_pos=False):
        """Every packet of a query, following ``next``; checks each page
        (each packet's ``pos``, then dropped unless ``keep_pos``)."""
        packets, pages, n = [], 0, 0
        while True:
            n += 1
            reply = yield self.ask(client, {"id": "h%d" % n, "to": 0, "type": "H", "msg": msg})
            self.assertEqual(reply["type"], "H", reply)
            self.assertEqual(reply["from"], 0)
            pages += 1
            if limit_check is not None:
                self.assertLessEqual(len(reply["msg"]), limit_check)
            for packet in reply["msg"]:
                # every message carries its receipt state, last (contract §7.1)
                self.assertEqual(list(packet)[-1], "state", packet)
                self.assertEqual(packet.pop("state"), "sent", packet)
                # and its position in the user's stream (contract §10)
                pos = packet["pos"] if keep_pos else packet.pop("pos")
                self.assertTrue(type(pos) is int and pos > 0, packet)
            packets.extend(reply["msg"])
            if not reply["more"]:
                self.assertNotIn("next", reply)
                return packets, pages
            self.assertEqual(len(reply["msg"]), limit_check or len(reply["msg"]))
            msg = {"after": reply["next"]}

    def assert_exactly(self, packets, expected):
        ids = [(p["from"], str(p["id"])) for p in packets]
        self.assertEqual(len(ids), len(set(ids)), "a message came twice")
        self.assertEqual(packets, sorted(expected, key=order_key))


class HistoryTests(HistoryTestMixin, unittest.TestCase):

    async def test_messages_not_yet_migrated_appear(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        for n, text in enumerate(("one", "two", "three")):
            self.assertEqual((await self.ask(alice, {"id": n, "to": 2, "type": "t", "msg": text}))["type"], "A")
        live = [await bob.next_of("t") for _ in range(3)]
        self.assertEqual(await self.redis.llen("MQ"), 3)
        for client in (alice, bob):
            # each with the pos it was delivered with (contract §10)
            packets, pages = await self.history(client, 0, keep_pos=True)
            self.assertEqual(packets, live)
            self.assertEqual(pages, 1)
        since = live[0]["ts"] - 1
        packets, _ = await self.history(bob, {"since": since, "limit": 2}, limit_check=2, keep_pos=True)
        self.assertEqual(packets, live)

    async def test_paging_over_1000_messages_of_one_millisecond(self):
        entries = []
        for n in range(500):
            entries.append(stored(n, 1, 2, TS))          # numeric ids from 1
            entries.append(stored("s-%d" % n, 2, 1, TS))  # string ids from 2
        migrator = start_migrator(self, self.server.app.settings)
        first = await store_entries(self.redis, entries[:600])
        await with_drain(migrator)
        await migrator.stopService()
        await store_entries(self.redis, entries[600:])
        # committed but not yet deleted from Redis: in both places at once
        for entry in first[550:600]:
            seq = json.loads(entry)["seq"]
            for uid in (1, 2):
                await self.redis.zadd("pending:%d" % uid, seq, entry)
        self.assertEqual(len(await self.message_rows()), 600)
        expected = [json.loads(e) for e in entries]
        alice = await self.login(1)
        packets, pages = await self.history(alice, {"since": TS - 1, "limit": 37}, limit_check=37)
        self.assert_exactly(packets, expected)
        self.assertEqual(pages, 28)
        bob = await self.login(2)
        packets, _ = await self.history(bob, {"limit": 500}, limit_check=500)
        self.assert_exactly(packets, expected)
        packets, _ = await self.history(bob, TS)
        self.assertEqual(packets, [])

    async def test_with_keeps_one_conversation_and_nobody_reads_others(self):
        for a, b in ((1, 2), (1, 3), (2, 3)):
            await self.befriend(a, b)
        clients = {uid: await self.login(uid) for uid in (1, 2, 3)}
        sent = []
        migrator = start_migrator(self, self.server.app.settings)
        for round_ in range(2):
            for sender, to in ((1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2)):
                packet_id = "%d-%d-%d" % (round_, sender, to)
                reply = await self.ask(clients[sender], {"id": packet_id, "to": to, "type": "t", "msg": packet_id})
                self.assertEqual(reply["type"], "A")
                sent.append((sender, to, packet_id))
            if round_ == 0:
                await with_drain(migrator)  # the first round in MySQL, the second in Redis
                await migrator.stopService()

        def expected_ids(uid, other=None):
            return sorted((s, i) for s, t, i in sent
                          if uid in (s, t) and (other is None or other in (s, t)))

        def ids(packets):
            return sorted((p["from"], p["id"]) for p in packets)
        packets, pages = await self.history(clients[1], {"with": 2, "limit": 1}, limit_check=1)
        self.assertEqual(ids(packets), expected_ids(1, 2))
        self.assertEqual(pages, 4)  # the cursor kept limit 1 and with 2
        packets, _ = await self.history(clients[1], 0)
        self.assertEqual(ids(packets), expected_ids(1))
        self.assertFalse([p for p in packets if 1 not in (p["from"], p["to"])])
        # asking for someone else's conversation gives only one's own with them
        packets, _ = await self.history(clients[3], {"with": 2})
        self.assertEqual(ids(packets), expected_ids(3, 2))
        packets, _ = await self.history(clients[3], {"with": 3})
        self.assertEqual(packets, [])

    async def test_no_gap_or_duplicate_while_the_migrator_runs(self):
        entries = []
        for n in range(1500):
            sender, to = ((1, 2), (2, 1), (2, 9), (9, 1))[n % 4]
            entries.append(stored("b%d" % n if n % 3 else n, sender, to, TS + n // 7))
        await store_entries(self.redis, entries)
        expected = [json.loads(e) for e in entries if 1 in (json.loads(e)["from"], json.loads(e)["to"])]
        alice = await self.login(1)
        # The migration stops half way, at the batch holding entry 700 (its
        # insert waits on this uncommitted row, the next batch claimed
        # behind it), until two passes have run there: however fast the
        # migrator, passes run while it is half done.
        lock = RowLock(self.mysql_settings)
        self.addCleanup(lock.release)
        await lock.take(1, "b700", 2)
        settings = self.server.app.settings.replace("migrate", batch=20, interval=0.01)
        migrator = start_migrator(self, settings)
        passes = mixed = 0
        while True:
            in_redis = await self.redis.llen("MQ")
            packets, _ = await self.history(alice, {"limit": 100}, limit_check=100)
            self.assert_exactly(packets, expected)
            passes += 1
            if 0 < in_redis < 1500:
                mixed += 1
                if mixed == 2:
                    await lock.release()
            if in_redis == 0 and not await self.redis.llen("MQ:processing"):
                break
        self.assertGreaterEqual(mixed, 2, "no pass ran while the migration was half done")
        self.assertEqual(len(await self.message_rows()), 1500)
        self.assertGreaterEqual(migrator.rows_migrated, 1)

    async def test_bad_arguments(self):
        alice = await self.login(1)
        good = encode_cursor((TS, 2), None, 10)
        for n, msg in enumerate(({"limit": 0}, {"limit": 501}, {"limit": "5"}, {"since": -1}, {"with": "abc"},
                                 {"after": "!!!"}, {"after": good[:-3]}, {"after": good, "limit": 5},
                                 {"after": base64.urlsafe_b64encode(b'[2,5,2,null,9999]').decode()},
                                 {"what": 1}, "yesterday", None, [1])):
            reply = await self.ask(alice, {"id": n, "to": 0, "type": "H", "msg": msg})
            self.assertEqual((reply["type"], reply["code"], reply["id"]), ("E", "bad_packet", n), msg)
        reply = await self.ask(alice, {"id": "ok", "to": 0, "type": "H", "msg": {"after": good}})
        self.assertEqual((reply["type"], reply["msg"], reply["more"]), ("H", [], False))


def long_text(n, length=1023):
    """``length`` characters, multi-byte in UTF-8 (3 or 4 bytes each): 17 of them are over 64 KiB."""
    alphabet = "😀😀中😀"
    return "".join(alphabet[(n + i) % 4] for i in range(length))


def record_sizes(client):
    """The byte size of each text frame ``client`` receives, in order."""
    sizes = []
    on_message = client.onMessage

    def record(payload, is_binary):
        sizes.append(len(payload))
        on_message(payload, is_binary)
    client.onMessage = record
    return sizes


class LargeReplyTests(HistoryTestMixin, unittest.TestCase):
    """Issue 22 item 2: Autobahn applied max_message_bytes (64 KiB) to what
    the server sends: a friend's 17 long texts left the victim's ``H``
    without a reply, and the replies pipelined after it stuck.  Contract §3:
    an ``H`` reply holds at most 1 MiB of JSON, a larger page is cut short
    with ``more``."""

    async def test_seventeen_long_texts_and_the_replies_pipelined_after_them(self):
        await self.befriend(1, 2)
        friend, victim = await self.login(1), await self.login(2)
        sizes = record_sizes(victim)
        texts = [long_text(n) for n in range(17)]
        for n, text in enumerate(texts):
            self.assertEqual((await self.ask(friend, {"id": n, "to": 2, "type": "t", "msg": text}))["type"], "A")
        for _ in texts:
            await victim.next_of("t")
        del sizes[:]
        victim.send({"id": "h", "to": 0, "type": "H", "msg": {"since": 0, "limit": 100}})
        victim.send({"id": "p", "to": 0, "type": "P"})
        victim.send({"id": "e", "to": 0, "type": "Q"})
        replies = [await victim.next() for _ in range(3)]
        self.assertEqual([(r["id"], r["type"]) for r in replies], [("h", "H"), ("p", "P"), ("e", "E")])
        self.assertEqual([m["msg"] for m in replies[0]["msg"]], texts)
        self.assertFalse(replies[0]["more"])
        self.assertGreater(sizes[0], 65536)
        self.assertLessEqual(sizes[0], 1024 * 1024)

    async def test_a_page_over_1_mib_is_cut_short_and_paging_goes_on(self):
        # 300 texts of 1023 four-byte characters: ~1.2 MB in one page of 500
        texts = ["😀" * 1023] * 300
        await store_entries(self.redis, [stored(n, 1, 2, TS + n, msg) for n, msg in enumerate(texts)])
        victim = await self.login(2)
        sizes = record_sizes(victim)
        received, pages, msg = [], [], {"since": 0, "limit": 500}
        while True:
            reply = await self.ask(victim, {"id": len(pages), "to": 0, "type": "H", "msg": msg})
            pages.append((len(reply["msg"]), reply["more"], sizes[-1]))
            received += [m["id"] for m in reply["msg"]]
            if not reply["more"]:
                break
            msg = {"after": reply["next"]}
        self.assertEqual(received, list(range(300)))   # nothing skipped, nothing twice, in order
        self.assertGreater(len(pages), 1)
        self.assertTrue(all(size <= 1024 * 1024 for _, _, size in pages), pages)
        self.assertGreater(pages[0][2], 1024 * 1024 - 5000, pages)   # cut close to the cap, not far below
        self.assertLess(pages[0][0], 300)


class AcceptOrderTests(HistoryTestMixin, unittest.TestCase):
    """Issue 12 item 1: messages of one millisecond came back sorted by id
    as a string ("10" before "9"); they come back in the order the server
    accepted them, across pages, across the Redis/MySQL boundary and after
    the migrator's two-part parallel insert."""

    @defer.inlineCallbacks
    def pages(self, client, msg, count):
        """Up to ``count`` pages of 7: (packets, the query for the next page or None)."""
        packets = []
        for n in range(count):
            reply = yield self.ask(client, {"id": "p%d" % n, "to": 0, "type": "H", "msg": msg})
            self.assertEqual(reply["type"], "H", reply)
            self.assertLessEqual(len(reply["msg"]), 7)
            packets.extend(reply["msg"])
            if not reply["more"]:
                return packets, None
            msg = {"after": reply["next"]}
        return packets, msg

    async def migrate_now(self, clock, rows):
        """Wake the migrator (it sleeps on ``clock``) and wait until MySQL holds ``rows`` rows."""
        clock.advance(1.0)
        await wait_until(lambda: self.message_rows().addCallback(lambda found: len(found) == rows),
                         what="%d rows migrated" % rows)

    async def test_300_messages_sent_back_to_back_page_in_the_order_sent(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        clock = task.Clock()
        # batch 200: the first batch goes in as two halves of 100 at once
        settings = self.server.app.settings.replace("migrate", batch=200, interval=1.0, lock_ttl=60.0,
                                                    inserts_at_once=2)
        migrator = start_migrator(self, settings, clock)
        await with_drain(migrator)
        ids = [str(n) for n in range(1, 301)]   # "10" sorts before "9"
        await send_and_collect(alice, 1, 2, ids[:200])

        # bob pages through while the first 200 migrate and the last 100 arrive
        first, query = await self.pages(bob, {"limit": 7}, 5)
        await self.migrate_now(clock, 200)
        await send_and_collect(alice, 1, 2, ids[200:])
        rest, query = await self.pages(bob, query, 100)
        self.assertIsNone(query)
        self.assertEqual([p["id"] for p in first + rest], ids)
        seen = first + rest

        # alice pages through while the last 100 migrate
        first, query = await self.pages(alice, {"limit": 7}, 20)
        await self.migrate_now(clock, 300)
        rest, _ = await self.pages(alice, query, 100)
        self.assertEqual(first + rest, seen)

        # and from MySQL alone
        for client, other in ((alice, 2), (bob, 1)):
            packets, _ = await self.pages(client, {"limit": 7, "with": other}, 100)
            self.assertEqual(packets, seen)
        # what makes it a test: messages of one millisecond whose ids sort otherwise
        same_ms = [(a["id"], b["id"]) for a, b in zip(seen, seen[1:])
                   if a["ts"] == b["ts"] and a["id"] > b["id"]]
        self.assertTrue(same_ms, "no two messages of one millisecond with ids out of string order")


# Redis commands that read a list (MQ is one) or walk the keyspace
_LIST_READS = ("lrange", "lindex", "lpos", "llen", "sort", "sort_ro", "scan", "keys")


def command_calls(info):
    """``{command: calls}`` from the text of ``INFO commandstats``."""
    calls = {}
    for line in info.splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_"):].partition(":")
            calls[name] = int(stats.split(",")[0].split("=")[1])
    return calls


class HistoryCostTests(MysqlTestMixin, ClientMixin, RedisTestMixin, unittest.TestCase):
    """Issue 13 item 4: each ``H`` scanned the whole ``MQ`` inside Redis
    (26 ms instead of 1.2 ms with 20,000 unmigrated entries).  On a Redis of
    the test's own, so that its command statistics are this test's alone."""

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        yield MysqlTestMixin.setUp(self)
        self.private = yield PrivateRedis().start()
        self.addCleanup(self.private.stop)
        self.backlog = yield redis_connection(db=0, port=self.private.port)
        self.addCleanup(self.backlog.disconnect)
        yield self.backlog.mset(dict(zip(("publicKey", "privateKey"), key_pair())))
        self.server = yield ImdServer(make_settings(redis_db=0, redis_port=self.private.port)).start()
        self.addCleanup(self.server.stop)
        self._clients = []

    @defer.inlineCallbacks
    def connect(self, path):
        client = yield connect_client(self.server.port, path)
        self.addCleanup(lambda: drop(client) if not client.closed.called else None)
        return client

    async def test_history_of_a_user_with_nothing_pending_never_reads_the_backlog(self):
        # 20,000 unmigrated messages between other users (MySQL or the migrator is down)
        await fill_backlog(self.backlog, [stored("b%d" % n, 10 + n % 50, 100 + n % 7, TS + n) for n in range(20000)])
        self.assertEqual(await self.backlog.llen("MQ"), 20000)
        alice = await self.login(1)
        await self.backlog.execute_command("CONFIG", "RESETSTAT")
        for n in range(5):
            reply = await self.ask(alice, {"id": n, "to": 0, "type": "H", "msg": {"limit": 500}})
            self.assertEqual((reply["type"], reply["msg"], reply["more"]), ("H", [], False))
        calls = command_calls(await self.backlog.execute_command("INFO", "commandstats"))
        self.assertGreaterEqual(sum(calls.values()) - calls.get("config|resetstat", 0), 5, calls)
        self.assertEqual({name: calls[name] for name in _LIST_READS if name in calls}, {},
                         "H read a list or walked the keyspace: %s" % calls)


async def fill_backlog(redis, packets):
    """``packets`` stored as the daemon stores them, unmigrated."""
    await store_entries(redis, packets)


class HistoryRateTests(MysqlTestMixin, ServerTestMixin, unittest.TestCase):
    """``H`` has a rate of its own, lower than the packets' ([websocket]
    history_rate = 2/s, history_burst = 10 by default)."""

    async def test_the_eleventh_h_of_a_burst_is_rate_limited(self):
        alice = await self.login(1)
        for n in range(11):
            alice.send({"id": n, "to": 0, "type": "H", "msg": 0})
        alice.send({"id": "p", "to": 0, "type": "P"})
        replies = [await alice.next() for _ in range(12)]
        self.assertEqual([(r["type"], r["id"]) for r in replies],
                         [("H", n) for n in range(10)] + [("E", 10), ("P", "p")])
        self.assertEqual(replies[10]["code"], "rate_limited")


class UserHistoryBudgetTests(MysqlTestMixin, ServerTestMixin, unittest.TestCase):
    """Issue 22 item 9: ``history_rate`` was per connection, so 30
    connections at the allowed 2 ``H``/s took 59% of a core.  A user's
    connections, on every node, now share one budget as well
    (``history_user_rate``, ``history_user_burst``), kept in Redis; the
    nodes run on one task.Clock, which the test moves."""

    overrides = {"websocket": {"history_user_rate": "2", "history_user_burst": "4"}}

    @defer.inlineCallbacks
    def setUp(self):
        import time
        self.clock = task.Clock()
        self.clock.advance(time.time())   # the tokens' time
        yield super().setUp()
        # the first node of ServerTestMixin runs on the reactor: two more on the Clock
        self.nodes = []
        for name in ("budget-a", "budget-b"):
            node = yield ImdServer(make_settings(dict(self.overrides, imd={"node_id": name})), self.clock).start()
            self.addCleanup(node.stop)
            self.nodes.append(node)

    async def history_round(self, clients, per_client):
        """Each client sends ``per_client`` H at once; the answers' types/codes."""
        for client in clients:
            for n in range(per_client):
                client.send({"id": n, "to": 0, "type": "H", "msg": 0})
        answers = []
        for client in clients:
            for n in range(per_client):
                reply = await client.next()
                self.assertEqual(reply["id"], n)
                answers.append(reply.get("code", reply["type"]))
        return answers

    async def test_connections_of_one_user_on_two_nodes_share_one_budget(self):
        a, b = self.nodes
        phone, web, tablet = await self.login_on(a, 1), await self.login_on(b, 1), await self.login_on(b, 1)
        other = await self.login_on(a, 2)
        # 9 H, each connection well within its own history_burst of 10: 4 answered in all
        answers = await self.history_round([phone, web, tablet], 3)
        self.assertEqual(sorted(answers), ["H"] * 4 + ["rate_limited"] * 5, answers)
        reply = await self.ask(web, {"id": "x", "to": 0, "type": "H", "msg": 0})
        self.assertIn("history budget", reply["msg"])
        # another user has a budget of its own
        self.assertEqual(await self.history_round([other], 4), ["H"] * 4)
        # 2/s: one second later two more, whichever connection asks
        self.clock.advance(1)
        self.assertEqual(sorted(await self.history_round([tablet, phone], 2)), ["H", "H", "rate_limited",
                                                                               "rate_limited"])
        # the bucket expires once it would be full again
        ttl = await self.redis.execute_command("PTTL", "budget:history:1")
        self.assertTrue(0 < ttl <= 3000, ttl)

    async def test_the_bucket_refills_at_its_rate_and_stops_at_its_burst(self):
        from imd.stores.budgets import Budget
        messages = self.server.app.messages
        budget = Budget(2, 3)
        now = 1700000000000

        async def take(at):
            return (await messages.pending_for_history(7, budget, at)) is not None
        self.assertEqual([await take(now) for _ in range(4)], [True, True, True, False])
        self.assertEqual([await take(now + 499), await take(now + 500), await take(now + 500)], [False, True, False])
        # a clock behind the bucket's (another node's) refills nothing
        self.assertFalse(await take(now - 60000))
        # idle long enough: full again, never more than the burst
        self.assertEqual([await take(now + 3600000) for _ in range(4)], [True, True, True, False])
        # rate 0: no per-user limit
        self.assertTrue(all([await messages.pending_for_history(8, Budget(0, 1), now) is not None
                             for _ in range(20)]))
        self.assertEqual(await self.redis.exists("budget:history:8"), 0)

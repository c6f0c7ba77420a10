"""Contract §7.5: offline push.  Messages note pending pushes in their store
script; one drainer sends them, signed, once per recipient per ``[push]
delay`` window, retried with backoff on timeout/5xx until ``max_age``, not
on 4xx; what is pending survives a kill -9.  The gateway is a real HTTP
server of the test (tests/push_support.py); the drainer runs on a
task.Clock where timing matters."""

import dataclasses
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import subprocess
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from imd import protocol
from imd.push import payload
from imd.push.drainer import REJECTED, RETRY, SENT, PushDrainer, backoff, outcome_of
from imd.push.gateway import Gateway
from imd.stores.push import PushStore
from tests.mysql_support import MysqlTestMixin
from tests.push_support import SECRET, Receiver
from tests.support import ServerTestMixin, free_port, settings_text, wait_until, with_deadline
from tests.test_migrator_crash import MigratorProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DELAY = 10.0   # seconds; the drainer runs on a task.Clock, so this costs no time


def doc_code(language):
    """The first ``language`` code block of docs/push.md."""
    with open(os.path.join(ROOT, "docs", "push.md"), encoding="utf-8") as f:
        text = f.read()
    return re.search(r"```%s\n(.*?)```" % language, text, re.S).group(1)


def doc_verify():
    """docs/push.md's Python ``verify``, as a reader would paste it."""
    namespace = {}
    exec(compile(doc_code("python"), "docs/push.md", "exec"), namespace)
    return namespace["verify"]


def verified(post):
    """The POST passes docs/push.md's check when it arrived, and its
    X-Imd-Timestamp is the time of that attempt."""
    return (post.timestamp == "%d" % int(post.at)
            and doc_verify()(SECRET.encode(), post.body, post.delivery, post.timestamp, post.signature, now=post.at))


class PayloadTests(unittest.SynchronousTestCase):

    def test_preview(self):
        self.assertEqual(payload.preview({"type": "t", "msg": "é" * 150}), "é" * 100)
        self.assertEqual(payload.preview({"type": "t", "msg": "hi"}), "hi")
        self.assertEqual(payload.preview({"type": "i", "msg": 42}), "[image]")
        self.assertEqual(payload.preview({"type": "s", "msg": {"order": 1, "event": "taken"}}), "taken")
        self.assertEqual(payload.preview({"type": "s", "msg": {"order": 1}}), "")
        self.assertEqual(payload.preview({"type": "t", "msg": "secret"}, enabled=False), "")

    def test_body(self):
        packet = protocol.message_json(protocol.parse_frame(
            b'{"id": 7, "to": 2, "type": "t", "msg": "hello"}'), 1, 1700000000123).decode()
        self.assertEqual(json.loads(payload.body(2, packet, 3)),
                         {"to": 2, "from": 1, "id": 7, "type": "t", "preview": "hello", "ts": 1700000000123,
                          "unread": 3})
        # without previews the client-chosen id goes too: ids can carry text (contract §7.5)
        self.assertEqual(json.loads(payload.body(2, packet, 3, with_preview=False)),
                         {"to": 2, "from": 1, "id": "", "type": "t", "preview": "", "ts": 1700000000123,
                          "unread": 3})
        self.assertEqual(payload.body(2, packet, 3), payload.body(2, packet, 3))   # the same on every try
        for bad in ("[1]", "{", '"x"'):
            self.assertRaises(ValueError, payload.body, 2, bad, 1)

    def test_signature_is_what_the_docs_verify(self):
        body, key, ts = b'{"to":2}', "3f2a9c0d41b7e6a8-1", 1700000010
        header = payload.signature(SECRET, ts, key, body)
        # sha256=<hex HMAC-SHA256 of "<timestamp>.<delivery key>.<body>"> (contract §7.5)
        self.assertEqual(header, "sha256=" + hmac.new(SECRET.encode(), b"1700000010.3f2a9c0d41b7e6a8-1." + body,
                                                      hashlib.sha256).hexdigest())
        verify, secret = doc_verify(), SECRET.encode()
        self.assertTrue(verify(secret, body, key, str(ts), header, now=ts))
        self.assertTrue(verify(secret, body, key, str(ts), header, now=ts + 300))
        self.assertFalse(verify(secret, body + b" ", key, str(ts), header, now=ts))
        self.assertFalse(verify(secret, body, key + "0", str(ts), header, now=ts))          # re-keyed
        self.assertFalse(verify(secret, body, key, str(ts + 1), header, now=ts))            # re-dated
        self.assertFalse(verify(b"other", body, key, str(ts), header, now=ts))
        self.assertFalse(verify(secret, body, key, str(ts), header, now=ts + 301))          # replayed late
        self.assertFalse(verify(secret, body, key, str(ts), header, now=ts - 301))          # from the future
        for bad in ("", "x", "-1", "1e9", " %d" % ts):
            self.assertFalse(verify(secret, body, key, bad, header, now=ts), bad)
        self.assertFalse(verify(secret, body, key, str(ts), "sha256=é", now=ts))

    def test_backoff_doubles_to_60s_with_jitter(self):
        rng = random.Random(1)
        for attempts, step in ((1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (30, 60)):
            waits = [backoff(attempts, rng) for _ in range(200)]
            self.assertTrue(all(0.8 * step <= w <= step for w in waits), (attempts, min(waits), max(waits)))
            self.assertGreater(max(waits) - min(waits), 0.1 * step)   # jittered

    def test_outcomes(self):
        self.assertEqual([outcome_of(s) for s in (200, 204, 400, 404, 429, 500, 503, 301, None)],
                         [SENT, SENT, REJECTED, REJECTED, REJECTED, RETRY, RETRY, RETRY, RETRY])


class NodeTestsOfTheNodeExample(unittest.TestCase):

    def test_node_example_verifies_a_signature(self):
        node = shutil.which("node")
        if node is None:
            raise unittest.SkipTest("node is not installed")
        body, key, ts = '{"to":2,"unread":1}', "3f2a9c0d41b7e6a8-1", 1700000010
        script = doc_code("js") + (
            "\nconst [s, text, key, ts, signature] = process.argv.slice(-5), b = Buffer.from(text), t = Number(ts);"
            "\nconsole.log([verify(s, b, key, ts, signature, t), verify(s, b, key, ts, signature, t + 300),"
            " verify(s, b, key, ts, 'sha256=00', t), verify('x', b, key, ts, signature, t),"
            " verify(s, Buffer.from(text + ' '), key, ts, signature, t), verify(s, b, key + '0', ts, signature, t),"
            " verify(s, b, key, String(t + 1), signature, t), verify(s, b, key, ts, signature, t + 301),"
            " verify(s, b, key, ts, signature, t - 301), verify(s, b, key, '1e9', signature, t)].join(' '));")
        result = subprocess.run([node, "-e", script, SECRET, body, key, str(ts),
                                 payload.signature(SECRET, ts, key, body.encode())],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.stdout.strip(), "true true" + " false" * 8, result.stderr)


class PushTestMixin(ServerTestMixin):
    """imd (ws role) with [push] url at a receiver of the test; drainers on
    ``self.clock``."""

    push = {}          # [push] values besides url, secret and delay
    settings = {}      # other sections

    @defer.inlineCallbacks
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.receiver = yield Receiver(self.clock).start()
        self.addCleanup(self.receiver.stop)
        values = {"url": self.receiver.url, "secret": SECRET, "delay": str(DELAY)}
        values.update(self.push)
        self.overrides = dict(self.settings, push=values)
        yield super().setUp()

    def drainer(self, url=None, **settings):
        app = self.server.app
        push = dataclasses.replace(app.settings.push, **settings)
        gateway = Gateway(reactor, self.clock, url or push.url, push.secret, push.timeout, 8)
        self.addCleanup(gateway.close)
        return PushDrainer(PushStore(app.redis_client, app.keys), gateway, push, self.clock, lambda: True,
                           rng=random.Random(5))

    async def say(self, client, to, text, packet_id=None):
        reply = await self.ask(client, {"id": packet_id or text, "to": to, "type": "t", "msg": text})
        self.assertEqual(reply["type"], "A", reply)

    async def due(self, uid):
        """When the user's push is due (clock seconds), or None."""
        score = await self.redis.zscore("push:due", uid)
        return None if score is None else float(score) / 1000.0

    def advance_to(self, seconds):
        self.clock.advance(max(0.0, seconds - self.clock.seconds()))

    async def run_until(self, drainer, done, step=0.01, limit=100.0):
        """Run the drainer every ``step`` clock seconds until ``done()``."""
        end = self.clock.seconds() + limit
        while not done():
            self.assertLess(self.clock.seconds(), end, "still not done after %ss of clock" % limit)
            await drainer.run_due()
            self.clock.advance(step)


class OfflinePushTests(PushTestMixin, unittest.TestCase):

    async def test_offline_recipient_gets_one_signed_post_after_the_delay(self):
        await self.befriend(1, 2)
        sender = await self.login(1)
        for text in ("one", "two", "three"):
            await self.say(sender, 2, text)
        due = await self.due(2)
        drainer = self.drainer()
        self.advance_to(due - 0.01)
        self.assertEqual(await drainer.run_due(), [])
        self.assertEqual(self.receiver.posts, [])
        self.advance_to(due)
        self.assertEqual(await drainer.run_due(), [SENT])
        [post] = self.receiver.posts
        self.assertTrue(verified(post), post)
        stored = json.loads(await self.redis.lindex("MQ", 0))
        self.assertEqual(post.payload, {"to": 2, "from": 1, "id": "three", "type": "t", "preview": "three",
                                        "ts": stored["ts"], "unread": 3})
        self.assertTrue(post.delivery)
        # the window is over and its messages are pushed: nothing more
        self.clock.advance(DELAY * 10)
        self.assertEqual(await drainer.run_due(), [])
        # a new message opens a new window; unread counts all undelivered
        await self.say(sender, 2, "four")
        self.advance_to(await self.due(2))
        self.assertEqual(await drainer.run_due(), [SENT])
        self.assertEqual(len(self.receiver.posts), 2)
        second = self.receiver.posts[1]
        self.assertEqual((second.payload["id"], second.payload["unread"]), ("four", 4))
        self.assertNotEqual(second.delivery, post.delivery)
        self.assertEqual(drainer.sent, 2)
        self.assertEqual(await self.redis.hlen("push:inflight"), 0)

    async def test_a_duplicate_counts_once_and_each_recipient_has_its_own_window(self):
        await self.befriend(1, 2)
        await self.befriend(1, 3)
        sender = await self.login(1)
        await self.say(sender, 2, "a")
        await self.say(sender, 2, "a")          # a retry: acked, not stored, not counted
        await self.say(sender, 3, "b")
        self.assertEqual(await self.redis.hgetall("push:unread"), {"2": "1", "3": "1"})
        self.advance_to(max(await self.due(2), await self.due(3)))
        self.assertEqual(sorted(await self.drainer().run_due()), [SENT, SENT])
        self.assertEqual(sorted((p.payload["to"], p.payload["unread"]) for p in self.receiver.posts),
                         [(2, 1), (3, 1)])

    async def test_gateway_503_three_times_then_200(self):
        self.receiver.answers = [503, 503, 503]
        await self.befriend(1, 2)
        await self.say(await self.login(1), 2, "hi")
        self.advance_to(await self.due(2))
        drainer = self.drainer()
        await self.run_until(drainer, lambda: drainer.sent)
        posts = self.receiver.posts
        self.assertEqual(len(posts), 4)
        self.assertEqual((drainer.sent, drainer.retried, drainer.rejected, drainer.expired), (1, 3, 0, 0))
        # one push: the same delivery key and body on every try, each signed
        # with the time of its own attempt
        self.assertEqual({(p.delivery, p.body) for p in posts}, {(posts[0].delivery, posts[0].body)})
        self.assertTrue(all(verified(p) for p in posts), posts)
        gaps = [b.at - a.at for a, b in zip(posts, posts[1:])]
        for gap, step in zip(gaps, (1, 2, 4)):
            self.assertTrue(0.8 * step - 0.02 <= gap <= step + 0.02, gaps)
        self.clock.advance(120)
        self.assertEqual(await drainer.run_due(), [])
        self.assertEqual(len(self.receiver.posts), 4)
        self.assertEqual(await self.redis.hlen("push:inflight"), 0)

    async def test_gateway_down_past_max_age_drops_and_counts(self):
        await self.befriend(1, 2)
        await self.say(await self.login(1), 2, "hi")
        self.advance_to(await self.due(2))
        nobody = "http://127.0.0.1:%d/push" % free_port()
        drainer = self.drainer(url=nobody, max_age=10.0)
        self.server.app.push_drainer = drainer
        first = self.clock.seconds()
        await self.run_until(drainer, lambda: drainer.expired, step=0.05)
        self.assertLessEqual(self.clock.seconds() - first, 10.0)
        self.assertEqual((drainer.sent, drainer.expired, drainer.retried), (0, 1, 3))
        for key in ("push:inflight", "push:sending", "push:born", "push:due", "push:current"):
            self.assertEqual(await self.redis.exists(key), 0, key)
        exposition = self.server.app.metrics.exposition().decode()
        self.assertIn('imd_push_failed_total{reason="expired"} 1.0', exposition)
        self.assertIn("imd_push_retried_total 3.0", exposition)

    async def test_4xx_is_not_retried(self):
        self.receiver.answers = [400]
        await self.befriend(1, 2)
        await self.say(await self.login(1), 2, "hi")
        self.advance_to(await self.due(2))
        drainer = self.drainer()
        self.assertEqual(await drainer.run_due(), [REJECTED])
        for _ in range(10):
            self.clock.advance(60)
            self.assertEqual(await drainer.run_due(), [])
        self.assertEqual(len(self.receiver.posts), 1)
        self.assertEqual((drainer.rejected, drainer.retried), (1, 0))
        self.assertEqual(await self.redis.hlen("push:inflight"), 0)

    async def test_a_timeout_is_retried_under_the_same_delivery_key(self):
        await self.befriend(1, 2)
        await self.say(await self.login(1), 2, "hi")
        self.advance_to(await self.due(2))
        drainer = self.drainer(timeout=2.0)
        self.receiver.hold = True
        running = defer.ensureDeferred(drainer.run_due())
        await self.receiver.wait_posts(1)
        self.clock.advance(2.0)          # the gateway's time is up: the attempt is cancelled
        self.assertEqual(await with_deadline(running), [RETRY])
        self.receiver.hold = False
        await self.run_until(drainer, lambda: drainer.sent)
        first, second = self.receiver.posts
        self.assertEqual((first.delivery, first.body), (second.delivery, second.body))
        self.assertTrue(0.8 <= second.at - first.at - 2.0 <= 1.02)

    async def test_a_retry_carries_the_unread_count_of_its_time(self):
        self.receiver.answers = [503]
        await self.befriend(1, 2)
        sender = await self.login(1)
        for text in ("a", "b", "c"):
            await self.say(sender, 2, text)
        self.advance_to(await self.due(2))
        drainer = self.drainer()
        self.assertEqual(await drainer.run_due(), [RETRY])
        recipient = await self.login(2)
        reply = await self.ask(recipient, {"id": "r", "to": 1, "type": "R", "msg": {"state": "delivered",
                                                                                   "ids": ["a", "b"]}})
        self.assertEqual(reply["type"], "A")
        await self.run_until(drainer, lambda: drainer.sent)
        first, second = self.receiver.posts
        self.assertEqual((first.payload["id"], first.payload["unread"]), ("c", 3))
        self.assertEqual((second.payload["id"], second.payload["unread"]), ("c", 1))
        self.assertEqual(second.delivery, first.delivery)
        self.assertTrue(verified(second))

    async def test_a_message_joining_a_push_under_way_goes_out_after_it(self):
        await self.befriend(1, 2)
        sender = await self.login(1)
        await self.say(sender, 2, "one")
        self.advance_to(await self.due(2))
        drainer = self.drainer(timeout=30.0)
        self.receiver.hold = True
        running = defer.ensureDeferred(drainer.run_due())
        await self.receiver.wait_posts(1)
        # while the gateway has it, a newer message's window ends: it joins the push under way
        await self.say(sender, 2, "two")
        self.advance_to(await self.due(2))
        self.assertEqual(await drainer.take_due(), [])          # nothing new to send
        self.assertEqual(await self.redis.hlen("push:inflight"), 1)
        self.receiver.hold = False
        self.receiver.release(200)
        self.assertEqual(await with_deadline(running), [SENT])
        # that try named "one" only: "two" goes out in a push of its own, at once
        self.assertEqual(await drainer.run_due(), [SENT])
        first, second = self.receiver.posts
        self.assertEqual([(p.payload["id"], p.payload["unread"]) for p in (first, second)], [("one", 1), ("two", 2)])
        self.assertNotEqual(first.delivery, second.delivery)
        self.clock.advance(DELAY * 10)
        self.assertEqual(await drainer.run_due(), [])
        for key in ("push:inflight", "push:sending", "push:born", "push:due", "push:last", "push:current"):
            self.assertEqual(await self.redis.exists(key), 0, key)

    async def test_windows_ending_behind_pushes_in_flight_join_them_in_one_take(self):
        app = self.server.app
        store = PushStore(app.redis_client, app.keys)
        users = list(range(2, 42))
        await self.redis.sadd("URS:1", users)
        now = int(self.clock.seconds() * 1000)

        async def message(n):
            for uid in users:   # due now: sent one delay ago
                await app.messages.store_message(1, uid, "m%d-%d" % (uid, n), b'{"id":"m%d-%d","from":1,"to":%d,'
                                                 b'"type":"t","msg":"hi","ts":%d}' % (uid, n, uid, now), now - 10000)
        await message(1)
        first = await store.take(now, 40, 60000, "k", 10000)
        self.assertEqual(len(first), 40)
        await message(2)
        # 40 windows end behind 40 leased pushes: one take of 8 joins them all, and starts nothing new
        self.assertEqual(await store.take(now, 8, 60000, "k2", 10000), [])
        self.assertEqual(await self.redis.zcard("push:due"), 0)
        records = await self.redis.hgetall("push:inflight")
        self.assertEqual(sorted(records), sorted(p.key for p in first))
        self.assertEqual({json.loads(r.split(" ", 5)[5])["id"] for r in records.values()},
                         {"m%d-2" % uid for uid in users})
        self.assertEqual({r.split(" ", 5)[4] for r in records.values()}, {"2"})

    async def test_an_unreadable_record_is_dropped_not_sent(self):
        now = int(self.clock.seconds() * 1000)
        await self.redis.hset("push:inflight", "k-1", "1 %d %d 2 1 not json" % (now, now))
        await self.redis.zadd("push:sending", now, "k-1")
        drainer = self.drainer()
        self.assertEqual(await drainer.run_due(), [REJECTED])
        self.assertEqual(self.receiver.posts, [])
        self.assertEqual(await self.redis.hlen("push:inflight"), 0)

    async def test_preview_off_sends_neither_preview_nor_id(self):
        await self.befriend(1, 2)
        await self.say(await self.login(1), 2, "a private matter", packet_id="meet at 5, gate 3")
        self.advance_to(await self.due(2))
        self.assertEqual(await self.drainer(preview=False).run_due(), [SENT])
        [post] = self.receiver.posts
        self.assertEqual((post.payload["preview"], post.payload["id"]), ("", ""))
        self.assertNotIn(b"gate", post.body)
        self.assertTrue(verified(post))

    async def test_order_events_note_pushes(self):
        orders, app = self.server.app.orders, self.server.app
        now = int(self.clock.seconds() * 1000)
        taken = protocol.system_message_json("taken-42", 20, 10, {"order": 42, "event": "taken", "courier": 20},
                                             now)
        await orders.take_order(42, 20, 10, taken, now)
        record = await orders.record(42)
        closed = {uid: protocol.system_message_json("closed-42", 0, uid, {"order": 42, "event": "closed"}, now)
                  for uid in (10, 20)}
        await orders.close_order(record, now, 1000, closed, 3600)
        await orders.close_order(record, now, 1000, closed, 3600)   # once however often
        self.assertEqual(await self.redis.hgetall("push:unread"), {"10": "2", "20": "1"})
        self.advance_to(now / 1000.0 + DELAY)
        drainer = PushDrainer(PushStore(app.redis_client, app.keys),
                              Gateway(reactor, self.clock, self.receiver.url, SECRET, 5, 4),
                              app.settings.push, self.clock, lambda: True)
        self.addCleanup(drainer._gateway.close)
        self.assertEqual(await drainer.run_due(), [SENT, SENT])
        pushes = sorted((p.payload["to"], p.payload["from"], p.payload["id"], p.payload["preview"],
                         p.payload["unread"]) for p in self.receiver.posts)
        self.assertEqual(pushes, [(10, 0, "closed-42", "closed", 2), (20, 0, "closed-42", "closed", 1)])

    async def test_the_apis_send_notes_pushes(self):
        app = self.server.app
        now = int(self.clock.seconds() * 1000)
        head, tail = protocol.system_message_parts("promo-1", {"event": "promotion", "code": "X"}, now)
        for _ in range(2):   # the same id again stores (and notes) nothing
            await app.messages.store_system_messages("promo-1", [5, 6], head, tail, now)
        self.assertEqual(await self.redis.hgetall("push:unread"), {"5": "1", "6": "1"})
        self.advance_to(now / 1000.0 + DELAY)
        self.assertEqual(await self.drainer().run_due(), [SENT, SENT])
        self.assertEqual(sorted((p.payload["to"], p.payload["from"], p.payload["id"], p.payload["preview"])
                                for p in self.receiver.posts),
                         [(5, 0, "promo-1", "promotion"), (6, 0, "promo-1", "promotion")])

    async def test_pending_and_oldest_age_on_metrics(self):
        from imd.http.metrics import MetricsResource
        await self.befriend(1, 2)
        await self.befriend(1, 3)
        sender = await self.login(1)
        await self.say(sender, 2, "a")
        await self.say(sender, 3, "b")
        resource = MetricsResource(self.server.app, details=True)   # as on [imd] metrics_listen: no request read
        status, body = await resource.render_GET(None)
        text = body.data.decode()
        self.assertIn("imd_push_pending 2.0", text)
        age = float(re.search(r"^imd_push_oldest_pending_seconds (\S+)$", text, re.M).group(1))
        self.assertTrue(0 <= age < 5, age)


class ReceiptCancelTests(PushTestMixin, unittest.TestCase):
    """A ``delivered`` (or ``read``) receipt lowers the recipient's unread
    count in the receipt's own script; at 0 the waiting push is cancelled."""

    async def receipt(self, client, sender, state, ids):
        reply = await self.ask(client, {"id": "r-" + state, "to": sender, "type": "R",
                                        "msg": {"state": state, "ids": ids}})
        self.assertEqual(reply["type"], "A", reply)

    async def test_recipient_online_reporting_delivered_within_the_delay_gets_no_post(self):
        await self.befriend(1, 2)
        sender, recipient = await self.login(1), await self.login(2)
        await self.say(sender, 2, "one")
        await self.say(sender, 2, "two")
        due = await self.due(2)
        self.assertEqual([(await recipient.next_of("t"))["id"] for _ in range(2)], ["one", "two"])
        await self.receipt(recipient, 1, "delivered", ["one", "two"])
        self.assertIsNone(await self.due(2))
        self.assertEqual(await self.redis.hgetall("push:unread"), {})
        self.assertEqual(await self.redis.hgetall("push:last"), {})
        self.advance_to(due + DELAY)
        self.assertEqual(await self.drainer().run_due(), [])
        self.assertEqual(self.receiver.posts, [])

    async def test_part_delivered_the_push_names_the_rest_and_read_counts_once(self):
        await self.befriend(1, 2)
        sender, recipient = await self.login(1), await self.login(2)
        for text in ("a", "b", "c"):
            await self.say(sender, 2, text)
        await self.receipt(recipient, 1, "delivered", ["a"])
        await self.receipt(recipient, 1, "read", ["a", "b"])    # a was delivered already: b only counts
        self.assertEqual(await self.redis.hget("push:unread", "2"), "1")
        self.advance_to(await self.due(2))
        drainer = self.drainer()
        self.assertEqual(await drainer.run_due(), [SENT])
        self.assertEqual((self.receiver.posts[0].payload["id"], self.receiver.posts[0].payload["unread"]),
                         ("c", 1))
        # after the push: c delivered, nothing waits; a new message counts from 0
        await self.receipt(recipient, 1, "delivered", ["c"])
        self.assertEqual(await self.redis.hgetall("push:unread"), {})
        await self.say(sender, 2, "d")
        self.advance_to(await self.due(2))
        self.assertEqual(await drainer.run_due(), [SENT])
        self.assertEqual(self.receiver.posts[1].payload["unread"], 1)

    async def test_a_receipt_from_someone_else_cancels_nothing(self):
        await self.befriend(1, 2)
        await self.befriend(1, 3)
        sender, other = await self.login(1), await self.login(3)
        await self.say(sender, 2, "for two")
        await self.receipt(other, 1, "delivered", ["for two"])   # not 3's message
        self.assertEqual(await self.redis.hget("push:unread", "2"), "1")
        self.assertIsNotNone(await self.due(2))


class FailingGatewayTests(PushTestMixin, unittest.TestCase):
    """Issue 22 item 11: while the gateway answered 503, recipients who kept
    getting messages got a new push record at the end of every ``delay``
    window, each retried on its own (100 recipients: 457 records and 1,788
    POSTs in 25 s, about 72k records an hour).  One pending push per
    recipient: its retries name the newest message and the current unread
    count, under the push's delivery key.

    Replayed on the drainer's clock: 100 recipients get a message every 2 s
    for 60 s with the gateway answering 503, then it answers 200."""

    push = {"delay": "5"}
    RECIPIENTS = 100
    FAILING = 60.0      # clock seconds the gateway answers 503
    EVERY = 2.0         # each recipient gets a message this often meanwhile
    STEP = 0.25         # the drainer's interval

    async def drain(self, drainer):
        """Run the drainer until nothing more is due now (bounded)."""
        now = int(self.clock.seconds() * 1000)
        for _ in range(200):
            if not await drainer.run_due() and not await self.redis.zcount("push:due", "-inf", now):
                return
        self.fail("the drainer never ran dry")

    async def records(self):
        """The recipient of each in-flight push record."""
        return [int(record.split(" ")[3]) for record in (await self.redis.hvals("push:inflight"))]

    async def test_a_failing_gateway_keeps_one_push_per_recipient(self):
        app = self.server.app
        recipients = list(range(2, 2 + self.RECIPIENTS))
        await self.redis.sadd("URS:1", recipients)
        self.receiver.status = 503
        drainer = self.drainer()
        start = self.clock.seconds()
        rounds = []                 # clock time of each round of messages (message n is rounds[n - 1])
        most_records = 0
        while self.clock.seconds() < start + self.FAILING:
            if not rounds or self.clock.seconds() - rounds[-1] >= self.EVERY - 1e-6:
                rounds.append(self.clock.seconds())
                now, n = int(self.clock.seconds() * 1000), len(rounds)
                await defer.gatherResults([
                    app.messages.store_message(1, uid, "m%d-%d" % (uid, n),
                                               b'{"id":"m%d-%d","from":1,"to":%d,"type":"t","msg":"hi %d","ts":%d}'
                                               % (uid, n, uid, n, now), now)
                    for uid in recipients])
            await self.drain(drainer)
            on_record = await self.records()
            most_records = max(most_records, len(on_record))
            self.assertEqual(len(on_record), len(set(on_record)), "a recipient with two pushes in flight")
            self.clock.advance(self.STEP)
        failing_posts = list(self.receiver.posts)
        figures = "%d POSTs, at most %d records in %ds" % (len(failing_posts), most_records, self.FAILING)
        self.assertLessEqual(most_records, self.RECIPIENTS, figures)
        # the windows: each opened by the first message after the one before was taken, ending 5 s later
        # (messages come at even seconds from the start, windows end at odd ones)
        ends = []
        for r in rounds:
            if not ends or r > ends[-1]:
                ends.append(r + 5.0)
        by_recipient = {uid: [p for p in failing_posts if p.payload["to"] == uid] for uid in recipients}
        for uid, posts in by_recipient.items():
            # one push, tried with backoff: at 0, 1, 3, 7, 15, 31 s (less up to a fifth each) in the 55 s
            # after the first window ended
            self.assertTrue(4 <= len(posts) <= 7, (uid, len(posts), figures))
            self.assertEqual({p.delivery for p in posts}, {posts[0].delivery}, uid)
            self.assertTrue(all(verified(p) for p in posts))
            for post in posts:
                # the current unread count: every message stored so far (none was delivered)
                self.assertEqual(post.payload["unread"], sum(1 for r in rounds if r <= post.at), post)
                # the newest message of the last window that had ended when the try was taken
                ended = max(e for e in ends if e <= post.at)
                newest = max(n for n, r in enumerate(rounds, 1) if r <= ended)
                self.assertEqual(post.payload["id"], "m%d-%d" % (uid, newest), post)

        # the gateway is back: each recipient's next try names the newest message, then nothing is pending
        self.receiver.status = None
        newest = {uid: "m%d-%d" % (uid, len(rounds)) for uid in recipients}
        end = self.clock.seconds() + 120
        while (await self.redis.hlen("push:inflight") or await self.redis.zcard("push:due")
               or await self.redis.hlen("push:last")):
            self.assertLess(self.clock.seconds(), end, "pushes still pending 120 s after the gateway came back")
            await self.drain(drainer)
            self.clock.advance(self.STEP)
        recovered = self.receiver.posts[len(failing_posts):]
        self.assertEqual({p.payload["to"]: (p.payload["id"], p.payload["unread"]) for p in recovered},
                         {uid: (newest[uid], len(rounds)) for uid in recipients})
        self.assertLessEqual(len(recovered), 2 * self.RECIPIENTS)
        self.assertEqual((drainer.rejected, drainer.expired), (0, 0))
        self.assertEqual(drainer.sent, len(recovered))


class PushOffTests(ServerTestMixin, unittest.TestCase):

    async def test_without_url_nothing_is_noted(self):
        await self.befriend(1, 2)
        reply = await self.ask(await self.login(1), {"id": "x", "to": 2, "type": "t", "msg": "hi"})
        self.assertEqual(reply["type"], "A")
        self.assertEqual(await self.redis.keys("push:*"), [])
        self.assertIsNone(self.server.app.push_drainer)


class KilledDrainerTests(MysqlTestMixin, PushTestMixin, unittest.TestCase):
    """imd's migrate process (the drainer) kill -9'd with pushes taken and
    unanswered, and another still in its window: after a restart each is
    sent, under the delivery key it had, and nothing twice."""

    push = {"delay": "0.3", "timeout": "1"}

    def config(self, node):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(settings_text({"imd": {"roles": "migrate", "node_id": node},
                                   "migrate": {"lock_ttl": "1"},
                                   "push": dict(self.overrides["push"]),
                                   "mysql": {"database": self.mysql_settings.database}}))
        return path

    def migrate_process(self, node):
        process = MigratorProcess(self.config(node)).start()
        self.addCleanup(process.kill)
        return process

    async def test_pushes_pending_at_kill_9_are_sent_after_restart_once(self):
        self.receiver.clock = reactor
        sender = await self.login(1)
        for uid in (2, 3, 4, 5):
            await self.befriend(1, uid)
        self.receiver.hold = True           # taken, never answered
        first = self.migrate_process("push-a")
        await first.leading
        for uid in (2, 3, 4):
            await self.say(sender, uid, "to %d" % uid)
        await self.receiver.wait_posts(3)
        held = {post.delivery: post.payload["to"] for post in self.receiver.posts}
        self.assertEqual(sorted(held.values()), [2, 3, 4])
        await first.kill()
        self.receiver.hold = False
        await self.say(sender, 5, "to 5")   # pending in its window, no drainer running
        self.assertEqual(await self.redis.hlen("push:inflight"), 3)

        second = self.migrate_process("push-b")
        await second.leading

        async def all_sent():
            return (len(self.receiver.deliveries) == 4 and await self.redis.hlen("push:inflight") == 0
                    and await self.redis.zcard("push:due") == 0)
        # the three held ones wait for their lease ([push] timeout + 5 s)
        await wait_until(lambda: defer.ensureDeferred(all_sent()), seconds=30, what="every push sent")
        again = {post.delivery: post.payload["to"] for post in self.receiver.posts[3:]}
        self.assertEqual(len(self.receiver.posts), 3 + 4)       # the 3 unanswered tries, then one each
        self.assertEqual(sorted(again.values()), [2, 3, 4, 5])
        for key, to in held.items():
            self.assertEqual(again[key], to)                    # the same delivery key as before the kill
        self.assertEqual(len(self.receiver.deliveries), 4)


class BurstTests(PushTestMixin, unittest.TestCase):
    """1,000 recipients offline at once: the drainer shares the reactor with
    the WebSocket listener (and, here, with the test's receiver and client),
    which keeps answering pings within 100 ms.

    Two bursts: the first warms the code up (on PyPy the JIT compiles the
    drainer, the HTTP client and the test's receiver during it, and a cold
    run measures the compiler, not the drainer); the second is measured."""

    push = {"delay": "0.5"}
    settings = {"websocket": {"rate": "100000", "burst": "100000"}}
    RECIPIENTS = 1000

    async def burst(self, client, first_uid):
        """Pushes to RECIPIENTS offline users from ``first_uid`` on, drained
        while ``client`` pings: (POSTs received when sent, seconds to the
        pong) for each ping."""
        app = self.server.app
        recipients = list(range(first_uid, first_uid + self.RECIPIENTS))
        await self.redis.sadd("URS:1", recipients)
        now = int(time.time() * 1000)
        stores = [app.messages.store_message(1, uid, "m%d" % uid,
                                             b'{"id":"m%d","from":1,"to":%d,"type":"t","msg":"hi","ts":%d}'
                                             % (uid, uid, now), now)
                  for uid in recipients]
        await defer.gatherResults(stores)
        gateway = Gateway(reactor, reactor, self.receiver.url, SECRET, 5, 32)
        drainer = PushDrainer(PushStore(app.redis_client, app.keys), gateway, app.settings.push, reactor,
                              lambda: True)
        drainer.startService()
        self.addCleanup(drainer.stopService)
        before = len(self.receiver.posts)
        pings = []
        deadline = time.time() + 30
        while len(self.receiver.posts) - before < self.RECIPIENTS:
            self.assertLess(time.time(), deadline, "the burst did not drain")
            during = len(self.receiver.posts) - before
            started = time.perf_counter()
            client.send({"id": "p", "to": 0, "type": "P"})
            # (the burst's messages are the sender's too: its connection
            # gets them, contract §2 item 3, before its pong)
            reply = await client.next_of("PE", seconds=1.0)
            pings.append((during, time.perf_counter() - started))
            self.assertEqual(reply["type"], "P")
        await wait_until(lambda: drainer.sent == self.RECIPIENTS, what="every push answered")
        await drainer.stopService()
        return pings

    async def test_the_reactor_stays_responsive_during_a_burst(self):
        self.receiver.clock = reactor
        client = await self.login(1)
        await self.burst(client, 2)
        pings = await self.burst(client, 2 + self.RECIPIENTS)
        during_burst = [rtt for posts, rtt in pings if 0 < posts < self.RECIPIENTS]
        self.assertGreaterEqual(len(during_burst), 3, pings[:20])
        # 99 pings in 100 within 100 ms, and none near a stall: on PyPy a
        # garbage collection or a compiled bridge now and then takes one
        # ping past 100 ms (seen up to 139 ms), and on a CI machine busy with
        # other work one ping in a run has taken 261 ms on CPython, where a
        # drainer that took the whole burst in one turn holds the reactor for
        # seconds (no pong within the 1 s each ping waits)
        rtts = sorted(rtt for _, rtt in pings)
        self.assertLess(rtts[int(len(rtts) * 0.99)], 0.1, rtts[-10:])
        self.assertLess(rtts[-1], 0.75, rtts[-10:])
        self.assertEqual(len(self.receiver.deliveries), 2 * self.RECIPIENTS)

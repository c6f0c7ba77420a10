"""Contract §7.3: order-scoped conversations.  T links a courier and a
customer; closing the order tells both once and ends the friendship the
order made ``[orders] close_grace`` seconds later, once, whatever runs and
whatever is killed."""

import os
import time

from twisted.internet import defer, task
from twisted.trial import unittest

from imd.errors import ImdError
from imd.handlers.orders import OrderLifecycle
from imd.order_ends import OrderEnds
from tests.mysql_support import MysqlTestMixin, query
from tests.support import ImdServer, ServerTestMixin, make_settings, settings_text, wait_until
from tests.test_migrator_crash import MigratorProcess

GRACE = 60   # seconds; the ends run on a task.Clock, so this costs no time


class OrderTestMixin(MysqlTestMixin, ServerTestMixin):
    """Two nodes on one Redis; closes and ends driven by the test."""

    overrides = {"orders": {"close_grace": str(GRACE)}}

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.node2 = yield ImdServer(make_settings(dict(self.overrides, imd={"node_id": "test-node-2"}))).start()
        self.addCleanup(self.node2.stop)
        self.clock = task.Clock()
        self.clock.advance(time.time())

    def create_order(self, order, customer, courier):
        return query(self.mysql_settings, ("INSERT INTO orders (id, customer_id, courier_id) VALUES (%s, %s, %s)",
                                           (order, customer, courier)))

    async def take(self, courier_client, order, packet_id="take"):
        reply = await self.ask(courier_client, {"id": packet_id, "to": 0, "type": "T", "msg": order})
        self.assertEqual(reply["type"], "A", reply)
        return reply

    async def say(self, client, to, text):
        """The reply's type, or its error code."""
        reply = await self.ask(client, {"id": text, "to": to, "type": "t", "msg": text})
        return reply.get("code", reply["type"])

    def runner(self, app=None, leading=True):
        """An end runner on the test's clock (the migrate role's, minus the loop)."""
        app = app or self.server.app
        return OrderEnds(app.orders, self.clock, leading=lambda: leading)

    async def run_ends_at(self, ms, runner=None):
        """Move the runner's clock to Unix ms ``ms`` and run what is due."""
        self.clock.advance(ms / 1000.0 - self.clock.seconds())
        return await (runner or self.runner()).run_due()

    async def friends(self, uid):
        return {int(m) for m in await self.redis.smembers("URS:%d" % uid)}

    async def quiet(self, client):
        """Nothing more is on its way to ``client``: the next packet it gets
        is the answer to a ping sent now."""
        client.send({"id": "sync", "to": 0, "type": "P"})
        self.assertEqual((await client.next())["type"], "P")

    def lifecycle(self, app=None):
        """``close`` on the test's clock (the app's own runs on the reactor)."""
        app = app or self.server.app
        return OrderLifecycle(app.orders, app.mysql, app.settings.orders, app.node, self.clock, 3600)


class CloseTests(OrderTestMixin, unittest.TestCase):

    async def test_take_chat_close_three_times_on_two_nodes_then_the_end(self):
        await self.create_order(42, customer=10, courier=20)
        courier, customer = await self.login_on(self.server, 20), await self.login_on(self.node2, 10)
        await self.take(courier, 42)
        self.assertEqual((await customer.next())["id"], "taken-42")
        self.assertEqual(await self.say(courier, 10, "at your door"), "A")
        self.assertEqual((await customer.next())["msg"], "at your door")

        before = int(time.time() * 1000)
        answers = await defer.gatherResults([
            self.server.app.order_lifecycle.close(42), self.node2.app.order_lifecycle.close(42),
            self.server.app.order_lifecycle.close(42)])
        after = int(time.time() * 1000)
        self.assertEqual(len({a["ends_at"] for a in answers}), 1, answers)
        ends_at = answers[0]["ends_at"]
        self.assertEqual(answers[0]["order"], 42)
        self.assertTrue(before + GRACE * 1000 <= ends_at <= after + GRACE * 1000)

        positions = set()
        for uid, client in ((20, courier), (10, customer)):
            event = await client.next()
            ts = event.pop("ts")
            positions.add(event.pop("pos"))   # each its own, in its stream (contract §10)
            self.assertEqual(event, {"id": "closed-42", "from": 0, "to": uid, "type": "s",
                                     "msg": {"order": 42, "event": "closed"}})
            self.assertEqual(ts, ends_at - GRACE * 1000)
            await self.quiet(client)   # once, not three times
        closed = [e for e in map(_json, await self.redis.lrange("MQ", 0, -1)) if e["id"] == "closed-42"]
        self.assertEqual(sorted(e["to"] for e in closed), [10, 20], "one stored event per user")
        self.assertEqual(sorted(e["seq"] for e in closed), sorted(positions), "delivered with its entry's seq")
        # a close after the fact changes nothing either
        self.assertEqual(await self.node2.app.order_lifecycle.close(42), {"order": 42, "ends_at": ends_at})
        await self.quiet(customer)

        # still friends until the grace is over
        self.assertEqual(await self.run_ends_at(ends_at - 1), 0)
        self.assertEqual(await self.say(customer, 20, "thanks"), "A")
        self.assertEqual(await self.run_ends_at(ends_at), 1)
        self.assertEqual(await self.friends(10), set())
        self.assertEqual(await self.friends(20), set())
        # the live connections see it at once, both ways, on both nodes
        self.assertEqual(await self.say(customer, 20, "one more thing"), "not_friend")
        self.assertEqual(await self.say(courier, 10, "hello?"), "not_friend")
        # the history stays readable
        reply = await self.ask(customer, {"id": "h", "to": 0, "type": "H", "msg": {"since": 0, "with": 20}})
        self.assertEqual([(m["id"], m["from"]) for m in reply["msg"]],
                         [("taken-42", 20), ("at your door", 20), ("thanks", 10)])
        reply = await self.ask(customer, {"id": "h2", "to": 0, "type": "H", "msg": 0})
        self.assertEqual([m["id"] for m in reply["msg"]],
                         ["taken-42", "at your door", "closed-42", "thanks"])
        # and the end ran once: a second look finds nothing to do
        self.assertEqual(await self.run_ends_at(ends_at + 5000), 0)
        record = await self.server.app.orders.record(42)
        self.assertEqual((record.end, record.ended_at), ("ended", ends_at))

    async def test_a_late_t_brings_no_ended_friendship_back(self):
        await self.create_order(42, customer=10, courier=20)
        courier = await self.login_on(self.server, 20)
        await self.take(courier, 42)
        ends_at = (await self.server.app.order_lifecycle.close(42))["ends_at"]
        await self.run_ends_at(ends_at)
        reply = await self.take(courier, 42, "retry")
        self.assertEqual(reply["msg"], {"order": 42, "uid": 10})
        self.assertEqual(await self.friends(20), set())
        self.assertEqual(await self.say(courier, 10, "hi"), "not_friend")

    async def test_what_redis_keeps_and_for_how_long(self):
        month = 30 * 86400
        await self.create_order(42, customer=10, courier=20)
        courier = await self.login_on(self.server, 20)
        await self.take(courier, 42)
        for key in ("order:42", "links:10:20"):
            self.assertTrue(month - 5 <= await self.redis.ttl(key) <= month, key)
        ends_at = (await self.lifecycle().close(42))["ends_at"]
        # from the close until the end nothing may expire
        self.assertEqual(await self.redis.ttl("order:42"), -1)
        self.assertEqual(await self.redis.ttl("links:10:20"), -1)
        self.assertEqual(await self.redis.zscore("orders:ending", "42"), ends_at)
        await self.run_ends_at(ends_at)
        self.assertEqual(await self.redis.exists("links:10:20"), 0)
        self.assertEqual(await self.redis.zcard("orders:ending"), 0)
        self.assertTrue(month - 5 <= await self.redis.ttl("order:42") <= month)
        record = await self.server.app.orders.record(42)
        self.assertEqual((record.courier, record.customer, record.before, record.closed_at, record.ends_at,
                          record.ended_at, record.end),
                         (20, 10, "no", ends_at - GRACE * 1000, ends_at, ends_at, "ended"))

    async def test_a_taken_order_given_to_another_courier_is_forbidden_to_them(self):
        await self.create_order(42, customer=10, courier=20)
        await self.take(await self.login_on(self.server, 20), 42)
        await query(self.mysql_settings, "UPDATE orders SET courier_id = 21 WHERE id = 42")
        reply = await self.ask(await self.login_on(self.server, 21), {"id": "t", "to": 0, "type": "T", "msg": 42})
        self.assertEqual((reply["code"], reply["msg"]), ("forbidden", "order 42 was taken by another courier"))
        self.assertEqual(await self.friends(21), set())

    async def test_unknown_order_is_not_found(self):
        failure = await self.assertFailure(self.server.app.order_lifecycle.close(999), ImdError)
        self.assertEqual(failure.code, "not_found")
        failure = await self.assertFailure(self.server.app.order_lifecycle.close(0), ImdError)
        self.assertEqual(failure.code, "bad_packet")

    async def test_an_order_closed_before_any_t_cannot_be_taken(self):
        await self.create_order(42, customer=10, courier=20)
        customer = await self.login_on(self.server, 10)
        now = int(time.time() * 1000)
        closed = await self.server.app.order_lifecycle.close(42)
        self.assertTrue(now <= closed["ends_at"] <= int(time.time() * 1000), "nothing to end: it ends now")
        self.assertEqual(await self.server.app.order_lifecycle.close(42), closed)
        await self.quiet(customer)   # no conversation, no event
        courier = await self.login_on(self.server, 20)
        reply = await self.ask(courier, {"id": "late", "to": 0, "type": "T", "msg": 42})
        self.assertEqual((reply["type"], reply["code"], reply["msg"]), ("E", "forbidden", "order 42 is closed"))
        self.assertEqual(await self.friends(20), set())
        self.assertEqual(await self.redis.llen("MQ"), 0)
        self.assertEqual(await self.redis.zcard("orders:ending"), 0)


class DurableOrderTests(OrderTestMixin, unittest.TestCase):
    """Issue 22 item 5: once an order's Redis record expired (30 days after
    its end, or after an open order's last T), a T made the two friends
    again and sent "taken" again; and a repeated T undid a friend rm while
    the order was open.  MySQL's order_conversation row now outlives the
    record.  The expiry is played by deleting the record (its TTL is
    checked in test_what_redis_keeps_and_for_how_long)."""

    async def expire_record(self, order):
        self.assertEqual(await self.redis.delete("order:%d" % order), 1)

    async def conversation_row(self, order):
        rows = await query(self.mysql_settings, ("SELECT customer_id, courier_id, friends_before, taken_at IS NOT NULL,"
                                                 " closed_at, ends_at FROM order_conversation WHERE order_id = %s",
                                                 (order,)))
        return rows[0] if rows else None

    async def taken_count(self, order):
        entries = [_json(e) for e in await self.redis.lrange("MQ", 0, -1)]
        return len([e for e in entries if e["id"] == "taken-%d" % order])

    async def test_a_t_after_the_record_expired_brings_nothing_back(self):
        await self.create_order(42, customer=10, courier=20)
        courier, customer = await self.login_on(self.server, 20), await self.login_on(self.node2, 10)
        await self.take(courier, 42)
        self.assertEqual((await customer.next())["id"], "taken-42")
        self.assertEqual(tuple(await self.conversation_row(42))[:4], (10, 20, "no", 1))
        ends_at = (await self.lifecycle().close(42))["ends_at"]
        self.assertEqual(await self.conversation_row(42), (10, 20, "no", 1, ends_at - GRACE * 1000, ends_at))
        self.assertEqual((await customer.next())["id"], "closed-42")
        self.assertEqual(await self.run_ends_at(ends_at), 1)
        self.assertEqual(await self.friends(20), set())
        await self.expire_record(42)
        for packet_id in ("late", "later"):
            reply = await self.take(courier, 42, packet_id)
            self.assertEqual(reply["msg"], {"order": 42, "uid": 10})
        self.assertEqual(await self.friends(20), set())
        self.assertEqual(await self.friends(10), set())
        self.assertEqual(await self.say(courier, 10, "hello again?"), "not_friend")
        await self.quiet(customer)                      # no second "taken"
        self.assertEqual(await self.taken_count(42), 1)
        self.assertEqual(await self.redis.exists("order:42"), 0, "nothing written back")
        # a close now answers what MySQL kept, and tells nobody again
        self.assertEqual(await self.lifecycle().close(42), {"order": 42, "ends_at": ends_at})
        await self.quiet(customer)
        self.assertEqual(await self.redis.zcard("orders:ending"), 0)

    async def test_a_repeated_t_does_not_undo_a_friend_rm(self):
        await self.create_order(42, customer=10, courier=20)
        courier, customer = await self.login_on(self.server, 20), await self.login_on(self.server, 10)
        await self.take(courier, 42)
        self.assertEqual((await customer.next())["id"], "taken-42")
        await self.server.app.friends.remove_friends(20, 10)      # POST /IM/api/friends op rm
        reply = await self.take(courier, 42, "again")
        self.assertEqual(reply["msg"], {"order": 42, "uid": 10})
        self.assertEqual(await self.friends(20), set())
        self.assertEqual(await self.say(courier, 10, "hi"), "not_friend")
        await self.quiet(customer)
        self.assertEqual(await self.taken_count(42), 1)
        # the record and the link were renewed all the same
        self.assertTrue(30 * 86400 - 5 <= await self.redis.ttl("order:42"))

    async def test_closed_before_any_t_stays_closed_after_the_record_expired(self):
        await self.create_order(42, customer=10, courier=20)
        closed = await self.lifecycle().close(42)
        self.assertEqual(await self.conversation_row(42), (10, None, None, 0, closed["ends_at"], closed["ends_at"]))
        await self.expire_record(42)
        courier = await self.login_on(self.server, 20)
        reply = await self.ask(courier, {"id": "late", "to": 0, "type": "T", "msg": 42})
        self.assertEqual((reply["type"], reply.get("code"), reply["msg"]), ("E", "forbidden", "order 42 is closed"))
        self.assertEqual(await self.friends(20), set())
        self.assertEqual(await self.redis.llen("MQ"), 0)

    async def test_another_couriers_order_stays_theirs_after_the_record_expired(self):
        await self.create_order(42, customer=10, courier=20)
        await self.take(await self.login_on(self.server, 20), 42)
        ends_at = (await self.lifecycle().close(42))["ends_at"]
        await self.run_ends_at(ends_at)
        await self.expire_record(42)
        await query(self.mysql_settings, "UPDATE orders SET courier_id = 21 WHERE id = 42")
        reply = await self.ask(await self.login_on(self.server, 21), {"id": "t", "to": 0, "type": "T", "msg": 42})
        self.assertEqual((reply["code"], reply["msg"]), ("forbidden", "order 42 was taken by another courier"))
        self.assertEqual(await self.friends(21), set())

    async def test_an_open_order_whose_record_expired_still_ends_its_friendship(self):
        # 30 days without a T: the record and the link expire, the friendship stays
        for order in (42, 43):
            await self.create_order(order, customer=10 + order, courier=20)
        courier = await self.login_on(self.server, 20)
        await self.take(courier, 42)
        await self.take(courier, 43, "take 43")
        for order in (42, 43):
            await self.expire_record(order)
            await self.redis.delete("links:%d:20" % (10 + order))
        # 42: the courier's T comes again: the record is back, nothing else happens
        customer = await self.login_on(self.server, 52)
        await self.take(courier, 42, "again")
        await self.quiet(customer)
        self.assertEqual(await self.taken_count(42), 1)
        record = await self.server.app.orders.record(42)
        self.assertEqual((record.courier, record.customer, record.before), (20, 52, "no"))
        # 43: closed without another T
        for order in (42, 43):
            ends_at = (await self.lifecycle().close(order))["ends_at"]
            self.assertEqual(await self.run_ends_at(ends_at), 1)
            self.assertEqual((await self.server.app.orders.record(order)).end, "ended")
        self.assertEqual(await self.friends(20), set())


class KeptFriendshipTests(OrderTestMixin, unittest.TestCase):

    async def close_and_end(self, order):
        ends_at = (await self.server.app.order_lifecycle.close(order))["ends_at"]
        self.assertEqual(await self.run_ends_at(ends_at), 1)
        return (await self.server.app.orders.record(order)).end

    async def test_friends_in_urs_before_the_t_stay_friends(self):
        await self.befriend(10, 20)
        await self.create_order(42, customer=10, courier=20)
        courier = await self.login_on(self.server, 20)
        await self.take(courier, 42)
        self.assertEqual(await self.close_and_end(42), "friends before the order")
        self.assertEqual(await self.friends(20), {10})
        self.assertEqual(await self.say(courier, 10, "still here"), "A")

    async def test_friend_add_before_or_during_the_order_survives_its_close(self):
        await self.create_order(42, customer=10, courier=20)
        await self.create_order(43, customer=11, courier=20)
        await self.server.app.friends.add_friends(20, 10)      # before
        courier = await self.login_on(self.server, 20)
        await self.take(courier, 42)
        await self.take(courier, 43)
        await self.server.app.friends.add_friends(11, 20)      # during
        self.assertEqual(await self.close_and_end(42), "friends before the order")
        self.assertEqual(await self.close_and_end(43), "friends before the order")
        self.assertEqual(await self.friends(20), {10, 11})
        # friend rm takes the mark away with the friendship
        await self.server.app.friends.remove_friends(20, 11)
        self.assertEqual(await self.redis.smembers("kept:20"), {"10"})

    async def test_two_open_orders_closing_one_keeps_the_friendship(self):
        await self.create_order(42, customer=10, courier=20)
        await self.create_order(43, customer=10, courier=20)
        courier, customer = await self.login_on(self.server, 20), await self.login_on(self.node2, 10)
        await self.take(courier, 42)
        await self.take(courier, 43, "take 2")
        self.assertEqual((await self.server.app.orders.record(43)).before, "order")
        self.assertEqual(await self.close_and_end(42), "another order links them")
        self.assertEqual(await self.say(customer, 20, "where is my second order?"), "A")
        self.assertEqual(await self.close_and_end(43), "ended")
        self.assertEqual(await self.say(customer, 20, "thanks"), "not_friend")

    async def test_two_closed_orders_the_later_grace_wins(self):
        await self.create_order(42, customer=10, courier=20)
        await self.create_order(43, customer=10, courier=20)
        courier = await self.login_on(self.server, 20)
        await self.take(courier, 42)
        await self.take(courier, 43, "take 2")
        first = (await self.lifecycle().close(42))["ends_at"]
        self.clock.advance(10)
        second = (await self.lifecycle(self.node2.app).close(43))["ends_at"]
        self.assertEqual(second - first, 10000)
        self.assertEqual(await self.run_ends_at(first), 1)
        self.assertEqual(await self.friends(20), {10}, "43's grace still runs")
        self.assertEqual((await self.server.app.orders.record(42)).end, "another order links them")
        self.assertEqual(await self.run_ends_at(second - 1), 0)
        self.assertEqual(await self.run_ends_at(second), 1)
        self.assertEqual(await self.friends(20), set())


class RunnerTests(OrderTestMixin, unittest.TestCase):

    async def closed_order(self):
        await self.create_order(42, customer=10, courier=20)
        courier = await self.login_on(self.server, 20)
        await self.take(courier, 42)
        return (await self.server.app.order_lifecycle.close(42))["ends_at"]

    async def test_two_runners_at_once_end_it_once(self):
        ends_at = await self.closed_order()
        self.clock.advance(ends_at / 1000.0 - self.clock.seconds())
        one, two = self.runner(self.server.app), self.runner(self.node2.app)
        ran = await defer.gatherResults([defer.ensureDeferred(one.run_due()), defer.ensureDeferred(two.run_due())])
        self.assertEqual(sorted(ran), [0, 1])
        self.assertEqual(one.ended.get("ended", 0) + two.ended.get("ended", 0), 1)
        self.assertEqual(await self.friends(10), set())

    async def test_only_the_leader_runs(self):
        ends_at = await self.closed_order()
        self.assertEqual(await self.run_ends_at(ends_at + 1000, self.runner(leading=False)), 0)
        self.assertEqual(await self.friends(10), {20})

    async def test_the_service_looks_every_interval(self):
        ends_at = await self.closed_order()
        runner = self.runner()
        runner.startService()
        self.addCleanup(runner.stopService)
        self.clock.advance(ends_at / 1000.0 - self.clock.seconds() - 0.5)
        await wait_until(lambda: not runner._running_call, what="a look at the schedule")
        self.assertEqual(await self.friends(10), {20})
        self.clock.advance(1)
        await wait_until(lambda: runner.ended.get("ended") == 1, what="the end")
        self.assertEqual(await self.friends(10), set())


class AdminTests(OrderTestMixin, unittest.TestCase):

    def admin(self, *args):
        """imd-admin in a child process (it runs its own reactor)."""
        import sys

        from twisted.internet import utils
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(settings_text({"imd": {"node_id": "test-admin"}, "orders": {"close_grace": str(GRACE)},
                                   "mysql": {"database": self.mysql_settings.database}}))
        script = "import sys; from imd.admin.console import main; sys.exit(main(sys.argv[1:]))"
        return utils.getProcessOutputAndValue(sys.executable, ["-c", script, "--config", config] + list(args),
                                              env=dict(os.environ))

    async def test_order_close_and_show(self):
        await self.create_order(42, customer=10, courier=20)
        await self.create_order(43, customer=11, courier=None)
        courier, customer = await self.login_on(self.server, 20), await self.login_on(self.node2, 10)
        out, err, code = await self.admin("order", "show", "42")
        self.assertEqual(code, 0, err)
        self.assertIn(b"state:             not taken (no T yet)", out)
        await self.take(courier, 42)
        await customer.next()
        out, err, code = await self.admin("order", "show", "42")
        self.assertIn(b"state:             open", out)
        self.assertIn(b"friends before:    no", out)

        out, err, code = await self.admin("order", "close", "42")
        self.assertEqual(code, 0, err)
        self.assertIn(b"order 42 closed; the conversation ends at ", out)
        # the admin process is a node of its own: the events reach both users on theirs
        for client in (courier, customer):
            self.assertEqual((await client.next())["id"], "closed-42")
        out, err, code = await self.admin("order", "show", "42")
        lines = out.decode().splitlines()
        self.assertEqual(lines[0], "order 42")
        self.assertTrue(lines[1].startswith("  state:             closed; the conversation ends in "), lines)
        self.assertEqual([line.split(":")[0].strip() for line in lines[2:]],
                         ["courier", "customer", "friends before", "taken", "closed", "conversation ends"])

        record = await self.server.app.orders.record(42)
        await self.run_ends_at(record.ends_at)
        out, err, code = await self.admin("order", "show", "42")
        self.assertIn(b"state:             ended: no longer friends", out)
        self.assertIn(b"end ran:", out)

        # 30 days later the record is gone; MySQL still says what happened
        await self.redis.delete("order:42")
        out, err, code = await self.admin("order", "show", "42")
        self.assertEqual(code, 0, err)
        self.assertIn(b"state:             closed; ended", out)
        self.assertIn(b"friends before:    no", out)

        out, err, code = await self.admin("order", "close", "999")
        self.assertEqual((code, err), (1, b"imd-admin: no order 999\n"))
        out, err, code = await self.admin("order", "show", "999")
        self.assertEqual((code, err), (1, b"imd-admin: no order 999\n"))
        out, err, code = await self.admin("order", "close", "43")
        self.assertEqual(code, 0, err)
        out, err, code = await self.admin("order", "show", "43")
        self.assertIn(b"state:             closed before any T: no conversation", out)


class DaemonKilledTests(MysqlTestMixin, ServerTestMixin, unittest.TestCase):
    """The end survives the migrate daemon's kill -9 between the close and
    the end, and runs once with two migrators after it."""

    overrides = {"orders": {"close_grace": "2"}}

    def config(self, node):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(settings_text({"imd": {"roles": "migrate", "node_id": node},
                                   "migrate": {"lock_ttl": "1"}, "orders": {"close_grace": "2"},
                                   "mysql": {"database": self.mysql_settings.database}}))
        return path

    def migrator(self, node):
        process = MigratorProcess(self.config(node)).start()
        self.addCleanup(process.kill)
        return process

    async def test_end_happens_once_after_kill_9(self):
        await query(self.mysql_settings, ("INSERT INTO orders (id, customer_id, courier_id) VALUES (42, 10, 20)",))
        first = self.migrator("orders-a")
        await first.leading
        courier = await self.login(20)
        self.assertEqual((await self.ask(courier, {"id": "t", "to": 0, "type": "T", "msg": 42}))["type"], "A")
        await self.server.app.order_lifecycle.close(42)
        await first.kill()          # SIGKILL, before the end was due
        self.assertNotIn(b"conversation end ran", first.output)
        self.assertEqual(await self.redis.zcard("orders:ending"), 1)
        self.assertEqual(await self.redis.smembers("URS:20"), {"10"})

        others = [self.migrator("orders-b"), self.migrator("orders-c")]
        for standby in others:
            standby.leading.addErrback(lambda _: None)   # one of them never leads

        async def ended():
            return await self.redis.smembers("URS:20") == set()
        await wait_until(lambda: defer.ensureDeferred(ended()), seconds=20, what="the end of the friendship")
        reply = await self.ask(courier, {"id": "x", "to": 10, "type": "t", "msg": "hi"})
        self.assertEqual(reply["code"], "not_friend")
        # a second closed order, due later: once it has ended too, both
        # migrators have had every chance to run the first end again
        await query(self.mysql_settings, ("INSERT INTO orders (id, customer_id, courier_id) VALUES (43, 11, 20)",))
        self.assertEqual((await self.ask(courier, {"id": "t2", "to": 0, "type": "T", "msg": 43}))["type"], "A")
        await self.server.app.order_lifecycle.close(43)

        async def second_ended():
            # (the log line comes through the process's pipe, after the
            # Redis state changed: wait for both)
            return (await self.redis.smembers("URS:20") == set() and await self.redis.zcard("orders:ending") == 0
                    and b"order 43: conversation end ran: ended" in b"".join(p.output for p in others))
        await wait_until(lambda: defer.ensureDeferred(second_ended()), seconds=20, what="the second end")
        logged = b"".join(p.output for p in others)
        self.assertEqual(logged.count(b"order 42: conversation end ran: ended"), 1, logged.decode()[-3000:])
        self.assertEqual(logged.count(b"order 43: conversation end ran: ended"), 1)


def _json(entry):
    import json
    return json.loads(entry)

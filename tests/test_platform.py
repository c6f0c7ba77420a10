"""Contract §4: T (take order), S (site), O (online) on one node."""


from twisted.internet import defer, task
from twisted.trial import unittest

from tests.mysql_support import MysqlTestMixin, query
from tests.support import ServerTestMixin, mq_entries


class PlatformTestMixin(MysqlTestMixin, ServerTestMixin):

    def create_order(self, order, customer, courier=None):
        return query(self.mysql_settings,
                     ("INSERT INTO orders (id, customer_id, courier_id) VALUES (%s, %s, %s)",
                      (order, customer, courier)))

    async def stored(self):
        """The MQ list as the migrator will read it: oldest first."""
        return await mq_entries(self.redis)


class TakeOrderTests(PlatformTestMixin, unittest.TestCase):

    async def test_courier_takes_the_order_and_the_customer_hears(self):
        await self.create_order(42, customer=10, courier=20)
        courier, customer = await self.login(20), await self.login(10)
        reply = await self.ask(courier, {"id": "t1", "to": 0, "type": "T", "msg": 42})
        self.assertEqual(reply, {"id": "t1", "from": 0, "type": "A", "msg": {"order": 42, "uid": 10}})
        notice = await customer.next()
        ts = notice.pop("ts")
        self.assertEqual(notice.pop("pos"), 1, "its position in the customer's stream")
        self.assertEqual(notice, {"id": "taken-42", "from": 20, "to": 10, "type": "s",
                                  "msg": {"order": 42, "event": "taken", "courier": 20}})
        self.assertEqual(await self.stored(), [dict(notice, ts=ts)])
        self.assertEqual(set(await self.redis.smembers("URS:10")), {"20"})
        self.assertEqual(set(await self.redis.smembers("URS:20")), {"10"})
        # now they are friends: they can chat both ways
        self.assertEqual((await self.ask(customer, {"id": "c", "to": 20, "type": "t", "msg": "hi"}))["type"], "A")

    async def test_repeating_t_is_harmless(self):
        await self.create_order(43, customer=10, courier=20)
        courier, customer = await self.login(20), await self.login(10)
        for packet_id in ("a", "b", "c"):
            reply = await self.ask(courier, {"id": packet_id, "to": 0, "type": "T", "msg": "43"})
            self.assertEqual(reply["msg"], {"order": 43, "uid": 10})
        self.assertEqual((await customer.next())["type"], "s")
        customer.send({"id": "sync", "to": 0, "type": "P"})
        self.assertEqual((await customer.next())["id"], "sync", "no second s")
        self.assertEqual(len(await self.stored()), 1)

    async def test_someone_elses_order_is_forbidden(self):
        await self.create_order(44, customer=10, courier=20)
        await self.create_order(45, customer=10)  # no courier yet
        intruder = await self.login(21)
        for order in (44, 45):
            reply = await self.ask(intruder, {"id": "x", "to": 0, "type": "T", "msg": order})
            self.assertEqual((reply["type"], reply["code"]), ("E", "forbidden"))
        self.assertEqual(await self.redis.smembers("URS:21"), set())
        self.assertEqual(await self.stored(), [])

    async def test_unknown_order_is_not_found(self):
        courier = await self.login(20)
        reply = await self.ask(courier, {"id": "x", "to": 0, "type": "T", "msg": 999})
        self.assertEqual((reply["type"], reply["code"]), ("E", "not_found"))

    async def test_two_couriers_racing_only_the_orders_courier_wins(self):
        await self.create_order(46, customer=10, courier=20)
        real, other = await self.login(20), await self.login(21)
        customer = await self.login(10)
        real.send({"id": "r", "to": 0, "type": "T", "msg": 46})
        other.send({"id": "o", "to": 0, "type": "T", "msg": 46})
        self.assertEqual((await real.next())["type"], "A")
        self.assertEqual((await other.next())["code"], "forbidden")
        self.assertEqual((await customer.next())["from"], 20)
        self.assertEqual([m["from"] for m in await self.stored()], [20])


class OrderEnumerationTests(PlatformTestMixin, unittest.TestCase):
    """Issue 22 item 20: a courier walking through order ids gets
    ``forbidden`` and ``not_found`` (48 ids/s); both are counted on
    /metrics, and a connection whose T keep being refused is closed at
    ``max_errors`` even when it sends other packets in between."""

    overrides = {"websocket": {"max_errors": "5"}}

    def refused(self):
        text = self.server.app.metrics.exposition().decode()
        return {code: float(_sample(text, 'imd_order_takes_refused_total{code="%s"}' % code))
                for code in ("forbidden", "not_found")}

    async def test_refused_takes_are_counted_and_close_the_connection(self):
        self.assertEqual(self.refused(), {"forbidden": 0.0, "not_found": 0.0})
        await self.create_order(50, customer=10, courier=20)
        await self.create_order(51, customer=11, courier=21)
        courier = await self.login(21)
        # a successful P between refused T does not reset their count
        answers = []
        for n, order in enumerate((50, 999, 50, 998)):
            answers.append((await self.ask(courier, {"id": n, "to": 0, "type": "T", "msg": order})).get("code"))
            answers.append((await self.ask(courier, {"id": "p%d" % n, "to": 0, "type": "P"}))["type"])
        self.assertEqual(answers, ["forbidden", "P", "not_found", "P", "forbidden", "P", "not_found", "P"])
        self.assertEqual(self.refused(), {"forbidden": 2.0, "not_found": 2.0})
        # a T that succeeds does
        self.assertEqual((await self.ask(courier, {"id": "ok", "to": 0, "type": "T", "msg": 51}))["type"], "A")
        for n in range(4):
            reply = await self.ask(courier, {"id": "again%d" % n, "to": 0, "type": "T", "msg": 997 - n})
            self.assertEqual(reply["code"], "not_found")
            self.assertEqual((await self.ask(courier, {"id": "q%d" % n, "to": 0, "type": "P"}))["type"], "P")
        courier.send({"id": "fifth", "to": 0, "type": "T", "msg": 50})
        self.assertEqual((await courier.next())["code"], "forbidden")
        close = await courier.next()
        self.assertEqual((close["type"], close["msg"]), ("C", "too many refused T"))
        self.assertEqual((await courier.wait_closed())[0], 4008)
        self.assertEqual(self.refused(), {"forbidden": 3.0, "not_found": 6.0})
        self.assertEqual(await self.redis.smembers("URS:21"), {"11"})


def _sample(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return line.split()[-1]
    raise AssertionError("%s not in the exposition" % name)


class SiteTests(PlatformTestMixin, unittest.TestCase):
    """§4 with [privacy] positions = friends (the default, orders: tests/test_privacy.py)."""
    overrides = {"site": {"min_interval": "0"}, "privacy": {"positions": "friends"}}

    async def test_position_is_kept_and_pushed_to_online_friends_only(self):
        await self.befriend(20, 10)
        courier, friend, stranger = await self.login(20), await self.login(10), await self.login(11)
        reply = await self.ask(courier, {"id": "s1", "to": 0, "type": "S",
                                         "msg": {"longtitude": 121.5, "latitude": 31.25}})
        self.assertEqual(reply, {"id": "s1", "from": 0, "type": "A", "msg": "success"})
        pushed = await friend.next()
        self.assertEqual((pushed["type"], pushed["from"]), ("S", 20))
        self.assertEqual((pushed["msg"]["longitude"], pushed["msg"]["latitude"]), (121.5, 31.25))
        self.assertIsInstance(pushed["msg"]["ts"], int)
        stranger.send({"id": "sync", "to": 0, "type": "P"})
        self.assertEqual((await stranger.next())["id"], "sync", "a non-friend gets no position")
        site = await self.redis.hgetall("site:20")
        self.assertEqual((float(site["longitude"]), float(site["latitude"])), (121.5, 31.25))
        [[lon, lat]] = await self.redis.execute_command("GEOPOS", "geo:couriers", "20")
        self.assertAlmostEqual(float(lon), 121.5, places=4)
        self.assertAlmostEqual(float(lat), 31.25, places=4)
        self.assertEqual(await self.redis.llen("MQ"), 0, "positions are not stored as messages")

    async def test_ranges_are_checked(self):
        courier = await self.login(20)
        for lon, lat in ((180, 85.05112878), (-180, -85.05112878)):
            reply = await self.ask(courier, {"id": "ok", "to": 0, "type": "S",
                                             "msg": {"longitude": lon, "latitude": lat}})
            self.assertEqual(reply["type"], "A")
        for lon, lat in ((180.0001, 0), (0, 85.06), (0, -90), ("1", 0)):
            reply = await self.ask(courier, {"id": "bad", "to": 0, "type": "S",
                                             "msg": {"longitude": lon, "latitude": lat}})
            self.assertEqual((reply["type"], reply["code"]), ("E", "bad_packet"), (lon, lat))


class SiteThrottleTests(PlatformTestMixin, unittest.TestCase):
    """Positions faster than min_interval: every one acked, only the newest pushed."""

    @defer.inlineCallbacks
    def setUp(self):
        self.overrides = {"site": {"min_interval": "5"}, "privacy": {"positions": "friends"}}
        yield PlatformTestMixin.setUp(self)

    async def test_only_the_newest_of_a_burst_is_pushed_after_the_interval(self):
        import time
        clock = task.Clock()
        clock.advance(time.time())
        handler = self.server.app.handlers["S"].__self__
        handler._clock = clock
        await self.befriend(20, 10)
        courier, friend = await self.login(20), await self.login(10)
        for i in range(4):
            reply = await self.ask(courier, {"id": i, "to": 0, "type": "S", "msg": {"longitude": i, "latitude": 0}})
            self.assertEqual(reply["type"], "A")
        self.assertEqual((await friend.next())["msg"]["longitude"], 0)  # the first goes at once
        clock.advance(5)
        self.assertEqual((await friend.next())["msg"]["longitude"], 3)  # then only the newest
        clock.advance(5)
        friend.send({"id": "sync", "to": 0, "type": "P"})
        self.assertEqual((await friend.next())["id"], "sync")
        site = await self.redis.hgetall("site:20")
        self.assertEqual(float(site["longitude"]), 3.0, "the stored position is always the latest")


class OnlineTests(PlatformTestMixin, unittest.TestCase):

    async def test_online_offline_self_and_forbidden(self):
        await self.befriend(1, 2)
        await self.befriend(1, 3)
        alice, bob = await self.login(1), await self.login(2)
        ask = lambda uid: self.ask(alice, {"id": "o%d" % uid, "to": 0, "type": "O", "msg": uid})  # noqa: E731
        self.assertEqual((await ask(2))["msg"], {"uid": 2, "online": True})
        self.assertEqual((await ask(3))["msg"], {"uid": 3, "online": False})
        self.assertEqual((await ask(1))["msg"], {"uid": 1, "online": True})
        reply = await ask(4)
        self.assertEqual((reply["type"], reply["code"]), ("E", "forbidden"))
        bob.sendClose()
        await bob.wait_closed()

        async def bob_offline():
            return (await ask(2))["msg"]["online"] is False
        from tests.support import wait_until
        await wait_until(lambda: defer.ensureDeferred(bob_offline()), what="bob offline after logout")

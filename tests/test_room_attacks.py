"""Hostile input against rooms and the conversation list (contract v3 §9,
§10): replay tests of the attacks in docs/reliability.md, "Attacks and
hostile input", each against the real Redis and MySQL."""

from twisted.trial import unittest

from imd.config import ConfigError, parse_settings

from tests.test_migrator import FAST
from tests.test_rooms import ROOM, RoomTestMixin



def count_replies(test, script, size):
    """``size(reply)`` of each reply of ``script`` the room store gets, for
    the rest of ``test``, in a list that fills as they come."""
    sizes = []
    client = test.server.app.rooms._client
    run = client.run

    def counting(called, keys, args):
        d = run(called, keys, args)
        if called is script:
            d.addCallback(lambda got: sizes.append(size(got)) or got)
        return d
    client.run = counting
    test.addCleanup(setattr, client, "run", run)
    return sizes

class RoomHistoryBudgetTests(RoomTestMixin, unittest.TestCase):
    """``H {"room"}`` (and its cursor's pages) spent nothing of the user's
    ``H`` budget (``history_user_rate``): a member's connections each got
    their own ``history_rate``, every request reading the room's pending
    entries and MySQL.  It now takes from the same per-user budget as
    every other ``H``.  (A rate of 0.01/s: nothing refills while the test
    runs.)"""

    overrides = dict(FAST, websocket=dict(FAST["websocket"], history_user_rate="0.01", history_user_burst="4"))

    async def test_room_history_spends_the_users_budget_across_connections(self):
        await self.admin.create(ROOM, [1, 2])
        phone, web, bob = await self.login(1), await self.login(1), await self.login(2)
        for n in range(3):
            await self.send(bob, "m%d" % n, "text %d" % n)
        answers = []
        for client in (phone, web, phone):
            for n in range(2):
                reply = await self.ask(client, {"id": "h%d" % n, "type": "H",
                                                "msg": {"room": ROOM, "limit": 1}})
                answers.append(reply.get("code", reply["type"]))
        self.assertEqual(answers, ["H"] * 4 + ["rate_limited"] * 2)
        self.assertIn("history budget", reply["msg"])
        # the cursor's next page is an H like any other
        cursor = await self.ask(bob, {"id": "c", "type": "H", "msg": {"room": ROOM, "limit": 1}})
        self.assertTrue(cursor["more"])
        for n in range(3):
            await self.ask(bob, {"id": "x%d" % n, "type": "H", "msg": {"room": ROOM, "limit": 1}})
        reply = await self.ask(bob, {"id": "n", "type": "H", "msg": {"after": cursor["next"]}})
        self.assertEqual(reply.get("code"), "rate_limited", reply)
        # one budget for every form of H: the one-to-one H is refused too
        self.assertEqual((await self.ask(bob, {"id": "o", "to": 0, "type": "H", "msg": 0})).get("code"),
                         "rate_limited")


class NodeIdTests(unittest.SynchronousTestCase):
    """A careless ``[imd] node_id`` with a space (``web 1``): the scripts
    that publish stored packets take a ``dev:<uid>`` member ``'<node>
    <conn id>'`` up to its first space as the node, so they published to
    ``...node:web`` while the node listened on ``...node:web 1``: it took
    logins and stored messages, but delivered none of them live (a room
    message's other members got nothing) and every ``A`` came after the
    5 s wait for a frame that never came.  Now one config line naming the
    key, at start-up."""

    def test_a_node_id_with_a_space_or_a_control_character_is_a_config_error(self):
        for value in ("web 1", "web\t1", "web\x7f1", "wéb"):
            with self.assertRaises(ConfigError) as caught:
                parse_settings("[imd]\nnode_id = %s\n" % value, "etc/test.ini")
            line = str(caught.exception)
            self.assertEqual((caught.exception.section, caught.exception.key), ("imd", "node_id"), line)
            self.assertNotIn("\n", line)
            self.assertIn("no spaces", line)
        for value in ("web-1", "host.example:8765", "a/b,c"):
            self.assertEqual(parse_settings("[imd]\nnode_id = %s\n" % value).imd.node_id, value)
        self.assertEqual(parse_settings("[imd]\nnode_id =\n").imd.node_id, "")   # the default: host:port


class RoomHistoryBacklogTests(RoomTestMixin, unittest.TestCase):
    """``H {"room"}`` read every entry of ``roompending:<room>`` (``ZRANGE
    0 -1``) and parsed them all, whatever its ``after_seq`` and ``limit``:
    with the migrator stopped (MySQL down) and 20 000 messages waiting in a
    busy room, each member's ``H`` with ``limit`` 1 took 365 ms of the
    node's reactor.  It now reads the ``limit`` + 1 entries above
    ``after_seq`` (a binary search on rank inside the script)."""

    timeout = 120

    def count_pending_reads(self):
        """The entries each room-pending script answers, as the store got them."""
        from imd.stores.rooms import ROOM_PENDING
        return count_replies(self, ROOM_PENDING, len)

    async def test_a_page_reads_its_limit_of_the_backlog_not_all_of_it(self):
        from twisted.internet import defer
        await self.admin.create(ROOM, [1, 2])
        bob = await self.login(2)
        total = 2000
        for start in range(0, total, 250):
            await defer.gatherResults([self.admin.send(ROOM, {"n": n, "seq": 1, "pos": 1}, "p%d" % n)
                                       for n in range(start, start + 250)])
        self.assertEqual(await self.redis.zcard("roompending:%s" % ROOM), total)
        sizes = self.count_pending_reads()
        for after in (0, 1, 999, total - 2, total - 1, total, total + 50):
            reply = await self.ask(bob, {"id": "h", "type": "H", "msg": {"room": ROOM, "after_seq": after,
                                                                          "limit": 1}})
            self.assertEqual([p["seq"] for p in reply["msg"]], [after + 1] if after < total else [], after)
            self.assertEqual(reply["more"], after + 1 < total, after)
        self.assertEqual(sizes, [2, 2, 2, 2, 1, 0, 0])
        # paging through it all: every seq once, in order
        packets, _ = await self.room_history(bob, after_seq=1500, limit=37)
        self.assertEqual([p["seq"] for p in packets], list(range(1501, total + 1)))
        self.assertEqual([p["msg"]["n"] for p in packets[:2]], [1500, 1501])
        self.assertTrue(all(size <= 38 for size in sizes[7:]), sizes)


class RoomSyncBacklogTests(RoomTestMixin, unittest.TestCase):
    """``H {"sync"}`` read, for each of the user's rooms, every unmigrated
    entry above its ``pos`` (``ZRANGEBYSCORE`` without a limit), at every
    page: with 20 000 waiting in one room (the migrator stopped), a page
    of 100 from 0 took 408 ms of the node's reactor, and catching up page
    by page read the backlog again at each page.  It now reads, per span
    of membership, the first ``limit`` + 1 above the ``pos``."""

    timeout = 120

    async def test_a_sync_page_reads_its_limit_of_each_span(self):
        from twisted.internet import defer
        from imd.stores.rooms import STREAM_PENDING
        await self.admin.create(ROOM, [1, 2])
        bob = await self.login(2)

        async def burst(first, last):
            for start in range(first, last, 250):
                await defer.gatherResults([self.admin.send(ROOM, {"n": n}, "p%d" % n)
                                           for n in range(start, min(start + 250, last))])
        # two spans of bob's: 0-299 as a member, 300-399 not, 400-699 again
        await burst(0, 300)
        await self.admin.change(ROOM, [], [2])
        await burst(300, 400)
        await self.admin.change(ROOM, [2], [])
        await burst(400, 700)
        sizes = count_replies(self, STREAM_PENDING, lambda got: sum(len(e) for e in got[1::2]))
        packets = []
        reply = await self.ask(bob, {"id": "s", "type": "H", "msg": {"sync": 0, "limit": 37}})
        while True:
            self.assertEqual(reply["type"], "H", reply)
            packets.extend(reply["msg"])
            if not reply["more"]:
                break
            reply = await self.ask(bob, {"id": "s", "type": "H", "msg": {"after": reply["next"]}})
        positions = [p["pos"] for p in packets]
        self.assertEqual(positions, sorted(set(positions)))
        self.assertEqual([p["id"] for p in packets if p["id"].startswith("p")],
                         ["p%d" % n for n in list(range(300)) + list(range(400, 700))])
        self.assertEqual([p["msg"]["event"] for p in packets if "event" in p["msg"]], ["left", "joined"])
        self.assertTrue(sizes and max(sizes) <= 2 * 38, sizes)


class RoomSyncManyRoomsTests(RoomTestMixin, unittest.TestCase):
    """A courier in a room per order, never taken out by the platform:
    each ``H {"sync"}`` read the spans and backlog of every room the user
    ever was in (``roomsof:<uid>``) and asked MySQL about each, even for a
    reconnect a second later: 210 ms per page for a member of 3 000 rooms
    with one message each.  It now reads the rooms with a packet for the
    user above its ``pos`` (``roomconv:<uid>``, which the store scripts keep)."""

    timeout = 120

    async def test_a_sync_reads_the_rooms_active_after_its_pos_only(self):
        from imd.stores.rooms import STREAM_PENDING
        bob = await self.login(2)
        for n in range(300):
            await self.admin.create("r%d" % n, [1, 2])
            await self.admin.send("r%d" % n, {"n": n}, "x%d" % n)
        await self.admin.create("quiet", [2])
        await self.admin.create("gone", [1, 2])
        await self.admin.send("gone", {"n": "g"}, "g1")
        await self.admin.change("gone", [], [2])
        first = await self.ask(bob, {"id": "s", "type": "H", "msg": {"sync": 0, "limit": 500}})
        self.assertEqual([p["id"] for p in first["msg"] if p["type"] == "s" and "n" in p["msg"]],
                         ["x%d" % n for n in range(300)] + ["g1"])
        self.assertEqual(first["msg"][-1]["msg"]["event"], "left")
        mark = first["msg"][-1]["pos"]
        keys = []
        client = self.server.app.rooms._client
        run = client.run

        def counting(script, key_list, args):
            if script is STREAM_PENDING:
                keys.append(len(key_list))
            return run(script, key_list, args)
        client.run = counting
        self.addCleanup(setattr, client, "run", run)
        await self.admin.send("r7", {"n": "again"}, "y7")
        await self.admin.send("gone", {"n": "not for bob"}, "g2")
        reply = await self.ask(bob, {"id": "s", "type": "H", "msg": {"sync": mark, "limit": 100}})
        self.assertEqual([p["id"] for p in reply["msg"]], ["y7"])
        self.assertEqual(keys, [2])   # r7's spans and backlog: not the 301 other rooms
        latest = reply["msg"][0]["pos"]
        self.assertEqual((await self.ask(bob, {"id": "s", "type": "H", "msg": {"sync": latest}}))["msg"], [])
        self.assertEqual(keys, [2])   # nothing above: no room read at all


class FrameWaitTests(unittest.SynchronousTestCase):
    """An ``A`` waits for its message's frame (LocalNode.wait_frame): frames
    that never come (the subscription lost, a publish lost) release it
    after FRAME_TIMEOUT and keep nothing; frames that come with no waiter
    (a waiter's handler that failed) are kept at most MAX_EARLY_FRAMES."""

    def test_waiters_whose_frames_never_come_are_released_and_forgotten(self):
        from twisted.internet.task import Clock
        from imd.node import FRAME_TIMEOUT, MAX_EARLY_FRAMES, LocalNode
        clock = Clock()
        node = LocalNode("n1", None, clock, 5)
        waiting = [node.wait_frame(pos, "A") for pos in range(1, 2001)]
        clock.advance(FRAME_TIMEOUT - 0.01)
        self.assertFalse(any(d.called for d in waiting))
        clock.advance(0.02)
        self.assertTrue(all(d.called for d in waiting))     # the client gets its A, 5 s late
        self.assertEqual((len(node._frame_waiters), clock.getDelayedCalls()), (0, []))
        for pos in range(30001, 30001 + 3 * MAX_EARLY_FRAMES):
            node.frame_received('g 7 7/c1 {"id":"m","seq":1,"pos":%d}' % pos)
        self.assertEqual(len(node._frames_early), MAX_EARLY_FRAMES)
        # the newest early frames are the ones kept: their waiter fires at once
        self.assertEqual(node.wait_frame(30000 + 3 * MAX_EARLY_FRAMES, "A"), "A")   # (no Deferred: the A at once)
        self.assertFalse(node.wait_frame(30001, "A").called)

"""Contract §10: every message carries its position (``pos``) in the user's
stream; ``H {"sync": P}`` reads the stream after P; no gap between catching
up and live delivery; the sender's other devices get what it sends."""

import os
import random
import signal

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.daemon_support import start_daemon, write_config
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import query
from tests.support import (DEADLINE, ImdServer, drop, make_settings, settings_text, wait_until,
                           with_deadline)
from tests.test_migrator import FAST, MigratorTestMixin
from tests.test_migrator_crash import MigratorProcess


def text(packet_id, to, msg="m"):
    return {"id": packet_id, "to": to, "type": "t", "msg": msg}


def in_room(packet_id, room, msg="m"):
    return {"id": packet_id, "room": room, "type": "t", "msg": msg}


class Follower:
    """The client loop of contract §10, over one connection: after ``L`` it
    syncs from the highest pos it has processed, keeps the live packets
    that come meanwhile, then takes them; every packet whose pos it has
    already seen is dropped.  ``messages``: what it processed, in order."""

    def __init__(self, test, client, highest=0, limit=100, seen=None):
        self.test = test
        self.client = client
        self.highest = highest
        self.limit = limit
        self.seen = set() if seen is None else seen
        self.messages = []
        self.pages = 0
        self.truncated = False
        self.synced = defer.Deferred()
        self.live_positions = []   # every live packet's pos, in the order it came
        self._live = []
        self._sync_id = None
        self._n = 0
        self._waiting = None
        self._stopped = False
        test.addCleanup(self.stop)

    def stop(self):
        """Stop reading (the test is over with it)."""
        self._stopped = True
        if self._waiting is not None and not self._waiting.called:
            self._waiting.cancel()

    def start(self):
        self._ask({"sync": self.highest, "limit": self.limit})
        self._read()
        return self

    def _ask(self, msg):
        self._n += 1
        self._sync_id = "sync-%d" % self._n
        self.client.send({"id": self._sync_id, "to": 0, "type": "H", "msg": msg})

    @defer.inlineCallbacks
    def _read(self):
        while not self._stopped:
            self._waiting = self.client.next(DEADLINE * 4)
            try:
                packet = yield self._waiting
            except Exception:
                return   # stopped, or nothing came for that long
            if packet.get("id") == self._sync_id and packet["type"] in "HE":
                self.test.assertEqual(packet["type"], "H", packet)
                self.pages += 1
                self.truncated = self.truncated or packet.get("truncated", False)
                positions = [p["pos"] for p in packet["msg"]]
                self.test.assertEqual(positions, sorted(set(positions)), "a page not ascending by pos")
                for item in packet["msg"]:
                    item.pop("state", None)   # (a room message has none: no receipts in rooms)
                    self._process(item)
                if packet["more"]:
                    self._ask({"after": packet["next"]})
                else:
                    self._sync_id = None
                    live, self._live = self._live, []
                    for item in live:
                        self._process(item)
                    if not self.synced.called:
                        self.synced.callback(self)
            elif packet["type"] in "tis":
                self.live_positions.append(packet["pos"])
                if self._sync_id is not None:
                    self._live.append(packet)
                else:
                    self._process(packet)

    def _process(self, packet):
        pos = packet["pos"]
        if pos in self.seen:
            return
        self.seen.add(pos)
        self.highest = max(self.highest, pos)
        self.messages.append(packet)


class SyncTestMixin(MigratorTestMixin):
    overrides = FAST

    @defer.inlineCallbacks
    def second_node(self):
        node = yield ImdServer(make_settings(dict(self.overrides, imd={"node_id": "test-node-2"}))).start()
        self.addCleanup(node.stop)
        return node

    @defer.inlineCallbacks
    def sync(self, client, after, limit=100):
        """Every item of a sync from ``after``, following ``next``: (items, pages, truncated)."""
        items, pages, truncated, n = [], 0, False, 0
        msg = {"sync": after, "limit": limit}
        while True:
            n += 1
            reply = yield self.ask(client, {"id": "s%d" % n, "to": 0, "type": "H", "msg": msg})
            self.assertEqual(reply["type"], "H", reply)
            pages += 1
            truncated = truncated or reply.get("truncated", False)
            self.assertLessEqual(len(reply["msg"]), limit)
            items.extend(reply["msg"])
            if not reply["more"]:
                self.assertNotIn("next", reply)
                return items, pages, truncated
            msg = {"after": reply["next"]}

    @defer.inlineCallbacks
    def send_acked(self, client, packets):
        """Send ``packets`` pipelined; ``{(from-less) id: A's pos}``."""
        for packet in packets:
            client.send(packet)
        positions = {}
        for _ in packets:
            reply = yield client.next_of("AE")
            self.assertEqual(reply["type"], "A", reply)
            positions[str(reply["id"])] = reply["pos"]
        return positions

    def assert_stream(self, items, expected):
        """``items`` (dicts with pos) are exactly ``expected`` ({(from, id): pos}), once each, ascending."""
        got = [((p["from"], str(p["id"])), p["pos"]) for p in items]
        self.assertEqual([pos for _, pos in got], sorted(pos for _, pos in got), "not in pos order")
        self.assertEqual(len(got), len(set(key for key, _ in got)), "a message came twice")
        self.assertEqual(dict(got), expected)


class PositionTests(SyncTestMixin, unittest.TestCase):

    async def test_the_second_device_gets_what_its_user_sends_with_the_same_pos(self):
        await self.befriend(1, 2)
        node2 = await self.second_node()
        phone, web, remote = await self.login(1), await self.login(1), await self.login_on(node2, 1)
        bob = await self.login_on(node2, 2)
        reply = await self.ask(phone, text("m1", 2, "from the phone"))
        pos = reply["pos"]
        for device in (web, remote, bob):
            got = await device.next_of("t")
            self.assertEqual((got["id"], got["from"], got["msg"], got["pos"]), ("m1", 1, "from the phone", pos))
        # the sending connection got only the A: its next packet is the pong
        phone.send({"id": "p", "to": 0, "type": "P"})
        self.assertEqual((await phone.next())["type"], "P")
        # and what the others send reaches it, with the same pos as theirs
        reply = await self.ask(remote, text("m2", 2, "from the web"))
        for device in (phone, web, bob):
            got = await device.next()
            self.assertEqual((got["id"], got["pos"]), ("m2", reply["pos"]))

    async def test_a_retry_is_acked_with_the_first_pos_and_delivered_nowhere_again(self):
        await self.befriend(1, 2)
        phone, web, bob = await self.login(1), await self.login(1), await self.login(2)
        first = await self.ask(phone, text("r", 2))
        self.assertEqual((await bob.next())["id"], "r")
        self.assertEqual((await web.next())["id"], "r")
        await self.ask(bob, text("between", 1))
        self.assertEqual((await web.next())["id"], "between")
        again = await self.ask(web, text("r", 2))
        self.assertEqual((again["dup"], again["pos"]), (True, first["pos"]))
        for client in (bob, phone):   # nothing was delivered again: the next packet is the pong
            client.send({"id": "p", "to": 0, "type": "P"})
            self.assertEqual((await client.next_of("PA"))["type"], "P")

    async def test_pos_survives_a_restart_of_every_process_and_a_lost_counter(self):
        await self.befriend(1, 2)
        config = write_config(self, dict(self.overrides, mysql={"database": self.mysql_settings.database}))
        daemon = await start_daemon(self, config)
        alice = await self.login_on(daemon, 1)
        before = await self.send_acked(alice, [text("a%d" % n, 2) for n in range(20)])
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        await migrator.stopService()
        # every process stops; Redis comes back from an older snapshot: its
        # counter far behind the positions MySQL holds
        daemon.signal(signal.SIGKILL)
        await daemon.wait_ended()
        await self.server.stop()
        await self.redis.set("MQ:seq", "3")
        daemon = await start_daemon(self, config)
        await wait_until(lambda: self.redis.get("MQ:seq").addCallback(lambda v: int(v) >= max(before.values())),
                         what="MQ:seq raised to MySQL's highest accept_seq")
        alice = await self.login_on(daemon, 1)
        after = await self.send_acked(alice, [text("b%d" % n, 2) for n in range(5)])
        self.assertGreater(min(after.values()), max(before.values()))
        items, _, _ = await self.sync(await self.login_on(daemon, 2), 0)
        expected = {(1, i): pos for i, pos in list(before.items()) + list(after.items())}
        self.assert_stream(items, expected)

    async def test_history_items_carry_the_pos_they_were_delivered_with(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        acked = await self.send_acked(alice, [text("h%d" % n, 2) for n in range(6)])
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        await migrator.stopService()
        await self.send_acked(alice, [text("h%d" % n, 2) for n in range(6, 9)])
        live = {p["id"]: p["pos"] for p in [await bob.next_of("t") for _ in range(9)]}
        reply = await self.ask(bob, {"id": "h", "to": 0, "type": "H", "msg": {"with": 1}})
        self.assertEqual({p["id"]: p["pos"] for p in reply["msg"]}, live)
        for packet_id, pos in acked.items():
            self.assertEqual(live[packet_id], pos)


class SyncTests(SyncTestMixin, unittest.TestCase):

    async def test_bad_sync_queries(self):
        alice = await self.login(1)
        for n, msg in enumerate(({"sync": -1}, {"sync": "5"}, {"sync": 1.5}, {"sync": None}, {"sync": 0, "limit": 0},
                                 {"sync": 0, "limit": 501}, {"sync": 0, "limit": "5"}, {"sync": 0, "with": 2},
                                 {"sync": 0, "since": 5}, {"sync": True})):
            reply = await self.ask(alice, {"id": n, "to": 0, "type": "H", "msg": msg})
            self.assertEqual((reply["type"], reply["code"], reply["id"]), ("E", "bad_packet", n), msg)
        reply = await self.ask(alice, {"id": "ok", "to": 0, "type": "H", "msg": {"sync": 0}})
        self.assertEqual((reply["type"], reply["msg"], reply["more"]), ("H", [], False))
        self.assertNotIn("truncated", reply)

    async def test_1000_messages_of_several_senders_on_two_nodes_page_without_skip_or_repeat(self):
        node2 = await self.second_node()
        senders = {11: self.server, 12: self.server, 13: node2, 14: node2}
        for uid in senders:
            await self.befriend(uid, 1)
        await self.befriend(1, 2)
        clients = {uid: await self.login_on(server, uid) for uid, server in senders.items()}
        reader = await self.login_on(node2, 1)
        migrator = start_migrator(self, self.server.app.settings)   # part of it moves to MySQL meanwhile
        sent = await defer.gatherResults([
            self.send_acked(clients[uid], [text("%d-%d" % (uid, n), 1) for n in range(240)]) for uid in senders]
            + [self.send_acked(reader, [text("own-%d" % n, 2) for n in range(40)])])
        expected = {}
        for uid, positions in zip(list(senders) + [1], sent):
            expected.update({(uid, i): pos for i, pos in positions.items()})
        self.assertEqual(len(expected), 1000)
        self.assertEqual(len(set(expected.values())), 1000, "a position handed out twice")
        items, pages, truncated = await self.sync(reader, 0, limit=37)
        self.assert_stream(items, expected)
        self.assertEqual(pages, 28)
        self.assertFalse(truncated)
        # from a position in the middle: exactly what came after it
        middle = sorted(expected.values())[500]
        items, _, _ = await self.sync(reader, middle, limit=500)
        self.assert_stream(items, {k: p for k, p in expected.items() if p > middle})
        await with_drain(migrator)
        items, _, _ = await self.sync(reader, 0, limit=500)
        self.assert_stream(items, expected)
        rows = await query(self.mysql_settings, "SELECT COUNT(*) FROM message")
        self.assertEqual(rows[0][0], 1000)

    async def test_receipts_are_not_in_the_stream(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        acked = await self.send_acked(alice, [text("m%d" % n, 2) for n in range(3)])
        reply = await self.ask(bob, {"id": "r", "to": 1, "type": "R", "msg": {"state": "read", "ids": ["m0", "m1"]}})
        self.assertEqual(reply["type"], "A")
        items, _, _ = await self.sync(bob, 0)
        self.assert_stream(items, {(1, i): p for i, p in acked.items()})
        self.assertEqual([p["state"] for p in items], ["read", "read", "sent"])

    async def test_recalls_are_in_the_stream_migrated_or_not(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        acked = await self.send_acked(alice, [text("m%d" % n, 2) for n in range(3)])
        d1 = await self.ask(alice, {"id": "d1", "to": 2, "type": "D", "msg": "m1"})
        self.assertEqual(d1["type"], "A", d1)
        migrator = start_migrator(self, self.server.app.settings)   # m0..m2 and d1 move to MySQL
        await with_drain(migrator)
        await migrator.stopService()
        d0 = await self.ask(alice, {"id": "d0", "to": 2, "type": "D", "msg": "m0"})   # m0 migrated, d0 not
        self.assertEqual(d0["type"], "A", d0)
        live = [await bob.next() for _ in range(5)]
        self.assertEqual([(p["type"], p["id"], p["pos"]) for p in live],
                         [("t", "m0", acked["m0"]), ("t", "m1", acked["m1"]), ("t", "m2", acked["m2"]),
                          ("D", "d1", d1["pos"]), ("D", "d0", d0["pos"])])
        for client in (bob, alice):   # both parties' streams hold the D packets, in pos order
            items, _, _ = await self.sync(client, 0)
            self.assertEqual([(p["type"], p["id"], p["msg"], p["pos"], p.get("recalled")) for p in items],
                             [("t", "m0", "", acked["m0"], True), ("t", "m1", "", acked["m1"], True),
                              ("t", "m2", "m", acked["m2"], None),
                              ("D", "d1", "m1", d1["pos"], None), ("D", "d0", "m0", d0["pos"], None)])
            items, _, _ = await self.sync(client, d1["pos"])
            self.assertEqual([p["id"] for p in items], ["d0"])
        # history by time still lists messages only (contract §11)
        reply = await self.ask(bob, {"id": "h", "to": 0, "type": "H", "msg": 0})
        self.assertEqual([p["id"] for p in reply["msg"]], ["m0", "m1", "m2"])

    async def test_the_user_history_budget_applies(self):
        self.overrides = dict(FAST, websocket=dict(FAST["websocket"], history_user_rate="0.01",
                                                   history_user_burst="2"))
        await self.server.stop()
        self.server = ImdServer(make_settings(self.overrides))
        await self.server.start()
        self.addCleanup(self.server.stop)
        alice = await self.login(1)
        codes = []
        for n in range(3):
            reply = await self.ask(alice, {"id": n, "to": 0, "type": "H", "msg": {"sync": 0}})
            codes.append(reply.get("code", reply["type"]))
        self.assertEqual(codes, ["H", "H", "rate_limited"])

    async def test_a_position_retention_removed_answers_truncated_from_the_oldest_kept(self):
        await self.befriend(1, 2)
        alice = await self.login(1)
        old = await self.send_acked(alice, [text("old%d" % n, 2) for n in range(5)])
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        await migrator.stopService()
        await query(self.mysql_settings, "UPDATE message SET ts = 1000")
        kept = await self.send_acked(alice, [text("new%d" % n, 2) for n in range(3)])
        from imd.retention import purge
        from imd.stores.mysql import MessageRows
        deleted, _ = await purge(MessageRows(self.server.app.mysql), 2000,
                                 lambda s: task.deferLater(reactor, 0, lambda: None), lambda: 0.0)
        self.assertEqual(deleted, 5)
        bob = await self.login(2)
        expected = {(1, i): p for i, p in kept.items()}
        for after in (0, min(old.values()), max(old.values()) - 1):
            items, _, truncated = await self.sync(bob, after)
            self.assert_stream(items, expected)
            self.assertTrue(truncated, after)
        items, _, truncated = await self.sync(bob, max(old.values()))
        self.assert_stream(items, expected)
        self.assertFalse(truncated)


class NoGapTests(SyncTestMixin, unittest.TestCase):
    """A client that logs in while others keep sending to it, syncs from
    the highest pos it processed right after ``L`` and drops what it has
    seen, ends with every message exactly once (contract §10); its live
    packets, one-to-one and room messages interleaved, from senders on two
    nodes, come strictly ascending by pos."""

    overrides = dict(FAST, migrate={"batch": "20", "interval": "0.01", "lock_ttl": "0.5"})

    def migrator_config(self):
        path = os.path.abspath(self.mktemp())
        overrides = dict(self.overrides, imd={"roles": "migrate"}, mysql={"database": self.mysql_settings.database})
        with open(path, "w") as f:
            f.write(settings_text(overrides))
        return path

    async def test_reconnect_while_others_send_with_a_migrator_killed(self):
        for index, seed in enumerate([random.randrange(2 ** 32) for _ in range(3)]):
            try:
                await self.run_once(seed, 1000 * (index + 1))
            except BaseException as e:
                raise AssertionError("seed %d: %r" % (seed, e)) from e

    async def run_once(self, seed, reader):
        """One round with ``rng`` from ``seed``: ``reader`` and its senders are new users."""
        rng = random.Random(seed)
        senders = [reader + 1, reader + 2, reader + 3]
        node2 = getattr(self, "_node2", None) or await self.second_node()
        self._node2 = node2
        nodes = [self.server, node2]
        for uid in senders:
            await self.befriend(uid, reader)
        room = "nogap:%d" % reader   # the reader and its senders: room messages interleave with the rest
        await self.server.app.room_admin.create(room, [reader] + senders)
        # senders on both nodes, the first two on different ones
        clients = {uid: await self.login_on(node, uid)
                   for uid, node in zip(senders, [nodes[0], nodes[1], rng.choice(nodes)])}
        expected = {}
        # before: the reader online, everything processed
        follower = Follower(self, await self.login_on(rng.choice(nodes), reader)).start()
        await with_deadline(follower.synced, what="first sync (seed %d)" % seed)
        # all three at once, from both nodes, one-to-one and room messages
        # interleaved: the reader's connection gets them in pos order,
        # whichever node each was stored through
        acked = await defer.gatherResults([
            self.send_acked(clients[uid], [text("a%d" % n, reader) if n % 2 else in_room("a%d" % n, room)
                                           for n in range(40)]) for uid in senders])
        for uid, positions in zip(senders, acked):
            expected.update({(uid, i): p for i, p in positions.items()})
        first = len(expected)
        await wait_until(lambda: len(follower.messages) == first, what="%d live messages (seed %d)" % (first, seed))
        self.assertEqual(follower.live_positions, sorted(p for _, p in expected.items()),
                         "live packets out of pos order")
        highest, seen = follower.highest, follower.seen
        follower.stop()
        await drop(follower.client)
        # offline: 500 stored; a migrator process moves part of them and is killed -9 mid-way
        process = MigratorProcess(self.migrator_config()).start()
        await with_deadline(process.leading, what="migrator leading (seed %d)" % seed)
        offline = await defer.gatherResults([
            self.send_acked(clients[uid], [text("b%d" % n, reader) if n % 5 else in_room("b%d" % n, room)
                                           for n in range(i, 600, 3)])
            for i, uid in enumerate(senders)])
        for uid, positions in zip(senders, offline):
            expected.update({(uid, i): p for i, p in positions.items()})

        async def migrated_some():
            rows = await query(self.mysql_settings, "SELECT COUNT(*) FROM message WHERE to_id = %s" % reader)
            return rows[0][0] >= 150 + rng.randrange(150)
        await wait_until(lambda: defer.ensureDeferred(migrated_some()), what="part migrated (seed %d)" % seed)
        await process.kill()
        # back online while another sender keeps sending, on either node
        keep_sending = defer.ensureDeferred(self.keep_sending(clients[senders[1]], senders[1], reader, rng,
                                                              expected, room))
        await task.deferLater(reactor, rng.random() * 0.05, lambda: None)
        follower = Follower(self, await self.login_on(rng.choice(nodes), reader), highest=highest, seen=seen,
                            limit=rng.choice((7, 50, 500))).start()
        migrator = start_migrator(self, self.server.app.settings)   # the rest moves while it catches up
        await keep_sending
        await with_deadline(follower.synced, what="sync done (seed %d)" % seed)
        total = len(expected) - first
        await wait_until(lambda: len(follower.messages) >= total, what="every message (seed %d)" % seed)
        await with_drain(migrator)
        await migrator.stopService()
        follower.stop()
        # live packets come in pos order on every connection (contract §10)
        self.assertEqual(follower.live_positions, sorted(set(follower.live_positions)), "live packets out of order")
        got = [((p["from"], str(p["id"])), p["pos"]) for p in follower.messages]
        self.assertEqual(len(got), len(set(k for k, _ in got)), "a message shown twice")
        self.assertEqual(dict(got), {k: p for k, p in expected.items() if p > highest})
        # and a sync from 0 now gives the whole stream, in pos order
        items, _, _ = await self.sync(await self.login(reader), 0, limit=500)
        self.assert_stream(items, expected)

    async def keep_sending(self, client, sender, reader, rng, expected, room):
        """60 messages one after the other, now and then a moment apart,
        one in three into the room."""
        for n in range(60):
            reply = await self.ask(client, in_room("c%d" % n, room) if n % 3 == 0 else text("c%d" % n, reader))
            self.assertEqual(reply["type"], "A", reply)
            expected[(sender, "c%d" % n)] = reply["pos"]
            if rng.random() < 0.3:
                await task.deferLater(reactor, rng.random() * 0.01, lambda: None)


class ConversationTests(SyncTestMixin, unittest.TestCase):
    """``H {"conversations": true}`` (contract §10): newest activity first,
    the last packet, unread counts that move as read receipts arrive."""

    async def conversations(self, client, limit=None, n=[0]):
        n[0] += 1
        msg = {"conversations": True} if limit is None else {"conversations": True, "limit": limit}
        reply = await self.ask(client, {"id": "c%d" % n[0], "to": 0, "type": "H", "msg": msg})
        self.assertEqual(reply["type"], "H", reply)
        return reply

    def summary(self, reply):
        return [(c["with"], c["last"]["id"], c["unread"]) for c in reply["msg"]]

    async def test_unread_counts_move_as_receipts_arrive(self):
        for other in (2, 3):
            await self.befriend(1, other)
        alice, bob, carol = await self.login(1), await self.login(2), await self.login(3)
        bob_sent = await self.send_acked(bob, [text("b%d" % n, 1) for n in range(5)])
        await self.send_acked(carol, [text("c0", 1)])
        await self.send_acked(alice, [text("a0", 2)])   # alice's own: not unread for her
        reply = await self.conversations(alice)
        self.assertEqual(self.summary(reply), [(2, "a0", 5), (3, "c0", 1)])
        self.assertFalse(reply["more"])
        last = reply["msg"][0]["last"]
        self.assertEqual((last["from"], last["to"], last["msg"]), (1, 2, "m"))
        # bob's list: alice's a0 is its one unread
        self.assertEqual(self.summary(await self.conversations(bob)), [(1, "a0", 1)])
        # alice reads b1: b0 and b1 are read, three left
        await self.ask(alice, {"id": "r1", "to": 2, "type": "R", "msg": {"state": "read", "ids": ["b1"]}})
        self.assertEqual(self.summary(await self.conversations(alice)), [(2, "a0", 3), (3, "c0", 1)])
        # delivered is not read; reading an older one changes nothing
        await self.ask(alice, {"id": "r2", "to": 2, "type": "R", "msg": {"state": "delivered", "ids": ["b4"]}})
        await self.ask(alice, {"id": "r3", "to": 2, "type": "R", "msg": {"state": "read", "ids": ["b0"]}})
        self.assertEqual(self.summary(await self.conversations(alice)), [(2, "a0", 3), (3, "c0", 1)])
        await self.ask(alice, {"id": "r4", "to": 2, "type": "R", "msg": {"state": "read", "ids": ["b4", "b2"]}})
        self.assertEqual(self.summary(await self.conversations(alice)), [(2, "a0", 0), (3, "c0", 1)])
        # new activity moves a conversation to the front; a recall takes its message out of unread
        await self.send_acked(carol, [text("c1", 1)])
        self.assertEqual(self.summary(await self.conversations(alice)), [(3, "c1", 2), (2, "a0", 0)])
        reply = await self.ask(carol, {"id": "d", "to": 1, "type": "D", "msg": "c1"})
        self.assertEqual(reply["type"], "A", reply)
        reply = await self.conversations(alice)
        self.assertEqual(self.summary(reply), [(3, "c1", 1), (2, "a0", 0)])
        self.assertEqual((reply["msg"][0]["last"]["msg"], reply["msg"][0]["last"]["recalled"]), ("", True))
        # the positions the list is ordered by are the messages'
        self.assertGreater(max(bob_sent.values()), 0)

    async def test_system_messages_count_as_from_others_and_migration_changes_nothing(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        await self.send_acked(bob, [text("b0", 1)])
        # a system message, stored as POST /IM/api/send stores it
        from imd import protocol
        head, tail = protocol.system_message_parts("sys1", {"event": "hello"}, 1000)
        stored = await self.server.app.messages.store_system_messages("sys1", [1], head, tail, 1000)
        self.assertEqual([uid for uid, _ in stored], [1])
        self.assertEqual((await alice.next_of("s"))["id"], "sys1")
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator)
        await migrator.stopService()
        self.assertEqual(self.summary(await self.conversations(alice)), [(0, "sys1", 1), (2, "b0", 1)])
        await self.ask(alice, {"id": "r", "to": 0, "type": "R", "msg": {"state": "read", "ids": ["sys1"]}})
        self.assertEqual(self.summary(await self.conversations(alice)), [(0, "sys1", 0), (2, "b0", 1)])

    async def test_pages_without_skip_or_repeat_and_bad_limits(self):
        others = list(range(10, 17))
        for other in others:
            await self.befriend(1, other)
        alice = await self.login(1)
        await self.send_acked(alice, [text("to%d" % other, other) for other in others])
        seen, msg, pages = [], {"conversations": True, "limit": 3}, 0
        while True:
            pages += 1
            reply = await self.ask(alice, {"id": "p%d" % pages, "to": 0, "type": "H", "msg": msg})
            self.assertLessEqual(len(reply["msg"]), 3)
            seen.extend(c["with"] for c in reply["msg"])
            if not reply["more"]:
                break
            msg = {"after": reply["next"]}
        self.assertEqual((seen, pages), (list(reversed(others)), 3))
        for n, bad in enumerate(({"conversations": True, "limit": 0}, {"conversations": True, "limit": 201},
                                 {"conversations": True, "limit": "5"}, {"conversations": 1},
                                 {"conversations": True, "with": 2})):
            reply = await self.ask(alice, {"id": n, "to": 0, "type": "H", "msg": bad})
            self.assertEqual((reply["type"], reply["code"]), ("E", "bad_packet"), bad)
        reply = await self.ask(alice, {"id": "max", "to": 0, "type": "H", "msg": {"conversations": True, "limit": 200}})
        self.assertEqual(len(reply["msg"]), 7)

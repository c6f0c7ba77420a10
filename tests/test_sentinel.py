"""Redis high availability (contract §8): Sentinel failover and
replica-acknowledged writes, against real ``redis-server`` processes of the
test's own (a master, a replica, three sentinels; tests/sentinel_support.py).

- ``WaitTests``: ``RedisClient.replicated`` sends one ``WAIT`` for a turn of
  writes, and fails when the replicas do not confirm.
- ``StoppedReplicaTests``: a replica stopped with SIGSTOP: ``E unavailable``
  within about ``replica_timeout``, no ``A``, acks again once it resumes.
- ``FailoverTests``: the master ``kill -9``-ed under a stream of messages,
  with ``min_replicas`` 1 (nothing acked is lost) and 0 (how many acked
  messages a failover loses); a failover by ``SENTINEL FAILOVER`` (the old
  master stays up, demoted), then a kill, each followed by both nodes' bus,
  presence and the migrator.

``IMD_FAULTS=long`` (``make faults``) runs ten times the messages and five
failovers; each fault test logs one ``faults:`` line (tests.test_faults.report).
"""

import shutil
import signal
import socket

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from imd import protocol
from imd.errors import StoreUnavailable
from imd.stores.keys import Keys
from imd.stores.messages import DUPLICATE, STORED, MessageStore
from imd.stores.orders import OrderStore
from imd.stores.receipts import ReceiptResult, ReceiptStore
from imd.stores.redis import RedisClient
from tests.migrator_support import start_migrator
from tests.mysql_support import MysqlTestMixin, query
from tests.sentinel_support import SentinelGroup, info, redis_call, redis_calls
from tests.support import (ImdServer, PrivateRedis, RedisTestMixin, connect_client, drop, logged_in_client,
                           make_settings, redis_connection, wait_until, with_deadline)
from tests.test_faults import (CYCLES, FAST, MESSAGES, SteadySender, exactly_once, prepare_redis, report,
                               rows_in_mysql)


def _have_redis():
    return shutil.which("redis-server") is not None


def wait_calls(port):
    """How many WAIT commands the Redis on ``port`` ran so far."""
    stats = info(port, "commandstats").get("cmdstat_wait", "calls=0")
    return int(stats.split(",")[0].split("=")[1])


class _Replicated(unittest.TestCase):
    """A master and one replica, no sentinel."""

    async def start_pair(self):
        if not _have_redis():
            raise unittest.SkipTest("redis-server is not installed")
        self.group = SentinelGroup(self, replicas=1)
        master = await self.group._node().start()
        self.group.master_port = master.port
        self.group.nodes[master.port] = master
        replica = await self.group._node(replica_of=master.port).start()
        self.group.nodes[replica.port] = replica
        await self.group.wait_replicas_in_sync(1)
        self.master, self.replica = master, replica

    def client(self, min_replicas, replica_timeout=0.5, timeout=2):
        address = make_settings(redis_db=0, redis_port=self.master.port).redis.url
        client = RedisClient(address, timeout, reactor, reactor, min_replicas=min_replicas,
                             replica_timeout=replica_timeout)
        client.startService()
        self.addCleanup(client.stopService)
        return client


class WaitTests(_Replicated):

    async def test_one_wait_covers_a_turn_of_writes(self):
        await self.start_pair()
        client = self.client(min_replicas=1)
        await wait_until(lambda: client.connected, what="connection")
        before = wait_calls(self.master.port)
        # 200 writes issued in one turn; each reply asks for the replicas
        replies = [client.command("SET", "k%d" % i, i).addCallback(client.replicated) for i in range(200)]
        results = await with_deadline(defer.gatherResults(replies), what="replicated writes")
        waits = wait_calls(self.master.port) - before
        self.assertEqual(results, ["OK"] * 200)
        # The replies come back in one or a few reads: one WAIT per turn, not per write.
        self.assertLessEqual(waits, 3, "WAITs for 200 writes")
        self.assertGreaterEqual(waits, 1)
        self.assertEqual(client.wait_figures.acknowledged, 1)
        self.assertEqual(client.wait_figures.failed, 0)
        self.assertEqual(redis_call(self.replica.port, "GET", "k199"), "199")

    async def test_a_duplicate_is_a_write_that_wait_counts(self):
        # A retry after a failover comes on a connection that never stored
        # the message: its WAIT counts only that connection's own writes, so
        # the duplicate must write too (it renews its dedup record).
        await self.start_pair()
        client = self.client(min_replicas=1)
        await wait_until(lambda: client.connected, what="connection")
        store = MessageStore(client, Keys(), 3600)
        await client.command("SADD", Keys().friends(1), 2)
        self.assertEqual((await store.store_message(1, 2, "m1", b'{"id":"m1"}')).status, STORED)

        def offset():
            return int(info(self.master.port, "replication")["master_repl_offset"])
        before = offset()
        self.assertEqual((await store.store_message(1, 2, "m1", b'{"id":"m1"}')).status, DUPLICATE)
        self.assertGreater(offset(), before)

    async def test_without_min_replicas_the_value_comes_back_at_once(self):
        await self.start_pair()
        client = self.client(min_replicas=0)
        await wait_until(lambda: client.connected, what="connection")
        before = wait_calls(self.master.port)
        marker = object()
        self.assertIs(client.replicated(marker), marker)
        await client.command("SET", "k", 1).addCallback(client.replicated)
        self.assertEqual(wait_calls(self.master.port) - before, 0)

    async def test_fewer_replicas_than_asked_fail_within_replica_timeout(self):
        await self.start_pair()
        client = self.client(min_replicas=2, replica_timeout=0.3)
        await wait_until(lambda: client.connected, what="connection")
        started = reactor.seconds()
        d = client.command("SET", "k", 1).addCallback(client.replicated)
        failure = await with_deadline(self.assertFailure(d, StoreUnavailable), what="WAIT short of replicas")
        elapsed = reactor.seconds() - started
        self.assertIn("replicas", str(failure))
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 0.3 + 0.4)
        # (the batch's own deadline and WAIT's timeout end together: its answer may follow the E)
        await wait_until(lambda: client.wait_figures.waits == 1, what="the WAIT answered")
        self.assertEqual(client.wait_figures.failed, 1)
        self.assertIn(client.wait_figures.acknowledged, (0, 1))   # 2 asked, 1 replica exists
        # the connection is still good
        self.assertEqual(await client.command("PING"), "PONG")

    async def test_every_store_write_an_ack_stands_for_waits_for_the_replicas(self):
        # What a handler acks comes from a store method that itself waits
        # for [redis] min_replicas: here 2, with only 1 replica there.
        await self.start_pair()
        client = self.client(min_replicas=2, replica_timeout=0.3)
        await wait_until(lambda: client.connected, what="connection")
        keys = Keys()
        await client.command("SADD", keys.friends(1), 2)
        messages, receipts, orders = MessageStore(client, keys), ReceiptStore(client, keys), OrderStore(client, keys)
        packet = protocol.ReceiptPacket("r1", 1, 2, ["m1"])
        # a receipt of an id without a record changed nothing: answered at once
        self.assertEqual(await receipts.apply(packet, 2, 5), ReceiptResult([0], []))
        writes = {"a message": messages.store_message(1, 2, "m1", b'{"id":"m1"}', 5),
                  "system messages": messages.store_system_messages("s1", [2, 3], b'{"to":', b"}", 5),
                  "a receipt": receipts.apply(packet, 2, 5, [""]),
                  "an order's T": orders.take_order(7, 1, 2, b'{"id":"taken-7"}', 5)}
        for what, d in writes.items():
            failure = await with_deadline(self.assertFailure(d, StoreUnavailable), what=what)
            self.assertIn("replicas", str(failure), what)
        self.assertEqual(await client.command("LLEN", keys.mq), 5)   # each was written: what failed is its A
        # with the replica there to confirm, each comes back
        client = self.client(min_replicas=1)
        await wait_until(lambda: client.connected, what="connection")
        messages, orders = MessageStore(client, keys), OrderStore(client, keys)
        before = wait_calls(self.master.port)
        self.assertEqual((await messages.store_message(1, 2, "m2", b'{"id":"m2"}', 5)).status, STORED)
        self.assertEqual((await orders.take_order(7, 1, 2, b'{"id":"taken-7"}', 5)).outcome, "taken_again")
        self.assertGreaterEqual(wait_calls(self.master.port) - before, 2)


class LoadingTests(unittest.TestCase):
    """A Redis still loading its data answers ``-LOADING``: that is Redis
    not serving yet (StoreUnavailable: E unavailable, the migrator retries),
    not an error of the call (which the migrator logs as a bug)."""

    async def test_loading_is_unavailable_not_an_error_reply(self):
        if not _have_redis():
            raise unittest.SkipTest("redis-server is not installed")
        private = await PrivateRedis(extra_args=["--enable-debug-command", "yes",
                                                 "--loading-process-events-interval-bytes", "1024"]).start()
        self.addCleanup(private.stop)
        redis_calls(private.port, ("CONFIG", "SET", "key-load-delay", "500"),
                    ("EVAL", "for i = 1, 3000 do redis.call('SET', 'k' .. i, string.rep('x', 100)) end", 0))
        client = RedisClient(make_settings(redis_db=0, redis_port=private.port).redis.url, 5, reactor, reactor)
        client.startService()
        self.addCleanup(client.stopService)
        await wait_until(lambda: client.connected, what="connection")
        # DEBUG RELOAD (its own connection, answered when done) reloads slowly
        reloading = socket.create_connection(("127.0.0.1", private.port))
        self.addCleanup(reloading.close)
        reloading.sendall(b"*2\r\n$5\r\nDEBUG\r\n$6\r\nRELOAD\r\n")

        async def loading():
            try:
                await client.command("GET", "k1")
            except StoreUnavailable as e:
                return "LOADING" in str(e)
            return False
        await wait_until(lambda: defer.ensureDeferred(loading()), what="a LOADING reply as StoreUnavailable")
        await wait_until(lambda: client.command("GET", "k1"), seconds=30, what="the data loaded")


class StoppedReplicaTests(MysqlTestMixin, RedisTestMixin, _Replicated):
    """``min_replicas = 1``, ``replica_timeout = 0.5``: the replica SIGSTOPped."""

    REPLICA_TIMEOUT = 0.5

    async def test_a_replica_that_stops_acknowledging_gets_e_unavailable_not_a(self):
        await self.start_pair()
        await prepare_redis(self.master.port)
        settings = make_settings(dict(FAST, redis={"timeout": "2", "min_replicas": "1",
                                                   "replica_timeout": str(self.REPLICA_TIMEOUT)},
                                      mysql={"database": self.mysql_settings.database}),
                                 redis_db=0, redis_port=self.master.port)
        server = await ImdServer(settings).start()
        self.addCleanup(server.stop)
        alice = await logged_in_client(server.port, "/" + self.token(1))
        self.addCleanup(drop, alice)
        bob = await logged_in_client(server.port, "/" + self.token(2))
        self.addCleanup(drop, bob)

        async def send(packet_id):
            started = reactor.seconds()
            alice.send({"id": packet_id, "to": 2, "type": "t", "msg": "hello " + packet_id})
            reply = await alice.next_of("AE")
            self.assertEqual(reply["id"], packet_id)
            return reply, reactor.seconds() - started
        for i in range(3):
            reply, _ = await send("before-%d" % i)
            self.assertEqual(reply["type"], "A")
            self.assertEqual((await bob.next())["id"], "before-%d" % i)

        self.replica.process.send_signal(signal.SIGSTOP)
        self.addCleanup(self._resume)
        answers = []
        for i in range(5):
            answers.append(await send("during-%d" % i))
        self.assertEqual([r["type"] for r, _ in answers], ["E"] * 5, answers)
        self.assertEqual({r["code"] for r, _ in answers}, {"unavailable"})
        worst = max(seconds for _, seconds in answers)
        # The E comes replica_timeout after the write's reply, which itself
        # may queue behind a WAIT in flight: at most twice replica_timeout.
        self.assertLess(worst, 2 * self.REPLICA_TIMEOUT + 0.3, answers)
        self.assertEqual(len(bob.received.pending), 0, "nothing delivered that the replica did not confirm")
        # T waits for the replicas too
        await query(self.mysql_settings, ("INSERT INTO orders (id, customer_id, courier_id) VALUES (%s, %s, %s)",
                                          (42, 2, 1)))
        alice.send({"id": "take", "to": 0, "type": "T", "msg": 42})
        reply = await alice.next_of("AE")
        self.assertEqual((reply["id"], reply["type"], reply["code"]), ("take", "E", "unavailable"))
        self.assertEqual(len(bob.received.pending), 0, "the customer hears of it only once it is safe")
        # and so does a login, which takes its presence entry back when refused
        refused = await connect_client(server.port, "/" + self.token(3))
        self.addCleanup(drop, refused)
        closing = await refused.next()
        self.assertEqual((closing["type"], closing["msg"]), ("C", "service unavailable, try again later"))
        await wait_until(lambda: redis_call(self.master.port, "ZCARD", "dev:3") == 0, what="dev:3 taken back")

        resumed = reactor.seconds()
        self._resume()
        # The client retries the same ids: acked (stored once, the dedup keeps them once).
        recovered = None
        for i in range(5):
            while True:
                reply, _ = await send("during-%d" % i)
                if reply["type"] == "A":
                    break
                await task.deferLater(reactor, 0.05, lambda: None)  # pacing the client's retries
            if recovered is None:
                recovered = reactor.seconds() - resumed
        reply, _ = await send("after-0")
        self.assertEqual(reply["type"], "A")
        conn = await redis_connection(db=0, port=self.master.port)
        self.addCleanup(conn.disconnect)
        ids = sorted(__import__("json").loads(e)["id"] for e in await conn.lrange("MQ", 0, -1))
        expected = sorted(["before-%d" % i for i in range(3)] + ["during-%d" % i for i in range(5)] + ["after-0"]
                          + ["taken-42"])   # (stored, E'd: a T sent again is acked)
        self.assertEqual(ids, expected, "each message stored once")
        figures = server.app.redis_client.wait_figures
        report("replica SIGSTOP (min_replicas 1, replica_timeout %.1f s)" % self.REPLICA_TIMEOUT,
               e_unavailable=len(answers), acked_while_stopped=0, worst_e_s=round(worst, 2),
               first_ack_after_resume_s=round(recovered, 3), waits_short=figures.failed, waits=figures.waits,
               stored_once=len(ids))

    def _resume(self):
        process = self.replica.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)


class FailoverTests(MysqlTestMixin, RedisTestMixin, unittest.TestCase):
    """Three sentinels, a master and one replica; imd finds the master through the sentinels."""

    def setUp(self):
        if not _have_redis():
            raise unittest.SkipTest("redis-server is not installed")
        return super().setUp()

    async def start_group(self):
        group = await SentinelGroup(self, replicas=1).start()
        await prepare_redis(group.master_port)
        return group

    def imd_settings(self, group, min_replicas, node_id="test-node-1"):
        return make_settings(dict(FAST, imd={"node_id": node_id},
                                  redis=group.settings(min_replicas=str(min_replicas), replica_timeout="0.5"),
                                  mysql={"database": self.mysql_settings.database}))

    async def failover_under_load(self, min_replicas, cut_off=False):
        """The master killed -9 mid-stream, CYCLES times.  ``cut_off``: just
        before, the replica is stopped and its link cut (``CLIENT KILL TYPE
        replica``), so that what the master acks meanwhile (20 messages, or
        3 E with min_replicas) does not reach it -- a replica lagging when
        the master dies."""
        group = await self.start_group()
        settings = self.imd_settings(group, min_replicas)
        server = await ImdServer(settings).start()
        self.addCleanup(server.stop)
        migrator = start_migrator(self, settings)
        self.assertEqual(server.app.redis_client.master_address, "127.0.0.1:%d" % group.master_port)

        def connect():
            return logged_in_client(server.port, "/" + self.token(1))
        sender = SteadySender(connect, 1, 2)
        self.addCleanup(sender.close)
        promotions, reconnects = [], []

        async def kill_master():
            replica = group.nodes[group.replica_ports()[0]]
            if cut_off:
                replica.process.send_signal(signal.SIGSTOP)
                redis_call(group.master_port, "CLIENT", "KILL", "TYPE", "replica")
                # the stream goes on meanwhile: with min_replicas 0 the master
                # acks what the replica will never see, with 1 it answers E
                acked, errors = len(sender.acked), sender.errors
                await wait_until(lambda: len(sender.acked) >= acked + 20 or sender.errors >= errors + 3,
                                 what="acks or E while the replica is cut off")
            sender.fault_now()   # the outage counts from the kill
            killed_at = reactor.seconds()
            old = group.kill_master()
            if cut_off:
                replica.process.send_signal(signal.SIGCONT)
            new = await group.wait_promoted(old)
            promotions.append(reactor.seconds() - killed_at)
            await wait_until(lambda: server.app.redis_client.master_address == "127.0.0.1:%d" % new
                             and server.app.bus.healthy, seconds=30, what="imd on the new master")
            # (should the sentinels fail over again by themselves, the group follows them)
            reconnects.append(reactor.seconds() - killed_at)
            # The killed node comes back (as systemd would restart it) as a
            # replica of the new master: with one replica, min_replicas = 1
            # acks nothing until then.
            await group.restart_as_replica(old)
            await group.wait_replicas_in_sync(1)
            await group.wait_sentinels_ready()
        per_cycle = MESSAGES // CYCLES
        for _ in range(CYCLES):
            # early in the cycle: the stream is still going when the master dies
            await sender.send(per_cycle, at=len(sender.acked) + per_cycle // 4, on=kill_master)
        await sender.close()
        await wait_until(lambda: migrator.is_leader, seconds=30, what="migrator leading on the new master")
        await with_deadline(migrator.wait_drained(), 60, "drained queue")
        stored = await rows_in_mysql(self.mysql_settings)
        client = server.app.redis_client
        figures = dict(cycles=CYCLES, min_replicas=min_replicas, errors_answered=sender.errors,
                       reconnects=sender.reconnects, worst_promotion_s=round(max(promotions), 2),
                       worst_imd_on_new_master_s=round(max(reconnects), 2),
                       promotion_s=[round(x, 2) for x in promotions],
                       imd_on_new_master_s=[round(x, 2) for x in reconnects],
                       worst_outage_s=round(sender.outage or 0, 2), master_changes=client.master_changes,
                       switch_events=server.app.sentinel.switch_events, waits_short=client.wait_figures.failed)
        # (a loaded machine may also see a failover of the sentinels' own)
        self.assertGreaterEqual(client.master_changes, CYCLES)
        return sender, stored, figures

    async def test_master_killed_under_load_with_min_replicas_1_loses_no_acked_message(self):
        sender, stored, figures = await self.failover_under_load(min_replicas=1)
        figures.update(exactly_once(self, sender.acked, stored))
        report("redis master kill -9, sentinel failover (min_replicas 1)", **figures)

    async def test_master_killed_under_load_with_min_replicas_0_may_lose_acked_messages(self):
        sender, stored, figures = await self.failover_under_load(min_replicas=0)
        lost = set(sender.acked) - set(stored)
        duplicated = len(stored) - len(set(stored))
        extra = set(stored) - set(sender.acked)
        # What min_replicas 0 gives up is only acked messages, never a duplicate.
        self.assertEqual((duplicated, len(extra)), (0, 0))
        figures.update(acked=len(sender.acked), stored=len(stored), lost=len(lost), duplicated=duplicated)
        report("redis master kill -9, sentinel failover (min_replicas 0)", **figures)

    async def test_replica_cut_off_then_master_killed_with_min_replicas_1_loses_nothing(self):
        sender, stored, figures = await self.failover_under_load(min_replicas=1, cut_off=True)
        figures.update(exactly_once(self, sender.acked, stored))
        report("replica cut off, then master kill -9 (min_replicas 1)", **figures)

    async def test_replica_cut_off_then_master_killed_with_min_replicas_0_loses_what_it_acked(self):
        sender, stored, figures = await self.failover_under_load(min_replicas=0, cut_off=True)
        lost = set(sender.acked) - set(stored)
        duplicated = len(stored) - len(set(stored))
        self.assertEqual((duplicated, len(set(stored) - set(sender.acked))), (0, 0))
        self.assertGreater(len(lost), 0, "acked while the replica was cut off, then lost with the master")
        figures.update(acked=len(sender.acked), stored=len(stored), lost=len(lost), duplicated=duplicated)
        report("replica cut off, then master kill -9 (min_replicas 0)", **figures)

    async def test_bus_presence_and_migrator_follow_a_failover_by_sentinel(self):
        group = await self.start_group()
        node1 = await ImdServer(self.imd_settings(group, 0)).start()
        self.addCleanup(node1.stop)
        node2 = await ImdServer(self.imd_settings(group, 0, node_id="test-node-2")).start()
        self.addCleanup(node2.stop)
        settings = self.imd_settings(group, 0)
        migrator = start_migrator(self, settings)
        await wait_until(lambda: migrator.queue.connected, what="migrator on redis")
        alice = await logged_in_client(node1.port, "/" + self.token(1))
        self.addCleanup(drop, alice)
        bob = await logged_in_client(node2.port, "/" + self.token(2))
        self.addCleanup(drop, bob)

        # SENTINEL FAILOVER: the old master stays up and becomes a replica,
        # so nothing breaks the connections: +switch-master must move them.
        old = group.master_port
        started = reactor.seconds()
        self.assertEqual(group.failover(), "OK")
        new = await group.wait_master_changed(old)
        where = "127.0.0.1:%d" % new
        clients = [node1.app.redis_client, node2.app.redis_client, migrator.queue]
        await wait_until(lambda: all(c.master_address == where for c in clients)
                         and node1.app.bus.healthy and node2.app.bus.healthy, seconds=30,
                         what="every connection on the new master")
        followed = reactor.seconds() - started
        self.assertEqual([c.master_address for c in clients], [where] * 3)
        self.assertEqual(node1.app.sentinel.switch_events, 1)

        # node 1 -> bob on node 2, through the new master's pub/sub
        async def ask(client, packet):
            client.send(packet)
            return await client.next_of("AEO")
        reply = await ask(alice, {"id": "after-failover", "to": 2, "type": "t", "msg": "still here?"})
        self.assertEqual(reply["type"], "A", reply)
        delivered = await bob.next_of("t")
        self.assertEqual(delivered["id"], "after-failover")
        # presence: bob is online for alice (node 2 registered him again on the new master)
        online = await ask(alice, {"id": "o1", "type": "O", "msg": 2})
        self.assertEqual((online["type"], online["msg"]), ("O", {"uid": 2, "online": True}), online)
        # the migrator moved it to MySQL from the new master
        await with_deadline(migrator.wait_drained(), 30, "drained queue")
        rows = await rows_in_mysql(self.mysql_settings)
        self.assertEqual(rows, [(1, "after-failover")])

        # and again after the master is killed -9 (no +switch-master needed:
        # the connections break, and the sentinels give the new master)
        started = reactor.seconds()
        old = group.kill_master()
        where = "127.0.0.1:%d" % await group.wait_promoted(old)
        await wait_until(lambda: all(c.master_address == where for c in clients)
                         and node1.app.bus.healthy and node2.app.bus.healthy, seconds=30,
                         what="every connection on the master promoted after the kill")
        recovered = reactor.seconds() - started
        reply = await ask(alice, {"id": "after-kill", "to": 2, "type": "t", "msg": "and now?"})
        self.assertEqual(reply["type"], "A", reply)
        self.assertEqual((await bob.next_of("t"))["id"], "after-kill")
        online = await ask(alice, {"id": "o2", "type": "O", "msg": 2})
        self.assertEqual(online["msg"], {"uid": 2, "online": True}, online)
        await with_deadline(migrator.wait_drained(), 30, "drained queue")
        rows = await rows_in_mysql(self.mysql_settings)
        self.assertEqual(sorted(rows), [(1, "after-failover"), (1, "after-kill")])
        report("SENTINEL FAILOVER (old master demoted, stays up), then master kill -9; two nodes",
               followed_s=round(followed, 2), recovered_after_kill_s=round(recovered, 2),
               delivered_across_nodes=2, online_after=True, migrated=len(rows))

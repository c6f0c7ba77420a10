"""Crash safety: the migrator, a subprocess, is killed with SIGKILL at random
moments (22 times or more, until 3 kills landed mid-batch) while 10,000+
messages are sent and acked over real WebSockets; after a final clean run
the table holds exactly the acked set."""

import math
import os
import random
import sys

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.trial import unittest

from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import query
from tests.test_migrator import MigratorTestMixin
from tests.support import DEADLINE, settings_text, with_deadline

_log = Logger()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGES = 10_000
KILLS = 22
MID_BATCH = 3   # kills that must leave a claimed batch behind
SENDERS = (21, 22, 23, 24)


class MigratorProcess(protocol.ProcessProtocol):
    """``python -m imd.migrator --config FILE``; ``leading`` fires when it
    has taken the lock, ``ended`` when it is gone."""

    def __init__(self, config):
        self.config = config
        self.output = b""
        self.leading = defer.Deferred()
        self.ended = defer.Deferred()

    def start(self):
        reactor.spawnProcess(self, sys.executable, [sys.executable, "-m", "imd.migrator", "--config", self.config],
                             env=dict(os.environ), path=ROOT)
        return self

    def outReceived(self, data):
        self.output += data
        if not self.leading.called and b"migrator: leading" in self.output:
            self.leading.callback(self)

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.leading.called:
            self.leading.errback(AssertionError("migrator exited before leading:\n%s"
                                                % self.output.decode("utf-8", "replace")[-2000:]))
        self.ended.callback(None)

    def kill(self):
        if not self.ended.called:
            try:
                self.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass   # killed a moment ago, and reaped; processEnded follows
        return self.ended


class CrashTests(MigratorTestMixin, unittest.TestCase):
    overrides = {"websocket": {"rate": "100000", "burst": "100000"},
                 "migrate": {"batch": "100", "interval": "0.02", "lock_ttl": "0.5"}}

    def write_config(self):
        path = os.path.abspath(self.mktemp())
        overrides = dict(self.overrides, imd={"roles": "migrate"}, mysql={"database": self.mysql_settings.database})
        with open(path, "w") as f:
            f.write(settings_text(overrides))
        return path

    async def test_kill_9_at_random_moments_loses_and_doubles_nothing(self):
        seed = random.randrange(2 ** 32)
        rng = random.Random(seed)
        config = self.write_config()
        clients = {}
        for uid in SENDERS:
            await self.befriend(uid, uid + 100)
            clients[uid] = await self.login(uid)
        acked, processes = set(), []
        chunk = math.ceil(MESSAGES / KILLS)
        self.addCleanup(lambda: defer.gatherResults([p.kill() for p in processes]))
        # A kill lands mid-batch when it leaves a claimed batch in
        # MQ:processing.  How often a kill at a random ack does depends on
        # how fast this interpreter acks against how often the migrator
        # claims (about 4 kills in 5 on CPython, 1 in 5 on PyPy): past
        # KILLS, cycles go on (up to 3 * KILLS) until MID_BATCH kills did.
        mid_batch, cycle = 0, 0
        while cycle < KILLS or (mid_batch < MID_BATCH and cycle < 3 * KILLS):
            process = MigratorProcess(config).start()
            processes.append(process)
            await with_deadline(process.leading, DEADLINE, "migrator leading (seed %d)" % seed)
            kill_at = rng.randrange(chunk)
            counted = [0]

            def on_ack(process=process, kill_at=kill_at, counted=counted):
                counted[0] += 1
                if counted[0] == kill_at + 1:
                    process.kill()
            await defer.gatherResults([
                self.send_counted(clients[uid], uid, ["c%d-%d" % (cycle, n) for n in range(i, chunk, len(SENDERS))],
                                  acked, on_ack)
                for i, uid in enumerate(SENDERS)])
            await with_deadline(process.kill(), DEADLINE, "migrator exit")
            if await self.redis.llen("MQ:processing"):
                mid_batch += 1
            cycle += 1
        self.assertGreaterEqual(len(acked), MESSAGES)
        replays = sum(p.output.count(b"replayed a batch") for p in processes)

        # A final clean run: it takes the dead leader's lock once it expires.
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator, 30)
        self.assertEqual(await self.rows_set(), acked, "seed %d" % seed)
        self.assertEqual(await self.redis.llen("MQ"), 0)
        self.assertEqual(await self.redis.llen("MQ:processing"), 0)
        _log.info("crash test: seed {seed}, {kills} kills, {mid} mid-batch, {acked} acked, {replays} batches "
                  "replayed", seed=seed, kills=len(processes), mid=mid_batch, acked=len(acked), replays=replays)
        # Evidence that kills landed between a batch's move and its delete
        # (what they left was replayed by a later leader, or by the final
        # run: the rows above are exactly the acked set).
        self.assertGreaterEqual(mid_batch, MID_BATCH, "seed %d" % seed)

    @defer.inlineCallbacks
    def send_counted(self, client, sender, ids, acked, on_ack):
        for packet_id in ids:
            client.send({"id": packet_id, "to": sender + 100, "type": "t", "msg": "crash " + packet_id})
        for _ in ids:
            reply = yield client.next_of("AE")
            self.assertEqual(reply["type"], "A", reply)
            acked.add((sender, reply["id"]))
            on_ack()


class ReceiptCrashTests(MigratorTestMixin, unittest.TestCase):
    """The same with receipts flowing: each delivered message answered by a
    ``delivered`` receipt, every tenth by a ``read`` too, while the migrator
    is killed with SIGKILL at random moments; afterwards the receipt table
    holds exactly the receipts that advanced a state, each once."""
    overrides = CrashTests.overrides
    write_config = CrashTests.write_config
    MESSAGES, KILLS = 3000, 10

    async def test_kill_9_while_receipts_flow_loses_and_doubles_no_receipt(self):
        seed = random.randrange(2 ** 32)
        rng = random.Random(seed)
        config = self.write_config()
        senders, readers = {}, {}
        for uid in SENDERS:
            await self.befriend(uid, uid + 100)
            senders[uid] = await self.login(uid)
            readers[uid] = await self.login(uid + 100)
        acked, expected, processes = set(), set(), []
        self.addCleanup(lambda: defer.gatherResults([p.kill() for p in processes]))
        chunk = math.ceil(self.MESSAGES / self.KILLS)
        for cycle in range(self.KILLS):
            process = MigratorProcess(config).start()
            processes.append(process)
            await with_deadline(process.leading, DEADLINE, "migrator leading (seed %d)" % seed)
            kill_at = rng.randrange(chunk)
            counted = [0]

            def on_ack(process=process, kill_at=kill_at, counted=counted):
                counted[0] += 1
                if counted[0] == kill_at + 1:
                    process.kill()
            await defer.gatherResults([
                self.send_and_read(senders[uid], readers[uid], uid,
                                   ["c%d-%d" % (cycle, n) for n in range(i, chunk, len(SENDERS))],
                                   acked, expected, on_ack)
                for i, uid in enumerate(SENDERS)])
            await with_deadline(process.kill(), DEADLINE, "migrator exit")
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator, 30)
        self.assertEqual(await self.rows_set(), acked, "seed %d" % seed)
        rows = await query(self.mysql_settings, "SELECT from_id, msg_id, to_id, state FROM receipt")
        stored = [(f, bytes(m).decode("utf-8"), t, s) for f, m, t, s in rows]
        self.assertEqual(len(stored), len(set(stored)), "a receipt is in the table twice (seed %d)" % seed)
        self.assertEqual(set(stored), expected, "seed %d" % seed)
        self.assertGreater(len(expected), len(acked))
        replays = sum(p.output.count(b"replayed a batch") for p in processes)
        _log.info("receipt crash test: seed {seed}, {kills} kills, {n} receipts, {replays} batches replayed",
                  seed=seed, kills=len(processes), n=len(expected), replays=replays)

    def send_and_read(self, sender_client, reader_client, sender, ids, acked, expected, on_ack):
        for packet_id in ids:
            sender_client.send({"id": packet_id, "to": sender + 100, "type": "t", "msg": "crash " + packet_id})
        return defer.gatherResults([self.collect_acks(sender_client, sender, ids, acked, on_ack),
                                    self.read(reader_client, sender, len(ids), expected)])

    @defer.inlineCallbacks
    def collect_acks(self, client, sender, ids, acked, on_ack):
        for _ in ids:
            reply = yield client.next_of("AE")
            self.assertEqual(reply["type"], "A", reply)
            acked.add((sender, reply["id"]))
            on_ack()

    @defer.inlineCallbacks
    def read(self, client, sender, count, expected):
        """Answer each message with receipts as it arrives; until all are acked."""
        received, unanswered = 0, 0
        while received < count or unanswered:
            packet = yield client.next()
            if packet["type"] == "t":
                received += 1
                packet_id = packet["id"]
                states = ("delivered", "read") if packet_id.endswith("0") else ("delivered",)
                for state in states:
                    client.send({"id": state[0] + "-" + packet_id, "to": sender, "type": "R",
                                 "msg": {"state": state, "ids": [packet_id]}})
                    expected.add((sender, packet_id, sender + 100, 1 if state == "delivered" else 2))
                    unanswered += 1
            else:
                self.assertEqual(packet["type"], "A", packet)
                unanswered -= 1

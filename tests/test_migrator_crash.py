"""Crash safety: the migrator, a subprocess, is killed with SIGKILL at random
moments (22 times) while 10,000+ messages are sent and acked over real
WebSockets; after a final clean run the table holds exactly the acked set."""

import math
import os
import random
import sys

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.trial import unittest

from tests.migrator_support import start_migrator, with_drain
from tests.test_migrator import MigratorTestMixin
from tests.support import DEADLINE, settings_text, with_deadline

_log = Logger()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGES = 10_000
KILLS = 22
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
        for cycle in range(KILLS):
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
        self.assertGreaterEqual(len(processes), 20)
        self.assertGreaterEqual(len(acked), MESSAGES)
        replays = sum(p.output.count(b"replayed a batch") for p in processes)

        # A final clean run: it takes the dead leader's lock once it expires.
        migrator = start_migrator(self, self.server.app.settings)
        await with_drain(migrator, 30)
        self.assertEqual(await self.rows_set(), acked, "seed %d" % seed)
        self.assertEqual(await self.redis.llen("MQ"), 0)
        self.assertEqual(await self.redis.llen("MQ:processing"), 0)
        _log.info("crash test: seed {seed}, {kills} kills, {acked} acked, {replays} batches replayed",
                  seed=seed, kills=len(processes), acked=len(acked), replays=replays)
        # Evidence that kills landed between a batch's move and its delete.
        self.assertGreaterEqual(replays, 1, "seed %d" % seed)

    @defer.inlineCallbacks
    def send_counted(self, client, sender, ids, acked, on_ack):
        for packet_id in ids:
            client.send({"id": packet_id, "to": sender + 100, "type": "t", "msg": "crash " + packet_id})
        for _ in ids:
            reply = yield client.next_of("AE")
            self.assertEqual(reply["type"], "A", reply)
            acked.add((sender, reply["id"]))
            on_ack()

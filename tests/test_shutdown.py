"""Graceful shutdown: SIGTERM during a steady stream loses no acked message,
every client sees C + 1001, and twistd exits 0 within [imd] shutdown_grace."""

import signal

from twisted.application.service import Service
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from imd.migrator import Migrator
from imd.shutdown import ConnectionDrainer, GracefulMultiService
from imd.stores.mysql import MysqlStore
from imd.stores.keys import Keys
from imd.stores.queue import QueueStore
from imd.stores.redis import RedisClient
from tests.daemon_support import start_daemon, write_config
from tests.mysql_support import MysqlTestMixin
from tests.support import (DEADLINE, RedisTestMixin, ServerTestMixin, connect_client, make_settings, wait_until,
                           with_deadline)


class _Child(Service):
    def __init__(self, name, log, stopping=None):
        self.name, self._log, self._stopping = name, log, stopping

    def stopService(self):
        super().stopService()
        self._log.append(self.name)
        return self._stopping


class _FakeReactor:
    _exitSignal = signal.SIGTERM


class GracefulMultiServiceTests(unittest.SynchronousTestCase):

    def build(self, stuck):
        self.clock, self.stopped, self.reactor = task.Clock(), [], _FakeReactor()
        top = GracefulMultiService(10, self.clock, self.reactor)
        for name in ("stores", "drainer", "listener"):
            _Child(name, self.stopped, stuck if name == "drainer" else None).setServiceParent(top)
        top.startService()
        return top

    def test_children_stop_one_after_another_last_added_first(self):
        drained = defer.Deferred()
        d = self.build(drained).stopService()
        self.assertEqual(self.stopped, ["listener", "drainer"])
        self.assertNoResult(d)
        drained.callback(None)
        self.assertEqual(self.stopped, ["listener", "drainer", "stores"])
        self.successResultOf(d)
        self.assertIsNone(self.reactor._exitSignal, "a SIGTERM stop reports success")

    def test_a_step_past_the_grace_is_cancelled_and_the_rest_still_stops(self):
        cancelled = []
        d = self.build(defer.Deferred(cancelled.append)).stopService()
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(self.stopped, ["listener", "drainer", "stores"])
        self.successResultOf(d)
        self.assertIsNone(self.reactor._exitSignal)


class DrainerTests(ServerTestMixin, unittest.TestCase):

    async def test_open_connections_get_c_and_1001_and_new_logins_are_turned_away(self):
        alice = await self.login(1)
        stopped = ConnectionDrainer(self.server.app.node).stopService()
        close = await alice.next()
        self.assertEqual((close["type"], close["from"], close["msg"]), ("C", 0, "server shutting down"))
        self.assertEqual((await alice.wait_closed())[0], 1001)
        await with_deadline(stopped, what="drainer stopped")

        late = await self.connect("/" + self.token(2))
        close = await late.next()
        self.assertEqual((close["type"], close["msg"]), ("C", "server shutting down"))
        self.assertEqual((await late.wait_closed())[0], 1001)

    async def test_a_packet_in_hand_is_answered_before_c(self):
        app = self.server.app
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        # Hold the real handler back so that m1 is still in hand when the stop begins.
        called, gate = defer.Deferred(), defer.Deferred()
        real = app.handlers["t"]

        def held(sender, packet):
            # Told once held has returned and the transport has queued m1.
            reactor.callLater(0, called.callback, None)
            return gate.addCallback(lambda _: real(sender, packet))
        app.handlers["t"] = held
        alice.send({"id": "m1", "to": 2, "type": "t", "msg": "in hand"})
        await with_deadline(called, what="m1 in the handler")

        session = app.node.sessions_of(1)[0]
        stopped = ConnectionDrainer(app.node).stopService()
        alice.send({"id": "m2", "to": 2, "type": "t", "msg": "too late"})
        # (sync only) m2 has reached the server once it waits behind m1
        await wait_until(lambda: len(session._pending) == 2, what="m2 received")
        gate.callback(None)

        ack, refused, close = await alice.next(), await alice.next(), await alice.next()
        self.assertEqual((ack["id"], ack["type"]), ("m1", "A"))
        self.assertEqual((refused["id"], refused["type"], refused["code"]), ("m2", "E", "unavailable"))
        self.assertEqual((close["type"], close["msg"]), ("C", "server shutting down"))
        self.assertEqual((await alice.wait_closed())[0], 1001)
        # bob had nothing in hand: he was closed at once, and finds m1 in
        # history (it is stored) after reconnecting elsewhere.
        close = await bob.next()
        self.assertEqual((close["type"], (await bob.wait_closed())[0]), ("C", 1001))
        await with_deadline(stopped, what="drainer stopped")
        self.assertEqual(await self.redis.llen("MQ"), 1)


class _Stream:
    """One sender keeping ``window`` packets in flight to ``to``: a new one
    goes out for every reply, until the server closes the connection."""

    def __init__(self, client, uid, to, on_ack, window=4):
        self.client, self.uid, self.to, self.window = client, uid, to, window
        self._on_ack = on_ack
        self.sent, self.acked, self.errors, self.replies = [], [], [], []
        self.close_packet = None

    def send_next(self):
        if self.client.state != self.client.STATE_OPEN:
            return
        packet_id = "s%d-%d" % (self.uid, len(self.sent))
        self.sent.append(packet_id)
        self.client.send({"id": packet_id, "to": self.to, "type": "t", "msg": "n%d" % len(self.sent)})

    async def run(self):
        for _ in range(self.window):
            self.send_next()
        while True:
            packet = await self.client.next(DEADLINE * 2)
            if packet["type"] == "C":
                self.close_packet = packet
                break
            self.replies.append(packet["id"])
            if packet["type"] == "A":
                self.acked.append(packet["id"])
                self._on_ack()
            else:
                self.errors.append(packet)
            self.send_next()
        return (await self.client.wait_closed())[0]


async def _until_closed(client):
    while True:
        packet = await client.next(DEADLINE * 2)
        if packet["type"] == "C":
            return packet, (await client.wait_closed())[0]


class SigtermTests(MysqlTestMixin, RedisTestMixin, unittest.TestCase):

    async def migrate_the_rest(self, settings):
        """What a migrator started after the daemon would do: drain MQ into MySQL."""
        client = RedisClient(settings.redis.url, settings.redis.timeout, reactor)
        mysql = MysqlStore(settings.mysql)
        migrator = Migrator(QueueStore(client, Keys(settings.redis.prefix)), mysql, settings.migrate, reactor)
        for service in (client, mysql):
            service.startService()
            self.addCleanup(service.stopService)
        migrator.startService()
        await with_deadline(migrator.wait_drained(), DEADLINE * 2, "migrator drained")
        await migrator.stopService()

    async def test_sigterm_during_a_steady_stream(self):
        overrides = {"imd": {"roles": "ws, migrate", "shutdown_grace": "10"},
                     "migrate": {"batch": "7", "interval": "0.05", "lock_ttl": "3"},
                     "log": {"format": "json"}}
        config = write_config(self, overrides)
        daemon = await start_daemon(self, config)

        senders = [(1, 2), (3, 4), (5, 6)]
        for a, b in senders:
            await self.befriend(a, b)
        terminated = []

        def on_ack():
            acks = sum(len(s.acked) for s in streams)
            if acks >= 60 and not terminated:
                terminated.append(acks)
                daemon.signal(signal.SIGTERM)

        streams, receivers = [], []
        for a, b in senders:
            receiver = await connect_client(daemon.port, "/" + self.token(b))
            sender = await connect_client(daemon.port, "/" + self.token(a))
            for client in (receiver, sender):
                self.assertEqual((await client.next())["type"], "L")
            receivers.append(receiver)
            streams.append(_Stream(sender, a, b, on_ack))

        codes = await defer.gatherResults([defer.ensureDeferred(s.run()) for s in streams])
        received = await defer.gatherResults([defer.ensureDeferred(_until_closed(r)) for r in receivers])
        exit_code = await daemon.wait_ended()

        self.assertTrue(terminated, "SIGTERM was sent")
        self.assertEqual(exit_code, 0, daemon.stderr.decode(errors="replace") + daemon.output()[-3000:])
        self.assertEqual(codes, [1001] * len(streams))
        for stream in streams:
            self.assertEqual(stream.close_packet["msg"], "server shutting down")
            self.assertEqual(len(stream.replies), len(set(stream.replies)), "one reply per packet")
            for error in stream.errors:
                self.assertEqual(error["code"], "unavailable", error)
        for close, code in received:
            self.assertEqual((close["msg"], code), ("server shutting down", 1001))
        self.assertIn("shutdown complete", daemon.output())

        await self.migrate_the_rest(make_settings(overrides))
        stored = {(from_id, msg_id) for from_id, msg_id, _ in await self.message_rows()}
        acked = {(s.uid, packet_id) for s in streams for packet_id in s.acked}
        self.assertGreaterEqual(len(acked), 60)
        self.assertEqual(acked - stored, set(), "every acked message is in MySQL")

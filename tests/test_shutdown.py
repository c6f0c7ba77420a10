"""Graceful shutdown: SIGTERM during a steady stream loses no acked message,
every client sees C + 1001, and twistd exits 0 within [imd] shutdown_grace."""

import signal

import pymysql
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.application.service import Service
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from imd import protocol
from imd.handlers import Reply
from imd.migrator import Migrator
from imd.shutdown import ConnectionDrainer, GracefulMultiService
from imd.stores.mysql import MysqlStore, connect_kwargs
from imd.stores.keys import Keys
from imd.stores.queue import QueueStore
from imd.stores.redis import RedisClient
from tests.daemon_support import start_daemon, write_config
from tests.mysql_support import MysqlTestMixin
from tests.support import (DEADLINE, RedisTestMixin, ServerTestMixin, connect_client, make_settings, wait_until,
                           with_deadline)
from tests.test_faults import report
from tests.test_limits import client_frame, raw_connect, upgrade_request


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
        await wait_until(lambda: session.replies_waiting == 2, what="m2 received")
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


def hold(obj, name):
    """Hold ``obj.name`` at its next call: (called, release); ``release()``
    lets the real call go ahead (its outcome goes where it would have)."""
    real, gate, called = getattr(obj, name), defer.Deferred(), defer.Deferred()

    def holding(*args):
        setattr(obj, name, real)
        called.callback(None)
        return gate.addCallback(lambda _: real(*args))
    setattr(obj, name, holding)
    return called, lambda: gate.callback(None)


class DrainInEveryStateTests(ServerTestMixin, unittest.TestCase):
    """Issue 13 item 2: the drain waited for ever for a connection that had
    closed during its login, then raised AlreadyCalledError; the stop ends
    within the grace whatever state each connection is in."""

    overrides = {"websocket": {"max_message_bytes": "1024"}}

    async def test_the_stop_ends_within_the_grace_with_connections_in_every_state(self):
        app, port = self.server.app, self.server.port
        # handshaking: half a request
        shaking = await raw_connect(port, send=b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        self.addCleanup(shaking.transport.abortConnection)
        # token checked, not yet open: its registration held
        registering, release_registration = hold(app.node, "register")
        verified = await raw_connect(port, send=upgrade_request("/" + self.token(2)))
        self.addCleanup(verified.transport.abortConnection)
        await with_deadline(registering, what="registration")
        # open, with a packet in flight
        gate = defer.Deferred()
        app.handlers["P"] = lambda uid, packet: gate
        busy = await self.login(3)
        busy.send({"id": "in flight", "to": 0, "type": "P"})
        await wait_until(lambda: any(s.uid == 3 and s.replies_waiting for s in app.node.sessions()),
                         what="P in flight")
        # closing: imd sent its close (1009) and waits for a reply that never comes
        closing = await raw_connect(port, send=upgrade_request("/" + self.token(4)))
        self.addCleanup(closing.transport.abortConnection)
        await wait_until(lambda: app.node.sessions_of(4), what="login of 4")
        closing.transport.pauseProducing()
        closing.transport.write(client_frame(1, b"x" * 2000))
        await wait_until(lambda: app.node.sessions_of(4)[0].wire.state == WebSocketServerProtocol.STATE_CLOSING,
                         what="imd closing 4")
        # open and idle
        idle = await self.login(5)

        clock = task.Clock()
        top = GracefulMultiService(2.0, clock)
        ConnectionDrainer(app.node).setServiceParent(top)
        top.startService()
        stopped = top.stopService()
        close = await idle.next()
        self.assertEqual((close["type"], close["msg"]), ("C", "server shutting down"))
        self.assertEqual((await idle.wait_closed())[0], 1001)
        self.assertNoResult(stopped)   # the P in flight is waited for ...
        clock.advance(2.1)             # ... until the grace is over
        await with_deadline(stopped, what="stop")
        closing.transport.resumeProducing()   # (a client that does not read does not see it go)
        await with_deadline(closing.lost, what="closing connection dropped")
        self.assertEqual((await busy.wait_closed())[0], 1006)
        self.assertEqual(app.node.sessions(), [])

        # what was held finishes after the stop: nothing comes alive
        gate.callback(Reply(protocol.pong("in flight")))
        release_registration()
        # C, then the close frame with 1001 (0x03e9) and its reason
        await wait_until(lambda: b"\x03\xe9server shutting down" in verified.data, what="the late login closed")
        self.assertIn(b'"type":"C"', verified.data.replace(b" ", b""))
        self.assertEqual(app.node.sessions(), [])
        for uid in (2, 3, 4, 5):
            self.assertEqual(await self.redis.zcard("dev:%d" % uid), 0, uid)
        self.assertFalse(shaking.lost.called)   # never in the way: the listener's stop and the exit end it


class SigtermInEveryStateTests(MysqlTestMixin, RedisTestMixin, unittest.TestCase):
    """SIGTERM to ``twistd -n imd`` with connections in every state a client
    can leave them in: it exits 0 within shutdown_grace, and its node, its
    registry entry and the migrator lock are gone (nothing renews them)."""

    async def test_sigterm_ends_within_the_grace_whatever_the_connections_do(self):
        grace = 3.0
        overrides = {"imd": {"roles": "ws, migrate", "shutdown_grace": str(grace), "node_id": "sigterm-node"},
                     "websocket": {"max_message_bytes": "1024"},
                     "migrate": {"lock_ttl": "30"}}
        daemon = await start_daemon(self, write_config(self, overrides))
        port = daemon.port
        await wait_until(lambda: self.redis.exists("MQ:lock"), what="migrator leading")
        self.assertIsNotNone(await self.redis.zscore("nodes", "sigterm-node"))
        # handshaking: half a request
        shaking = await raw_connect(port, send=b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # open, with an H in flight: MySQL's message table is locked
        locker = pymysql.connect(**connect_kwargs(self.mysql_settings))
        self.addCleanup(locker.close)
        await threads.deferToThread(locker.cursor().execute, "LOCK TABLES message WRITE")
        reader = await connect_client(port, "/" + self.token(3))
        self.assertEqual((await reader.next())["type"], "L")
        reader.send({"id": "h", "to": 0, "type": "H", "msg": 0})
        # closing: imd sent its close (1009) and waits for a reply that never comes
        closing = await raw_connect(port, send=upgrade_request("/" + self.token(4)))
        await wait_until(lambda: b'"type":"L"' in closing.data.replace(b" ", b""), what="login of 4")
        closing.transport.pauseProducing()
        closing.transport.write(client_frame(1, b"x" * 2000))
        # open and idle
        idle = await connect_client(port, "/" + self.token(5))
        self.assertEqual((await idle.next())["type"], "L")
        # and logins abandoned as they were sent
        for uid in range(10, 20):
            ghost = await raw_connect(port)
            ghost.transport.write(upgrade_request("/" + self.token(uid)))
            ghost.transport.loseConnection()
        for client in (shaking, closing):
            self.addCleanup(client.transport.abortConnection)

        started = reactor.seconds()
        daemon.signal(signal.SIGTERM)
        self.assertEqual((await idle.wait_closed())[0], 1001)
        try:
            code = await daemon.wait_ended(grace + 10)
        except AssertionError as e:
            raise AssertionError("%s; its log ends:\n%s" % (e, daemon.output()[-3000:]))
        took = reactor.seconds() - started
        self.assertEqual(code, 0, daemon.stderr.decode(errors="replace") + daemon.output()[-3000:])
        self.assertLess(took, grace + 2.0)
        self.assertIn("shutdown complete", daemon.output())
        self.assertEqual((await reader.wait_closed())[0], 1006)   # its H was still in flight at the end
        # nothing of it left to renew
        self.assertIsNone(await self.redis.zscore("nodes", "sigterm-node"))
        self.assertEqual(await self.redis.exists("MQ:lock"), 0)
        self.assertEqual(await self.redis.zcard("processes"), 0)
        for uid in (3, 4, 5) + tuple(range(10, 20)):
            self.assertEqual(await self.redis.zcard("dev:%d" % uid), 0, uid)
        report("SIGTERM with connections in every state", grace_s=grace, exited_after_s=round(took, 2), exit_code=code)

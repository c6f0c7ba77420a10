"""Faults under a steady load of acked messages (issue 8): Redis killed -9
and restarted with AOF, MySQL (a private mariadbd) killed -9 and restarted,
the daemon killed -9 and restarted, a node's Redis subscription dropped.
After each, every acked message is in MySQL (or MQ) exactly once and the
clients are served again without restarting anything else.

The migrator killed with -9 is tests/test_migrator_crash.py.  With
``IMD_FAULTS=long`` (``make faults``) each test runs ten times the messages
and several fault cycles.  Each test logs one ``faults:`` line of figures and,
when ``IMD_FAULTS_REPORT`` names a file, appends it there as JSON.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections import deque

from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial import unittest

from imd.stores.mysql import apply_schema
from tests.daemon_support import start_daemon
from tests.migrator_support import start_migrator
from tests.mysql_support import MysqlTestMixin, query
from tests.support import (ImdServer, PrivateRedis, RedisTestMixin, ServerTestMixin, connect_client, drop,
                           logged_in_client, free_port, key_pair, make_settings, redis_connection, settings_text,
                           wait_until, with_deadline)

_log = Logger()
LONG = os.environ.get("IMD_FAULTS") == "long"
MESSAGES = 12000 if LONG else 1200
CYCLES = 5 if LONG else 1
FAST = {"websocket": {"rate": "100000", "burst": "100000"},
        "migrate": {"batch": "100", "interval": "0.02", "lock_ttl": "1"}}


def report(name, **figures):
    figures = dict(figures, fault=name, long=LONG)
    _log.info("faults: {figures}", figures=json.dumps(figures, sort_keys=True))
    path = os.environ.get("IMD_FAULTS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures, sort_keys=True) + "\n")


def next_reply(client, seconds=5):
    """The next A, E or C of ``client``; None as soon as the connection is gone."""
    got = client.next_of("AEC", seconds=seconds)
    either = defer.Deferred()

    def first(result):
        if not either.called:
            either.callback(result)
    got.addBoth(first)

    def closed(result):
        first(None)
        return result
    client.closed.addBoth(closed)
    if either.called and not got.called:
        got.cancel()

    def settle(result):
        if not got.called:
            got.cancel()
        return result
    return either.addCallback(settle)


class SteadySender:
    """Keeps ``window`` ``t`` packets in flight (uid ``sender`` to ``to``); a
    packet answered ``E``, or left without an answer when its connection
    went, is sent again with the same id (on a new connection if need be)
    until it is acked.  ``acked`` lists (from, id) in the order of the A's."""

    def __init__(self, connect, sender, to, window=20):
        self.connect = connect    # async () -> a logged-in TestClient
        self.sender, self.to, self.window = sender, to, window
        self.acked = []
        self.errors = 0
        self.reconnects = 0
        self.outage = None        # worst seconds from a fault to the next A
        self._fault_at = None
        self._client = None
        self._issued = 0
        self._retry = deque()
        self._in_flight = deque()
        self._faults = []

    def fault_now(self):
        self._fault_at = reactor.seconds()

    async def _connected(self):
        if self._client is not None and self._client.closed.called:
            await self._lost_connection()  # e.g. closed by the server (4008 after many E)
        while self._client is None:
            try:
                self._client = await self.connect()
            except Exception:
                self.reconnects += 1
                await task.deferLater(reactor, 0.05, lambda: None)  # pacing, not waiting for an event
        return self._client

    async def _lost_connection(self, closing=False):
        """Whatever was in flight on the old connection is sent again."""
        self._retry.extendleft(reversed(self._in_flight))
        self._in_flight.clear()
        client, self._client = self._client, None
        if client is None or client.closed.called:
            return
        if closing:  # the server sent C: let it finish its close handshake
            try:
                await client.wait_closed(5)
                return
            except AssertionError:
                pass
        await drop(client)

    async def send(self, count, at=None, on=None):
        """Until ``count`` more are acked; ``on()`` is started (not awaited:
        the load goes on) when the ``at``-th is, and awaited at the end."""
        target = self._issued + count
        while len(self.acked) < target:
            client = await self._connected()
            while len(self._in_flight) < self.window and (self._retry or self._issued < target):
                if self._retry:
                    packet_id = self._retry.popleft()
                else:
                    packet_id = "%d-%d" % (self.sender, self._issued)
                    self._issued += 1
                client.send({"id": packet_id, "to": self.to, "type": "t", "msg": "steady " + packet_id})
                self._in_flight.append(packet_id)
            try:
                reply = await next_reply(client)
            except Exception:
                reply = None
            if reply is None or reply["type"] == "C":
                await self._lost_connection(closing=reply is not None)
                continue
            packet_id = self._in_flight.popleft()
            assert reply["id"] == packet_id, (reply, packet_id)
            if reply["type"] == "E":
                self.errors += 1
                self._retry.append(packet_id)
                await task.deferLater(reactor, 0.01, lambda: None)  # pacing retries
                continue
            self.acked.append((self.sender, packet_id))
            if self._fault_at is not None:
                self.outage = max(self.outage or 0, reactor.seconds() - self._fault_at)
                self._fault_at = None
            if at is not None and len(self.acked) == at:
                self._faults.append(defer.ensureDeferred(on()))
        faults, self._faults = self._faults, []
        await defer.gatherResults(faults, consumeErrors=True)

    def close(self):
        if self._client is not None and not self._client.closed.called:
            return drop(self._client)


async def rows_in_mysql(settings):
    rows = await query(settings, "SELECT from_id, msg_id FROM message")
    pairs = [(f, bytes(m).decode("utf-8")) for f, m in rows]
    return pairs


def exactly_once(test, acked, stored):
    duplicated = len(stored) - len(set(stored))
    lost = set(acked) - set(stored)
    extra = set(stored) - set(acked)
    test.assertEqual((len(lost), duplicated, len(extra)), (0, 0, 0),
                     "lost %d, duplicated %d, stored but never acked %d" % (len(lost), duplicated, len(extra)))
    return {"acked": len(acked), "stored": len(stored), "lost": len(lost), "duplicated": duplicated}


async def prepare_redis(port, db=0):
    conn = await redis_connection(db=db, port=port)
    public_pem, private_pem = key_pair()
    await conn.mset({"publicKey": public_pem, "privateKey": private_pem})
    await conn.sadd("URS:1", 2)
    await conn.sadd("URS:2", 1)
    await conn.disconnect()


class RedisRestartTests(MysqlTestMixin, RedisTestMixin, unittest.TestCase):
    """A private redis-server with appendonly yes, appendfsync always: the
    setting under which Redis has every write in its AOF before it replies.
    (With everysec it does too, except while a slow fsync is pending: then
    it holds the write back for up to 2 s and replies anyway, and a kill -9
    loses those acks. A CI run on a busy disk lost 60 of 1,200 that way;
    docs/reliability.md says so.)"""

    async def test_redis_killed_and_restarted_with_aof_loses_no_acked_message(self):
        private = PrivateRedis(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
        await private.start()
        self.addCleanup(private.stop)
        await prepare_redis(private.port)
        settings = make_settings(dict(FAST, redis={"timeout": "0.5"},
                                      mysql={"database": self.mysql_settings.database}),
                                 redis_db=0, redis_port=private.port)
        server = await ImdServer(settings).start()
        self.addCleanup(server.stop)
        migrator = start_migrator(self, settings)

        def connect():
            return logged_in_client(server.port, "/" + self.token(1))
        sender = SteadySender(connect, 1, 2)
        self.addCleanup(sender.close)
        recoveries = []

        async def kill_and_restart():
            sender.fault_now()
            private.process.kill()  # SIGKILL: no shutdown save
            private.process.wait(10)
            await wait_until(lambda: not server.app.redis_client.connected, what="imd noticing redis is gone")
            await task.deferLater(reactor, 0.5, lambda: None)  # an outage of half a second, under load
            started = reactor.seconds()
            await private.start()   # same dir: replays the AOF
            await wait_until(lambda: server.app.redis_client.connected and server.app.bus.healthy, seconds=30,
                             what="reconnection to the restarted redis")
            recoveries.append(reactor.seconds() - started)
        per_cycle = MESSAGES // CYCLES
        for _ in range(CYCLES):
            await sender.send(per_cycle, at=len(sender.acked) + per_cycle // 2, on=kill_and_restart)
        await wait_until(lambda: migrator.is_leader, seconds=30, what="migrator leading again")
        await with_deadline(migrator.wait_drained(), 30, "drained queue")
        figures = exactly_once(self, sender.acked, await rows_in_mysql(self.mysql_settings))
        report("redis kill -9 + restart (AOF always)", cycles=CYCLES, errors_answered=sender.errors,
               reconnects=sender.reconnects, worst_outage_s=round(sender.outage or 0, 2),
               worst_reconnect_s=round(max(recoveries), 2), **figures)


class PrivateMariadb:
    """A mariadbd of the test's own: its own datadir, socket and 127.0.0.1
    port, no grant tables (root without a password); stopped by its pid."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="imd-mariadb-")
        self.port = free_port()
        self.process = None

    def install(self):
        subprocess.run(["mariadb-install-db", "--no-defaults", "--datadir=" + self.dir + "/data",
                        "--auth-root-authentication-method=normal", "--user=" + _user(), "--skip-test-db"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    async def start(self):
        self.process = subprocess.Popen(
            ["mariadbd", "--no-defaults", "--datadir=" + self.dir + "/data", "--port=%d" % self.port,
             "--socket=" + self.dir + "/sock", "--bind-address=127.0.0.1", "--skip-grant-tables",
             "--user=" + _user(), "--skip-log-bin", "--innodb-buffer-pool-size=32M",
             "--pid-file=" + self.dir + "/pid", "--log-error=" + self.dir + "/error.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await wait_until(self._answers, seconds=60, what="private mariadbd on port %d" % self.port)
        return self

    def _answers(self):
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                return len(s.recv(4)) > 0  # the server's greeting
        except OSError:
            return False

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)


def _user():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def _have_mariadb():
    return shutil.which("mariadbd") and shutil.which("mariadb-install-db")


class MysqlRestartTests(ServerTestMixin, unittest.TestCase):
    overrides = FAST

    @defer.inlineCallbacks
    def setUp(self):
        if not _have_mariadb():
            raise unittest.SkipTest("mariadbd / mariadb-install-db not installed")
        yield ServerTestMixin.setUp(self)

    async def test_mysql_killed_and_restarted_loses_no_acked_message(self):
        from twisted.internet import threads
        mariadb = PrivateMariadb()
        self.addCleanup(mariadb.stop)
        await threads.deferToThread(mariadb.install)
        await mariadb.start()
        settings = self.server.app.settings.replace("mysql", port=mariadb.port)
        await threads.deferToThread(apply_schema, settings.mysql)
        migrator = start_migrator(self, settings)
        await self.befriend(1, 2)

        async def connect():
            client = await self.connect("/" + self.token(1))
            assert (await client.next())["type"] == "L"
            return client
        sender = SteadySender(connect, 1, 2)
        recoveries, lags = [], []

        async def kill():
            mariadb.kill()

        async def restart():
            await wait_until(lambda: not migrator.mysql_up, seconds=30, what="migrator noticing MySQL is gone")
            queued = await self.redis.llen("MQ")
            lags.append(queued)
            started = reactor.seconds()
            await mariadb.start()  # InnoDB crash recovery
            await wait_until(lambda: migrator.mysql_up, seconds=60, what="migrator back on MySQL")
            recoveries.append(reactor.seconds() - started)
        per_cycle = MESSAGES // CYCLES
        for _ in range(CYCLES):
            await sender.send(per_cycle // 2, at=len(sender.acked) + per_cycle // 4, on=kill)
            await sender.send(per_cycle - per_cycle // 2, at=len(sender.acked) + 1, on=restart)
        await sender.close()
        await with_deadline(migrator.wait_drained(), 60, "drained queue")
        figures = exactly_once(self, sender.acked, await rows_in_mysql(settings.mysql))
        # adbapi itself logs "Rollback failed" for a transaction whose
        # connection the kill cut; the store retries it (imd.stores.mysql).
        import pymysql
        from twisted.enterprise.adbapi import ConnectionLost
        rollbacks = len(self.flushLoggedErrors(ConnectionLost, pymysql.err.InterfaceError,
                                               pymysql.err.OperationalError))
        report("mysql (private mariadbd) kill -9 + restart", cycles=CYCLES, errors_answered=sender.errors,
               adbapi_rollback_failures_logged=rollbacks,
               queued_while_down=max(lags), worst_recovery_s=round(max(recoveries), 2), **figures)


class DaemonRestartTests(MysqlTestMixin, RedisTestMixin, unittest.TestCase):

    async def test_daemon_killed_and_restarted_loses_no_acked_message(self):
        await self.befriend(1, 2)
        port = free_port()
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(settings_text(dict(FAST, imd={"roles": "ws, migrate", "node_id": "test-node-faults"},
                                       websocket=dict(FAST["websocket"], listen="tcp:%d:interface=127.0.0.1" % port),
                                       presence={"ttl": "2"},
                                       mysql={"database": self.mysql_settings.database})))
        daemons = [await start_daemon(self, path)]

        def connect():
            return logged_in_client(port, "/" + self.token(1))
        sender = SteadySender(connect, 1, 2)
        self.addCleanup(sender.close)
        restarts = []

        async def kill_and_restart():
            sender.fault_now()
            daemons[-1].signal(signal.SIGKILL)
            await daemons[-1].wait_ended()
            started = reactor.seconds()
            daemons.append(await start_daemon(self, path))
            restarts.append(reactor.seconds() - started)
        per_cycle = MESSAGES // CYCLES
        for _ in range(CYCLES):
            await sender.send(per_cycle, at=len(sender.acked) + per_cycle // 2, on=kill_and_restart)
        await sender.close()

        async def drained():
            return await self.redis.llen("MQ") == 0 and await self.redis.llen("MQ:processing") == 0
        await wait_until(lambda: defer.ensureDeferred(drained()), seconds=60, what="the restarted migrator draining")
        figures = exactly_once(self, sender.acked, await rows_in_mysql(self.mysql_settings))
        report("daemon (ws + migrate) kill -9 + restart", cycles=CYCLES, errors_answered=sender.errors,
               reconnect_attempts=sender.reconnects, worst_outage_s=round(sender.outage or 0, 2),
               worst_restart_s=round(max(restarts), 2), **figures)


class SubscriptionDropTests(ServerTestMixin, unittest.TestCase):
    overrides = FAST

    async def test_dropped_subscription_under_load_loses_and_doubles_nothing(self):
        await self.befriend(1, 2)
        node2 = await ImdServer(make_settings(dict(FAST, imd={"node_id": "test-node-2"}))).start()
        self.addCleanup(node2.stop)
        bob = await self.login(2)  # on node 1; alice sends through node 2

        async def connect():
            client = await connect_client(node2.port, "/" + self.token(1))
            self._clients.append(client)
            assert (await client.next())["type"] == "L"
            return client
        sender = SteadySender(connect, 1, 2)
        heals = []

        async def drop_it():
            sender.fault_now()
            started = reactor.seconds()
            node2.app.bus.drop_subscription()
            await wait_until(lambda: node2.app.bus.healthy, what="re-subscription")
            heals.append(reactor.seconds() - started)
        per_cycle = MESSAGES // CYCLES
        for _ in range(CYCLES):
            await sender.send(per_cycle, at=len(sender.acked) + per_cycle // 2, on=drop_it)
        stored = [(m["from"], m["id"]) for m in map(json.loads, await self.redis.lrange("MQ", 0, -1))]
        figures = exactly_once(self, sender.acked, stored)
        delivered = []
        while len(delivered) < len(sender.acked):
            delivered.append((await bob.next())["id"])
        self.assertEqual(delivered, [i for _, i in sender.acked], "every acked message delivered once, in order")
        self.assertEqual(len(bob.received.pending), 0)
        report("node's redis subscription dropped", cycles=CYCLES, errors_answered=sender.errors,
               delivered=len(delivered), worst_outage_s=round(sender.outage or 0, 2),
               worst_resubscribe_s=round(max(heals), 2), **figures)

"""Test fixtures: settings for the test Redis db / MySQL database, a real
imd WebSocket listener on 127.0.0.1 port 0, and a real WebSocket client.

Each test process uses a Redis db index and a MySQL database of its own
(``redis_db()``, ``mysql_db()``: see tests/isolation.py), so runs beside each
other or beside ``make run`` never touch each other's data.
"""

import json
import os

import txredisapi
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString

from imd.app import App
from imd.auth import generate_key_pair, issue_token
from imd.config import parse_settings
from tests.isolation import RUN

DEADLINE = 10.0  # seconds any single wait in a test may take # deadline

_KEY_PAIR = []


def key_pair():
    """One RSA pair per test run (generating one takes a while)."""
    if not _KEY_PAIR:
        _KEY_PAIR.append(generate_key_pair())
    return _KEY_PAIR[0]


_SIGNING_KEY = []


def signing_key():
    """The private key of ``key_pair()``, loaded once: parsing the PEM takes
    tens of milliseconds, signing with the loaded key one."""
    if not _SIGNING_KEY:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        _SIGNING_KEY.append(load_pem_private_key(key_pair()[1].encode("ascii"), password=None))
    return _SIGNING_KEY[0]


def redis_db() -> int:
    """This run's Redis db index on the shared Redis (leased on first use)."""
    return RUN.redis_db()


def mysql_db() -> str:
    """This run's MySQL database name (dropped when the process exits)."""
    return RUN.mysql_db()


def settings_text(overrides=None, redis_db=None, redis_port=6379):
    if redis_db is None:
        redis_db = RUN.redis_db()
    sections = {
        "imd": {"roles": "ws", "node_id": "test-node-1"},
        "websocket": {"listen": "tcp:0:interface=127.0.0.1", "ping_interval": "0"},
        "http": {"listen": "tcp:0:interface=127.0.0.1"},
        "redis": {"url": "redis://127.0.0.1:%d/%d" % (redis_port, redis_db), "timeout": "1"},
        "mysql": {"database": RUN.mysql_db()},
    }
    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update(values)
    return "".join("[%s]\n%s" % (name, "".join("%s = %s\n" % kv for kv in values.items()))
                   for name, values in sections.items())


def make_settings(overrides=None, **kwargs):
    return parse_settings(settings_text(overrides, **kwargs), "<test>")


def with_deadline(d, seconds=DEADLINE, what="event"):
    def timed_out(failure):
        failure.trap(defer.TimeoutError)
        raise AssertionError("no %s within %ss" % (what, seconds))
    return d.addTimeout(seconds, reactor).addErrback(timed_out)


@defer.inlineCallbacks
def redis_connection(db=None, port=6379):
    if db is None:
        db = RUN.redis_db()
    conn = yield txredisapi.Connection("127.0.0.1", port, dbid=db, reconnect=False, convertNumbers=False)
    return conn


def flush_run_db(conn):
    """Empty this run's Redis db (``conn`` is on it), keeping the run's lease."""
    script, keys, args = RUN.flush_args()
    return conn.eval(script, keys, args)


class RedisTestMixin:
    """Flushes the test Redis db around each test; ``self.redis`` is a raw connection."""

    @defer.inlineCallbacks
    def setUp(self):
        self.redis = yield redis_connection()
        yield flush_run_db(self.redis)
        public_pem, private_pem = key_pair()
        yield self.redis.mset({"publicKey": public_pem, "privateKey": private_pem})
        self.addCleanup(self.redis.disconnect)
        parent = super().setUp()
        if isinstance(parent, defer.Deferred):
            yield parent

    def token(self, uid, now=None, **claims):
        import time

        import jwt
        now = time.time() if now is None else now
        if not claims:
            return issue_token(signing_key(), uid, now)
        base = {"id": uid, "type": "websocket", "iat": int(now), "exp": int(now) + 120, "jti": os.urandom(8).hex()}
        base.update(claims)
        return jwt.encode({k: v for k, v in base.items() if v is not None}, signing_key(), algorithm="RS256")

    def befriend(self, a, b):
        return defer.gatherResults([self.redis.sadd("URS:%d" % a, b), self.redis.sadd("URS:%d" % b, a)])


class ImdServer:
    """A real App and its WebSocket listener on 127.0.0.1, port chosen by the OS."""

    def __init__(self, settings, clock=None):
        self.app = App(settings, reactor, clock)
        self.port = None
        self._listening = None

    @defer.inlineCallbacks
    def start(self):
        if self.app.sentinel is not None:
            self.app.sentinel.startService()
        self.app.redis_client.startService()
        self.app.mysql.startService()  # connects on first use only
        # polled on the real reactor: the app's own clock may be a task.Clock
        yield wait_until(lambda: self.app.redis_client.connected, what="redis connection")
        self.app.bus.startService()
        yield wait_until(lambda: self.app.bus.healthy, what="node bus subscription")
        endpoint = serverFromString(reactor, self.app.settings.websocket.listen)
        self._listening = yield endpoint.listen(self.app.websocket_factory())
        self.port = self._listening.getHost().port
        return self

    @defer.inlineCallbacks
    def stop(self):
        if self._listening is not None:
            yield self._listening.stopListening()
        for session in self.app.node.sessions():
            session.abort()
        self.app.mysql.stopService()
        yield self.app.bus.stopService()
        yield self.app.redis_client.stopService()
        if self.app.sentinel is not None:
            yield self.app.sentinel.stopService()


class TestClient(WebSocketClientProtocol):
    """Collects every packet the server sends; ``next()`` waits for one."""

    def __init__(self):
        super().__init__()
        self.received = defer.DeferredQueue()
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.received.put(json.loads(payload.decode("utf-8")))

    def onClose(self, wasClean, code, reason):
        if not self.opened.called:
            self.opened.errback(ConnectionError("closed before open: %s %s" % (code, reason)))
        self.closed.callback((code, reason))

    def send(self, packet):
        self.sendMessage(json.dumps(packet).encode("utf-8"))

    def send_raw(self, payload, binary=False):
        self.sendMessage(payload, isBinary=binary)

    def next(self, seconds=DEADLINE):
        return with_deadline(self.received.get(), seconds, "packet")

    @defer.inlineCallbacks
    def next_of(self, kinds, seconds=DEADLINE):
        """The next packet whose type is in ``kinds``, skipping others."""
        while True:
            packet = yield self.next(seconds)
            if packet["type"] in kinds:
                return packet

    def wait_closed(self, seconds=DEADLINE):
        return with_deadline(self.closed, seconds, "close")


@defer.inlineCallbacks
def connect_client(port, path="/", host="127.0.0.1"):
    factory = WebSocketClientFactory("ws://%s:%d%s" % (host, port, path))
    factory.protocol = TestClient
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=5)
    client = yield endpoint.connect(factory)
    yield with_deadline(client.opened, what="websocket open")
    return client


def drop(client):
    if client.transport is not None:
        client.transport.abortConnection()
    return client.closed


class ClientMixin:
    """``login`` and ``ask`` over whatever ``self.connect(path)`` opens."""

    @defer.inlineCallbacks
    def login_on(self, server, uid):
        """``login`` on another node: ``server``, a started ImdServer (the
        client is dropped at the test's end with the others)."""
        client = yield connect_client(server.port, "/" + self.token(uid))
        self._clients.append(client)
        packet = yield client.next()
        assert packet["type"] == "L", packet
        return client

    @defer.inlineCallbacks
    def login(self, uid):
        client = yield self.connect("/" + self.token(uid))
        packet = yield client.next()
        assert packet["type"] == "L" and packet["uid"] == uid, packet
        return client

    @defer.inlineCallbacks
    def ask(self, client, packet):
        """Send ``packet``; the reply carrying its id (other packets are skipped)."""
        client.send(packet)
        while True:
            reply = yield client.next()
            if reply.get("id") == packet.get("id") and reply["type"] in "AEPOH":
                return reply


@defer.inlineCallbacks
def logged_in_client(port, path):
    """A client past its ``L``; ConnectionError (once closed) when refused."""
    client = yield connect_client(port, path)
    packet = yield client.next()
    if packet["type"] != "L":
        yield client.wait_closed()
        raise ConnectionError(packet)
    return client


class ServerTestMixin(ClientMixin, RedisTestMixin):
    """A running imd (ws role) against the test Redis; ``login()`` gives clients."""

    overrides = None

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        self.server = ImdServer(make_settings(self.overrides))
        yield self.server.start()
        self.addCleanup(self.server.stop)
        self._clients = []
        self.addCleanup(self._drop_clients)

    def _drop_clients(self):
        return defer.gatherResults([drop(c) for c in self._clients if not c.closed.called])

    @defer.inlineCallbacks
    def connect(self, path):
        client = yield connect_client(self.server.port, path)
        self._clients.append(client)
        return client



def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@defer.inlineCallbacks
def wait_until(predicate, seconds=DEADLINE, what="condition", step=0.02):
    """Poll ``predicate`` (may return a Deferred) until true, with a deadline."""
    from twisted.internet import task
    deadline = reactor.seconds() + seconds
    while True:
        try:
            value = yield defer.maybeDeferred(predicate)
        except Exception:
            value = False
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError("no %s within %ss" % (what, seconds))
        yield task.deferLater(reactor, step, lambda: None)


class PrivateRedis:
    """A redis-server of the test's own on a free 127.0.0.1 port, stopped by its pid."""

    def __init__(self, port=None, extra_args=()):
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.process = None

    @defer.inlineCallbacks
    def start(self):
        import subprocess
        import tempfile
        self.dir = getattr(self, "dir", None) or tempfile.mkdtemp(prefix="imd-redis-")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir] + self.extra_args,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield wait_until(self._answers, what="private redis on port %d" % self.port)
        return self

    def _answers(self):
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


async def mq_entries(redis, key="MQ"):
    """The entries of ``MQ`` oldest first, as the migrator reads them, each
    without the ``seq`` the store script adds at its end (checked here: the
    last field, growing from one entry to the next)."""
    raw = await redis.lrange(key, 0, -1)
    entries, last = [], 0
    for item in reversed(raw):
        entry = json.loads(item)
        assert list(entry)[-1] == "seq" and entry["seq"] > last, entry
        last = entry.pop("seq")
        entries.append(entry)
    return entries

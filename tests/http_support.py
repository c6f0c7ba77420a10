"""Fixtures for the http role: a real App with its Site on 127.0.0.1 port 0
(and, when asked, its WebSocket listener too), and a small HTTP client.
"""

import json

import pymysql
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from imd.http import build_site
from tests.support import ImdServer, RedisTestMixin, make_settings, mysql_db, wait_until, with_deadline


def ensure_test_database(name=None):
    """Blocking: the test MySQL database exists (health checks SELECT 1 in it)."""
    name = name or mysql_db()
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE IF NOT EXISTS `%s`" % name)
    finally:
        conn.close()


class Response:
    def __init__(self, code, headers, body):
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name):
        values = self.headers.getRawHeaders(name)
        return values[0].decode("latin-1") if values else None

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Response %d %r>" % (self.code, self.body[:200])


class HttpServer(ImdServer):
    """An App whose http Site listens on 127.0.0.1 port 0; with ``with_ws``
    also everything ImdServer starts (Redis, MySQL pool, node bus, the
    WebSocket listener on port 0, which issued tokens then point at)."""

    def __init__(self, settings, with_ws=False, clock=None):
        super().__init__(settings, clock)
        self.with_ws = with_ws
        self.ws_port = None
        self.site = None
        self._http = None

    @defer.inlineCallbacks
    def start(self):
        ws_base = None
        if self.with_ws:
            yield ImdServer.start(self)
            self.ws_port = self.port
            ws_base = "ws://127.0.0.1:%d/" % self.ws_port
        else:
            self.app.mysql.startService()  # connects on first use only
            self.app.redis_client.startService()
            # polled on the real reactor: the app's own clock may be a task.Clock
            yield wait_until(lambda: self.app.redis_client.connected, what="redis connection")
        if self.app.jwks is not None:   # [http] auth = jwks:<url>: its first fetch starts now
            self.app.jwks.startService()
        self.site = build_site(self.app, ws_base_url=ws_base)
        self._http = yield serverFromString(reactor, self.app.settings.http.listen).listen(self.site)
        self.http_port = self._http.getHost().port
        return self

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.http_port

    @defer.inlineCallbacks
    def stop(self):
        if self._http is not None:
            yield self._http.stopListening()
        if self.app.jwks is not None and self.app.jwks.running:
            self.app.jwks.stopService()
        if self.with_ws:
            yield ImdServer.stop(self)
            return
        self.app.mysql.stopService()
        if self.app.redis_client.running:
            yield self.app.redis_client.stopService()


class HttpTestMixin(RedisTestMixin):
    """``self.http`` is a running HttpServer; ``self.request()`` talks to it."""

    overrides = None
    with_ws = False

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        yield threads.deferToThread(ensure_test_database)
        self.http = yield self.start_server(make_settings(self.overrides))
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self._pool.closeCachedConnections)

    @defer.inlineCallbacks
    def start_server(self, settings, clock=None):
        server = HttpServer(settings, self.with_ws, clock)
        self.addCleanup(server.stop)
        yield server.start()
        return server

    @defer.inlineCallbacks
    def request(self, method, path, body=None, headers=None, server=None, chunked=False, source=None):
        """``body``: bytes, or any other value sent as JSON; ``source``: the
        local address to send from (e.g. ``127.0.0.2``)."""
        server = server or self.http
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
        producer = None
        if body is not None:
            producer = FileBodyProducer(_Stream(body))
            if chunked:
                from twisted.web.iweb import UNKNOWN_LENGTH
                producer.length = UNKNOWN_LENGTH
        raw = Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in (headers or {}).items()})
        agent = Agent(reactor, pool=self._pool, bindAddress=(source, 0) if source else None)
        response = yield with_deadline(
            agent.request(method.encode("ascii"), (server.base_url + path).encode("ascii"), raw, producer),
            what="HTTP response")
        data = yield with_deadline(readBody(response), what="HTTP body")
        return Response(response.code, response.headers, data)

    def post_token(self, body=None, headers=None, **kwargs):
        return self.request("POST", "/IM/token", body, headers, **kwargs)


class RawClient(protocol.Protocol):
    """A TCP connection that sends what it is told and keeps what it gets."""

    def __init__(self):
        self.data = b""
        self.closed = defer.Deferred()   # fires with everything received

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.closed.callback(self.data)

    def status(self):
        """The status code of the first answer, or None."""
        line = self.data.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 and line[1].isdigit() else None

    def body_json(self):
        return json.loads(self.data.partition(b"\r\n\r\n")[2].decode("utf-8"))


def raw_connect(port, source=None):
    """A :class:`RawClient` connected to 127.0.0.1:``port``."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0) if source else None)
    return with_deadline(connectProtocol(endpoint, RawClient()), what="TCP connection")


def count_bytes_received(site):
    """[bytes the site's connections have read so far], kept up to date: the
    test then knows a slow line has arrived before it moves a Clock."""
    count = [0]
    build = site.buildProtocol

    def counting(addr):
        channel = build(addr)
        received = channel.dataReceived

        def data_received(data):
            count[0] += len(data)
            return received(data)
        channel.dataReceived = data_received
        return channel
    site.buildProtocol = counting
    return count


def _Stream(data):
    import io
    return io.BytesIO(data)

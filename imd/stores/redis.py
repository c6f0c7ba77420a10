"""The one Redis client adapter: the only module that knows txredisapi.

Everything imd asks of Redis goes through :class:`RedisClient`:

- :meth:`RedisClient.command` sends one command, :meth:`RedisClient.run` one
  Lua :class:`Script` (``EVALSHA``; the script is loaded with ``SCRIPT LOAD``
  ahead of its first use on each connection, and sent whole with ``EVAL``
  after a ``NOSCRIPT``).  Both encode the command once and write it straight
  on the one connection; the reply is the next one txredisapi's parser
  queues (Redis answers in order).  One connection means Redis runs commands
  in the order they were issued: that is what keeps one sender's messages in
  order without waiting for each reply.
- One timeout mechanism: a watchdog drops the connection when the oldest
  reply still awaited is older than ``[redis] timeout``, which fails every
  call in flight with :class:`StoreUnavailable`; a call made while no
  connection is up fails at once.  (txredisapi alone waits forever.)
- One way to connect: a Twisted ``ClientService`` that reconnects with
  backoff for ever (txredisapi gives up after a failed AUTH/SELECT) and
  hands out a connection only once its AUTH/SELECT are done.
- :class:`RedisSubscriber` is the pub/sub side: a connection of its own
  (a subscribed connection can run nothing else) that subscribes again by
  itself after every reconnection.

Writes leave in the reactor turn that made them (``flusher``, see
imd.transport.flush).

The txredisapi internals used here (``RedisProtocol.replyQueue``,
``whenConnected``, the factory hooks ``stopTrying``,
``connectionError`` and ``isLazy``) are checked by tests/test_private_attributes.py.
"""

import hashlib
from collections import deque
from typing import Any, Callable, Deque, Iterable, List, Optional, Sequence, Set

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, protocol, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from imd.errors import StoreUnavailable

_log = Logger()

RedisReplyError = txredisapi.ResponseError
"""An error reply from Redis (a script's ``error_reply``, a wrong type...)."""

Arg = Any  # bytes, str or int: what a command takes


class Script:
    """A Lua script and its SHA-1 (for ``EVALSHA``)."""
    __slots__ = ("text", "sha", "name")

    def __init__(self, text: str, name: str = "script") -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()
        self.name = name

    def __repr__(self) -> str:
        return "<Script %s %s>" % (self.name, self.sha[:8])


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command in the Redis protocol."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            value = arg
        elif kind is str:
            value = arg.encode("utf-8")
        elif kind is int:
            value = b"%d" % arg
        elif kind is float:
            value = repr(arg).encode("ascii")
        else:
            value = str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(out)


class _Connection(txredisapi.RedisProtocol):
    """txredisapi's reply parser, AUTH and SELECT; nothing else of it is used."""

    client: "RedisClient"

    def connectionMade(self) -> Any:
        d = super().connectionMade()
        self.whenConnected().addCallback(self.client._ready)
        return d

    def connectionLost(self, why: Failure) -> None:
        self.client._lost(self)
        super().connectionLost(why)


class _Factory(protocol.Factory):
    # read by txredisapi's connectionMade when AUTH or SELECT fails
    isLazy = True
    noisy = False   # no "Starting factory" line for each reconnection

    def __init__(self, client: "RedisClient", connection_class: type = _Connection) -> None:
        self.client = client
        self.connection_class = connection_class

    def buildProtocol(self, addr: Any) -> _Connection:
        address = self.client.address
        conn = self.connection_class(replyTimeout=None, password=address.password, dbid=address.db,
                                     convertNumbers=False)
        conn.factory = self
        conn.client = self.client
        return conn

    def stopTrying(self) -> None:
        pass   # ClientService keeps trying: an operator may fix the password

    def connectionError(self, why: str) -> None:
        _log.error("redis at {host}:{port}: {why}", host=self.client.address.host,
                   port=self.client.address.port, why=why)


def _endpoint(reactor: Any, address: Any, timeout: float) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, address.host, address.port, timeout=timeout)


class RedisClient(Service):
    """One self-reconnecting connection to Redis and the calls that never hang.

    ``endpoint`` (optional) builds the client endpoint for each connection
    attempt, so that a new attempt may go somewhere else (a new master).
    """

    connection_class: type = _Connection

    def __init__(self, address: Any, timeout: float, clock: Any, reactor: Any = None,
                 flusher: Any = None, endpoint: Optional[Callable[[], Any]] = None,
                 name: str = "redis") -> None:
        self.address = address
        self.timeout = timeout
        self.name = name
        self._clock = clock
        self._reactor = reactor
        self._flusher = flusher
        self._endpoint = endpoint
        self._service: Optional[ClientService] = None
        self._conn: Optional[_Connection] = None
        self._loaded: Set[str] = set()     # SHAs loaded on self._conn
        self._issued: Deque[float] = deque()  # when each reply still awaited was asked for
        self._timers: List[task.LoopingCall] = []
        self._waiters: List[Deferred] = []

    # --- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        endpoint = self._endpoint() if self._endpoint else _endpoint(reactor, self.address, self.timeout)
        self._service = ClientService(endpoint, _Factory(self, self.connection_class),
                                      retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=5.0),
                                      clock=self._clock)
        self._service.startService()
        for interval, call in ((max(1.0, self.timeout), self._ping),
                               (max(0.05, self.timeout / 4.0), self._check_replies)):
            timer = task.LoopingCall(call)
            timer.clock = self._clock
            timer.start(interval, now=False)
            self._timers.append(timer)

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        for timer in self._timers:
            if timer.running:
                timer.stop()
        self._timers = []
        service, self._service = self._service, None
        if service is None:
            return None
        return service.stopService()

    # --- the connection --------------------------------------------------------

    @property
    def connected(self) -> bool:
        """A connection is up and past its AUTH/SELECT."""
        return self._conn is not None

    def wait_connected(self, timeout: Optional[float] = None) -> Deferred:
        """Fires once a connection is up; StoreUnavailable after ``timeout``."""
        if self._conn is not None:
            return defer.succeed(None)
        d = Deferred()
        self._waiters.append(d)
        seconds = self.timeout if timeout is None else timeout

        def gave_up(failure: Failure) -> None:
            failure.trap(defer.TimeoutError, defer.CancelledError)
            if d in self._waiters:
                self._waiters.remove(d)
            raise StoreUnavailable("cannot connect to redis at %s:%d" % (self.address.host, self.address.port))
        return d.addTimeout(seconds, self._clock).addErrback(gave_up)

    def _ready(self, conn: _Connection) -> None:
        if conn.transport is None or not conn.connected:
            return
        self._conn = conn
        self._loaded = set()
        self._issued = deque()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
            self._issued = deque()

    def drop_connection(self) -> None:
        """Cut the connection (fault tests, a master that changed); it comes back by itself."""
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.abortConnection()

    # --- calls -------------------------------------------------------------------

    def command(self, *args: Arg) -> Deferred:
        """One command; fires with its reply (str, int, list, None), fails
        with :data:`RedisReplyError` for an error reply, StoreUnavailable when
        Redis cannot be reached or does not answer in time."""
        conn = self._conn
        if conn is None:
            return defer.fail(StoreUnavailable("redis is not connected"))
        try:
            d = self._write(conn, encode_command(args))
        except Exception as e:
            return defer.fail(StoreUnavailable("redis: %s" % (e,)))
        return d.addBoth(self._replied, self._issued)

    def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Deferred:
        """``script`` with ``keys`` and ``args``: the reply, as :meth:`command`."""
        conn = self._conn
        if conn is None:
            return defer.fail(StoreUnavailable("redis is not connected"))
        try:
            if script.sha not in self._loaded:
                # Redis runs commands in order: the EVALSHA below finds it loaded.
                self._loaded.add(script.sha)
                self._write(conn, encode_command(("SCRIPT", "LOAD", script.text))).addBoth(
                    self._replied, self._issued).addErrback(lambda f: None)
            d = self._write(conn, encode_command(("EVALSHA", script.sha, len(keys), *keys, *args)))
        except Exception as e:
            return defer.fail(StoreUnavailable("redis: %s" % (e,)))
        # one callback for the reply (each one on a Deferred costs ~1.5 us)
        return d.addBoth(self._script_replied, self._issued, conn, script, keys, args)

    def _write(self, conn: _Connection, command: bytes) -> Deferred:
        conn.transport.write(command)
        if self._flusher is not None:
            self._flusher.written(conn.transport)
        self._issued.append(self._clock.seconds())
        return conn.replyQueue.get()

    @staticmethod
    def _replied(reply: Any, issued: Deque[float]) -> Any:
        if issued:
            issued.popleft()
        if isinstance(reply, Failure):
            raise StoreUnavailable("redis: %s" % (reply.getErrorMessage(),))
        if isinstance(reply, txredisapi.ResponseError):
            raise reply
        if isinstance(reply, Exception):  # txredisapi.ConnectionError("Lost connection"), ...
            raise StoreUnavailable("redis: %s" % (reply,))
        return reply

    def _script_replied(self, reply: Any, issued: Deque[float], conn: _Connection, script: Script,
                        keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        if (isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("NOSCRIPT")
                and self._conn is conn):
            # An operator's SCRIPT FLUSH: send the text, and load it again next time.
            if issued:
                issued.popleft()
            self._loaded.discard(script.sha)
            d = self._write(conn, encode_command(("EVAL", script.text, len(keys), *keys, *args)))
            return d.addBoth(self._replied, self._issued)
        return self._replied(reply, issued)

    # --- timers ------------------------------------------------------------------

    def _ping(self) -> None:
        if self._conn is not None:
            # A dead link is noticed here: the watchdog drops it.
            self.command("PING").addErrback(lambda f: None)

    def _check_replies(self) -> None:
        """The reply timeout: drop a link whose oldest awaited reply is late."""
        issued, conn = self._issued, self._conn
        if issued and conn is not None and self._clock.seconds() - issued[0] > self.timeout:
            _log.warn("{name}: no reply in {timeout}s; dropping the connection", name=self.name,
                      timeout=self.timeout)
            self._issued = deque()
            self._conn = None
            if conn.transport is not None:
                conn.transport.abortConnection()


# --- pub/sub ---------------------------------------------------------------------

class _Subscription(txredisapi.SubscriberProtocol):
    subscriber: "RedisSubscriber"

    def connectionMade(self) -> Any:
        d = super().connectionMade()
        self.whenConnected().addCallback(lambda _: self.subscriber._connected(self))
        return d

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.subscriber.on_message(message)

    def connectionLost(self, why: Failure) -> None:
        self.subscriber._lost(self)
        super().connectionLost(why)


class _SubscriptionFactory(_Factory):
    def buildProtocol(self, addr: Any) -> _Subscription:
        address = self.client.address
        conn = _Subscription(replyTimeout=None, password=address.password, convertNumbers=False)
        conn.factory = self
        conn.subscriber = self.client
        return conn


class RedisSubscriber(Service):
    """A connection subscribed to ``channels``: ``on_message(message)`` for
    each message, ``on_subscribed()`` after each (re)subscription,
    ``on_lost()`` when the subscription is gone (it comes back by itself)."""

    def __init__(self, address: Any, timeout: float, clock: Any, reactor: Any, channels: Iterable[str],
                 on_message: Callable[[Any], None], on_subscribed: Callable[[], None] = lambda: None,
                 on_lost: Callable[[], None] = lambda: None,
                 endpoint: Optional[Callable[[], Any]] = None) -> None:
        self.address = address
        self.timeout = timeout
        self.channels = list(channels)
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self.on_lost = on_lost
        self._clock = clock
        self._reactor = reactor
        self._endpoint = endpoint
        self._service: Optional[ClientService] = None
        self._conn: Optional[_Subscription] = None
        self.subscribed = False

    def startService(self) -> None:
        super().startService()
        endpoint = self._endpoint() if self._endpoint else _endpoint(self._reactor, self.address, self.timeout)
        self._service = ClientService(endpoint, _SubscriptionFactory(self),
                                      retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=5.0),
                                      clock=self._clock)
        self._service.startService()

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        service, self._service = self._service, None
        return service.stopService() if service is not None else None

    def _connected(self, conn: _Subscription) -> None:
        d = conn.subscribe(self.channels)
        d.addCallbacks(lambda _: self._subscribed(conn), lambda f: self._failed(f, conn))

    def _subscribed(self, conn: _Subscription) -> None:
        if conn.transport is None or not conn.connected:
            return
        self._conn = conn
        self.subscribed = True
        self.on_subscribed()

    def _failed(self, failure: Failure, conn: _Subscription) -> None:
        _log.warn("redis subscription failed: {why}", why=failure.getErrorMessage())
        if conn.transport is not None:
            conn.transport.abortConnection()

    def _lost(self, conn: _Subscription) -> None:
        if self._conn is conn:
            self._conn = None
            self.subscribed = False
            self.on_lost()

    def drop_connection(self) -> None:
        """Cut the subscribed connection (fault tests); it comes back by itself."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self.subscribed = False
            self.on_lost()
            if conn.transport is not None:
                conn.transport.abortConnection()

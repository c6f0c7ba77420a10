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
- Behind Sentinel (imd.stores.sentinel) the ``endpoint`` hook asks the
  sentinels where the master is on every connection attempt, ``check_role``
  has each new connection ask ``ROLE`` and drop itself unless it reached a
  master, and :meth:`RedisClient.follow_master` drops a connection left on a
  demoted master (``+switch-master``, or a ``READONLY`` reply).
- :meth:`RedisClient.replicated` is how a reply waits for replicas
  (``[redis] min_replicas``): one ``WAIT`` per reactor turn covers every
  write the connection issued before it.

Writes leave in the reactor turn that made them (``flusher``, see
imd.transport.flush).

The txredisapi internals used here (``RedisProtocol.replyQueue``,
``whenConnected``, the factory hooks ``stopTrying``,
``connectionError`` and ``isLazy``) are checked by tests/test_private_attributes.py.
"""

import functools
import hashlib
import os
import random
import re
from bisect import bisect_left
from collections import deque
from typing import Any, Callable, Deque, Iterable, List, Optional, Sequence, Set, Tuple, cast

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, protocol, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from imd.errors import StoreUnavailable

_log = Logger()

RedisReplyError = txredisapi.ResponseError
"""An error reply from Redis (a script's ``error_reply``, a wrong type...)."""

Arg = Any  # bytes, str or int: what a command takes
_Peer = Tuple[Optional[str], Optional[int]]  # (host, port) a connection reached; None where its address has none


# Error replies that say Redis cannot serve now, not that the call was wrong:
# they fail as StoreUnavailable (E unavailable; the migrator retries).
_NOT_SERVING = ("READONLY", "LOADING", "MASTERDOWN")


# --- Lua ---------------------------------------------------------------------------

LUA_DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")
_INCLUDE = "-- include:"
_LUA_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


@functools.lru_cache(maxsize=None)
def _lua_file(name: str) -> str:
    if not _LUA_NAME.match(name):
        raise ValueError("not a Lua file name: %r" % (name,))
    with open(os.path.join(LUA_DIRECTORY, name + ".lua"), encoding="utf-8") as f:
        return f.read()


def compose_lua(text: str) -> str:
    """``text`` with its includes resolved: the one way a Lua script shares
    code (Redis has no ``require``).

    A script or snippet that uses others names them on its first line,
    ``-- include: store_entry note_push``.  That line is replaced by the
    text of each ``lua/<name>.lua`` named, in that order, each with its own
    includes resolved the same way before it; a snippet is put in once
    however many times it is named (so what a snippet defines comes before
    whatever uses it).  A snippet is a file that defines one ``local
    function`` of its name (``store_entry.lua``: ``store_entry``); an
    include cycle is a ValueError.
    """
    parts: List[str] = []
    _compose(text, parts, set(), ())
    return "".join(parts)


def _compose(text: str, parts: List[str], done: Set[str], chain: Tuple[str, ...]) -> None:
    first, _, rest = text.partition("\n")
    if first.startswith(_INCLUDE):
        for name in first[len(_INCLUDE):].split():
            if name in chain:
                raise ValueError("Lua include cycle: %s" % " -> ".join(chain + (name,)))
            if name not in done:
                _compose(_lua_file(name), parts, done, chain + (name,))
                done.add(name)
        text = rest
    parts.append(text)


def lua_source(name: str) -> str:
    """The text Redis runs for ``lua/<name>.lua``: the file, its includes resolved."""
    return compose_lua(_lua_file(name))


class Script:
    """A Lua script and its SHA-1 (for ``EVALSHA``).

    The scripts live in ``imd/stores/lua/`` (package data, shipped in the
    wheel), one ``<name>.lua`` each with the comment that names its
    ``KEYS`` and ``ARGV``; :meth:`load` reads one by name and resolves its
    includes (:func:`compose_lua`).  The SHA-1 is that of the composed text.
    """
    __slots__ = ("text", "sha", "name", "evalsha")

    def __init__(self, text: str, name: str = "script") -> None:
        """``text``: the whole script, as Redis runs it."""
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()
        self.name = name
        # EVALSHA and the SHA-1 as encode_command writes them, once
        self.evalsha = encode_command(("EVALSHA", self.sha)).split(b"\r\n", 1)[1]

    @classmethod
    def load(cls, name: str) -> "Script":
        """The script of ``imd/stores/lua/<name>.lua``."""
        return cls(lua_source(name), name)

    def __repr__(self) -> str:
        return "<Script %s %s>" % (self.name, self.sha[:8])


# The headers of arrays and bulk strings up to these sizes, made once
_ARRAY_HEADS = [b"*%d\r\n" % n for n in range(64)]
_BULK_HEADS = [b"$%d\r\n" % n for n in range(1024)]


def encode_command(args: Sequence[Arg], head: bytes = b"", head_count: int = 0) -> bytes:
    """One command in the Redis protocol; ``head``: its first ``head_count``
    arguments already encoded (:attr:`Script.evalsha`)."""
    n = len(args) + head_count
    out = [_ARRAY_HEADS[n] if n < 64 else b"*%d\r\n" % n, head]
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
        size = len(value)
        out.append(_BULK_HEADS[size] if size < 1024 else b"$%d\r\n" % size)
        out.append(value)
        out.append(b"\r\n")
    return b"".join(out)


class _Connection(txredisapi.RedisProtocol):
    """txredisapi's reply parser, AUTH and SELECT; nothing else of it is used."""

    client: "RedisClient"

    def connectionMade(self) -> Any:
        d = super().connectionMade()
        self.whenConnected().addCallback(self.client._authenticated)
        return d

    def connectionLost(self, why: Failure) -> None:
        self.client._lost(self)
        super().connectionLost(why)


def _is_master(reply: Any) -> bool:
    """``ROLE``'s first element is ``master`` (a replica says ``slave``, a
    sentinel ``sentinel``)."""
    if not isinstance(reply, (list, tuple)) or not reply:
        return False
    role = reply[0]
    return (role.decode("ascii", "replace") if isinstance(role, bytes) else role) == "master"


def _peer(conn: Any) -> Optional[_Peer]:
    transport = getattr(conn, "transport", None)
    if transport is None:
        return None
    peer = transport.getPeer()
    return (getattr(peer, "host", None), getattr(peer, "port", None))


def check_role(conn: Any, clock: Any, timeout: float, what: str) -> Deferred:
    """Ask ``ROLE`` on a connection past its AUTH/SELECT (nothing else is
    written on it yet): fires with the connection when it reached a master;
    otherwise the connection is dropped and the Deferred fails."""
    conn.transport.write(encode_command(("ROLE",)))
    d = conn.replyQueue.get().addTimeout(timeout, clock)

    def answered(reply: Any) -> Any:
        if _is_master(reply):
            return conn
        if isinstance(reply, Exception):   # the connection went before ROLE's answer
            raise StoreUnavailable("%s: %s" % (what, reply))
        host, port = _peer(conn) or ("?", 0)
        role = reply[0] if isinstance(reply, (list, tuple)) and reply else reply
        _log.warn("{what}: {host}:{port} is not a master (ROLE {role!r}); asking the sentinels again",
                  what=what, host=host, port=port, role=role)
        raise StoreUnavailable("%s:%s is not a master" % (host, port))

    def dropped(failure: Failure) -> Failure:
        if conn.transport is not None:
            conn.transport.abortConnection()
        return failure
    return d.addCallback(answered).addErrback(dropped)


class _Factory(protocol.Factory):
    # read by txredisapi's connectionMade when AUTH or SELECT fails
    isLazy = True
    noisy = False   # no "Starting factory" line for each reconnection

    def __init__(self, client: Any, connection_class: type = _Connection) -> None:  # RedisClient or RedisSubscriber
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


def _endpoint(reactor: Any, address: Any, timeout: float) -> IStreamClientEndpoint:
    return cast(IStreamClientEndpoint, TCP4ClientEndpoint(reactor, address.host, address.port, timeout=timeout))


def _retry_policy(max_delay: float) -> Callable[[int], float]:
    """Back-off from 0.1 s to ``max_delay``, with a random part up to a
    fifth of ``max_delay`` (Twisted's default adds up to a whole second,
    which behind Sentinel would be most of a failover's cost)."""
    return backoffPolicy(initialDelay=0.1, maxDelay=max_delay, jitter=lambda: random.random() * max_delay / 5.0)


def ask_once(reactor: Any, clock: Any, host: str, port: int, args: Sequence[Arg], timeout: float) -> Deferred:
    """One command to ``host:port`` on a short connection of its own (no
    AUTH, no SELECT: a sentinel); fires with the reply, StoreUnavailable when
    it cannot connect, gets an error reply or no reply within ``timeout``."""
    conns: List[Any] = []

    def connected(conn: Any) -> Deferred:
        conns.append(conn)
        conn.transport.write(encode_command(args))
        return conn.replyQueue.get()

    def done(reply: Any) -> Any:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.loseConnection()
        if isinstance(reply, Failure):
            if reply.check(defer.CancelledError, defer.TimeoutError):
                raise StoreUnavailable("%s:%d: no answer in %gs" % (host, port, timeout))
            raise StoreUnavailable("%s:%d: %s" % (host, port, reply.getErrorMessage()))
        if isinstance(reply, Exception):
            raise StoreUnavailable("%s:%d: %s" % (host, port, reply))
        return reply
    factory = protocol.Factory.forProtocol(lambda: txredisapi.RedisProtocol(convertNumbers=False))
    d = TCP4ClientEndpoint(reactor, host, port, timeout=timeout).connect(cast(IProtocolFactory, factory))
    return d.addCallback(connected).addTimeout(timeout, clock).addBoth(done)


class _WaitBatch:
    """The replies of one turn waiting for the ``WAIT`` that covers their writes."""
    __slots__ = ("conn", "waiters", "deadline", "timer", "done")

    def __init__(self, conn: Any, deadline: float) -> None:
        self.conn = conn
        self.waiters: List[Tuple[Deferred, Any]] = []
        self.deadline = deadline
        self.timer: Any = None
        self.done = False

    def succeed(self) -> None:
        self._end()
        for d, value in self.waiters:
            d.callback(value)

    def fail(self, why: str) -> None:
        self._end()
        for d, _ in self.waiters:
            d.errback(StoreUnavailable(why))

    def _end(self) -> None:
        self.done = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class WaitFigures:
    """What the ``WAIT`` s of one client measured (read by imd.metrics)."""
    __slots__ = ("waits", "failed", "acknowledged", "bounds", "counts", "seconds")

    BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self) -> None:
        self.waits = 0            # WAITs answered
        self.failed = 0           # answered below min_replicas, timed out or cut
        self.acknowledged = -1    # replicas that confirmed the last WAIT (-1: none yet)
        self.counts = [0] * (len(self.BOUNDS) + 1)   # WAIT latency, per bucket (the last is +Inf)
        self.seconds = 0.0        # sum of the latencies

    def observe(self, seconds: float) -> None:
        self.waits += 1
        self.seconds += seconds
        self.counts[bisect_left(self.BOUNDS, seconds)] += 1


class RedisClient(Service):
    """One self-reconnecting connection to Redis and the calls that never hang.

    ``endpoint`` (optional) builds the client endpoint for each connection
    attempt, so that a new attempt may go somewhere else (a new master);
    ``check_role`` makes each new connection prove it reached a master.
    ``min_replicas`` / ``replica_timeout``: see :meth:`replicated`.
    """

    connection_class: type = _Connection

    def __init__(self, address: Any, timeout: float, clock: Any, reactor: Any = None,
                 flusher: Any = None, endpoint: Optional[Callable[[], Any]] = None,
                 name: str = "redis", check_role: bool = False, min_replicas: int = 0,
                 replica_timeout: float = 0.5, max_retry_delay: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout
        self.name: str = name
        self.check_role = check_role
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout
        self.wait_figures = WaitFigures()
        self.master_changes = 0        # times a new connection reached another address (failovers seen)
        self._last_master: Optional[_Peer] = None
        self._clock = clock
        self._reactor = reactor
        self._flusher = flusher
        self._endpoint = endpoint
        self._max_retry_delay = max_retry_delay
        self._service: Optional[ClientService] = None
        self._conn: Optional[_Connection] = None
        self._loaded: Set[str] = set()     # SHAs loaded on self._conn
        self._issued: Deque[float] = deque()  # when each reply still awaited was asked for
        self._timers: List[task.LoopingCall] = []
        self._waiters: List[Deferred] = []
        self._next_batch: Optional[_WaitBatch] = None      # this turn's replies waiting for replicas
        self._batch_in_flight: Optional[_WaitBatch] = None  # the one WAIT Redis is answering
        self._wait_call: Any = None

    # --- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        endpoint = self._endpoint() if self._endpoint else _endpoint(reactor, self.address, self.timeout)
        self._service = ClientService(endpoint, cast(IProtocolFactory, _Factory(self, self.connection_class)),
                                      retryPolicy=_retry_policy(self._max_retry_delay),
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
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        seconds = self.timeout if timeout is None else timeout

        def gave_up(failure: Failure) -> None:
            failure.trap(defer.TimeoutError, defer.CancelledError)
            if d in self._waiters:
                self._waiters.remove(d)
            raise StoreUnavailable("cannot connect to redis at %s:%d" % (self.address.host, self.address.port))
        return d.addTimeout(seconds, self._clock).addErrback(gave_up)

    @property
    def master_address(self) -> Optional[str]:
        """``host:port`` this client's connection reached (None while down)."""
        peer = _peer(self._conn) if self._conn is not None else None
        return "%s:%s" % peer if peer else None

    def _authenticated(self, conn: _Connection) -> None:
        if not self.check_role:
            self._ready(conn)
            return
        check_role(conn, self._clock, self.timeout, self.name).addCallbacks(self._ready, lambda f: None)

    def _ready(self, conn: _Connection) -> None:
        if conn.transport is None or not conn.connected:
            return
        peer = _peer(conn)
        assert peer is not None   # its transport is up (above)
        if self._last_master is not None and peer != self._last_master:
            self.master_changes += 1
            _log.warn("{name}: now on the redis master at {host}:{port} (was {old})", name=self.name,
                      host=peer[0], port=peer[1], old="%s:%s" % self._last_master)
        self._last_master = peer
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
            batch, self._next_batch = self._next_batch, None
            if batch is not None and not batch.done:
                batch.fail("redis: lost the connection before its writes reached the replicas")

    def drop_connection(self) -> None:
        """Cut the connection (fault tests, a master that changed); it comes back by itself."""
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.abortConnection()

    def follow_master(self, host: str, port: int) -> None:
        """The sentinels moved the master to ``host:port``: a connection
        elsewhere is dropped, and the next one asks where the master is."""
        peer = _peer(self._conn)
        if peer is not None and peer != (host, port):
            _log.info("{name}: the master moved from {old} to {host}:{port}; reconnecting", name=self.name,
                      old="%s:%s" % peer, host=host, port=port)
            self.drop_connection()

    # --- replicas (WAIT) -----------------------------------------------------------

    def replicated(self, value: Any = None) -> Any:
        """``value`` once every write this connection issued so far is on
        ``min_replicas`` replicas.

        With ``min_replicas`` 0: ``value`` itself, at once.  Otherwise a
        Deferred firing with ``value`` after the ``WAIT`` that ends this
        reactor turn: one ``WAIT min_replicas <ms>`` per turn covers every
        reply that asked during it (Redis answers in order on one connection,
        so the writes before the ``WAIT`` are the ones it counts).  One
        ``WAIT`` at a time: asked while one is out, the next follows at once.
        Fails with StoreUnavailable (-> ``E unavailable``) when fewer replicas
        confirm, or none within ``replica_timeout`` of the call, or the
        connection goes.  Use it after the write's reply, e.g.
        ``d.addCallback(client.replicated)``.
        """
        if not self.min_replicas:
            return value
        conn = self._conn
        if conn is None:
            return defer.fail(StoreUnavailable("redis is not connected"))
        batch = self._next_batch
        if batch is None:
            batch = self._next_batch = _WaitBatch(conn, self._clock.seconds() + self.replica_timeout)
            batch.timer = self._clock.callLater(self.replica_timeout, self._batch_expired, batch)
            if self._batch_in_flight is None and self._wait_call is None:
                self._wait_call = self._clock.callLater(0, self._send_wait)
        d: Deferred[Any] = Deferred()
        batch.waiters.append((d, value))
        return d

    def _send_wait(self) -> None:
        self._wait_call = None
        batch, self._next_batch = self._next_batch, None
        if batch is None or batch.done:
            return
        conn = self._conn
        if conn is None or conn is not batch.conn:
            batch.fail("redis: lost the connection before its writes reached the replicas")
            return
        now = self._clock.seconds()
        milliseconds = max(1, int(round((batch.deadline - now) * 1000)))  # (WAIT n 0 would block for ever)
        self._batch_in_flight = batch
        d = self._write(conn, encode_command(("WAIT", self.min_replicas, milliseconds)))
        d.addBoth(self._replied, self._issued).addBoth(self._wait_answered, batch, now)

    def _wait_answered(self, reply: Any, batch: _WaitBatch, started: float) -> None:
        figures = self.wait_figures
        figures.observe(self._clock.seconds() - started)
        if self._batch_in_flight is batch:
            self._batch_in_flight = None
        if isinstance(reply, Failure):
            figures.failed += 1
            if not batch.done:
                batch.fail("redis: WAIT: %s" % (reply.getErrorMessage(),))
        else:
            count = int(reply)
            figures.acknowledged = count
            if count < self.min_replicas:
                figures.failed += 1
                if not batch.done:
                    batch.fail("redis: %d of %d replicas confirmed the write within %gs"
                               % (count, self.min_replicas, self.replica_timeout))
            elif not batch.done:
                batch.succeed()
        if self._next_batch is not None and self._wait_call is None:
            # Written now, after every write the waiting replies came from.
            self._send_wait()

    def _batch_expired(self, batch: _WaitBatch) -> None:
        batch.timer = None
        if not batch.done:
            batch.fail("redis: no confirmation from %d replicas within %gs"
                       % (self.min_replicas, self.replica_timeout))

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
            d = self._write(conn, encode_command((len(keys), *keys, *args), script.evalsha, 2))
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

    def _replied(self, reply: Any, issued: Deque[float]) -> Any:
        if issued:
            issued.popleft()
        if isinstance(reply, Failure):
            raise StoreUnavailable("redis: %s" % (reply.getErrorMessage(),))
        if isinstance(reply, txredisapi.ResponseError):
            text = str(reply)
            if text.startswith(_NOT_SERVING):
                if text.startswith("READONLY"):
                    # A master demoted under us (a failover we were not told
                    # of): reconnect, through the sentinels if there are any.
                    _log.warn("{name}: redis answered READONLY; reconnecting", name=self.name)
                    self.drop_connection()
                # (LOADING: a Redis restarted and still reading its AOF)
                raise StoreUnavailable("redis: %s" % (text,))
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
                 endpoint: Optional[Callable[[], Any]] = None, check_role: bool = False,
                 max_retry_delay: float = 5.0, name: str = "redis subscription") -> None:
        self.address = address
        self.timeout = timeout
        self.channels = list(channels)
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self.on_lost = on_lost
        self.check_role = check_role
        self.name: str = name
        self._clock = clock
        self._reactor = reactor
        self._endpoint = endpoint
        self._max_retry_delay = max_retry_delay
        self._service: Optional[ClientService] = None
        self._conn: Optional[_Subscription] = None
        self._connecting: Optional[_Subscription] = None
        self.subscribed = False

    def startService(self) -> None:
        super().startService()
        endpoint = self._endpoint() if self._endpoint else _endpoint(self._reactor, self.address, self.timeout)
        self._service = ClientService(endpoint, cast(IProtocolFactory, _SubscriptionFactory(self)),
                                      retryPolicy=_retry_policy(self._max_retry_delay),
                                      clock=self._clock)
        self._service.startService()

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        service, self._service = self._service, None
        return service.stopService() if service is not None else None

    def _connected(self, conn: _Subscription) -> None:
        self._connecting = conn
        if self.check_role:
            d = check_role(conn, self._clock, self.timeout, self.name)
            d.addCallback(lambda _: conn.subscribe(self.channels))
        else:
            d = conn.subscribe(self.channels)
        d.addCallbacks(lambda _: self._subscribed(conn), lambda f: self._failed(f, conn))

    def _subscribed(self, conn: _Subscription) -> None:
        if self._connecting is conn:
            self._connecting = None
        if conn.transport is None or not conn.connected:
            return
        self._conn = conn
        self.subscribed = True
        self.on_subscribed()

    def _failed(self, failure: Failure, conn: _Subscription) -> None:
        if not failure.check(StoreUnavailable):   # (check_role logged why)
            _log.warn("{name} failed: {why}", name=self.name, why=failure.getErrorMessage())
        if conn.transport is not None:
            conn.transport.abortConnection()

    def _lost(self, conn: _Subscription) -> None:
        if self._connecting is conn:
            self._connecting = None
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

    def follow_master(self, host: str, port: int) -> None:
        """As :meth:`RedisClient.follow_master`."""
        for conn in (self._conn, self._connecting):
            peer = _peer(conn)
            if peer is not None and peer != (host, port):
                _log.info("{name}: the master moved from {old} to {host}:{port}; subscribing there",
                          name=self.name, old="%s:%s" % peer, host=host, port=port)
                if conn is self._conn:
                    self.drop_connection()
                elif conn is not None and conn.transport is not None:
                    conn.transport.abortConnection()

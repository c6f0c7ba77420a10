"""The one Redis client adapter: the only module that knows txredisapi.

Everything imd asks of Redis goes through here, on connections of one kind
(``_Connection``: txredisapi's reply parser, and nothing else of it):

- One write path, ``_Connection.send``: a command encoded once
  (:func:`encode_command`) and written straight on the connection; its
  reply is the next one the parser queues (Redis answers in order).  Every
  command takes it: :meth:`RedisClient.command`, :meth:`RedisClient.run` (a
  Lua :class:`Script` by ``EVALSHA``; loaded with ``SCRIPT LOAD`` ahead of
  its first use on each connection, sent whole with ``EVAL`` after a
  ``NOSCRIPT``), ``WAIT``, the ``AUTH`` and ``SELECT`` of a new connection,
  its ``ROLE`` check behind Sentinel (:func:`check_role`), ``SUBSCRIBE``
  (:class:`RedisSubscriber`) and the questions to the sentinels
  (:func:`ask_once`).  One command connection means Redis runs commands in
  the order they were issued: that is what keeps one sender's messages in
  order without waiting for each reply.
- One timeout mechanism: a connection notes when each reply it awaits was
  asked for, and its watchdog (every quarter of ``[redis] timeout``) drops
  it when the oldest is older than ``timeout``: every call in flight on it
  then fails with :class:`StoreUnavailable`, and whoever owns it connects
  again.  A call made while no connection is up fails at once.
  (txredisapi alone waits for ever.)
- Replies are decoded once, here: a bulk string comes up as ``str``, its
  bytes read as UTF-8, and a byte that is not UTF-8 kept as a lone
  surrogate (Python's ``surrogateescape``); a ``str`` argument is encoded
  the same way.  So no store sees ``bytes`` from Redis or decodes anything,
  and a value read back is written back byte for byte (an unreadable
  entry moved to ``MQ:dead``, a key name a ``SCAN`` found).  Where such
  text leaves imd it is checked there: a stored entry by
  imd.messagelog.entry.readable (each such byte as U+FFFD, for clients and MySQL),
  a bus frame by imd.node (refused).
- One way to connect: a Twisted ``ClientService`` that reconnects with
  backoff for ever and hands out a connection only once its AUTH/SELECT
  are done (a failed one is logged and the connection tried again: an
  operator may fix the password).
- :class:`RedisSubscriber` is the pub/sub side: a connection of its own
  (a subscribed connection can run nothing else) that subscribes again by
  itself after every reconnection.
- Behind Sentinel (imd.stores.sentinel) the ``endpoint`` hook asks the
  sentinels where the master is on every connection attempt, ``check_role``
  has each new connection ask ``ROLE`` and drop itself unless it reached a
  master, and :meth:`RedisClient.follow_master` drops a connection left on a
  demoted master (``+switch-master``, or a ``READONLY`` reply).
- :meth:`RedisClient.replicated` is how a write waits for replicas
  (``[redis] min_replicas``): one ``WAIT`` per reactor turn covers every
  write the connection issued before it.  The stores call it themselves
  for the writes an ``A`` stands for; nothing above them sees the client.
- The Lua scripts live in ``imd/stores/lua/`` (the message log's snippets
  in ``imd/messagelog/lua/``), one file each, loaded by name
  (:meth:`Script.load`; shared snippets by :func:`compose_lua`).

Writes leave in the reactor turn that made them (``flusher``, see
imd.transport.flush).

The txredisapi internals used here (``BaseRedisProtocol``, its
``replyQueue``, the ``tryConvertData`` and ``replyReceived`` hooks its
parser calls, its ``lineReceived`` and ``bulkDataReceived`` with the
``line_mode``/``bulk_length``/``bulk_buffer`` state they keep, which
``_Connection.dataReceived`` drives for a whole read at once, and its
``connectionLost`` failing the replies awaited) are checked by
tests/test_private_attributes.py.
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

# How text is encoded to Redis and decoded from it (see the module).
TEXT_ERRORS = "surrogateescape"

# Error replies that say Redis cannot serve now, not that the call was wrong:
# they fail as StoreUnavailable (E unavailable; the migrator retries).
_NOT_SERVING = ("READONLY", "LOADING", "MASTERDOWN")


# --- Lua ---------------------------------------------------------------------------

_IMD = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where scripts and snippets are found by name: the stores' own, and the
# message log's (imd/messagelog/lua: the snippets that write and read an MQ
# entry, the one place that knows its format).  A name is in one of them only.
LUA_DIRECTORIES = (os.path.join(_IMD, "stores", "lua"), os.path.join(_IMD, "messagelog", "lua"))
_INCLUDE = "-- include:"
_LUA_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


@functools.lru_cache(maxsize=None)
def _lua_file(name: str) -> str:
    if not _LUA_NAME.match(name):
        raise ValueError("not a Lua file name: %r" % (name,))
    for directory in LUA_DIRECTORIES:
        path = os.path.join(directory, name + ".lua")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    raise FileNotFoundError("no Lua file %s.lua in %s" % (name, " or ".join(LUA_DIRECTORIES)))


def compose_lua(text: str) -> str:
    """``text`` with its includes resolved: the one way a Lua script shares
    code (Redis has no ``require``).

    A script or snippet that uses others names them on its first line,
    ``-- include: store_entry note_push``.  That line is replaced by the
    text of each ``<name>.lua`` named (:data:`LUA_DIRECTORIES`), in that
    order, each with its own includes resolved the same way before it; a snippet is put in once
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
    """The text Redis runs for ``<name>.lua``: the file, its includes resolved."""
    return compose_lua(_lua_file(name))


class Script:
    """A Lua script and its SHA-1 (for ``EVALSHA``).

    The scripts live in ``imd/stores/lua/`` and ``imd/messagelog/lua/``
    (:data:`LUA_DIRECTORIES`; package data, shipped in the wheel), one
    ``<name>.lua`` each with the comment that names its
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
        """The script ``<name>.lua`` (of :data:`LUA_DIRECTORIES`)."""
        return cls(lua_source(name), name)

    def __repr__(self) -> str:
        return "<Script %s %s>" % (self.name, self.sha[:8])


# The headers of arrays and bulk strings up to these sizes, made once
_ARRAY_HEADS = [b"*%d\r\n" % n for n in range(64)]
_BULK_HEADS = [b"$%d\r\n" % n for n in range(1024)]


def encode_command(args: Sequence[Arg], head: bytes = b"", head_count: int = 0) -> bytes:
    """One command in the Redis protocol; ``head``: its first ``head_count``
    arguments already encoded (:attr:`Script.evalsha`).  A ``str`` is
    written as UTF-8, a lone surrogate that stands for a byte as that byte
    (:data:`TEXT_ERRORS`)."""
    try:
        n = len(args) + head_count
        out = [_ARRAY_HEADS[n] if n < 64 else b"*%d\r\n" % n, head]
        for arg in args:
            kind = type(arg)
            if kind is bytes:
                value = arg
            elif kind is str:
                value = arg.encode("utf-8")   # (the errors argument here would cost 5-10% on PyPy)
            elif kind is int:
                value = b"%d" % arg
            elif kind is float:
                value = repr(arg).encode("ascii")
            else:
                value = str(arg).encode("utf-8", TEXT_ERRORS)
            size = len(value)
            out.append(_BULK_HEADS[size] if size < 1024 else b"$%d\r\n" % size)
            out.append(value)
            out.append(b"\r\n")
        return b"".join(out)
    except UnicodeEncodeError:
        # text holding a byte that was not UTF-8 (as replies come up): that byte
        return encode_command([arg.encode("utf-8", TEXT_ERRORS) if type(arg) is str else arg for arg in args],
                              head, head_count)


# --- connections -------------------------------------------------------------------

class _Connection(txredisapi.BaseRedisProtocol):
    """One connection: txredisapi's reply parser (nothing else of it), the
    one write path (:meth:`send`) and the watchdog of its replies.

    Made by :class:`_Factory`, which sets what it needs: ``owner`` (a
    RedisClient or RedisSubscriber, told through ``_authenticated(conn)``
    once AUTH/SELECT are done and ``_lost(conn)`` when it goes; None for
    :func:`ask_once`), ``clock``, ``timeout``, ``name`` and ``flusher``."""

    owner: Any = None
    clock: Any = None
    timeout: float = 5.0
    name: str = "redis"
    flusher: Any = None
    dropped: Optional[str] = None   # why the watchdog cut it
    issued: Deque[float]            # when each reply still awaited was asked for
    _watchdog: Optional[task.LoopingCall] = None

    def connectionMade(self) -> None:
        # Not txredisapi's: AUTH and SELECT go through send, under the watchdog.
        self.issued = deque()
        watchdog = self._watchdog = task.LoopingCall(self._check_replies)
        watchdog.clock = self.clock
        watchdog.start(max(0.05, self.timeout / 4.0), now=False)
        steps = []
        if self.password is not None:
            steps.append(("auth", ("AUTH", self.password)))
        if self.dbid is not None:
            steps.append(("set dbid=%s" % (self.dbid,), ("SELECT", self.dbid)))
        if not steps:
            self._authenticated()
            return
        replies = [self.send(encode_command(command)) for _, command in steps]
        defer.gatherResults(replies).addCallback(self._steps_answered, [what for what, _ in steps])

    def _steps_answered(self, replies: List[Any], steps: List[str]) -> None:
        for what, reply in zip(steps, replies):
            if isinstance(reply, Exception):
                if self.connected and not self.dropped:
                    address = self.transport.getPeer()
                    _log.error("{name}: redis at {host}:{port}: could not {what}: {why}", name=self.name,
                               host=getattr(address, "host", "?"), port=getattr(address, "port", 0),
                               what=what, why=str(reply))
                    self.transport.loseConnection()   # and the owner connects again
                return
        self._authenticated()

    def _authenticated(self) -> None:
        if self.owner is not None and self.connected and not self.dropped:
            self.owner._authenticated(self)

    def send(self, command: bytes) -> Deferred:
        """The one write path: ``command`` (encoded) written now; fires with
        its reply -- a value, or the exception txredisapi made of an error
        reply or of the connection's loss."""
        transport = self.transport
        transport.write(command)
        flusher = self.flusher
        if flusher is not None:
            flusher.written(transport)
        self.issued.append(self.clock.seconds())
        return self.replyQueue.get()

    def replyReceived(self, reply: Any) -> None:
        issued = self.issued
        if issued:
            issued.popleft()
        self.replyQueue.put(reply)

    # --- the reply parser's reading -------------------------------------------
    #
    # txredisapi's LineReceiver, once a bulk string ends inside a read,
    # pauses the transport and leaves the rest of that read to a
    # ``callLater(0)``: one bulk string per reactor turn, the socket not read
    # meanwhile.  A burst of pipelined replies each holding a bulk string
    # (a script's list mixing a long entry with integers, a bus message)
    # then took one turn each; on a busy node (PyPy, a burst of WebSocket
    # frames) the oldest call went past ``timeout`` and the watchdog dropped
    # the connection ("no reply in 1s"), failing every call in flight.
    # Here a read is parsed whole, in the call that delivers it: lines go to
    # txredisapi's ``lineReceived`` (which sets ``bulk_length`` and raw mode
    # for a bulk string) and each bulk string, once whole, to its
    # ``bulkDataReceived`` -- the same values, with no turn in between
    # (tests/test_redis_parser.py, against txredisapi's own parser too).

    _line_rest: bytes = b""   # the start of a line not yet ended
    line_mode: int       # txredisapi's: 0 inside a bulk string
    bulk_length: int     # txredisapi's: the bytes of that bulk string still to come, its CRLF included
    bulk_buffer: bytearray   # txredisapi's: what came of it

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        # (unpause: txredisapi's signature; this parser never pauses)
        if self._line_rest:
            data, self._line_rest = self._line_rest + data, b""
        pos, end = 0, len(data)
        transport = self.transport
        while pos < end:
            if self.line_mode:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._line_rest = data[pos:]
                    return
                line = data[pos:eol].decode("utf-8", TEXT_ERRORS)
                pos = eol + 2
                self.lineReceived(line)   # (a "$n" line: bulk_length = n + 2, raw mode)
            else:
                # in a bulk string: bulk_length bytes still to come, its CRLF included
                need = self.bulk_length
                take = min(need, end - pos)
                self.bulk_buffer.extend(data[pos:pos + take])   # (a bytearray: a long one grows in place)
                pos += take
                self.bulk_length = need = need - take
                if need:
                    return
                value = bytes(self.bulk_buffer[:-2])
                self.bulk_buffer = bytearray()
                self.line_mode = 1
                self.bulkDataReceived(value)
            if transport is not None and transport.disconnecting:
                return   # (as txredisapi: nothing more is read from a connection being closed)

    def tryConvertData(self, data: Any) -> Any:
        # Each bulk string, decoded once (see the module)
        return data.decode("utf-8", TEXT_ERRORS)

    def _check_replies(self) -> None:
        """The reply timeout: drop the link when its oldest awaited reply is late."""
        issued = self.issued
        if issued and self.clock.seconds() - issued[0] > self.timeout:
            self.drop("no reply in %gs" % (self.timeout,))

    def drop(self, why: str) -> None:
        """Cut the connection: every reply awaited fails (its owner connects again)."""
        if not self.connected or self.dropped:
            return
        self.dropped = why
        _log.warn("{name}: {why}; dropping the connection", name=self.name, why=why)
        if self.owner is not None:
            self.owner._lost(self)   # at once: nothing more is written on it
        self.transport.abortConnection()

    def connectionLost(self, why: Failure = protocol.connectionDone) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.running:
            watchdog.stop()
        if self.owner is not None:
            self.owner._lost(self)
        super().connectionLost(why)   # (txredisapi fails every reply awaited: ConnectionError)


class _Factory(protocol.Factory):
    noisy = False   # no "Starting factory" line for each reconnection

    def __init__(self, connection_class: type, clock: Any, timeout: float, name: str, owner: Any = None,
                 password: Optional[str] = None, dbid: Optional[int] = None, flusher: Any = None) -> None:
        self.connection_class = connection_class
        self.clock = clock
        self.timeout = timeout
        self.name = name
        self.owner = owner
        self.password = password
        self.dbid = dbid
        self.flusher = flusher

    def buildProtocol(self, addr: Any) -> _Connection:
        conn = self.connection_class(replyTimeout=None, password=self.password, dbid=self.dbid,
                                     convertNumbers=False)
        conn.factory = self
        conn.owner, conn.clock, conn.timeout, conn.name, conn.flusher = (
            self.owner, self.clock, self.timeout, self.name, self.flusher)
        return conn


def _is_master(reply: Any) -> bool:
    """``ROLE``'s first element is ``master`` (a replica says ``slave``, a
    sentinel ``sentinel``)."""
    return isinstance(reply, list) and bool(reply) and reply[0] == "master"


def _peer(conn: Any) -> Optional[_Peer]:
    transport = getattr(conn, "transport", None)
    if transport is None:
        return None
    peer = transport.getPeer()
    return (getattr(peer, "host", None), getattr(peer, "port", None))


def check_role(conn: _Connection, what: str) -> Deferred:
    """Ask ``ROLE`` on a connection past its AUTH/SELECT (nothing else is
    written on it yet): fires with the connection when it reached a master;
    otherwise the connection is dropped and the Deferred fails with
    StoreUnavailable (no answer within the timeout included: the watchdog)."""
    d = conn.send(encode_command(("ROLE",)))

    def answered(reply: Any) -> Any:
        if _is_master(reply):
            return conn
        if isinstance(reply, Exception):   # the connection went before ROLE's answer
            raise StoreUnavailable("%s: %s" % (what, conn.dropped or reply))
        host, port = _peer(conn) or ("?", 0)
        role = reply[0] if isinstance(reply, list) and reply else reply
        _log.warn("{what}: {host}:{port} is not a master (ROLE {role!r}); asking the sentinels again",
                  what=what, host=host, port=port, role=role)
        raise StoreUnavailable("%s:%s is not a master" % (host, port))

    def dropped(failure: Failure) -> Failure:
        if conn.transport is not None:
            conn.transport.abortConnection()
        return failure
    return d.addCallback(answered).addErrback(dropped)


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
    it cannot connect within ``timeout``, gets an error reply or no reply
    within ``timeout`` (the watchdog of every connection)."""
    where = "%s:%d" % (host, port)
    factory = _Factory(_Connection, clock, timeout, "sentinel %s" % (where,))

    def connected(conn: _Connection) -> Deferred:
        return conn.send(encode_command(args)).addCallback(answered, conn)

    def answered(reply: Any, conn: _Connection) -> Any:
        if conn.transport is not None:
            conn.transport.loseConnection()
        if isinstance(reply, Exception):
            raise StoreUnavailable("%s: %s" % (where, "no answer in %gs" % timeout if conn.dropped else reply))
        return reply

    def failed(failure: Failure) -> None:
        if failure.check(StoreUnavailable):
            failure.raiseException()
        raise StoreUnavailable("%s: %s" % (where, failure.getErrorMessage()))
    d = TCP4ClientEndpoint(reactor, host, port, timeout=timeout).connect(cast(IProtocolFactory, factory))
    return d.addCallback(connected).addErrback(failed)


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
        factory = _Factory(self.connection_class, self._clock, self.timeout, self.name, owner=self,
                           password=self.address.password, dbid=self.address.db, flusher=self._flusher)
        self._service = ClientService(endpoint, cast(IProtocolFactory, factory),
                                      retryPolicy=_retry_policy(self._max_retry_delay),
                                      clock=self._clock)
        self._service.startService()
        # A dead link is noticed by its watchdog once a PING goes unanswered.
        timer = task.LoopingCall(self._ping)
        timer.clock = self._clock
        timer.start(max(1.0, self.timeout), now=False)
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
        check_role(conn, self.name).addCallbacks(self._ready, lambda f: None)

    def _ready(self, conn: _Connection) -> None:
        if conn.transport is None or not conn.connected or conn.dropped:
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
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
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
        d = conn.send(encode_command(("WAIT", self.min_replicas, milliseconds)))
        d.addBoth(self._replied).addBoth(self._wait_answered, batch, now)

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
            d = conn.send(encode_command(args))
        except Exception as e:
            return defer.fail(StoreUnavailable("redis: %s" % (e,)))
        return d.addBoth(self._replied)

    def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Deferred:
        """``script`` with ``keys`` and ``args``: the reply, as :meth:`command`."""
        conn = self._conn
        if conn is None:
            return defer.fail(StoreUnavailable("redis is not connected"))
        try:
            if script.sha not in self._loaded:
                # Redis runs commands in order: the EVALSHA below finds it loaded.
                self._loaded.add(script.sha)
                conn.send(encode_command(("SCRIPT", "LOAD", script.text))).addBoth(
                    self._replied).addErrback(lambda f: None)
            d = conn.send(encode_command((len(keys), *keys, *args), script.evalsha, 2))
        except Exception as e:
            return defer.fail(StoreUnavailable("redis: %s" % (e,)))
        # one callback for the reply (each one on a Deferred costs ~1.5 us)
        return d.addBoth(self._script_replied, conn, script, keys, args)

    def _replied(self, reply: Any) -> Any:
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

    def _script_replied(self, reply: Any, conn: _Connection, script: Script, keys: Sequence[Arg],
                        args: Sequence[Arg]) -> Any:
        if (isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("NOSCRIPT")
                and self._conn is conn):
            # An operator's SCRIPT FLUSH: send the text, and load it again next time.
            self._loaded.discard(script.sha)
            d = conn.send(encode_command(("EVAL", script.text, len(keys), *keys, *args)))
            return d.addBoth(self._replied)
        return self._replied(reply)

    # --- timers ------------------------------------------------------------------

    def _ping(self) -> None:
        if self._conn is not None:
            # A dead link is noticed here: the watchdog drops it.
            self.command("PING").addErrback(lambda f: None)


# --- pub/sub ---

class _Subscription(_Connection):
    """A subscribed connection: each message goes to its subscriber's
    ``on_message``; the replies (``SUBSCRIBE``'s) as on any connection."""

    # Every packet this node delivers comes through here (contract §10: the
    # store scripts publish them, this node's own included).  txredisapi's
    # parser splits its whole buffer once per line (quadratic in what one
    # read brings): the messages are read here instead, by offset, and
    # anything else (the SUBSCRIBE replies) goes to it.
    _MESSAGE = b"*3\r\n$7\r\nmessage\r\n$"
    _rest = b""

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        # (the reply parser mid-reply: it holds the start of a line, or it is
        # reading a bulk string; see _Connection.dataReceived)
        parsing = self._line_rest or not self.line_mode
        if unpause or parsing:
            return super().dataReceived(data, unpause)
        buf = self._rest + data if self._rest else data
        self._rest = b""
        owner = self.owner
        head, on_message, raw = self._MESSAGE, owner.on_message, getattr(owner, "raw", False)
        at, end = 0, len(buf)
        while at < end:
            if not buf.startswith(head, at):
                if head.startswith(buf[at:at + len(head)]):
                    break   # the start of a message: the rest comes with the next read
                return super().dataReceived(buf[at:])
            size_at = at + len(head)
            eol = buf.find(b"\r\n", size_at)
            if eol < 0:
                break
            payload_head = eol + 2 + int(buf[size_at:eol]) + 2   # past the channel
            eol = buf.find(b"\r\n", payload_head)
            if eol < 0:
                break
            start = eol + 2
            stop = start + int(buf[payload_head + 1:eol])
            if stop + 2 > end:
                break
            at = stop + 2
            on_message(buf[start:stop] if raw else buf[start:stop].decode("utf-8", TEXT_ERRORS))
        if at < end:
            self._rest = buf[at:]
        return None

    def replyReceived(self, reply: Any) -> None:
        if type(reply) is list and len(reply) == 3 and reply[0] == "message":
            message = reply[2]
            if getattr(self.owner, "raw", False) and isinstance(message, str):
                message = message.encode("utf-8", TEXT_ERRORS)
            self.owner.on_message(message)
        else:
            super().replyReceived(reply)


class RedisSubscriber(Service):
    """A connection subscribed to ``channels``: ``on_message(message)`` for
    each message (str, decoded as every reply; bytes as Redis sent it with
    ``raw``: the node's bus, which reads its frames as bytes),
    ``on_subscribed()`` after each (re)subscription, ``on_lost()`` when the
    subscription is gone (it comes back by itself)."""

    def __init__(self, address: Any, timeout: float, clock: Any, reactor: Any, channels: Iterable[str],
                 on_message: Callable[[Any], None], on_subscribed: Callable[[], None] = lambda: None,
                 on_lost: Callable[[], None] = lambda: None,
                 endpoint: Optional[Callable[[], Any]] = None, check_role: bool = False,
                 max_retry_delay: float = 5.0, name: str = "redis subscription", raw: bool = False) -> None:
        self.address = address
        self.raw = raw
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
        # (channels are not per db: no SELECT)
        factory = _Factory(_Subscription, self._clock, self.timeout, self.name, owner=self,
                           password=self.address.password)
        self._service = ClientService(endpoint, cast(IProtocolFactory, factory),
                                      retryPolicy=_retry_policy(self._max_retry_delay),
                                      clock=self._clock)
        self._service.startService()

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        service, self._service = self._service, None
        return service.stopService() if service is not None else None

    def _authenticated(self, conn: _Subscription) -> None:
        self._connecting = conn
        d = check_role(conn, self.name) if self.check_role else defer.succeed(conn)
        d.addCallback(self._subscribe)
        d.addCallbacks(lambda _: self._subscribed(conn), lambda f: self._failed(f, conn))

    def _subscribe(self, conn: _Subscription) -> Deferred:
        def answered(replies: List[Any]) -> None:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise StoreUnavailable("%s: SUBSCRIBE: %s" % (self.name, conn.dropped or reply))
        replies = [conn.send(encode_command(("SUBSCRIBE", channel))) for channel in self.channels]
        return defer.gatherResults(replies).addCallback(answered)

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


# --- stores ------------------------------------------------------------------------

class RedisStore:
    """What every Redis store is: its client is its own (``_client``):
    nothing above the stores reaches through one to Redis.  A store method
    that writes what an ``A`` stands for returns its result only once the
    write is on ``[redis] min_replicas`` replicas (:meth:`_replicated`)."""

    _client: RedisClient

    @property
    def connected(self) -> bool:
        """Redis is reachable now (a connection is up, past its AUTH/SELECT)."""
        return self._client.connected

    def wait_connected(self, timeout: Optional[float] = None) -> Deferred:
        """Fires once Redis is reachable; StoreUnavailable after ``timeout``
        (default ``[redis] timeout``)."""
        return self._client.wait_connected(timeout)

    @property
    def master_address(self) -> Optional[str]:
        """``host:port`` of the Redis this store's connection reached (None
        while down): behind Sentinel, the master it found."""
        return self._client.master_address

    def _replicated(self, d: Deferred) -> Deferred:
        """``d``, firing with its result once every write issued so far is
        on ``min_replicas`` replicas (one ``WAIT`` per reactor turn for all:
        :meth:`RedisClient.replicated`); as it is without ``min_replicas``."""
        client = self._client
        return d.addCallback(client.replicated) if client.min_replicas else d

"""Redis: every key imd uses, the Lua scripts, and calls that never hang.

txredisapi waits forever for a connection that is down, so every call here
fails fast with :class:`StoreUnavailable` when no connection is up and times
out after ``[redis] timeout`` seconds otherwise.
"""

import hashlib
from collections import deque

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.logger import Logger

from imd.errors import StoreUnavailable

_log = Logger()


class RedisKeys:
    """Key names, with the optional ``[redis] prefix`` in front of each."""

    def __init__(self, prefix=""):
        self.prefix = prefix
        self.public_key = prefix + "publicKey"
        self.private_key = prefix + "privateKey"
        self.mq = prefix + "MQ"
        # the migrator's (imd/stores/queue.py): the batch in flight, the
        # leader lock, and stored entries it could not read
        self.mq_processing = prefix + "MQ:processing"
        self.mq_lock = prefix + "MQ:lock"
        self.mq_dead = prefix + "MQ:dead"

    def friends(self, uid):
        return "%sURS:%d" % (self.prefix, uid)

    def used_jti(self, jti):
        return "%sjti:%s" % (self.prefix, jti)

    def dedup(self, uid, dedup_id):
        return "%sdedup:%d:%s" % (self.prefix, uid, dedup_id)


# What storing a message can come to (imd.stores.presence.STORE_MESSAGE).
_SCRIPT_SHA = {}  # script text -> its SHA-1, for EVALSHA

STORED, NOT_FRIEND, DUPLICATE = "stored", "not_friend", "duplicate"
STORE_RESULTS = {1: STORED, 0: NOT_FRIEND, 2: DUPLICATE}

# Friendship is symmetric (contract §6 "friend add A B": both directions).
SET_FRIENDS = """
redis.call(ARGV[1], KEYS[1], ARGV[3])
redis.call(ARGV[1], KEYS[2], ARGV[2])
return 1
"""


def _encode_command(conn, args):
    """One command in the Redis protocol (as txredisapi's _build_command)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is bytes:
            value = arg
        elif type(arg) is str:
            value = arg.encode("utf-8")
        elif type(arg) is int:
            value = b"%d" % arg
        else:
            value = conn._encode_value(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(out)


def _replied(result, issued):
    if issued:
        issued.popleft()
    return result


def connect(address, timeout, poolsize=1):
    """A lazy, self-reconnecting txredisapi pool.  Never blocks."""
    return txredisapi.lazyConnectionPool(
        host=address.host, port=address.port, dbid=address.db,
        password=address.password, poolsize=poolsize, reconnect=True,
        connectTimeout=timeout, replyTimeout=timeout, convertNumbers=False)


class RedisClient(Service):
    """One connection pool plus the fail-fast/timeout rule and a keep-alive PING.

    All commands go down one connection (``poolsize=1``) so Redis runs them in
    the order they were issued: that is what keeps one sender's messages in
    order without waiting for each reply.
    """

    def __init__(self, address, timeout, clock, poolsize=1, flusher=None):
        self.address = address
        self._flusher = flusher      # imd.transport.flush.TurnFlusher: commands leave this turn
        self.timeout = timeout
        self._clock = clock
        self._poolsize = poolsize
        self._pool = None
        self._keepalive = None
        self._scripts_conn = None    # the connection _scripts_loaded and _issued are about
        self._scripts_loaded = set()
        self._issued = deque()       # when each eval_script reply still awaited was asked for
        self._watchdog = None

    def startService(self):
        super().startService()
        self._pool = connect(self.address, self.timeout, self._poolsize)
        self._keepalive = task.LoopingCall(self._ping)
        self._keepalive.clock = self._clock
        self._keepalive.start(max(1.0, self.timeout), now=False)
        self._watchdog = task.LoopingCall(self._check_replies)
        self._watchdog.clock = self._clock
        self._watchdog.start(max(0.05, self.timeout / 4.0), now=False)

    def stopService(self):
        super().stopService()
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            return pool.disconnect()

    @property
    def connected(self):
        return self._pool is not None and self._pool._factory.size > 0

    def wait_connected(self, timeout=None):
        """Fires once a connection is up; StoreUnavailable after ``timeout``."""
        deadline = self._clock.seconds() + (self.timeout if timeout is None else timeout)

        def check():
            if self.connected:
                return None
            if self._clock.seconds() >= deadline:
                raise StoreUnavailable("cannot connect to redis at %s:%d"
                                       % (self.address.host, self.address.port))
            return task.deferLater(self._clock, 0.02, check)
        return defer.maybeDeferred(check)

    def _ping(self):
        if self.connected:
            # A dead link is noticed here: the reply timeout aborts it and
            # txredisapi reconnects.
            self.call("PING").addErrback(lambda f: None)

    def call(self, method, *args):
        """``self.call("sismember", key, member)`` or a raw command name."""
        if not self.connected:
            return defer.fail(StoreUnavailable("redis is not connected"))
        try:
            if method.isupper():
                d = self._pool.execute_command(method, *args)
            else:
                d = getattr(self._pool, method)(*args)
        except Exception as e:
            return defer.fail(StoreUnavailable("redis: %s" % (e,)))
        d.addTimeout(self.timeout, self._clock)
        d.addErrback(self._unavailable)
        return d

    def eval_script(self, script, keys, args):
        """``EVALSHA`` written straight on the connection: the hot path.

        ``call("eval", ...)`` cost about twice as much per message: txredisapi's
        ConnectionHandler.__getattr__ wrapper, an inlineCallbacks
        getConnection, a SHA-1 of the script text, its generic argument
        encoder, an extra Deferred and a timer per command, and a second timer
        of ours.  Here the command is encoded once and written on the single
        connection, and its Deferred is the one txredisapi's reply queue fires
        (replies come back in the order commands went out).  The reply timeout
        is one watchdog (:meth:`_check_replies`) that drops the link when the
        oldest reply is late, which fails every call in flight, as before.

        The script is loaded with ``SCRIPT LOAD`` on each new connection ahead
        of its first ``EVALSHA`` (Redis runs them in order), so ``NOSCRIPT``
        only follows an operator's ``SCRIPT FLUSH``; then the text is sent
        with ``EVAL``, as txredisapi did.
        """
        conn = self._live_connection()
        if conn is None:
            return defer.fail(StoreUnavailable("redis is not connected"))
        try:
            sha = _SCRIPT_SHA.get(script)
            if sha is None:
                sha = _SCRIPT_SHA[script] = hashlib.sha1(script.encode("utf-8")).hexdigest()
            if sha not in self._scripts_loaded:
                self._scripts_loaded.add(sha)
                self._send(conn, _encode_command(conn, ("SCRIPT", "LOAD", script))).addErrback(lambda f: None)
            d = self._write(conn, _encode_command(conn, ("EVALSHA", sha, len(keys), *keys, *args)))
        except Exception as e:
            return defer.fail(StoreUnavailable("redis: %s" % (e,)))
        # One callback for the reply (each one on a Deferred costs ~1.5 us).
        d.addBoth(self._script_replied, self._issued, conn, script, keys, args)
        return d

    def _live_connection(self):
        """The pool's one connection when it is up (what the direct writes of
        :meth:`eval_script` and :meth:`command` go down), or None.  A new
        connection starts with no script loaded and no reply awaited."""
        factory = self._pool._factory if self._pool is not None else None
        if factory is None or not factory.size:
            return None
        conn = factory.pool[0]
        if not conn.connected:
            return None
        if self._scripts_conn is not conn:
            self._scripts_conn, self._scripts_loaded, self._issued = conn, set(), deque()
        return conn

    def command(self, *args):
        """One plain command written straight on the connection, as
        :meth:`eval_script` does (for the per-login ``SET`` of a token id)."""
        conn = self._live_connection()
        if conn is None:
            return defer.fail(StoreUnavailable("redis is not connected"))
        try:
            d = self._write(conn, _encode_command(conn, args))
        except Exception as e:
            return defer.fail(StoreUnavailable("redis: %s" % (e,)))
        d.addBoth(self._command_replied, self._issued)
        return d

    def _write(self, conn, command):
        """``command`` (encoded) down ``conn``, leaving this reactor turn;
        the Deferred of its reply, which comes in the order commands went."""
        conn.transport.write(command)
        if self._flusher is not None:
            self._flusher.written(conn.transport)
        self._issued.append(self._clock.seconds())
        return conn.replyQueue.get()

    def _command_replied(self, reply, issued):
        if issued:
            issued.popleft()
        if isinstance(reply, Failure):
            return self._unavailable(reply)
        if isinstance(reply, Exception):
            return self._unavailable(Failure(reply))
        return reply

    def _script_replied(self, reply, issued, conn, script, keys, args):
        if issued:
            issued.popleft()
        if isinstance(reply, Failure):
            return self._unavailable(reply)
        if isinstance(reply, Exception):   # an error reply, as txredisapi's handle_reply raises it
            if isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("NOSCRIPT"):
                if self._scripts_conn is conn:
                    self._scripts_loaded.clear()
                d = conn.execute_command("EVAL", script, len(keys), *keys, *args)
                return d.addErrback(self._unavailable)
            return self._unavailable(Failure(reply))
        return reply

    def _send(self, conn, command):
        d = self._write(conn, command)
        d.addBoth(_replied, self._issued)
        d.addCallback(conn.handle_reply)
        return d

    def _check_replies(self):
        """The reply timeout of :meth:`eval_script` calls: abort a link whose
        oldest outstanding reply is older than ``timeout``."""
        issued, conn = self._issued, self._scripts_conn
        if issued and conn is not None and self._clock.seconds() - issued[0] > self.timeout:
            _log.warn("redis: no reply in {timeout}s; dropping the connection", timeout=self.timeout)
            issued.clear()
            if conn.transport is not None:
                conn.transport.abortConnection()

    @staticmethod
    def _unavailable(failure):
        if failure.check(txredisapi.ResponseError, txredisapi.ScriptDoesNotExist):
            return failure
        raise StoreUnavailable("redis: %s" % (failure.getErrorMessage(),))


class RedisStore:
    """What imd keeps in Redis, as small typed operations."""

    def __init__(self, client, prefix="", dedup_ttl=3600):
        self.client = client
        self.keys = RedisKeys(prefix)
        self.dedup_ttl = dedup_ttl

    # keys (contract §1, §5)
    def get_public_key(self):
        return self.client.call("GET", self.keys.public_key)

    def get_private_key(self):
        return self.client.call("GET", self.keys.private_key)

    @defer.inlineCallbacks
    def set_key_pair(self, public_pem, private_pem, force=False):
        """Store a key pair; without ``force`` only when none is set.  True if set."""
        if not force:
            existing = yield self.client.call("EXISTS", self.keys.public_key, self.keys.private_key)
            if int(existing):
                return False
        yield self.client.call("MSET", self.keys.public_key, public_pem,
                               self.keys.private_key, private_pem)
        return True

    def claim_jti(self, jti, expires_at):
        """Remember a token id until it expires; False if it was seen before."""
        d = self.client.command("SET", self.keys.used_jti(jti), "1", "NX", "EXAT", int(expires_at))
        return d.addCallback(lambda reply: reply is not None)

    # friends (contract §5 URS:<uid>)
    def add_friends(self, a, b):
        return self.client.call("eval", SET_FRIENDS, [self.keys.friends(a), self.keys.friends(b)], ["SADD", a, b])

    def remove_friends(self, a, b):
        return self.client.call("eval", SET_FRIENDS, [self.keys.friends(a), self.keys.friends(b)], ["SREM", a, b])

    def list_friends(self, uid):
        d = self.client.call("SMEMBERS", self.keys.friends(uid))
        return d.addCallback(lambda members: sorted(int(m) for m in members))

    def are_friends(self, uid, other):
        d = self.client.call("SISMEMBER", self.keys.friends(uid), other)
        return d.addCallback(lambda reply: bool(int(reply)))

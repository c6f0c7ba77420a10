"""This test process's own Redis db index and MySQL database.

Every trial process (``trial tests``, or each worker of ``trial -j N``) picks
its own, so a developer's data (``make run``: db 0, database ``imd``) and
other runs beside it are never flushed, and it removes them when it exits.

- Redis: a db index among 1..14 (0 is the default of ``make run``, 9 is
  bench/run.py's, 15 bench/migrator.py's), leased by a key inside that db, set only if absent and expiring
  ``LEASE_TTL`` seconds after its last renewal (a daemon thread renews it
  while the process lives). A db is taken only when it has no lease and is
  empty or was a test run's (a run that died: its lease expired, its data is
  flushed). Tests flush the db with ``FLUSH_KEEPING_LEASE``, which puts the
  lease back in the same step. At exit the db is flushed, lease and all.
- MySQL: ``imd_test_<start, Unix s>_<pid>_<random>``, dropped at exit; such
  databases older than a day are a dead run's and are dropped on start.
- ``IMD_TEST_REDIS_DB`` / ``IMD_TEST_MYSQL_DB`` force a choice (still leased,
  still removed at exit).

Blocking code on plain sockets: it runs at import time of a test, at exit and
in the renewal thread, where the reactor may not be running.
"""

import atexit
import os
import re
import socket
import sys
import threading
import time

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
BENCH_DBS = (9, 15)    # bench/run.py's, bench/migrator.py's
CANDIDATE_DBS = [db for db in range(1, 16) if db not in BENCH_DBS]
LEASE_KEY = "imd-test:lease"    # value: who holds the db; expires unless renewed
RUN_MARK = "imd-test:run"       # no expiry: the db is a test run's, free to flush once unleased
LEASE_TTL = 60.0
RENEW_EVERY = 10.0
MYSQL_PREFIX = "imd_test_"
STALE_AFTER = 86400.0
# (a run's own database, or one a test derived from its name: <name>_platform)
_MYSQL_NAME = re.compile(r"^imd_test_(\d+)_(\d+)_([0-9a-f]+)(_[a-z]+)?$")

# KEYS: lease, mark; ARGV: owner, ttl ms.  1 = taken, 0 = leased by a live
# run, -1 = holds data that is not a test run's.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('DBSIZE') > 0 and redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
redis.call('FLUSHDB')
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], '1')
return 1
"""
# forced choice: take the db unless a live run of someone else holds it
_FORCE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], '1')
return 1
"""
# 1 = renewed, 0 = the lease is someone else's now (this process stalled past LEASE_TTL)
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
FLUSH_KEEPING_LEASE = """
redis.call('FLUSHDB')
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], '1')
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('FLUSHDB')
return 1
"""


class IsolationError(Exception):
    """No Redis db or MySQL database could be chosen for this run."""


def redis_command(db: int, *args, port: int = REDIS_PORT):
    """Blocking: one command on ``db`` of the Redis on ``port``; its decoded reply."""
    with socket.create_connection((REDIS_HOST, port), timeout=5) as sock:
        stream = sock.makefile("rb")
        for command in (("SELECT", db), args):
            parts = [str(a).encode("utf-8") for a in command]
            sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
            reply = _read_reply(stream)
        return reply


def _read_reply(stream):
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise IsolationError("redis: " + rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if int(rest) < 0:
            return None
        data = stream.read(int(rest) + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        return [_read_reply(stream) for _ in range(max(int(rest), 0))]
    raise IsolationError("redis: unexpected reply %r" % line)


def _script(port, db, script, owner):
    return redis_command(db, "EVAL", script, 2, LEASE_KEY, RUN_MARK, owner, int(LEASE_TTL * 1000), port=port)


class RunStores:
    """The Redis db and MySQL database of this process, chosen on first use."""

    def __init__(self, environ=None, redis_port=REDIS_PORT, candidate_dbs=CANDIDATE_DBS):
        environ = os.environ if environ is None else environ
        self.redis_port = redis_port
        self.candidate_dbs = list(candidate_dbs)
        self.pid = os.getpid()
        self.started = int(time.time())
        self.owner = "%s:%d:%s" % (socket.gethostname(), self.pid, os.urandom(4).hex())
        self._forced_db = environ.get("IMD_TEST_REDIS_DB") or None
        self._forced_mysql = environ.get("IMD_TEST_MYSQL_DB") or None
        self._db = None
        self._released = False
        self._mysql = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # --- Redis ------------------------------------------------------------

    def redis_db(self) -> int:
        with self._lock:
            if self._db is None:
                self._db = self._lease()
                threading.Thread(target=self._renew, name="imd-test-lease", daemon=True).start()
                atexit.register(self.release_redis)
            return self._db

    def _lease(self):
        if self._forced_db is not None:
            db = int(self._forced_db)
            if not 1 <= db <= 15:
                raise IsolationError("IMD_TEST_REDIS_DB=%s: a test run never uses db 0; give 1..15" % db)
            taken = _script(self.redis_port, db, _FORCE, self.owner)
            if taken != 1:
                raise IsolationError("IMD_TEST_REDIS_DB=%d is leased by another test run (%s): "
                                     "unset it to get a free db" % (db, taken))
            return db
        foreign = []
        for db in self.candidate_dbs:
            taken = _script(self.redis_port, db, _CLAIM, self.owner)
            if taken == 1:
                return db
            if taken == -1:
                foreign.append(db)
        raise IsolationError("no free Redis db for this test run among %s: the others are leased by "
                             "live runs, and %s hold data that is not a test run's (flush those by "
                             "hand if nobody uses them, or set IMD_TEST_REDIS_DB)" % (self.candidate_dbs, foreign))

    def flush_args(self):
        """(script, keys, args) that flush this run's db and keep its lease."""
        return FLUSH_KEEPING_LEASE, [LEASE_KEY, RUN_MARK], [self.owner, int(LEASE_TTL * 1000)]

    def _renew(self):
        while not self._stop.wait(RENEW_EVERY):
            try:
                if _script(self.redis_port, self._db, _RENEW, self.owner) != 1:
                    sys.stderr.write("imd tests: the lease on redis db %d was lost: this run "
                                     "stalled over %ss\n" % (self._db, LEASE_TTL))
                    return
            except (OSError, IsolationError):
                pass  # Redis away for a moment (a test may stop it): try again

    def release_redis(self) -> None:
        """Flush this run's db, lease and all (once; at exit at the latest)."""
        self._stop.set()
        atexit.unregister(self.release_redis)
        if self._db is not None and not self._released and os.getpid() == self.pid:
            self._released = True
            try:
                _script(self.redis_port, self._db, _RELEASE, self.owner)
            except (OSError, IsolationError) as e:
                sys.stderr.write("imd tests: could not flush redis db %d: %s\n" % (self._db, e))

    # --- MySQL ------------------------------------------------------------

    def mysql_db(self) -> str:
        with self._lock:
            if self._mysql is None:
                if self._forced_mysql is not None:
                    self._mysql = self._forced_mysql
                else:
                    self._mysql = "%s%d_%d_%s" % (MYSQL_PREFIX, self.started, self.pid, os.urandom(3).hex())
                    _mysql_run(self._drop_stale)
                atexit.register(self.drop_mysql)
            return self._mysql

    def _drop_stale(self, cursor):
        cursor.execute("SHOW DATABASES LIKE %s", (r"imd\_test\_%",))
        for (name,) in cursor.fetchall():
            match = _MYSQL_NAME.match(name)
            if match and time.time() - int(match.group(1)) > STALE_AFTER:
                cursor.execute("DROP DATABASE IF EXISTS `%s`" % name)

    def drop_mysql(self) -> None:
        if self._mysql is not None and os.getpid() == self.pid:
            try:
                _mysql_run(lambda cursor: cursor.execute("DROP DATABASE IF EXISTS `%s`" % self._mysql))
            except Exception as e:
                sys.stderr.write("imd tests: could not drop database %s: %s\n" % (self._mysql, e))


def _mysql_run(work):
    import pymysql
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            work(cursor)
    finally:
        conn.close()


RUN = RunStores()

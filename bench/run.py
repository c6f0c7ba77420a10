"""``make bench``: imd on CPython and on PyPy against the original design's
Node stack and two relays, on this machine, in one run.

Five servers, measured in the same run so that the machine's noise hits all
of them alike:

- ``node_original``: the original design in Node, whole stack
  (``bench/original``: a ``ws`` server verifying RS256 wstokens and storing
  each message with one Lua call -- friend check ``URS:<from>`` and ``LPUSH
  MQ`` -- before the ack, plus a migrator moving ``MQ`` into MariaDB in
  batches of 500, crash-safe with ``MQ:processing``);
- ``node``: the bare Node relay (``bench/baseline_node.js``: ``ws`` +
  ioredis, ``LPUSH`` before the ack, no auth, no friend check, no MySQL);
- ``baseline``: the Python baseline (``bench/baseline_relay.py``: Twisted +
  Autobahn, ``LPUSH`` with txredisapi before the ack);
- ``imd``: imd on CPython (``.venv``), every guarantee on;
- ``imd_pypy``: imd on PyPy (``.venv-pypy3``, Debian's pypy3), every
  guarantee on, each measured run after 8 s at load (its JIT's warm-up).

Neither relay authenticates, checks friends or deduplicates.  It sets up
its own Redis db index and MySQL databases (never db 0 / ``imd``; each imd
and the Node original design under a key prefix of its own in that db and
with a MySQL database of its own), starts the servers (imd as the systemd
units run it: ws+http in one process, the migrator in its own at nice 10;
the Node original design's migrator at nice 10 too), drives them with
``bench/loadgen`` (Node ``ws``) over loopback, reads CPU and RSS from /proc
(Redis's from INFO), and writes:

- ``bench/results/<stamp>.json``: everything measured;
- the summary tables in ``docs/performance.md`` (between the bench markers).

Two runs on one machine would share the Redis db and MySQL databases: the
run holds an exclusive ``flock`` on ``/tmp/imd-bench.lock`` (the lock other
benchmark runs take with ``flock /tmp/imd-bench.lock ...``) from start to
end, and says so when it has to wait.  Run under that wrapper, it uses the
caller's lock.

Every step is bounded in count and time and stops by itself.  Only the
processes started here are stopped, by pid.

    .venv/bin/python bench/run.py [--quick] [--no-pypy]
        [--only throughput,receipts,c2000,latency,idle,login,migrate,sync,rooms,crash,layouts,replicas,storm,ping]
        [--servers baseline,imd,node,imd_pypy,node_original]
    .venv/bin/python bench/run.py --report bench/results/<stamp>.json   (re-render a stored run)

``throughput``: closed loop, C=200 W=8, two runs of each server, the second
round in the reverse order of the first; every ratio is against the same
round's other servers.  For each: msgs/s, ack p50/p99, and the CPU per
message of every process of its stack (server, migrator, Redis, MariaDB:
``stack_cpu``) with their sum, and for the stacks with a migrator the rows
in MariaDB against the messages acked.  ``receipts`` is the C=200 W=8 run
again with receipts in the load mix (contract §7.1): each delivered message
answered by an ``R`` delivered, every tenth by an ``R`` read too (the relays
relay an ``R`` like any packet; the original design has no receipts and is
left out).  ``c2000``: C=2000 W=1, once each.  ``latency``: open loop at
half of each imd's C=200 W=8 maximum (the mean of its two runs), with the
other servers at the same rate.  ``crash``: the Node original design's
migrator killed (SIGKILL) 12 times during a 100,000-message drain; every
message must be one row.

``layouts``: imd's two ways of running the migrator beside the ws role,
on CPython and on PyPy, C=200 W=8, two rounds (the second in the reverse
order): ``split`` (ws+http in one process, the migrator in its own at nice
10, as the systemd units and the runs above), ``default`` (one ``twistd
imd`` with every role, as ``make run``: the migrator is its child process,
``[imd] migrator = child``) and ``inline`` (one process, the migrator on its
reactor: ``[imd] migrator = inline``, the default layout before issue 30).
Each run on a freshly started daemon, the load started once the layout's
migrator leads (``MQ:lock`` holds a token of one of its processes: a PyPy
migrator at nice 10 started beside a loaded ws process took 1-19 s to lead,
a varying part of the measured window); the CPU columns count the
migrator's process in both layouts that have one, and each process's cores
and its main thread's wait for a core (/proc/PID/schedstat) are kept.
``--layouts split,default`` and ``--layout-rounds N`` narrow or lengthen the
comparison (A B B A A B ...).

``sync`` (a few seconds): ``H {"sync": 0}`` of 1,000 messages for one user,
the first 500 migrated and the daemon's migrator process then stopped
(SIGSTOP, continued after), so half are still in Redis; pages of 500, one
request at a time (bench/sync_probe.py): p50/p99 ms of the whole sync.

``ping`` (not in the default set; a few seconds): the keepalive's cost, 20
connections each sending 500 ``P`` at once and reading the replies, 20
times (bench/sync_probe.py): CPU µs per ``P`` of the ws process and Redis.

``rooms`` (a few seconds): room fan-out (contract v3 §9): a 4-member room
made with ``imd-admin room create``, one member sending 20,000 ``t`` into it
(W=32), the three others receiving (bench/rooms_probe.py): deliveries/s
from the first send to the last delivery.

``storm`` (not in the default set: 3-4 minutes at 10,000 connections;
``--only storm``, ``--storm-connections N``, default 10,000): N clients of
the load generator (bench/loadgen/storm.js) logged in to one imd ws process
(CPython, default limits), which is then restarted (SIGTERM), killed
(SIGKILL), restarted with ``max_handshakes_per_address`` set, and killed
with a listen queue of 4096; every client comes back with the SDK's backoff,
a fresh token and one ``H``: the time until 50/99/100 % are back, the
refusals by reason, the process's CPU and peak RSS.

``replicas`` (not in the default set; ``--only replicas``, or ``--replicas``
to add it): a private Redis master and one replica on free loopback ports,
and imd's (CPython) message throughput (closed loop) and ack latency (open
loop, the same offered rate) with ``[redis] min_replicas`` 0, then 1.
"""

import argparse
import fcntl
import json
import os
import platform
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import jwt  # noqa: F401  (issue_token signs with PyJWT)
import pymysql
from cryptography.hazmat.primitives import serialization

from imd.auth import generate_key_pair, issue_token

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV_BIN = os.path.dirname(sys.executable)
PYPY_VENV = os.path.join(ROOT, ".venv-pypy3")
RESULTS = os.path.join(HERE, "results")
DOC = os.path.join(ROOT, "docs", "performance.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
LOCK_PATH = "/tmp/imd-bench.lock"

REDIS_DB = int(os.environ.get("IMD_BENCH_REDIS_DB", "9"))
REDIS_PORT = 6379   # the replicas run points this at a private master
MYSQL_DB = os.environ.get("IMD_BENCH_MYSQL_DB", "imd_bench")
# IMD_BENCH_PORT moves the listeners (Python baseline, imd ws, imd http, Node
# reference, imd on PyPy ws and http) so that two checkouts can bench one
# after the other without a port clash
BASE_PORT = int(os.environ.get("IMD_BENCH_PORT", "8790"))
IMD_PORT, HTTP_PORT = BASE_PORT + 1, BASE_PORT + 2
NODE_PORT = BASE_PORT + 3
PYPY_PORT, PYPY_HTTP_PORT = BASE_PORT + 4, BASE_PORT + 5
ORIGINAL_PORT = BASE_PORT + 6
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

assert REDIS_DB != 0 and MYSQL_DB != "imd", "the bench never touches db 0 / database imd"

# the five servers, in the order of the first round and of the tables (each
# target's pair is next to each other in both orders of the rounds)
ORDER = ("baseline", "imd", "node", "imd_pypy", "node_original")
LABELS = {"node": "bare Node relay (ws + ioredis LPUSH)", "imd": "imd, CPython",
          "baseline": "Twisted + Autobahn relay (baseline)", "imd_pypy": "imd, PyPy",
          "node_original": "original design in Node (ws server + migrator)"}
SHORT = {"node": "bare Node relay", "imd": "imd on CPython", "baseline": "Python baseline", "imd_pypy": "imd on PyPy",
         "node_original": "Node original design"}


class Flavour:
    """One imd under test: its interpreter's venv, ports, key prefix, MySQL
    database, and how long it runs at load before a measure (PyPy's JIT)."""

    def __init__(self, name, bin_dir, port, http_port, prefix, mysql_db, node_id, warmup):
        self.name, self.bin_dir, self.port, self.http_port = name, bin_dir, port, http_port
        self.prefix, self.mysql_db, self.node_id, self.warmup = prefix, mysql_db, node_id, warmup
        self.config = None   # written by Setup

    def key(self, name):
        return self.prefix + name


CPYTHON = Flavour("imd", VENV_BIN, IMD_PORT, HTTP_PORT, "cpy:", MYSQL_DB, "bench", 0)
PYPY = Flavour("imd_pypy", os.path.join(PYPY_VENV, "bin"), PYPY_PORT, PYPY_HTTP_PORT, "pypy:",
               MYSQL_DB + "_pypy", "bench-pypy", 8)


class NodeStack:
    """The original design's Node stack under test (bench/original: server.js
    and migrator.js): its port, key prefix and MySQL database, like a
    Flavour's (its migrator moves MQ into MariaDB too)."""

    schema = os.path.join(HERE, "original", "schema.sql")

    def __init__(self, name, port, prefix, mysql_db):
        self.name, self.port, self.prefix, self.mysql_db = name, port, prefix, mysql_db
        self.warmup = 0
        self.auto_pipelining = 1   # --original-auto-pipelining

    def key(self, name):
        return self.prefix + name


ORIGINAL = NodeStack("node_original", ORIGINAL_PORT, "orig:", MYSQL_DB + "_orig")


_T0 = time.time()


def log(msg):
    sys.stderr.write("bench %5.1fs: %s\n" % (time.time() - _T0, msg))
    sys.stderr.flush()


# --- one run at a time -----------------------------------------------------------

def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        try:
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        pids.add(pid)
    return pids


def _lock_holders(inode):
    """Pids holding a flock on the file with this inode (/proc/locks)."""
    holders = set()
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if "FLOCK" in fields and len(fields) > 5 and fields[5].rsplit(":", 1)[-1] == str(inode):
                    holders.add(int(fields[4]))
    except (OSError, ValueError):
        pass
    return holders


def take_lock():
    """An exclusive flock on LOCK_PATH for the life of this process (two
    benches at once would flush each other's db and skew each other's
    figures).  Under ``flock /tmp/imd-bench.lock make bench`` the caller
    holds it already: its descriptor, inherited, is used as it is."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    st = os.fstat(fd)
    for name in os.listdir("/proc/self/fd"):
        other = int(name)
        if other == fd:
            continue
        try:
            ost = os.fstat(other)
        except OSError:
            continue
        if (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino):
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            os.close(fd)
            log("holding %s (the caller's flock)" % LOCK_PATH)
            return other
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holders = _lock_holders(st.st_ino)
        if holders & _ancestors():
            log("%s is held by our caller (pid %s): running under it" % (
                LOCK_PATH, ", ".join(map(str, sorted(holders & _ancestors())))))
            return fd
        log("waiting for %s: another benchmark run holds it (pid %s); this run starts when it ends" % (
            LOCK_PATH, ", ".join(map(str, sorted(holders))) or "?"))
        waited = time.time()
        fcntl.flock(fd, fcntl.LOCK_EX)
        log("got %s after %.0f s" % (LOCK_PATH, time.time() - waited))
        return fd
    log("holding %s" % LOCK_PATH)
    return fd


# --- a tiny blocking Redis client (setup and lag samples only) -----------------

class Redis:
    def __init__(self, db, port=None):
        self.sock = socket.create_connection(("127.0.0.1", port or REDIS_PORT))
        self.file = self.sock.makefile("rb")
        self.call("SELECT", db)

    def _encode(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def _read(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b":"):
            return int(rest) if kind == b":" else rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError("bad reply %r" % line)

    def call(self, *args):
        self.sock.sendall(self._encode(*args))
        return self._read()

    def pipeline(self, commands):
        self.sock.sendall(b"".join(self._encode(*c) for c in commands))
        return [self._read() for _ in commands]


# --- processes and /proc -------------------------------------------------------

def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the children
    return hard


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_runq_wait(pid):
    """Seconds the main thread of ``pid`` has waited on a run queue, ready to
    run while the CPU ran something else (/proc/PID/schedstat; None where the
    kernel does not keep it)."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def proc_rss_kb(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss(pid):
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
    except OSError:
        pass


def child_pids(parent):
    """The pids of ``parent``'s child processes."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                        found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(found)


def redis_cpu():
    """CPU seconds of the Redis server so far (INFO cpu)."""
    r = Redis(REDIS_DB)
    try:
        info = r.call("INFO", "cpu").decode()
    finally:
        r.sock.close()
    fields = dict(line.split(":", 1) for line in info.split("\r\n") if ":" in line)
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


def mysql_pid():
    try:
        return int(subprocess.run(["pidof", "-s", "mariadbd", "mysqld"], capture_output=True,
                                  text=True).stdout.split()[0])
    except (IndexError, ValueError, OSError):
        return None


def mysql_cpu():
    """CPU seconds of the MariaDB server so far, or None when its pid is not found."""
    pid = mysql_pid()
    try:
        return proc_cpu(pid) if pid else None
    except OSError:
        return None


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def port_taken(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_port(port, timeout=20.0, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a server process exited before listening on 127.0.0.1:%d" % port)
            time.sleep(0.1)
    raise RuntimeError("nothing listens on 127.0.0.1:%d after %ss" % (port, timeout))


class Server:
    """Processes started here (the first one listens on ``port``), stopped here
    by pid.  ``flavour``: the imd it runs (None for the baselines)."""

    def __init__(self, name, argv, port, logfile, companions=(), flavour=None):
        self.name, self.port, self.flavour = name, port, flavour
        if port_taken(port):
            # else the run would measure whatever listens there
            raise RuntimeError("127.0.0.1:%d is already taken (another bench? set IMD_BENCH_PORT)" % port)
        self.log = open(logfile, "ab")
        self.procs = [subprocess.Popen(a, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
                      for a in [argv] + list(companions)]
        self.pid = self.procs[0].pid
        self.pids = [p.pid for p in self.procs]
        try:
            wait_port(port, 60.0, self.procs)   # PyPy takes a few seconds to start
        except RuntimeError:
            self.stop()
            raise

    def adopt_child(self, timeout=30.0):
        """Count the child process the first one starts (the default layout's
        migrator) as one of its processes."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            children = child_pids(self.pid)
            if children:
                self.pids.append(children[0])
                return children[0]
            if self.procs[0].poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("%s started no child process within %ss" % (self.name, timeout))

    def sample(self):
        """CPU of all its processes (and of each), RSS of the listening one."""
        each = [proc_cpu(pid) for pid in self.pids]
        return {"cpu_s": sum(each), "cpu_each_s": each, "rss_kb": proc_rss_kb(self.pid)}

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()


# --- set-up --------------------------------------------------------------------

def bench_config(path, flavour, redis_extra=""):
    text = """
[imd]
roles = ws, http, migrate
node_id = {node_id}
shutdown_grace = 5
[websocket]
listen = tcp:{imd}:interface=127.0.0.1:backlog=4096
; the bench measures the daemon, not the per-connection limiter, nor the
; per-address handshake limit (every generator connection is from 127.0.0.1)
rate = 1000000
burst = 1000000
max_handshakes_per_address = 0
idle_timeout = 3600
ping_interval = 30
; the sync row asks H back to back
history_rate = 1000
history_burst = 1000
history_user_rate = 0
[http]
listen = tcp:{http}:interface=127.0.0.1
[redis]
url = redis://127.0.0.1:{redis_port}/{db}
prefix = {prefix}
{redis_extra}
[mysql]
database = {mysql}
""".format(imd=flavour.port, http=flavour.http_port, db=REDIS_DB, mysql=flavour.mysql_db,
           redis_port=REDIS_PORT, redis_extra=redis_extra, node_id=flavour.node_id, prefix=flavour.prefix)
    with open(path, "w") as f:
        f.write(text)
    return path


class Setup:
    """The Redis db (emptied) with each flavour's keys under its prefix, and
    each flavour's MySQL database (re-created)."""

    def __init__(self, workdir, flavours, redis_extra=""):
        self.workdir = workdir
        self.flavours = list(flavours)
        self.redis = Redis(REDIS_DB)
        self.redis.call("FLUSHDB")
        public_pem, private_pem = generate_key_pair()
        # A loaded key: issue_token signs with it in <1 ms (a PEM string costs ~40 ms).
        self.private_key = serialization.load_pem_private_key(private_pem.encode(), None)
        for flavour in self.flavours:
            assert flavour.mysql_db != "imd"
            if isinstance(flavour, NodeStack):
                self.redis.call("MSET", flavour.key("publicKey"), public_pem, flavour.key("privateKey"), private_pem)
                self.create_node_database(flavour)
                continue
            flavour.config = bench_config(os.path.join(workdir, "%s.ini" % flavour.name), flavour, redis_extra)
            self.redis.call("MSET", flavour.key("publicKey"), public_pem, flavour.key("privateKey"), private_pem)
            conn = pymysql.connect(host="127.0.0.1", user="root")
            with conn.cursor() as cur:
                cur.execute("DROP DATABASE IF EXISTS `%s`" % flavour.mysql_db)
            conn.close()
            subprocess.run([os.path.join(VENV_BIN, "imd-admin"), "--config", flavour.config, "schema", "apply"],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        self.next_uid = 1

    def create_node_database(self, stack):
        """``stack``'s MySQL database, re-created with bench/original/schema.sql."""
        conn = pymysql.connect(host="127.0.0.1", user="root")
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS `%s`" % stack.mysql_db)
            cur.execute("CREATE DATABASE `%s`" % stack.mysql_db)
            cur.execute("USE `%s`" % stack.mysql_db)
            with open(stack.schema) as f:
                cur.execute(f.read())
        conn.close()

    def drop(self):
        self.redis.call("FLUSHDB")
        conn = pymysql.connect(host="127.0.0.1", user="root")
        with conn.cursor() as cur:
            for flavour in self.flavours:
                cur.execute("DROP DATABASE IF EXISTS `%s`" % flavour.mysql_db)
        conn.close()

    def pairs(self, count):
        """``count`` connections as count/2 friend pairs (fresh uids), friends
        in URS: under every flavour's prefix."""
        uids = list(range(self.next_uid, self.next_uid + count))
        self.next_uid += count
        commands = []
        for flavour in self.flavours:
            for a, b in zip(uids[0::2], uids[1::2]):
                commands += [("SADD", flavour.key("URS:%d" % a), b), ("SADD", flavour.key("URS:%d" % b), a)]
        for i in range(0, len(commands), 2000):
            self.redis.pipeline(commands[i:i + 2000])
        return uids

    def conns_file(self, name, uids, port, tokens):
        now = time.time()
        path = os.path.join(self.workdir, name + ".conns")
        with open(path, "w") as f:
            for uid in uids:
                # 120 s: imd's default [auth] token_ttl, the longest lifetime it accepts
                path_part = issue_token(self.private_key, uid, now, 120) if tokens else str(uid)
                f.write("%d ws://127.0.0.1:%d/%s\n" % (uid, port, path_part))
        return path

    def mysql_count(self, flavour):
        conn = pymysql.connect(host="127.0.0.1", user="root", database=flavour.mysql_db)
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM message")
            (n,) = cur.fetchone()
        conn.close()
        return n

    def queue_lag(self, flavour):
        """(entries not yet migrated, age in s of the oldest one)."""
        mq, processing = flavour.key("MQ"), flavour.key("MQ:processing")
        queued, in_flight, oldest = self.redis.pipeline(
            [("LLEN", mq), ("LLEN", processing),
             ("EVAL", "return redis.call('LINDEX', KEYS[2], -1) or redis.call('LINDEX', KEYS[1], -1)",
              2, mq, processing)])
        age = 0.0
        if oldest:
            age = max(0.0, time.time() - json.loads(oldest)["ts"] / 1000.0)
        return queued + in_flight, age


# --- running the generator -----------------------------------------------------

def loadgen(conns, mode, **options):
    argv = ["node", os.path.join(HERE, "loadgen"), "--conns", conns, "--mode", mode]
    for key, value in options.items():
        argv += ["--" + key, str(value)]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)


def stack_sample(server):
    """CPU seconds so far of each of the server's processes, of Redis and of
    MariaDB (None when its pid is not found)."""
    return {"each": server.sample()["cpu_each_s"], "wait": [proc_runq_wait(pid) for pid in server.pids],
            "redis": redis_cpu(), "mysql": mysql_cpu()}


def _mysql_query(db, sql):
    conn = pymysql.connect(host="127.0.0.1", user="root", database=db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()
    finally:
        conn.close()


def last_seq(db):
    """The highest ``seq`` committed in ``db``.message (0: none yet)."""
    return int(_mysql_query(db, "SELECT COALESCE(MAX(seq), 0) FROM message")[0])


def rows_after(db, *seqs):
    """How many rows of ``db``.message have a ``seq`` over each of ``seqs``
    (both migrators insert with an AUTO_INCREMENT ``seq``, one batch after
    the other)."""
    seqs = [int(x) for x in seqs]
    sums = ", ".join("COALESCE(SUM(seq > %d), 0)" % x for x in seqs)
    return [int(n) for n in _mysql_query(db, "SELECT %s FROM message WHERE seq > %d" % (sums, min(seqs)))]


def stack_cpu(start, end, drained, messages, rows):
    """CPU µs per message of each process of a stack: the server (the first
    process) over the measured window, per message delivered in it; with a
    migrator (a second process), the migrator and MariaDB from the start of
    the window to MQ empty after it, per row migrated in that time (a
    migrator behind at the start or the end is counted right), and Redis over
    the same time per message of the window (its stores, and the claims of
    the migrator); without one, Redis over the window."""
    stop = drained if drained is not None else end
    parts = {"server": (end["each"][0] - start["each"][0]) * 1e6 / messages,
             "redis": (stop["redis"] - start["redis"]) * 1e6 / messages}
    if len(start["each"]) > 1 and rows:
        parts["migrator"] = (stop["each"][1] - start["each"][1]) * 1e6 / rows
        if start["mysql"] is not None and stop["mysql"] is not None:
            parts["mariadb"] = (stop["mysql"] - start["mysql"]) * 1e6 / rows
    parts = {k: round(v, 1) for k, v in parts.items()}
    parts["sum"] = round(sum(parts.values()), 1)
    return parts


def measured(server, proc, setup=None):
    """Wait for the generator; the server's CPU (over the measured window, from
    the generator's start/end marks) and peak RSS meanwhile, and (for imd and
    the Node original design, given ``setup``) the migrator's lag sampled
    every 0.5 s and, after the load, the seconds from the end of the measured
    window to MQ empty, the rows migrated (against the messages acked) and
    the CPU per message of every process of the stack (stack_cpu)."""
    flavour = server.flavour if setup is not None else None
    db = flavour.mysql_db if flavour is not None else None
    seqs = {"before": last_seq(db)} if db else {}
    before = server.sample()
    redis_cpu0, mysql_cpu0 = redis_cpu(), mysql_cpu()
    reset_peak_rss(server.pid)
    load0 = loadavg()
    lag = {"max_age_s": 0.0, "max_queued": 0}
    marks, mark_times, lines = {}, {}, []

    def read():
        for line in proc.stdout:
            if line.startswith('{"measure"'):
                name = json.loads(line)["measure"]
                mark_times[name] = time.time()
                marks[name] = stack_sample(server)
                if db and name == "start":
                    seqs["start"] = last_seq(db)
            else:
                lines.append(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wall0 = time.time()
    while proc.poll() is None:
        if flavour is not None:
            queued, age = setup.queue_lag(flavour)
            lag["max_age_s"] = round(max(lag["max_age_s"], age), 3)
            lag["max_queued"] = max(lag["max_queued"], queued)
        time.sleep(0.5)
    reader.join(10)
    if proc.returncode != 0 or not lines:
        raise RuntimeError("loadgen failed against %s (exit %s)" % (server.name, proc.returncode))
    result = json.loads(lines[-1])
    after = server.sample()
    wall = time.time() - wall0
    result["server"] = server.name
    result["server_cpu_s"] = round(after["cpu_s"] - before["cpu_s"], 2)
    result["server_peak_rss_kb"] = proc_rss_kb(server.pid, "VmHWM")
    result["loadavg_before"] = load0
    result["loadavg_after"] = loadavg()
    delivered = result.get("delivered_per_s")
    result["redis_cpu_s"] = round(redis_cpu() - redis_cpu0, 2)
    if delivered and result.get("measured_seconds"):
        # whole run (warm-up and drain included): an upper bound
        result["redis_cpu_us_per_msg_upper"] = round(
            result["redis_cpu_s"] * 1e6 / (delivered * result["measured_seconds"]), 1)
    mysql_cpu1 = mysql_cpu()
    if mysql_cpu0 is not None and mysql_cpu1 is not None:
        result["mysql_cpu_s"] = round(mysql_cpu1 - mysql_cpu0, 2)
    # what the run kept busy, in cores, over its whole time (connect, warm-up,
    # measure, drain): the server, the generator, Redis and MariaDB
    result["wall_s"] = round(wall, 2)
    result["cores_busy"] = round((result["server_cpu_s"] + result.get("generator_cpu_total_s", 0)
                                  + result["redis_cpu_s"] + result.get("mysql_cpu_s", 0)) / wall, 2)
    if delivered and mysql_cpu0 is not None and mysql_cpu1 is not None and result.get("measured_seconds"):
        result["mysql_cpu_us_per_msg_upper"] = round(
            (mysql_cpu1 - mysql_cpu0) * 1e6 / (delivered * result["measured_seconds"]), 1)
    if delivered and "start" in marks and "end" in marks:
        each = [end - start for start, end in zip(marks["start"]["each"], marks["end"]["each"])]
        window_cpu = sum(each)
        result["server_cpu_window_s"] = round(window_cpu, 2)
        result["server_cpu_us_per_msg"] = round(window_cpu * 1e6 / (delivered * result["measured_seconds"]), 1)
        # imd: [ws+http process, migrator process]; Node original: [server, migrator]
        result["server_cpu_us_per_msg_each"] = [
            round(cpu * 1e6 / (delivered * result["measured_seconds"]), 1) for cpu in each]
        # cores each process had, and how long its main thread (the reactor)
        # waited for a core while it had work: what the CPU per message
        # leaves out when the machine is shared
        result["server_cores_each"] = [round(cpu / result["measured_seconds"], 3) for cpu in each]
        result["server_runq_wait_us_per_msg_each"] = [
            round((end - start) * 1e6 / (delivered * result["measured_seconds"]), 1)
            if start is not None and end is not None else None
            for start, end in zip(marks["start"]["wait"], marks["end"]["wait"])]
    drained = None
    if flavour is not None:
        result["migrator_lag"] = lag
        empty_at = wait_drained(setup, flavour)
        result["migrator_drained_s"] = (round(empty_at - mark_times["end"], 2)
                                        if empty_at is not None and "end" in mark_times else None)
        if empty_at is not None:
            drained = stack_sample(server)
            rows = rows_after(db, seqs["before"], seqs.get("start", seqs["before"]))
            # every message acked during the run (warm-up and drain too) is a
            # row now, once: no receipts here, and the generator never repeats an id
            result["rows_migrated"] = rows[0]
            result["rows_migrated_since_window"] = rows[1]
    if delivered and "start" in marks and "end" in marks:
        result["stack_cpu_us_per_msg"] = stack_cpu(
            marks["start"], marks["end"], drained, delivered * result["measured_seconds"],
            result.get("rows_migrated_since_window"))
    return result


PROFILE = None  # set by --profile: py-spy records the servers during the C=200 runs (imd at login too)


def profiled(server, label, duration):
    # py-spy reads CPython only
    if PROFILE is None or server.name in ("node", "node_original", "imd_pypy") or server.flavour is PYPY:
        return None
    out = os.path.join(RESULTS, "%s-%s-%s.%s" % (PROFILE[0], server.name, label, PROFILE[1]))
    argv = [os.path.join(VENV_BIN, "py-spy"), "record", "--pid", str(server.pid), "--duration",
            str(int(duration)), "--rate", "200", "--nonblocking", "--output", out]
    if PROFILE[1] == "txt":
        argv += ["--format", "raw"]
    log("  py-spy -> %s" % out)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def warmup_of(server, warmup):
    """The generator's warm-up before its measured window: PyPy's is longer."""
    return max(warmup, server.flavour.warmup) if server.flavour is not None and not QUICK else warmup


def closed_run(setup, server, uids, label, window, duration, warmup, receipts=False):
    conns = setup.conns_file("%s-%s" % (label, server.name), uids, server.port, tokens=server.flavour is not None)
    log("%s %s C=%d W=%d%s (load %s)" % (label, server.name, len(uids), window, " + receipts" if receipts else "",
                                        loadavg()[0]))
    proc = loadgen(conns, "closed", window=window, duration=duration, warmup=warmup_of(server, warmup),
                   concurrency=100, receipts=1 if receipts else 0)
    spy = profiled(server, label, duration) if len(uids) <= 200 and not receipts else None
    result = measured(server, proc, setup if server.flavour is not None else None)
    if spy is not None:
        spy.wait(30)
    log("  %s: %.0f acked/s, ack p99 %.1f ms%s%s" % (
        server.name, result["acked_per_s"], result["ack_latency_ms"].get("p99", -1),
        ", %.0f receipts acked/s" % result["receipts_acked_per_s"] if receipts else "",
        ", MQ empty %ss after the load" % result["migrator_drained_s"] if "migrator_drained_s" in result else ""))
    return result


def ratios(results):
    """imd on PyPy against the Node original design and the bare Node relay,
    imd on CPython against the Python baseline (and the cross ratios), all
    from one round."""
    def ratio(a, b):
        if a in results and b in results and results[b]["acked_per_s"]:
            return round(results[a]["acked_per_s"] / results[b]["acked_per_s"], 3)
        return None
    pairs = [("imd_pypy", "node_original"), ("imd_pypy", "node"), ("imd", "baseline"), ("imd", "node_original"),
             ("imd", "node"), ("imd_pypy", "baseline"), ("node", "baseline"), ("node_original", "node")]
    out = {"%s/%s" % pair: ratio(*pair) for pair in pairs}
    return {k: v for k, v in out.items() if v is not None}


def throughput_rounds(setup, servers, conns_n, window, duration, warmup, rounds=2):
    """``rounds`` closed-loop runs of every server, the order reversed each
    round (drift in the machine's load hits the first and the last alike)."""
    out = {"runs": []}
    for k in range(rounds):
        uids = setup.pairs(conns_n)
        order = [s for s in (ORDER if k % 2 == 0 else ORDER[::-1]) if s in servers]
        results = {}
        for name in order:
            results[name] = closed_run(setup, servers[name], uids, "tp%d" % (k + 1), window, duration, warmup)
        results["ratios"] = ratios(results)
        results["order"] = order
        log("  round %d ratios: %s" % (k + 1, results["ratios"]))
        out["runs"].append(results)
    return out


def once_each(setup, servers, conns_n, window, duration, warmup, label, receipts=False):
    uids = setup.pairs(conns_n)
    results = {}
    # the original design has no receipts (an R is unknown_type there)
    for name in (s for s in ORDER if s in servers and not (receipts and s == "node_original")):
        results[name] = closed_run(setup, servers[name], uids, label, window, duration, warmup, receipts)
    results["ratios"] = ratios(results)
    return results


LAYOUTS = ("split", "default", "inline")


def wait_leading(setup, server, timeout=60.0):
    """Seconds until the migrator of ``server`` (one of its processes) holds
    ``MQ:lock``: the layouts are measured with their migrator running, not
    while it is still starting (a PyPy migrator at nice 10 started beside a
    loaded ws process took up to 19 s to lead, a varying part of the
    measured window)."""
    started = time.time()
    marks = [":%d:" % pid for pid in server.pids]
    while time.time() - started < timeout:
        token = setup.redis.call("GET", server.flavour.key("MQ:lock"))
        if token is not None:
            token = token.decode() if isinstance(token, bytes) else str(token)
            if any(mark in token for mark in marks):
                return round(time.time() - started, 2)
        time.sleep(0.1)
    raise RuntimeError("%s: no migrator of its processes leads after %ss" % (server.name, timeout))


def layouts(setup, flavours, start_layout, duration, warmup, rounds=2, names=LAYOUTS):
    """C=200 W=8 against each layout of each flavour (``start_layout(flavour,
    layout, tag)`` starts one), ``rounds`` rounds, the order reversed each
    round; per round, each layout's msgs/s against the split one's."""
    out = {"runs": []}
    for k in range(rounds):
        uids = setup.pairs(200)
        order = [(f, layout) for f in flavours for layout in names]
        if k % 2:
            order.reverse()
        results = {}
        for flavour, layout in order:
            server = start_layout(flavour, layout, "-layout%d" % (k + 1))
            try:
                ready = wait_leading(setup, server)
                results["%s/%s" % (flavour.name, layout)] = closed_run(
                    setup, server, uids, "layout%d" % (k + 1), 8, duration, warmup)
                results["%s/%s" % (flavour.name, layout)]["migrator_leading_after_s"] = ready
            finally:
                server.stop()
        ratios = {}
        for flavour in flavours:
            split = results["%s/split" % flavour.name]["acked_per_s"]
            for layout in (x for x in names if x != "split"):
                ratios["%s/%s" % (flavour.name, layout)] = round(
                    results["%s/%s" % (flavour.name, layout)]["acked_per_s"] / split, 3) if split else None
        results["ratios"] = ratios
        results["order"] = ["%s/%s" % (f.name, layout) for f, layout in order]
        log("  layouts round %d, against split: %s" % (k + 1, ratios))
        out["runs"].append(results)
    return out


def wait_drained(setup, flavour, timeout=60.0):
    """The time at which MQ and MQ:processing were seen empty (None: not within timeout)."""
    started = time.time()
    while time.time() - started < timeout:
        if setup.queue_lag(flavour)[0] == 0:
            return time.time()
        time.sleep(0.05)
    return None


def open_runs(setup, servers, names, rate, duration, warmup):
    """Open loop at ``rate`` msgs/s against each of ``names``."""
    uids = setup.pairs(200)
    out = {"rate": rate}
    for name in names:
        server = servers[name]
        conns = setup.conns_file("lat-%d-%s" % (rate, name), uids, server.port, tokens=server.flavour is not None)
        log("open loop %s R=%d (load %s)" % (name, rate, loadavg()[0]))
        proc = loadgen(conns, "open", rate=rate, duration=duration, warmup=warmup_of(server, warmup))
        out[name] = measured(server, proc, setup if server.flavour is not None else None)
        log("  %s: ack p50 %.2f p99 %.2f ms" % (name, out[name]["ack_latency_ms"].get("p50", -1),
                                                 out[name]["ack_latency_ms"].get("p99", -1)))
    return out


def idle(setup, server, count, tokens):
    uids = setup.pairs(count)
    conns = setup.conns_file("idle-%s" % server.name, uids, server.port, tokens=tokens)
    wait_quiet(server)
    rss0 = proc_rss_kb(server.pid)
    log("idle %s: %d connections (load %s)" % (server.name, count, loadavg()[0]))
    proc = loadgen(conns, "idle", concurrency=200, hold=120)
    ready = json.loads(proc.stdout.readline())
    time.sleep(2.0)
    rss1 = proc_rss_kb(server.pid)
    proc.stdin.write("close\n")
    proc.stdin.flush()
    proc.wait(60)
    result = json.loads(proc.stdout.read().strip().splitlines()[-1])
    result.update(server=server.name, rss_before_kb=rss0, rss_after_kb=rss1,
                  kb_per_connection=round((rss1 - rss0) / max(1, ready["connected"]), 2),
                  loadavg=loadavg())
    log("  %s: %.2f KB per connection (RSS %.0f -> %.0f MB)" % (server.name, result["kb_per_connection"],
                                                                rss0 / 1024.0, rss1 / 1024.0))
    return result


def wait_quiet(server, limit=0.1, timeout=20.0):
    """Wait until ``server`` uses under ``limit`` of a core over 0.5 s (still
    starting, or finishing the previous measure, is not what the next one is
    about); seconds waited."""
    started = time.time()
    while time.time() - started < timeout:
        cpu0 = server.sample()["cpu_s"]
        time.sleep(0.5)
        if server.sample()["cpu_s"] - cpu0 < limit * 0.5:
            break
    return round(time.time() - started, 1)


def logins(setup, imd, count, warm=0):
    """``count`` logins, 50 handshakes in flight, tokens issued beforehand;
    ``warm`` logins first, not measured (PyPy's JIT)."""
    if warm:
        uids = setup.pairs(warm)
        conns = setup.conns_file("login-warm-%s" % imd.name, uids, imd.port, tokens=True)
        log("logins %s: %d to warm up" % (imd.name, warm))
        proc = loadgen(conns, "login", concurrency=50)
        proc.communicate(timeout=120)
    uids = setup.pairs(count)
    conns = setup.conns_file("login-%s" % imd.name, uids, imd.port, tokens=True)
    quiet = wait_quiet(imd)
    log("logins %s: %d (load %s; server quiet after %.1f s)" % (imd.name, count, loadavg()[0], quiet))
    proc = loadgen(conns, "login", concurrency=50)
    spy = profiled(imd, "login", 3)
    result = measured(imd, proc)
    if spy is not None:
        spy.wait(30)
    result["quiet_wait_s"] = quiet
    result["warm_up_logins"] = warm
    log("  %.0f logins/s" % result["logins_per_s"])
    return result


# --- reconnect storm (issue 29) ---------------------------------------------------

# The per-address handshake limit an operator would choose where clients have
# addresses of their own (README's example): what it does when they do not.
STORM_HANDSHAKE_LIMIT = 8
# (label, signal, config): SIGTERM is a restart (the graceful stop's C + 1001
# to every connection), SIGKILL a crash (the connections drop without a close)
# (a crash again with Twisted's listen queue of 50, imd's before it asked for
# 4096 (imd.endpoints.DEFAULT_BACKLOG): what the kernel turns away while the
# reactor is busy with the handshakes)
STORM_PLAN = (("restart", "SIGTERM", "default"), ("kill", "SIGKILL", "default"),
              ("restart_limited", "SIGTERM", "limited"), ("kill_backlog", "SIGKILL", "backlog"))
STORM_DEADLINE = {"default": 120, "limited": 240, "backlog": 120}   # seconds a storm may take
STORM_BACKLOG = 50
STORM_TOKEN_TTL = 900


def storm_config(path, flavour, websocket_extra="", listen_extra=""):
    """imd with its default limits but for the listeners, the stores and two
    keys that play no part in a reconnect: ``idle_timeout`` (the held
    connections stand for SDK clients, whose ``P`` pings keep them from
    idling out between storms) and ``token_ttl`` (each storm's tokens are
    issued before it, where the SDK fetches one per attempt)."""
    text = """
[imd]
roles = ws, http
node_id = {node_id}
[websocket]
listen = tcp:{port}:interface=127.0.0.1{listen_extra}
idle_timeout = 3600
{extra}
[http]
listen = tcp:{http}:interface=127.0.0.1
[auth]
token_ttl = {ttl}
[redis]
url = redis://127.0.0.1:{redis_port}/{db}
prefix = {prefix}
[mysql]
database = {mysql}
""".format(port=flavour.port, http=flavour.http_port, db=REDIS_DB, mysql=flavour.mysql_db, redis_port=REDIS_PORT,
           node_id=flavour.node_id, prefix=flavour.prefix, extra=websocket_extra, ttl=STORM_TOKEN_TTL,
           listen_extra=listen_extra)
    with open(path, "w") as f:
        f.write(text)
    return path


def storm_tokens(setup, name, uids, per_uid, url_port=None):
    """A file of ``per_uid`` fresh tokens a uid: "uid token token ..." a line,
    or with ``url_port`` "uid ws://127.0.0.1:<port>/<token> token ..." (the
    generator's connections file)."""
    now = time.time()
    path = os.path.join(setup.workdir, name)
    with open(path, "w") as f:
        for uid in uids:
            tokens = [issue_token(setup.private_key, uid, now, STORM_TOKEN_TTL) for _ in range(per_uid)]
            if url_port is not None:
                tokens[0] = "ws://127.0.0.1:%d/%s" % (url_port, tokens[0])
            f.write("%d %s\n" % (uid, " ".join(tokens)))
    return path


class Lines:
    """The generator's stdout, one JSON object a line, read by a thread."""

    def __init__(self, proc):
        import queue
        self.proc, self.queue = proc, queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def next(self, key, timeout, tick=None):
        """The next object with ``key``, within ``timeout`` s; ``tick()``
        called about once a second meanwhile."""
        import queue
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.queue.get(timeout=min(1.0, max(0.01, deadline - time.time())))
            except queue.Empty:
                line = ""
            if tick is not None:
                tick()
            if line is None:
                raise RuntimeError("the load generator ended (exit %s) before %r" % (self.proc.poll(), key))
            if line.strip():
                obj = json.loads(line)
                if key in obj:
                    return obj
        raise RuntimeError("no %r from the load generator within %s s" % (key, timeout))


def somaxconn():
    """net.core.somaxconn, the ceiling of any listen queue, or None."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def listen_overflows():
    """The kernel's count of connections a full listen queue turned away
    (TcpExt ListenOverflows in /proc/net/netstat: the whole host, since boot),
    or None where it cannot be read."""
    try:
        with open("/proc/net/netstat") as f:
            rows = [line.split() for line in f if line.startswith("TcpExt:")]
        return int(dict(zip(rows[0], rows[1]))["ListenOverflows"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def wait_exit(server, timeout):
    """Wait (up to ``timeout`` s) for ``server``'s process to exit, reaping it
    here: (seconds waited, its CPU seconds and peak RSS KB over its life), or
    None after a SIGKILL when it did not exit in time."""
    proc = server.procs[0]
    started = time.time()
    while time.time() - started < timeout:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            server.log.close()
            return time.time() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss
        time.sleep(0.02)
    server.stop()
    return None


def storm(setup, start_server, count, limit=STORM_HANDSHAKE_LIMIT):
    """``count`` logged-in connections to one imd ws process (CPython), then
    each storm of STORM_PLAN: the process is stopped by its signal and
    started again on the same port (``start_server(config)``) with that
    storm's config, while every client reconnects with the SDK's backoff,
    logs in with a fresh token and catches up (bench/loadgen/storm.js)."""
    flavour = CPYTHON
    configs = {"default": storm_config(os.path.join(setup.workdir, "storm-default.ini"), flavour),
               "limited": storm_config(os.path.join(setup.workdir, "storm-limited.ini"), flavour,
                                       "max_handshakes_per_address = %d" % limit),
               "backlog": storm_config(os.path.join(setup.workdir, "storm-backlog.ini"), flavour,
                                       listen_extra=":backlog=%d" % STORM_BACKLOG)}
    uids = setup.pairs(count)
    conns = storm_tokens(setup, "storm.conns", uids, 2, url_port=flavour.port)
    server = start_server(configs["default"], "")
    proc = None
    out = {"connections": count, "handshake_limit": limit, "storms": {}, "fd_limit": resource.getrlimit(
        resource.RLIMIT_NOFILE)[0], "deadlines_s": STORM_DEADLINE, "backlog": STORM_BACKLOG,
        "somaxconn": somaxconn()}
    try:
        log("storm: %d connections (load %s)" % (count, loadavg()[0]))
        proc = loadgen(conns, "storm", concurrency=200, hold=180)
        lines = Lines(proc)
        ready = lines.next("ready", 240)
        out["logged_in_at_start"], out["connect_seconds"] = ready["connected"], ready["connect_seconds"]
        out["rss_kb_with_connections"] = proc_rss_kb(server.pid)
        log("  %d logged in in %.1f s" % (ready["connected"], ready["connect_seconds"]))
        for n, (label, signame, config) in enumerate(STORM_PLAN):
            tokens = storm_tokens(setup, "storm-%d.tokens" % n, uids, 2)
            quiet = wait_quiet(server)
            before = server.sample()
            rss_before = proc_rss_kb(server.pid)
            redis0, mysql0, overflows0 = redis_cpu(), mysql_cpu(), listen_overflows()
            load = loadavg()
            proc.stdin.write("storm %s %s %d\n" % (label, tokens, STORM_DEADLINE[config]))
            proc.stdin.flush()
            lines.next("armed", 30)
            t_signal = time.time()
            os.kill(server.pid, getattr(signal, signame))
            gone = wait_exit(server, 30)
            if gone is None:
                raise RuntimeError("imd did not exit within 30 s of %s" % signame)
            stopped_s, old_cpu, old_hwm = gone
            server = start_server(configs[config], "-%d" % n)
            listening_s = time.time() - t_signal
            startup_cpu = server.sample()["cpu_s"]
            samples = [(time.time(), startup_cpu)]

            def tick(server=server, samples=samples):
                samples.append((time.time(), server.sample()["cpu_s"]))
            result = lines.next("storm_result", STORM_DEADLINE[config] + 30, tick)["storm_result"]
            tick()
            cores = [(c1 - c0) / (t1 - t0) for (t0, c0), (t1, c1) in zip(samples, samples[1:]) if t1 - t0 >= 0.5]
            mysql1, overflows1 = mysql_cpu(), listen_overflows()
            result.update(
                # the whole host's: other work on the machine counts too
                listen_overflows=overflows1 - overflows0 if None not in (overflows0, overflows1) else None,
                signal=signame, config=config, loadavg_before=load, quiet_wait_s=quiet,
                old_process={"rss_kb": rss_before, "peak_rss_kb": old_hwm, "exit_s": round(stopped_s, 2),
                              "stop_cpu_s": round(old_cpu - before["cpu_s"], 2)},
                new_process={"listening_s": round(listening_s, 2), "startup_cpu_s": round(startup_cpu, 2),
                             "cpu_s": round(server.sample()["cpu_s"], 2),
                             "peak_cores": round(max(cores), 2) if cores else None,
                             "peak_rss_kb": proc_rss_kb(server.pid, "VmHWM"), "rss_kb": proc_rss_kb(server.pid)},
                redis_cpu_s=round(redis_cpu() - redis0, 2),
                mysql_cpu_s=round(mysql1 - mysql0, 2) if mysql0 is not None and mysql1 is not None else None)
            out["storms"][label] = result
            log("  %s (%s): logged in again 50%% %s s, 99%% %s s, 100%% %s s; caught up 100%% %s s; refused %s" % (
                label, signame, result["login_s"]["p50"], result["login_s"]["p99"], result["login_s"]["p100"],
                result["synced_s"]["p100"], result["refused"] or "none"))
        proc.stdin.write("close\n")
        proc.stdin.flush()
        final = lines.next("mode", 60)
        out["startup_refused"], out["startup_drops"] = final["startup_refused"], final["startup_drops"]
        out["generator_cpu_total_s"] = final.get("generator_cpu_total_s")
        proc.wait(30)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    out["loadavg_after"] = loadavg()
    return out


def mq_burst(mq, n, id_prefix):
    """LPUSH commands (1,000 entries each) queueing ``n`` stored messages on
    ``mq`` as both servers store them, ids ``<id_prefix><i>``."""
    now = int(time.time() * 1000)
    commands, batch = [], []
    for i in range(n):
        batch.append(json.dumps({"id": "%s%d" % (id_prefix, i), "from": 1, "to": 2, "type": "t",
                                 "msg": "migrated message %d" % i, "ts": now}, separators=(",", ":")))
        if len(batch) == 1000:
            commands.append(["LPUSH", mq] + batch)
            batch = []
    if batch:
        commands.append(["LPUSH", mq] + batch)
    return commands


def migrate(setup, imd, rows, warm=0):
    """Queue ``rows`` messages at once (one pipelined burst of LPUSH) while the
    daemon's migrator (or the Node original design's) runs, and time from the
    start of the burst to MQ empty; the migrator's, MariaDB's and Redis's CPU
    meanwhile.  ``warm`` rows first, not measured (PyPy's JIT)."""
    flavour = imd.flavour
    mq = flavour.key("MQ")

    def burst(n, id_prefix):
        return mq_burst(mq, n, id_prefix)

    if warm:
        log("migrate %s: %d rows to warm up" % (imd.name, warm))
        setup.redis.pipeline(burst(warm, "w"))
        wait_drained(setup, flavour, timeout=120.0)
    commands = burst(rows, "m")
    count0 = setup.mysql_count(flavour)
    quiet = wait_quiet(imd)
    log("migrate %s: %d rows (load %s; server quiet after %.1f s)" % (imd.name, rows, loadavg()[0], quiet))
    cpu0 = imd.sample()["cpu_each_s"]
    mysql0, redis0 = mysql_cpu(), redis_cpu()
    started = time.time()
    setup.redis.pipeline(commands)
    pushed = time.time() - started
    drained = wait_drained(setup, flavour, timeout=120.0)
    seconds = time.time() - started
    cpu = [b - a for a, b in zip(cpu0, imd.sample()["cpu_each_s"])]
    mysql1, redis1 = mysql_cpu(), redis_cpu()
    inserted = setup.mysql_count(flavour) - count0
    result = {"rows": rows, "inserted": inserted, "push_seconds": round(pushed, 3),
              "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds) if drained is not None else None,
              "daemon_cpu_s": round(sum(cpu), 2), "migrator_cpu_s": round(cpu[-1], 2),
              "redis_cpu_s": round(redis1 - redis0, 2), "loadavg": loadavg(), "quiet_wait_s": quiet,
              "warm_up_rows": warm,
              "note": "from the start of the LPUSH burst to MQ and MQ:processing empty; batch = 500 (default)"}
    if mysql0 is not None and mysql1 is not None:
        result["mysql_cpu_s"] = round(mysql1 - mysql0, 2)
        used = result["mysql_cpu_s"] + result["migrator_cpu_s"] + result["redis_cpu_s"]
        # MariaDB's share: of the machine (all cores over the drain) and of what the three used
        result["mysql_cores"] = round(result["mysql_cpu_s"] / seconds, 2)
        result["migrator_cores"] = round(result["migrator_cpu_s"] / seconds, 2)
        result["mysql_share_of_machine"] = round(result["mysql_cpu_s"] / (seconds * os.cpu_count()), 3)
        result["mysql_share_of_used"] = round(result["mysql_cpu_s"] / used, 3) if used else None
        if inserted:
            result["us_per_row"] = {"migrator": round(result["migrator_cpu_s"] * 1e6 / inserted, 1),
                                    "mariadb": round(result["mysql_cpu_s"] * 1e6 / inserted, 1),
                                    "redis": round(result["redis_cpu_s"] * 1e6 / inserted, 1)}
    log("  %s rows/s (%d inserted; MariaDB %s cores, migrator %s)" % (
        result["rows_per_s"], inserted, result.get("mysql_cores"), result.get("migrator_cores")))
    return result


def original_migrator_argv(stack):
    return ["node", os.path.join(HERE, "original", "migrator.js"), "--redis-db", str(REDIS_DB),
            "--redis-port", str(REDIS_PORT), "--prefix", stack.prefix, "--mysql-db", stack.mysql_db]


def original_crash(setup, workdir, rows, kills, timeout=120.0):
    """The Node original design's migrator killed (SIGKILL) ``kills`` times
    while it drains ``rows`` messages queued at once on an empty table: each
    kill once the migrator holds a batch of its own (MQ:processing not empty,
    and not the batch the last kill left there) and a random 0-40 ms later
    (claimed, inserting, inserted or deleting); then it drains.  Every
    message must be one row, none twice, none left in Redis."""
    stack = ORIGINAL
    setup.create_node_database(stack)
    mq, processing, dead = stack.key("MQ"), stack.key("MQ:processing"), stack.key("MQ:dead")
    setup.redis.call("DEL", mq, processing, dead)
    setup.redis.pipeline(mq_burst(mq, rows, "k"))
    logfile = os.path.join(workdir, "original-crash.log")
    out = open(logfile, "ab")
    rng = random.Random(29)
    argv = original_migrator_argv(stack)
    log("crash check: the Node original design's migrator, %d kill -9 during a %d-message drain (load %s)" % (
        kills, rows, loadavg()[0]))
    started = time.time()
    deadline = started + timeout
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    killed = []
    try:
        left = None   # the newest entry of the batch the last kill left in MQ:processing
        while len(killed) < kills and time.time() < deadline:
            # until this migrator holds a batch of its own: it has replayed
            # and deleted what the last kill left (a cold start killed again
            # at once would test nothing new)
            while time.time() < deadline and proc.poll() is None:
                head = setup.redis.call("LINDEX", processing, 0)
                if head is not None and head != left:
                    break
                if head is None and not setup.redis.call("LLEN", mq):
                    break
                time.sleep(0.002)
            if not setup.redis.call("LLEN", mq) and not setup.redis.call("LLEN", processing):
                break   # drained before all kills were made: the check says so
            time.sleep(rng.uniform(0, 0.04))
            proc.kill()
            proc.wait()
            # a batch claimed and not yet deleted: the kill was mid-batch
            killed.append(setup.redis.call("LLEN", processing))
            left = setup.redis.call("LINDEX", processing, 0)
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        drained = wait_drained(setup, stack, timeout=max(1.0, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()
    count, distinct = _mysql_query(stack.mysql_db, "SELECT COUNT(*), COUNT(DISTINCT from_id, msg_id) FROM message")
    expected = _mysql_query(stack.mysql_db, "SELECT COUNT(*) FROM message WHERE from_id = 1 AND msg_id LIKE 'k%'")[0]
    with open(logfile) as f:
        replays = sum(1 for line in f if "replaying" in line)
    result = {"rows_queued": rows, "kills": len(killed), "kills_wanted": kills,
              "kills_mid_batch": sum(1 for n in killed if n), "replays_logged": replays,
              "rows": int(count), "distinct_ids": int(distinct), "rows_of_the_queued_ids": int(expected),
              "left_in_redis": setup.redis.call("LLEN", mq) + setup.redis.call("LLEN", processing),
              "dead": setup.redis.call("LLEN", dead), "drained": drained is not None,
              "seconds": round(time.time() - started, 1), "loadavg": loadavg()}
    result["ok"] = bool(result["drained"] and count == distinct == expected == rows and not result["dead"]
                        and result["kills"] == kills)
    log("  %d kills (%d mid-batch, %d replays logged): %d rows for %d queued, %d distinct; %s" % (
        result["kills"], result["kills_mid_batch"], replays, count, rows, distinct, "ok" if result["ok"] else "FAILED"))
    return result


class RedisPair:
    """A private redis-server master and one replica on free loopback ports
    (diskless sync, no persistence), stopped here by pid."""

    def __init__(self, workdir):
        self.procs = []
        self.ports = []
        for role in ("master", "replica"):
            port = free_port()
            directory = os.path.join(workdir, "redis-" + role)
            os.makedirs(directory, exist_ok=True)
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", directory, "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
            if self.ports:
                argv += ["--replicaof", "127.0.0.1", str(self.ports[0])]
            self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.ports.append(port)
            wait_port(port)
        deadline = time.time() + 30
        while time.time() < deadline:
            replication = Redis(0, self.ports[0]).call("INFO", "replication").decode()
            if "state=online" in replication:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the replica did not come in sync")
        self.master_port = self.ports[0]
        self.replica_pid = self.procs[1].pid

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replicas(workdir, imd_argv_for, duration, warmup, rate=None):
    """imd (CPython) against a private master + replica: min_replicas 0 then 1,
    closed loop C=200 W=8 and open loop at one rate (half of min_replicas 0's
    closed-loop maximum unless given)."""
    global REDIS_PORT
    pair = RedisPair(workdir)
    saved = REDIS_PORT
    REDIS_PORT = pair.master_port
    out = {"redis_master_port": pair.master_port}
    try:
        for min_replicas in (0, 1):
            setup = Setup(workdir, [CPYTHON], redis_extra="min_replicas = %d\nreplica_timeout = 0.5\n" % min_replicas)
            argv, companions = imd_argv_for(CPYTHON)
            imd = Server("imd", argv, IMD_PORT, os.path.join(workdir, "imd-replicas-%d.out" % min_replicas),
                         companions, CPYTHON)
            try:
                runs = {}
                uids = setup.pairs(200)
                conns = setup.conns_file("rep-%d" % min_replicas, uids, imd.port, tokens=True)
                log("replicas: min_replicas %d, closed loop C=200 W=8 (load %s)" % (min_replicas, loadavg()[0]))
                replica_cpu0 = proc_cpu(pair.replica_pid)
                runs["closed"] = measured(imd, loadgen(conns, "closed", window=8, duration=duration, warmup=warmup,
                                                       concurrency=100), setup)
                runs["closed"]["replica_cpu_s"] = round(proc_cpu(pair.replica_pid) - replica_cpu0, 2)
                if rate is None:
                    rate = int(runs["closed"]["acked_per_s"] / 2)
                time.sleep(1.0)
                uids = setup.pairs(200)
                conns = setup.conns_file("rep-open-%d" % min_replicas, uids, imd.port, tokens=True)
                log("replicas: min_replicas %d, open loop R=%d" % (min_replicas, rate))
                runs["open"] = measured(imd, loadgen(conns, "open", rate=rate, duration=duration, warmup=warmup),
                                        setup)
                runs["open"]["rate"] = rate
                # Logins on the same daemon (Redis CPU per login, on a Redis nobody else uses)
                runs["login"] = logins(setup, imd, 1000 if duration < 10 else 3000)
                login = runs["login"]
                if login.get("logged_in"):
                    login["redis_cpu_us_per_login_upper"] = round(login["redis_cpu_s"] * 1e6 / login["logged_in"], 1)
                runs["waits"] = imd_wait_figures()
                log("  min_replicas %d: %.0f acked/s (p99 %.1f ms); open loop p99 %.1f ms" % (
                    min_replicas, runs["closed"]["acked_per_s"], runs["closed"]["ack_latency_ms"].get("p99", -1),
                    runs["open"]["ack_latency_ms"].get("p99", -1)))
                out["min_replicas_%d" % min_replicas] = runs
            finally:
                imd.stop()
    finally:
        REDIS_PORT = saved
        pair.stop()
    zero, one = out["min_replicas_0"]["closed"], out["min_replicas_1"]["closed"]
    out["throughput_ratio_1_vs_0"] = round(one["acked_per_s"] / zero["acked_per_s"], 3)
    return out


def imd_wait_figures():
    """The daemon's WAIT figures from its /healthz and the WAIT latency
    histogram from its /metrics (http role)."""
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % HTTP_PORT, timeout=5) as response:
            figures = json.loads(response.read()).get("redis_replicas") or {}
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % HTTP_PORT, timeout=5) as response:
            text = response.read().decode()
    except Exception as e:   # the figures are a bonus here
        return {"error": str(e)}
    buckets = {}
    for line in text.splitlines():
        if line.startswith("imd_redis_wait_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[bound] = int(float(line.rsplit(" ", 1)[1]))
    figures["wait_seconds_buckets"] = buckets
    return figures


# --- the report ----------------------------------------------------------------

def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024.0 / 1024.0)
    pypy = None
    pypy_python = os.path.join(PYPY_VENV, "bin", "python")
    if os.path.exists(pypy_python):
        pypy = subprocess.run([pypy_python, "-c", "import sys, platform; print('%s (Python %s)' % ("
                               "'.'.join(map(str, sys.pypy_version_info[:3])), platform.python_version()))"],
                              capture_output=True, text=True).stdout.strip() or None
    return {"cores": os.cpu_count(), "cpu": model, "mem_gib": mem_gib, "python": platform.python_version(),
            "pypy": pypy, "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
            "redis": redis_version(), "mariadb": mariadb_version(), "kernel": platform.release()}


def redis_version():
    try:
        r = Redis(REDIS_DB)
        version = r.call("INFO", "server").decode().split("redis_version:")[1].split()[0]
        r.sock.close()
        return version
    except Exception:
        return "?"


def mariadb_version():
    try:
        conn = pymysql.connect(host="127.0.0.1", user="root")
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            (version,) = cur.fetchone()
        conn.close()
        return version.split("-")[0]
    except Exception:
        return "?"


def fmt_lat(lat):
    return "%.1f / %.1f / %.1f" % (lat.get("p50", 0), lat.get("p99", 0), lat.get("p999", 0)) if lat.get("n") else "-"


def fmt_lat2(lat):
    return "%.1f / %.1f" % (lat.get("p50", 0), lat.get("p99", 0)) if lat.get("n") else "-"


def cpu_parts(result):
    each = result.get("server_cpu_us_per_msg_each") or []
    return " (%s)" % " + ".join("%.1f" % x for x in each) if len(each) > 1 else ""


def over_capacity(result):
    skipped = result.get("errors", {}).get("generator_backlog")
    return " (over its capacity: the generator skipped %s sends)" % n0(skipped) if skipped else ""


def fmt_stack(parts):
    """'52.1 (20.3 + 8.0 + 10.1 + 13.7)': the sum, then server, migrator,
    Redis, MariaDB (those measured)."""
    names = [n for n in ("server", "migrator", "redis", "mariadb") if n in parts]
    return "%.1f (%s)" % (parts["sum"], " + ".join("%.1f" % parts[n] for n in names))


def fmt_ms(x):
    return "%.1f" % x if x is not None else "-"


def n0(x):
    return "{:,.0f}".format(x) if x is not None else "-"


def met(flags):
    """'yes' / 'no' / 'k of n' over the runs."""
    flags = [f for f in flags if f is not None]
    if not flags:
        return "-"
    if all(flags):
        return "yes" if len(flags) == 1 else "yes (%d of %d runs)" % (len(flags), len(flags))
    if not any(flags):
        return "no" if len(flags) == 1 else "no (0 of %d runs)" % len(flags)
    return "%d of %d runs" % (sum(flags), len(flags))


def columns(report):
    present = set()
    r = report["results"]
    for run in r.get("throughput_c200_w8", {}).get("runs", []):
        present.update(k for k in run if k in LABELS)
    present.update(r.get("idle", {}))
    present.update(r.get("login", {}))
    present.update(r.get("migrate", {}))
    present.update(r.get("sync", {}))
    present.update(r.get("rooms", {}))
    return [name for name in ORDER if name in present]


def targets_table(report):
    r = report["results"]
    rows = ["| target | this run | met |", "|---|---|---|"]
    runs = r.get("throughput_c200_w8", {}).get("runs", [])

    def ratio_row(text, a, b, key, target):
        figures, flags = [], []
        for k, run in enumerate(runs):
            ratio = run["ratios"].get(key)
            if ratio is None:
                continue
            figures.append("run %d: %.2f× (%s / %s msgs/s)" % (k + 1, ratio, n0(run[a]["acked_per_s"]),
                                                                n0(run[b]["acked_per_s"])))
            flags.append(ratio >= target)
        rows.append("| %s | %s | %s |" % (text, "; ".join(figures) or "not measured", met(flags)))

    if not runs:
        ratio_row = lambda *args: None  # noqa: E731  (no C=200 W=8 runs: no ratio rows)
    ratio_row("imd on PyPy ≥ 1.25× the original design's Node stack (server + migrator), C=200 W=8, every "
              "guarantee on", "imd_pypy", "node_original", "imd_pypy/node_original", 1.25)
    ratio_row("imd on PyPy ≥ 1.0× the bare Node relay, C=200 W=8, every guarantee on", "imd_pypy", "node",
              "imd_pypy/node", 1.0)
    ratio_row("imd on CPython ≥ 1.3× the Python baseline, C=200 W=8, every guarantee on", "imd", "baseline",
              "imd/baseline", 1.3)
    layout_runs = r.get("layouts", {}).get("runs", [])
    if layout_runs:
        figures, flags = [], []
        for name in ("imd", "imd_pypy"):
            per = []
            for k, run in enumerate(layout_runs):
                ratio = run["ratios"].get("%s/default" % name)
                if ratio is not None:
                    default, split = run[name + "/default"], run[name + "/split"]
                    per.append("run %d %.2f× (%s / %s msgs/s)" % (
                        k + 1, ratio, n0(default["acked_per_s"]), n0(split["acked_per_s"])))
                    flags.append(ratio >= 0.95)
            if per:
                figures.append("%s: %s" % ("PyPy" if name == "imd_pypy" else "CPython", ", ".join(per)))
        rows.append("| the default layout (one `twistd imd`, the migrator its child process) ≥ 0.95× the split "
                    "layout (the migrator a service of its own), C=200 W=8, CPython and PyPy in the same run "
                    "| %s | %s |" % ("; ".join(figures), met(flags)))
    for name in ("imd_pypy", "imd"):
        figures, flags = [], []
        for k, run in enumerate(runs):
            ours = run.get(name, {}).get("stack_cpu_us_per_msg")
            theirs = run.get("node_original", {}).get("stack_cpu_us_per_msg")
            if not ours or not theirs or "mariadb" not in ours or "mariadb" not in theirs:
                continue
            figures.append("run %d: %s against %s" % (k + 1, fmt_stack(ours), fmt_stack(theirs)))
            flags.append(ours["sum"] <= theirs["sum"])
        if figures:
            rows.append("| whole-stack CPU per message, imd on %s (ws + migrator + Redis + MariaDB) ≤ the original "
                        "design's Node stack (server + migrator + Redis + MariaDB), C=200 W=8, µs | %s | %s |" % (
                            "PyPy" if name == "imd_pypy" else "CPython", "; ".join(figures), met(flags)))
    figures, flags = [], []
    for name in (n for n in ORDER if n in ("node_original", "imd_pypy", "imd")):
        checked = [(k, run[name]) for k, run in enumerate(runs) if "rows_migrated" in run.get(name, {})]
        if checked:
            figures.append("%s: %s" % (LABELS[name], ", ".join("run %d %s / %s" % (
                k + 1, n0(res["rows_migrated"]), n0(res["acked_total"])) for k, res in checked)))
            flags += [res["rows_migrated"] == res["acked_total"] for k, res in checked]
    if figures:
        rows.append("| after each C=200 W=8 run, every message acked (warm-up and drain included) is one row in "
                    "MariaDB: rows / acked | %s | %s |" % ("; ".join(figures), met(flags)))
    figures, flags = [], []
    for k, run in enumerate(runs):
        if "imd_pypy" in run:
            drained = run["imd_pypy"].get("migrator_drained_s")
            figures.append("run %d: %s s (max lag during the run %.2f s)" % (
                k + 1, "%.2f" % drained if drained is not None else "> 60",
                run["imd_pypy"]["migrator_lag"]["max_age_s"]))
            flags.append(drained is not None and drained <= 5)
    if figures:
        rows.append("| after a C=200 W=8 run on PyPy, MQ drains within 5 s (from the end of the measured window) "
                    "| %s | %s |" % ("; ".join(figures), met(flags)))
    if "migrate" in r:
        figures, flags = [], []
        for name in ("imd_pypy", "imd"):
            m = r["migrate"].get(name)
            if not m:
                continue
            n = m.get("rows_per_s")
            figures.append("%s: %s rows/s, MariaDB %s of a core (%s%% of the machine's CPU; %s%% of what MariaDB, "
                           "the migrator and Redis used), the migrator %s" % (
                               "PyPy" if name == "imd_pypy" else "CPython", n0(n), m.get("mysql_cores", "?"),
                               "%.0f" % (100 * m["mysql_share_of_machine"]) if "mysql_share_of_machine" in m else "?",
                               "%.0f" % (100 * m["mysql_share_of_used"]) if m.get("mysql_share_of_used") else "?",
                               m.get("migrator_cores", "?")))
            flags.append(("PyPy" if name == "imd_pypy" else "CPython") + (" yes" if (n or 0) >= 40000 else " no"))
        rows.append("| migrator alone ≥ 40,000 rows/s (%s rows, batch 500), MariaDB's share of the CPU | %s | %s |" % (
            n0(next(iter(r["migrate"].values()))["rows"]), "; ".join(figures), ", ".join(flags)))
    crash = r.get("original_crash")
    if crash:
        rows.append("| the original design's Node migrator loses and duplicates nothing: %d `kill -9` during a "
                    "%s-message drain | %d kills (%d mid-batch, %d replays logged), %s rows, %s distinct ids, %d "
                    "left in Redis, %d dead, %.0f s | %s |" % (
                        crash["kills_wanted"], n0(crash["rows_queued"]), crash["kills"], crash["kills_mid_batch"],
                        crash["replays_logged"], n0(crash["rows"]), n0(crash["distinct_ids"]), crash["left_in_redis"],
                        crash["dead"], crash["seconds"], met([crash["ok"]])))
    if "login" in r:
        figures = []
        for name in ("imd_pypy", "imd"):
            lg = r["login"].get(name)
            if lg:
                figures.append("%s: %s/s" % ("PyPy" if name == "imd_pypy" else "CPython", n0(lg["logins_per_s"])))
        pypy = r["login"].get("imd_pypy")
        rows.append("| logins ≥ 1,500/s on PyPy, single-use RS256 tokens (%s logins, 50 in flight) | %s | %s |" % (
            n0(next(iter(r["login"].values()))["connections"]), "; ".join(figures),
            met([pypy["logins_per_s"] >= 1500]) if pypy else "not measured"))
    if "idle" in r:
        # issue 29: on both interpreters (it was ≤ 12 KB on CPython, PyPy reported)
        idle_r = r["idle"]
        ours = [n for n in ("imd", "imd_pypy") if n in idle_r]
        others = ", ".join("%s %.1f KB" % (SHORT[n], idle_r[n]["kb_per_connection"])
                           for n in ("baseline", "node_original", "node") if n in idle_r)
        figures = "; ".join("%s %.1f KB" % (SHORT[n], idle_r[n]["kb_per_connection"]) for n in ours)
        flags = ", ".join("%s %s" % ("PyPy" if n == "imd_pypy" else "CPython",
                                     met([idle_r[n]["kb_per_connection"] <= 10])) for n in ours)
        rows.append("| RSS per idle logged-in connection ≤ 10 KB on CPython and on PyPy (%s connections) "
                    "| %s%s | %s |" % (n0(next(iter(idle_r.values()))["connected"]), figures,
                                       ("; " if figures and others else "") + others, flags or "-"))
    for name, lat in sorted(r.get("latency", {}).items(), key=lambda kv: ORDER.index(kv[0])):
        p99 = lat[name]["ack_latency_ms"].get("p99")
        others = ", ".join("%s %s ms%s" % (SHORT[n], fmt_ms(lat[n]["ack_latency_ms"].get("p99")),
                                          over_capacity(lat[n]))
                           for n in ("node_original", "node", "baseline") if n in lat)
        rows.append("| open loop at half of imd's maximum (%s, %s msgs/s): ack p99 ≤ 25 ms | imd %s ms; at the same "
                    "rate %s | %s |" % ("PyPy" if name == "imd_pypy" else "CPython", n0(lat["rate"]), fmt_ms(p99),
                                        others, met([p99 is not None and p99 <= 25])))
    return rows


def side_table(report):
    r = report["results"]
    cols = columns(report)
    rows = ["| | " + " | ".join(LABELS[c] for c in cols) + " |", "|---|" + "---|" * len(cols)] if cols else []

    def row(label, cell):
        cells = []
        for c in cols:
            try:
                cells.append(cell(c))
            except (KeyError, TypeError, IndexError):
                cells.append("-")
        rows.append("| %s | %s |" % (label, " | ".join(cells)))

    runs = r.get("throughput_c200_w8", {}).get("runs", [])
    if runs:
        row("C=200 W=8 acked msgs/s, run 1 / run 2", lambda c: " / ".join(n0(run[c]["acked_per_s"]) for run in runs))
        row("↳ delivered msgs/s, run 1 / run 2", lambda c: " / ".join(n0(run[c]["delivered_per_s"]) for run in runs))
        row("↳ ack latency p50 / p99 ms (closed loop), run 1; run 2",
            lambda c: "; ".join(fmt_lat2(run[c]["ack_latency_ms"]) for run in runs))
        row("↳ server CPU µs/msg over the measured window (imd: ws + migrator; Node original: server + "
            "migrator), run 1; run 2",
            lambda c: "; ".join("%.1f%s" % (run[c]["server_cpu_us_per_msg"], cpu_parts(run[c])) for run in runs))
        row("↳ whole stack CPU µs/msg: sum (server + migrator + Redis + MariaDB; relays: server + Redis), "
            "run 1; run 2", lambda c: "; ".join(fmt_stack(run[c]["stack_cpu_us_per_msg"]) for run in runs))
        row("↳ peak RSS MB", lambda c: " / ".join("%.0f" % (run[c]["server_peak_rss_kb"] / 1024.0) for run in runs))
        row("↳ rows in MariaDB / messages acked (whole run), run 1; run 2", lambda c: "; ".join(
            "%s / %s" % (n0(run[c]["rows_migrated"]), n0(run[c]["acked_total"])) for run in runs))
        row("↳ migrator max lag s / MQ empty s after the load, run 1; run 2", lambda c: "; ".join(
            "%.2f / %s" % (run[c]["migrator_lag"]["max_age_s"], run[c]["migrator_drained_s"]) for run in runs))
        row("↳ cores busy, averaged over the whole run: server + generator + Redis + MariaDB, run 1; run 2",
            lambda c: "; ".join("%.2f" % run[c]["cores_busy"] for run in runs))
        row("↳ generator CPU µs/acked msg",
            lambda c: " / ".join("%.0f" % run[c]["generator_us_per_msg"] for run in runs))
        row("↳ errors", lambda c: " / ".join(
            (", ".join("%s %d" % kv for kv in sorted(run[c]["errors"].items())) or "none") for run in runs))
    rec = r.get("throughput_c200_w8_receipts")
    if rec:
        row("C=200 W=8 + receipts: acked msgs/s; receipts acked/s", lambda c: "%s; %s" % (
            n0(rec[c]["acked_per_s"]), n0(rec[c]["receipts_acked_per_s"])))
        row("↳ receipt ack p50 / p99 ms; server CPU µs/msg", lambda c: "%s; %.1f" % (
            fmt_lat2(rec[c]["receipt_ack_latency_ms"]), rec[c]["server_cpu_us_per_msg"]))
    big = r.get("throughput_c2000_w1")
    if big:
        row("C=2000 W=1 acked msgs/s", lambda c: n0(big[c]["acked_per_s"]))
        row("↳ ack latency p50 / p99 ms; server CPU µs/msg", lambda c: "%s; %.1f" % (
            fmt_lat2(big[c]["ack_latency_ms"]), big[c]["server_cpu_us_per_msg"]))
    for name, lat in sorted(r.get("latency", {}).items(), key=lambda kv: ORDER.index(kv[0])):
        row("open loop R=%s msgs/s (half of imd on %s's max): ack p50 / p99 / p999 ms" % (
            n0(lat["rate"]), "PyPy" if name == "imd_pypy" else "CPython"),
            lambda c, lat=lat: fmt_lat(lat[c]["ack_latency_ms"]))
        row("↳ end-to-end p50 / p99 / p999 ms; server CPU µs/msg; cores busy (whole run)",
            lambda c, lat=lat: "%s; %.1f; %.2f" % (fmt_lat(lat[c]["e2e_latency_ms"]), lat[c]["server_cpu_us_per_msg"],
                                                  lat[c]["cores_busy"]))
    if "idle" in r:
        row("RSS per idle logged-in connection, KB (%s connections)" % n0(next(iter(r["idle"].values()))["connected"]),
            lambda c: "%.1f" % r["idle"][c]["kb_per_connection"])
    if "login" in r:
        row("logins/s (tokens issued beforehand; PyPy after %s to warm up)" % n0(
            r["login"].get("imd_pypy", {}).get("warm_up_logins", 0)), lambda c: n0(r["login"][c]["logins_per_s"]))
    if "migrate" in r:
        row("migrator rows/s (batch 500); MariaDB cores, migrator cores", lambda c: "%s; %s, %s" % (
            n0(r["migrate"][c]["rows_per_s"]), r["migrate"][c]["mysql_cores"], r["migrate"][c]["migrator_cores"]))
        row("↳ CPU µs per row: migrator + MariaDB + Redis", lambda c: "{migrator} + {mariadb} + {redis}".format(
            **r["migrate"][c]["us_per_row"]))
    if "sync" in r:
        row("H {sync: 0} of 1,000 messages (half not migrated; pages of 500): p50 / p99 ms",
            lambda c: "%s / %s" % (r["sync"][c]["p50_ms"], r["sync"][c]["p99_ms"]))
    if "rooms" in r:
        row("room fan-out, 4 members (1 sending W=32, 3 receiving): deliveries/s",
            lambda c: n0(r["rooms"][c]["deliveries_per_s"]))
    if "replicas" in r:
        rep = r["replicas"]
        zero, one = rep["min_replicas_0"], rep["min_replicas_1"]
        if rows:
            rows.append("")
        rows.append("| `[redis] min_replicas` 0 → 1 (private master + replica), imd on CPython | 0 → 1 |")
        rows.append("|---|---|")
        rows.append("| C=200 W=8 acked msgs/s | %.0f → %.0f (%.2f×) |" % (
            zero["closed"]["acked_per_s"], one["closed"]["acked_per_s"], rep["throughput_ratio_1_vs_0"]))
        rows.append("| ↳ ack latency p50/p99/p999 ms, closed loop | %s → %s |" % (
            fmt_lat(zero["closed"]["ack_latency_ms"]), fmt_lat(one["closed"]["ack_latency_ms"])))
        rows.append("| ↳ open loop R=%d: ack p50/p99/p999 ms | %s → %s |" % (
            one["open"]["rate"], fmt_lat(zero["open"]["ack_latency_ms"]), fmt_lat(one["open"]["ack_latency_ms"])))
        rows.append("| ↳ logins/s | %s → %s |" % (zero["login"].get("logins_per_s"), one["login"].get("logins_per_s")))
    return rows


def layouts_table(report):
    """imd's layouts side by side: a row group per interpreter, a column per layout."""
    runs = report["results"].get("layouts", {}).get("runs", [])
    if not runs:
        return []
    heads = {"split": "split: ws+http, migrator in its own process (nice 10)",
             "default": "default: one `twistd imd`, migrator its child (nice 10)",
             "inline": "inline: one process, migrator on its reactor"}
    rows = ["| C=200 W=8, " + "; ".join("run %d" % (k + 1) for k in range(len(runs))) + " | "
            + " | ".join(heads[x] for x in LAYOUTS) + " |",
            "|---|" + "---|" * len(LAYOUTS)]
    for name in ("imd", "imd_pypy"):
        if not any("%s/split" % name in run for run in runs):
            continue

        def row(label, cell, name=name):
            cells = []
            for layout in LAYOUTS:
                try:
                    cells.append("; ".join(cell(run, run["%s/%s" % (name, layout)], layout) for run in runs))
                except (KeyError, TypeError, IndexError):
                    cells.append("-")
            rows.append("| %s | %s |" % (label, " | ".join(cells)))
        row("%s: acked msgs/s" % SHORT[name], lambda run, res, layout: n0(res["acked_per_s"]))
        row("↳ × split, same round", lambda run, res, layout: "1" if layout == "split" else "%.2f" % (
            run["ratios"]["%s/%s" % (name, layout)]))
        row("↳ ack p50 / p99 ms", lambda run, res, layout: fmt_lat2(res["ack_latency_ms"]))
        row("↳ CPU µs/msg over the window: all (ws process + migrator process)",
            lambda run, res, layout: "%.1f%s" % (res["server_cpu_us_per_msg"], cpu_parts(res)))
        row("↳ cores the ws process had; its reactor's wait for a core, µs/msg",
            lambda run, res, layout: "%.2f; %.1f" % (res["server_cores_each"][0],
                                                     res["server_runq_wait_us_per_msg_each"][0]))
        row("↳ rows in MariaDB / acked; MQ empty s after the load",
            lambda run, res, layout: "%s / %s; %s" % (n0(res["rows_migrated"]), n0(res["acked_total"]),
                                                      res["migrator_drained_s"]))
        row("↳ load average (1 min) before the run", lambda run, res, layout: "%.2f" % res["loadavg_before"][0])
        row("↳ s from listening to the migrator leading (before the load)",
            lambda run, res, layout: "%.1f" % res["migrator_leading_after_s"])
    return rows


STORM_HEADS = {"restart": "restart (SIGTERM: C + 1001 to each, then start again)",
               "kill": "crash (SIGKILL: dropped without a close, then start again)",
               "restart_limited": "restart, `max_handshakes_per_address = %d`",
               "kill_backlog": "crash, Twisted's listen queue of %s (`:backlog=%s`; imd's default is 4096)"
                               % (STORM_BACKLOG, STORM_BACKLOG)}


def storm_table(report):
    """The reconnect storm (``--only storm``): a column per storm."""
    st = report["results"].get("storm")
    if not st or not st.get("storms"):
        return []
    labels = [label for label, _, _ in STORM_PLAN if label in st["storms"]]
    heads = [STORM_HEADS[label] % st["handshake_limit"] if "%d" in STORM_HEADS[label] else STORM_HEADS[label]
             for label in labels]
    rows = ["| %s connections, all from 127.0.0.1 | %s |" % (n0(st["connections"]), " | ".join(heads)),
            "|---|" + "---|" * len(labels)]

    def row(label, cell):
        cells = []
        for name in labels:
            try:
                cells.append(cell(st["storms"][name]))
            except (KeyError, TypeError, IndexError, ValueError):
                cells.append("-")
        rows.append("| %s | %s |" % (label, " | ".join(cells)))

    def secs(x):
        return "%.1f" % x if x is not None else "not all"

    def fractions(f):
        return " / ".join(secs(f[k]) for k in ("p50", "p99", "p100"))

    row("old process gone / new one listening, s after the signal", lambda s: "%.1f / %.1f" % (
        s["old_process"]["exit_s"], s["new_process"]["listening_s"]))
    row("logged in again: 50 % / 99 % / 100 %, s after the signal", lambda s: fractions(s["login_s"]))
    row("caught up (`H` answered): 50 % / 99 % / 100 %, s", lambda s: fractions(s["synced_s"]))
    row("logins/s over the storm; busiest second", lambda s: "%s; %s" % (n0(s["logins_per_s"]),
                                                                        n0(s["peak_logins_per_s"])))
    row("refused attempts, by reason", lambda s: ", ".join(
        "%s %s" % (k, n0(v)) for k, v in sorted(s["refused"].items())) or "none")
    row("clients refused at least once; max attempts of one client", lambda s: "%s; %d" % (
        n0(s["refused_clients"]), s["max_attempts"]))
    row("↳ by reason: clients, and when they were caught up (50 % / 99 % / 100 % of them, s)", lambda s: "; ".join(
        "%s: %s, %s" % (k, n0(v["clients"]), fractions(v["synced_s"]))
        for k, v in sorted(s["refused_clients_by_reason"].items())) or "none")
    def waiting(s, t):
        """Clients not logged in ``t`` s after the signal: '-' past the end
        of a storm some never came back from."""
        if t <= s["seconds"]:
            return n0(s["not_logged_in_after_s"][str(t)])
        return "0" if s["logged_in"] == s["connections"] else "-"
    row("connections a full listen queue turned away (the host's TcpExt ListenOverflows)",
        lambda s: n0(s["listen_overflows"]))
    row("clients not logged in yet after 5 / 10 / 30 / 60 s", lambda s: " / ".join(
        waiting(s, t) for t in (5, 10, 30, 60)))
    row("new process: CPU s (of which start-up); busiest second, cores; peak RSS MB", lambda s: "%.1f (%.1f); %s; %.0f"
        % (s["new_process"]["cpu_s"], s["new_process"]["startup_cpu_s"], s["new_process"]["peak_cores"],
           s["new_process"]["peak_rss_kb"] / 1024.0))
    row("old process: RSS MB with the connections; CPU s of its stop", lambda s: "%.0f; %.2f" % (
        s["old_process"]["rss_kb"] / 1024.0, s["old_process"]["stop_cpu_s"]))
    row("Redis / MariaDB CPU s; generator CPU s", lambda s: "%.1f / %s; %.1f" % (
        s["redis_cpu_s"], "%.1f" % s["mysql_cpu_s"] if s["mysql_cpu_s"] is not None else "-", s["generator_cpu_s"]))
    row("drops after the login, `E` to the catch-up, out of tokens", lambda s: "%d, %s, %d" % (
        s["drops_after_login"], ", ".join("%s %d" % kv for kv in sorted(s["catch_up_errors"].items())) or "0",
        s["out_of_tokens"]))
    row("load average (1 min) before", lambda s: "%.2f" % s["loadavg_before"][0])
    return rows


def table(report):
    m = report["machine"]
    head = ("Run %s on %d cores (%s, %s GiB), Redis %s and MariaDB %s on the same host; CPython %s, PyPy %s, "
            "Node %s. Load average (1/5/15 min) at start %s, at end %s. Command: `%s` (%.0f s). "
            "Raw figures: `bench/results/%s.json`.\n" % (
                report["started"], m["cores"], m["cpu"], m.get("mem_gib", "?"), m["redis"], m.get("mariadb", "?"),
                m["python"], m.get("pypy") or "-", m["node"],
                " ".join("%.2f" % x for x in report["loadavg_start"]),
                " ".join("%.2f" % x for x in report.get("loadavg_end", [])), report["command"], report["seconds"],
                report["stamp"]))
    if report.get("pypy_missing"):
        head += "\nimd on PyPy was not measured: %s.\n" % report["pypy_missing"]
    parts = [head]
    targets = targets_table(report)
    if len(targets) > 2:
        parts.append("\n".join(targets) + "\n")
    parts.append("\n".join(side_table(report)) + "\n")
    layout_rows = layouts_table(report)
    if layout_rows:
        parts.append("imd's layouts (`--only layouts`):\n\n" + "\n".join(layout_rows) + "\n")
    storm_rows = storm_table(report)
    if storm_rows:
        parts.append("Reconnect storm (`--only storm`; imd on CPython, every client back with the SDK's backoff, "
                     "a fresh token and one `H`):\n\n" + "\n".join(storm_rows) + "\n")
    return "\n".join(parts)


def write_doc(report):
    block = BEGIN + "\n" + table(report) + END
    text = open(DOC).read() if os.path.exists(DOC) else "# Performance\n\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text += "\n" + block + "\n"
    with open(DOC, "w") as f:
        f.write(text)


QUICK = False


def pypy_ready():
    """None when .venv-pypy3 has imd installed, else why not."""
    if not os.path.exists(os.path.join(PYPY_VENV, ".installed-stamp")):
        return ("there is no PyPy venv (`make install PYTHON=pypy3` builds it from Debian's pypy3; "
                "pypy3 %s)" % ("is installed" if subprocess.run(["sh", "-c", "command -v pypy3"],
                                                                capture_output=True).returncode == 0
                               else "is not installed"))
    if not os.path.exists(os.path.join(PYPY_VENV, "bin", "twistd")):
        return "the PyPy venv has no twistd"
    return None


def main():
    global QUICK, PROFILE
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, not figures)")
    parser.add_argument("--only", default="throughput,receipts,c2000,latency,idle,login,migrate,sync,rooms,crash,"
                        "layouts", help="what to measure (default: %(default)s; also: replicas, storm, ping)")
    parser.add_argument("--servers", default=",".join(ORDER), help="which servers (default: %(default)s)")
    parser.add_argument("--no-pypy", action="store_true", help="leave imd on PyPy out")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="the layouts of --only layouts "
                        "(default: %(default)s; split is always measured: the others are against it)")
    parser.add_argument("--layout-rounds", type=int, default=2, help="rounds of --only layouts, the order "
                        "reversed each round (default: %(default)s)")
    parser.add_argument("--original-auto-pipelining", type=int, choices=[0, 1], default=ORIGINAL.auto_pipelining,
                        help="ioredis auto-pipelining in the Node original design's server (default: %(default)s)")
    parser.add_argument("--profile", choices=["svg", "txt"], help="py-spy flame graph (svg) or raw stacks "
                        "(txt) of the Python servers during the C=200 throughput runs, into bench/results/")
    parser.add_argument("--rate", type=int, help="open-loop rate (default: half of each imd's C=200 W=8 maximum)")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/performance.md")
    parser.add_argument("--report", metavar="JSON", help="measure nothing: print the tables of a stored run "
                        "(bench/results/<stamp>.json) and write them into docs/performance.md")
    parser.add_argument("--storm-connections", type=int, help="connections of the reconnect storm (--only storm; "
                        "default 10,000, 1,000 with --quick)")
    parser.add_argument("--replicas", action="store_true", help="also run the min_replicas 0 vs 1 comparison "
                        "(a private master + replica)")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as f:
            report = json.load(f)
        print(table(report))
        if not args.no_doc:
            write_doc(report)
            log("summary table of %s written to %s" % (args.report, DOC))
        return
    only = set(args.only.split(","))
    selected = set(name.strip().replace("-", "_") for name in args.servers.split(","))
    unknown = selected - set(ORDER)
    if unknown:
        parser.error("unknown servers: %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(ORDER)))
    ORIGINAL.auto_pipelining = args.original_auto_pipelining
    if args.replicas:
        only.add("replicas")
    QUICK = args.quick
    duration, warmup = (3, 1) if args.quick else (10, 2)
    if args.quick:
        PYPY.warmup = 3
    idle_n = 1000 if args.quick else 10000
    lock = take_lock()  # noqa: F841  (held until the process exits)
    fds = raise_fd_limit()
    os.makedirs(RESULTS, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    PROFILE = (stamp, args.profile) if args.profile else None
    workdir = tempfile.mkdtemp(prefix="imd-bench-")
    started = time.time()
    report = {"stamp": stamp, "started": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
              "loadavg_start": loadavg(), "fd_limit": fds, "command": "make bench" + (
                  " BENCH_ARGS='%s'" % " ".join(sys.argv[1:]) if len(sys.argv) > 1 else ""),
              "pypy_warmup_s": PYPY.warmup, "results": {}}
    report["servers"] = [name for name in ORDER if name in selected]
    report["original_auto_pipelining"] = ORIGINAL.auto_pipelining
    flavours = [CPYTHON] if "imd" in selected else []
    if "imd_pypy" in selected:
        missing = "left out (--no-pypy)" if args.no_pypy else pypy_ready()
        if missing:
            report["pypy_missing"] = missing
            log("imd on PyPy not measured: %s" % missing)
        else:
            flavours.append(PYPY)
    # every stack with a migrator: the imds and the Node original design
    stacks = flavours + ([ORIGINAL] if "node_original" in selected or "crash" in only else [])
    r = report["results"]
    log("workdir %s; redis db %d, mysql %s; load %s" % (
        workdir, REDIS_DB, ", ".join(f.mysql_db for f in stacks), report["loadavg_start"]))
    # (the replicas run alone uses a private Redis: nothing of db REDIS_DB is touched)
    setup = Setup(workdir, stacks) if only - {"replicas"} else None

    # imd as the shipped systemd units run it: the ws and http roles in one
    # process, the migrator in its own at nice 10 (imd-migrate.service).
    # (In one process the migrator starves behind a saturated reactor: at
    # C=200 W=8 its lag grew by ~0.5 s every second; alone it stays under
    # 0.5 s.  docs/performance.md.)
    def imd_argv_for(flavour, tag=""):
        def twistd(log_name, roles):
            return [os.path.join(flavour.bin_dir, "twistd"), "-n", "--pidfile=", "--logfile",
                    os.path.join(workdir, "%s%s-%s" % (flavour.name, tag, log_name)), "imd", "--config",
                    flavour.config, "--roles", roles]
        return twistd("ws.log", "ws,http"), [["nice", "-n", "10"] + twistd("migrator.log", "migrate")]

    def start_layout(flavour, layout, tag):
        """imd in ``layout`` (LAYOUTS): split as imd_argv_for; default and
        inline one ``twistd imd`` with every role of the ini."""
        name = "%s-%s" % (flavour.name, layout)   # (a file name too)
        out = os.path.join(workdir, "%s-%s%s.out" % (flavour.name, layout, tag))
        if layout == "split":
            argv, companions = imd_argv_for(flavour, tag)
            return Server(name, argv, flavour.port, out, companions, flavour)
        config = flavour.config
        if layout == "inline":
            config = os.path.join(workdir, "%s-inline.ini" % flavour.name)
            with open(flavour.config) as f:
                text = f.read().replace("\n[imd]\n", "\n[imd]\nmigrator = inline\n", 1)
            with open(config, "w") as f:
                f.write(text)
        argv = [os.path.join(flavour.bin_dir, "twistd"), "-n", "--pidfile=", "--logfile",
                os.path.join(workdir, "%s%s-%s.log" % (flavour.name, tag, layout)), "imd", "--config", config]
        server = Server(name, argv, flavour.port, out, (), flavour)
        if layout == "default":
            server.adopt_child()
        return server

    def start(name, tag=""):
        if name == "baseline":
            argv = [sys.executable, os.path.join(HERE, "baseline_relay.py"), "--port", str(BASE_PORT),
                    "--redis-db", str(REDIS_DB)]
            return Server(name, argv, BASE_PORT, os.path.join(workdir, "baseline%s.log" % tag))
        if name == "node":
            argv = ["node", os.path.join(HERE, "baseline_node.js"), "--port", str(NODE_PORT),
                    "--redis-db", str(REDIS_DB)]
            return Server(name, argv, NODE_PORT, os.path.join(workdir, "node%s.log" % tag))
        if name == "node_original":
            # its migrator at nice 10 too, as imd's (the same deployment for both)
            argv = ["node", os.path.join(HERE, "original", "server.js"), "--port", str(ORIGINAL.port),
                    "--redis-db", str(REDIS_DB), "--redis-port", str(REDIS_PORT), "--prefix", ORIGINAL.prefix,
                    "--auto-pipelining", str(ORIGINAL.auto_pipelining)]
            return Server(name, argv, ORIGINAL.port, os.path.join(workdir, "node_original%s.log" % tag),
                          [["nice", "-n", "10"] + original_migrator_argv(ORIGINAL)], ORIGINAL)
        flavour = CPYTHON if name == "imd" else PYPY
        argv, companions = imd_argv_for(flavour, tag)
        return Server(name, argv, flavour.port, os.path.join(workdir, "%s%s.out" % (name, tag)), companions, flavour)

    def start_storm(config, tag):
        """imd (CPython) for the reconnect storm: the ws and http roles of ``config``."""
        argv = [os.path.join(CPYTHON.bin_dir, "twistd"), "-n", "--pidfile=", "--logfile",
                os.path.join(workdir, "imd-storm%s.log" % tag), "imd", "--config", config, "--roles", "ws,http"]
        return Server("imd-storm", argv, CPYTHON.port, os.path.join(workdir, "imd-storm%s.out" % tag), (), CPYTHON)

    names = [n for n in ORDER if n in selected and (n in ("node", "baseline", "node_original")
                                                     or any(f.name == n for f in flavours))]
    servers = {}
    try:
        if only & {"throughput", "receipts", "c2000", "latency"}:
            for name in names:
                servers[name] = start(name)
            max_rate = {}
            if "throughput" in only:
                r["throughput_c200_w8"] = throughput_rounds(setup, servers, 200, 8, duration, warmup)
                for f in flavours:
                    runs = r["throughput_c200_w8"]["runs"]
                    max_rate[f.name] = sum(run[f.name]["acked_per_s"] for run in runs) / len(runs)
            if "receipts" in only:
                r["throughput_c200_w8_receipts"] = once_each(setup, servers, 200, 8, duration, warmup, "receipts",
                                                             receipts=True)
            if "c2000" in only:
                r["throughput_c2000_w1"] = once_each(setup, servers, 2000, 1, duration, warmup, "c2000")
                time.sleep(3.0)  # let the servers finish closing the 2,000 connections
            if "latency" in only:
                r["latency"] = {}
                for f in flavours:
                    rate = args.rate or int(max_rate.get(f.name, 4000) / 2)
                    r["latency"][f.name] = open_runs(
                        setup, servers, [n for n in ("node", "node_original", "baseline", f.name) if n in servers],
                        rate, duration, warmup)
            for name in list(servers):
                servers.pop(name).stop()
        if "idle" in only:
            # each on a freshly started server
            r["idle"] = {}
            for name in names:
                servers[name] = start(name, "-idle")
                r["idle"][name] = idle(setup, servers[name], idle_n, tokens=servers[name].flavour is not None)
                servers.pop(name).stop()
        # A daemon of their own: after the idle run's 10,000 connections the
        # same process took logins at ~690/s against ~840/s fresh, though it
        # had freed every object (gc) and its CPU was back to idle.
        if only & {"login", "migrate"}:
            for f in flavours + ([ORIGINAL] if "node_original" in names else []):
                servers[f.name] = imd = start(f.name, "-login")
                pypy = f is PYPY
                if "login" in only:
                    r.setdefault("login", {})[f.name] = logins(
                        setup, imd, 1000 if args.quick else 3000, warm=(1000 if args.quick else 3000) if pypy else 0)
                if "migrate" in only:
                    r.setdefault("migrate", {})[f.name] = migrate(
                        setup, imd, 20000 if args.quick else 100000,
                        warm=(10000 if args.quick else 40000) if pypy else 0)
                servers.pop(f.name).stop()
        if "sync" in only:
            if HERE not in sys.path:
                sys.path.insert(0, HERE)
            from sync_probe import sync_row
            for f in flavours:
                servers[f.name] = imd = start(f.name, "-sync")
                r.setdefault("sync", {})[f.name] = sync_row(
                    setup, imd, lambda uid: issue_token(setup.private_key, uid, time.time(), 120), wait_drained, log,
                    rounds=10 if args.quick else 30,
                    cpu=lambda: {"redis": redis_cpu(), "mysql": mysql_cpu(), "ws": proc_cpu(imd.pid)})
                servers.pop(f.name).stop()
        if "ping" in only:
            if HERE not in sys.path:
                sys.path.insert(0, HERE)
            from sync_probe import ping_row
            for f in flavours:
                servers[f.name] = imd = start(f.name, "-ping")
                r.setdefault("ping", {})[f.name] = ping_row(
                    setup, imd, lambda uid: issue_token(setup.private_key, uid, time.time(), 120), log,
                    cpu=lambda: {"redis": redis_cpu(), "ws": proc_cpu(imd.pid)})
                servers.pop(f.name).stop()
        if "rooms" in only:
            if HERE not in sys.path:
                sys.path.insert(0, HERE)
            from rooms_probe import room_row
            for f in flavours:
                servers[f.name] = imd = start(f.name, "-rooms")
                r.setdefault("rooms", {})[f.name] = room_row(
                    setup, imd, lambda uid: issue_token(setup.private_key, uid, time.time(), 120), log,
                    messages=5000 if args.quick else 20000)
                servers.pop(f.name).stop()
        if "storm" in only:
            if CPYTHON not in flavours:
                log("storm: not measured (it runs imd on CPython, left out by --servers)")
            else:
                count = args.storm_connections or (1000 if args.quick else 10000)
                if fds < count + 1000:
                    raise RuntimeError("storm: %d connections need a higher open-file limit than %d (ulimit -n)"
                                       % (count, fds))
                r["storm"] = storm(setup, start_storm, count)
        if "layouts" in only and flavours:
            names = tuple(x for x in LAYOUTS if x == "split" or x in args.layouts.split(","))
            r["layouts"] = layouts(setup, flavours, start_layout, duration, warmup, args.layout_rounds, names)
        if "crash" in only:
            r["original_crash"] = original_crash(setup, workdir, 20000 if args.quick else 100000, 12)
        if "replicas" in only:
            r["replicas"] = replicas(workdir, imd_argv_for, duration, warmup,
                                     args.rate if only == {"replicas"} else None)
    finally:
        for server in servers.values():
            server.stop()
        if setup is not None:
            setup.drop()
    report["seconds"] = round(time.time() - started, 1)
    report["loadavg_end"] = loadavg()
    path = os.path.join(RESULTS, stamp + ".json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(table(report))
    log("results in %s (%.0f s)" % (path, report["seconds"]))
    if not args.no_doc and not args.quick:
        write_doc(report)
        log("summary table written to %s" % DOC)


if __name__ == "__main__":
    main()

"""``make bench``: imd against the baseline relay, on this machine, in one run.

Sets up its own Redis db index and MySQL database (never db 0 / ``imd``),
starts the baseline relay and the imd daemon (all roles, migrator running),
drives them with ``bench/loadgen`` (Node ``ws``) over loopback, reads the
daemon's CPU and RSS from /proc, and writes:

- ``bench/results/<stamp>.json``: everything measured;
- the summary table in ``docs/performance.md`` (between the bench markers).

Every step is bounded in count and time and stops by itself.  Only the
processes started here are stopped, by pid.

    .venv/bin/python bench/run.py [--quick] [--only throughput,receipts,latency,idle,login,migrate,replicas]

``receipts`` is the C=200 W=8 throughput run again with receipts in the load
mix (contract §7.1): each delivered message answered by an ``R`` delivered,
every tenth by an ``R`` read too, against both servers (the baseline relays
an ``R`` like any packet).

``replicas`` (not in the default set; ``--only replicas``, or ``--replicas``
to add it): a private Redis master and one replica on free loopback ports,
and imd's message throughput (closed loop) and ack latency (open loop, the
same offered rate) with ``[redis] min_replicas`` 0, then 1, against them.
"""

import argparse
import json
import os
import platform
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
# IMD_BENCH_IMD_BIN: the directory whose twistd runs imd and its migrator
# (.venv-pypy3/bin: imd on PyPy, the rest of the bench as it is)
IMD_BIN = os.environ.get("IMD_BENCH_IMD_BIN") or VENV_BIN
RESULTS = os.path.join(HERE, "results")
DOC = os.path.join(ROOT, "docs", "performance.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

REDIS_DB = int(os.environ.get("IMD_BENCH_REDIS_DB", "9"))
REDIS_PORT = 6379   # the replicas run points this at a private master
MYSQL_DB = os.environ.get("IMD_BENCH_MYSQL_DB", "imd_bench")
# IMD_BENCH_PORT moves the three listeners (baseline, imd ws, imd http) so
# that two checkouts can bench one after the other without a port clash
BASE_PORT = int(os.environ.get("IMD_BENCH_PORT", "8790"))
IMD_PORT, HTTP_PORT = BASE_PORT + 1, BASE_PORT + 2
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

assert REDIS_DB != 0 and MYSQL_DB != "imd", "the bench never touches db 0 / database imd"


_T0 = time.time()


def log(msg):
    sys.stderr.write("bench %5.1fs: %s\n" % (time.time() - _T0, msg))
    sys.stderr.flush()


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


def redis_cpu():
    """CPU seconds of the Redis server so far (INFO cpu)."""
    info = Redis(REDIS_DB).call("INFO", "cpu").decode()
    fields = dict(line.split(":", 1) for line in info.split("\r\n") if ":" in line)
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


def mysql_cpu():
    """CPU seconds of the MariaDB server so far, or None when its pid is not found."""
    try:
        pid = int(subprocess.run(["pidof", "-s", "mariadbd", "mysqld"], capture_output=True,
                                 text=True).stdout.split()[0])
        return proc_cpu(pid)
    except (IndexError, ValueError, OSError):
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


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listens on 127.0.0.1:%d after %ss" % (port, timeout))


class Server:
    """Processes started here (the first one listens on ``port``), stopped here by pid."""

    def __init__(self, name, argv, port, logfile, companions=()):
        self.name, self.port = name, port
        if port_taken(port):
            # else the run would measure whatever listens there
            raise RuntimeError("127.0.0.1:%d is already taken (another bench? set IMD_BENCH_PORT)" % port)
        self.log = open(logfile, "ab")
        self.procs = [subprocess.Popen(a, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
                      for a in [argv] + list(companions)]
        self.pid = self.procs[0].pid
        self.pids = [p.pid for p in self.procs]
        wait_port(port)

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

def bench_config(path, redis_extra=""):
    text = """
[imd]
roles = ws, http, migrate
node_id = bench
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
[http]
listen = tcp:{http}:interface=127.0.0.1
[auth]
; the generator's tokens are all issued ahead of the run, to live 600 s
token_ttl = 600
[redis]
url = redis://127.0.0.1:{redis_port}/{db}
{redis_extra}
[mysql]
database = {mysql}
""".format(imd=IMD_PORT, http=HTTP_PORT, db=REDIS_DB, mysql=MYSQL_DB, redis_port=REDIS_PORT,
           redis_extra=redis_extra)
    with open(path, "w") as f:
        f.write(text)
    return path


class Setup:
    def __init__(self, workdir, redis_extra=""):
        self.workdir = workdir
        self.config = bench_config(os.path.join(workdir, "imd.ini"), redis_extra)
        self.redis = Redis(REDIS_DB)
        self.redis.call("FLUSHDB")
        public_pem, private_pem = generate_key_pair()
        self.redis.call("MSET", "publicKey", public_pem, "privateKey", private_pem)
        # A loaded key: issue_token signs with it in <1 ms (a PEM string costs ~40 ms).
        self.private_key = serialization.load_pem_private_key(private_pem.encode(), None)
        conn = pymysql.connect(host="127.0.0.1", user="root")
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS `%s`" % MYSQL_DB)
        conn.close()
        subprocess.run([os.path.join(VENV_BIN, "imd-admin"), "--config", self.config, "schema", "apply"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        self.next_uid = 1

    def pairs(self, count):
        """``count`` connections as count/2 friend pairs (fresh uids), friends in URS:."""
        uids = list(range(self.next_uid, self.next_uid + count))
        self.next_uid += count
        commands = []
        for a, b in zip(uids[0::2], uids[1::2]):
            commands += [("SADD", "URS:%d" % a, b), ("SADD", "URS:%d" % b, a)]
        for i in range(0, len(commands), 2000):
            self.redis.pipeline(commands[i:i + 2000])
        return uids

    def conns_file(self, name, uids, port, tokens):
        now = time.time()
        path = os.path.join(self.workdir, name + ".conns")
        with open(path, "w") as f:
            for uid in uids:
                path_part = issue_token(self.private_key, uid, now, 600) if tokens else str(uid)
                f.write("%d ws://127.0.0.1:%d/%s\n" % (uid, port, path_part))
        return path

    def mysql_count(self):
        conn = pymysql.connect(host="127.0.0.1", user="root", database=MYSQL_DB)
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM message")
            (n,) = cur.fetchone()
        conn.close()
        return n

    def queue_lag(self):
        """(entries not yet migrated, age in s of the oldest one)."""
        queued, in_flight, oldest = self.redis.pipeline(
            [("LLEN", "MQ"), ("LLEN", "MQ:processing"),
             ("EVAL", "return redis.call('LINDEX', KEYS[2], -1) or redis.call('LINDEX', KEYS[1], -1)",
              2, "MQ", "MQ:processing")])
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


def measured(server, proc, setup=None):
    """Wait for the generator; the server's CPU (over the measured window, from
    the generator's start/end marks) and peak RSS meanwhile, and (for imd) the
    migrator's lag sampled every 0.5 s."""
    before = server.sample()
    redis_cpu0, mysql_cpu0 = redis_cpu(), mysql_cpu()
    reset_peak_rss(server.pid)
    load0 = loadavg()
    lag = {"max_age_s": 0.0, "max_queued": 0}
    marks, lines = {}, []

    def read():
        for line in proc.stdout:
            if line.startswith('{"measure"'):
                marks[json.loads(line)["measure"]] = server.sample()["cpu_each_s"]
            else:
                lines.append(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        if setup is not None:
            queued, age = setup.queue_lag()
            lag["max_age_s"] = round(max(lag["max_age_s"], age), 3)
            lag["max_queued"] = max(lag["max_queued"], queued)
        time.sleep(0.5)
    reader.join(10)
    if proc.returncode != 0 or not lines:
        raise RuntimeError("loadgen failed (exit %s)" % proc.returncode)
    result = json.loads(lines[-1])
    after = server.sample()
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
    if delivered and mysql_cpu0 is not None and mysql_cpu1 is not None and result.get("measured_seconds"):
        result["mysql_cpu_us_per_msg_upper"] = round(
            (mysql_cpu1 - mysql_cpu0) * 1e6 / (delivered * result["measured_seconds"]), 1)
    if delivered and "start" in marks and "end" in marks:
        each = [end - start for start, end in zip(marks["start"], marks["end"])]
        window_cpu = sum(each)
        result["server_cpu_window_s"] = round(window_cpu, 2)
        result["server_cpu_us_per_msg"] = round(window_cpu * 1e6 / (delivered * result["measured_seconds"]), 1)
        # imd: [ws+http process, migrator process]
        result["server_cpu_us_per_msg_each"] = [
            round(cpu * 1e6 / (delivered * result["measured_seconds"]), 1) for cpu in each]
    if setup is not None:
        result["migrator_lag"] = lag
    return result


PROFILE = None  # set by --profile: py-spy records the servers during the C=200 runs (imd at login too)


def profiled(server, label, duration):
    if PROFILE is None:
        return None
    out = os.path.join(RESULTS, "%s-%s-%s.%s" % (PROFILE[0], server.name, label, PROFILE[1]))
    argv = [os.path.join(VENV_BIN, "py-spy"), "record", "--pid", str(server.pid), "--duration",
            str(int(duration)), "--rate", "200", "--nonblocking", "--output", out]
    if PROFILE[1] == "txt":
        argv += ["--format", "raw"]
    log("  py-spy -> %s" % out)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def throughput(setup, imd, base, conns_n, window, duration, warmup, receipts=False):
    uids = setup.pairs(conns_n)
    out = {}
    for name, server in (("baseline", base), ("imd", imd)):
        conns = setup.conns_file("tp-%s-%d%s" % (name, conns_n, "-r" if receipts else ""), uids, server.port,
                                 tokens=name == "imd")
        log("throughput %s C=%d W=%d%s (load %s)" % (name, conns_n, window, " + receipts" if receipts else "",
                                                     loadavg()[0]))
        proc = loadgen(conns, "closed", window=window, duration=duration, warmup=warmup,
                       concurrency=100, receipts=1 if receipts else 0)
        spy = profiled(server, "c%d" % conns_n, duration) if conns_n <= 200 and not receipts else None
        out[name] = measured(server, proc, setup if name == "imd" else None)
        if spy is not None:
            spy.wait(30)
        if name == "imd":
            out[name]["migrator_drained_s"] = wait_drained(setup)
        log("  %s: %.0f acked/s, ack p99 %.1f ms%s" % (
            name, out[name]["acked_per_s"], out[name]["ack_latency_ms"].get("p99", -1),
            ", %.0f receipts acked/s" % out[name]["receipts_acked_per_s"] if receipts else ""))
    out["ratio"] = round(out["imd"]["acked_per_s"] / out["baseline"]["acked_per_s"], 3)
    return out


def wait_drained(setup, timeout=60.0):
    started = time.time()
    while time.time() - started < timeout:
        if setup.queue_lag()[0] == 0:
            return round(time.time() - started, 2)
        time.sleep(0.1)
    return None


def latency(setup, imd, base, rate, duration, warmup):
    uids = setup.pairs(200)
    out = {"rate": rate}
    time.sleep(3.0)  # let the servers finish closing the previous run's 2,000 connections
    for name, server in (("baseline", base), ("imd", imd)):
        conns = setup.conns_file("lat-%s" % name, uids, server.port, tokens=name == "imd")
        log("open loop %s R=%d (load %s)" % (name, rate, loadavg()[0]))
        proc = loadgen(conns, "open", rate=rate, duration=duration, warmup=warmup)
        out[name] = measured(server, proc, setup if name == "imd" else None)
        log("  %s: ack p50 %.2f p99 %.2f ms" % (name, out[name]["ack_latency_ms"].get("p50", -1),
                                                 out[name]["ack_latency_ms"].get("p99", -1)))
    return out


def idle(setup, server, count, tokens):
    uids = setup.pairs(count)
    conns = setup.conns_file("idle-%s" % server.name, uids, server.port, tokens=tokens)
    time.sleep(1.0)
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
    log("  %s: %.2f KB per connection" % (server.name, result["kb_per_connection"]))
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


def logins(setup, imd, count):
    uids = setup.pairs(count)
    conns = setup.conns_file("login", uids, imd.port, tokens=True)
    quiet = wait_quiet(imd)
    log("logins: %d (load %s; server quiet after %.1f s)" % (count, loadavg()[0], quiet))
    proc = loadgen(conns, "login", concurrency=50)
    spy = profiled(imd, "login", 3)
    result = measured(imd, proc)
    if spy is not None:
        spy.wait(30)
    result["quiet_wait_s"] = quiet
    log("  %.0f logins/s" % result["logins_per_s"])
    return result


def migrate(setup, imd, rows):
    """Queue ``rows`` messages at once (one pipelined burst of LPUSH) while the
    daemon's migrator runs, and time from the start of the burst to MQ empty."""
    count0 = setup.mysql_count()
    now = int(time.time() * 1000)
    commands, batch = [], []
    for i in range(rows):
        batch.append(json.dumps({"id": "m%d" % i, "from": 1, "to": 2, "type": "t",
                                 "msg": "migrated message %d" % i, "ts": now}, separators=(",", ":")))
        if len(batch) == 1000:
            commands.append(["LPUSH", "MQ"] + batch)
            batch = []
    if batch:
        commands.append(["LPUSH", "MQ"] + batch)
    quiet = wait_quiet(imd)
    log("migrate: %d rows (load %s; server quiet after %.1f s)" % (rows, loadavg()[0], quiet))
    cpu0 = imd.sample()["cpu_s"]
    started = time.time()
    setup.redis.pipeline(commands)
    pushed = time.time() - started
    drained = wait_drained(setup, timeout=120.0)
    seconds = time.time() - started
    cpu = imd.sample()["cpu_s"] - cpu0
    inserted = setup.mysql_count() - count0
    result = {"rows": rows, "inserted": inserted, "push_seconds": round(pushed, 3),
              "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds) if drained is not None else None,
              "daemon_cpu_s": round(cpu, 2), "loadavg": loadavg(), "quiet_wait_s": quiet,
              "note": "from the start of the LPUSH burst to MQ and MQ:processing empty; batch = 500 (default)"}
    log("  %s rows/s (%d inserted)" % (result["rows_per_s"], inserted))
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
    """imd against a private master + replica: min_replicas 0 then 1, closed
    loop C=200 W=8 and open loop at one rate (half of min_replicas 0's
    closed-loop maximum unless given)."""
    global REDIS_PORT
    pair = RedisPair(workdir)
    saved = REDIS_PORT
    REDIS_PORT = pair.master_port
    out = {"redis_master_port": pair.master_port}
    try:
        for min_replicas in (0, 1):
            setup = Setup(workdir, redis_extra="min_replicas = %d\nreplica_timeout = 0.5\n" % min_replicas)
            argv, companions = imd_argv_for(setup.config)
            imd = Server("imd", argv, IMD_PORT, os.path.join(workdir, "imd-replicas-%d.out" % min_replicas),
                         companions)
            try:
                runs = {}
                uids = setup.pairs(200)
                conns = setup.conns_file("rep-%d" % min_replicas, uids, imd.port, tokens=True)
                log("replicas: min_replicas %d, closed loop C=200 W=8 (load %s)" % (min_replicas, loadavg()[0]))
                replica_cpu0 = proc_cpu(pair.replica_pid)
                runs["closed"] = measured(imd, loadgen(conns, "closed", window=8, duration=duration, warmup=warmup,
                                                       concurrency=100), setup)
                runs["closed"]["replica_cpu_s"] = round(proc_cpu(pair.replica_pid) - replica_cpu0, 2)
                runs["closed"]["migrator_drained_s"] = wait_drained(setup)
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
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
            "redis": setup_version("redis"), "kernel": platform.release(), "imd_bin": IMD_BIN}


def setup_version(_):
    try:
        return Redis(REDIS_DB).call("INFO", "server").decode().split("redis_version:")[1].split()[0]
    except Exception:
        return "?"


def fmt_lat(lat):
    return "%.1f / %.1f / %.1f" % (lat.get("p50", 0), lat.get("p99", 0), lat.get("p999", 0)) if lat.get("n") else "-"


def fmt_lat2(lat):
    return "%.1f / %.1f" % (lat.get("p50", 0), lat.get("p99", 0)) if lat.get("n") else "-"


def cpu_parts(result):
    each = result.get("server_cpu_us_per_msg_each") or []
    return " (%s)" % " + ".join("%.1f" % x for x in each) if len(each) > 1 else ""


def table(report):
    rows = ["| measure | imd | baseline relay | ratio / target | met |", "|---|---|---|---|---|"]
    r = report["results"]
    for key, target in (("throughput_c200_w8", 0.9), ("throughput_c200_w8_receipts", None),
                        ("throughput_c2000_w1", None)):
        if key not in r:
            continue
        t = r[key]
        imd, base = t["imd"], t["baseline"]
        lag = imd["migrator_lag"]["max_age_s"]
        with_receipts = key.endswith("_receipts")
        label = key.replace("throughput_", "").replace("_receipts", "").replace("_", " ").upper()
        rows.append("| %s%s acked msgs/s (delivered) | %.0f (%.0f) | %.0f (%.0f) | %.2f× %s | %s |" % (
            label, " + receipts" if with_receipts else "", imd["acked_per_s"], imd["delivered_per_s"],
            base["acked_per_s"], base["delivered_per_s"], t["ratio"],
            "(≥ 0.9×, lag < 2 s)" if target else "", ("yes" if t["ratio"] >= target and lag < 2 else "no")
            if target else "-"))
        if with_receipts:
            rows.append("| ↳ receipts acked/s (relayed), receipt ack p50/p99 ms | %.0f (%.0f), %s | %.0f (%.0f), %s "
                        "| 1.1 per message | |" % (
                            imd["receipts_acked_per_s"], imd["receipts_relayed_per_s"],
                            fmt_lat2(imd["receipt_ack_latency_ms"]), base["receipts_acked_per_s"],
                            base["receipts_relayed_per_s"], fmt_lat2(base["receipt_ack_latency_ms"])))
        rows.append("| ↳ ack latency p50/p99/p999 ms (closed loop) | %s | %s | | |" % (
            fmt_lat(imd["ack_latency_ms"]), fmt_lat(base["ack_latency_ms"])))
        rows.append("| ↳ server CPU µs/msg (imd: ws + migrator), peak RSS MB | %s%s, %.0f | %s, %.0f | | |" % (
            imd.get("server_cpu_us_per_msg"), cpu_parts(imd), imd["server_peak_rss_kb"] / 1024.0,
            base.get("server_cpu_us_per_msg"), base["server_peak_rss_kb"] / 1024.0))
        rows.append("| ↳ Redis, MariaDB CPU µs/msg (upper bounds) | %s, %s | %s, %s | | |" % (
            imd.get("redis_cpu_us_per_msg_upper"), imd.get("mysql_cpu_us_per_msg_upper", "-"),
            base.get("redis_cpu_us_per_msg_upper"), base.get("mysql_cpu_us_per_msg_upper", "-")))
        rows.append("| ↳ migrator max lag s (drained after) / errors | %.2f (%ss) / %s | - / %s | | |" % (
            lag, imd.get("migrator_drained_s"), imd["errors"] or "none", base["errors"] or "none"))
    if "latency" in r:
        lat = r["latency"]
        p99 = lat["imd"]["ack_latency_ms"].get("p99", 1e9)
        rows.append("| open loop R=%d msgs/s: ack p50/p99/p999 ms | %s | %s | p99 ≤ 25 ms | %s |" % (
            lat["rate"], fmt_lat(lat["imd"]["ack_latency_ms"]), fmt_lat(lat["baseline"]["ack_latency_ms"]),
            "yes" if p99 <= 25 else "no"))
        rows.append("| ↳ end-to-end p50/p99/p999 ms | %s | %s | | |" % (
            fmt_lat(lat["imd"]["e2e_latency_ms"]), fmt_lat(lat["baseline"]["e2e_latency_ms"])))
    if "idle_imd" in r:
        kb = r["idle_imd"]["kb_per_connection"]
        base_kb = r.get("idle_baseline", {}).get("kb_per_connection")
        rows.append("| RSS per idle logged-in connection, KB (%d conns) | %.1f | %s | ≤ 14 KB | %s |" % (
            r["idle_imd"]["connected"], kb, "%.1f" % base_kb if base_kb is not None else "-",
            "yes" if kb <= 14 else "no"))
    if "login" in r:
        n = r["login"]["logins_per_s"]
        rows.append("| logins/s (%d, %d at a time, token issue excluded) | %.0f | | ≥ 800 | %s |" % (
            r["login"]["connections"], r["login"]["concurrency"], n, "yes" if n >= 800 else "no"))
    if "migrate" in r:
        n = r["migrate"]["rows_per_s"] or 0
        rows.append("| migrator rows/s (%d rows, batch 500) | %.0f | | ≥ 20,000 | %s |" % (
            r["migrate"]["rows"], n, "yes" if n >= 20000 else "no"))
    if "replicas" in r:
        rep = r["replicas"]
        zero, one = rep["min_replicas_0"], rep["min_replicas_1"]
        rows.append("| `[redis] min_replicas` 0 → 1 (private master + replica): C200 W8 acked msgs/s | "
                    "%.0f → %.0f | | %.2f× | - |" % (zero["closed"]["acked_per_s"], one["closed"]["acked_per_s"],
                                                   rep["throughput_ratio_1_vs_0"]))
        rows.append("| ↳ ack latency p50/p99/p999 ms, closed loop | %s → %s | | | |" % (
            fmt_lat(zero["closed"]["ack_latency_ms"]), fmt_lat(one["closed"]["ack_latency_ms"])))
        rows.append("| ↳ open loop R=%d: ack p50/p99/p999 ms | %s → %s | | | |" % (
            one["open"]["rate"], fmt_lat(zero["open"]["ack_latency_ms"]), fmt_lat(one["open"]["ack_latency_ms"])))
        rows.append("| ↳ Redis master CPU µs/msg (upper bound), closed loop | %s → %s | | | |" % (
            zero["closed"].get("redis_cpu_us_per_msg_upper"), one["closed"].get("redis_cpu_us_per_msg_upper")))
        rows.append("| ↳ logins/s; Redis master CPU µs/login (upper bound) | %s; %s → %s; %s | | | |" % (
            zero["login"].get("logins_per_s"), zero["login"].get("redis_cpu_us_per_login_upper"),
            one["login"].get("logins_per_s"), one["login"].get("redis_cpu_us_per_login_upper")))
    m = report["machine"]
    head = ("Run %s on %d cores, %s; Python %s, Node %s, Redis %s; load average at start %s. "
            "Command: `%s` (%.0f s). Raw figures: `bench/results/%s.json`.\n\n" % (
                report["started"], m["cores"], m["cpu"], m["python"], m["node"], m["redis"],
                " ".join("%.2f" % x for x in report["loadavg_start"]), report["command"], report["seconds"],
                report["stamp"]))
    return head + "\n".join(rows) + "\n"


def write_doc(report):
    block = BEGIN + "\n" + table(report) + END
    text = open(DOC).read() if os.path.exists(DOC) else "# Performance\n\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text += "\n" + block + "\n"
    with open(DOC, "w") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, not figures)")
    parser.add_argument("--only", default="throughput,receipts,latency,idle,login,migrate")
    parser.add_argument("--profile", choices=["svg", "txt"], help="py-spy flame graph (svg) or raw stacks "
                        "(txt) of imd during the C=200 throughput run, into bench/results/")
    parser.add_argument("--rate", type=int, help="open-loop rate (default: half of imd's C=200 W=8 maximum)")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/performance.md")
    parser.add_argument("--replicas", action="store_true", help="also run the min_replicas 0 vs 1 comparison "
                        "(a private master + replica)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if args.replicas:
        only.add("replicas")
    duration, warmup = (3, 1) if args.quick else (10, 2)
    idle_n = 1000 if args.quick else 10000
    fds = raise_fd_limit()
    os.makedirs(RESULTS, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    global PROFILE
    PROFILE = (stamp, args.profile) if args.profile else None
    workdir = tempfile.mkdtemp(prefix="imd-bench-")
    started = time.time()
    report = {"stamp": stamp, "started": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
              "loadavg_start": loadavg(), "fd_limit": fds, "command": "make bench" + (
                  " BENCH_ARGS='%s'" % " ".join(sys.argv[1:]) if len(sys.argv) > 1 else ""), "results": {}}
    r = report["results"]
    log("workdir %s; redis db %d, mysql %s; load %s" % (workdir, REDIS_DB, MYSQL_DB, report["loadavg_start"]))
    # (the replicas run alone uses a private Redis: nothing of db REDIS_DB is touched)
    setup = Setup(workdir) if only - {"replicas"} else None
    # imd as the shipped systemd units run it: the ws and http roles in one
    # process, the migrator in its own at nice 10 (imd-migrate.service).
    # (In one process the migrator starves behind a saturated reactor: at
    # C=200 W=8 its lag grew by ~0.5 s every second; alone it stays under
    # 0.5 s.  docs/performance.md.)
    def twistd(log_name, roles, config=None):
        return [os.path.join(IMD_BIN, "twistd"), "-n", "--pidfile=", "--logfile",
                os.path.join(workdir, log_name), "imd", "--config", config or setup.config, "--roles", roles]
    imd_argv = twistd("imd.log", "ws,http") if setup is not None else None
    imd_companions = [["nice", "-n", "10"] + twistd("migrator.log", "migrate")] if setup is not None else None

    def imd_argv_for(config):
        return (twistd("imd.log", "ws,http", config),
                [["nice", "-n", "10"] + twistd("migrator.log", "migrate", config)])
    base_argv = [sys.executable, os.path.join(HERE, "baseline_relay.py"), "--port", str(BASE_PORT),
                 "--redis-db", str(REDIS_DB)]
    servers = []
    try:
        if only & {"throughput", "receipts", "latency"}:
            imd = Server("imd", imd_argv, IMD_PORT, os.path.join(workdir, "imd.out"), imd_companions)
            base = Server("baseline", base_argv, BASE_PORT, os.path.join(workdir, "baseline.log"))
            servers += [imd, base]
            max_rate = None
            if "throughput" in only:
                r["throughput_c200_w8"] = throughput(setup, imd, base, 200, 8, duration, warmup)
                max_rate = r["throughput_c200_w8"]["imd"]["acked_per_s"]
                r["throughput_c2000_w1"] = throughput(setup, imd, base, 2000, 1, duration, warmup)
            if "receipts" in only:
                r["throughput_c200_w8_receipts"] = throughput(setup, imd, base, 200, 8, duration, warmup,
                                                              receipts=True)
            if "latency" in only:
                rate = args.rate or int((max_rate or 2000) / 2)
                r["latency"] = latency(setup, imd, base, rate, duration, warmup)
            imd.stop()
            base.stop()
            servers = []
        if "idle" in only:
            for name, argv, port, tokens, companions in (
                    ("imd", imd_argv, IMD_PORT, True, imd_companions),
                    ("baseline", base_argv, BASE_PORT, False, ())):
                server = Server(name, argv, port, os.path.join(workdir, name + ".idle.log"), companions)
                servers.append(server)
                try:
                    r["idle_" + name] = idle(setup, server, idle_n, tokens)
                finally:
                    server.stop()
                    servers.remove(server)
        # A daemon of their own: after the idle run's 10,000 connections the
        # same process took logins at ~690/s against ~840/s fresh, though it
        # had freed every object (gc) and its CPU was back to idle.
        if only & {"login", "migrate"}:
            imd = Server("imd", imd_argv, IMD_PORT, os.path.join(workdir, "imd.out"), imd_companions)
            servers.append(imd)
            if "login" in only:
                r["login"] = logins(setup, imd, 1000 if args.quick else 3000)
            if "migrate" in only:
                r["migrate"] = migrate(setup, imd, 20000 if args.quick else 100000)
            imd.stop()
            servers.remove(imd)
        if "replicas" in only:
            r["replicas"] = replicas(workdir, imd_argv_for, duration, warmup, args.rate if only == {"replicas"}
                                     else None)
    finally:
        for server in servers:
            server.stop()
        if setup is not None:
            setup.redis.call("FLUSHDB")
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

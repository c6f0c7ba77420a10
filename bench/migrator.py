"""bench/migrator: rows/s from Redis MQ into MySQL, and lag under steady load.

    .venv/bin/python bench/migrator.py [-n 100000] [--batches 100,500,2000]
        [--rate 5000 --seconds 10] [--redis-db 15] [--mysql-db imd_bench_mig]
        [--drop-keys message_by_ts,...]

Phase 1, for each batch size: fill MQ with N messages (as the daemon stores
them), start a migrator, time until MQ is empty; with the CPU each of this
process (the migrator), MariaDB and Redis used meanwhile (100% = one core),
the same as CPU microseconds per row (what a shared machine changes least),
and how busy the whole machine was (100% = every core).  --drop-keys drops
those keys of ``message`` in the bench's own database after the schema is
applied: what each key costs the inserts.  Phase 2: push at a steady
rate (through the same Lua call the daemon acks with) while the migrator runs
with the default batch size, sampling its lag once a second.  It uses its own
Redis key prefix (imdbench:) and MySQL database (dropped and re-created).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task, threads  # noqa: E402

from imd import protocol  # noqa: E402
from imd.app import App  # noqa: E402
from imd.config import parse_settings  # noqa: E402
from imd.stores.mysql import apply_schema  # noqa: E402


def _server_pids(names):
    """{name: pid} of the local server processes named ``names`` (from /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/comm" % entry) as f:
                    comm = f.read().strip()
            except OSError:
                continue
            for name in names:
                if comm == name and name not in found:
                    found[name] = int(entry)
    return found


def _cpu_seconds(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine():
    """(busy, total) jiffies of all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuShares:
    """CPU of the migrator (this process), MariaDB and Redis over a stretch."""

    def __init__(self):
        self.pids = _server_pids(("mariadbd", "mysqld", "redis-server"))
        self.began = (time.perf_counter(), os.times(), {n: _cpu_seconds(p) for n, p in self.pids.items()},
                      _machine())

    def shares(self):
        wall0, own0, servers0, machine0 = self.began
        wall, own, machine = time.perf_counter() - wall0, os.times(), _machine()
        used = {n: _cpu_seconds(p) - servers0[n] for n, p in self.pids.items()}
        mariadb = used.get("mariadbd", used.get("mysqld", 0.0))
        busy = (machine[0] - machine0[0]) / max(1, machine[1] - machine0[1])
        return {"migrator": 100.0 * (own.user + own.system - own0.user - own0.system) / wall,
                "mariadb": 100.0 * mariadb / wall, "redis": 100.0 * used.get("redis-server", 0.0) / wall,
                "machine": 100.0 * busy, "wall": wall}


def settings_for(args, batch):
    return parse_settings(
        "[imd]\nroles = migrate\n[redis]\nurl = redis://127.0.0.1:6379/%d\n"
        "prefix = %s\n[mysql]\ndatabase = %s\n[migrate]\nbatch = %d\ninterval = 0.05\nlock_ttl = 2\n"
        % (args.redis_db, args.prefix, args.mysql_db, batch), "<bench>")


def reset_mysql(settings, drop_keys=()):
    import pymysql

    from imd.stores.mysql import connect_kwargs
    conn = pymysql.connect(**connect_kwargs(settings, database=False))
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS `%s`" % settings.database)
    conn.close()
    apply_schema(settings)
    if drop_keys:
        conn = pymysql.connect(**connect_kwargs(settings))
        with conn.cursor() as cur:
            for key in drop_keys:
                cur.execute("ALTER TABLE message DROP INDEX `%s`" % key)
        conn.close()


def entries(start, count, ts):
    return [protocol.message_json(protocol.MessagePacket("b%d" % n, "t", 2 + n % 50, "benchmark message %d" % n),
                                  1 + n % 97, ts).decode("utf-8") for n in range(start, start + count)]


def count_rows(settings):
    """Rows in ``message`` (MysqlStore's count_messages is gone: one query here)."""
    import pymysql

    from imd.stores.mysql import connect_kwargs
    conn = pymysql.connect(**connect_kwargs(settings))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM message")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


@defer.inlineCallbacks
def fill(app, items):
    for i in range(0, len(items), 5000):
        yield app.redis_client.command("LPUSH", app.keys.mq, *items[i:i + 5000])


@defer.inlineCallbacks
def start(reactor, settings, drop_keys=()):
    app = App(settings, reactor)
    app.redis_client.startService()
    yield app.redis_client.wait_connected()
    keys = app.keys  # only its own keys: the db may be shared
    yield app.redis_client.command("DEL", keys.mq, keys.mq_processing, keys.mq_lock, keys.mq_dead)
    yield threads.deferToThread(reset_mysql, settings.mysql, drop_keys)
    return app


@defer.inlineCallbacks
def throughput(reactor, args, batch):
    settings = settings_for(args, batch)
    app = yield start(reactor, settings, args.drop_keys)
    yield fill(app, entries(0, args.n, int(time.time() * 1000)))
    app.mysql.startService()
    group = app.migrator_service()
    cpu = CpuShares()
    began = time.perf_counter()
    group.startService()
    yield app.migrator.wait_drained()
    elapsed = time.perf_counter() - began
    shares = cpu.shares()
    count = yield threads.deferToThread(count_rows, settings.mysql)
    yield group.stopService()
    app.mysql.stopService()
    yield app.redis_client.stopService()
    assert count == args.n, (count, args.n)
    return elapsed, shares


@defer.inlineCallbacks
def steady(reactor, args):
    settings = settings_for(args, 500)
    app = yield start(reactor, settings)
    app.mysql.startService()
    group = app.migrator_service()
    group.startService()
    tick, sent, samples = 0.01, [0], []
    began = time.perf_counter()

    def push():
        due = int((time.perf_counter() - began) * args.rate) - sent[0]
        if due > 0:
            batch = entries(10 ** 9 + sent[0], due, int(time.time() * 1000))
            sent[0] += due
            return app.redis_client.command("LPUSH", app.keys.mq, *batch)
    pusher = task.LoopingCall(push)
    pusher.start(tick)
    for _ in range(int(args.seconds)):
        yield task.deferLater(reactor, 1.0, lambda: None)
        yield app.migrator._sample_lag()
        samples.append((app.migrator.queue_length, app.migrator.oldest_age))
    pusher.stop()
    yield app.migrator.wait_drained()
    count = yield threads.deferToThread(count_rows, settings.mysql)
    yield group.stopService()
    app.mysql.stopService()
    yield app.redis_client.stopService()
    return sent[0], count, samples


@defer.inlineCallbacks
def main(reactor, args):
    print("bench/migrator: %d messages per run, Redis db %d, MySQL database %s, %s %s, %d cores, load %s"
          % (args.n, args.redis_db, args.mysql_db, sys.implementation.name, sys.version.split()[0],
             os.cpu_count() or 0, " ".join("%.2f" % x for x in os.getloadavg())))
    if args.drop_keys:
        print("keys of message dropped: %s" % ", ".join(args.drop_keys))
    print("| batch | seconds | rows/s | CPU % migrator | MariaDB | Redis | machine busy % "
          "| CPU µs/row migrator | MariaDB | Redis |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        elapsed, cpu = yield throughput(reactor, args, batch)
        per_row = [cpu[name] / 100.0 * cpu["wall"] / args.n * 1e6 for name in ("migrator", "mariadb", "redis")]
        print("| %d | %.2f | %d | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f | %.1f |" % (
            batch, elapsed, args.n / elapsed, cpu["migrator"], cpu["mariadb"], cpu["redis"], cpu["machine"],
            *per_row))
    if args.seconds:
        sent, count, samples = yield steady(reactor, args)
        print("\nsteady load %d msg/s for %ds, batch 500: %d sent, %d rows" % (args.rate, args.seconds, sent, count))
        print("max queue length %d, max age of the oldest unmigrated message %.2fs"
              % (max(q for q, _ in samples), max(a for _, a in samples)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100000)
    parser.add_argument("--batches", default="100,500,2000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--redis-db", type=int, default=15)
    parser.add_argument("--mysql-db", default="imd_bench_mig")
    parser.add_argument("--prefix", default="imdbench:", help="Redis key prefix (two runs at once: one each)")
    parser.add_argument("--drop-keys", default=(), type=lambda s: [k for k in s.split(",") if k],
                        help="keys of message to drop in the bench's database (what each costs)")
    task.react(main, [parser.parse_args()])

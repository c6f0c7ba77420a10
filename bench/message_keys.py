"""bench/message_keys: what each key of ``message`` costs MariaDB per row.

    .venv/bin/python bench/message_keys.py [-n 40000] [--rounds 3] [--prefill 0]
        [--mysql-db imd_bench_keys] [--variants none,message_by_pos,...]

For each variant (``none``: the table as sql/ makes it; otherwise the keys
named, joined by ``+``, dropped), in its own scratch database: fill the
table with ``--prefill`` rows, then insert N rows as the migrator does (its
own INSERT IGNORE of 500 rows, one commit per batch) and read the CPU
the server thread of this connection used meanwhile
(``/proc/<mariadbd>/task/<tid>/stat``: one thread per connection), so other
clients of a shared server do not count.  The variants are alternated,
``--rounds`` times; the table prints the median µs per row of each.  The
server's background work (purge, page flushing) is not counted: it runs on
threads of its own, and grows with the same keys.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pymysql  # noqa: E402

from imd import protocol  # noqa: E402
from imd.config import parse_settings  # noqa: E402
from imd.stores.mysql import _insert_messages_txn, apply_schema, connect_kwargs  # noqa: E402

BATCH = 500


def server_pid():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/comm" % entry) as f:
                    if f.read().strip() in ("mariadbd", "mysqld"):
                        return int(entry)
            except OSError:
                continue
    raise SystemExit("no mariadbd or mysqld process here")


def task_cpu(pid):
    """{tid: CPU seconds} of every thread of ``pid``."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def own_thread(pid, conn):
    """The server thread of ``conn``: the one that burns the CPU of a
    BENCHMARK() run on it."""
    before = task_cpu(pid)
    with conn.cursor() as cur:
        cur.execute("SELECT BENCHMARK(3000000, MD5('imd'))")
    after = task_cpu(pid)
    return max(after, key=lambda tid: after[tid] - before.get(tid, 0.0))


def rows(start, count, ts):
    out = []
    for n in range(start, start + count):
        packet = protocol.MessagePacket("b%d" % n, "t", 2 + n % 50, "benchmark message %d" % n)
        sender = 1 + n % 97
        text = protocol.message_json(packet, sender, ts + n // 10).decode("utf-8")
        out.append(("b%d" % n, sender, packet.to, "t", packet.msg, ts + n // 10, n + 1, text))
    return out


def run(args, variant, settings):
    conn = pymysql.connect(**connect_kwargs(settings, database=False))
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS `%s`" % settings.database)
    conn.close()
    apply_schema(settings)
    conn = pymysql.connect(**connect_kwargs(settings))
    try:
        with conn.cursor() as cur:
            for key in ([] if variant == "none" else variant.split("+")):
                cur.execute("ALTER TABLE message DROP INDEX `%s`" % key)
        ts = int(time.time() * 1000)
        data = rows(0, args.prefill + args.n, ts)
        for i in range(0, args.prefill, BATCH):
            with conn.cursor() as cur:
                _insert_messages_txn(cur, data[i:i + BATCH])
            conn.commit()
        pid = server_pid()
        tid = own_thread(pid, conn)
        before = task_cpu(pid).get(tid, 0.0)
        for i in range(args.prefill, args.prefill + args.n, BATCH):
            with conn.cursor() as cur:
                _insert_messages_txn(cur, data[i:i + BATCH])
            conn.commit()
        used = task_cpu(pid).get(tid, 0.0) - before
    finally:
        conn.close()
    return used / args.n * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefill", type=int, default=0)
    parser.add_argument("--mysql-db", default="imd_bench_keys")
    parser.add_argument("--variants", default="none,message_identity,message_by_recipient,message_by_sender,"
                        "message_by_pair,message_by_ts,message_recipient_pos,message_sender_pos,message_by_pos")
    args = parser.parse_args()
    settings = parse_settings("[mysql]\ndatabase = %s\n" % args.mysql_db, "<bench>").mysql
    variants = args.variants.split(",")
    print("bench/message_keys: %d rows per run after %d, %d rounds, %s, load %s" % (
        args.n, args.prefill, args.rounds, sys.implementation.name, " ".join("%.2f" % x for x in os.getloadavg())))
    found = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            found[variant].append(run(args, variant, settings))
    base = statistics.median(found[variants[0]])
    print("| keys dropped | MariaDB µs/row (median) | each run | vs %s |" % variants[0])
    print("|---|---:|---|---:|")
    for variant in variants:
        median = statistics.median(found[variant])
        print("| %s | %.1f | %s | %+.1f |" % (variant, median, " ".join("%.1f" % x for x in found[variant]),
                                             median - base))
    conn = pymysql.connect(**connect_kwargs(settings, database=False))
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS `%s`" % settings.database)
    conn.close()


if __name__ == "__main__":
    main()

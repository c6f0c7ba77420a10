"""bench/retention: the migrator's insert rate while retention purges old rows.

    .venv/bin/python bench/retention.py [--old 1000000] [-n 300000] [--no-ts-index]
        [--index-cost ROUNDS] [--redis-db 15] [--mysql-db imd_bench_ret]

Fills ``message`` with ``--old`` rows 400 days old (a quarter of them with a
receipt), then, twice: queues ``-n`` new messages on MQ and times the
migrator draining them -- first alone, then while imd.retention's purge
(the loop the leader runs, on the same pool) deletes the old rows.  Prints
rows/s of both, and the purge's own rate.  ``--no-ts-index`` drops
``message_by_ts`` (sql/005) first: the migrator's rate without the index,
and what one purge batch costs without it.

``--index-cost ROUNDS``: only the migrator's rate, with and without the
index in turn, ROUNDS times each (a shared machine's load drifts: turns
taken in alternation see the same drift), and the median of each.

Own Redis key prefix (imdbench-retention:) and MySQL database (dropped and
re-created): one run at a time.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task, threads  # noqa: E402

from bench.migrator import entries, fill, start  # noqa: E402
from imd.config import parse_settings  # noqa: E402
from imd.retention import BATCH, PAUSE, cutoff, purge  # noqa: E402
from imd.stores.mysql import connect_kwargs  # noqa: E402

OLD_DAYS = 400


def settings_for(args):
    return parse_settings(
        "[imd]\nroles = migrate\n[redis]\nurl = redis://127.0.0.1:6379/%d\n"
        "prefix = imdbench-retention:\n[mysql]\ndatabase = %s\n[migrate]\ninterval = 0.05\nlock_ttl = 2\n"
        % (args.redis_db, args.mysql_db), "<bench>")


def load_old(settings, count, ts0, keep_index):
    """``count`` rows from ``ts0`` on, one ms apart; every fourth with a read receipt."""
    import pymysql
    conn = pymysql.connect(**connect_kwargs(settings))
    try:
        with conn.cursor() as cur:
            for start_at in range(0, count, 5000):
                rows, receipts = [], []
                for i in range(start_at, min(count, start_at + 5000)):
                    sender, to, ts = 1 + i % 97, 2 + i % 50, ts0 + i
                    packet = json.dumps({"id": "old%d" % i, "from": sender, "to": to, "type": "t",
                                         "msg": "an old message %d" % i, "ts": ts}, separators=(",", ":"))
                    rows.append(("old%d" % i, sender, to, "t", "an old message %d" % i, ts, i + 1, packet))
                    if i % 4 == 0:
                        receipts.append((sender, "old%d" % i, to, 2, ts + 1000, i + 1))
                cur.executemany("INSERT INTO message (msg_id, from_id, to_id, type, msg, ts, accept_seq, packet)"
                                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", rows)
                if receipts:
                    cur.executemany("INSERT INTO receipt (from_id, msg_id, to_id, state, ts, accept_seq)"
                                    " VALUES (%s,%s,%s,%s,%s,%s)", receipts)
                conn.commit()
            if not keep_index:
                cur.execute("ALTER TABLE message DROP INDEX message_by_ts")
    finally:
        conn.close()


def one_batch_without_index(settings, before):
    import pymysql
    conn = pymysql.connect(**connect_kwargs(settings))
    try:
        with conn.cursor() as cur:
            began = time.perf_counter()
            cur.execute("SELECT seq FROM message WHERE ts < %s ORDER BY ts LIMIT %s", (before, BATCH))
            cur.fetchall()
            return time.perf_counter() - began
    finally:
        conn.close()


@defer.inlineCallbacks
def drain(reactor, app, n, offset):
    yield fill(app, entries(offset, n, int(time.time() * 1000)))
    group = app.migrator_service()
    began = time.perf_counter()
    group.startService()
    yield app.migrator.wait_drained()
    elapsed = time.perf_counter() - began
    yield group.stopService()
    return elapsed


@defer.inlineCallbacks
def index_cost(reactor, args):
    settings = settings_for(args)
    rates = {True: [], False: []}
    for round_number in range(args.index_cost):
        for keep_index in (True, False):
            app = yield start(reactor, settings)
            yield threads.deferToThread(load_old, settings.mysql, args.old, int(time.time() * 1000) - 10 ** 9,
                                        keep_index)
            app.mysql.startService()
            seconds = yield drain(reactor, app, args.n, 0)
            app.mysql.stopService()
            yield app.redis_client.stopService()
            rates[keep_index].append(args.n / seconds)
            print("round %d, ts index %-3s: %d rows/s (load %.1f)"
                  % (round_number + 1, "yes" if keep_index else "no", args.n / seconds, os.getloadavg()[0]))
    with_index, without = sorted(rates[True]), sorted(rates[False])
    median_with, median_without = with_index[len(with_index) // 2], without[len(without) // 2]
    print("median: %d rows/s with message_by_ts, %d without (%+.1f%%)"
          % (median_with, median_without, 100.0 * (median_with - median_without) / median_without))


@defer.inlineCallbacks
def main(reactor, args):
    if args.index_cost:
        yield index_cost(reactor, args)
        return
    settings = settings_for(args)
    keep_index = not args.no_ts_index
    app = yield start(reactor, settings)   # empties the bench's own queue keys, re-creates the database
    now = time.time()
    ts0 = int(now * 1000) - OLD_DAYS * 86400 * 1000
    began = time.perf_counter()
    yield threads.deferToThread(load_old, settings.mysql, args.old, ts0, keep_index)
    print("bench/retention: %d old rows loaded in %.0f s; ts index: %s; load %s"
          % (args.old, time.perf_counter() - began, "yes" if keep_index else "no", os.getloadavg()))
    app.mysql.startService()
    alone = yield drain(reactor, app, args.n, 0)
    print("migrator alone:          %d rows in %.2f s = %d rows/s" % (args.n, alone, args.n / alone))
    before = cutoff(now, OLD_DAYS - 30)
    if not keep_index:
        seconds = yield threads.deferToThread(one_batch_without_index, settings.mysql, before)
        print("one purge batch's SELECT without the ts index: %.3f s (%d such batches for the old rows)"
              % (seconds, args.old // BATCH))
        app.mysql.stopService()
        yield app.redis_client.stopService()
        return
    rows = app.message_rows
    deleted = [0]

    def counted(n):
        deleted[0] += n
    purge_began = time.perf_counter()
    purging = defer.ensureDeferred(purge(rows, before, lambda s: task.deferLater(reactor, s, lambda: None),
                                         time.perf_counter, progress=counted))
    yield task.deferLater(reactor, 1.0, lambda: None)   # the purge under way first
    at_start = deleted[0]
    during = yield drain(reactor, app, args.n, args.n)
    during_purge = deleted[0] - at_start
    print("migrator during a purge: %d rows in %.2f s = %d rows/s (the purge deleted %d rows meanwhile: %d rows/s)"
          % (args.n, during, args.n / during, during_purge, during_purge / during))
    messages, receipts = yield purging
    purge_seconds = time.perf_counter() - purge_began
    print("purge: %d messages and %d receipts in %.1f s = %d messages/s (batch %d, pause as long as a batch,"
          " %.2f s at least)" % (messages, receipts, purge_seconds, messages / purge_seconds, BATCH, PAUSE))
    count = yield app.mysql.count_messages()
    print("rows left: %d (expected %d); load %s" % (count, 2 * args.n, os.getloadavg()))
    app.mysql.stopService()
    yield app.redis_client.stopService()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=int, default=1000000)
    parser.add_argument("-n", type=int, default=300000)
    parser.add_argument("--no-ts-index", action="store_true")
    parser.add_argument("--index-cost", type=int, default=0, metavar="ROUNDS")
    parser.add_argument("--redis-db", type=int, default=15)
    parser.add_argument("--mysql-db", default="imd_bench_ret")
    task.react(main, [parser.parse_args()])

"""bench/erase: how long an erasure (contract v3 §11) of one user takes.

    .venv/bin/python bench/erase.py [-n 100000] [--redis-db 15] [--mysql-db imd_bench_erase]

Stores ``-n`` messages of user 1 (to 50 others) and migrates them, then
times ``imd-admin user erase 1``'s work (imd.handlers.erasure: every
message recalled, a D each) and then the migrator applying those D entries
to MySQL (each sets its message's row recalled).  Prints both, in seconds
and messages/s, and the figure extrapolated to a million messages
(linear: the erasure reads MySQL in pages by index and recalls a fixed
number at a time, so nothing in it grows with the count).

Own Redis key prefix (imdbench-erase:) and MySQL database (dropped and
re-created): one run at a time.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from bench.migrator import fill, start  # noqa: E402
from imd import protocol  # noqa: E402
from imd.config import parse_settings  # noqa: E402


def settings_for(args):
    return parse_settings(
        "[imd]\nroles = migrate\n[redis]\nurl = redis://127.0.0.1:6379/%d\n"
        "prefix = imdbench-erase:\n[mysql]\ndatabase = %s\n[migrate]\nbatch = 500\ninterval = 0.05\nlock_ttl = 2\n"
        % (args.redis_db, args.mysql_db), "<bench>")


def messages(count, ts):
    """``count`` entries of user 1, as the store script writes them (with seq)."""
    return [protocol.message_json(protocol.MessagePacket("e%d" % n, "t", 2 + n % 50, "message to erase %d" % n),
                                  1, ts + n).decode("utf-8")[:-1] + ',"seq":%d}' % (n + 1) for n in range(count)]


@defer.inlineCallbacks
def drain(app):
    began = time.perf_counter()
    group = app.migrator_service()
    group.startService()
    yield app.migrator.wait_drained()
    yield group.stopService()
    return time.perf_counter() - began


@defer.inlineCallbacks
def main(reactor, args):
    settings = settings_for(args)
    app = yield start(reactor, settings)
    keys = app.keys
    # a run before this one left its keys (recalled:1:<id> marks among them)
    cursor = b"0"
    while True:
        cursor, found = yield app.redis_client.command("SCAN", cursor, "MATCH", keys.prefix + "*", "COUNT", 1000)
        if found:
            yield app.redis_client.command("DEL", *found)
        if cursor in (b"0", "0", 0):
            break
    yield app.redis_client.command("SET", keys.mq_seq, args.n)
    yield fill(app, list(reversed(messages(args.n, int(time.time() * 1000) - args.n))))
    app.mysql.startService()
    migrated = yield drain(app)
    yield app.redis_client.command("DEL", *[keys.pending(uid) for uid in range(1, 52)])
    began = time.perf_counter()
    erased = yield app.eraser.erase(1)
    erase_s = time.perf_counter() - began
    applied = yield drain(app)
    app.mysql.stopService()
    n = args.n
    print("messages of one user: %d (migrated in %.1f s)" % (n, migrated))
    print("erasure (recall each, D stored):   %6.1f s  %7.0f messages/s  (%d recalled)"
          % (erase_s, n / erase_s, erased))
    print("migrator applying the D entries:   %6.1f s  %7.0f messages/s" % (applied, n / applied))
    print("a million messages, extrapolated:  erasure %.0f s, MySQL caught up %.0f s later"
          % (erase_s * 1e6 / n, applied * 1e6 / n))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100000)
    parser.add_argument("--redis-db", type=int, default=15)
    parser.add_argument("--mysql-db", default="imd_bench_erase")
    task.react(main, [parser.parse_args()])

"""bench/recall: what one recall (contract v3 §11) costs Redis while the
migrator lags behind the sender.

    .venv/bin/python bench/recall.py [--pending 1000,100000] [-k 200] [--redis-db 15]

For each count P: user 1 has P messages not yet migrated (its
``pending:1`` index and their dedup records, as the store script leaves
them), then ``-k`` of them are recalled one after another through the
recall script (imd.stores.recalls, no window: as a moderation delete).
Prints the recalls per second and Redis's own time per call of the script
(``INFO commandstats``, evalsha's usec_per_call): what every other client
of that Redis waits while a recall runs.  Redis only (no MySQL, no daemon);
its own key prefix (imdbench-recall:).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from imd import protocol  # noqa: E402
from imd.app import App  # noqa: E402
from imd.config import parse_settings  # noqa: E402


def settings_for(args):
    return parse_settings(
        "[imd]\nroles = ws\n[redis]\nurl = redis://127.0.0.1:6379/%d\nprefix = imdbench-recall:\n"
        % args.redis_db, "<bench>")


def entry(n, ts):
    packet = protocol.MessagePacket("r%d" % n, "t", 2, "message %d" % n)
    return protocol.message_json(packet, 1, ts).decode("utf-8")[:-1] + ',"seq":%d}' % (n + 1)


@defer.inlineCallbacks
def clear(app):
    cursor = b"0"
    while True:
        cursor, found = yield app.redis_client.command("SCAN", cursor, "MATCH", app.keys.prefix + "*", "COUNT", 1000)
        if found:
            yield app.redis_client.command("DEL", *found)
        if cursor in (b"0", "0", 0):
            break


@defer.inlineCallbacks
def script_usec(app):
    """Redis's total usec and calls of EVALSHA so far."""
    info = yield app.redis_client.command("INFO", "commandstats")
    text = info.decode() if isinstance(info, bytes) else info
    for line in text.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            fields = dict(part.split("=") for part in line.split(":", 1)[1].split(","))
            return int(fields["usec"]), int(fields["calls"])
    return 0, 0


@defer.inlineCallbacks
def one_count(app, pending, k):
    yield clear(app)
    keys, ts = app.keys, int(time.time() * 1000)
    for start in range(0, pending, 5000):
        batch = range(start, min(pending, start + 5000))
        zadd = []
        for n in batch:
            zadd += [n + 1, entry(n, ts)]
        yield app.redis_client.command("ZADD", keys.pending(1), *zadd)
        for n in batch:
            yield app.redis_client.command("SET", keys.dedup(1, "r%d" % n, 2), "2/%d" % (n + 1), "EX", 600)
    yield app.redis_client.command("SET", keys.mq_seq, pending)
    usec0, calls0 = yield script_usec(app)
    began = time.perf_counter()
    for n in range(pending - k, pending):
        d_id = "d%d" % n
        packet = protocol.recall_json(d_id, 1, 2, "r%d" % n, ts)
        result = yield app.recalls.recall(1, 2, d_id, "r%d" % n, packet, ts, None)
        assert result.outcome == "stored", result
    seconds = time.perf_counter() - began
    usec1, calls1 = yield script_usec(app)
    per_call = (usec1 - usec0) / max(1, calls1 - calls0)
    print("pending %7d: %5d recalls in %6.2f s, %7.0f recalls/s, Redis %8.1f µs per recall script"
          % (pending, k, seconds, k / seconds, per_call))


@defer.inlineCallbacks
def main(reactor, args):
    app = App(settings_for(args), reactor)
    app.redis_client.startService()
    yield app.redis_client.wait_connected()
    for pending in (int(p) for p in args.pending.split(",")):
        yield one_count(app, pending, args.k)
    yield clear(app)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", default="1000,100000")
    parser.add_argument("-k", type=int, default=200)
    parser.add_argument("--redis-db", type=int, default=15)
    task.react(main, [parser.parse_args()])

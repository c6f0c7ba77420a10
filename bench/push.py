"""bench/push: the offline-push path's cost and speed (contract §7.5).

    .venv/bin/python bench/push.py [-n 20000] [--rounds 3] [--pushes 5000]

Runs against a redis-server of its own (a free 127.0.0.1 port, no
persistence, stopped by its pid at the end), so other users of the shared
Redis neither disturb nor see the figures.

1. Hot path: ``n`` messages stored through ``MessageStore.store_message``
   (the script a ``t`` is acked with, 200 in flight, every message to a
   recipient of its own) with ``[push] url`` off and on, alternating for
   ``rounds`` rounds.  Reported per message: this process's CPU (what the
   ws process spends calling the store) and the Redis server's CPU, both
   as the median of the rounds, and the difference on - off.
2. Drain: ``pushes`` users with a due push, then one drainer (as the
   migrate role runs it) against a local gateway in a process of its own
   that answers 200; pushes/s from the first take to the last answer, and
   CPU per push of the drainer and of Redis.
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from imd import protocol  # noqa: E402
from imd.app import App  # noqa: E402
from imd.config import parse_settings  # noqa: E402
from imd.stores.messages import MessageStore  # noqa: E402

IN_FLIGHT = 200
SENDERS = 100


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(text):
    sys.stderr.write("bench push: %s\n" % text)
    sys.stderr.flush()


def cpu_self():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@defer.inlineCallbacks
def redis_cpu(app):
    info = yield app.redis_client.command("INFO", "cpu")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def message(n, ts):
    sender, to = 1 + n % SENDERS, 1000000 + n
    packet = protocol.MessagePacket("b%d" % n, "t", to, "benchmark message %d" % n)
    return sender, to, packet.dedup_id, protocol.message_json(packet, sender, ts)


@defer.inlineCallbacks
def befriend(app, count):
    for start in range(0, count, 5000):
        calls = [app.redis_client.command("SADD", app.keys.friends(1 + n % SENDERS), 1000000 + n)
                 for n in range(start, min(count, start + 5000))]
        yield defer.gatherResults(calls)


def store_all(store, count, ts):
    """Store ``count`` messages, IN_FLIGHT at a time (as many callers, each
    waiting for its reply before the next)."""
    numbers = iter(range(count))

    @defer.inlineCallbacks
    def caller():
        for n in numbers:
            sender, to, dedup_id, payload = message(n, ts)
            yield store.store_message(sender, to, dedup_id, payload, ts)
    return defer.gatherResults([caller() for _ in range(IN_FLIGHT)])


@defer.inlineCallbacks
def hot_path(app, count, rounds):
    off = MessageStore(app.redis_client, app.keys, app.settings.redis.dedup_ttl)
    on = app.messages
    assert on.push is not None
    figures = {"off": [], "on": []}
    for r in range(rounds):
        for name, store in (("off", off), ("on", on)):
            yield app.redis_client.command("FLUSHDB")
            yield befriend(app, count)
            ts = int(time.time() * 1000) + 3600 * 1000   # never due during the bench
            cpu0, redis0, t0 = cpu_self(), (yield redis_cpu(app)), time.perf_counter()
            yield store_all(store, count, ts)
            seconds = time.perf_counter() - t0
            cpu, redis = cpu_self() - cpu0, (yield redis_cpu(app)) - redis0
            figures[name].append({"msgs_per_s": count / seconds, "ws_us": cpu * 1e6 / count,
                                  "redis_us": redis * 1e6 / count})
            log("round %d push %-3s: %6.0f msg/s, this process %5.1f us/msg, redis %5.1f us/msg"
                % (r + 1, name, count / seconds, cpu * 1e6 / count, redis * 1e6 / count))
    result = {}
    for name, rows in figures.items():
        result[name] = {key: round(statistics.median(row[key] for row in rows), 1) for key in rows[0]}
    result["added_ws_us_per_msg"] = round(result["on"]["ws_us"] - result["off"]["ws_us"], 1)
    result["added_redis_us_per_msg"] = round(result["on"]["redis_us"] - result["off"]["redis_us"], 1)
    return result


@defer.inlineCallbacks
def drain(app, count):
    yield app.redis_client.command("FLUSHDB")
    yield befriend(app, count)
    ts = int(time.time() * 1000) - 1000   # due at once ([push] delay 0)
    yield store_all(app.messages, count, ts)
    drainer = app.push_drainer_service(app.redis_client, leading=lambda: True)
    cpu0, redis0, t0 = cpu_self(), (yield redis_cpu(app)), time.perf_counter()
    drainer.startService()
    while drainer.sent + drainer.rejected + drainer.expired < count:
        yield task.deferLater(app.reactor, 0.01, lambda: None)
    seconds = time.perf_counter() - t0
    cpu, redis = cpu_self() - cpu0, (yield redis_cpu(app)) - redis0
    yield drainer.stopService()
    left = yield app.redis_client.command("HLEN", app.keys.push_inflight)
    assert drainer.sent == count and int(left) == 0, (drainer.sent, left)
    log("drain: %d pushes in %.2f s = %.0f pushes/s; drainer %.0f us/push, redis %.1f us/push"
        % (count, seconds, count / seconds, cpu * 1e6 / count, redis * 1e6 / count))
    return {"pushes": count, "seconds": round(seconds, 2), "pushes_per_s": round(count / seconds),
            "drainer_us_per_push": round(cpu * 1e6 / count), "redis_us_per_push": round(redis * 1e6 / count, 1)}


RECEIVER = """
import sys
from twisted.internet import reactor
from twisted.web import resource, server

class Gateway(resource.Resource):
    isLeaf = True
    def render_POST(self, request):
        request.content.read()
        return b"{}"

site = server.Site(Gateway())
site.noisy = False
reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1", backlog=1024)
reactor.run()
"""


@defer.inlineCallbacks
def run(reactor, args):
    workdir = tempfile.mkdtemp(prefix="imd-bench-push-")
    redis_port, gateway_port = free_port(), free_port()
    processes = [
        subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-c", RECEIVER, str(gateway_port)]),
    ]
    try:
        for port in (redis_port, gateway_port):
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    yield task.deferLater(reactor, 0.05, lambda: None)
        settings = parse_settings(
            "[imd]\nroles = migrate\n[redis]\nurl = redis://127.0.0.1:%d/0\n"
            "[push]\nurl = http://127.0.0.1:%d/push\nsecret = bench-push-secret-of-32-bytes-or-more\ndelay = 0\n"
            % (redis_port, gateway_port),
            "<bench>")
        app = App(settings, reactor)
        app.redis_client.startService()
        yield app.redis_client.wait_connected(10)
        report = {"command": "bench/push.py " + " ".join(sys.argv[1:]), "messages": args.n,
                  "rounds": args.rounds, "in_flight": IN_FLIGHT}
        report["hot_path"] = yield hot_path(app, args.n, args.rounds)
        report["drain"] = yield drain(app, args.pushes)
        yield app.redis_client.stopService()
        print(json.dumps(report, indent=1))
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20000, help="messages per round of the hot-path part")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pushes", type=int, default=5000, help="pushes the drain part sends")
    args = parser.parse_args()
    task.react(run, [args])


if __name__ == "__main__":
    main()

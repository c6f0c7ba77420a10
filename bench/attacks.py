#!/usr/bin/env python3
"""The attacks of docs/reliability.md's table that need a figure, against a
running imd on loopback: each prints one JSON line of what it measured.

    .venv/bin/python bench/attacks.py --port 8765 --redis redis://127.0.0.1:6379/0 \\
        --pid $(pgrep -of 'twistd.*imd') ping-flood --seconds 10

- ``ping-flood``: one logged-in client writes 125-byte pings as fast as it
  can and never reads; the daemon's RSS before, at its peak and at the end,
  and whether (and when) the daemon dropped the client.
- ``pong-flood``: ``--connections`` processes write empty pongs as fast as
  they can (logging in again whenever they are closed) while a bystander
  measures its ``P`` round trip; its round trip without and with the flood.
- ``header-flood``: ``--connections`` connections each send a request line,
  then one header line without end; the daemon's RSS before, at its peak
  and after, and how the connections were answered.
- ``abandoned-logins``: ``--count`` upgrade requests with a valid token,
  each closed (FIN or RST) as soon as it is sent; how many of those users
  read as online afterwards, and the daemon's RSS.
- ``history``: ``--backlog`` messages between other users are sent first
  (run the daemon without the ``migrate`` role so that they stay in ``MQ``);
  then the time of one ``H`` for a user with nothing pending, and the ``A``
  latency of a pair of users exchanging messages, without and with two
  clients sending ``--h-rate`` ``H`` per second each.
- ``receipt-flood``: ``--connections`` connections (2 per user), each user
  with ``--backlog`` unmigrated messages, send an ``R`` naming 10 ids nobody
  sent and a ``P``, 10 times a second each (the packet rate); a bystander's
  ``A`` latency without and with them, what the flooders were answered, and
  the daemon's share of a core (``--pid``).
- ``history-users``: ``--connections`` connections, 5 per user, each
  sending ``H`` at the allowed 2/s over a user with ``--backlog`` unmigrated
  messages; a bystander's ``H`` time without and with them, the answers, the
  daemon's share of a core.
- ``api-fanout``: ``--count`` server API sends (``--http-port``,
  ``--api-key``) of a 50 KB message to 1 000 users (a 64 KiB body); a bystander's ``P``
  round trip (50/s: its worst is the longest stall) and the answers.
- ``shared-address``: ``--connections`` idle sockets from 127.0.0.1 on the
  ws port (and as many token requests without credentials when
  ``--http-port`` is given), then ``--count`` other users log in from the
  same address (and ask for a token first): how many got in, as phones
  behind one carrier NAT would.
- ``refused-flood``: ``--connections`` logged-in clients fill the node (run
  it with ``[websocket] max_connections`` = that many), then new connections
  are opened as fast as they are refused for ``--seconds``; how many were
  refused and how many lines the daemon's log (``--log``, its stdout
  saved to a file) gained about them.

Tokens are signed with ``privateKey`` from the given Redis, where friends
are set too.  Loopback only; every scenario stops by itself.
"""

import argparse
import json
import multiprocessing
import os
import random
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.fuzz_ws import OP_PING, OP_PONG, RawWs, redis_call, rss_kb  # noqa: E402

from imd.auth import issue_token  # noqa: E402


class Users:
    """Fresh uids and their tokens (the private key loaded once per process)."""

    def __init__(self, redis_url, first_uid):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        self.redis = redis_url
        self.key = load_pem_private_key(redis_call(redis_url, "GET", "privateKey"), password=None)
        self.next_uid = first_uid

    def fresh(self, count=1):
        uids = list(range(self.next_uid, self.next_uid + count))
        self.next_uid += count
        return uids

    def token(self, uid):
        return issue_token(self.key, uid, time.time())

    def befriend(self, a, b):
        redis_call(self.redis, "SADD", "URS:%d" % a, b)
        redis_call(self.redis, "SADD", "URS:%d" % b, a)

    def login(self, port, uid):
        ws = RawWs(port, "/" + self.token(uid))
        packet = ws.recv_json()
        if packet.get("type") != "L":
            raise ConnectionError("login of %d refused: %r" % (uid, packet))
        return ws


def percentiles(samples_ms):
    if not samples_ms:
        return {}
    ordered = sorted(samples_ms)
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2)}


def round_trips(ws, seconds, ids="rt", rate=10.0):
    """``P`` round trips, ``rate`` per second (under the default packet
    rate), for ``seconds``, in ms."""
    samples, n = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n += 1
        started = time.perf_counter()
        ws.send_json({"id": "%s%d" % (ids, n), "to": 0, "type": "P"})
        while ws.recv_json().get("id") != "%s%d" % (ids, n):
            pass
        samples.append((time.perf_counter() - started) * 1000)
        time.sleep(1.0 / rate)
    return samples


class RssSampler:
    def __init__(self, pid):
        self.pid = pid
        self.before = rss_kb(pid) if pid else 0
        self.peak = self.before

    def sample(self):
        if self.pid:
            self.peak = max(self.peak, rss_kb(self.pid))

    def figures(self):
        after = rss_kb(self.pid) if self.pid else 0
        return {"rss_before_mb": round(self.before / 1024, 1), "rss_peak_mb": round(max(self.peak, after) / 1024, 1),
                "rss_after_mb": round(after / 1024, 1)}


# --- ping flood ------------------------------------------------------------------

def ping_flood(args, users):
    ws = users.login(args.port, users.fresh()[0])
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rss = RssSampler(args.pid)
    batch = RawWs.frame(OP_PING, b"p" * 125) * 200
    sent = 0
    dropped_after = None
    started = time.monotonic()
    ws.sock.settimeout(1.0)
    while time.monotonic() - started < args.seconds:
        try:
            ws.sock.sendall(batch)
        except (OSError, socket.timeout):
            if dropped_after is None and not _alive(ws):
                dropped_after = time.monotonic() - started
                break
            continue
        sent += 200
        if sent % 20000 == 0:
            rss.sample()
    rss.sample()
    ws.close()
    return dict(rss.figures(), pings_sent=sent, ping_bytes_sent=sent * 131, seconds=args.seconds,
                dropped_after_s=None if dropped_after is None else round(dropped_after, 2))


def _alive(ws):
    """False when the server has closed or reset the connection."""
    try:
        ws.sock.setblocking(False)
        try:
            ws.sock.send(b"")
            return True
        except (BlockingIOError, socket.timeout):
            return True
    except OSError:
        return False
    finally:
        try:
            ws.sock.settimeout(1.0)
        except OSError:
            pass


# --- pong flood --------------------------------------------------------------------

def _pong_flooder(port, redis_url, first_uid, seconds, counts):
    users = Users(redis_url, first_uid)
    batch = RawWs.frame(OP_PONG, b"") * 100
    deadline = time.monotonic() + seconds
    logins = pongs = 0
    while time.monotonic() < deadline:
        try:
            ws = users.login(port, users.fresh()[0])
        except (OSError, ConnectionError):
            continue
        logins += 1
        ws.sock.settimeout(1.0)
        try:
            while time.monotonic() < deadline:
                ws.sock.sendall(batch)
                pongs += 100
        except OSError:
            pass
        ws.close()
    counts.put((logins, pongs))


def pong_flood(args, users):
    bystander = users.login(args.port, users.fresh()[0])
    quiet = round_trips(bystander, 2.0, "q")
    counts = multiprocessing.Queue()
    flooders = [multiprocessing.Process(target=_pong_flooder,
                                        args=(args.port, args.redis, users.next_uid + 1000000 * (n + 1),
                                              args.seconds, counts))
                for n in range(args.connections)]
    for process in flooders:
        process.start()
    time.sleep(0.5)   # the flood under way
    during = round_trips(bystander, args.seconds - 1.0, "f")
    for process in flooders:
        process.join(args.seconds + 10)
    totals = [counts.get(timeout=5) for _ in flooders]
    bystander.close()
    return {"connections": args.connections, "seconds": args.seconds,
            "logins": sum(t[0] for t in totals), "pongs_written": sum(t[1] for t in totals),
            "bystander_quiet": percentiles(quiet), "bystander_during": percentiles(during)}


# --- header flood ------------------------------------------------------------------

def header_flood(args, users):
    rss = RssSampler(args.pid)
    chunk = b"a" * 16384
    conns = []
    for _ in range(args.connections):
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        sock.setblocking(False)
        conns.append(sock)
    answers = {}
    sent = 0
    open_ = set(range(len(conns)))
    started = time.monotonic()
    while open_ and time.monotonic() - started < args.seconds:
        for n in list(open_):
            sock = conns[n]
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                pass
            except OSError:
                open_.discard(n)
                answers.setdefault(n, _answer(sock))
        rss.sample()
    for n in open_:
        answers.setdefault(n, _answer(conns[n]) or "still open")
    for sock in conns:
        sock.close()
    time.sleep(1.0)
    by_answer = {}
    for answer in answers.values():
        by_answer[answer] = by_answer.get(answer, 0) + 1
    return dict(rss.figures(), connections=args.connections, seconds=args.seconds,
                header_bytes_sent=sent, answers=by_answer)


def _answer(sock):
    try:
        sock.setblocking(True)
        sock.settimeout(0.2)
        data = sock.recv(200)
        return data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed without an answer"
    except OSError:
        return "reset without an answer"


# --- history -------------------------------------------------------------------------

def _h_client(port, redis_url, uid, rate, seconds, counts):
    users = Users(redis_url, uid)
    ws = users.login(port, uid)
    n = answered = limited = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n += 1
        ws.send_json({"id": n, "to": 0, "type": "H", "msg": {"limit": 50}})
        reply = ws.recv_json()
        if reply.get("type") == "H":
            answered += 1
        elif reply.get("code") == "rate_limited":
            limited += 1
        time.sleep(max(0.0, 1.0 / rate - 0.0005))
    counts.put((answered, limited))
    ws.close()


def ack_latencies(sender, to, seconds, rate=20.0, tag="a"):
    samples, n = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n += 1
        started = time.perf_counter()
        sender.send_json({"id": "%s%d" % (tag, n), "to": to, "type": "t", "msg": "latency %d" % n})
        while True:
            reply = sender.recv_json()
            if reply.get("id") == "%s%d" % (tag, n):
                break
        samples.append((time.perf_counter() - started) * 1000)
        time.sleep(1.0 / rate)
    return samples


def history(args, users):
    # the backlog: messages between other users, left in MQ
    pairs = users.fresh(20)
    for a, b in zip(pairs[::2], pairs[1::2]):
        users.befriend(a, b)
    senders = [users.login(args.port, a) for a in pairs[::2]]
    window = 200
    for start in range(0, args.backlog, window):
        count = min(window, args.backlog - start)
        for n in range(count):
            ws = senders[(start + n) % len(senders)]
            ws.send_json({"id": "b%d" % (start + n), "to": pairs[1::2][(start + n) % len(senders)],
                          "type": "t", "msg": "backlog"})
        for n in range(count):
            senders[(start + n) % len(senders)].recv_json()
    for ws in senders:
        ws.close()
    queued = int(redis_call(args.redis, "LLEN", "MQ"))
    # one H of a user with nothing pending
    reader = users.login(args.port, users.fresh()[0])
    h_times = []
    for n in range(args.h_samples):
        started = time.perf_counter()
        reader.send_json({"id": n, "to": 0, "type": "H", "msg": {"limit": 50}})
        reply = reader.recv_json()
        h_times.append((time.perf_counter() - started) * 1000)
        if reply.get("type") != "H":
            raise RuntimeError("H answered %r" % reply)
        time.sleep(0.6)   # under the default history_rate of 2/s
    reader.close()
    # other users' ack latency, without and with two clients sending H
    alice, bob = users.fresh(2)
    users.befriend(alice, bob)
    sender, receiver = users.login(args.port, alice), users.login(args.port, bob)
    quiet = ack_latencies(sender, bob, 3.0, tag="q")
    counts = multiprocessing.Queue()
    readers = [multiprocessing.Process(target=_h_client, args=(args.port, args.redis, uid, args.h_rate,
                                                               args.seconds, counts))
               for uid in users.fresh(2)]
    for process in readers:
        process.start()
    time.sleep(0.5)
    loaded = ack_latencies(sender, bob, args.seconds - 1.0, tag="l")
    for process in readers:
        process.join(args.seconds + 10)
    totals = [counts.get(timeout=5) for _ in readers]
    sender.close()
    receiver.close()
    return {"backlog_in_mq": queued, "one_h": percentiles(h_times), "ack_quiet": percentiles(quiet),
            "ack_with_h_load": percentiles(loaded), "h_rate_per_client": args.h_rate,
            "h_answered": sum(t[0] for t in totals), "h_rate_limited": sum(t[1] for t in totals)}


# --- receipt flood, history per user, API fan-out (issue 22 items 7, 9, 10) -------------

def cpu_seconds(pid):
    """User + system CPU the process used so far (0 without a pid)."""
    if not pid:
        return 0.0
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pending_backlog(redis_url, sender, uids, count):
    """``count`` messages from ``sender`` to each of ``uids``, stored as the
    daemon stores them and left unmigrated (a migrator lagging, or run the
    daemon without the migrate role): what each user's ``pending:`` holds."""
    from imd.stores.redis import compose_lua
    script = compose_lua("""-- include: store_entry
for i = 1, #ARGV do store_entry(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[i]) end
return 1
""")
    now = int(time.time() * 1000)
    for uid in uids:
        for start in range(0, count, 500):
            packets = [json.dumps({"id": "old%d" % n, "from": sender, "to": uid, "type": "t",
                                   "msg": "an older message, not migrated yet %d" % n, "ts": now - count + n},
                                  separators=(",", ":")) for n in range(start, min(count, start + 500))]
            redis_call(redis_url, "EVAL", script, 4, "MQ", "MQ:seq", "pending:%d" % sender, "pending:%d" % uid,
                       *packets)


def _receipt_flooder(port, redis_url, uids, per_user, sender, seconds, counts):
    """``per_user`` connections of each uid, each sending an R naming 10
    ids nobody sent and a P, 10 times a second (the packet rate, 20/s)."""
    import threading
    users = Users(redis_url, 0)
    tally, lock = {}, threading.Lock()

    def one(uid, n):
        try:
            ws = users.login(port, uid)
        except (OSError, ConnectionError):
            return
        k = 0
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                k += 1
                fake = ["fake-%d-%d-%d-%d" % (uid, n, k, i) for i in range(10)]
                ws.send_json({"id": "r%d" % k, "to": sender, "type": "R", "msg": {"state": "read", "ids": fake}})
                ws.send_json({"id": "p%d" % k, "to": 0, "type": "P"})
                for _ in range(2):
                    reply = ws.recv_json()
                    key = reply.get("code", reply.get("type"))
                    with lock:
                        tally[key] = tally.get(key, 0) + 1
                time.sleep(0.1)
        except (OSError, ValueError, ConnectionError):
            with lock:
                tally["closed"] = tally.get("closed", 0) + 1
        ws.close()
    threads = [threading.Thread(target=one, args=(uid, n)) for uid in uids for n in range(per_user)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    counts.put(tally)


def receipt_flood(args, users):
    sender, others = users.fresh()[0], users.fresh(args.connections // 2)
    pending_backlog(args.redis, sender, others, args.backlog)
    alice, bob = users.fresh(2)
    users.befriend(alice, bob)
    bystander, receiver = users.login(args.port, alice), users.login(args.port, bob)
    quiet = ack_latencies(bystander, bob, 3.0, tag="q")
    counts = multiprocessing.Queue()
    halves = [others[::2], others[1::2]]
    cpu = cpu_seconds(args.pid)
    flooders = [multiprocessing.Process(target=_receipt_flooder,
                                        args=(args.port, args.redis, half, 2, sender, args.seconds, counts))
                for half in halves]
    for process in flooders:
        process.start()
    time.sleep(1.0)
    loaded = ack_latencies(bystander, bob, args.seconds - 2.0, tag="l")
    for process in flooders:
        process.join(args.seconds + 60)
    cpu = cpu_seconds(args.pid) - cpu
    tally = {}
    for _ in flooders:
        for key, n in counts.get(timeout=5).items():
            tally[key] = tally.get(key, 0) + n
    bystander.close()
    receiver.close()
    return {"connections": args.connections, "pending_per_user": args.backlog, "seconds": args.seconds,
            "ack_quiet": percentiles(quiet), "ack_during": percentiles(loaded), "flood_answers": tally,
            "daemon_cpu_share": round(cpu / args.seconds, 2)}


def _history_user(port, redis_url, uid, devices, rate, seconds, counts):
    import threading
    users = Users(redis_url, 0)
    tally, lock = {}, threading.Lock()

    def one():
        ws = users.login(port, uid)
        n = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            n += 1
            ws.send_json({"id": n, "to": 0, "type": "H", "msg": {"limit": 100}})
            reply = ws.recv_json()
            key = reply.get("code", reply.get("type"))
            with lock:
                tally[key] = tally.get(key, 0) + 1
            time.sleep(1.0 / rate)
        ws.close()
    threads = [threading.Thread(target=one) for _ in range(devices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    counts.put(tally)


def history_users(args, users):
    """``--connections`` connections, 5 per user (max_devices), each sending
    ``H`` at the allowed 2/s over a user with ``--backlog`` unmigrated
    messages; a bystander's own ``H`` (nothing pending) once a second."""
    sender = users.fresh()[0]
    readers = users.fresh(max(1, args.connections // 5))
    pending_backlog(args.redis, sender, readers, args.backlog)
    bystander = users.login(args.port, users.fresh()[0])

    def h_times(seconds):
        samples, n = [], 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            n += 1
            started = time.perf_counter()
            bystander.send_json({"id": "b%d" % n, "to": 0, "type": "H", "msg": {"limit": 100}})
            reply = bystander.recv_json()
            if reply.get("type") == "H":
                samples.append((time.perf_counter() - started) * 1000)
            time.sleep(1.0)
        return samples
    quiet = h_times(3.0)
    counts = multiprocessing.Queue()
    cpu = cpu_seconds(args.pid)
    processes = [multiprocessing.Process(target=_history_user,
                                         args=(args.port, args.redis, uid, 5, 2.0, args.seconds, counts))
                 for uid in readers]
    for process in processes:
        process.start()
    time.sleep(1.0)
    loaded = h_times(args.seconds - 2.0)
    for process in processes:
        process.join(args.seconds + 60)
    cpu = cpu_seconds(args.pid) - cpu
    tally = {}
    for _ in processes:
        for key, n in counts.get(timeout=5).items():
            tally[key] = tally.get(key, 0) + n
    bystander.close()
    return {"connections": len(readers) * 5, "users": len(readers), "pending_per_user": args.backlog,
            "seconds": args.seconds, "bystander_h_quiet": percentiles(quiet), "bystander_h_during": percentiles(loaded),
            "h_answers": tally, "daemon_cpu_share": round(cpu / args.seconds, 2)}


def api_fanout(args, users):
    """``--count`` sends of a 50 KB message to 1 000 recipients (a 64 KiB body), one after
    the other, while a bystander's ``P`` round trip is measured 50 times a
    second (its worst is the longest the reactor stood still)."""
    import threading
    import urllib.error
    import urllib.request
    bystander = users.login(args.port, users.fresh()[0])
    first = users.fresh(1000)
    body = json.dumps({"to": first, "msg": {"text": "x" * 50000}}).encode()   # 64 KiB with the uids
    done = threading.Event()
    answers = {}

    def send():
        for _ in range(args.count):
            request = urllib.request.Request("http://127.0.0.1:%d/IM/api/send" % args.http_port, body,
                                             {"Authorization": "Bearer " + args.api_key,
                                              "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status = response.status
            except urllib.error.HTTPError as e:
                status = e.code
            answers[status] = answers.get(status, 0) + 1
        done.set()
    quiet = round_trips(bystander, 2.0, "q", rate=50)
    cpu = cpu_seconds(args.pid)
    started = time.monotonic()
    thread = threading.Thread(target=send)
    thread.start()
    during, n = [], 0
    while not done.is_set():
        n += 1
        during += round_trips(bystander, 0.2, "d%d-" % n, rate=50)
    elapsed = time.monotonic() - started
    thread.join()
    bystander.close()
    mq = int(redis_call(args.redis, "LLEN", "MQ"))
    return {"sends": args.count, "answers": answers, "seconds": round(elapsed, 2), "mq_entries": mq,
            "bystander_quiet": percentiles(quiet), "bystander_during": percentiles(during),
            "daemon_cpu_s": round(cpu_seconds(args.pid) - cpu, 2)}


# --- abandoned logins ----------------------------------------------------------------

def abandoned_logins(args, users):
    rss = RssSampler(args.pid)
    uids = users.fresh(args.count)
    for n, uid in enumerate(uids):
        ws = RawWs(args.port, handshake=False)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        ws.sock.sendall(("GET /%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                         % (users.token(uid), key)).encode())
        if n % 2:
            ws.abort()
        else:
            ws.close()
    time.sleep(2.0)   # whatever the daemon still does for them
    rss.sample()
    online = sum(1 for uid in uids if int(redis_call(args.redis, "ZCARD", "dev:%d" % uid) or 0))
    return dict(rss.figures(), abandoned=args.count, still_online=online)


# --- one address shared by many clients (a carrier NAT) ---------------------------

def _token_status(http_port, body):
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as sock:
        sock.sendall(b"POST /IM/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data))
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer else 0


def shared_address(args, users):
    idle = [socket.create_connection(("127.0.0.1", args.port), timeout=5) for _ in range(args.connections)]
    spent = [_token_status(args.http_port, {}) for _ in range(args.connections)] if args.http_port else []
    logins = tokens = 0
    for uid in users.fresh(args.count):
        if args.http_port and _token_status(args.http_port, {"id": uid}) == 200:
            tokens += 1
        try:
            users.login(args.port, uid).close()
            logins += 1
        except (ConnectionError, OSError, ValueError):
            pass
    for sock in idle:
        sock.close()
    figures = {"idle_sockets": args.connections, "victims": args.count, "victim_logins": logins}
    if args.http_port:
        figures.update(token_requests_spent=len(spent), victim_tokens=tokens)
    return figures


# --- refused connections and the log ------------------------------------------------

def _log_lines_about_refusals(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if b"refused" in line and b"connection" in line)


def refused_flood(args, users):
    before = _log_lines_about_refusals(args.log)
    held = [users.login(args.port, uid) for uid in users.fresh(args.connections)]
    refused = 0
    started = time.monotonic()
    while time.monotonic() - started < args.seconds:
        with socket.create_connection(("127.0.0.1", args.port), timeout=5) as sock:
            if sock.recv(200).startswith((b"HTTP/1.1 503", b"HTTP/1.1 429")):
                refused += 1
    for ws in held:
        ws.close()
    time.sleep(1.0)   # the daemon's log lines reach the file
    return {"held": args.connections, "seconds": args.seconds, "refused": refused,
            "log_lines": _log_lines_about_refusals(args.log) - before}


SCENARIOS = {"ping-flood": ping_flood, "pong-flood": pong_flood, "header-flood": header_flood, "history": history,
             "abandoned-logins": abandoned_logins, "receipt-flood": receipt_flood, "history-users": history_users,
             "api-fanout": api_fanout, "shared-address": shared_address, "refused-flood": refused_flood}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pid", type=int, help="the daemon's pid, for its memory")
    parser.add_argument("--first-uid", type=int, default=None, help="default: random (fresh users each run)")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=None, help="pong-flood 4, header-flood 48")
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--h-rate", type=float, default=15.0)
    parser.add_argument("--h-samples", type=int, default=20)
    parser.add_argument("--count", type=int, default=None,
                        help="abandoned-logins (100), api-fanout (5), shared-address (100)")
    parser.add_argument("--http-port", type=int, default=None,
                        help="api-fanout (8766), shared-address: the token endpoint's")
    parser.add_argument("--api-key", default="", help="api-fanout: [http] api_key")
    parser.add_argument("--log", help="refused-flood: the daemon's log file")
    args = parser.parse_args(argv)
    if args.count is None:
        args.count = 5 if args.scenario == "api-fanout" else 100
    if args.http_port is None and args.scenario == "api-fanout":
        args.http_port = 8766
    if args.connections is None:
        args.connections = {"pong-flood": 4, "header-flood": 48, "receipt-flood": 40,
                            "history-users": 30, "shared-address": 50, "refused-flood": 10}.get(args.scenario, 1)
    first_uid = args.first_uid if args.first_uid is not None else random.randrange(10 ** 9, 10 ** 12)
    result = SCENARIOS[args.scenario](args, Users(args.redis, first_uid))
    print(json.dumps(dict(result, scenario=args.scenario), sort_keys=True))


if __name__ == "__main__":
    main()

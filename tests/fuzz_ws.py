#!/usr/bin/env python3
"""A bounded WebSocket fuzzer against a running imd (loopback only).

    .venv/bin/python tests/fuzz_ws.py --port 8765 --redis redis://127.0.0.1:6379/0 \
        --pid $(pgrep -of 'twistd.*imd') --seconds 20 --seed 1

It logs in as fresh users (tokens signed with ``privateKey`` read from the
given Redis, friends set there too) and sends random and mutated frames:
bad UTF-8, huge and deeply nested JSON, wrong field types, fragmented and
control frames (in and out of the rules), unmasked and reserved-bit frames,
garbage handshakes and abrupt closes mid-frame.  It stops by itself after
``--seconds`` or ``--cases``.  Afterwards it checks that the daemon still
serves a normal client (login, ping, a message acked and delivered).
Given ``--pid`` it reports the daemon's sockets on the port and its resident
memory before the first connection and the peak memory while fuzzing, for
the caller to check that they come back (tests/test_security.py waits for
the fuzzed connections to close, with a deadline, then compares).  Prints
one JSON line of figures; exit status 0 when every check passed.
"""

import argparse
import base64
import json
import os
import random
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from imd.auth import issue_token  # noqa: E402

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


# --- a tiny Redis client (RESP), enough for GET / SADD ----------------------

def redis_call(url, *args):
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    with socket.create_connection((parts.hostname, parts.port or 6379), timeout=5) as s:
        f = s.makefile("rb")

        def call(*argv):
            out = b"*%d\r\n" % len(argv)
            for a in argv:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            line = f.readline()
            if line[:1] == b"$":
                n = int(line[1:])
                return None if n < 0 else f.read(n + 2)[:-2]
            if line[:1] == b"-":
                raise RuntimeError(line.decode())
            return line[1:].strip()
        call("SELECT", db)
        return call(*args)


# --- a blocking WebSocket client that can also break every rule -------------

class RawWs:
    def __init__(self, port, path="/", host="127.0.0.1", timeout=5.0, handshake=True):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.port = port
        if handshake:
            self.status = self.handshake(path)

    def handshake(self, path):
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           % (path, self.port, key)).encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake: %r" % self.buf[:200])
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return int(head.split(b" ", 2)[1])

    @staticmethod
    def frame(opcode, payload, fin=True, mask=True, rsv=0, length=None):
        first = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload) if length is None else length
        if n < 126:
            head = struct.pack("!BB", first, (0x80 if mask else 0) | n)
        elif n < 65536:
            head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
        else:
            head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
        if not mask:
            return head + payload
        key = os.urandom(4)
        n = len(payload)
        stream = (key * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big") if n else b""
        return head + key + masked

    def send_frame(self, opcode, payload, **kw):
        self.sock.sendall(self.frame(opcode, payload, **kw))

    def send_json(self, obj):
        self.send_frame(OP_TEXT, json.dumps(obj).encode())

    def recv_frame(self):
        while True:
            got = self._parse()
            if got is not None:
                return got
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def _parse(self):
        b = self.buf
        if len(b) < 2:
            return None
        opcode, n, at = b[0] & 0x0F, b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        if len(b) < at + n:
            return None
        self.buf = b[at + n:]
        return opcode, b[at:at + n]

    def recv_json(self):
        """The next text packet (pings answered, other control frames skipped)."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode == OP_TEXT:
                return json.loads(payload)
            if opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
            if opcode == OP_CLOSE:
                raise ConnectionError("server closed: %r" % payload[:2])

    def drain(self, seconds=0.2):
        """Read whatever comes within ``seconds``; False once the server has closed."""
        self.sock.settimeout(seconds)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return False
        except socket.timeout:
            return True
        except OSError:
            return False
        finally:
            self.sock.settimeout(5.0)

    def abort(self):
        """Close with a TCP RST, dropping whatever is in flight."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --- what to send ------------------------------------------------------------

def json_value(rng, depth=0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2 ** 63, -(2 ** 63), 10 ** 30, rng.randrange(-1000, 10 ** 6)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, rng.uniform(-500, 500)])
    if kind == 4:
        return "".join(chr(rng.randrange(1, 0x2FFFF)) for _ in range(rng.randrange(0, 40)))
    if kind == 5:
        return rng.choice(["", "x" * 1024, "x" * 70, "\u0000", "😀" * 1023, "12", "-3"])
    if kind == 6:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["id", "to", "type", "msg", "from", "since", "limit", "with", "after",
                        "longitude", "latitude", "longtitude", "x"]): json_value(rng, depth + 1)
            for _ in range(rng.randrange(5))}


def mutated_packet(rng, friend):
    packet = {"id": "f%d" % rng.randrange(10 ** 9), "to": friend, "type": rng.choice("tiPTSOHsAE?"),
              "msg": json_value(rng)}
    if packet["type"] == "S" and rng.random() < 0.5:
        packet["msg"] = {"longitude": rng.uniform(-200, 200), "latitude": rng.uniform(-100, 100)}
    if packet["type"] == "H" and rng.random() < 0.5:
        packet["msg"] = rng.choice([{"after": base64.urlsafe_b64encode(os.urandom(rng.randrange(80))).decode()},
                                    {"since": rng.randrange(-5, 2 ** 64), "limit": rng.randrange(-3, 600)}])
    for field in list(packet):
        if rng.random() < 0.15:
            packet[field] = json_value(rng)
        elif rng.random() < 0.05:
            del packet[field]
    return packet


class Fuzzer:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        from cryptography.hazmat.primitives import serialization
        pem = redis_call(args.redis, "GET", "privateKey")
        self.private = serialization.load_pem_private_key(pem, password=None)  # parsed once
        self.next_uid = args.first_uid
        self.counts = {}

    def token(self, uid):
        return issue_token(self.private, uid, time.time())

    def fresh_user(self):
        """A new uid with a friend (uid + 1), logged in; the connection."""
        uid, self.next_uid = self.next_uid, self.next_uid + 2
        redis_call(self.args.redis, "SADD", "URS:%d" % uid, uid + 1)
        redis_call(self.args.redis, "SADD", "URS:%d" % (uid + 1), uid)
        ws = RawWs(self.args.port, "/" + self.token(uid))
        if ws.status != 101:
            raise AssertionError("login refused with HTTP %d" % ws.status)
        login = ws.recv_json()
        if login.get("type") != "L":
            raise AssertionError("no L: %r" % login)
        return uid, ws

    def case(self):
        """One fuzz case on a fresh connection; its name."""
        rng = self.rng
        name = rng.choice(["packets", "packets", "packets", "bad_utf8", "huge", "nested", "binary",
                           "fragments", "control", "unmasked", "reserved", "abort_mid_frame",
                           "bad_handshake", "oversize"])
        if name == "bad_handshake":
            s = socket.create_connection(("127.0.0.1", self.args.port), timeout=5)
            s.sendall(rng.choice([os.urandom(rng.randrange(1, 3000)),
                                  b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n",
                                  b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % self.token(1).encode(),
                                  b"POST / HTTP/1.0\r\n\r\n", b"\r\n\r\n"]))
            RawWs.drain(type("S", (), {"sock": s})(), 0.02)
            s.close()
            return name
        uid, ws = self.fresh_user()
        try:
            getattr(self, "case_" + name)(ws, uid + 1)
            ws.drain(0.01)
        except OSError:
            pass
        finally:
            ws.abort() if rng.random() < 0.5 else ws.close()
        return name

    def case_packets(self, ws, friend):
        for _ in range(self.rng.randrange(1, 30)):
            ws.send_json(mutated_packet(self.rng, friend))

    def case_bad_utf8(self, ws, friend):
        ws.send_frame(OP_TEXT, b'{"id":"u","to":%d,"type":"t","msg":"\xff\xfe\xc0"}' % friend)

    def case_huge(self, ws, friend):
        size = self.rng.choice([60000, 65000])
        ws.send_json({"id": "h", "to": friend, "type": "t", "msg": "x" * size})

    def case_oversize(self, ws, friend):
        ws.send_frame(OP_TEXT, b"[" + b"1," * 40000 + b"1]")  # > 65536: 1009
        ws.send_frame(OP_TEXT, b"x", length=2 ** 40)  # a length it will never get

    def case_nested(self, ws, friend):
        depth = self.rng.choice([100, 1000, 30000])
        ws.send_frame(OP_TEXT, b"[" * depth + b"]" * depth)
        ws.send_frame(OP_TEXT, b'{"a":' * depth + b"1" + b"}" * depth)

    def case_binary(self, ws, friend):
        ws.send_frame(OP_BINARY, os.urandom(self.rng.randrange(0, 2000)))

    def case_fragments(self, ws, friend):
        body = json.dumps({"id": "fr", "to": friend, "type": "t", "msg": "in pieces"}).encode()
        cut = self.rng.randrange(1, len(body))
        choice = self.rng.randrange(4)
        if choice == 0:  # by the rules, with a ping in between
            ws.send_frame(OP_TEXT, body[:cut], fin=False)
            ws.send_frame(OP_PING, b"hi")
            ws.send_frame(OP_CONT, body[cut:])
        elif choice == 1:  # a continuation with nothing to continue
            ws.send_frame(OP_CONT, body)
        elif choice == 2:  # a new message before the last ended
            ws.send_frame(OP_TEXT, body[:cut], fin=False)
            ws.send_frame(OP_TEXT, body)
        else:  # thousands of one-byte fragments
            ws.send_frame(OP_TEXT, body[:1], fin=False)
            for i in range(1, len(body)):
                ws.send_frame(OP_CONT, body[i:i + 1], fin=i == len(body) - 1)

    def case_control(self, ws, friend):
        choice = self.rng.randrange(5)
        if choice == 0:
            ws.send_frame(OP_PING, os.urandom(125))
        elif choice == 1:
            ws.send_frame(OP_PING, os.urandom(126))  # too long for a control frame
        elif choice == 2:
            ws.send_frame(OP_PONG, b"unasked")
        elif choice == 3:
            ws.send_frame(OP_PING, b"x", fin=False)  # fragmented control frame
        else:
            ws.send_frame(OP_CLOSE, self.rng.choice([b"\x00", struct.pack("!H", 999), struct.pack("!H", 4001) + b"\xff",
                                                     struct.pack("!H", 1000) + b"bye"]))

    def case_unmasked(self, ws, friend):
        ws.send_frame(OP_TEXT, b'{"id":"m","to":0,"type":"P"}', mask=False)

    def case_reserved(self, ws, friend):
        ws.send_frame(self.rng.choice([OP_TEXT, 3, 7, 0xB, 0xF]), b'{"id":"r","to":0,"type":"P"}',
                      rsv=self.rng.randrange(0, 8))

    def case_abort_mid_frame(self, ws, friend):
        whole = RawWs.frame(OP_TEXT, json.dumps({"id": "a", "to": friend, "type": "t", "msg": "y" * 5000}).encode())
        ws.sock.sendall(whole[:self.rng.randrange(1, len(whole))])

    def normal_client_works(self):
        uid, alice = self.fresh_user()
        friend = RawWs(self.args.port, "/" + self.token(uid + 1))
        assert friend.recv_json()["type"] == "L"
        alice.send_json({"id": "ping", "to": 0, "type": "P"})
        assert alice.recv_json() == {"id": "ping", "from": 0, "type": "P", "msg": "pong"}
        alice.send_json({"id": "hello-%d" % uid, "to": uid + 1, "type": "t", "msg": "after the fuzz"})
        assert alice.recv_json()["type"] == "A"
        got = friend.recv_json()
        assert (got["from"], got["msg"]) == (uid, "after the fuzz"), got
        alice.close()
        friend.close()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid, port):
    """The daemon's open sockets on the WebSocket ``port`` (the listener and
    its client connections).  Other descriptors, such as MySQL pool
    connections opened on demand by the fuzzed H and T packets, are not
    client connections and do not count as leaks."""
    sockets = set()
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:["):-1])
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, table)) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    if local_port == port and fields[9] in sockets:
                        count += 1
        except OSError:
            continue
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pid", type=int, help="the daemon's pid, for the memory and fd checks")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cases", type=int, default=100000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--first-uid", type=int, default=None, help="default: random (fresh users each run)")
    args = parser.parse_args(argv)
    args.seed = args.seed if args.seed is not None else random.randrange(2 ** 32)
    if args.first_uid is None:
        args.first_uid = random.Random(args.seed).randrange(10 ** 6, 10 ** 12, 2)
    fuzzer = Fuzzer(args)
    # before this run's first connection: nothing of it to wait for
    before = {"rss_kb": rss_kb(args.pid), "fds": fd_count(args.pid, args.port)} if args.pid else {}
    fuzzer.normal_client_works()
    peak_rss = before.get("rss_kb", 0)
    started = time.monotonic()
    cases = 0
    while cases < args.cases and time.monotonic() - started < args.seconds:
        name = fuzzer.case()
        fuzzer.counts[name] = fuzzer.counts.get(name, 0) + 1
        cases += 1
        if args.pid and cases % 20 == 0:
            peak_rss = max(peak_rss, rss_kb(args.pid))
    fuzz_seconds = time.monotonic() - started
    result = {"seed": args.seed, "cases": cases, "seconds": round(fuzz_seconds, 1), "by_case": fuzzer.counts}
    ok = True
    try:
        fuzzer.normal_client_works()
        result["normal_client_after"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported, exit status 1
        result["normal_client_after"] = "FAILED: %r" % (e,)
        ok = False
    if args.pid:
        result.update(rss_before_kb=before["rss_kb"], rss_peak_kb=peak_rss, fds_before=before["fds"])
    result["ok"] = ok
    print(json.dumps(result, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

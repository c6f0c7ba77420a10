#!/usr/bin/env python3
"""Redis memory per connected user, per registered user's friend set and per
unmigrated message, for docs/capacity.md.

Starts a private ``redis-server`` on a free 127.0.0.1 port (no persistence;
stopped by its pid at the end), writes N of each thing with the commands
imd's scripts run for it, keys and values shaped as imd writes them, and
reports ``used_memory`` growth per item (INFO memory, after the writes):

- a connection: ``dev:<uid>`` (the LOGIN script's ZADD of
  ``"<node_id> <conn_id>"``, score µs), its uid in ``nodeusers:<node>``, and
  the single-use token's ``jti:<jti>`` (SET NX EXAT, kept until the token's
  expiry, ``[auth] token_ttl``);
- a user's friend set ``URS:<uid>`` of F friends (``--friends``);
- an unmigrated message: the entry in ``MQ`` and in both parties'
  ``pending:<uid>`` (store_entry.lua), plus its dedup record
  ``dedup:<from>:<id>`` = ``"<to>/<seq>"`` with an expiry;
- a dedup record alone (what a migrated message leaves for ``[redis]
  dedup_ttl``).

    .venv/bin/python bench/redis_footprint.py [-n 100000] [--friends 10] [--text-bytes 60]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from probe_redis import encode as resp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self):
        line = self._line()
        if line[:1] == b"$":
            n = int(line[1:])
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if line[:1] == b"-":
            raise RuntimeError(line.decode())
        return line

    def pipeline(self, commands, chunk=5000):
        for start in range(0, len(commands), chunk):
            part = commands[start:start + chunk]
            self.sock.sendall(b"".join(resp(*c) for c in part))
            for _ in part:
                self._reply()

    def used_memory(self):
        self.pipeline([])
        self.sock.sendall(resp("INFO", "memory"))
        info = self._reply().decode()
        fields = dict(line.split(":", 1) for line in info.split("\r\n") if ":" in line)
        return int(fields["used_memory"])


def measure(r, commands, count):
    before = r.used_memory()
    r.pipeline(commands)
    return (r.used_memory() - before) / count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100000, help="items of each kind")
    parser.add_argument("--friends", type=int, default=10)
    parser.add_argument("--text-bytes", type=int, default=60, help="length of each message's text")
    args = parser.parse_args()
    n = args.n
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="imd-footprint-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                r = Redis(port)
                r.used_memory()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        r.sock.sendall(resp("INFO", "server"))
        server = dict(line.split(":", 1) for line in r._reply().decode().split("\r\n") if ":" in line)
        node = "10.0.0.12:8765"
        prefix = os.urandom(6).hex()
        now_us = int(time.time() * 1e6)
        expiry = int(time.time()) + 120
        base = 10 ** 7
        conn = []
        for i in range(n):
            uid = base + i
            conn.append(("ZADD", "dev:%d" % uid, now_us + i, "%s %s-%d" % (node, prefix, i)))
            conn.append(("SADD", "nodeusers:%s" % node, uid))
            conn.append(("SET", "jti:%s" % os.urandom(16).hex(), "1", "NX", "EXAT", expiry))
        per_connection = measure(r, conn, n)
        friends = []
        for i in range(n):
            uid = base + i
            friends.append(["SADD", "URS:%d" % uid] + [base + (i + k + 1) % n for k in range(args.friends)])
        per_friend_set = measure(r, friends, n)
        messages = []
        text = "x" * args.text_bytes
        ts = int(time.time() * 1000)
        for i in range(n):
            sender, to = base + (i % 5000), base + 5000 + (i % 5000)
            msg_id = "%s-%d" % (prefix, i)
            seq = 1000 + i
            entry = json.dumps({"id": msg_id, "from": sender, "to": to, "type": "t", "msg": text, "ts": ts + i,
                                "seq": seq}, separators=(",", ":"))
            messages.append(("LPUSH", "MQ", entry))
            messages.append(("ZADD", "pending:%d" % sender, seq, entry))
            messages.append(("ZADD", "pending:%d" % to, seq, entry))
            messages.append(("SET", "dedup:%d:%s" % (sender, msg_id), "%d/%d" % (to, seq), "EX", 3600))
        per_message = measure(r, messages, n)
        entry_bytes = len(entry)
        dedup = [("SET", "dedup:%d:%s-d%d" % (base + i % 5000, prefix, i), "%d/%d" % (base + 1, i), "EX", 3600)
                 for i in range(n)]
        per_dedup = measure(r, dedup, n)
        result = {"redis": server.get("redis_version"), "n": n, "friends": args.friends,
                  "text_bytes": args.text_bytes, "entry_bytes": entry_bytes,
                  "bytes_per_connection": round(per_connection), "bytes_per_friend_set": round(per_friend_set),
                  "bytes_per_unmigrated_message": round(per_message),
                  "bytes_per_dedup_record": round(per_dedup)}
        print(json.dumps(result))
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``sync`` row of bench/run.py: how long ``H {"sync": P}`` takes for a
user with 1,000 messages, half of them still in Redis (contract §10).

A blocking WebSocket client of its own (loopback, text frames, no
extensions): one request at a time, so each figure is one round trip of
the sync's pages as a client sees it.
"""

import base64
import json
import os
import signal
import socket
import statistics
import struct
import time


class WsClient:
    """A minimal blocking WebSocket client: send a packet, read the next."""

    def __init__(self, port, path, timeout=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET /%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           % (path, port, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("sync: the handshake was refused")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError("sync: handshake answered %r" % head[:80])
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def send(self, packet):
        payload = json.dumps(packet, separators=(",", ":")).encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("sync: the server closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def next(self):
        """The next text message as a packet (pings answered, fragments joined)."""
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:   # ping: pong back, masked
                mask = os.urandom(4)
                self.sock.sendall(struct.pack("!BB", 0x8A, 0x80 | n) + mask
                                  + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
                continue
            if opcode == 0x8:
                raise RuntimeError("sync: closed by the server: %r" % payload[2:])
            message += payload
            if b0 & 0x80:
                return json.loads(message)

    def reply_to(self, packet_id):
        while True:
            packet = self.next()
            if packet.get("id") == packet_id and packet.get("type") in ("A", "E", "H"):
                return packet

    def close(self):
        self.sock.close()


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def sync_row(setup, imd, token, wait_drained, log, messages=1000, rounds=30, limit=500, cpu=None):
    """``messages`` to one user from a friend, the first half migrated (the
    daemon's migrator process then stopped with SIGSTOP, continued after),
    then ``rounds`` syncs from 0 of all of them (``limit`` a page), timed
    from the first request to the last page: p50/p99 ms.  ``cpu``: a
    function giving ``{name: CPU seconds so far}`` (Redis, MariaDB, the ws
    process), read before and after the syncs: CPU µs per sync of each."""
    sender, reader = setup.pairs(2)
    writer = WsClient(imd.port, token(sender))
    assert writer.next()["type"] == "L"
    half = messages // 2

    def send(first, count):
        for n in range(first, first + count):
            writer.send({"id": "s%d" % n, "to": reader, "type": "t", "msg": "sync message %d" % n})
        for _ in range(count):
            reply = writer.next()
            if reply["type"] != "A":
                raise RuntimeError("sync: %r" % reply)
    send(0, half)
    wait_drained(setup, imd.flavour, timeout=120.0)
    migrator = imd.procs[1]
    migrator.send_signal(signal.SIGSTOP)
    try:
        send(half, messages - half)
        client = WsClient(imd.port, token(reader))
        assert client.next()["type"] == "L"
        times, pages = [], 0
        cpu0 = cpu() if cpu else {}
        for r in range(rounds):
            started = time.perf_counter()
            msg, got, n = {"sync": 0, "limit": limit}, 0, 0
            while True:
                n += 1
                packet_id = "sync-%d-%d" % (r, n)
                client.send({"id": packet_id, "to": 0, "type": "H", "msg": msg})
                reply = client.reply_to(packet_id)
                if reply["type"] != "H":
                    raise RuntimeError("sync: %r" % reply)
                got += len(reply["msg"])
                if not reply["more"]:
                    break
                msg = {"after": reply["next"]}
            times.append((time.perf_counter() - started) * 1000)
            pages = n
            if got != messages:
                raise RuntimeError("sync: %d messages, not %d" % (got, messages))
        cpu1 = cpu() if cpu else {}
        client.close()
    finally:
        migrator.send_signal(signal.SIGCONT)
        writer.close()
    unmigrated = setup.redis.call("ZCARD", imd.flavour.key("pending:%d" % reader))
    result = {"messages": messages, "unmigrated": int(unmigrated), "rounds": rounds, "pages": pages,
              "limit": limit, "p50_ms": round(statistics.median(times), 2),
              "p99_ms": round(_percentile(times, 0.99), 2),
              "note": "H {sync: 0} of all of them, paged %d a page, one request at a time" % limit}
    for name, before in cpu0.items():
        if before is not None and cpu1.get(name) is not None:
            # Redis and MariaDB are whole servers: upper bounds on a shared machine
            result["%s_cpu_us_per_sync" % name] = round((cpu1[name] - before) * 1e6 / rounds, 1)
    log("  sync %s: p50 %.1f ms, p99 %.1f ms (%d messages, %d unmigrated, %d pages)" % (
        imd.name, result["p50_ms"], result["p99_ms"], messages, result["unmigrated"], pages))
    return result


def ping_row(setup, imd, token, log, clients=20, rounds=20, window=500, cpu=None):
    """The keepalive's cost (the SDK sends a ``P`` per connection every 30 s):
    ``clients`` connections each send ``window`` ``P`` at once and read the
    replies, ``rounds`` times; ``cpu`` (as for :func:`sync_row`) read before
    and after: CPU µs per ``P`` of the ws process and of Redis."""
    uids = setup.pairs(clients)
    conns = []
    for uid in uids:
        conn = WsClient(imd.port, token(uid))
        assert conn.next()["type"] == "L"
        conns.append(conn)
    sent = 0
    started = time.perf_counter()
    cpu0 = cpu() if cpu else {}
    try:
        for r in range(rounds):
            for c, conn in enumerate(conns):
                conn.sock.sendall(b"".join(_frame({"id": "p%d-%d-%d" % (r, c, n), "to": 0, "type": "P", "msg": "ping"})
                                           for n in range(window)))
            for conn in conns:
                for _ in range(window):
                    reply = conn.next()
                    if reply["type"] != "P":
                        raise RuntimeError("ping: %r" % reply)
            sent += clients * window
        cpu1 = cpu() if cpu else {}
    finally:
        for conn in conns:
            conn.close()
    seconds = time.perf_counter() - started
    result = {"pings": sent, "clients": clients, "seconds": round(seconds, 2), "per_s": round(sent / seconds),
              "note": "P packets answered; CPU per P (Redis: a whole server, an upper bound)"}
    for name, before in cpu0.items():
        if before is not None and cpu1.get(name) is not None:
            result["%s_cpu_us_per_ping" % name] = round((cpu1[name] - before) * 1e6 / sent, 2)
    log("  ping %s: %d P answered, %.0f/s; ws %s µs/P, Redis %s µs/P" % (
        imd.name, sent, result["per_s"], result.get("ws_cpu_us_per_ping"), result.get("redis_cpu_us_per_ping")))
    return result


def _frame(packet):
    payload = json.dumps(packet, separators=(",", ":")).encode()
    mask = os.urandom(4)
    n = len(payload)
    header = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

"""Redis CPU per ``store_message`` (and the fanout's share of it) on a
private redis-server on a loopback port (not the shared one: its CPU is
the script's alone), a subscriber per node draining the frames; prints the
redis-server CPU µs per call of three rounds and the bytes the subscribers
read.  Run it with a checkout's venv to compare two (docs/performance.md,
"Ordered delivery's cost"):

    .venv/bin/python bench/fanout_probe.py [PORT] [same|two|nofanout] [aof]

same: both parties on one node; two: the recipient on another;
nofanout: nothing published (the script without its fanout); aof: the
server with an append-only file (appendfsync no, in a temporary directory),
which every write of the script goes to as it would to a replica.
"""
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

import imd
from imd.stores.keys import Keys
from imd.stores.redis import Script
from probe_redis import cpu_seconds, encode as enc, read_reply, start_redis

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 6391
CASE = sys.argv[2] if len(sys.argv) > 2 else "same"   # same node / two nodes
AOF = sys.argv[3:4] == ["aof"]
N = 20000


def main():
    # (stopped below by its pid)
    folder = tempfile.mkdtemp(prefix="fanout_probe")
    persistence = ["--appendonly", "yes", "--appendfsync", "no"] if AOF else ["--appendonly", "no"]
    proc = start_redis(PORT, "--dir", folder, *persistence)
    try:
        c = socket.create_connection(("127.0.0.1", PORT))
        f = c.makefile("rb")

        def reply():
            return read_reply(f)
        keys = Keys("", 0)
        script = Script.load("store_message")
        c.sendall(enc("SCRIPT", "LOAD", script.text))
        sha = reply()
        frm, to = 1, 2
        node_to = "n1" if CASE == "same" else "n2"
        c.sendall(enc("SADD", keys.friends(frm), to))
        reply()
        c.sendall(enc("ZADD", keys.devices(frm), 1, "n1 c1"))
        reply()
        c.sendall(enc("ZADD", keys.devices(to), 1, node_to + " c2"))
        reply()
        got = [0]
        subs = []
        for node in {"n1", node_to}:
            s = socket.create_connection(("127.0.0.1", PORT))
            s.sendall(enc("SUBSCRIBE", keys.channel_prefix + node))
            subs.append(s)

            def drain(s=s):
                while True:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    got[0] += len(data)
            threading.Thread(target=drain, daemon=True).start()
        time.sleep(0.2)
        packet = (b'{"id":"%d","type":"t","to":2,"msg":"hello there, this is a chat message of typical length",'
                  b'"from":1,"ts":1765000000000}')

        def cpu():
            return cpu_seconds(proc.pid)
        results = []
        for rnd in range(3):
            t0 = cpu()
            for b in range(0, N, 100):
                batch = []
                for i in range(b, b + 100):
                    mid = "%d-%d" % (rnd, i)
                    ks = [keys.friends(frm), keys.dedup(frm, mid, to), keys.mq, keys.mq_seq, keys.pending(frm),
                          keys.pending(to), keys.devices(to), keys.devices(frm), keys.conversations(frm),
                          keys.conversation_last(frm), keys.conversations(to), keys.conversation_last(to),
                          keys.unread(to, frm)]
                    batch.append(enc("EVALSHA", sha, len(ks), *ks, to, packet % i, 3600, frm,
                                     (keys.channel_prefix if CASE != "nofanout" else ""), "n1 c1"))
                c.sendall(b"".join(batch))
                for _ in range(100):
                    r = reply()
                    assert isinstance(r, list), r
            results.append((cpu() - t0) / N * 1e6)
            c.sendall(enc("DEL", keys.mq))
            reply()
        print("%s %s%s: redis-server CPU µs per store_message, 3 rounds: %s; bytes to subscribers %d"
              % (os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(imd.__file__)))),
                 CASE, " aof" if AOF else "", " ".join("%.2f" % r for r in results), got[0]))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


main()

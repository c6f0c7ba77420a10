"""Redis CPU per migrated message of the migrator's side: the claim
(``MQ`` -> ``MQ:processing``, lua/claim.lua) and the ack after the COMMIT
(``MQ:processing`` trimmed, each party's ``pending:<uid>`` trimmed,
lua/ack.lua), on a private redis-server on a loopback port (its CPU is the
scripts' alone).  The queue is filled by ``store_message`` between ``USERS``
users (random pairs, as many pending indexes as a busy node has), then
drained in batches as the migrator does; prints the redis-server CPU µs per
entry of the store, the claim and the ack, three rounds:

    .venv/bin/python bench/claim_probe.py [PORT] [BATCH]
"""
import random
import socket
import sys

from imd.stores.keys import Keys
from imd.stores.redis import Script
from probe_redis import cpu_seconds, encode as enc, read_reply, start_redis

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 6392
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 500
N = 20000
USERS = 200


def main():
    # (stopped below by its pid)
    proc = start_redis(PORT, "--appendonly", "no")
    try:
        c = socket.create_connection(("127.0.0.1", PORT))
        f = c.makefile("rb")

        def reply():
            return read_reply(f)

        def call(*args):
            c.sendall(enc(*args))
            return reply()

        def cpu():
            return cpu_seconds(proc.pid)
        keys = Keys("", 0)
        sha = {name: call("SCRIPT", "LOAD", Script.load(name).text).decode()
               for name in ("store_message", "claim", "ack")}
        rng = random.Random(29)
        for u in range(1, USERS + 1):
            call("SADD", keys.friends(u), *range(1, USERS + 1))
        call("SET", keys.mq_lock, "tok")
        packet = (b'{"id":"%d","type":"t","to":%d,"msg":"hello there, this is a chat message of typical length",'
                  b'"from":%d,"ts":1765000000000}')
        for rnd in range(3):
            t0 = cpu()
            for b in range(0, N, 100):
                batch = []
                for i in range(b, b + 100):
                    frm, to = rng.sample(range(1, USERS + 1), 2)
                    ks = [keys.friends(frm), keys.dedup(frm, "%d-%d" % (rnd, i), to), keys.mq, keys.mq_seq,
                          keys.pending(frm), keys.pending(to), keys.devices(to), keys.devices(frm),
                          keys.conversations(frm), keys.conversation_last(frm), keys.conversations(to),
                          keys.conversation_last(to), keys.unread(to, frm)]
                    batch.append(enc("EVALSHA", sha["store_message"], len(ks), *ks, to, packet % (i, to, frm),
                                     3600, frm, "", ""))
                c.sendall(b"".join(batch))
                for _ in range(100):
                    assert isinstance(reply(), list)
            t1 = cpu()
            claim = ack = 0.0
            while True:
                t = cpu()
                r = call("EVALSHA", sha["claim"], 3, keys.mq_lock, keys.mq_processing, keys.mq, "tok", BATCH, 1)
                claim += cpu() - t
                count = int(r[2])
                if not count:
                    break
                highest = {}
                for line in r[1].split(b"\n"):
                    seq = int(line.rsplit(b'"seq":', 1)[1][:-1])
                    for uid in (int(line.split(b'"from":', 1)[1].split(b",", 1)[0]),
                                int(line.split(b'"to":', 1)[1].split(b",", 1)[0])):
                        highest[uid] = max(highest.get(uid, 0), seq)
                parties = sorted(highest.items())
                t = cpu()
                call("EVALSHA", sha["ack"], 3 + len(parties), keys.mq_lock, keys.mq_processing, keys.mq_dead,
                     *[keys.pending(uid) for uid, _ in parties], "tok", count, 0, *[s for _, s in parties])
                ack += cpu() - t
            print("round %d: redis-server CPU µs per entry: store %.2f claim %.2f ack %.2f (batch %d)"
                  % (rnd, (t1 - t0) / N * 1e6, claim / N * 1e6, ack / N * 1e6, BATCH))
    finally:
        proc.terminate()
        proc.wait()


main()

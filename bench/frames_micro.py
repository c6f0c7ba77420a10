"""Per message on the sending node, sender and recipient there: its frames
read (as the subscription hands them) and its A's wait, µs; the old way
(two frames as str, a DelayedCall per A) when run in a checkout from
before issue 29's change (docs/performance.md, "Ordered delivery's cost"):

    .venv/bin/python bench/frames_micro.py LABEL
    .venv-pypy3/bin/python bench/frames_micro.py LABEL
"""
import inspect
import platform
import sys
import time

from twisted.internet import reactor
from imd.node import LocalNode



class S:
    def __init__(self, uid, conn):
        self.uid, self.conn_id, self.login_score = uid, conn, 0

    def send_packet(self, p):
        pass


node = LocalNode("n1", None, reactor, 5)
node.add(S(1, "c1"))
node.add(S(2, "c2"))
new = "result" in inspect.signature(node.wait_frame).parameters
PKT = (b'{"id":"%d","type":"t","to":2,"msg":"hello there, this is a chat message of typical length",'
       b'"from":1,"ts":1765000000000,"pos":%d}')


def run(n, base):
    t = time.perf_counter()
    for i in range(base, base + n):
        pkt = PKT % (i, i)
        if new:
            node.wait_frame(i, "A")
            node.frame_received(b"x 1 c1 %d 2 %s" % (i, pkt))
        else:
            node.wait_frame(i)
            node.frame_received((b"d 2 " + pkt).decode("utf-8", "surrogateescape"))
            node.frame_received((b"x 1 c1 " + pkt).decode("utf-8", "surrogateescape"))
    return (time.perf_counter() - t) / n * 1e6


best = min(run(50000, k * 50000) for k in range(1, 8))
print("%s %s: µs per message (frames + wait): %.2f" % (sys.argv[1], platform.python_implementation(), best))

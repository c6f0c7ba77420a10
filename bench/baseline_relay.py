"""The baseline: a minimal Twisted + Autobahn relay that pushes each message
onto a Redis list with txredisapi before acking and forwarding it.

No auth (the URL path is the user id), no friend check, no dedup, no rate
limit: the ceiling of the Python transport with one Redis write per message on
this machine.  ``make bench`` runs it beside imd and prints every imd
throughput figure as a ratio of this one, measured in the same run.

    python bench/baseline_relay.py --port 8790 --redis-db 9
"""

import argparse
import json
import resource
import sys

import txredisapi
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor

LIST_KEY = "bench:relay"


class RelayProtocol(WebSocketServerProtocol):
    uid = None

    def onConnect(self, request):
        self.uid = int(request.path.strip("/"))

    def onOpen(self):
        self.factory.users.setdefault(self.uid, []).append(self)
        self.sendMessage(json.dumps({"id": "0", "from": 0, "type": "L", "msg": "login in",
                                     "uid": self.uid}).encode())

    def onMessage(self, payload, isBinary):
        packet = json.loads(payload)
        to = int(packet["to"])
        stored = json.dumps({"id": packet["id"], "from": self.uid, "to": to, "type": packet["type"],
                             "msg": packet["msg"], "ts": int(reactor.seconds() * 1000)},
                            ensure_ascii=False, separators=(",", ":")).encode()
        d = self.factory.redis.lpush(LIST_KEY, stored)
        d.addCallback(self._stored, packet["id"], to, stored)

    def _stored(self, _, packet_id, to, stored):
        if self.state == self.STATE_OPEN:
            self.sendMessage(json.dumps({"id": packet_id, "from": 0, "type": "A", "msg": "success"},
                                        separators=(",", ":")).encode())
        for peer in self.factory.users.get(to, ()):
            peer.sendMessage(stored)

    def onClose(self, wasClean, code, reason):
        peers = self.factory.users.get(self.uid, [])
        if self in peers:
            peers.remove(self)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--redis-db", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    factory = WebSocketServerFactory()
    factory.protocol = RelayProtocol
    factory.setProtocolOptions(maxMessagePayloadSize=65536, maxFramePayloadSize=65536,
                               autoPingInterval=30, autoPingTimeout=30)
    factory.users = {}
    factory.redis = txredisapi.lazyConnectionPool("127.0.0.1", args.redis_port, dbid=args.redis_db,
                                                  poolsize=1, convertNumbers=False)
    reactor.listenTCP(args.port, factory, interface="127.0.0.1", backlog=4096)
    sys.stdout.write("baseline relay listening on 127.0.0.1:%d\n" % args.port)
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()

"""Micro-benchmarks of the per-packet paths the performance work changed,
each the old way and the new way in one run (docs/performance.md, "What
each change bought").  Run it with each interpreter:

    .venv/bin/python bench/micro.py
    .venv-pypy3/bin/python bench/micro.py
"""

import platform
import sys
import time

from imd import jsonfast, protocol

PACKET = b'{"id":12345,"type":"t","to":42,"msg":"hello there, this is a chat message of typical length"}'


def per_call(fn, arg, n=200000, rounds=5):
    """Best µs per call over ``rounds`` (the first rounds warm the JIT)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn(arg)
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def parse_frame():
    saved = jsonfast.plain_loads
    try:
        jsonfast.use_plain_loads(False)
        old = per_call(protocol.parse_frame, PACKET)
        jsonfast.use_plain_loads(True)
        new = per_call(protocol.parse_frame, PACKET)
    finally:
        jsonfast.use_plain_loads(saved)
    return old, new, "hooked decoder", "json.loads (default here: %s)" % ("on" if saved else "off")


def _protocol(tuned):
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.testing import StringTransport

    from imd.transport import autobahn_tuning

    class Quiet(WebSocketServerProtocol):
        def onMessage(self, payload, is_binary):
            pass
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0)
    factory.protocol = autobahn_tuning.tuned(factory, Quiet) if tuned else Quiet
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.state, protocol._perMessageCompress = protocol.STATE_OPEN, None
    protocol.websocket_version, protocol.inside_message, protocol.current_frame = 13, False, None
    return protocol


def _client_frame(payload, mask=b"\x01\x02\x03\x04"):
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def frame_in():
    """One chat frame through Autobahn to onMessage: the tuned class with
    Autobahn's own dataReceived (before) and with its own (after)."""
    from autobahn.twisted.websocket import WebSocketServerProtocol
    frame = _client_frame(PACKET)
    protocol = _protocol(tuned=True)
    old = per_call(lambda data: WebSocketServerProtocol.dataReceived(protocol, data), frame)
    new = per_call(protocol.dataReceived, frame)
    return old, new, "Autobahn's dataReceived", "tuned dataReceived"


class _Presence:
    """The node's presence store, answering at once (no Redis)."""

    def login(self, uid, conn_id, score, max_devices):
        from twisted.internet import defer
        return defer.succeed([])

    def logout(self, uid, conn_id):
        from twisted.internet import defer
        return defer.succeed(None)


def _connection(handlers):
    """A logged-in connection of imd's own WebSocket listener (the tuned
    protocol, as imd runs it) on a transport that throws its bytes away."""
    from twisted.internet import defer
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from imd.config import parse_settings
    from imd.metrics import Metrics
    from imd.node import LocalNode
    from imd.transport.websocket import ImdServerFactory, Listener

    class Verifier:
        def verify(self, token):
            return defer.succeed(1)

    class Discard(StringTransport):
        def write(self, data):
            pass

    class Now(Clock):
        seconds = staticmethod(time.perf_counter)   # the rate's bucket refills

    settings = parse_settings("[imd]\nroles = ws\n[websocket]\nping_interval = 0\nrate = 1000000000\n"
                              "burst = 1000000\n")
    clock = Now()
    node = LocalNode("bench", _Presence(), clock, 4)
    factory = ImdServerFactory(Listener(settings, node, Verifier(), handlers, Metrics(), clock))
    factory.setProtocolOptions(openHandshakeTimeout=0)
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"GET /token HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert node.sessions_of(1) and b'"type":"L"' in transport.value(), transport.value()
    connection.transport = Discard()
    return connection


def packet_path():
    """One packet through imd's connection: frame in, parsed, handed to its
    handler, the reply framed and written.  A P (answered at once), and a t
    whose handler answers later (a Deferred fired after the frame was
    taken, as a store's answer is)."""
    from twisted.internet import defer

    from imd.handlers import Reply
    waiting = []

    def later(uid, packet):
        d = defer.Deferred()
        waiting.append((d, packet.id))
        return d
    connection = _connection({"P": lambda uid, packet: Reply(protocol.pong(packet.id)), "t": later})
    ping = per_call(connection.dataReceived, _client_frame(b'{"id":12345,"type":"P","to":0}'))

    def message(frame):
        connection.dataReceived(frame)
        d, packet_id = waiting.pop()
        d.callback(Reply(protocol.ack(packet_id)))
    return ping, per_call(message, _client_frame(PACKET)), "P, answered at once", "t, answered later"


def masker():
    """Unmasking one chat frame: the integer XOR against Autobahn's masker."""
    from autobahn.websocket.xormasker import create_xor_masker

    from imd.transport import autobahn_tuning
    mask = b"\x01\x02\x03\x04"
    old = per_call(lambda data: autobahn_tuning.IntXorMasker(mask).process(data), PACKET)
    new = per_call(lambda data: create_xor_masker(mask, len(data)).process(data), PACKET)
    return old, new, "integer XOR", "Autobahn's masker (SMALL_FRAME here: %d)" % autobahn_tuning.SMALL_FRAME


def _encode_before(args):
    """imd.stores.redis.encode_command before its tables."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            value = arg
        elif kind is str:
            value = arg.encode("utf-8")
        elif kind is int:
            value = b"%d" % arg
        else:
            value = str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(out)


def redis_encode():
    """The EVALSHA of a chat message's store script (12 arguments)."""
    from imd.stores.redis import Script, encode_command
    script = Script("return 1")
    keys = ("MQ", "pending:1", "pending:2", "URS:1")
    args = ("12345", 1, 2, PACKET, 1700000000123)
    assert encode_command((4, *keys, *args), script.evalsha, 2) == _encode_before(
        ("EVALSHA", script.sha, 4, *keys, *args))
    old = per_call(lambda a: _encode_before(("EVALSHA", script.sha, len(keys), *keys, *a)), args)
    new = per_call(lambda a: encode_command((len(keys), *keys, *a), script.evalsha, 2), args)
    return old, new, "formatted per argument", "header tables, EVALSHA head per script"


def message_json():
    """A message's stored/delivered JSON and its ack without orjson (PyPy):
    the json module, then jsonfast.dumps_flat."""
    saved = jsonfast.orjson, jsonfast.flat_dumps
    packet = protocol.parse_frame(PACKET)

    def both(p):
        protocol.message_json(p, 7, 1700000000123)
        protocol.ack(p.id)
    try:
        jsonfast.use_orjson(False)
        jsonfast.use_flat_dumps(False)
        old = per_call(both, packet)
        jsonfast.use_flat_dumps(True)
        new = per_call(both, packet)
    finally:
        jsonfast.orjson, jsonfast.flat_dumps = saved
    return old, new, "json module", "dumps_flat (orjson installed here, and used instead: %s)" % jsonfast.available()


CASES = {"message_json": message_json, "parse_frame": parse_frame, "frame_in": frame_in, "masker": masker,
         "redis_encode": redis_encode, "packet_path": packet_path}


def main(names):
    print("%s %s" % (platform.python_implementation(), platform.python_version()))
    for name in names or CASES:
        old, new, old_what, new_what = CASES[name]()
        print("%-14s %6.2f µs (%s) -> %6.2f µs (%s)" % (name, old, old_what, new, new_what))


if __name__ == "__main__":
    main(sys.argv[1:])

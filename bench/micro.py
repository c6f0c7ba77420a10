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


def per_call(fn, arg, n=200000, rounds=5, clock=time.perf_counter):
    """Best µs per call over ``rounds`` (the first rounds warm the JIT)."""
    best = float("inf")
    for _ in range(rounds):
        t = clock()
        for _ in range(n):
            fn(arg)
        best = min(best, (clock() - t) / n * 1e6)
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


def redis_reply():
    """A store script's reply and a stored entry read back, each through
    the reply parser into the Deferred waiting for it, with the reply
    timeout's bookkeeping: txredisapi's protocol with imd's bookkeeping in
    the reply's callback, which also decoded what txredisapi left as bytes
    (before), against imd's connection, which does both in the parser
    (after)."""
    from collections import deque

    import txredisapi
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from imd.stores.redis import _Connection, _Factory
    entry = b"$%d\r\n%s\r\n" % (len(PACKET), PACKET)

    def reading(conn, issued, replied):
        def one(_):
            for data in (b":1\r\n", entry):   # (one bulk string per read: see imd.stores.redis's tests)
                issued.append(0.0)
                conn.replyQueue.get().addBoth(replied)
                conn.dataReceived(data)
        return one
    plain = txredisapi.BaseRedisProtocol(convertNumbers=False)
    plain.makeConnection(StringTransport())
    awaited: deque = deque()

    def replied_before(reply):
        if awaited:
            awaited.popleft()
        return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    imd_conn = _Factory(_Connection, Clock(), 5.0, "bench").buildProtocol(None)
    imd_conn.makeConnection(StringTransport())
    old = per_call(reading(plain, awaited, replied_before), None)
    new = per_call(reading(imd_conn, imd_conn.issued, lambda reply: reply), None)
    return old, new, "txredisapi's parser, then imd", "imd's connection"


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


# --- what a t's text costs before it is stored ([privacy] mask, [moderation]) ---

_ENGLISH = ("the courier is at the door, please come down", "ok thanks, five minutes", "on my way",
            "can you leave it with the neighbour?", "where are you now", "I am at the gate")
_CHINESE = ("我到了，请稍等一下", "门口有人吗？", "谢谢", "放在前台就可以", "电梯坏了，请下楼取餐", "好的")


def _chat_messages(phrases, count=64, length=100):
    """``count`` messages of ~``length`` characters made of ``phrases``."""
    import random
    rng = random.Random(26)
    messages = []
    for _ in range(count):
        words: list = []
        while sum(len(w) + 1 for w in words) < length:
            words.append(rng.choice(phrases))
        messages.append(" ".join(words)[:length])
    return messages


def _blocklist_entries(count=10000):
    """``count`` words: 70% ASCII of 4 to 10 letters, 30% Chinese of 2 to 4
    characters (a Chinese list makes nodes with thousands of children)."""
    import random
    rng = random.Random(11)
    entries = set()
    while len(entries) < count:
        if rng.random() < 0.3:
            entries.add("".join(chr(rng.randrange(0x4E00, 0x4E00 + 3000)) for _ in range(rng.randint(2, 4))))
        else:
            entries.add("".join(chr(rng.randrange(97, 123)) for _ in range(rng.randint(4, 10))))
    return sorted(entries)


def _per_message(policy, messages, rounds=7):
    """Best µs per message of ``policy.apply`` over ``messages``, in CPU
    time of this process (the machine is shared: wall time would count
    the time other processes had the core)."""
    n = max(1, 100000 // len(messages))

    def all_of(_):
        for text in messages:
            policy.apply(text)
    return per_call(all_of, None, n=n, rounds=rounds, clock=time.process_time) / len(messages)


def moderation():
    """Rows: the text policy on ~100-character chat messages, English and
    Chinese (fullwidth punctuation: NFKC has work to do), that hold nothing
    to replace (the common case), and on ones that do."""
    from imd.moderation import MASK, PYTHON_MATCHER, REFUSE, Blocklist, PrivateDataMask, TextPolicy
    english, chinese = _chat_messages(_ENGLISH), _chat_messages(_CHINESE)
    entries = _blocklist_entries()
    blocklist = Blocklist(entries)
    assert not any(blocklist.occurs_in(m) for m in english + chinese), "a benchmark message holds a blocked word"
    private = [m[:60] + " call +33 6 12 34 56 78, a.b@example.com" for m in english]
    blocked = [m[:60] + " " + entries[i] for i, m in enumerate(english)]
    nothing, both_kinds = PrivateDataMask(()), PrivateDataMask(("phone", "email"))
    masking = TextPolicy(both_kinds)
    refuse, mask = TextPolicy(nothing, blocklist, REFUSE), TextPolicy(nothing, blocklist, MASK)
    both = TextPolicy(both_kinds, blocklist, REFUSE)
    # the automaton this interpreter does not use (imd.moderation.PYTHON_MATCHER)
    other = TextPolicy(nothing, Blocklist(entries, python_matcher=not PYTHON_MATCHER), REFUSE)
    other_name = "pyahocorasick" if PYTHON_MATCHER else "the Python automaton"
    return [
        ("mask phone, email; English, nothing to mask", _per_message(masking, english)),
        ("mask phone, email; Chinese, nothing to mask", _per_message(masking, chinese)),
        ("mask phone, email; a number and an address", _per_message(masking, private)),
        ("blocklist 10,000, refuse; English, no hit", _per_message(refuse, english)),
        ("blocklist 10,000, refuse; Chinese, no hit", _per_message(refuse, chinese)),
        ("blocklist 10,000, mask; English, no hit", _per_message(mask, english)),
        ("blocklist 10,000, mask; one hit", _per_message(mask, blocked)),
        ("both (mask, refuse); English, nothing found", _per_message(both, english)),
        ("both (mask, refuse); Chinese, nothing found", _per_message(both, chinese)),
        ("blocklist 10,000, refuse; English, no hit; %s instead" % other_name, _per_message(other, english)),
        ("blocklist 10,000, refuse; Chinese, no hit; %s instead" % other_name, _per_message(other, chinese)),
    ]


# --- the message log read back: the migrator's rows, an H reply ---

def _log_entries(count, ts0=1700000000000):
    """``count`` MQ entries as the store script leaves them (``"seq"`` added
    last): every tenth a receipt, the rest texts between users 1 and 2."""
    from imd.messagelog.entry import id_json, receipt_entry_parts
    entries = []
    for n in range(count):
        sender, to = (1, 2) if n % 2 else (2, 1)
        if n % 10 == 9:
            head, tail = receipt_entry_parts("r%d" % n, to, sender, 2, ts0 + n)
            packet = head + id_json("m%d" % (n - 1)) + tail
        else:
            text = "hello there, message %d of a chat of typical length" % n
            packet = protocol.message_json(protocol.MessagePacket("m%d" % n, "t", to, text), sender, ts0 + n)
        entries.append((packet[:-1] + b',"seq":%d}' % (n + 1)).decode("utf-8"))
    return entries


def migrator_rows():
    """A batch of 500 MQ entries read back into message and receipt rows
    (imd.migrator's ``_rows``: the orjson fast path where installed)."""
    from imd.migrator import Migrator
    entries = _log_entries(500)

    def batch(_):
        Migrator._rows(entries, [], {})
    return [("500 entries read back into rows", per_call(batch, None, n=200) / len(entries))]


def history_reply():
    """An ``H`` of 100 messages: 60 rows from MySQL (with their states) and
    the user's pending entries (40 messages, some receipts), merged,
    deduplicated and written as one reply (handlers.history without I/O)."""
    from twisted.internet import defer

    from imd.handlers.history import HistoryHandler
    entries = _log_entries(50, ts0=1700000000060)
    rows = []
    for n in range(60):
        sender, to = (1, 2) if n % 2 else (2, 1)
        text = "an older message %d, already in MySQL" % n
        packet = protocol.message_json(protocol.MessagePacket("old%d" % n, "t", to, text), sender,
                                       1700000000000 + n).decode("utf-8")
        rows.append(_history_row(1700000000000 + n, n + 1, sender, b"old%d" % n, to, "t", text, packet, n % 3))

    class Messages:
        def pending(self, uid):
            return defer.succeed(entries)

    class Mysql:
        def history(self, uid, with_uid, position, limit):
            return defer.succeed(rows)
    handler = HistoryHandler(Messages(), Mysql())
    packet = protocol.HistoryPacket("h", since=0, limit=100)
    replies = []

    def one(_):
        handler.handle(1, packet).addCallback(replies.append)
    one(None)
    assert replies[0].frame.count(b'"state"') == 100, replies[0].frame[:300]
    return [("100 messages, 60 from MySQL and 40 pending", per_call(one, None, n=2000) / 100)]


def _history_row(ts, seq, from_id, msg_id, to_id, kind, msg, packet, state):
    """A row of MySQL's history read, in the shape the store hands up (H
    does not read msg)."""
    return (ts, seq, from_id, msg_id, to_id, kind, None, packet, state)


CASES = {"message_json": message_json, "parse_frame": parse_frame, "frame_in": frame_in, "masker": masker,
         "redis_encode": redis_encode, "redis_reply": redis_reply, "moderation": moderation,
         "packet_path": packet_path, "migrator_rows": migrator_rows, "history_reply": history_reply}


def main(names):
    print("%s %s" % (platform.python_implementation(), platform.python_version()))
    for name in names or CASES:
        result = CASES[name]()
        if isinstance(result, list):   # rows of one measure each
            for what, us in result:
                print("%-14s %6.2f µs per message (%s)" % (name, us, what))
            continue
        old, new, old_what, new_what = result
        print("%-14s %6.2f µs (%s) -> %6.2f µs (%s)" % (name, old, old_what, new, new_what))


if __name__ == "__main__":
    main(sys.argv[1:])

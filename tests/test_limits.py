"""Abuse limits below the protocol (issue 8): connections per node and per
remote address, the open-handshake timeout against a slow client, and a
client that never reads (slow consumer).  Rate and burst, and 4008 after
too many errors, are in tests/test_messages.py (RateLimitTests,
TooManyErrorsTests)."""

import json
import time

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from zope.interface import implementer

from imd.transport.websocket import LINGER_BYTES
from tests.support import ImdServer, RedisTestMixin, ServerTestMixin, make_settings, wait_until, with_deadline
from tests.test_faults import report


class RawClient(protocol.Protocol):
    """A TCP client that sends what it is told and keeps all it gets."""

    def __init__(self):
        self.data = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(self.data)


@defer.inlineCallbacks
def raw_connect(port, source="127.0.0.1", send=b"", client=None):
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0))
    client = yield connectProtocol(endpoint, client or RawClient())
    if send:
        client.transport.write(send)
    return client


def upgrade_request(path="/", headers=()):
    extra = "".join("%s: %s\r\n" % header for header in headers)
    return ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (path, extra)).encode("ascii")


def http_answer(data):
    """``(status, {lower-case header name: value}, body)`` of an HTTP answer."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


async def answer_to(port, request, closes=True):
    """The server's answer to ``request`` on a fresh connection: read until
    the server closes it (``closes``) or, for a 101, to the end of its headers."""
    client = await raw_connect(port, send=request)
    try:
        if closes:
            await with_deadline(client.lost, what="answer and close")
        else:
            await wait_until(lambda: b"\r\n\r\n" in client.data, what="answer")
    finally:
        if not client.lost.called:
            client.transport.abortConnection()
    return http_answer(client.data)


class LimitsMixin(ServerTestMixin):

    def raw(self, **kwargs):
        d = raw_connect(self.server.port, **kwargs)

        def keep(client):
            self.addCleanup(lambda: client.transport.abortConnection() if not client.lost.called else None)
            return client
        return d.addCallback(keep)

    async def assert_refused_with(self, status, **kwargs):
        client = await self.raw(send=upgrade_request("/" + self.token(99)), **kwargs)
        answer = await with_deadline(client.lost, what="refusal")
        self.assertTrue(answer.startswith(b"HTTP/1.1 %d " % status), answer)
        self.assertIn(b"Retry-After:", answer)


class PerAddressTests(LimitsMixin, unittest.TestCase):
    overrides = {"websocket": {"max_per_address": "3"}}

    async def test_fourth_connection_from_one_address_gets_429(self):
        first = await self.login(1)
        await self.login(2)
        idle = await self.raw()  # not even a handshake yet: it counts too
        await self.assert_refused_with(429)
        # another address is not affected (the whole 127/8 is loopback)
        elsewhere = await self.raw(source="127.0.0.2", send=upgrade_request("/" + self.token(4)))
        await wait_until(lambda: b"101 Switching Protocols" in elsewhere.data, what="upgrade from 127.0.0.2")
        # a slot comes back when a connection ends
        idle.transport.loseConnection()
        await idle.lost
        await wait_until(lambda: self.factory_limits().held_by("127.0.0.1") == 2, what="slot released")
        again = await self.login(5)
        self.assertEqual(self.factory_limits().held_by("127.0.0.1"), 3)
        self.assertFalse(first.closed.called or again.closed.called)
        metrics = self.server.app.metrics.exposition().decode()
        self.assertIn('imd_connections_refused_total{status="429"} 1.0', metrics)
        report("max_per_address = 3", admitted_from_127_0_0_1=3, refused_429=1, admitted_from_127_0_0_2=1)

    def factory_limits(self):
        return self.server._listening.factory.limits


class PerNodeTests(LimitsMixin, unittest.TestCase):
    overrides = {"websocket": {"max_connections": "3"}}

    async def test_fourth_connection_of_the_node_gets_503_from_any_address(self):
        await self.login(1)
        await self.raw(source="127.0.0.2")
        await self.raw(source="127.0.0.3")
        await self.assert_refused_with(503, source="127.0.0.4")
        await self.assert_refused_with(503)
        self.assertEqual(self.server._listening.factory.limits.total, 3)
        report("max_connections = 3", admitted=3, refused_503=2)


class RefusalLogTests(LimitsMixin, unittest.TestCase):
    """Issue 22 item 12: the ws port wrote a warning per refused connection
    (22,680 lines in 8 s from one flooder).  Each is counted on /metrics;
    the log gets a line at most every 10 s (task.Clock), with the count."""

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        self._clients = []
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.server = ImdServer(make_settings({"websocket": {"max_connections": "2"}}), clock=self.clock)
        yield self.server.start()
        self.addCleanup(self.server.stop)
        self.lines = []

        def observe(event):
            if event.get("log_namespace") == "imd.transport.websocket" and "refused" in (event.get("log_format") or ""):
                self.lines.append(formatEvent(event))
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def refuse(self, count):
        refused = [await self.raw(send=upgrade_request("/x")) for _ in range(count)]
        answers = await with_deadline(defer.gatherResults([c.lost for c in refused]), what="refusals")
        self.assertTrue(all(a.startswith(b"HTTP/1.1 503 ") for a in answers))

    async def test_a_flood_of_refused_connections_is_a_line_per_10_s_and_counted(self):
        held = [await self.raw() for _ in range(2)]
        await wait_until(lambda: self.server._listening.factory.limits.total == 2, what="2 connections held")
        await self.refuse(30)
        self.assertEqual(len(self.lines), 1, self.lines)
        self.assertIn("refused 1 connection(s) ([websocket] max_connections: 1), the last from 127.0.0.1",
                      self.lines[0])
        self.clock.advance(9.9)
        self.assertEqual(len(self.lines), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.lines), 2)
        self.assertIn("refused 29 connection(s) ([websocket] max_connections: 29)", self.lines[1])
        await self.refuse(5)
        self.clock.advance(10)
        self.assertEqual(len(self.lines), 3)
        self.assertIn("refused 5 connection(s)", self.lines[2])
        metrics = self.server.app.metrics.exposition().decode()
        self.assertIn('imd_connections_refused_total{status="503"} 35.0', metrics)
        self.assertEqual(len(held), 2)
        report("35 connections refused by max_connections = 2 (task.Clock)", log_lines=len(self.lines),
               counted_on_metrics=35)


class OpenHandshakeTimeoutTests(LimitsMixin, unittest.TestCase):
    # Autobahn's batched timer floors a deadline to a whole second: a
    # timeout of T seconds fires between T-1 and T seconds after connecting.
    overrides = {"websocket": {"open_handshake_timeout": "2", "max_connections": "2"}}

    async def test_a_client_that_stalls_in_the_handshake_is_closed_and_its_slot_freed(self):
        started = reactor.seconds()
        silent = await self.raw()
        partial = await self.raw(send=b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes
        await with_deadline(defer.gatherResults([silent.lost, partial.lost]), 5, "handshake timeout")
        took = reactor.seconds() - started
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 3.0)
        self.assertEqual(partial.data, b"")
        await wait_until(lambda: self.server._listening.factory.limits.total == 0, what="slots freed")
        await self.login(1)  # the node serves again
        report("open_handshake_timeout = 2 (silent and half-sent handshakes)", closed_after_s=round(took, 2),
               slots_freed=True)


class SlowConsumerTests(LimitsMixin, unittest.TestCase):
    # 64 KiB beyond the transport's own 64 KiB
    overrides = {"websocket": {"max_send_buffer": "65536", "rate": "100000", "burst": "100000"}}

    async def test_a_client_that_never_reads_is_dropped_and_nothing_acked_is_lost(self):
        await self.befriend(1, 2)
        alice, slow = await self.login(1), await self.login(2)
        slow.transport.pauseProducing()  # stops reading from its socket
        text = "x" * 1000
        count = 8000  # ~9 MB: more than the kernel buffers of both sides hold
        acked = 0
        window = 200
        for start in range(0, count, window):
            for n in range(start, min(count, start + window)):
                alice.send({"id": n, "to": 2, "type": "t", "msg": text})
            for _ in range(start, min(count, start + window)):
                reply = await alice.next()
                self.assertEqual(reply["type"], "A", reply)
                acked += 1
        self.assertEqual(acked, count)
        app = self.server.app
        await wait_until(lambda: not app.node.sessions_of(2), what="slow consumer dropped")
        self.assertIn("imd_slow_consumers_dropped_total 1.0", app.metrics.exposition().decode())
        # nothing acked is lost: all of it is stored for history
        self.assertEqual(await self.redis.llen("MQ"), count)
        slow.transport.resumeProducing()
        await slow.wait_closed()
        # alice was never held up by the slow one and is still served
        reply = await self.ask(alice, {"id": "p", "to": 0, "type": "P"})
        self.assertEqual(reply["type"], "P")
        stored = json.loads((await self.redis.lrange("MQ", 0, 0))[0])
        self.assertEqual(stored["id"], count - 1)
        report("slow consumer, max_send_buffer = 65536", acked=count, stored=await self.redis.llen("MQ"), lost=0,
               sent_bytes=count * 1060, dropped=1)


class HandshakeSizeTests(LimitsMixin, unittest.TestCase):
    """Issue 13 item 5: before authentication a client could make imd buffer
    an endless header line (48 connections: 302 MB of server RSS in 10 s)."""

    async def test_request_line_and_headers_over_8_kib_get_431_and_are_closed(self):
        # a complete request, and an endless header line sent in pieces
        status, headers, body = await answer_to(self.server.port, upgrade_request("/", [("X-Pad", "x" * 8300)]))
        self.assertEqual(status, 431)
        self.assertTrue(headers.get("content-type", "").startswith("application/json"), headers)
        self.assertIn("8192", json.loads(body)["error"])
        endless = await self.raw(send=b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")
        for _ in range(9):
            if endless.lost.called:
                break
            endless.transport.write(b"y" * 1024)
            await wait_until(lambda: True)  # a reactor turn for the server to read it
        await with_deadline(endless.lost, 3, "close after 431")
        self.assertTrue(endless.data.startswith(b"HTTP/1.1 431 "), endless.data[:80])
        # just under the cap is a normal login
        path = "/" + self.token(1)
        pad = 8192 - len(upgrade_request(path, [("X-Pad", "")]))
        status, _, _ = await answer_to(self.server.port, upgrade_request(path, [("X-Pad", "x" * pad)]), closes=False)
        self.assertEqual(status, 101)


class HandshakesPerAddressTests(LimitsMixin, unittest.TestCase):
    overrides = {"websocket": {"max_handshakes_per_address": "3"}}

    async def test_more_connections_still_handshaking_from_one_address_get_429(self):
        half = [await self.raw(send=b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(3)]
        await self.assert_refused_with(429)
        # another address is not affected
        elsewhere = await self.raw(source="127.0.0.2", send=upgrade_request("/" + self.token(4)))
        await wait_until(lambda: b"101 Switching Protocols" in elsewhere.data, what="upgrade from 127.0.0.2")
        # a connection past its handshake no longer counts: the slot comes back
        half[0].transport.write(b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await wait_until(lambda: b"101 Switching Protocols" in half[0].data, what="first handshake done")
        client = await self.login(5)
        self.assertEqual((await self.ask(client, {"id": 1, "to": 0, "type": "P"}))["type"], "P")
        half.append(await self.raw(send=b"GET /y HTTP/1.1\r\n"))  # 3 handshaking again
        await self.assert_refused_with(429)
        report("max_handshakes_per_address = 3", handshaking=3, refused_429=2, admitted_after_one_finished=1)


class SharedAddressTests(LimitsMixin, unittest.TestCase):
    """Issue 22 item 8: with the defaults, 8 idle sockets from one address
    (``max_handshakes_per_address = 8``) locked every other phone behind the
    same carrier NAT out of the ws port (victim 0 of 50 logins).  Per-address
    limits are opt-in now; the defaults must let the victim in."""

    overrides = None   # the defaults, as shipped

    async def test_idle_sockets_from_one_address_do_not_lock_out_others_behind_it(self):
        idle = [await self.raw() for _ in range(40)]
        half = [await self.raw(send=b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(10)]
        limits = self.server._listening.factory.limits
        await wait_until(lambda: limits.handshaking("127.0.0.1") == 50, what="50 connections handshaking")
        victims = [await self.login(uid) for uid in range(1, 6)]
        for uid, victim in enumerate(victims, 1):
            self.assertEqual((await self.ask(victim, {"id": uid, "to": 0, "type": "P"}))["type"], "P")
        self.assertFalse(any(c.lost.called for c in idle + half))
        metrics = self.server.app.metrics.exposition().decode()
        self.assertIn('imd_connections_refused_total{status="429"} 0.0', metrics)
        report("50 idle sockets from 127.0.0.1, default limits", victim_logins=len(victims), refused=0)


def client_frame(opcode, payload=b"", fin=True, rsv=0, masked=True):
    """One client frame, masked unless told not to (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = b"\x01\x02\x03\x04"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class ServerCloseTests(LimitsMixin, unittest.TestCase):
    """Issue 12 item 2: a close the server initiates on a client that can
    still read is a WebSocket close frame with its code, never a dropped TCP
    connection (which the client sees as 1006)."""

    overrides = {"websocket": {"max_message_bytes": "1024"}}

    async def close_code_after(self, uid, data):
        client = await self.login(uid)
        client.sendData(data)
        code, _ = await client.wait_closed()
        return code

    async def test_a_frame_over_max_message_bytes_gets_close_1009(self):
        client = await self.login(1)
        client.send_raw(b"x" * 1025)
        self.assertEqual((await client.wait_closed())[0], 1009)
        # a message of fragments over the limit together too
        self.assertEqual(await self.close_code_after(2, client_frame(1, b"x" * 600, fin=False)
                                                     + client_frame(0, b"x" * 600)), 1009)

    async def test_protocol_violations_get_a_close_frame_with_their_code(self):
        cases = [
            ("unmasked frame", client_frame(1, b"{}", masked=False), 1002),
            ("reserved bits", client_frame(1, b"{}", rsv=4), 1002),
            ("reserved opcode", client_frame(3, b"x"), 1002),
            ("fragmented ping", client_frame(9, b"p", fin=False), 1002),
            ("ping over 125 bytes", client_frame(9, b"p" * 126), 1002),
            ("continuation without a start", client_frame(0, b"x"), 1002),
            ("close code 999", client_frame(8, (999).to_bytes(2, "big")), 1002),
            ("text that is not UTF-8", client_frame(1, b"\xff\xfe"), 1007),
        ]
        for uid, (what, data, code) in enumerate(cases, 1):
            self.assertEqual(await self.close_code_after(uid, data), code, what)


async def raw_login(test, uid):
    """A raw TCP client past a successful upgrade (its L is in ``data``)."""
    client = await test.raw(send=upgrade_request("/" + test.token(uid)))
    await wait_until(lambda: b'"type":"L"' in client.data.replace(b" ", b""), what="L")
    return client


class PingFloodTests(LimitsMixin, unittest.TestCase):
    """Issue 13 item 1: Autobahn wrote the pong to every ping straight to
    the transport, outside the send-buffer guard, so a client that writes
    pings and never reads grew the server by ~12 MB/s without limit."""

    # a rate that answers every ping: the buffer is what must stop it
    overrides = {"websocket": {"max_send_buffer": "65536", "rate": "1000000", "burst": "1000000"}}

    async def test_a_client_writing_pings_and_never_reading_is_dropped(self):
        import socket
        client = await raw_login(self, 1)
        # stop reading, with a small receive window, so the pongs pile up in imd
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.transport.pauseProducing()
        ping = client_frame(9, b"p" * 125)
        sent = []

        def flood():
            if not client.lost.called and len(sent) < 400:   # at most 400 x 1000 pings (52 MB)
                client.transport.write(ping * 1000)
                sent.append(1000)
            return client.lost.called
        await wait_until(flood, seconds=30, what="drop of the flooding client")
        app = self.server.app
        self.assertFalse(app.node.sessions_of(1))
        self.assertIn("imd_slow_consumers_dropped_total 1.0", app.metrics.exposition().decode())
        report("ping flood, never reading, max_send_buffer = 65536", pings_sent=sum(sent), dropped=1)


class ControlFrameRateTests(LimitsMixin, unittest.TestCase):
    """Pings and pongs take from the connection's rate like packets: over
    it they are not answered, and max_errors of them in a row close the
    connection (an empty-pong flood from 4 connections had taken a
    bystander's round trip from 0.9 to 259 ms)."""

    overrides = {"websocket": {"rate": "0.001", "burst": "5", "max_errors": "3"}}

    async def test_control_frames_over_the_rate_are_not_answered_then_close_4008(self):
        client = await self.login(1)
        pongs = []
        client.onPong = pongs.append
        for n in range(8):   # 5 within the burst, then 3 over it
            client.sendPing(b"%d" % n)
        close = await client.next()
        self.assertEqual((close["type"], close["msg"]), ("C", "too many control frames"))
        self.assertEqual((await client.wait_closed())[0], 4008)
        self.assertEqual(pongs, [b"0", b"1", b"2", b"3", b"4"])

    async def test_unsolicited_pongs_count_too(self):
        client = await self.login(1)
        for _ in range(8):
            client.sendPong(b"")
        close = await client.next()
        self.assertEqual((close["type"], close["msg"]), ("C", "too many control frames"))
        self.assertEqual((await client.wait_closed())[0], 4008)


class FloodCloseTests(LimitsMixin, unittest.TestCase):
    """After C + 4008 imd reads no more of a flood: it does not wait out the
    closing handshake (5 s) parsing what the flooder keeps sending (an
    empty-pong flood from 4 connections took a bystander's round trip to
    379 ms that way)."""

    async def test_a_flooder_gets_its_close_frame_and_is_not_read_any_more(self):
        client = await raw_login(self, 1)
        started = reactor.seconds()
        client.transport.write(client_frame(10, b"") * 20000)   # more than burst + max_errors
        await with_deadline(client.lost, 3, "close of the flooder's connection")
        self.assertLess(reactor.seconds() - started, 3)
        self.assertIn(b"too many control frames", client.data)
        self.assertIn(b"\x88\x19\x0f\xa8too many control frames", client.data)   # close frame, 4008
        report("empty-pong flood of 20,000 frames", closed_after_s=round(reactor.seconds() - started, 2))


class AutoPingTests(LimitsMixin, unittest.TestCase):
    """Only the pong to imd's own ping proves a client alive: a client that
    never reads but keeps sending packets used to restart the auto-ping
    timeout with each of them, and lived for ever."""

    overrides = {"websocket": {"ping_interval": "1", "rate": "1000", "burst": "1000"}}

    async def test_a_client_that_sends_packets_but_never_reads_is_dropped(self):
        client = await raw_login(self, 1)
        client.transport.pauseProducing()
        packet = client_frame(1, b'{"id":1,"to":0,"type":"P"}')
        started = reactor.seconds()

        def keep_sending():
            if not client.lost.called:
                client.transport.write(packet)
            return client.lost.called
        # Autobahn's batched timers round to whole seconds: ping after 1-2 s, dropped 1-2 s later
        await wait_until(keep_sending, seconds=8, what="drop of a client that never answers imd's ping")
        self.assertLess(reactor.seconds() - started, 5)


def server_frames(data):
    """``(opcode, payload)`` of each whole frame the server sent after its
    ``101`` answer, in the order they came."""
    _, _, data = data.partition(b"\r\n\r\n")
    frames = []
    while len(data) >= 2:
        n, at = data[1] & 0x7F, 2
        if n == 126:
            n, at = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, at = int.from_bytes(data[2:10], "big"), 10
        if len(data) < at + n:
            break
        frames.append((data[0] & 0x0F, data[at:at + n]))
        data = data[at + n:]
    return frames


def seen(client):
    """What a client saw, in order: ``"L"``, ``"C"``, ``(type, id)`` of
    every other packet, ``("close", code)`` of a close frame."""
    items = []
    for opcode, payload in server_frames(client.data):
        if opcode == 8:
            items.append(("close", int.from_bytes(payload[:2], "big")))
        elif opcode == 1:
            packet = json.loads(payload)
            items.append(packet["type"] if packet["type"] in "LC" else (packet["type"], packet["id"]))
        else:
            items.append(("opcode", opcode))
    return items


def packets(*packets):
    """Client frames of ``packets``, for one write."""
    return b"".join(client_frame(1, json.dumps(packet).encode()) for packet in packets)


class EchoingClient(RawClient):
    """A raw TCP client that answers the server's close frame with its own,
    as a WebSocket client does, and keeps every byte it got."""

    echoed = False

    def dataReceived(self, data):
        super().dataReceived(data)
        closes = [payload for opcode, payload in server_frames(self.data) if opcode == 8]
        if closes and not self.echoed:
            self.echoed = True
            self.transport.write(client_frame(8, closes[0][:2]))


@implementer(IHalfCloseableProtocol)
class StillSendingClient(RawClient):
    """A raw TCP client that goes on sending after the server's FIN (a
    burst written in pieces, a close reply) and keeps reading."""

    fin = False
    reason = None

    def readConnectionLost(self):
        self.fin = True

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reason = reason
        super().connectionLost(reason)


class CloseOrderMixin(LimitsMixin):

    async def login_raw(self, uid, now=None):
        client = await self.raw(send=upgrade_request("/" + self.token(uid, now=now)), client=EchoingClient())
        await wait_until(lambda: seen(client)[:1] == ["L"], what="L")
        return client

    def gate(self, kind):
        """Replies to ``kind`` packets wait until ``release()``; the packets
        themselves are taken (handled) as they come."""
        handlers = self.server.app.handlers
        original = handlers[kind]
        waiting = []

        def gated(uid, packet):
            d = defer.Deferred()
            d.addCallback(lambda _: original(uid, packet))
            waiting.append(d)
            return d

        def release():
            for d in waiting:
                d.callback(None)
        handlers[kind] = gated
        self.addCleanup(handlers.__setitem__, kind, original)
        return release

    def line_of(self, uid):
        """How many replies uid's connection holds back in its reply line."""
        sessions = self.server.app.node.sessions_of(uid)
        return sessions[0].replies_waiting if sessions else 0

    async def closed(self, client):
        await with_deadline(client.lost, what="the connection to end")
        return seen(client)


class CloseOrderTests(CloseOrderMixin, unittest.TestCase):
    """Issue 22 item 1: on every close path, every reply and the ``C`` reach
    the client before the close frame, and nothing after it.  A close decided
    while replies were still in the reply line (a kick, a newer device, the
    error limit) wrote ``C`` and the close frame at once and dropped them:
    a ``t`` already stored and delivered never got its ``A``."""

    async def test_bursts_past_max_errors_get_every_E_then_C_then_4008(self):
        # max_errors + 2 unknown-type packets in one write, on 50 connections at once
        clients = [await self.login_raw(uid) for uid in range(1, 51)]
        burst = packets(*({"id": n, "to": 0, "type": "X"} for n in range(22)))
        for client in clients:
            client.transport.write(burst)
        expected = ["L"] + [("E", n) for n in range(20)] + ["C", ("close", 4008)]
        for uid, client in enumerate(clients, 1):
            self.assertEqual(await self.closed(client), expected, "connection of uid %d" % uid)
        report("50 connections, 22 unknown-type packets each in one write", all_e_then_c_then_4008=50)

    async def test_after_4008_what_the_client_still_sends_does_not_reset_the_connection(self):
        # The server closed its socket once the close frame was written; what
        # the client still sent (the rest of its burst, its close reply) met
        # a closed socket and got a reset, on which a client may drop what it
        # has not read yet (a burst's client saw EPIPE before reading its Es).
        client = await self.raw(send=upgrade_request("/" + self.token(1)), client=StillSendingClient())
        await wait_until(lambda: seen(client)[:1] == ["L"], what="L")
        session = self.server.app.node.sessions_of(1)[0]
        connection = session.wire   # the Autobahn adapter beneath it, which lingers
        client.transport.write(packets(*({"id": n, "to": 0, "type": "X"} for n in range(20))))
        await wait_until(lambda: client.fin or client.lost.called, what="the close frame and the server's FIN")
        self.assertEqual(seen(client), ["L"] + [("E", n) for n in range(20)] + ["C", ("close", 4008)])
        client.transport.write(packets(*({"id": n, "to": 0, "type": "X"} for n in range(20, 22)))
                               + client_frame(8, (4008).to_bytes(2, "big")))
        await wait_until(lambda: client.lost.called or (connection._linger_left or LINGER_BYTES) < LINGER_BYTES,
                         what="the server to read (not reset) what came after its close")
        self.assertFalse(client.lost.called, "reset by the server: %s" % client.reason)
        client.transport.loseConnection()
        await with_deadline(client.lost, what="the end of the connection")
        self.assertTrue(client.reason.check(ConnectionDone), client.reason)
        await wait_until(lambda: session.closed, what="the server's side to end")

    async def test_4008_waits_for_the_replies_in_the_line(self):
        await self.befriend(1, 2)
        release = self.gate("O")
        alice, bob = await self.login_raw(1), await self.login_raw(2)
        alice.transport.write(packets({"id": "o", "to": 0, "type": "O", "msg": 2},
                                      *({"id": n, "to": 0, "type": "X"} for n in range(20)),
                                      {"id": "t", "to": 2, "type": "t", "msg": "taken before the close"}))
        await wait_until(lambda: ("t", "t") in [(k[0], k[1]) for k in seen(bob) if isinstance(k, tuple)],
                         what="the t stored and delivered")
        release()
        self.assertEqual(await self.closed(alice),
                         ["L", ("O", "o")] + [("E", n) for n in range(20)] + [("A", "t"), "C", ("close", 4008)])

    async def test_kick_waits_for_the_replies_in_the_line(self):
        release = self.gate("O")
        alice = await self.login_raw(1)
        alice.transport.write(packets({"id": "o", "to": 0, "type": "O", "msg": 2}, {"id": "p1", "to": 0, "type": "P"},
                                      {"id": "p2", "to": 0, "type": "P"}))
        await wait_until(lambda: self.line_of(1) == 3, what="3 replies in the line")
        self.server.app.node.kick_local(1, "kicked")
        self.assertEqual(seen(alice), ["L"])
        release()
        self.assertEqual(await self.closed(alice), ["L", ("E", "o"), ("P", "p1"), ("P", "p2"), "C", ("close", 4003)])

    async def test_shutdown_waits_for_the_replies_in_the_line(self):
        release = self.gate("P")
        alice = await self.login_raw(1)
        alice.transport.write(packets({"id": "p1", "to": 0, "type": "P"}, {"id": "p2", "to": 0, "type": "P"}))
        await wait_until(lambda: self.line_of(1) == 2, what="2 replies in the line")
        drained = self.server.app.node.drain()
        release()
        self.assertEqual(await self.closed(alice), ["L", ("P", "p1"), ("P", "p2"), "C", ("close", 1001)])
        await drained

    async def test_refused_login_is_C_then_4001_and_nothing_else(self):
        client = await self.raw(send=upgrade_request("/" + self.token(1, exp=1)), client=EchoingClient())
        self.assertEqual(await self.closed(client), ["C", ("close", 4001)])


class ReplacedCloseOrderTests(CloseOrderMixin, unittest.TestCase):
    overrides = {"websocket": {"max_devices": "1"}}

    async def test_a_newer_device_waits_for_the_replies_in_the_line(self):
        release = self.gate("P")
        phone = await self.login_raw(1)
        phone.transport.write(packets({"id": "p1", "to": 0, "type": "P"}, {"id": "p2", "to": 0, "type": "P"}))
        await wait_until(lambda: self.line_of(1) == 2, what="2 replies in the line")
        await self.login_raw(1)   # the newer device
        self.assertEqual(seen(phone), ["L"])
        release()
        self.assertEqual(await self.closed(phone), ["L", ("P", "p1"), ("P", "p2"), "C", ("close", 4002)])


class IdleCloseOrderTests(CloseOrderMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        self._clients = []
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.server = ImdServer(make_settings({"websocket": {"idle_timeout": "90"}}), clock=self.clock)
        yield self.server.start()
        self.addCleanup(self.server.stop)

    async def test_idle_close_waits_for_the_replies_in_the_line(self):
        release = self.gate("P")
        alice = await self.login_raw(1, now=self.clock.seconds())
        alice.transport.write(packets({"id": "p1", "to": 0, "type": "P"}))
        await wait_until(lambda: self.line_of(1) == 1, what="a reply in the line")
        self.clock.advance(90)
        self.assertEqual(seen(alice), ["L"])
        release()
        self.assertEqual(await self.closed(alice), ["L", ("P", "p1"), "C", ("close", 4004)])

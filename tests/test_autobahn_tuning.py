"""imd's shortcuts past Autobahn's generic paths give byte for byte what
Autobahn itself gives (pure logic: no server).  The whole suite also runs on
stock Autobahn with ``IMD_PLAIN_AUTOBAHN=1`` (``make test`` does both)."""

import os
import platform
import pprint
import random
import struct

import txaio

try:
    from autobahn.nvx._xormasker import create_xor_masker as compiled_masker
except ImportError:  # PyPy: Autobahn's masker is its pure-Python one there
    from autobahn.websocket.xormasker import create_xor_masker as compiled_masker
import autobahn.websocket.protocol as autobahn_protocol
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from imd.transport import autobahn_tuning
from imd.transport.autobahn_tuning import SMALL_FRAME, IntXorMasker, create_xor_masker, text_frame
from imd.transport.websocket import ImdServerProtocol


class MaskingTests(unittest.TestCase):

    def test_same_bytes_as_the_compiled_masker_in_any_pieces(self):
        rng = random.Random(7)
        for length in list(range(0, 40)) + [125, 126, 1000, 1535]:
            mask, data = os.urandom(4), os.urandom(length)
            expected = compiled_masker(mask, length).process(data)
            masker = IntXorMasker(mask)
            pieces, at = [], 0
            while at < length:
                step = rng.randint(1, max(1, length // 3))
                pieces.append(masker.process(data[at:at + step]))
                at += step
                self.assertEqual(masker.pointer(), min(at, length))
            self.assertEqual(b"".join(pieces), expected, "length %d" % length)

    def test_reset_starts_the_mask_again(self):
        masker = IntXorMasker(b"\x01\x02\x03\x04")
        first = masker.process(b"abcdef")
        masker.reset()
        self.assertEqual(masker.pointer(), 0)
        self.assertEqual(masker.process(b"abcdef"), first)

    def test_small_frames_use_the_integer_masker_large_ones_the_compiled(self):
        self.patch(autobahn_tuning, "SMALL_FRAME", 1536)   # CPython's
        self.assertIsInstance(create_xor_masker(b"abcd", 100), IntXorMasker)
        self.assertNotIsInstance(create_xor_masker(b"abcd", 1536), IntXorMasker)

    def test_small_frame_threshold_per_interpreter(self):
        # on PyPy Autobahn's own masker is the faster at every size
        self.assertEqual(SMALL_FRAME, 0 if platform.python_implementation() == "PyPy" else 1536)
        if SMALL_FRAME == 0:
            self.assertNotIsInstance(create_xor_masker(b"abcd", 1), IntXorMasker)

    def test_autobahn_itself_is_left_as_it_comes(self):
        # installed per protocol class by the factory, never patched into Autobahn
        from autobahn.websocket.xormasker import create_xor_masker as stock
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "IMD_PLAIN_AUTOBAHN"})
        self.assertIsNot(autobahn_tuning.tuned(WebSocketServerFactory(), _Recording), _Recording)
        self.assertIs(autobahn_protocol.create_xor_masker, stock)
        self.assertIs(autobahn_protocol.pformat, pprint.pformat)
        self.assertEqual(autobahn_protocol.Timings.__str__.__module__, "autobahn.websocket.protocol")
        timings = autobahn_protocol.Timings()
        timings.track("onOpen")
        self.assertEqual(str(timings), pprint.pformat(timings._timings))


def client_frame(opcode, payload, fin=True, mask=None):
    """A masked client frame (RFC 6455 §5.2)."""
    mask = mask or os.urandom(4)
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n <= 0xFFFF:
        head += bytes((0x80 | 126,)) + struct.pack("!H", n)
    else:
        head += bytes((0x80 | 127,)) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class _Recording(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.factory.seen.append(("message", payload, isBinary))

    def onPing(self, payload):
        self.factory.seen.append(("ping", payload))
        super().onPing(payload)

    def write_frame(self, frame):
        self.transport.write(frame)


def _open_protocol(protocol_class_of):
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0)
    factory.seen = []
    factory.protocol = protocol_class_of(factory)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.transport.clear()
    protocol.state = protocol.STATE_OPEN
    protocol._perMessageCompress = None
    protocol.websocket_version = 13
    protocol.inside_message = False     # what a completed opening handshake sets
    protocol.current_frame = None
    return factory, protocol


class TunedProtocolTests(unittest.TestCase):
    """The tuned protocol (own unmasking, its onMessageEnd) against stock
    Autobahn, fed the same client bytes in the same pieces."""

    def run_both(self, data, pieces):
        results = []
        for make in (lambda f: _Recording, lambda f: autobahn_tuning.tuned(f, _Recording)):
            factory, protocol = _open_protocol(make)
            at = 0
            for size in pieces:
                protocol.dataReceived(data[at:at + size])
                at += size
            protocol.dataReceived(data[at:])
            results.append((factory.seen, protocol.transport.value()))
        return results

    def test_same_messages_and_answers_as_stock_autobahn(self):
        # debug logging off, as imd runs: the tuned dataReceived's own path
        self.assertIs(_Recording.log.debug, autobahn_tuning._LOG_OFF)
        for small_frame in (0, 1536):   # PyPy's threshold, CPython's
            self.patch(autobahn_tuning, "SMALL_FRAME", small_frame)
            self.same_messages_and_answers()

    def test_same_with_debug_logging_on(self):
        # the tuned dataReceived leaves debug logging to Autobahn's own
        self.patch(_Recording, "log", txaio.make_logger())
        _Recording.log.set_log_level("debug")
        self.assertIsNot(_Recording.log.debug, autobahn_tuning._LOG_OFF)
        self.same_messages_and_answers()

    def same_messages_and_answers(self):
        rng = random.Random(11)
        data = b"".join([
            client_frame(1, b'{"id":1,"type":"P","msg":0}'),
            client_frame(2, os.urandom(300)),
            client_frame(1, "é".encode() * 900),                   # over SMALL_FRAME: compiled masker
            client_frame(1, b"frag", fin=False), client_frame(0, b"mented ", fin=False),
            client_frame(9, b"ping in between"),                  # a control frame inside a message
            client_frame(0, b"text"),
            client_frame(9, b""), client_frame(1, b""),
        ])
        for _ in range(20):
            pieces = [rng.randint(1, 40) for _ in range(rng.randint(0, 60))]
            stock, tuned = self.run_both(data, pieces)
            self.assertEqual(tuned, stock)
        self.assertEqual([kind for kind, *_ in stock[0]], ["message"] * 3 + ["ping", "message", "ping", "message"])

    def test_tuned_class_is_stock_when_switched_off(self):
        self.patch(os, "environ", dict(os.environ, IMD_PLAIN_AUTOBAHN="1"))
        factory = WebSocketServerFactory()
        self.assertIs(autobahn_tuning.tuned(factory, _Recording), _Recording)


class OptionsTests(unittest.TestCase):
    """Autobahn copies its options into each new connection and formats
    them for a debug line, logged or not; the tuned class has them as class
    attributes and, while debug logging is off, formats nothing.  Per
    class: stock Autobahn in the same process formats as it always did."""

    def setUp(self):
        # (the tuned class, even where the suite runs with IMD_PLAIN_AUTOBAHN=1)
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "IMD_PLAIN_AUTOBAHN"})
        self.factory = WebSocketServerFactory()
        self.factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0, maxMessagePayloadSize=1024)
        self.formatted = []

        def recording(value):
            self.formatted.append(value)
            return pprint.pformat(value)
        self.patch(autobahn_protocol, "pformat", recording)

    def connection(self, protocol_class):
        """A connection of ``protocol_class`` and the lists Autobahn formatted for it."""
        del self.formatted[:]
        self.factory.protocol = protocol_class
        protocol = self.factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return protocol, list(self.formatted)

    def options(self, protocol):
        return {name: getattr(protocol, name) for name in WebSocketServerProtocol.CONFIG_ATTRS}

    def test_same_options_as_stock_and_nothing_formatted(self):
        self.assertIs(_Recording.log.debug, autobahn_tuning._LOG_OFF)
        stock, stock_formatted = self.connection(_Recording)
        tuned, tuned_formatted = self.connection(autobahn_tuning.tuned(self.factory, _Recording))
        expected = dict(self.options(stock), applyMask=False)   # the tuning unmasks frames itself
        self.assertEqual(self.options(tuned), expected)
        self.assertEqual([len(value) for value in stock_formatted], [len(WebSocketServerProtocol.CONFIG_ATTRS)])
        self.assertEqual(tuned_formatted, [[]])
        self.assertNotIn("maxMessagePayloadSize", tuned.__dict__)   # read from its class
        self.assertEqual(list(type(tuned).CONFIG_ATTRS), list(WebSocketServerProtocol.CONFIG_ATTRS))

    def test_with_debug_logging_on_every_option_is_formatted_as_by_stock(self):
        self.patch(_Recording, "log", txaio.make_logger())
        _Recording.log.set_log_level("debug")
        _, stock_formatted = self.connection(_Recording)
        _, tuned_formatted = self.connection(autobahn_tuning.tuned(self.factory, _Recording))
        self.assertEqual([(name, value) for name, value, _ in tuned_formatted[0]],
                         [(name, False if name == "applyMask" else value) for name, value, _ in stock_formatted[0]])


class TextFrameTests(unittest.TestCase):

    def autobahn_frame(self, payload):
        factory = WebSocketServerFactory()
        factory.setProtocolOptions(openHandshakeTimeout=0)   # no timer left behind
        factory.protocol = WebSocketServerProtocol
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.transport.clear()
        protocol.state = protocol.STATE_OPEN
        protocol._perMessageCompress = None
        protocol.sendMessage(payload)
        return protocol.transport.value()

    def test_same_bytes_as_autobahn_sendmessage_at_each_length_form(self):
        for length in (0, 1, 125, 126, 127, 65535, 65536, 70000):
            payload = b"x" * length
            self.assertEqual(text_frame(payload), self.autobahn_frame(payload), "length %d" % length)

    def test_options_that_change_frames_turn_the_shortcut_off(self):
        factory = WebSocketServerFactory()
        self.assertTrue(autobahn_tuning.protocol_with_options(factory, WebSocketServerProtocol)._plain_frames)
        factory.setProtocolOptions(autoFragmentSize=1000)
        self.assertFalse(autobahn_tuning.protocol_with_options(factory, WebSocketServerProtocol)._plain_frames)


class _Sender(_Recording):
    write_text = ImdServerProtocol.write_text


class ServerSendTests(unittest.TestCase):
    """Issue 22 item 2: ``[websocket] max_message_bytes`` (Autobahn's
    maxMessagePayloadSize) limits what clients send; Autobahn's sendMessage
    applied it to what the server sends too and raised.  Both send paths
    write every size, the same bytes."""

    def sent(self, make, payload, **options):
        factory = WebSocketServerFactory()
        factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0, maxMessagePayloadSize=1024,
                                   **options)
        factory.seen = []
        factory.protocol = make(factory)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.transport.clear()
        protocol.state = protocol.STATE_OPEN
        protocol._perMessageCompress = None
        protocol.write_text(payload)
        return protocol.transport.value()

    def test_over_max_message_bytes_both_ways(self):
        for length in (10, 1024, 1025, 65535, 65536, 70000, 1024 * 1024):
            payload = b"x" * length
            plain = self.sent(lambda f: _Sender, payload)
            tuned = self.sent(lambda f: autobahn_tuning.tuned(f, _Sender), payload)
            self.assertEqual(plain, text_frame(payload), "length %d" % length)
            self.assertEqual(tuned, plain, "length %d" % length)

    def test_the_tuned_path_hands_what_it_does_not_write_itself_to_the_plain_one(self):
        payload = b"y" * 5000
        frames = self.sent(lambda f: autobahn_tuning.tuned(f, _Sender), payload, autoFragmentSize=1000)
        self.assertEqual(frames, text_frame(payload))   # a prepared message: never fragmented


_REQUEST = (b"GET /a-token-as-long-as-the-path-of-a-login?x=1 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Origin: http://localhost\r\n\r\n")


class _Transport(StringTransport):
    def unregisterProducer(self):
        self.producer = None   # (Autobahn unregisters on close whether it registered or not)


class _Opened(_Recording):
    def onOpen(self):
        self.factory.seen.append(("open",))

    def onClose(self, wasClean, code, reason):
        self.factory.seen.append(("close", wasClean, code, reason))


class OpenConnectionMemoryTests(unittest.TestCase):
    """Issue 29: what an open connection keeps.  The tuned class lets go of
    the opening handshake's request and answer, reads the attributes that
    still have their first value from the class, and has no send queue or
    event results until they are used -- and answers every byte as stock
    Autobahn does, through a real opening handshake and after it."""

    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "IMD_PLAIN_AUTOBAHN"})

    def opened(self, protocol_class_of, **options):
        factory = WebSocketServerFactory()
        factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0, **options)
        factory.seen = []
        factory.protocol = protocol_class_of(factory)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(_Transport())
        protocol.dataReceived(_REQUEST)
        self.addCleanup(lambda: protocol.connectionLost(Failure(ConnectionDone())) if protocol.state else None)
        return factory, protocol

    def both(self, **options):
        stock = self.opened(lambda f: _Opened, **options)
        tuned = self.opened(lambda f: autobahn_tuning.tuned(f, _Opened), **options)
        return stock, tuned

    def test_same_answer_and_state_after_the_opening_handshake(self):
        (_, stock), (_, tuned) = self.both()
        self.assertEqual(tuned.transport.value(), stock.transport.value())
        self.assertTrue(tuned.transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertEqual(tuned.state, tuned.STATE_OPEN)
        # (the options are OptionsTests'; these objects are each connection's own)
        own = {"factory", "transport", "is_open", "is_closed", "trafficStats", "utf8validator", "_transport_details"}
        names = (set(stock.__dict__) - set(autobahn_tuning.HANDSHAKE_STATE) - set(WebSocketServerProtocol.CONFIG_ATTRS)
                 - own - {"send_queue", "_results", "utf8validator"})
        self.assertEqual({name: getattr(tuned, name) if name not in autobahn_tuning.HANDSHAKE_LISTS
                          else list(getattr(tuned, name)) for name in names},
                         {name: getattr(stock, name) for name in names})
                # the handshake's record is gone, read as None
        self.assertEqual(stock.http_request_path, "/a-token-as-long-as-the-path-of-a-login")
        for name in autobahn_tuning.HANDSHAKE_STATE:
            self.assertNotIn(name, tuned.__dict__)
            self.assertIsNone(getattr(tuned, name))
        # what still has its first value is the class's
        for name, value in autobahn_tuning.OPEN_DEFAULTS:
            self.assertNotIn(name, tuned.__dict__)
            self.assertEqual(getattr(stock, name), value, name)
        self.assertNotIn("send_queue", tuned.__dict__)
        self.assertNotIn("_results", tuned.__dict__)
        self.assertNotIn("utf8validator", tuned.__dict__)
        self.assertLess(len(tuned.__dict__), len(stock.__dict__) / 2)

    def test_same_bytes_both_ways_after_it_then_the_same_close(self):
        (sf, stock), (tf, tuned) = self.both()
        for protocol in (stock, tuned):
            protocol.transport.clear()
            protocol.dataReceived(client_frame(1, b'{"id":1,"type":"P","msg":0}') + client_frame(9, b"p"))
            protocol.sendMessage(b'{"type":"A"}')
            protocol.sendMessage(b"x" * 300, sync=True)     # Autobahn queues these: the queue is made
            protocol.sendMessage(b"y" * 300, fragmentSize=100)
            protocol.dataReceived(client_frame(8, struct.pack("!H", 1000) + b"bye"))
        self.assertEqual(tuned.transport.value(), stock.transport.value())
        self.assertEqual(tf.seen, sf.seen)
        self.assertEqual([kind for kind, *_ in sf.seen], ["open", "message", "ping"])
        self.assertEqual((tuned.state, tuned.wasClean, tuned.remoteCloseCode, tuned.closedByMe),
                         (stock.state, stock.wasClean, stock.remoteCloseCode, stock.closedByMe))
        tuned.connectionLost(Failure(ConnectionDone()))
        stock.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(tf.seen, sf.seen)
        self.assertEqual(tf.seen[-1], ("close", True, 1000, "bye"))

    def test_text_that_is_not_utf8_is_refused_alike(self):
        (sf, stock), (tf, tuned) = self.both()
        for protocol in (stock, tuned):
            protocol.transport.clear()
            protocol.dataReceived(client_frame(1, "né".encode()))
            protocol.dataReceived(client_frame(1, b"ok \xff\xfe"))
        self.assertEqual(tuned.transport.value(), stock.transport.value())
        self.assertEqual(tf.seen, sf.seen)
        self.assertEqual(tf.seen[-1], ("message", "né".encode(), False))
        self.assertTrue(stock.failedByMe)
        self.assertEqual((tuned.state, tuned.failedByMe, tuned.wasClean, tuned.wasNotCleanReason),
                         (stock.state, stock.failedByMe, stock.wasClean, stock.wasNotCleanReason))

    def test_a_message_listener_still_gets_its_event(self):
        (sf, stock), (tf, tuned) = self.both()
        for protocol in (stock, tuned):
            protocol.on("message", lambda payload, is_binary, seen=protocol.factory.seen: seen.append(
                ("event", payload, is_binary)))
            protocol.dataReceived(client_frame(1, b"hello"))
        self.assertEqual(tf.seen, sf.seen)
        self.assertIn(("event", b"hello", False), tf.seen)
        self.assertEqual(list(tuned._results), ["message"])

    def test_with_the_plain_switch_nothing_is_released(self):
        self.patch(os, "environ", dict(os.environ, IMD_PLAIN_AUTOBAHN="1"))
        _, protocol = self.opened(lambda f: autobahn_tuning.tuned(f, _Opened))
        self.assertIs(type(protocol), _Opened)
        self.assertEqual(protocol.http_request_path, "/a-token-as-long-as-the-path-of-a-login")


class CompactBatchedTimerTests(unittest.TestCase):
    """The factory's batched timer (Autobahn's auto-ping and handshake
    timeouts) calls the same functions at the same times as txaio's."""

    def run_timer(self, make):
        from twisted.internet.task import Clock
        clock = Clock()
        timer = make(clock)
        fired = []
        calls = {}
        for i, delay in enumerate((5, 0.2, 5.4, 30, 30, 7, 0, 12.9, 30)):
            calls[i] = timer.call_later(delay, lambda i=i: fired.append((i, clock.seconds())))
        calls[3].cancel()
        calls[6].cancel()
        timer.call_later(2, fired.append, ("args", 1))
        for _ in range(80):
            clock.advance(0.5)
        return fired, clock.getDelayedCalls()

    def test_same_calls_at_the_same_times_as_txaio(self):
        def txaio_timer(clock):
            return autobahn_tuning._txaio_common._BatchedTimer(1000.0, 2, clock.seconds, clock.callLater)
        stock = self.run_timer(txaio_timer)
        compact = self.run_timer(lambda clock: autobahn_tuning.compact_batched_timer(txaio_timer(clock)))
        self.assertEqual(compact, stock)
        self.assertEqual(len(stock[0]), 8)

    def test_the_factory_gets_one(self):
        factory = WebSocketServerFactory()
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "IMD_PLAIN_AUTOBAHN"})
        autobahn_tuning.tuned(factory, _Recording)
        self.assertIsInstance(factory._batched_timer, autobahn_tuning.CompactBatchedTimer)
        call = factory._batched_timer.call_later(1, int)
        self.assertIsInstance(call, autobahn_tuning._Call)
        call.cancel()

"""imd's shortcuts past Autobahn's generic paths give byte for byte what
Autobahn itself gives (pure logic: no server)."""

import os
import random

try:
    from autobahn.nvx._xormasker import create_xor_masker as compiled_masker
except ImportError:  # PyPy: Autobahn's masker is its pure-Python one there
    from autobahn.websocket.xormasker import create_xor_masker as compiled_masker
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from imd.transport import autobahn_tuning
from imd.transport.autobahn_tuning import SMALL_FRAME, IntXorMasker, create_xor_masker, text_frame


class MaskingTests(unittest.TestCase):

    def test_same_bytes_as_the_compiled_masker_in_any_pieces(self):
        rng = random.Random(7)
        for length in list(range(0, 40)) + [125, 126, 1000, SMALL_FRAME - 1]:
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
        self.assertIsInstance(create_xor_masker(b"abcd", 100), IntXorMasker)
        self.assertNotIsInstance(create_xor_masker(b"abcd", SMALL_FRAME), IntXorMasker)
        self.assertNotIsInstance(create_xor_masker(b"abcd", None), IntXorMasker)

    def test_autobahn_unmasks_with_it_once_installed(self):
        import autobahn.websocket.protocol as autobahn_protocol
        autobahn_tuning.fast_small_frame_masking()
        self.assertIs(autobahn_protocol.create_xor_masker, create_xor_masker)


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

"""The message path's encoder writes exactly the bytes the stdlib one did,
through orjson (CPython) and through its json fallback (PyPy, or switched off)."""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from imd import jsonfast, protocol

ids = st.one_of(st.text(min_size=1, max_size=64), st.integers(min_value=-10 ** 63, max_value=10 ** 63))
texts = st.text(min_size=1, max_size=1023)


def message_and_ack_bytes_unchanged():
    """The property as a new test function for each class (hypothesis wants
    one function per way of running it)."""
    @given(ids, texts, st.integers(min_value=1, max_value=2 ** 63 - 1), st.integers(min_value=0, max_value=2 ** 53))
    def test(self, packet_id, text, uid, ts):
        packet = protocol.MessagePacket(packet_id, "t", uid, text)
        expected = protocol._dump({"id": packet_id, "from": uid, "to": uid, "type": "t", "msg": text, "ts": ts})
        self.assertEqual(protocol.message_json(packet, uid, ts), expected)
        self.assertEqual(protocol.ack(packet_id),
                         protocol._dump({"id": packet_id, "from": 0, "type": "A", "msg": "success"}))
    return test


class FastDumpMixin:
    use_orjson = None

    def setUp(self):
        self.patch(jsonfast, "orjson", jsonfast.orjson)   # restored after the test
        jsonfast.use_orjson(self.use_orjson)

    def test_integer_id_past_64_bits(self):
        packet_id = 10 ** 40
        packet = protocol.parse_frame(b'{"id": %d, "to": 2, "type": "t", "msg": "hi"}' % packet_id)
        self.assertEqual(protocol.message_json(packet, 1, 5),
                         b'{"id":%d,"from":1,"to":2,"type":"t","msg":"hi","ts":5}' % packet_id)
        self.assertEqual(protocol.ack(packet_id), b'{"id":%d,"from":0,"type":"A","msg":"success"}' % packet_id)


class OrjsonDumpTests(FastDumpMixin, unittest.SynchronousTestCase):
    use_orjson = True
    test_message_and_ack_bytes_unchanged = message_and_ack_bytes_unchanged()
    if not jsonfast.available():
        skip = "orjson is not installed (CPython only): the json fallback is tested below"


class JsonFallbackDumpTests(FastDumpMixin, unittest.SynchronousTestCase):
    use_orjson = False
    test_message_and_ack_bytes_unchanged = message_and_ack_bytes_unchanged()

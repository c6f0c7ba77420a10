"""The message path's encoder writes exactly the bytes the stdlib one did,
through orjson (CPython), through jsonfast.dumps_flat (without orjson: PyPy)
and through the json module alone."""

from hypothesis import given, settings, strategies as st
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
    use_flat = True

    def setUp(self):
        self.patch(jsonfast, "orjson", jsonfast.orjson)   # restored after the test
        self.patch(jsonfast, "flat_dumps", jsonfast.flat_dumps)
        jsonfast.use_orjson(self.use_orjson)
        jsonfast.use_flat_dumps(self.use_flat)

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


class FlatDumpTests(FastDumpMixin, unittest.SynchronousTestCase):
    use_orjson = False
    test_message_and_ack_bytes_unchanged = message_and_ack_bytes_unchanged()

    values = st.one_of(st.text(max_size=80), st.integers(min_value=-10 ** 80, max_value=10 ** 80))
    flat_dicts = st.dictionaries(st.text(max_size=10), values, max_size=8)

    @settings(max_examples=500, deadline=None)
    @given(flat_dicts)
    def test_same_bytes_as_the_json_module(self, obj):
        try:
            expected = protocol._dump(obj)
        except UnicodeEncodeError:   # a lone surrogate: neither can write it
            self.assertRaises(UnicodeEncodeError, jsonfast.dumps_flat, obj)
            return
        self.assertEqual(jsonfast.dumps_flat(obj), expected)

    def test_what_it_leaves_to_the_json_module(self):
        for obj in ({"a": True}, {"a": None}, {"a": 1.5}, {"a": {"b": 1}}, {"a": [1]}, {1: "a"}, [1], "a", 7):
            self.assertRaises(TypeError, jsonfast.dumps_flat, obj)
            self.assertEqual(protocol._dump_fast(obj), protocol._dump(obj), obj)
        self.assertEqual(protocol.receipt("r", 2, 1, 1, ["a", 7], 5),
                         protocol._dump({"id": "r", "from": 2, "to": 1, "type": "R",
                                         "msg": {"state": "delivered", "ids": ["a", 7], "ts": 5}}))


class JsonFallbackDumpTests(FastDumpMixin, unittest.SynchronousTestCase):
    use_orjson = False
    use_flat = False
    test_message_and_ack_bytes_unchanged = message_and_ack_bytes_unchanged()

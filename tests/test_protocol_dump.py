"""The message path's orjson encoder writes exactly the bytes the stdlib one did."""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from imd import protocol

ids = st.one_of(st.text(min_size=1, max_size=64), st.integers(min_value=-10 ** 63, max_value=10 ** 63))
texts = st.text(min_size=1, max_size=1023)


class FastDumpTests(unittest.SynchronousTestCase):

    @given(ids, texts, st.integers(min_value=1, max_value=2 ** 63 - 1), st.integers(min_value=0, max_value=2 ** 53))
    def test_message_and_ack_bytes_unchanged(self, packet_id, text, uid, ts):
        packet = protocol.MessagePacket(packet_id, "t", uid, text)
        expected = protocol._dump({"id": packet_id, "from": uid, "to": uid, "type": "t", "msg": text, "ts": ts})
        self.assertEqual(protocol.message_json(packet, uid, ts), expected)
        self.assertEqual(protocol.ack(packet_id),
                         protocol._dump({"id": packet_id, "from": 0, "type": "A", "msg": "success"}))

    def test_integer_id_past_64_bits(self):
        packet_id = 10 ** 40
        packet = protocol.parse_frame(b'{"id": %d, "to": 2, "type": "t", "msg": "hi"}' % packet_id)
        self.assertEqual(protocol.message_json(packet, 1, 5),
                         b'{"id":%d,"from":1,"to":2,"type":"t","msg":"hi","ts":5}' % packet_id)
        self.assertEqual(protocol.ack(packet_id), b'{"id":%d,"from":0,"type":"A","msg":"success"}' % packet_id)

"""The pure protocol module: table-driven cases and a property test."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from imd import jsonfast, protocol
from imd.protocol import MAX_NESTING, PacketError, parse_frame


def frame(**fields):
    return json.dumps(fields).encode("utf-8")


# (frame, expected packet or (error code, echoed id))
GOOD = [
    (frame(id="a", to=2, type="t", msg="hi"), protocol.MessagePacket("a", "t", 2, "hi")),
    (frame(id=17, to="2", type="t", msg="x" * 1023), protocol.MessagePacket(17, "t", 2, "x" * 1023)),
    (frame(id="i", to=3, type="i", msg="img-1"), protocol.MessagePacket("i", "i", 3, "img-1")),
    (frame(id="i", to=3, type="i", msg=55), protocol.MessagePacket("i", "i", 3, 55)),
    (frame(id="p", to=0, type="P"), protocol.PingPacket("p")),
    (frame(id="p", to=0, type="P", msg={"any": "thing"}), protocol.PingPacket("p")),
    (frame(id="T", to=0, type="T", msg=42), protocol.TakeOrderPacket("T", 42)),
    (frame(id="T", to=0, type="T", msg="42"), protocol.TakeOrderPacket("T", 42)),
    (frame(id="S", to=0, type="S", msg={"longtitude": 180, "latitude": -85.05112878}),
     protocol.SitePacket("S", 180.0, -85.05112878)),
    (frame(id="S", to=0, type="S", msg={"longitude": -180.0, "latitude": 0}), protocol.SitePacket("S", -180.0, 0.0)),
    (frame(id="O", to=0, type="O", msg=9), protocol.OnlinePacket("O", 9)),
    (frame(id="H", to=0, type="H", msg=1700000000000), protocol.HistoryPacket("H", since=1700000000000)),
    (frame(id="H", to=0, type="H", msg={"since": 5, "limit": 500, "with": "3"}),
     protocol.HistoryPacket("H", since=5, limit=500, with_uid=3)),
    (frame(id="H", to=0, type="H", msg={"after": "abc"}), protocol.HistoryPacket("H", after="abc")),
]

BAD = [
    (b"", ("bad_packet", None)),
    (b"nope", ("bad_packet", None)),
    (b"[]", ("bad_packet", None)),
    (b"null", ("bad_packet", None)),
    (b'{"id": NaN, "type": "P"}', ("bad_packet", None)),
    (b"[" * 100000, ("bad_packet", None)),
    (frame(to=0, type="P"), ("bad_packet", None)),
    (frame(id="", to=0, type="P"), ("bad_packet", None)),
    (frame(id="x" * 65, to=0, type="P"), ("bad_packet", None)),
    (frame(id=True, to=0, type="P"), ("bad_packet", None)),
    (frame(id=1.5, to=0, type="P"), ("bad_packet", None)),
    (frame(id={"a": 1}, to=0, type="P"), ("bad_packet", None)),
    (frame(id="a", to=0), ("bad_packet", "a")),
    (frame(id="a", to=0, type=1), ("bad_packet", "a")),
    (frame(id="a", to=0, type="X"), ("unknown_type", "a")),
    (frame(id="a", to=0, type="s", msg={}), ("unknown_type", "a")),
    (frame(id="a", to=0, type="A"), ("unknown_type", "a")),
    (frame(id="a", to=0, type="tt", msg="x"), ("unknown_type", "a")),
    (frame(id="a", to=0, type="t", msg="x"), ("bad_packet", "a")),
    (frame(id="a", to="2x", type="t", msg="x"), ("bad_packet", "a")),
    (frame(id="a", to=True, type="t", msg="x"), ("bad_packet", "a")),
    (frame(id="a", to=2.0, type="t", msg="x"), ("bad_packet", "a")),
    (frame(id="a", to=2, type="t", msg=""), ("bad_packet", "a")),
    (frame(id="a", to=2, type="t", msg=None), ("bad_packet", "a")),
    (frame(id="a", to=2, type="t"), ("bad_packet", "a")),
    (frame(id="a", to=2, type="t", msg="x" * 1024), ("too_long", "a")),
    (frame(id="a", to=2, type="i", msg="x" * 129), ("too_long", "a")),
    (frame(id="a", to=2, type="i", msg=0), ("bad_packet", "a")),
    (frame(id="a", to=2, type="i", msg=""), ("bad_packet", "a")),
    (b'{"id": "a", "to": 2, "type": "t", "msg": "\\ud800"}', ("bad_packet", "a")),
    (frame(id="a", to=0, type="T", msg="x"), ("bad_packet", "a")),
    (frame(id="a", to=0, type="T"), ("bad_packet", "a")),
    (frame(id="a", to=0, type="S", msg={"longitude": 180.1, "latitude": 0}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="S", msg={"longitude": 0, "latitude": 85.06}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="S", msg={"longitude": "1", "latitude": 0}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="S", msg={"latitude": 0}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="S", msg=[1, 2]), ("bad_packet", "a")),
    (frame(id="a", to=0, type="O", msg=0), ("bad_packet", "a")),
    (frame(id="a", to=0, type="H"), ("bad_packet", "a")),
    (frame(id="a", to=0, type="H", msg={"limit": 0}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="H", msg={"limit": 501}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="H", msg={"since": -1}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="H", msg={"with": "me"}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="H", msg={"after": 3}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="H", msg={"after": "c", "limit": 3}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="H", msg={"until": 3}), ("bad_packet", "a")),
    (frame(id="a", to=0, type="H", msg="yesterday"), ("bad_packet", "a")),
]


class ParseTests(unittest.SynchronousTestCase):

    def test_good_frames(self):
        for payload, expected in GOOD:
            self.assertEqual(parse_frame(payload), expected, payload)

    def test_bad_frames(self):
        for payload, (code, packet_id) in BAD:
            with self.assertRaises(PacketError, msg=payload[:80]) as caught:
                parse_frame(payload)
            self.assertEqual((caught.exception.code, caught.exception.packet_id), (code, packet_id), payload[:80])

    def test_binary_frame_is_bad_packet_with_null_id(self):
        with self.assertRaises(PacketError) as caught:
            parse_frame(frame(id="a", to=0, type="P"), is_binary=True)
        self.assertEqual((caught.exception.code, caught.exception.packet_id), ("bad_packet", None))

    def test_numeric_id_dedups_as_its_decimal_string(self):
        self.assertEqual(parse_frame(frame(id=42, to=0, type="P")).dedup_id,
                         parse_frame(frame(id="42", to=0, type="P")).dedup_id)

    def test_text_length_counts_code_points(self):
        self.assertEqual(parse_frame(frame(id="a", to=2, type="t", msg="😀" * 1023)).msg, "😀" * 1023)


class NestingTests(unittest.SynchronousTestCase):
    """A packet nests at most MAX_NESTING deep, checked before any decoder
    reads it: where a decoder's recursion gives up depends on the
    interpreter and its stack (on PyPy one call took a packet 3,000 deep and
    the next refused it), so a client always gets the same answer."""

    def nested(self, depth, opener=b"[", closer=b"]"):
        inner = b"1" if opener == b"[" else b'"k":1'
        body = opener * depth + inner + closer * depth
        if opener == b"{":  # keys for every level but the innermost
            body = b'{"k":' * (depth - 1) + b'{"k":1}' + b"}" * (depth - 1)
        return b'{"id": "a", "type": "P", "msg": ' + body + b"}"

    def test_at_the_limit_taken_past_it_refused_on_every_path(self):
        for plain in (False, True):
            self.patch(jsonfast, "plain_loads", plain)
            for opener, closer in ((b"[", b"]"), (b"{", b"}")):
                # the packet's own object is one level
                self.assertEqual(parse_frame(self.nested(MAX_NESTING - 1, opener, closer)).type, "P")
                for depth in (MAX_NESTING, 3000):
                    for _ in range(20):
                        self.assertEqual(outcome(self.nested(depth, opener, closer)),
                                         ("error", "bad_packet", "not JSON", None), (plain, opener, depth))

    def test_brackets_inside_strings_do_not_count(self):
        text = ('{"id": "a", "type": "t", "to": 2, "msg": "%s"}' % ("[{" * 200 + r'\"' + "]}" * 200)).encode()
        packet = parse_frame(text)
        self.assertEqual(packet.msg, "[{" * 200 + '"' + "]}" * 200)

    def test_depth(self):
        for text, depth in (("", 0), ("1", 0), ("[]", 1), ('[[], {"a": [1]}]', 3), ('["]]", "[[[\\"]', 1),
                            ('"unterminated [[[', 0), ('[' * 500, 500), ('"\\' * 1000, 0), ('"' * 1001, 0)):
            self.assertEqual(protocol.nesting(text), depth, text[:40])


class BuildTests(unittest.SynchronousTestCase):

    def test_server_packets(self):
        self.assertEqual(json.loads(protocol.ack(5)), {"id": 5, "from": 0, "type": "A", "msg": "success"})
        self.assertEqual(json.loads(protocol.ack_duplicate(5)),
                         {"id": 5, "from": 0, "type": "A", "msg": "success", "dup": True})
        self.assertEqual(json.loads(protocol.error(None, "bad_packet", "why")),
                         {"id": None, "from": 0, "type": "E", "msg": "why", "code": "bad_packet"})
        self.assertEqual(json.loads(protocol.login("s1", 7)),
                         {"id": "s1", "from": 0, "type": "L", "msg": "login in", "uid": 7})
        self.assertEqual(json.loads(protocol.close("s2", "bye")), {"id": "s2", "from": 0, "type": "C", "msg": "bye"})
        self.assertEqual(json.loads(protocol.pong("p")), {"id": "p", "from": 0, "type": "P", "msg": "pong"})
        self.assertEqual(json.loads(protocol.online("o", 3, True)),
                         {"id": "o", "from": 0, "type": "O", "msg": {"uid": 3, "online": True}})

    def test_message_json_keeps_the_id_type_and_unicode(self):
        packet = parse_frame(frame(id=9, to=2, type="t", msg="привет"))
        stored = protocol.message_json(packet, 1, 1700000000123)
        self.assertIn("привет".encode("utf-8"), stored)
        self.assertEqual(json.loads(stored), {"id": 9, "from": 1, "to": 2, "type": "t", "msg": "привет",
                                              "ts": 1700000000123})

    def test_history_reply(self):
        reply = json.loads(protocol.history("h", [b'{"id":"a"}', '{"id":"b"}'], True, "cur"))
        self.assertEqual(reply, {"id": "h", "from": 0, "type": "H", "msg": [{"id": "a"}, {"id": "b"}],
                                 "more": True, "next": "cur"})
        self.assertNotIn("next", json.loads(protocol.history("h", [], False)))

    def test_history_reply_bytes(self):
        # the bytes clients have always had: the head's members in this
        # order, each item its packet verbatim with "state" last
        items = [protocol.history_item('{"id":"a","msg":"é"}', 0), protocol.history_item(b'{"id":7}', 2)]
        self.assertEqual(protocol.history(9, items, True, "cur"),
                         '{"id":9,"from":0,"type":"H","msg":[{"id":"a","msg":"é","state":"sent"},'
                         '{"id":7,"state":"read"}],"more":true,"next":"cur"}'.encode("utf-8"))
        self.assertEqual(protocol.history("h\"msg\":null", [], False),
                         b'{"id":"h\\"msg\\":null","from":0,"type":"H","msg":[],"more":false}')
        # the same bytes as the compact JSON of the whole reply as one value
        for packet_id in (9, "h", 'q"\\é\u2028', 2 ** 70):
            for more, cursor in ((False, None), (True, "abc_-")):
                packets = [protocol.message_json(protocol.MessagePacket(n, "t", 2, "m%d é" % n), 1, 5)
                           for n in range(3)]
                reply = protocol.history(packet_id, [protocol.history_item(p, n % 3) for n, p in enumerate(packets)],
                                         more, cursor)
                whole = {"id": packet_id, "from": 0, "type": "H",
                         "msg": [dict(json.loads(p), state=protocol.STATE_NAMES[n % 3]) for n, p in enumerate(packets)],
                         "more": more}
                if more:
                    whole["next"] = cursor
                self.assertEqual(reply, json.dumps(whole, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        self.assertEqual(protocol.history("h", [b'{"id":"a","state":"delivered"}'], True, None),
                         b'{"id":"h","from":0,"type":"H","msg":[{"id":"a","state":"delivered"}],"more":true,'
                         b'"next":null}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

packet_like = st.fixed_dictionaries(
    {},
    optional={"id": json_values | st.text(min_size=1, max_size=64),
              "to": json_values | st.integers(min_value=-3, max_value=10 ** 20),
              "type": st.sampled_from(list("tiPTSOHsAEx") + ["", "tt"]) | json_values,
              "msg": json_values | st.text(max_size=1100),
              "from": json_values})


class PropertyTests(unittest.SynchronousTestCase):

    @settings(max_examples=800, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes_give_a_packet_or_a_packet_error(self, payload):
        self._parse(payload)

    @settings(max_examples=1500, deadline=None)
    @given(packet_like)
    def test_any_packet_like_object_gives_a_packet_or_a_packet_error(self, obj):
        self._parse(json.dumps(obj).encode("utf-8"))

    def _parse(self, payload):
        try:
            packet = parse_frame(payload)
        except PacketError as e:
            self.assertIn(e.code, ("bad_packet", "unknown_type", "too_long"))
            if e.packet_id is not None:
                protocol.error(e.packet_id, e.code, e.reason)  # always encodable
            return
        self.assertIn(packet.type, "tiPTSOH")
        protocol.ack(packet.id)
        if isinstance(packet, protocol.MessagePacket):
            protocol.message_json(packet, 1, 0)


class ReceiptAndTypingTests(unittest.SynchronousTestCase):
    """R and Y (contract §7.1, §7.2): parsing and the packets built."""

    def test_receipt_frames(self):
        packet = parse_frame(frame(id="r", to="7", type="R", msg={"state": "read", "ids": ["a", 42]}))
        self.assertEqual((packet.to, packet.state, packet.ids, packet.dedup_ids), (7, 2, ["a", 42], ["a", "42"]))
        self.assertEqual(parse_frame(frame(id="r", to=0, type="R", msg={"state": "delivered", "ids": ["s"]})).to, 0)
        for to in (False, 0.0, -1, "x", None):
            with self.assertRaises(PacketError):
                parse_frame(frame(id="r", to=to, type="R", msg={"state": "read", "ids": ["a"]}))

    def test_typing_frames(self):
        packet = parse_frame(frame(id="y", to=3, type="Y", msg=False))
        self.assertEqual((packet.to, packet.typing), (3, False))
        for msg in (0, 1, "true", None):
            with self.assertRaises(PacketError):
                parse_frame(frame(id="y", to=3, type="Y", msg=msg))

    def test_built_packets(self):
        self.assertEqual(json.loads(protocol.receipt("r", 2, 1, 1, ["a", 7], 5)),
                         {"id": "r", "from": 2, "to": 1, "type": "R",
                          "msg": {"state": "delivered", "ids": ["a", 7], "ts": 5}})
        self.assertEqual(json.loads(protocol.typing("y", 1, 2, True)),
                         {"id": "y", "from": 1, "to": 2, "type": "Y", "msg": True})
        self.assertEqual(protocol.history_item(b'{"id":"a"}', 1), b'{"id":"a","state":"delivered"}')
        head, tail = protocol.system_message_parts("e", {"event": "x"}, 9)
        self.assertEqual(head + b"4" + tail, protocol.system_message_json("e", 0, 4, {"event": "x"}, 9))


# Malformed and unusual JSON for the differential test below, beside GOOD and BAD.
ODD_JSON = [
    b'{"id": "a", "to": 2, "type": "t", "msg": "x", "n": NaN}',
    b'{"id": "a", "to": 2, "type": "t", "msg": "x", "n": -Infinity}',
    b'{"id": "a", "to": 2, "type": "t", "msg": "NaN and Infinity"}',
    b'{"id": "a", "to": 0, "type": "S", "msg": {"longitude": Infinity, "latitude": 0}}',
    b'{"id": "a", "to": 0, "type": "H", "msg": 1e999}',
    b'{"id": "a", "to": 2, "type": "i", "msg": 1e400}',
    b'{"id": 0.0, "type": "P"}', b'{"id": -0, "type": "P"}', b'{"id": 01, "type": "P"}',
    b'{"id": "a", "type": "P",}', b'{"id": "a" "type": "P"}', b'{"id": "a", "type": "P"} x',
    b'{"id": "a", "type": "P"}\n', b' \t{"id": "a", "type": "P"} ', b'{"id": "a", "type": "P", "id": "b"}',
    b'{"id": "a\x01", "type": "P"}', b'{"id": "\\x", "type": "P"}', b'{"id": "\\u12", "type": "P"}',
    b'{"id": "\\udc00\\ud800", "type": "P"}', b'{"id": "\\ud83d\\ude00", "type": "P"}',
    b'{"id": "a", "type": "P", "msg": [' + b'[' * 3000 + b']' * 3000 + b']}',
    b'{"id": "a", "type": "P", "msg": [' + b'[],' * 150 + b'[]]}',
    b'{"id": "a", "type": "P", "msg": ' + b'{"k":' * 3000 + b'1' + b'}' * 3000 + b'}',
    b'\xef\xbb\xbf{"id": "a", "type": "P"}', b'{"id": "\xff", "type": "P"}', b'{"id": "\xc3\xa9", "type": "P"}',
    b'{"id": 123456789012345678901234567890, "type": "P"}', b'{"id": 1E2, "type": "P"}', b'tru', b'"abc',
    b'{"id": "a", "type": "Y", "to": 2, "msg": true}', b'{"id": "a", "type": "Y", "to": 2, "msg": True}',
    b'{"id": null, "type": "P"}', b'{}', b'{"": 1}', b'1', b'-', b'"\\u0000"',
    # "\\u" with what int(x, 16) takes but JSON does not (PyPy's pure-Python decoder read them)
    b'{"id": "\\u0_41", "type": "P"}', b'{"id": "\\u+041", "type": "P"}', b'{"id": "\\u 041", "type": "P"}',
    b'{"id": "\\u0x41", "type": "P"}', b'{"id": "\\u0_41", "type": "P", "x": NaN}',
    b'{"id": "\\u004", "type": "P"}', b'{"id": "\\\\u0_41", "type": "P"}', b'{"id": "\\\\\\u0041", "type": "P"}',
    b'{"id": "a", "type": "P", "msg": [' + b'[],' * 150 + b'"\\u0_41"]}',
]


def outcome(payload):
    """What parse_frame makes of ``payload``: the packet, or the error's fields."""
    try:
        packet = parse_frame(payload)
    except PacketError as e:
        return ("error", e.code, e.reason, e.packet_id)
    return ("packet", repr(packet))


class PlainLoadsDifferentialTests(unittest.SynchronousTestCase):
    """jsonfast.plain_loads (on by default on PyPy) parses through plain
    json.loads: every payload must come out exactly as through the hooked
    decoder alone (on CPython this compares its json.loads with the decoder)."""

    def setUp(self):
        self.patch(jsonfast, "plain_loads", jsonfast.plain_loads)   # restored after the test

    def both_ways(self, payload):
        jsonfast.use_plain_loads(False)
        hooked = outcome(payload)
        jsonfast.use_plain_loads(True)
        self.assertEqual(outcome(payload), hooked, payload[:80])

    def test_corpus(self):
        for payload in [p for p, _ in GOOD] + [p for p, _ in BAD] + ODD_JSON:
            self.both_ways(payload)

    def test_escapes_need_four_hex_digits_both_ways(self):
        for plain in (False, True):
            jsonfast.use_plain_loads(plain)
            for text in (b'{"id": "\\u0_41", "type": "P"}', b'{"id": "\\u0_41", "type": "P", "x": "NaN"}',
                         b'{"id": "\\u0x41", "type": "P", "x": "Infinity"}'):
                self.assertEqual(outcome(text), ("error", "bad_packet", "not JSON", None), (plain, text))
            # an escaped backslash before "u" is no escape: the id is the text \u0_41
            self.assertEqual(outcome(b'{"id": "\\\\u0_41", "type": "P", "x": "NaN"}'),
                             ("packet", repr(protocol.PingPacket("\\u0_41"))))

    def test_constants_take_the_hooked_decoder(self):
        jsonfast.use_plain_loads(True)
        self.assertEqual(outcome(b'{"id": "a", "type": "P", "x": NaN}'), ("error", "bad_packet", "not JSON", None))
        self.assertEqual(outcome(b'{"id": "NaN", "type": "P"}'), ("packet", repr(protocol.PingPacket("NaN"))))

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes(self, payload):
        self.both_ways(payload)

    @settings(max_examples=500, deadline=None)
    @given(packet_like)
    def test_any_packet_like_object(self, obj):
        self.both_ways(json.dumps(obj).encode("utf-8"))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(['{', '}', '[', ']', '"', ':', ',', ' ', 'NaN', 'Infinity', '-', '1', '.5',
                                     'e9', 'true', 'null', '"id"', '"type"', '"P"', '"t"', '\\', 'u12', '\x00',
                                     '\ud800', 'é']), max_size=40))
    def test_json_like_text(self, pieces):
        self.both_ways("".join(pieces).encode("utf-8", "surrogatepass"))

"""The message log's entry (imd.messagelog.entry): read back, the orjson
fast path and its json fallback read exactly what json reads, errors
included; a receipt's entry as written (pure logic)."""

import json

from twisted.trial import unittest

from imd import jsonfast
from imd.messagelog import entry as stored

ENTRIES = [
    '{"id":"m1","from":1,"to":2,"type":"t","msg":"hello","ts":1700000000000}',
    '{"id":77,"from":1,"to":2,"type":"t","msg":"h\\u00e9llo \\ud83d\\ude00 \\"q\\"","ts":5}',
    '{"id":123456789012345678901234567890,"from":1,"to":2,"type":"t","msg":"big id","ts":5}',
    '{"id":"x","from":123456789012345678901234567890,"to":2,"type":"t","msg":"big uid","ts":5}',
    '{"id":"x","from":1,"to":2,"type":"i","msg":{"n":123456789012345678901234567890},"ts":5}',
    '{"id":"x","from":1,"to":2,"type":"i","msg":4242,"ts":5}',
    '{"id":"x","from":1,"to":2,"type":"t","msg":NaN,"ts":5}',
    '{"id":"x","from":1,"to":2,"type":"t","msg":"\\ud800","ts":5}',
    '{"id":"x","id":"y","from":1,"to":2,"type":"t","msg":"dup","ts":5}',
    '{"id":"x","from":1,"to":2,"type":"t","msg":"m","ts":1e3}',
    '{"id":"x","from":0,"to":2,"type":"t","msg":"m","ts":5}',
    '{"id":"","from":1,"to":2,"type":"t","msg":"m","ts":5}',
    '[1,2]', 'not json', '',
]
RECEIPT_ENTRIES = [
    '{"id":"r","from":2,"to":1,"type":"R","msg":{"state":"read","ids":["a",7],"ts":5},"ts":5,"seq":9}',
    '{"id":"r","from":2,"to":0,"type":"R","msg":{"state":"delivered","ids":[123456789012345678901234567890],'
    '"ts":5},"ts":5}',
    '{"id":"r","from":2,"to":1,"type":"R","msg":{"state":"read","ids":["\\ud800"],"ts":5},"ts":5}',
    '{"id":"r","from":2,"to":1,"type":"R","msg":{"state":"read","ids":[1.5],"ts":5},"ts":5}',
]


def outcome(entry, parse=None):
    try:
        return ("ok", (parse or stored.parse_stored)(entry))
    except ValueError as e:
        return ("error", str(e))


class ParseStoredMixin:
    use_orjson = None

    def setUp(self):
        self.patch(jsonfast, "orjson", jsonfast.orjson)   # restored after the test
        jsonfast.use_orjson(self.use_orjson)

    def test_same_as_reading_with_json_alone(self):
        fast = [outcome(entry) for entry in ENTRIES] + [outcome(e, stored.parse_entry) for e in RECEIPT_ENTRIES]
        self.patch(stored, "_load", json.loads)
        self.assertEqual(fast, [outcome(entry) for entry in ENTRIES]
                         + [outcome(e, stored.parse_entry) for e in RECEIPT_ENTRIES])

    def test_a_stored_message_as_its_row(self):
        message = stored.parse_stored(ENTRIES[1])
        self.assertEqual(message.row(), ("77", 1, 2, "t", 'héllo 😀 "q"', 5, 0, ENTRIES[1]))

    def test_a_byte_that_is_not_utf8_is_read_as_u_fffd(self):
        # imd.stores.redis hands each such byte up as a lone surrogate
        entry = '{"id":"m\udcff","from":1,"to":2,"type":"t","msg":"a\udcffb","ts":5,"seq":3}'
        for parse in (stored.parse_entry, stored.parse_stored):
            message = parse(entry)
            self.assertEqual((message.msg_id, message.msg, message.packet),
                             ("m\ufffd".encode("utf-8"), "a\ufffdb",
                              '{"id":"m\ufffd","from":1,"to":2,"type":"t","msg":"a\ufffdb","ts":5}'))
        receipt = '{"id":"r","from":2,"to":1,"type":"R","msg":{"state":"read","ids":["a\udcff",7],"ts":5},"ts":5}'
        self.assertEqual(stored.parse_entry(receipt).msg_ids, ("a\ufffd".encode("utf-8"), b"7"))
        self.assertEqual(stored.readable("plain é"), "plain é")

    def test_the_accept_order_is_read_and_left_out_of_the_packet(self):
        entry = ENTRIES[1][:-1] + ',"seq":42}'
        message = stored.parse_stored(entry)
        self.assertEqual((message.seq, message.key, message.packet), (42, (5, 42), ENTRIES[1]))
        for bad in (ENTRIES[1][:-1] + ',"seq":-1}', ENTRIES[1][:-1] + ',"seq":"7"}',
                    ENTRIES[1][:1] + '"seq":3,' + ENTRIES[1][1:]):
            self.assertRaises(ValueError, stored.parse_stored, bad)


class OrjsonParseStoredTests(ParseStoredMixin, unittest.TestCase):
    use_orjson = True
    if not jsonfast.available():
        skip = "orjson is not installed (CPython only): the json fallback is tested below"


class JsonFallbackParseStoredTests(ParseStoredMixin, unittest.TestCase):
    use_orjson = False


class ReceiptEntryTests(unittest.TestCase):
    """An R entry of MQ: its receipt rows; a message parser refuses it."""

    ENTRY = ('{"id":"r","from":2,"to":1,"type":"R","msg":{"state":"read","ids":["a",7],"ts":5},"ts":5,"seq":9}')

    def test_receipt_rows(self):
        receipt = stored.parse_entry(self.ENTRY)
        self.assertEqual(receipt.rows(), [(1, "a", 2, 2, 5, 9), (1, "7", 2, 2, 5, 9)])
        self.assertEqual(receipt.identities(), [(1, b"a", 2), (1, b"7", 2)])
        self.assertEqual(receipt.ts, 5)
        self.assertRaises(ValueError, stored.parse_stored, self.ENTRY)
        self.assertEqual(receipt.parties, (2, 1))
        system = stored.parse_entry(self.ENTRY.replace('"to":1', '"to":0'))
        self.assertEqual(system.sender, 0)
        self.assertEqual(system.parties, (2,), "the system has no pending index")

    def test_bad_receipt_entries(self):
        for bad in (self.ENTRY.replace('"read"', '"seen"'), self.ENTRY.replace('["a",7]', '[]'),
                    self.ENTRY.replace('"from":2', '"from":0'), self.ENTRY.replace('["a",7]', '[null]'),
                    self.ENTRY.replace('"ts":5,', '')):
            self.assertRaises(ValueError, stored.parse_entry, bad)
        message = stored.parse_entry(ENTRIES[0])
        self.assertEqual(message.msg_id, b"m1")
        self.assertEqual(message.parties, (1, 2))

    def test_a_receipt_entry_as_written(self):
        head, tail = stored.receipt_entry_parts("r", 2, 1, 2, 5)
        self.assertEqual(json.loads(head + b'"a",7' + tail),
                         {"id": "r", "from": 2, "to": 1, "type": "R",
                          "msg": {"state": "read", "ids": ["a", 7], "ts": 5}, "ts": 5})
        # as the store_entry snippet leaves it, read back: its rows
        entry = (head + stored.id_json("a") + b"," + stored.id_json(7) + tail)[:-1] + b',"seq":9}'
        self.assertEqual(stored.parse_entry(entry.decode("utf-8")).rows(), [(1, "a", 2, 2, 5, 9), (1, "7", 2, 2, 5, 9)])

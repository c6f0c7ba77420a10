"""The reply parser of imd's Redis connections (imd/stores/redis.py,
``_Connection.dataReceived``): every reply parsed in the call that delivers
its last byte, whatever the split of the bytes across reads, the same
values as txredisapi's own parser; and, against the real Redis, a burst of
script replies mixing a long bulk string with integers all answered within
the reply timeout however costly each reactor turn is."""

import os

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
import txredisapi

from imd.stores.redis import RedisClient, RedisReplyError, Script, _Connection
from tests.support import RedisTestMixin, make_settings, with_deadline

# A room's store reply as it was before rooms answered integers only: a
# multi-bulk mixing integers, a long entry and members.
ENTRY = b'{"id":"m-1","room":"order:42","msg":"' + b"y" * 5000 + b'","seq":7,"pos":3}'
MIXED = Script("return {1, 7, 3, ARGV[1], 31, 32, 33}", "mixed")


def _bulk(value):
    return b"$%d\r\n%s\r\n" % (len(value), value)


# Replies of every kind, each with the value imd's parser gives it.
REPLIES = [
    (b"*7\r\n:1\r\n:7\r\n:3\r\n" + _bulk(ENTRY) + b":31\r\n:32\r\n:33\r\n",
     [1, 7, 3, ENTRY.decode(), 31, 32, 33]),
    (_bulk(b"line one\r\nline two"), "line one\r\nline two"),                 # a CRLF inside a bulk string
    (b"*3\r\n*2\r\n" + _bulk(b"a" * 3000) + b":5\r\n*0\r\n" + _bulk(b"z"),   # nested arrays
     [["a" * 3000, 5], [], "z"]),
    (b"$-1\r\n", None),
    (b"$0\r\n\r\n", ""),
    (b"*-1\r\n", None),
    (b"+OK\r\n", "OK"),
    (b":-12\r\n", -12),
    (_bulk(b"caf\xc3\xa9 \xff"), "caf\xe9 \udcff"),                             # a byte that is not UTF-8
    (b"*2\r\n" + _bulk(b"x" * 1500) + b"*2\r\n:1\r\n" + _bulk(b"y" * 2000),
     ["x" * 1500, [1, "y" * 2000]]),
]
STREAM = b"".join(wire for wire, _ in REPLIES)
EXPECTED = [value for _, value in REPLIES]


def _connection(clock):
    conn = _Connection(replyTimeout=None, password=None, dbid=None, convertNumbers=False)
    conn.clock = clock
    conn.timeout = 1.0
    conn.makeConnection(StringTransport())
    return conn


class SplitReadTests(unittest.SynchronousTestCase):
    """The same bytes cut into reads at every offset."""

    def parse(self, chunks, count):
        clock = Clock()
        conn = _connection(clock)
        conn.callLater = clock.callLater   # (where txredisapi's parser would defer the rest of a read)
        got = []
        for _ in range(count):
            conn.send(b"").addBoth(got.append)
        for chunk in chunks:
            conn.dataReceived(chunk)
        # every reply is out of the last read, with nothing left for a later reactor turn
        left = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
        self.assertEqual((len(got), len(left), conn.transport.producerState), (count, 0, "producing"),
                         "replies parsed, calls left for a later turn, the transport")
        conn._watchdog.stop()
        return got

    def test_every_two_reads(self):
        for cut in range(len(STREAM) + 1):
            self.assertEqual(self.parse([STREAM[:cut], STREAM[cut:]], len(REPLIES)), EXPECTED, cut)

    def test_one_byte_per_read(self):
        self.assertEqual(self.parse([STREAM[i:i + 1] for i in range(len(STREAM))], len(REPLIES)), EXPECTED)

    def test_three_reads_around_each_bulk_end(self):
        # each cut near where a bulk string ends, with a second one anywhere after it
        ends = [i + 2 for i in range(len(STREAM)) if STREAM.startswith(b"\r\n", i)]
        for first in ends:
            for second in range(first, len(STREAM) + 1, 97):
                chunks = [STREAM[:first - 1], STREAM[first - 1:second], STREAM[second:]]
                self.assertEqual(self.parse(chunks, len(REPLIES)), EXPECTED, (first, second))

    def test_an_error_reply_alone_and_inside_an_array(self):
        got = self.parse([b"-ERR wrong\r\n*2\r\n-NOSCRIPT none\r\n:1\r\n"], 2)
        self.assertIsInstance(got[0], RedisReplyError)
        self.assertEqual(str(got[0]), "ERR wrong")
        self.assertIsInstance(got[1][0], RedisReplyError)
        self.assertEqual(got[1][1], 1)

    def test_same_values_as_txredisapi(self):
        # the differential: txredisapi's own parser, given time to finish
        # (it goes on with the rest of a read after a bulk string in a later
        # reactor turn), reads the same stream as the same values
        clock = Clock()
        plain = txredisapi.BaseRedisProtocol(replyTimeout=None, convertNumbers=False)
        plain.callLater = clock.callLater
        plain.makeConnection(StringTransport())
        plain.tryConvertData = _connection(clock).tryConvertData
        got = []
        for _ in REPLIES:
            plain.replyQueue.get().addCallback(got.append)
        plain.dataReceived(STREAM)
        turns = 0
        while len(got) < len(REPLIES) and turns < 100:
            clock.advance(0)
            turns += 1
        self.assertEqual(got, self.parse([STREAM], len(REPLIES)))


class BurstTests(RedisTestMixin, unittest.TestCase):
    """A burst of pipelined script calls whose replies mix a long bulk
    string with integers, against the real Redis."""

    # The reply timeout runs on a clock of its own, moved on by TURN for each
    # reactor turn in which the connection reads: the cost of a busy node's
    # turn (PyPy handling a burst of WebSocket frames: several milliseconds).
    TURN = 0.01

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.clock = Clock()
        settings = make_settings()
        self.client = RedisClient(settings.redis.url, settings.redis.timeout, self.clock, reactor)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield with_deadline(self.client.wait_connected())

    def costly_turns(self, conn):
        """Each call of ``conn.dataReceived`` (a read of the socket, or
        txredisapi going on with one in a later turn) costs TURN; returns
        the count, a list of one."""
        turns = [0]
        read = conn.dataReceived

        def costly(*args):
            turns[0] += 1
            self.clock.advance(self.TURN)   # (the watchdog runs here)
            return read(*args)
        conn.dataReceived = costly
        return turns

    @defer.inlineCallbacks
    def test_every_reply_of_a_burst_comes_within_the_timeout(self):
        # 300 room messages' worth: before, each bulk string ending inside a
        # read left the rest of that read to the next reactor turn (with the
        # socket not read meanwhile), so the burst's replies took ~300 turns,
        # the oldest call went past [redis] timeout (1 s in the tests) and
        # the watchdog dropped the connection: 'no reply in 1s', every call
        # in flight failed (E unavailable for a message Redis had stored)
        yield self.client.run(MIXED, ["k"], [ENTRY])   # (the script loaded: the burst's reads are replies alone)
        turns = self.costly_turns(self.client._conn)
        calls = [self.client.run(MIXED, ["k"], [ENTRY]) for _ in range(300)]
        replies = yield with_deadline(defer.DeferredList(calls, consumeErrors=True), 20)
        failed = {f.getErrorMessage() for ok, f in replies if not ok}
        self.assertEqual(failed, set())
        self.assertEqual({repr(r) for _, r in replies}, {repr([1, 7, 3, ENTRY.decode(), 31, 32, 33])})
        # ~1.5 MB of replies: a turn per read of the socket, not per reply
        self.assertLess(turns[0], 80)
        self.assertIsNotNone(self.client._conn)

    @defer.inlineCallbacks
    def test_the_subscription_reads_a_burst_of_long_messages_in_few_turns(self):
        # the bus side: each message is a multi-bulk of three bulk strings
        from imd.stores.redis import RedisSubscriber
        channel = "imd-test-burst:%d:%s" % (os.getpid(), os.urandom(4).hex())   # (channels span dbs)
        got = []
        subscribed = defer.Deferred()
        settings = make_settings()
        subscriber = RedisSubscriber(settings.redis.url, settings.redis.timeout, self.clock, reactor,
                                     [channel], got.append, lambda: subscribed.callback(None))
        subscriber.startService()
        self.addCleanup(subscriber.stopService)
        yield with_deadline(subscribed)
        turns = self.costly_turns(subscriber._conn)
        yield self.client.run(Script("for i = 1, 300 do redis.call('PUBLISH', KEYS[1], ARGV[1] .. i) end",
                                     "publish"), [channel], [ENTRY])
        while len(got) < 300 and turns[0] < 2000:
            yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(got, [ENTRY.decode() + str(i) for i in range(1, 301)])
        self.assertLess(turns[0], 80)

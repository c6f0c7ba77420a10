"""The bus frames nodes send each other (imd.busframes): the Python codec and
its Lua half (imd/stores/lua/frame.lua) write the same frame, and a node
ignores a frame it cannot read, with a warning, and takes the next one."""

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from imd import busframes
from imd.node import LocalNode
from imd.stores.redis import compose_lua
from tests.support import RedisTestMixin


class _Session:
    def __init__(self, uid, conn_id="c1"):
        self.uid, self.conn_id, self.login_score = uid, conn_id, 0
        self.sent, self.closed = [], []

    def send_packet(self, payload):
        self.sent.append(payload)

    def close_with(self, code, reason):
        self.closed.append((code, reason))


class FrameReceivedTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.node = LocalNode("n1", None, Clock(), 5)
        self.session = _Session(7)
        self.node.add(self.session)
        self.warnings = []

        def observe(event):
            if event.get("log_format", "").startswith("ignoring a malformed bus frame"):
                self.warnings.append(event)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_delivers_and_closes_as_the_frame_says(self):
        self.node.frame_received(busframes.encode(busframes.DELIVER, 7, '{"m":"é"}').decode("utf-8"))
        self.node.frame_received("k 7 an operator's kick")
        self.assertEqual(self.session.sent, ['{"m":"é"}'.encode("utf-8")])
        self.assertEqual(self.session.closed, [(4003, "an operator's kick")])
        self.assertEqual(self.warnings, [])

    def test_a_room_frame_leaves_out_the_connection_it_names_and_lets_its_ack_go(self):
        other_device, friend = _Session(7, "c2"), _Session(8, "c9")
        self.node.add(other_device)
        self.node.add(friend)
        waiting = self.node.wait_frame(41, "A")
        self.assertFalse(waiting.called)
        packet = '{"id":"m","from":7,"room":"r","type":"t","msg":"hi","ts":1,"seq":3,"pos":41}'
        self.node.frame_received("g 7 7,8/c1 " + packet)
        self.assertTrue(waiting.called)
        sent = [packet.encode()]
        self.assertEqual((self.session.sent, other_device.sent, friend.sent), ([], sent, sent))
        # without a connection named: every connection of the uids, and no A waits on it
        self.node.frame_received("g 8 8 " + packet)
        self.assertEqual(len(friend.sent), 2)
        for bad in ("g 7 7,8/ " + packet, "g 7 7,x " + packet, "g 7 7,8/c1"):
            self.node.frame_received(bad)
        self.assertEqual(len(self.warnings), 3)
        self.assertEqual((len(other_device.sent), len(friend.sent)), (1, 2))

    def test_a_frame_that_is_not_utf8_or_not_a_frame_is_ignored(self):
        # a byte that is not UTF-8 reaches the node as a lone surrogate (imd.stores.redis)
        for frame in ('d 7 {"m":"\udcff"}', "k 7 \udcff", "x 7 what", "d seven {}", "", b"d 7 \xff"):
            self.node.frame_received(frame)
        self.assertEqual((self.session.sent, self.session.closed), ([], []))
        self.assertEqual(len(self.warnings), 6)
        self.node.frame_received('d 7 {"m":1}')
        self.assertEqual(self.session.sent, [b'{"m":1}'])


class OwnFrameTests(unittest.SynchronousTestCase):
    """The sending node's 'x' frame: the packet to the sender's other
    connections and the recipient's there, then the A's release; one timer
    for every A still waiting."""

    def setUp(self):
        self.clock = Clock()
        self.node = LocalNode("n1", None, self.clock, 5)
        self.sending, self.other, self.recipient = _Session(7, "c1"), _Session(7, "c2"), _Session(8, "c3")
        for session in (self.sending, self.other, self.recipient):
            self.node.add(session)

    def test_the_packet_to_both_parties_but_the_sending_connection_then_the_a(self):
        acked = []
        self.node.wait_frame(41, "A").addCallback(acked.append)
        self.node.frame_received(b'x 7 c1 41 8 {"pos":41}')
        self.assertEqual((self.sending.sent, self.other.sent, self.recipient.sent, acked),
                         ([], [b'{"pos":41}'], [b'{"pos":41}'], ["A"]))

    def test_without_a_packet_it_only_lets_the_a_go_even_before_its_waiter(self):
        self.node.frame_received(b"x 7 c1 42")
        self.assertEqual(self.node.wait_frame(42, "A"), "A")   # the frame came first
        self.assertEqual((self.sending.sent, self.other.sent, self.recipient.sent), ([], [], []))

    def test_a_waiter_whose_frame_never_comes_gets_its_a_after_the_timeout(self):
        acked = []
        self.node.wait_frame(43, "first").addCallback(acked.append)
        self.clock.advance(2)
        self.node.wait_frame(44, "second").addCallback(acked.append)
        self.clock.advance(self.node.frame_timeout - 2)
        self.assertEqual(acked, ["first"])
        self.clock.advance(2)
        self.assertEqual(acked, ["first", "second"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_timer_goes_with_the_last_waiter(self):
        self.node.wait_frame(45, "A")
        self.node.frame_received(b"x 7 c1 45")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_bad_x_frame_is_ignored(self):
        for frame in (b"x 7 c1", b"x 7 c1 four", b"x 7 c1 4 8", b"x 7 c1 4 eight {}"):
            self.node.frame_received(frame)
        self.assertEqual((self.other.sent, self.recipient.sent), ([], []))


class LuaFrameTests(RedisTestMixin, unittest.TestCase):

    async def test_lua_builds_the_frame_python_reads(self):
        script = compose_lua("-- include: frame\nreturn frame(ARGV[1], ARGV[2], ARGV[3])\n")
        for kind, uid, rest in ((busframes.DELIVER, 7, '{"msg":"é x"}'), (busframes.KICK, 12, "bye now"),
                                (busframes.REPLACE, 3, "a1-4")):
            built = await self.redis.eval(script, [], [kind, str(uid), rest])
            self.assertEqual(built, busframes.encode(kind, uid, rest).decode("utf-8"))
            self.assertEqual(busframes.decode(built), (kind, uid, rest))


class SubscriptionParserTests(unittest.TestCase):
    """The subscription reads its messages itself (txredisapi's parser is
    quadratic in what one read brings, and every delivered packet comes
    this way): split anywhere, each message comes out once, whole, in
    order; a byte that is not UTF-8 as a lone surrogate, like every reply.
    (The SUBSCRIBE replies go to txredisapi: every test with a node.)"""

    def test_messages_split_anywhere(self):
        from twisted.internet.testing import StringTransport

        from imd.stores.redis import _Subscription

        def message(channel, payload):
            return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(payload), payload)
        payloads = [b'd 7 {"m":"\xc3\xa9"}', b"x 7 a1-2 {}", b"", b"d 8 \xff", b"k 9 r\r\nn"]
        data = b"".join(message(b"imd:0:node:a", p) for p in payloads)
        for step in (1, 2, 3, 5, 11, 64, len(data)):
            conn = _Subscription()
            conn.transport = StringTransport()
            got, replies = [], []
            conn.owner = type("Owner", (), {"on_message": staticmethod(got.append)})()
            conn.replyReceived = replies.append
            for i in range(0, len(data), step):
                conn.dataReceived(data[i:i + step])
            self.assertEqual(got, [p.decode("utf-8", "surrogateescape") for p in payloads], step)
            self.assertEqual(replies, [], step)

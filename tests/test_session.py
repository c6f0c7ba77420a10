"""imd.transport.session on its own: a connection's logic with no WebSocket
library and no reactor (pure: a task.Clock, a recording Wire, the real
node with a presence that answers at once).  The same behaviour over real
sockets is in tests/test_limits.py, test_messages.py, test_idle.py and
test_shutdown.py."""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from imd import protocol
from imd.errors import ImdError, LoginRefused, StoreUnavailable
from imd.handlers import Reply
from imd.metrics import Metrics
from imd.node import LocalNode
from imd.transport.session import Login, Session, SessionContext
from tests.support import make_settings


class RecordingWire:
    """A Wire that keeps what the session did, in order: each packet sent
    (decoded), the close frame, and what it did to the TCP connection."""

    def __init__(self):
        self.open, self.closed = True, False
        self.events = []
        self.fail_on = None

    def is_websocket_open(self):
        return self.open

    def is_websocket_closed(self):
        return self.closed

    def send_text(self, payload):
        if self.open:
            if self.fail_on is not None and self.fail_on(payload):
                raise RuntimeError("the send failed")
            self.events.append(json.loads(payload))

    def send_close(self, code, reason):
        if self.open:
            self.open = False   # as Autobahn: closing once its close frame is sent
            self.events.append(("close", code, reason))

    def stop_reading(self, why):
        self.events.append(("stop_reading",))

    def drop(self, why):
        self.events.append(("drop", why))

    def abort(self):
        self.events.append(("abort",))

    def seen(self):
        """In order: each packet as ``(type, id)`` (``L`` as ``"L"``, ``C``
        as ``("C", msg)``), the close frame and what was done to the TCP connection."""
        out = []
        for event in self.events:
            if isinstance(event, dict):
                kind = event["type"]
                out.append("L" if kind == "L" else (kind, event["msg"] if kind == "C" else event.get("id")))
            else:
                out.append(event)
        return out


class Presence:
    def __init__(self):
        self.logins, self.logouts = [], []
        self.registration = None   # a Deferred to hold the next login with

    def login(self, uid, conn_id, score, max_devices):
        self.logins.append((uid, conn_id))
        if self.registration is not None:
            return self.registration
        return defer.succeed([])

    def logout(self, uid, conn_id):
        self.logouts.append((uid, conn_id))
        return defer.succeed(None)


class Verifier:
    def __init__(self):
        self.answer = None

    def verify(self, token):
        if self.answer is not None:
            return self.answer
        if token == "bad":
            return defer.fail(LoginRefused("token expired"))
        return defer.succeed(int(token))


def frame(packet):
    return json.dumps(packet).encode()


class SessionTestCase(unittest.SynchronousTestCase):
    overrides = {"websocket": {"rate": "10", "burst": "20", "max_errors": "3", "idle_timeout": "90",
                               "history_rate": "1", "history_burst": "2"}}

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.presence = Presence()
        self.node = LocalNode("node-a", self.presence, self.clock, max_devices=4)
        self.metrics = Metrics()
        self.verifier = Verifier()
        self.handlers = {"P": lambda uid, packet: Reply(protocol.pong(packet.id))}
        settings = make_settings(self.overrides, redis_db=0)
        self.context = SessionContext(settings.websocket, self.node, self.verifier, self.handlers, self.metrics,
                                      self.clock, close_timeout=5)

    def log_in(self, token="1"):
        """``(login, wire, session or None)`` after the handshake and the open."""
        login = Login(self.context, "tcp:127.0.0.1:5000")
        self.successResultOf(login.check(token))
        wire = RecordingWire()
        return login, wire, login.open(wire)

    def session(self, uid=1):
        _, wire, session = self.log_in(str(uid))
        self.assertEqual(wire.seen(), ["L"])
        del wire.events[:]
        return wire, session

    def gate(self, kind):
        """Replies to ``kind`` wait for the Deferreds returned (in order)."""
        waiting = []

        def gated(uid, packet):
            d = defer.Deferred()
            waiting.append((d, packet.id))
            return d
        self.handlers[kind] = gated
        return waiting


class LoginTests(SessionTestCase):

    def test_a_login_is_registered_and_held_by_the_node(self):
        _, wire, session = self.log_in("7")
        self.assertIsInstance(session, Session)
        self.assertEqual(wire.seen(), ["L"])
        self.assertEqual(self.node.sessions_of(7), [session])
        self.assertEqual(self.presence.logins, [(7, session.conn_id)])
        self.assertIn(b"imd_connections_open 1.0", self.metrics.exposition())

    def test_a_refused_token_opens_to_be_told_C_and_4001(self):
        _, wire, session = self.log_in("bad")
        self.assertIsNone(session)
        self.assertEqual(wire.seen(), [("C", "token expired"), ("close", 4001, "token expired")])
        self.assertEqual(self.presence.logins, [])

    def test_a_node_shutting_down_takes_the_registration_back_and_says_1001(self):
        login = Login(self.context, "peer")
        self.successResultOf(login.check("1"))
        self.node.shutting_down = True
        wire = RecordingWire()
        self.assertIsNone(login.open(wire))
        self.assertEqual(wire.seen(), [("C", "server shutting down"), ("close", 1001, "server shutting down")])
        self.assertEqual(self.presence.logouts, self.presence.logins)

    def test_a_client_that_left_during_the_registration_is_unregistered(self):
        self.presence.registration = held = defer.Deferred()
        login = Login(self.context, "peer")
        checked = login.check("1")
        login.lost()
        held.callback([])
        self.successResultOf(checked)
        self.assertEqual(self.presence.logouts, self.presence.logins)
        self.assertEqual(self.node.sessions(), [])

    def test_a_client_that_left_during_the_token_check_is_not_registered(self):
        self.verifier.answer = held = defer.Deferred()
        login = Login(self.context, "peer")
        checked = login.check("1")
        login.lost()
        held.callback(1)
        self.successResultOf(checked)
        self.assertEqual(self.presence.logins, [])

    def test_a_store_outage_at_registration_is_C_4001_unavailable(self):
        self.presence.registration = defer.fail(StoreUnavailable("redis: timeout"))
        _, wire, session = self.log_in("1")
        self.assertIsNone(session)
        self.assertEqual(wire.seen(), [("C", "service unavailable, try again later"),
                                       ("close", 4001, "service unavailable, try again later")])


class ReplyLineTests(SessionTestCase):

    def test_replies_leave_in_the_order_their_packets_came(self):
        wire, session = self.session()
        waiting = self.gate("O")
        session.frame_received(frame({"id": "o1", "to": 0, "type": "O", "msg": 2}), False)
        session.frame_received(frame({"id": "p", "to": 0, "type": "P"}), False)
        session.frame_received(frame({"id": "o2", "to": 0, "type": "O", "msg": 2}), False)
        session.frame_received(frame({"id": "x", "to": 0, "type": "Q"}), False)
        self.assertEqual((wire.seen(), session.replies_waiting), ([], 4))
        waiting[1][0].callback(Reply(protocol.ack("o2")))
        self.assertEqual(wire.seen(), [])
        waiting[0][0].callback(Reply(protocol.ack("o1")))
        self.assertEqual(wire.seen(), [("A", "o1"), ("P", "p"), ("A", "o2"), ("E", "x")])
        self.assertEqual(session.replies_waiting, 0)

    def test_a_failed_handler_or_send_is_still_one_reply_each(self):
        wire, session = self.session()
        waiting = self.gate("O")
        wire.fail_on = lambda payload: b'"id":"boom"' in payload and b'"type":"P"' in payload
        self.handlers["T"] = lambda uid, packet: 1 / 0
        session.frame_received(frame({"id": "o", "to": 0, "type": "O", "msg": 2}), False)
        session.frame_received(frame({"id": "boom", "to": 0, "type": "P"}), False)
        session.frame_received(frame({"id": "t", "to": 0, "type": "T", "msg": 5}), False)
        waiting[0][0].errback(StoreUnavailable("redis: timeout"))
        self.assertEqual([(e["id"], e["type"], e.get("code")) for e in wire.events],
                         [("o", "E", "unavailable"), ("boom", "E", "internal"), ("t", "E", "internal")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError, ZeroDivisionError)), 2)

    def test_packets_delivered_by_the_node_go_out_at_once(self):
        wire, session = self.session(2)
        self.assertEqual(self.node.deliver_local(2, protocol.pong("d")), 1)
        self.assertEqual(wire.seen(), [("P", "d")])


class CloseTests(SessionTestCase):

    def test_a_close_waits_for_the_line_then_C_then_the_code(self):
        wire, session = self.session()
        waiting = self.gate("O")
        session.frame_received(frame({"id": "o", "to": 0, "type": "O", "msg": 2}), False)
        self.node.kick_local(1, "kicked")
        self.assertEqual(wire.seen(), [])
        self.assertEqual(self.node.sessions_of(1), ())          # nothing delivered to it any more
        self.assertEqual(self.presence.logouts, self.presence.logins)
        session.frame_received(frame({"id": "late", "to": 0, "type": "P"}), False)   # not taken
        waiting[0][0].callback(Reply(protocol.ack("o")))
        self.assertEqual(wire.seen(), [("A", "o"), ("C", "kicked"), ("close", 4003, "kicked")])

    def test_a_line_that_does_not_empty_is_cut_after_the_close_timeout(self):
        wire, session = self.session()
        self.gate("O")
        session.frame_received(frame({"id": "o", "to": 0, "type": "O", "msg": 2}), False)
        session.close_with(protocol.CLOSE_REPLACED, "replaced by a newer device")
        self.clock.advance(4.9)
        self.assertEqual(wire.seen(), [])
        self.clock.advance(0.1)
        self.assertEqual(wire.seen(), [("C", "replaced by a newer device"),
                                       ("close", 4002, "replaced by a newer device")])

    def test_max_errors_in_a_row_is_C_4008_and_nothing_more_read(self):
        wire, session = self.session()
        for n in range(5):
            session.frame_received(frame({"id": n, "to": 0, "type": "Q"}), False)
        self.assertEqual(wire.seen(), [("E", 0), ("E", 1), ("E", 2), ("stop_reading",), ("C", "too many errors"),
                                       ("close", 4008, "too many errors")])

    def test_a_reply_between_errors_starts_the_count_again(self):
        wire, session = self.session()
        for packet_type in "QQPQQPQQ":
            session.frame_received(frame({"id": 1, "to": 0, "type": packet_type}), False)
        self.assertFalse([e for e in wire.events if not isinstance(e, dict)])

    def test_refused_takes_count_across_other_replies(self):
        wire, session = self.session()
        self.handlers["T"] = lambda uid, packet: defer.fail(ImdError("not_found"))
        for n in range(3):
            session.frame_received(frame({"id": "t%d" % n, "to": 0, "type": "T", "msg": n + 1}), False)
            session.frame_received(frame({"id": "p%d" % n, "to": 0, "type": "P"}), False)
        self.assertEqual(wire.seen()[-3:], [("stop_reading",), ("C", "too many refused T"),
                                            ("close", 4008, "too many refused T")])

    def test_idle_for_too_long_is_C_4004(self):
        wire, session = self.session()
        self.clock.advance(60)
        session.frame_received(frame({"id": 1, "to": 0, "type": "P"}), False)   # a packet keeps it alive
        self.clock.advance(89)
        self.assertEqual(wire.seen(), [("P", 1)])
        self.assertTrue(session.control_frame())   # control frames do not
        self.clock.advance(1)
        self.assertEqual(wire.seen(), [("P", 1), ("C", "idle for too long"), ("close", 4004, "idle for too long")])

    def test_lost_is_logged_out_once_and_leaves_no_timer(self):
        wire, session = self.session()
        self.gate("O")
        session.frame_received(frame({"id": "o", "to": 0, "type": "O", "msg": 2}), False)
        session.close_with(protocol.CLOSE_KICKED, "kicked")
        session.lost(4003)
        session.lost(4003)
        self.assertTrue(session.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.presence.logouts), 1)
        self.assertIn(b"imd_connections_open 0.0", self.metrics.exposition())


class IdleWatchTests(SessionTestCase):
    """Issue 29: one timer for the idle timeout of every session, each
    still closed 90 s after its own last packet."""

    def test_each_session_closed_90_s_after_its_last_packet(self):
        sessions = []
        for uid in range(1, 9):
            sessions.append(self.session(uid))
            self.clock.advance(1)
        # the sessions made at t0 .. t0+7; packets at odd offsets keep some alive
        closed_at = {}
        last = {uid: 1000 + uid - 1 for uid in range(1, 9)}
        for step in range(300):
            now = self.clock.seconds()
            for uid, (wire, session) in enumerate(sessions, 1):
                if uid not in closed_at and ("C", "idle for too long") in wire.seen():
                    closed_at[uid] = now
                if uid % 3 == 0 and step < 100 and step % (uid + 20) == 0 and not session._closing:
                    session.frame_received(frame({"id": step, "to": 0, "type": "P"}), False)
                    last[uid] = now
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)   # one timer for all of them
            self.clock.advance(0.5)
        self.assertEqual(sorted(closed_at), list(range(1, 9)))
        for uid, at in closed_at.items():
            self.assertAlmostEqual(at - last[uid], 90, delta=0.5, msg="uid %d" % uid)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.context.idle), 0)

    def test_a_closed_session_is_not_held_nor_closed_again(self):
        pairs = [self.session(uid) for uid in range(1, 201)]
        for wire, session in pairs[:150]:
            session.close_with(protocol.CLOSE_KICKED, "kicked")
            session.lost(4003)
        watch = self.context.idle
        self.assertEqual(len(watch), 50)
        # what it files is at most twice what it watches
        self.assertLessEqual(len(watch._entries), 100)
        self.assertNotIn(pairs[0][1], [entry[2] for entry in watch._entries])
        self.clock.advance(90)
        for wire, session in pairs[:150]:
            self.assertNotIn(("C", "idle for too long"), wire.seen())
        for wire, session in pairs[150:]:
            self.assertEqual(wire.seen()[-1], ("close", 4004, "idle for too long"))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RateTests(SessionTestCase):

    def test_burst_then_rate_limited(self):
        wire, session = self.session()
        for n in range(21):
            session.frame_received(frame({"id": n, "to": 0, "type": "P"}), False)
        self.assertEqual(wire.seen()[-2:], [("P", 19), ("E", 20)])
        self.assertEqual(wire.events[-1]["code"], "rate_limited")
        self.clock.advance(0.1)   # 10 a second: one more
        session.frame_received(frame({"id": "again", "to": 0, "type": "P"}), False)
        self.assertEqual(wire.seen()[-1], ("P", "again"))

    def test_history_has_its_own_rate_too(self):
        wire, session = self.session()
        self.handlers["H"] = lambda uid, packet: Reply(protocol.pong(packet.id))
        for n in range(3):
            session.frame_received(frame({"id": n, "to": 2, "type": "H", "msg": {"limit": 1}}), False)
        self.assertEqual([e.get("code") for e in wire.events], [None, None, "rate_limited"])

    def test_control_frames_take_from_the_rate_and_close_4008_past_it(self):
        wire, session = self.session()
        answered = [session.control_frame() for _ in range(23)]
        self.assertEqual(answered, [True] * 20 + [False] * 3)
        self.assertEqual(wire.seen(), [("stop_reading",), ("C", "too many control frames"),
                                       ("close", 4008, "too many control frames")])


class DrainTests(SessionTestCase):

    def test_go_away_answers_what_is_in_hand_then_1001(self):
        wire, session = self.session()
        waiting = self.gate("O")
        session.frame_received(frame({"id": "o", "to": 0, "type": "O", "msg": 2}), False)
        gone = session.go_away()
        session.frame_received(frame({"id": "late", "to": 0, "type": "P"}), False)
        waiting[0][0].callback(Reply(protocol.ack("o")))
        self.assertEqual(wire.seen(), [("A", "o"), ("E", "late"), ("C", "server shutting down"),
                                       ("close", 1001, "server shutting down")])
        self.assertEqual(wire.events[1]["code"], "unavailable")
        self.assertNoResult(gone)
        session.lost(1001)
        self.assertEqual(self.successResultOf(gone), 1001)

    def test_go_away_of_a_connection_already_closing_drops_it(self):
        wire, session = self.session()
        wire.open = False
        gone = session.go_away()
        self.assertEqual(wire.seen(), [("drop", "server shutting down")])
        session.lost(1006)
        self.successResultOf(gone)

    def test_go_away_of_a_closed_connection_fires_at_once(self):
        wire, session = self.session()
        wire.closed = True
        self.assertIsNone(self.successResultOf(session.go_away()))

    def test_the_node_drains_its_sessions_and_aborts_on_cancel(self):
        wire, session = self.session()
        self.gate("O")
        session.frame_received(frame({"id": "o", "to": 0, "type": "O", "msg": 2}), False)
        drained = self.node.drain()
        drained.cancel()
        self.assertEqual(wire.seen()[-1], ("abort",))
        self.failureResultOf(drained, defer.CancelledError)

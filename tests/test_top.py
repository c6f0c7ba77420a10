"""``imd-admin top``: its figures, the full-screen view in a pseudo-terminal
(drawn, then quit with ``q`` or Ctrl-C, the terminal given back), and plain
lines when stdout is not a terminal -- against a whole imd running here."""

import fcntl
import os
import re
import struct
import sys
import termios

from twisted.internet import defer, protocol, reactor, utils
from twisted.trial import unittest

from imd.stores.deadletter import QueueStatus
from imd.admin.top_figures import (NodeHistory, build_frame, histogram_quantile, parse_metrics, plain_line,
                             screen_lines)
from tests.monitoring_support import RunningImd
from tests.support import DEADLINE, RedisTestMixin, connect_client, drop, free_port, settings_text, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = os.path.join(os.path.dirname(sys.executable), "imd-admin")
_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")
LEAVE_FULL_SCREEN = b"\x1b[?1049l"   # xterm's rmcup: curses.endwin() ran

EXPOSITION = """\
# TYPE imd_connections_open gauge
imd_connections_open 7.0
# TYPE imd_packets_in_total counter
imd_packets_in_total{type="t"} %(t)d
imd_packets_in_total{type="P"} %(p)d
# TYPE imd_errors_total counter
imd_errors_total{code="not_friend"} %(e)d
imd_errors_total{code="unavailable"} 0.0
# TYPE imd_ack_latency_seconds histogram
imd_ack_latency_seconds_bucket{le="0.001"} %(b1)d
imd_ack_latency_seconds_bucket{le="0.01"} %(b2)d
imd_ack_latency_seconds_bucket{le="+Inf"} %(b3)d
imd_ack_latency_seconds_count %(b3)d
imd_ack_latency_seconds_sum 0.5
"""


def exposition(t=0, p=0, e=0, b1=0, b2=0, b3=0):
    return EXPOSITION % dict(t=t, p=p, e=e, b1=b1, b2=b2, b3=b3)


class FiguresTests(unittest.SynchronousTestCase):

    def test_quantiles_as_prometheus_computes_them(self):
        buckets = [(0.001, 50), (0.01, 100), (float("inf"), 100)]
        self.assertAlmostEqual(histogram_quantile(0.5, buckets), 0.001)
        self.assertAlmostEqual(histogram_quantile(0.99, buckets), 0.001 + 0.009 * 49 / 50)
        self.assertAlmostEqual(histogram_quantile(0.25, buckets), 0.0005)
        self.assertEqual(histogram_quantile(0.99, [(0.001, 0), (float("inf"), 4)]), 0.001)
        self.assertIsNone(histogram_quantile(0.99, [(0.001, 0), (float("inf"), 0)]))

    def test_rates_over_the_window(self):
        history = NodeHistory()
        history.add(parse_metrics(exposition(), 100.0))
        self.assertEqual(history.rates(), (None, None, None, None))
        history.add(parse_metrics(exposition(t=40, p=10, e=2, b1=30, b2=39, b3=40), 102.0))
        in_rate, msg_rate, err_rate, delta = history.rates()
        self.assertEqual((in_rate, msg_rate, err_rate), (25.0, 20.0, 1.0))
        self.assertEqual(delta, [(0.001, 30.0), (0.01, 39.0), (float("inf"), 40.0)])
        for at in (103.0, 104.0, 105.0, 106.0, 107.0):
            history.add(parse_metrics(exposition(t=40, p=10, e=2, b1=30, b2=39, b3=40), at))
        self.assertEqual(history.rates()[:3], (0.0, 0.0, 0.0))   # the burst left the 5 s window
        self.assertEqual(history.samples[0].at, 102.0)

    def test_a_restarted_node_shows_no_rate_rather_than_a_negative_one(self):
        history = NodeHistory()
        history.add(parse_metrics(exposition(t=40, e=3, b3=40, b2=40, b1=40), 1.0))
        history.add(parse_metrics(exposition(t=1, e=0, b3=1, b2=1, b1=1), 2.0))
        self.assertEqual(history.rates(), (None, None, None, None))

    def test_frame_words(self):
        history = NodeHistory()
        history.add(parse_metrics(exposition(), 100.0))
        history.add(parse_metrics(exposition(t=40, p=10, e=2, b1=30, b2=39, b3=40), 102.0))
        processes = [{"node": "h:8765", "roles": "ws", "metrics": "http://h:18765/metrics"},
                     {"node": "h:migrate", "roles": "migrate", "metrics": ""}]
        status = QueueStatus(12, '{"id":1,"from":1,"to":2,"type":"t","msg":"","ts":101500}', 0, None, 3, "m:1", 5000)
        frame = build_frame(102.0, "r:6379/0", status, processes, 1, {"http://h:18765/metrics": history}, {})
        self.assertRegex(plain_line(frame), r"^\S+ processes=2 conns=7 in/s=25\.0 msg/s=20\.0 ack_p99=\S+ms "
                                            r"err/s=1\.0 mq=12 in_flight=0 dead=3 lag=0\.5s nodes_up=1$")
        lines = [text for text, _ in screen_lines(frame, 1.0)]
        self.assertIn("MQ 12   in flight 0   dead 3   migrator lag 0.5 s   leader m:1   ws nodes up 1", lines)
        self.assertRegex(lines[4], r"^h:8765 +ws +7 +25\.0 +20\.0 +10\.0 ms +1\.0  http://h:18765/metrics$")
        self.assertRegex(lines[5], r"^h:migrate +migrate +- +- +- +- +-  no metrics endpoint$")
        self.assertRegex(lines[6], r"^TOTAL +7 +25\.0 +20\.0 +10\.0 ms +1\.0$")

    def test_redis_away(self):
        frame = build_frame(1.0, "r:6379/0", None, [], None, {}, {}, problem="redis is not connected")
        self.assertTrue(plain_line(frame).endswith("processes=0 conns=- in/s=- msg/s=- ack_p99=- err/s=- "
                                                   "redis=unavailable"))
        self.assertEqual(screen_lines(frame, 1.0)[1][0], "redis: redis is not connected")


class _Terminal(protocol.ProcessProtocol):
    """The program's side of a pseudo-terminal: what it drew, when it ended."""

    def __init__(self):
        self.output = b""
        self.ended = defer.Deferred()

    def childDataReceived(self, fd, data):
        self.output += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    def screen_text(self):
        return _ESCAPES.sub(b" ", self.output).decode("utf-8", "replace")


class TopTests(RedisTestMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        self.ws_port = free_port()
        listen = "tcp:%d:interface=127.0.0.1" % self.ws_port
        self.imd = yield RunningImd(self, {"websocket": {"listen": listen}}).start()
        self.addCleanup(self.imd.stop)
        self.config = os.path.abspath(self.mktemp())
        with open(self.config, "w") as f:
            f.write(settings_text())

    def start_in_terminal(self, *argv):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))
        terminal = _Terminal()
        env = dict(os.environ, TERM="xterm")
        reactor.spawnProcess(terminal, ADMIN, [ADMIN, "--config", self.config, "top"] + list(argv), env=env,
                             path=ROOT, usePTY=(master, slave, os.ttyname(slave)))

        def stop():
            if not terminal.ended.called:
                terminal.transport.signalProcess("KILL")
                return terminal.ended
        self.addCleanup(stop)
        return terminal

    async def shows_the_node(self, terminal):
        await wait_until(lambda: "test-node-1" in terminal.screen_text() and "TOTAL" in terminal.screen_text(),
                         what="top's screen in the terminal")
        text = terminal.screen_text()
        self.assertIn("imd top", text)
        self.assertIn("MQ 0   in flight 0   dead 0", text)
        self.assertIn(self.imd.url, text)

    async def test_draws_and_quits_on_q(self):
        terminal = self.start_in_terminal()
        await self.shows_the_node(terminal)
        drawn = len(terminal.output)
        terminal.transport.write(b"q")
        self.assertEqual(await terminal.ended.addTimeout(DEADLINE, reactor), 0)
        self.assertIn(LEAVE_FULL_SCREEN, terminal.output[drawn:])

    async def test_quits_on_ctrl_c(self):
        terminal = self.start_in_terminal()
        await self.shows_the_node(terminal)
        drawn = len(terminal.output)
        terminal.transport.write(b"\x03")
        self.assertEqual(await terminal.ended.addTimeout(DEADLINE, reactor), 0)
        self.assertIn(LEAVE_FULL_SCREEN, terminal.output[drawn:])
        self.assertNotIn(b"Traceback", terminal.output)

    async def test_plain_lines_when_not_a_terminal(self):
        clients = [await connect_client(self.ws_port, "/" + self.token(uid)) for uid in (1, 2)]
        for client in clients:
            self.addCleanup(drop, client)
            self.assertEqual((await client.next())["type"], "L")
        out, err, code = await utils.getProcessOutputAndValue(
            ADMIN, ["--config", self.config, "top", "-n", "4", "--interval", "0.5"], env=dict(os.environ), path=ROOT)
        self.assertEqual((code, err), (0, b""))
        lines = out.decode("utf-8").splitlines()
        self.assertEqual(len(lines), 4, lines)
        for line in lines:
            # "-" until the first scrape of the node's /metrics has come back
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d processes=1 conns=(2|-) in/s=\S+ msg/s=\S+ "
                                   r"ack_p99=\S+ err/s=\S+ mq=0 in_flight=0 dead=0 lag=0\.0s nodes_up=1$")
        self.assertIn(" conns=2 ", lines[-1])
        self.assertIn("in/s=0.0", lines[-1])

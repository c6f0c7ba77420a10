"""Issue 30: with ws and migrate in one ``twistd imd`` (the default layout),
the migrator runs as a child process of the ws process (imd.migrator_child):
it migrates, it is restarted when it dies (nothing lost or doubled), it
stops with its parent (SIGTERM, SIGKILL past the grace), it never outlives
a parent killed -9, its log lines are the parent's with ``[migrate]``, and
its figures are on the parent's /metrics and /healthz.

The first tests drive the supervisor with a task.Clock and a recording
reactor; the rest start real daemons against the real Redis and MariaDB."""

import io
import json
import os
import re
import signal
import subprocess
import sys

from twisted.application.service import Service
from twisted.internet import defer, error, reactor, task
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial import unittest

from imd.app import App
from imd.config import ConfigError, parse_settings
from imd.logs import ImdLogObserver
from imd.metrics import Metrics
from imd.migrator_child import (FIRST_RESTART_DELAY, MAX_RESTART_DELAY, MigratorProcess, ParentLink, RelayedFigures,
                                child_arguments, kill_after, lower_priority, relayed_event)
from imd.shutdown import GracefulMultiService
from tests.daemon_support import spawn_daemon, start_daemon, write_config
from tests.monitoring_support import http_get, samples
from tests.mysql_support import MysqlTestMixin
from tests.support import DEADLINE, RedisTestMixin, connect_client, drop, make_settings, wait_until, with_deadline
from tests.test_faults import SteadySender, exactly_once, rows_in_mysql
from tests.support import logged_in_client

FAST = {"websocket": {"rate": "100000", "burst": "100000"},
        "migrate": {"batch": "100", "interval": "0.02", "lock_ttl": "1"}}


# --- the supervisor, on a Clock ------------------------------------------------

class _Transport:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []
        self.ended = False

    def signalProcess(self, name):
        if self.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(name)


class _Reactor:
    """spawnProcess recorded; callWhenRunning at once (the reactor runs)."""

    def __init__(self):
        self.spawned = []   # (protocol, transport, executable, args, childFDs)

    def callWhenRunning(self, f, *args):
        f(*args)

    def spawnProcess(self, proto, executable, args, env=None, path=None, childFDs=None):
        transport = _Transport(1000 + len(self.spawned))
        proto.makeConnection(transport)
        self.spawned.append((proto, transport, executable, args, childFDs))
        return transport

    def end(self, code=0, signal_number=None):
        proto, transport = self.spawned[-1][:2]
        transport.ended = True
        reason = error.ProcessTerminated(code, signal_number) if code or signal_number else error.ProcessDone(0)
        proto.processEnded(Failure(reason))


class SupervisorTests(unittest.SynchronousTestCase):

    def supervisor(self, grace=5.0, start=True):
        self.clock, self.reactor, self.events, self.lowered = task.Clock(), _Reactor(), [], []
        # (the recording reactor's pids are made up: never renice them)
        process = MigratorProcess("/usr/bin/python3", ["-m", "x"], grace, self.reactor, self.clock,
                                  publish=self.events.append, lower=lambda pid, parent: self.lowered.append(pid))
        if start:
            process.startService()
        return process

    def test_the_child_is_the_same_interpreter_on_the_same_ini_with_the_node_id(self):
        process = self.supervisor()
        proto, transport, executable, args, fds = self.reactor.spawned[0]
        self.assertEqual((executable, args), ("/usr/bin/python3", ["/usr/bin/python3", "-m", "x"]))
        self.assertEqual(fds, {0: "w", 1: "r", 2: "r", 3: "r"})
        self.assertEqual(process.pid, 1000)
        self.assertEqual(self.lowered, [1000], "its priority lowered as soon as it exists")
        arguments = child_arguments("etc/imd.ini", "host:8765")
        self.assertEqual(arguments[:2], ["-m", "imd.migrator_child"])
        self.assertEqual(arguments[arguments.index("--config") + 1], os.path.abspath("etc/imd.ini"))
        self.assertEqual(arguments[arguments.index("--roles") + 1], "migrate")
        self.assertEqual(arguments[arguments.index("--node-id") + 1], "host:8765")
        self.assertIn("--metrics-listen=", arguments)   # the parent's port would clash
        self.assertIn("--supervised", arguments)

    def test_a_child_that_dies_is_started_again_with_back_off(self):
        process = self.supervisor()
        delays = []
        for _ in range(8):
            self.reactor.end(signal_number=9)
            self.assertFalse(process.running_child)
            self.assertEqual(process.migrator.process_up, 0.0)
            before = len(self.reactor.spawned)
            waited = 0.0
            while len(self.reactor.spawned) == before:
                self.clock.advance(0.25)
                waited += 0.25
            delays.append(waited)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])
        self.assertEqual((FIRST_RESTART_DELAY, MAX_RESTART_DELAY), (0.5, 30.0))
        self.assertEqual(process.restarts, 8)
        self.assertEqual(process.migrator.process_restarts, 8.0)
        # one that ran a while starts again soon
        self.clock.advance(31)
        self.reactor.end(code=1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.reactor.spawned), 10)

    def test_stop_sends_sigterm_at_once_and_sigkill_after_the_grace(self):
        process = self.supervisor(grace=5.0)
        transport = self.reactor.spawned[0][1]
        process.begin_stop()
        self.assertEqual(transport.signals, ["TERM"])
        stopped = process.stopService()
        self.assertNoResult(stopped)
        self.clock.advance(4.4)
        self.assertEqual(transport.signals, ["TERM"])
        self.clock.advance(0.2)   # half a second before the grace is over
        self.assertEqual(transport.signals, ["TERM", "KILL"])
        self.assertNoResult(stopped)
        self.reactor.end(signal_number=9)
        self.successResultOf(stopped)
        self.clock.advance(60)
        self.assertEqual(len(self.reactor.spawned), 1, "not started again")

    def test_a_child_that_exits_on_sigterm_is_not_killed(self):
        process = self.supervisor(grace=5.0)
        transport = self.reactor.spawned[0][1]
        stopped = process.stopService()
        self.reactor.end(0)
        self.successResultOf(stopped)
        self.clock.advance(10)
        self.assertEqual(transport.signals, ["TERM"])

    def test_cancelling_the_wait_kills_the_child(self):
        process = self.supervisor(grace=5.0)
        transport = self.reactor.spawned[0][1]
        stopped = process.stopService()
        stopped.cancel()
        self.failureResultOf(stopped, defer.CancelledError)
        self.assertEqual(transport.signals, ["TERM", "KILL"])
        self.reactor.end(signal_number=9)   # no AlreadyCalledError

    def test_the_graceful_stop_tells_the_child_first(self):
        order = []

        class Slow(Service):
            def stopService(self):
                super().stopService()
                order.append("drain")
                return task.deferLater(clock, 1.0, lambda: None)
        process = self.supervisor(start=False)
        clock = self.clock
        top = GracefulMultiService(5.0, clock)
        process.setServiceParent(top)   # added first: stopped last
        Slow().setServiceParent(top)
        top.startService()
        transport = self.reactor.spawned[0][1]
        self.patch(transport, "signalProcess", lambda name: order.append(name))
        stopped = top.stopService()
        self.assertEqual(order, ["TERM", "drain"])
        self.reactor.end(0)
        clock.advance(1.0)
        self.successResultOf(stopped)

    def test_figures_are_relayed_and_counters_survive_restarts(self):
        process = self.supervisor()
        proto = self.reactor.spawned[0][0]
        report = {"migrator": {"rows_migrated": 40, "is_leader": True, "oldest_age": 0.5, "queue_length": 3,
                               "mysql_up": True, "rows_skipped": 0, "receipts_migrated": 2, "dead_entries": 0},
                  "push": {"sent": 4}}
        proto.childDataReceived(3, json.dumps(report).encode()[:20])
        proto.childDataReceived(3, json.dumps(report).encode()[20:] + b"\n")
        self.assertEqual((process.migrator.rows_migrated, process.migrator.is_leader, process.push.sent),
                         (40.0, 1.0, 4.0))
        self.reactor.end(signal_number=9)
        self.assertEqual(process.migrator.is_leader, 0.0)   # nobody leads from here while it is down
        self.clock.advance(0.5)
        proto = self.reactor.spawned[1][0]
        proto.childDataReceived(3, b'{"migrator": {"rows_migrated": 5}, "push": {"sent": 1}}\n')
        self.assertEqual((process.migrator.rows_migrated, process.push.sent), (45.0, 5.0))
        text = Metrics(migrator=lambda: process.migrator, push=lambda: process.push).exposition().decode()
        self.assertIn("imd_migrator_rows_migrated_total 45.0", text)
        self.assertIn("imd_migrator_process_up 1.0", text)
        self.assertIn("imd_migrator_process_restarts_total 1.0", text)
        self.assertIn("imd_push_sent_total 5.0", text)

    def test_log_lines_are_the_childs_events_under_system_migrate(self):
        self.supervisor()
        proto = self.reactor.spawned[0][0]
        line = {"time": "2026-01-02T03:04:05.250000+0000", "level": "warn", "namespace": "imd.migrator",
                "text": "migrator: lost the lock; standing by", "n": 3}
        proto.childDataReceived(1, json.dumps(line).encode() + b"\nnot json\n")
        proto.childDataReceived(2, b"imd: config error: x\n")
        warn, plain, stderr = self.events
        self.assertEqual((warn["log_level"], warn["log_namespace"], warn["log_system"], warn["n"]),
                         (LogLevel.warn, "imd.migrator", "migrate", 3))
        self.assertAlmostEqual(warn["log_time"], 1767323045.25)
        self.assertEqual((plain["log_level"], stderr["log_level"]), (LogLevel.info, LogLevel.error))
        text, as_json = io.StringIO(), io.StringIO()
        for event in self.events:
            ImdLogObserver(text, "text")(event)
            ImdLogObserver(as_json, "json")(event)
        lines = text.getvalue().splitlines()
        self.assertRegex(lines[0], r"^\S+ \[migrate\] migrator: lost the lock; standing by$")
        self.assertTrue(lines[1].endswith(" [migrate] not json"), lines[1])
        self.assertTrue(lines[2].endswith(" [migrate] imd: config error: x"), lines[2])
        records = [json.loads(x) for x in as_json.getvalue().splitlines()]
        self.assertEqual([(r["level"], r["process"], r["text"]) for r in records],
                         [("warn", "migrate", "migrator: lost the lock; standing by"),
                          ("info", "migrate", "not json"), ("error", "migrate", "imd: config error: x")])
        self.assertEqual(records[0]["n"], 3)

    def test_a_traceback_stays_with_its_line(self):
        event = relayed_event(json.dumps({"level": "critical", "text": "boom", "traceback": "Traceback:\n  x\n"}),
                              1, 5.0)
        self.assertEqual(event["log_child_text"], "boom\nTraceback:\n  x")
        self.assertEqual(event["log_time"], 5.0)


class PriorityTests(unittest.TestCase):
    """A real child, started as the ws process starts its migrator."""

    async def test_the_child_is_at_niceness_plus_10_from_its_first_line(self):
        # Its start-up (imports: ~0.8 s of CPU on PyPy, at every restart)
        # must not run at the clients' priority: the child prints its
        # niceness before it imports anything of imd.
        lines = []
        ended = defer.Deferred()
        process = MigratorProcess(
            sys.executable, ["-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0), flush=True)"], 5.0,
            reactor, publish=lambda event: lines.append(event["log_child_text"]))
        original = process.child_ended

        def child_ended(child, reason):
            original(child, reason)
            if not ended.called:
                ended.callback(None)
        process.child_ended = child_ended
        process.startService()
        self.addCleanup(process.stopService)
        await with_deadline(ended, what="the child's end")
        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        self.assertEqual(lines, [str(expected)])


class LowerPriorityTests(unittest.SynchronousTestCase):

    def test_twice_is_still_plus_10_and_a_gone_child_is_none(self):
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
            self.assertEqual(lower_priority(child.pid, os.getpid()), expected)
            self.assertEqual(lower_priority(child.pid, os.getpid()), expected)
            self.assertEqual(os.getpriority(os.PRIO_PROCESS, child.pid), expected)
        finally:
            child.communicate(b"")
        self.assertIsNone(lower_priority(child.pid, os.getpid()))


class RelayedFiguresTests(unittest.SynchronousTestCase):

    def test_unknown_figures_are_attribute_errors(self):
        figures = RelayedFigures({"a": 1.0}, ("b",))
        self.assertEqual((figures.a, figures.b), (1.0, 0.0))
        self.assertRaises(AttributeError, getattr, figures, "c")
        self.assertEqual(getattr(figures, "c", "default"), "default")


class ParentLinkTests(unittest.TestCase):

    def test_end_of_stdin_stops_the_reactor_and_figures_go_to_their_pipe(self):
        read_in, write_in = os.pipe()
        read_out, write_out = os.pipe()
        self.addCleanup(os.close, read_out)
        self.addCleanup(os.close, write_out)
        stopped = defer.Deferred()

        class Reactor:
            def addReader(self, reader):
                reactor.addReader(reader)

            def removeReader(self, reader):
                reactor.removeReader(reader)

            def stop(self):
                stopped.callback("stopped")
        clock = task.Clock()
        link = ParentLink(lambda: {"migrator": {"rows_migrated": 7}}, Reactor(), clock, stdin=read_in, out=write_out)
        link.startService()
        self.addCleanup(lambda: link.running and link.stopService())
        self.addCleanup(os.close, read_in)
        clock.advance(1.0)
        self.assertEqual(os.read(read_out, 4096).splitlines(), [b'{"migrator": {"rows_migrated": 7}}'] * 2)
        self.assertNoResult(stopped)
        os.close(write_in)   # the parent exits
        return with_deadline(stopped, what="stop on end of stdin")


class LayoutTests(unittest.SynchronousTestCase):

    def role(self, roles, migrator=None):
        values = {"imd": {"roles": roles}}
        if migrator:
            values["imd"]["migrator"] = migrator
        app = App(make_settings(values), reactor)
        return app, app.migrate_role()

    def test_a_child_only_beside_the_ws_role(self):
        app, service = self.role("ws, http, migrate")
        self.assertIsInstance(service, MigratorProcess)
        self.assertIs(app.migrator_process, service)
        self.assertIs(app.migrator, service.migrator)
        for roles in ("migrate", "http, migrate"):
            app, service = self.role(roles)
            self.assertNotIsInstance(service, MigratorProcess)
            self.assertIsNone(app.migrator_process)
        app, service = self.role("ws, migrate", "inline")
        self.assertNotIsInstance(service, MigratorProcess)
        self.assertEqual(app.migrator.__class__.__name__, "Migrator")

    def test_the_key_is_validated(self):
        self.assertEqual(parse_settings("").imd.migrator, "child")
        with self.assertRaises(ConfigError) as caught:
            parse_settings("[imd]\nmigrator = thread\n", "x.ini")
        self.assertEqual(str(caught.exception), "x.ini: [imd] migrator: expected one of child, inline, got 'thread'")


# --- real daemons ------------------------------------------------------------

_STARTED = re.compile(rb"migrator: started its process \(pid (\d+)\)")


def child_pids(daemon):
    return [int(m.group(1)) for m in (_STARTED.search(line) for line in daemon.lines) if m]


def gone(pid):
    """True once ``pid`` is no process (or a zombie nobody reaped yet)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def niceness(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def line_after(daemon, pattern, start=0):
    """The first line of ``daemon`` from index ``start`` matching ``pattern`` (bytes regex), or None."""
    regex = re.compile(pattern)
    for line in daemon.lines[start:]:
        if regex.search(line):
            return line
    return None


class DefaultLayoutTests(MysqlTestMixin, RedisTestMixin, unittest.TestCase):

    def overrides(self, **more):
        values = dict(FAST, imd={"roles": "ws, http, migrate", "metrics_listen": "tcp:0:interface=127.0.0.1",
                                 "node_id": "layout-node"})
        for section, keys in more.items():
            values[section] = dict(values.get(section, {}), **keys)
        return values

    async def start(self, **more):
        daemon = await start_daemon(self, write_config(self, self.overrides(**more)))
        self.addCleanup(self.kill_children, daemon)
        await self.wait_child_leading(daemon)
        return daemon

    def kill_children(self, daemon):
        """Whatever child the daemon started and left (a test that failed)."""
        for pid in child_pids(daemon):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)

    async def wait_child_leading(self, daemon, after=0):
        def leading():
            pids = child_pids(daemon)
            return pids and len(pids) > after and line_after(
                daemon, rb"\[migrate\] migrator: leading \(lock token [^)]*:%d:" % pids[-1])
        await wait_until(leading, seconds=DEADLINE * 2, what="the child migrator leading")
        return child_pids(daemon)[-1]

    async def test_the_default_layout_migrates_through_its_child(self):
        daemon = await self.start()
        pid = child_pids(daemon)[0]
        self.assertNotEqual(pid, daemon.pid)
        self.assertIn(":%d:" % pid, await self.redis.get("MQ:lock"))   # the child holds the queue lock
        # at niceness +10, in a process group of its own (Ctrl-C reaches the parent only)
        self.assertEqual(niceness(pid), min(niceness(daemon.pid) + 10, 19))
        self.assertEqual(os.getpgid(pid), pid)
        await self.befriend(1, 2)
        alice = await connect_client(daemon.port, "/" + self.token(1))
        self.addCleanup(drop, alice)
        self.assertEqual((await alice.next())["type"], "L")
        for n in range(30):
            alice.send({"id": "m%d" % n, "to": 2, "type": "t", "msg": "through the child %d" % n})
        for _ in range(30):
            self.assertEqual((await alice.next_of("A"))["type"], "A")

        async def migrated():
            return len(await rows_in_mysql(self.mysql_settings)) == 30
        await wait_until(lambda: defer.ensureDeferred(migrated()), what="30 rows in MySQL")
        exactly_once(self, [(1, "m%d" % n) for n in range(30)], await rows_in_mysql(self.mysql_settings))

        # the parent's /metrics and /healthz tell about it
        url = re.search(rb"metrics on (\S+)", line_after(daemon, rb"metrics on ")).group(1).decode()

        async def reported():
            code, body = await http_get(url)
            return samples(body).get("imd_migrator_rows_migrated_total") == 30.0 and body
        body = await wait_until(lambda: defer.ensureDeferred(reported()), what="30 rows on the parent's /metrics")
        figures = samples(body)
        self.assertEqual((figures["imd_migrator_process_up"], figures["imd_migrator_leader"],
                          figures["imd_migrator_process_restarts_total"]), (1.0, 1.0, 0.0))
        code, body = await http_get(url.replace("/metrics", "/healthz"))
        health = json.loads(body)
        self.assertEqual((code, health["migrator"], health["migrator_pid"], health["migrator_restarts"]),
                         (200, "running", pid, 0))
        # the child registered itself, with no metrics of its own
        entries = {json.loads(v)["roles"]: json.loads(v) for v in (await self.redis.hgetall("processes:info")).values()}
        self.assertEqual((entries["migrate"]["pid"], entries["migrate"]["metrics"], entries["migrate"]["node"]),
                         (pid, "", "layout-node"))
        self.assertEqual(entries["http,migrate,ws"]["pid"], daemon.pid)
        # its log lines, in the parent's log with the prefix
        self.assertIsNotNone(line_after(daemon, rb"^\S+ \[migrate\] twistd \S+ \(.*\) starting up\.$"))
        self.assertIsNone(line_after(daemon, rb"^\{"), "the child's JSON lines are rewritten as text")

    async def test_a_child_killed_9_is_started_again_and_nothing_is_lost_or_doubled(self):
        daemon = await self.start()
        first = child_pids(daemon)[0]
        await self.befriend(1, 2)

        def connect():
            return logged_in_client(daemon.port, "/" + self.token(1))
        sender = SteadySender(connect, 1, 2)
        self.addCleanup(sender.close)

        async def kill_the_child():
            mark = len(daemon.lines)
            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: line_after(daemon, rb"migrator: its process \(pid %d\) was killed by signal 9"
                                                % first, mark), what="the supervisor seeing the kill")
        await sender.send(600, at=200, on=kill_the_child)
        second = await self.wait_child_leading(daemon, after=1)
        await sender.send(200)
        await sender.close()
        self.assertNotEqual(first, second)
        self.assertTrue(gone(first))
        self.assertTrue(line_after(daemon, rb"\[imd.migrator_child#warn\] migrator: its process \(pid %d\) was "
                                           rb"killed by signal 9 after [\d.]+s; starting another in 0.5s "
                                           rb"\(restart 1\)" % first))

        async def drained():
            return await self.redis.llen("MQ") == 0 and await self.redis.llen("MQ:processing") == 0
        await wait_until(lambda: defer.ensureDeferred(drained()), seconds=DEADLINE * 3, what="MQ drained")
        exactly_once(self, sender.acked, await rows_in_mysql(self.mysql_settings))
        self.assertEqual(daemon.exit_code, None, "the parent runs on")

    async def test_sigterm_stops_the_child_first_and_the_parent_waits_for_it(self):
        daemon = await self.start(imd={"shutdown_grace": "5"})
        pid = child_pids(daemon)[0]
        daemon.signal(signal.SIGTERM)
        self.assertEqual(await daemon.wait_ended(), 0)
        self.assertTrue(gone(pid))
        output = daemon.output()
        ended = output.index("migrator: its process (pid %d) exited with status 0" % pid)
        self.assertLess(output.index("[migrate] Received SIGTERM, shutting down."), ended)
        self.assertLess(ended, output.index("[imd.shutdown#info] shutdown complete"))   # the parent's
        # it released the lock and its registry entry on its way out
        self.assertEqual((await self.redis.exists("MQ:lock"), await self.redis.zcard("processes")), (0, 0))

    async def test_a_child_that_does_not_stop_is_killed_at_the_grace(self):
        grace = 2.0
        daemon = await self.start(imd={"shutdown_grace": str(grace)})
        pid = child_pids(daemon)[0]
        os.kill(pid, signal.SIGSTOP)   # it cannot act on SIGTERM
        self.addCleanup(lambda: gone(pid) or os.kill(pid, signal.SIGCONT))
        started = reactor.seconds()
        daemon.signal(signal.SIGTERM)
        self.assertEqual(await daemon.wait_ended(grace + DEADLINE), 0)
        took = reactor.seconds() - started
        self.assertTrue(gone(pid))
        self.assertGreaterEqual(took, kill_after(grace) - 0.1)
        self.assertLess(took, grace + 3.0)
        output = daemon.output()
        self.assertIn("migrator: its process (pid %d) did not stop within [imd] shutdown_grace = 2.0s of its "
                      "SIGTERM; sending SIGKILL" % pid, output)
        self.assertIn("migrator: its process (pid %d) was killed by signal 9" % pid, output)
        self.assertNotIn("did not finish within", output)   # seen to its end within the grace

    async def test_the_child_of_a_parent_killed_9_stops_by_itself(self):
        daemon = await self.start()
        pid = child_pids(daemon)[0]
        daemon.signal(signal.SIGKILL)
        await daemon.wait_ended()
        await wait_until(lambda: gone(pid), seconds=DEADLINE, what="the orphaned child exiting")
        # cleanly: the lock and its registry entry are gone (the parent's entry stays until it expires)
        self.assertEqual(await self.redis.exists("MQ:lock"), 0)
        roles = [json.loads(v)["roles"] for v in (await self.redis.hgetall("processes:info")).values()]
        self.assertNotIn("migrate", roles)

    async def test_inline_keeps_the_migrator_in_the_process(self):
        daemon = await start_daemon(self, write_config(self, self.overrides(imd={"migrator": "inline"})))
        await wait_until(lambda: self.redis.exists("MQ:lock"), what="the migrator leading")
        self.assertIn(":%d:" % daemon.pid, await self.redis.get("MQ:lock"))
        self.assertEqual(child_pids(daemon), [])
        self.assertNotIn("[migrate]", daemon.output())


class StartupFailureTests(RedisTestMixin, unittest.TestCase):

    async def test_a_child_that_cannot_start_is_logged_and_retried(self):
        # its ini turns bad after the parent read it: the child fails with
        # one stderr line, which the parent logs as an error, and retries
        path = write_config(self, dict(FAST, imd={"roles": "ws, migrate", "node_id": "retry-node"}))
        with open(path) as f:
            good = f.read()
        daemon = spawn_daemon(self, path)
        self.addCleanup(lambda: [os.kill(p, signal.SIGKILL) for p in child_pids(daemon) if not gone(p)])
        await with_deadline(daemon.listening, DEADLINE * 2, "twistd listening")
        await wait_until(lambda: child_pids(daemon), what="the child started")
        with open(path, "w") as f:
            f.write(good.replace("roles = ws, migrate", "roles = ws, chat"))
        os.kill(child_pids(daemon)[0], signal.SIGKILL)
        await wait_until(lambda: line_after(daemon, rb"\[migrate\] imd: config error: .*unknown role 'chat'"),
                         seconds=DEADLINE * 2, what="the child's config error in the parent's log")
        await wait_until(lambda: line_after(daemon, rb"migrator: its process \(pid \d+\) exited with status 2 "
                                                    rb"after [\d.]+s; starting another in 1s \(restart 2\)"),
                         seconds=DEADLINE * 2, what="the second restart")
        mark = len(daemon.lines)
        with open(path, "w") as f:
            f.write(good)
        await wait_until(lambda: line_after(daemon, rb"\[migrate\] migrator: leading", mark),
                         seconds=DEADLINE * 3, what="a child leading at last")
        self.assertIsNone(daemon.exit_code)

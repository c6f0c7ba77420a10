"""Logs: text or JSON lines, one line per login/logout/refusal with uid, node
and peer, never a wstoken, message text only with [log] messages = true."""

import dataclasses
import io
import json
import signal
import time

import pymysql

from twisted.enterprise import adbapi
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from imd.logs import ImdLogObserver, ThrottledLine, event_as_json, redact
from imd.stores.mysql import MysqlStore, connect_kwargs
from tests.daemon_support import start_daemon, write_config
from tests.mysql_support import MysqlTestMixin
from tests.support import RedisTestMixin, ServerTestMixin, connect_client, drop

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJpZCI6MSwidHlwZSI6IndlYnNvY2tldCJ9.c2lnbmF0dXJlLWJ5dGVz"


class RedactionTests(unittest.SynchronousTestCase):

    def test_tokens_are_replaced(self):
        self.assertEqual(redact("GET /%s HTTP/1.1" % TOKEN), "GET /[token] HTTP/1.1")
        self.assertEqual(redact("/?token=abc.def&x=1"), "/?token=[token]&x=1")
        self.assertEqual(redact("login uid=7 peer=tcp4:127.0.0.1:5"), "login uid=7 peer=tcp4:127.0.0.1:5")

    def event(self, **fields):
        base = {"log_format": "handshake failed for {path}", "log_level": LogLevel.warn,
                "log_namespace": "autobahn", "log_time": time.time(), "path": "/" + TOKEN}
        base.update(fields)
        return base

    def test_json_line(self):
        line = event_as_json(self.event(uid=7, peer="tcp4:127.0.0.1:5", data=object()))
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual((record["level"], record["namespace"], record["uid"]), ("warn", "autobahn", 7))
        self.assertEqual(record["text"], "handshake failed for /[token]")
        self.assertEqual(record["path"], "/[token]")
        self.assertNotIn("data", record)
        self.assertNotIn(TOKEN, line)

    def test_failures_carry_a_redacted_traceback(self):
        try:
            raise ValueError("bad token " + TOKEN)
        except ValueError:
            failure = Failure()
        record = json.loads(event_as_json(self.event(log_failure=failure, log_level=LogLevel.critical)))
        self.assertIn("ValueError", record["traceback"])
        self.assertNotIn(TOKEN, record["traceback"])

    def test_text_observer(self):
        out = io.StringIO()
        ImdLogObserver(out, "text")(self.event())
        self.assertIn("handshake failed for /[token]", out.getvalue())
        self.assertNotIn(TOKEN, out.getvalue())


class ClassicLineTests(unittest.SynchronousTestCase):
    """imd.logs.classic_line writes exactly Twisted's classic line (pure logic)."""

    def test_same_text_as_twisted_for_every_kind_of_event(self):
        from twisted.logger import formatEventAsClassicLogText

        from imd.logs import classic_line

        class Unprintable:
            def __str__(self):
                raise ValueError("no")

        now = time.time()
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        events = [
            dict(log_format="login uid={uid} peer={peer}", uid=5, peer="tcp4:127.0.0.1:1", log_time=now,
                 log_level=LogLevel.info, log_namespace="imd.x"),
            dict(log_format="plain", log_time=now, log_system="ws"),
            dict(log_format="{a!r} {b:.1f} {c[0]} {d.real}", a="x", b=1.25, c=[7], d=3, log_time=now + 0.999),
            dict(log_format="two\nlines {x}", x="and\nthree", log_time=None),
            dict(log_format="{missing}", log_time=now),
            dict(log_format="{f()}", f=lambda: "called", log_time=now),
            dict(log_format="{0}", log_time=now),
            dict(log_format="", log_time=now),
            dict(log_time=now),
            dict(log_format="oops", log_failure=failure, log_time=now),
            dict(log_format="sys", log_system=Unprintable(), log_time=now),
            dict(log_format=b"bytes {x}", x=1, log_time=now),
            dict(log_format="{x}", x=Unprintable(), log_time=now),
        ]
        for event in events:
            self.assertEqual(classic_line(dict(event)), formatEventAsClassicLogText(dict(event)), event)


class ThrottledLineTests(unittest.SynchronousTestCase):
    """Issue 22 item 12: refused connections are one log line per 10 s with
    their count, on both ports (the one mechanism they share)."""

    def setUp(self):
        self.clock = Clock()
        self.lines = []
        self.throttle = ThrottledLine(self.clock, self.lines.append, 10)

    def test_the_first_at_once_then_one_line_per_interval_with_the_count(self):
        self.throttle.note("max_connections")
        self.assertEqual(self.lines, [{"max_connections": 1}])
        for _ in range(5000):
            self.throttle.note("max_connections")
        self.clock.advance(4)
        self.throttle.note("max_per_address")
        self.assertEqual(len(self.lines), 1)
        self.clock.advance(6)   # 10 s after the first line
        self.assertEqual(self.lines[1:], [{"max_connections": 5000, "max_per_address": 1}])
        self.clock.advance(60)   # nothing refused since: nothing written
        self.assertEqual(len(self.lines), 2)
        self.throttle.note()   # a quiet interval has passed: at once again
        self.assertEqual(self.lines[2:], [{"": 1}])

    def test_stop_writes_what_is_counted_and_leaves_no_timer(self):
        self.throttle.note()
        self.throttle.note()
        self.throttle.stop()
        self.assertEqual(self.lines, [{"": 1}, {"": 1}])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _Captured:
    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self):
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events]


class MessageTextNotLoggedTests(ServerTestMixin, unittest.TestCase):

    async def test_message_text_is_not_logged_by_default(self):
        captured = _Captured(self)
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        reply = await self.ask(alice, {"id": "x", "to": 2, "type": "t", "msg": "very private words"})
        self.assertEqual(reply["type"], "A")
        await bob.next()
        self.assertFalse([t for t in captured.texts() if "very private words" in t])
        self.assertTrue([t for t in captured.texts() if t.startswith("login uid=1 ")])


class MessageTextLoggedTests(ServerTestMixin, unittest.TestCase):
    overrides = {"log": {"messages": "true"}}

    async def test_message_text_is_logged_when_asked(self):
        captured = _Captured(self)
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        await self.ask(alice, {"id": "x", "to": 2, "type": "t", "msg": "words for the log"})
        await bob.next()
        lines = [t for t in captured.texts() if "words for the log" in t]
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("message uid=1 to=2 "), lines[0])


class DaemonJsonLogTests(RedisTestMixin, unittest.TestCase):
    """``twistd -n imd`` with ``[log] format = json``: what an operator's log shipper reads."""

    async def test_json_lines_without_tokens(self):
        daemon = await start_daemon(self, write_config(self, {"log": {"format": "json"}}))
        await self.befriend(1, 2)
        tokens = [self.token(1), self.token(2), self.token(3, now=time.time() - 600)]
        alice = await connect_client(daemon.port, "/" + tokens[0])
        bob = await connect_client(daemon.port, "/?token=" + tokens[1])
        late = await connect_client(daemon.port, "/" + tokens[2])  # expired: refused
        for client in (alice, bob, late):
            await client.next()
        await late.wait_closed()
        alice.send({"id": "m", "to": 2, "type": "t", "msg": "text that stays private"})
        self.assertEqual((await alice.next())["type"], "A")
        await bob.next()
        await drop(bob)
        daemon.signal(signal.SIGTERM)
        await alice.wait_closed()
        self.assertEqual(await daemon.wait_ended(), 0)

        everything = daemon.output() + daemon.stderr.decode("utf-8", "replace")
        for token in tokens:
            for part in token.split("."):
                self.assertNotIn(part, everything)
        self.assertNotIn("text that stays private", everything)
        records = [json.loads(line) for line in daemon.lines if line.strip()]
        for record in records:
            self.assertTrue({"time", "level", "namespace", "text"} <= set(record), record)

        def lines_starting(prefix):
            return [r for r in records if r["text"].startswith(prefix)]
        logins, refusals, logouts = (lines_starting("login uid="), lines_starting("login refused"),
                                     lines_starting("logout uid="))
        self.assertEqual(sorted(r["uid"] for r in logins), [1, 2])
        self.assertEqual(len(refusals), 1)
        self.assertEqual(sorted(r["uid"] for r in logouts), [1, 2])
        for record in logins + refusals + logouts:
            self.assertTrue(record["peer"].startswith("tcp4:127.0.0.1:"), record)
            self.assertTrue(record["node"], record)
        self.assertIn("expired", refusals[0]["text"])
        self.assertEqual({r["uid"]: r["code"] for r in logouts}[1], 1001)


class CleanStopLogTests(MysqlTestMixin, RedisTestMixin, unittest.TestCase):
    """Issue 12 item 7: a planned stop (SIGTERM) logs no warning."""

    async def test_sigterm_logs_no_warning(self):
        # hs256, as in production: dev mode warns at every start (issue 22 item 15);
        # a database with its schema, as in production (MQ:seq is raised from it)
        overrides = {"imd": {"roles": "ws, http, migrate", "metrics_listen": "tcp:0:interface=127.0.0.1"},
                     "http": {"auth": "hs256:" + "s" * 32}, "log": {"format": "json"},
                     "mysql": {"database": self.mysql_settings.database}}
        daemon = await start_daemon(self, write_config(self, overrides))
        await self.befriend(1, 2)
        alice = await connect_client(daemon.port, "/" + self.token(1))
        bob = await connect_client(daemon.port, "/" + self.token(2))
        for client in (alice, bob):
            self.assertEqual((await client.next())["type"], "L")
        alice.send({"id": "m", "to": 2, "type": "t", "msg": "before the stop"})
        self.assertEqual((await alice.next())["type"], "A")
        await bob.next()
        daemon.signal(signal.SIGTERM)
        for client in (alice, bob):
            self.assertEqual((await client.wait_closed())[0], 1001)
        self.assertEqual(await daemon.wait_ended(), 0)
        records = [json.loads(line) for line in daemon.lines if line.strip()]
        self.assertTrue([r for r in records if r["text"] == "shutdown complete"])
        loud = [r["text"] for r in records if r["level"] not in ("debug", "info")]
        self.assertEqual(loud, [])
        self.assertEqual(daemon.stderr, b"")


class LostMysqlLogTests(MysqlTestMixin, unittest.TestCase):
    """Issue 12 item 7: when MySQL cuts a connection in the middle of a
    transaction, adbapi logs "Rollback failed" with a traceback; in imd's
    log that is one warning line (imd.stores.mysql retries and reports)."""

    async def test_a_transaction_cut_off_by_mysql_is_one_warning_line(self):
        settings = dataclasses.replace(self.mysql_settings, pool_min=1, pool_max=1)
        store = MysqlStore(settings)
        store.startService()
        self.addCleanup(store.stopService)
        out = io.StringIO()
        observer = ImdLogObserver(out, "text")
        captured = _Captured(self)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        killed = []

        def cut_off(cursor):
            cursor.execute("SELECT CONNECTION_ID()")
            if not killed:   # the retry goes through
                killed.append(cursor.fetchone()[0])
                killer = pymysql.connect(**connect_kwargs(settings, database=False))
                try:
                    killer.cursor().execute("KILL %d" % killed[0])
                finally:
                    killer.close()
                cursor.execute("SELECT 1")   # the server has closed this connection
            return "done"
        self.assertEqual(await store.run_interaction(cut_off), "done")
        # adbapi's own event, as twisted.python.log.err makes it
        self.assertIn("Rollback failed", [e.get("why") for e in captured.events if e.get("isError")])
        self.flushLoggedErrors(pymysql.err.InterfaceError, adbapi.ConnectionLost)
        lines = out.getvalue().splitlines()
        self.assertNotIn("Traceback", out.getvalue())
        rollback = [line for line in lines if "rollback failed" in line]
        self.assertEqual(len(rollback), 1, lines)
        self.assertIn("[imd.stores.mysql#warn] mysql: rollback failed after a lost connection: InterfaceError",
                      rollback[0])
        self.assertLessEqual(len(lines), len(captured.events), lines)   # at most a line per event

"""Hostile input and acting as someone else (issue 8).

Already covered elsewhere, referenced from docs/reliability.md: forged
signature, alg none, HS256 key confusion, expired, wrong type, replay
(tests/test_login.py); spoofed ``from`` (tests/test_messages.py); ``T`` on
someone else's order and ``O`` on a stranger (tests/test_platform.py);
``H`` of other people's conversations (tests/test_history.py); the parser
under hypothesis (tests/test_protocol.py).  Here: tokens not yet valid,
forged history cursors, hypothesis over every handler through a real
connection, and the WebSocket fuzzer against a real daemon.
"""

import json
import os
import sys
import time

from twisted.internet import utils
from twisted.trial import unittest

from imd.handlers.history import encode_cursor
from tests.daemon_support import start_daemon, write_config
from tests.test_faults import report
from tests.test_limits import answer_to, upgrade_request
from tests.mysql_support import MysqlTestMixin, query
from tests.support import ServerTestMixin, connect_client, drop, redis_db

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG = os.environ.get("IMD_FAULTS") == "long"


def run_script(path, *args, timeout):
    """(exit code, the JSON line it printed, its whole output) of a bench script."""
    d = utils.getProcessOutputAndValue(sys.executable, [os.path.join(ROOT, path)] + [str(a) for a in args],
                                       env=dict(os.environ), path=ROOT)

    def parsed(result):
        out, err, code = result
        lines = [line for line in out.decode("utf-8", "replace").splitlines() if line.startswith("{")]
        figures = json.loads(lines[-1]) if lines else {}
        return code, figures, out.decode("utf-8", "replace") + err.decode("utf-8", "replace")
    from twisted.internet import reactor
    return d.addTimeout(timeout, reactor).addCallback(parsed)


class TokenTimeTests(ServerTestMixin, unittest.TestCase):

    async def refused(self, token, why):
        client = await self.connect("/" + token)
        packet = await client.next()
        self.assertEqual(packet["type"], "C")
        self.assertIn(why, packet["msg"])
        self.assertEqual((await client.wait_closed())[0], 4001)

    async def test_not_yet_valid_token_is_refused(self):
        await self.refused(self.token(1, nbf=int(time.time()) + 60), "not yet valid")

    async def test_token_issued_in_the_future_is_refused(self):
        await self.refused(self.token(1, iat=int(time.time()) + 600), "future")

    async def test_nbf_that_is_not_a_number_is_refused(self):
        await self.refused(self.token(1, nbf="now"), "not yet valid")

    async def test_nbf_in_the_past_is_fine(self):
        client = await self.connect("/" + self.token(1, nbf=int(time.time()) - 5))
        self.assertEqual((await client.next())["type"], "L")


class ForgedCursorTests(MysqlTestMixin, ServerTestMixin, unittest.TestCase):

    async def test_a_forged_cursor_never_reads_other_peoples_messages(self):
        await self.befriend(1, 2)
        await self.befriend(3, 2)
        alice, bob = await self.login(1), await self.login(2)
        for n in range(3):
            self.assertEqual((await self.ask(alice, {"id": "s%d" % n, "to": 2, "type": "t", "msg": "secret"}))["type"],
                             "A")
        mallory = await self.login(3)
        # cursors naming alice's conversation with bob, from the start of time
        for position, with_uid in (((0, 0), 2), ((0, 0), 1), ((0, 1), None)):
            reply = await self.ask(mallory, {"id": "h", "to": 0, "type": "H",
                                             "msg": {"after": encode_cursor(position, with_uid, 500)}})
            self.assertEqual(reply["type"], "H")
            self.assertEqual(reply["msg"], [], "a forged cursor read someone else's messages")
        reply = await self.ask(mallory, {"id": "h2", "to": 0, "type": "H", "msg": {"since": 0, "with": 1}})
        self.assertEqual(reply["msg"], [])
        # bob sees them: the messages exist
        reply = await self.ask(bob, {"id": "h3", "to": 0, "type": "H", "msg": {"since": 0, "with": 1}})
        self.assertEqual(len(reply["msg"]), 3)


class HandlerPropertyTests(MysqlTestMixin, ServerTestMixin, unittest.TestCase):
    overrides = {"websocket": {"rate": "100000", "burst": "100000", "max_errors": "1000000",
                               "history_rate": "100000", "history_burst": "100000"},
                 "site": {"min_interval": "0"}}

    async def test_every_handler_answers_any_argument_once_and_within_the_contract(self):
        me = 500
        await self.befriend(me, me + 1)
        await self.befriend(1, 2)
        # someone else's conversation exists, for H to leak if it could
        alice = await self.login(1)
        await self.ask(alice, {"id": "other", "to": 2, "type": "t", "msg": "not for 500"})
        await query(self.mysql_settings, ("INSERT INTO orders (id, customer_id, courier_id) VALUES "
                                          "(41, 1, 2), (42, %s, NULL), (43, %s, %s)", (me + 1, me + 1, me)))
        examples = 3000 if LONG else 400
        code, figures, output = await run_script(
            "bench/faults/handler_properties.py", "--port", self.server.port, "--uid", me,
            "--redis", "redis://127.0.0.1:6379/%d" % redis_db(), "--examples", examples,
            timeout=600 if LONG else 60)
        report("hypothesis over every handler (real connection)", **figures)
        self.assertEqual(code, 0, output[-3000:])
        self.assertTrue(figures["ok"])
        self.assertGreaterEqual(figures["packets"], examples)
        outcomes = figures["outcomes"]
        for seen in ("t A", "t E:bad_packet", "t E:not_friend", "i A", "S A", "O E:forbidden", "O O", "H H",
                     "T A", "T E:forbidden", "T E:not_found"):
            self.assertIn(seen, outcomes, "the examples never reached %s: %s" % (seen, outcomes))


class FuzzDaemonTests(ServerTestMixin, unittest.TestCase):
    """bench/fuzz_ws.py against a real ``twistd -n imd``: afterwards a normal
    client is served, no descriptor leaked and memory came back down."""

    async def test_fuzzed_daemon_still_serves_and_gives_its_memory_back(self):
        config = write_config(self, {"websocket": {"open_handshake_timeout": "3"}})
        daemon = await start_daemon(self, config)
        seconds = 60 if LONG else 6
        code, figures, output = await run_script(
            "bench/fuzz_ws.py", "--port", daemon.port, "--pid", daemon.pid,
            "--redis", "redis://127.0.0.1:6379/%d" % redis_db(), "--seconds", seconds,
            timeout=seconds + 60)
        report("websocket fuzzer against twistd", **figures)
        self.assertEqual(code, 0, output[-3000:])
        self.assertEqual(figures["normal_client_after"], "ok")
        self.assertGreaterEqual(figures["cases"], 50)
        self.assertNotIn("Traceback", daemon.output())
        self.assertNotIn("Unhandled", daemon.output())
        # and through the test's own client too
        client = await connect_client(daemon.port, "/" + self.token(7))
        self.assertEqual((await client.next())["type"], "L")
        await drop(client)


class WebSocketPortAnswerTests(ServerTestMixin, unittest.TestCase):
    """What the ws port answers before a WebSocket opens (issue 13 items 6 and 11)."""

    overrides = {"http": {"cors_origins": "https://app.example"}}

    async def test_a_plain_get_gets_a_short_json_426(self):
        status, headers, body = await answer_to(self.server.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertEqual(status, 426)
        self.assertEqual(headers.get("upgrade"), "websocket")
        self.assertTrue(headers.get("content-type", "").startswith("application/json"), headers)
        self.assertIn("error", json.loads(body))
        self.assertLess(len(body), 200, body)

    async def test_no_answer_carries_a_version_banner(self):
        requests = {
            "plain GET": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            "POST": b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.0": b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
            "garbage": b"hello\r\n\r\n",
            "no key": upgrade_request("/").replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
            "foreign origin": upgrade_request("/", [("Origin", "https://evil.example")]),
            "headers over 8 KiB": upgrade_request("/", [("X-Pad", "x" * 9000)]),
        }
        for what, request in requests.items():
            status, headers, body = await answer_to(self.server.port, request)
            self.assertGreaterEqual(status, 400, what)
            self.assertNotIn("server", headers, what)
            self.assertIn("error", json.loads(body), what)
        status, headers, _ = await answer_to(self.server.port, upgrade_request("/" + self.token(1)), closes=False)
        self.assertEqual(status, 101)
        self.assertNotIn("server", headers)

    async def test_a_browser_origin_not_in_cors_origins_is_refused_with_403(self):
        for origin in ("https://evil.example", "https://app.example.evil.example", "null"):
            status, headers, body = await answer_to(
                self.server.port, upgrade_request("/" + self.token(1), [("Origin", origin)]))
            self.assertEqual(status, 403, (origin, body))
            self.assertTrue(headers.get("content-type", "").startswith("application/json"), headers)
            self.assertIn("origin", json.loads(body)["error"])
        self.assertEqual(await self.redis.zcard("dev:1"), 0, "nobody logged in")

    async def test_a_listed_origin_and_no_origin_are_accepted(self):
        status, _, _ = await answer_to(self.server.port,
                                       upgrade_request("/" + self.token(1), [("Origin", "https://app.example")]),
                                       closes=False)
        self.assertEqual(status, 101)
        client = await self.login(2)  # Autobahn's client sends no Origin: an app, not a browser
        self.assertEqual((await self.ask(client, {"id": 1, "to": 0, "type": "P"}))["type"], "P")


class AnyOriginTests(ServerTestMixin, unittest.TestCase):
    """Without [http] cors_origins the ws port takes any Origin, "null" too
    (a page opened from a file)."""

    async def test_any_origin_is_accepted_when_cors_origins_is_empty(self):
        for uid, origin in enumerate(("https://elsewhere.example", "null", "http://127.0.0.1:8766"), 1):
            status, _, body = await answer_to(self.server.port,
                                              upgrade_request("/" + self.token(uid), [("Origin", origin)]),
                                              closes=False)
            self.assertEqual(status, 101, (origin, body))

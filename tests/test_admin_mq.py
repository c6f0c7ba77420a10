"""``imd-admin mq``: status, and MQ:dead listed, replayed (exactly once) and
dropped (only when confirmed), against the real Redis and MariaDB."""

import io
import json
import os
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.trial import unittest

from imd.admin.console import AdminError, build_parser
from imd.admin.mq import format_age, show_entry
from imd.app import App
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import MysqlTestMixin
from tests.support import DEADLINE, RedisTestMixin, make_settings, settings_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = os.path.join(os.path.dirname(sys.executable), "imd-admin")


def stored(packet_id, ts, sender=1, to=2, msg="hello"):
    return json.dumps({"id": packet_id, "from": sender, "to": to, "type": "t", "msg": msg, "ts": ts},
                      separators=(",", ":"))


class WordingTests(unittest.SynchronousTestCase):

    def test_ages(self):
        self.assertEqual([format_age(s) for s in (0.42, 62, 7500, 3 * 86400 + 7300, -1)],
                         ["0.4 s", "1 min 2 s", "2 h 5 min", "3 d 2 h", "0.0 s"])

    def test_entries_stay_on_one_line(self):
        self.assertEqual(show_entry("a\nb\x00c"), "a\\x0ab\\x00c")
        self.assertEqual(show_entry(b"\xff"), "\ufffd")
        self.assertEqual(show_entry("a\udcff"), "a\ufffd")   # a byte that is not UTF-8, as imd.stores.redis reads it
        long = "x" * 1000
        self.assertEqual(show_entry(long), "x" * 300 + "... (1000 bytes)")
        self.assertEqual(show_entry(long, full=True), long)


class AdminMixin(RedisTestMixin):
    """Runs imd-admin commands in this process against an App of the test settings."""

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        self.app = yield self.started_app()

    @defer.inlineCallbacks
    def started_app(self):
        app = App(make_settings(), reactor)
        app.redis_client.startService()
        self.addCleanup(app.redis_client.stopService)
        yield app.redis_client.wait_connected(DEADLINE)
        return app

    @defer.inlineCallbacks
    def admin(self, *argv, app=None, answer=None):
        args = build_parser().parse_args(list(argv))
        if answer is not None:
            args.ask = lambda prompt: defer.succeed(answer)
        out = io.StringIO()
        yield args.run(app or self.app, args, out)
        return out.getvalue()


class StatusTests(AdminMixin, unittest.TestCase):

    async def test_everything_empty(self):
        self.assertEqual(await self.admin("mq", "status"),
                         "MQ              0 entries\n"
                         "MQ:processing   0 entries\n"
                         "MQ:dead         0 entries\n"
                         "MQ:lock         free: no migrator leads\n")

    async def test_lengths_ages_and_leader(self):
        now_ms = int(reactor.seconds() * 1000)
        await self.redis.lpush("MQ", stored("old", now_ms - 125000))
        await self.redis.lpush("MQ", stored("new", now_ms))
        await self.redis.lpush("MQ:processing", stored("p", now_ms - 3 * 3600 * 1000))
        await self.redis.lpush("MQ:dead", "not json")
        await self.redis.set("MQ:lock", "host:42:abc", expire=10)
        lines = (await self.admin("mq", "status")).splitlines()
        self.assertRegex(lines[0], r"^MQ +2 entries, oldest stored 2 min [56] s ago$")
        self.assertRegex(lines[1], r"^MQ:processing +1 entry \(a batch being inserted\), oldest stored 3 h 0 min ago$")
        self.assertEqual(lines[2], "MQ:dead         1 entry (imd-admin mq dead list)")
        self.assertRegex(lines[3], r"^MQ:lock +held by host:42:abc \(expires in (9|10)\.\d s\)$")

    async def test_an_unreadable_oldest_entry(self):
        await self.redis.lpush("MQ", "garbage")
        self.assertIn("MQ              1 entry, oldest stored (not a readable message)",
                      await self.admin("mq", "status"))


class DeadListTests(AdminMixin, unittest.TestCase):

    async def test_oldest_first_with_a_limit(self):
        self.assertEqual(await self.admin("mq", "dead", "list"), "MQ:dead is empty\n")
        for entry in ("first", "second\nline", "third"):
            await self.redis.lpush("MQ:dead", entry)
        self.assertEqual(await self.admin("mq", "dead", "list"),
                         "MQ:dead: 3 entries, oldest first\n1  first\n2  second\\x0aline\n3  third\n")
        self.assertEqual(await self.admin("mq", "dead", "list", "--limit", "1"),
                         "MQ:dead: 3 entries, oldest first\n1  first\n... and 2 more (--limit N shows more)\n")


class ReplayTests(AdminMixin, MysqlTestMixin, unittest.TestCase):

    async def test_replayed_twice_and_at_once_is_stored_once(self):
        entry = stored("r1", int(reactor.seconds() * 1000), msg="came back")
        await self.redis.lpush("MQ:dead", entry)
        other = await self.started_app()
        # two operators at once, then one again
        outputs = await defer.gatherResults([self.admin("mq", "dead", "replay"),
                                             self.admin("mq", "dead", "replay", app=other)])
        outputs.append(await self.admin("mq", "dead", "replay"))
        self.assertEqual(sorted(outputs), [
            "mq dead replay: MQ:dead is empty; nothing moved\n",
            "mq dead replay: MQ:dead is empty; nothing moved\n",
            "mq dead replay: moved 1 entry back to MQ; 0 entries left in MQ:dead\n"])
        self.assertEqual(await self.redis.lrange("MQ", 0, -1), [entry])
        migrator = start_migrator(self, self.app.settings)
        await with_drain(migrator)
        self.assertEqual([(f, m) for f, m, _ in await self.message_rows()], [(1, "r1")])
        self.assertEqual(await self.admin("mq", "dead", "replay"), "mq dead replay: MQ:dead is empty; nothing moved\n")
        self.assertEqual(len(await self.message_rows()), 1)

    async def test_the_oldest_go_first_and_newer_ones_stay(self):
        for name in ("a", "b", "c"):
            await self.redis.lpush("MQ:dead", name)
        await self.redis.lpush("MQ", "queued")
        self.assertEqual(await self.admin("mq", "dead", "replay", "--limit", "2"),
                         "mq dead replay: moved 2 entries back to MQ; 1 entry left in MQ:dead\n")
        # the tail of MQ is claimed next: the oldest dead entry is last
        self.assertEqual(await self.redis.lrange("MQ", 0, -1), ["queued", "b", "a"])
        self.assertEqual(await self.redis.lrange("MQ:dead", 0, -1), ["c"])


class DropTests(AdminMixin, unittest.TestCase):

    async def fill(self, *entries):
        for entry in entries:
            await self.redis.lpush("MQ:dead", entry)

    async def test_asks_and_a_no_keeps_everything(self):
        await self.fill("a", "b")
        await self.assertFailure(self.admin("mq", "dead", "drop", answer="n"), AdminError)
        await self.assertFailure(self.admin("mq", "dead", "drop", answer=""), AdminError)
        self.assertEqual(await self.redis.llen("MQ:dead"), 2)

    async def test_a_yes_drops_the_oldest(self):
        await self.fill("a", "b", "c")
        asked = []

        def ask(prompt):
            asked.append(prompt)
            return defer.succeed("y")
        args = build_parser().parse_args(["mq", "dead", "drop", "--limit", "2"])
        args.ask = ask
        out = io.StringIO()
        await args.run(self.app, args, out)
        self.assertEqual(asked, ["Drop the 2 oldest of the 3 entries of MQ:dead? They cannot be recovered. [y/N] "])
        self.assertEqual(out.getvalue(), "mq dead drop: dropped 2 entries\n")
        self.assertEqual(await self.redis.lrange("MQ:dead", 0, -1), ["c"])

    async def test_yes_flag_and_empty(self):
        await self.fill("a")
        self.assertEqual(await self.admin("mq", "dead", "drop", "--yes"), "mq dead drop: dropped 1 entry\n")
        self.assertEqual(await self.admin("mq", "dead", "drop", "--yes"),
                         "mq dead drop: MQ:dead is empty; nothing dropped\n")


class CommandLineTests(RedisTestMixin, unittest.TestCase):
    """The installed program: exit status and one-line errors."""

    def run_admin(self, *argv):
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(settings_text())
        return subprocess.run([ADMIN, "--config", config] + list(argv), cwd=ROOT, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)

    async def test_drop_without_a_terminal_needs_yes(self):
        await self.redis.lpush("MQ:dead", "x")
        result = self.run_admin("mq", "dead", "drop")
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertEqual(result.stderr,
                         "imd-admin: not confirmed (stdin is not a terminal): pass --yes to drop without asking\n")
        self.assertEqual(await self.redis.llen("MQ:dead"), 1)
        result = self.run_admin("mq", "dead", "drop", "--yes")
        self.assertEqual((result.returncode, result.stdout), (0, "mq dead drop: dropped 1 entry\n"))

    def test_bad_arguments_are_one_usage_line(self):
        result = self.run_admin("mq", "dead", "replay", "--limit", "-3")
        self.assertEqual(result.returncode, 2)
        self.assertIn("expected a whole number, 0 or more, got '-3'", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

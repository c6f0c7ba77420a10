"""Progress of imd-admin's long commands: a tqdm bar on a terminal (checked
in a pseudo-terminal), plain lines anywhere else; and the times operators
type for --since and --until."""

import io
import re

from twisted.internet import threads
from twisted.trial import unittest

from imd.progress import BarProgress, PlainProgress, progress
from imd.timespec import iso, parse_time
from tests.admin_support import AdminAppMixin, run_in_terminal
from tests.test_retention import insert_aged

NOW = 1_764_537_300.0   # 2025-11-30T21:15:00Z


class PlainProgressTests(unittest.SynchronousTestCase):

    def test_a_line_every_interval_and_one_at_the_end(self):
        now = [100.0]
        out = io.StringIO()
        bar = PlainProgress("export", 5000, "messages", out, clock=lambda: now[0], every=10)
        for _ in range(4):
            now[0] += 6
            bar.update(500)
        now[0] += 1
        bar.close()
        self.assertEqual(out.getvalue().splitlines(), [
            "export: 1,000/5,000 messages (20.0%), 83 messages/s, 0:48 left",
            "export: 2,000/5,000 messages (40.0%), 83 messages/s, 0:36 left",
            "export: 2,000 messages in 0:25 (80 messages/s)"])

    def test_without_a_total(self):
        now = [0.0]
        out = io.StringIO()
        bar = PlainProgress("scan", None, "keys", out, clock=lambda: now[0], every=1)
        now[0] = 2.0
        bar.update(10)
        bar.close()
        self.assertEqual(out.getvalue().splitlines(), ["scan: 10 keys, 5 keys/s", "scan: 10 keys in 0:02 (5 keys/s)"])

    def test_an_estimate_ends_at_its_total(self):
        out = io.StringIO()
        bar = PlainProgress("reconcile", 1000, "keys", out, clock=lambda: 0.0)
        bar.update(300)
        bar.close(complete=True)
        self.assertEqual(out.getvalue(), "reconcile: 1,000 keys in 0:00 (- keys/s)\n")

    def test_chosen_by_the_stream(self):
        self.assertIsInstance(progress("x", 1, "rows", io.StringIO()), PlainProgress)
        bar = progress("x", 1, "rows", io.StringIO(), tty=True)
        self.assertIsInstance(bar, BarProgress)
        bar.close()

    def test_the_bar(self):
        out = io.StringIO()
        bar = BarProgress("retention purge", 4000, "messages", out)
        bar.update(1000)
        bar.close(complete=True)
        text = out.getvalue()
        self.assertIn("\r", text)
        self.assertRegex(text, r"retention purge: 100%\|[^|]+\| 4000/4000 \[")


class TimeTests(unittest.SynchronousTestCase):

    def at(self, text):
        return iso(parse_time(text).at(NOW))

    def test_formats(self):
        self.assertEqual(self.at("now"), "2025-11-30T21:15:00.000Z")
        self.assertEqual([self.at(t) for t in ("90s", "15m", "2h", "-2h", "1.5d")],
                         ["2025-11-30T21:13:30.000Z", "2025-11-30T21:00:00.000Z", "2025-11-30T19:15:00.000Z",
                          "2025-11-30T19:15:00.000Z", "2025-11-29T09:15:00.000Z"])
        self.assertEqual([self.at(t) for t in ("1764537300", "1764537300.25", "1764537300250")],
                         ["2025-11-30T21:15:00.000Z", "2025-11-30T21:15:00.250Z", "2025-11-30T21:15:00.250Z"])
        self.assertEqual([self.at(t) for t in ("2025-11-30", "2025-11-30T21:15", "2025-11-30T21:15:07.250Z",
                                               "2025-11-30 22:15:07+01:00")],
                         ["2025-11-30T00:00:00.000Z", "2025-11-30T21:15:00.000Z", "2025-11-30T21:15:07.250Z",
                          "2025-11-30T21:15:07.000Z"])

    def test_not_a_time(self):
        for bad in ("yesterday", "-1w", "2025-13-01", "", "1h ago"):
            with self.assertRaises(ValueError) as caught:
                parse_time(bad)
            self.assertIn("expected ISO 8601", str(caught.exception))


# tqdm's bar: "WHAT: 100%|█████| 1200/1200 [00:00<00:00, 9.9k messages/s]"
_BAR = re.compile(rb"retention purge: +\d+%\|[^|]*\| *\d+/1200 \[")


class TerminalTests(AdminAppMixin, unittest.TestCase):

    async def test_a_bar_on_a_terminal(self):
        await threads.deferToThread(insert_aged, self.mysql_settings, 1200, 40, "old")
        terminal, code = await run_in_terminal(self, self.config_file(), "retention", "purge", "--older-than", "30")
        self.assertEqual(code, 0, terminal.output)
        self.assertRegex(terminal.output, _BAR)
        self.assertIn(b"100%", terminal.output)
        self.assertIn(b"\r", terminal.output.split(b"retention purge: deleted")[0])
        self.assertIn(b"retention purge: deleted 1,200 messages", terminal.output)

    async def test_a_bar_on_a_terminal_of_no_size(self):
        # a pty nobody sized (script(1), some CI runners): tqdm alone draws nothing there
        await threads.deferToThread(insert_aged, self.mysql_settings, 1200, 40, "old")
        terminal, code = await run_in_terminal(self, self.config_file(), "retention", "purge", "--older-than", "30",
                                               size=None)
        self.assertEqual(code, 0, terminal.output)
        self.assertRegex(terminal.output, _BAR)

    async def test_plain_lines_elsewhere(self):
        await threads.deferToThread(insert_aged, self.mysql_settings, 1200, 40, "old")
        out, err, code = await self.run_admin("retention", "purge", "--older-than", "30")
        self.assertEqual(code, 0, err)
        self.assertRegex(err.decode("utf-8"), r"^retention purge: 1,200 messages in 0:\d\d \([\d,]+ messages/s\)\n$")
        self.assertRegex(out.decode("utf-8"), r"^retention purge: deleted 1,200 messages older than 30 days")

    async def test_export_bar_on_stderr_only(self):
        await threads.deferToThread(insert_aged, self.mysql_settings, 50, 1, "m")
        out, err, code = await self.run_admin("export", "--user", "1")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out.splitlines()), 50)
        lines = err.decode("utf-8").splitlines()
        self.assertRegex(lines[0], r"^export: 50 messages in 0:\d\d \([\d,]+ messages/s\)$")
        self.assertRegex(lines[1], r"^export: user 1, 1970-01-01T00:00:00.000Z \.\. now: 50 messages$")

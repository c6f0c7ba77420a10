"""The repository stands alone: no tracked file points at a file outside it,
every markdown table in docs/ is one table, and etc/imd.ini describes what
each key does now.  Pure: reads files, no servers."""

import os
import re
import subprocess

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Paths that exist only on a development machine: the contract and figures
# kept beside the checkout, the original design files, absolute work paths.
# Written with [/] and \. so that this file does not match itself.
OUTSIDE = re.compile(r"shared[/]|seed[/]|PROTOCOL\.md|PERFORMANCE\.md|[/]work[/]|\.\.[/]shared")
_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def tracked_files():
    """Paths (relative to the checkout) of every file git tracks."""
    out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], capture_output=True, check=True).stdout
    return [name for name in out.decode("utf-8").split("\0") if name]


def outside_references(name, text):
    """``["<file>:<line>: <text>"]`` for each line that names a path outside the repository."""
    return ["%s:%d: %s" % (name, number, line.strip())
            for number, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]


def split_tables(name, text):
    """``["<file>:<line>"]`` for each run of table rows that has no header:
    the rest of a table cut off by a blank line."""
    problems, fenced = [], False
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        starts = line.startswith("|") and (number == 1 or not lines[number - 2].startswith("|"))
        if fenced or not starts:
            continue
        following = lines[number] if number < len(lines) else ""
        if not _SEPARATOR.match(following.strip()):
            problems.append("%s:%d: %s" % (name, number, line.strip()))
    return problems


class StandAloneTests(unittest.SynchronousTestCase):

    def setUp(self):
        if not os.path.isdir(os.path.join(ROOT, ".git")) and not os.path.isfile(os.path.join(ROOT, ".git")):
            raise unittest.SkipTest("not a git checkout: the tracked files are unknown")

    def read(self, name):
        with open(os.path.join(ROOT, name), "rb") as f:
            data = f.read()
        return None if b"\0" in data else data.decode("utf-8", "replace")

    def test_no_tracked_file_points_outside_the_repository(self):
        found = []
        for name in tracked_files():
            text = self.read(name)
            if text is not None:
                found += outside_references(name, text)
        self.assertEqual([], found)

    def test_every_markdown_table_in_docs_is_one_table(self):
        found = []
        for name in tracked_files():
            if name.endswith(".md") and (name.startswith("docs/") or "/" not in name):
                found += split_tables(name, self.read(name))
        self.assertEqual([], found)

    def test_the_example_config_marks_no_feature_as_unbuilt(self):
        text = self.read("etc/imd.ini")
        self.assertEqual([], [line for line in text.splitlines()
                              if re.search(r"\(later\b|being built|later:", line)])


class CheckerTests(unittest.SynchronousTestCase):
    """The checks above catch what they are meant to."""

    def test_outside_paths_are_found(self):
        # split so that this file does not match itself
        for line in ("see ../sha" + "red", "sha" + "red/x", "PROTOCOL" + ".md", "seed" + "/000_x.txt",
                     "(/wo" + "rk/notes/x)", "PERFORMANCE" + ".md"):
            self.assertEqual(1, len(outside_references("x.md", line)), line)
        self.assertEqual([], outside_references("x.md", "docs/protocol.md and bench/run.py"))

    def test_a_table_split_by_a_blank_line_is_found(self):
        whole = "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\ntext\n"
        split = "| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n"
        self.assertEqual([], split_tables("x.md", whole))
        self.assertEqual(["x.md:5: | 3 | 4 |"], split_tables("x.md", split))
        self.assertEqual([], split_tables("x.md", "```\n| not a table\n```\n"))

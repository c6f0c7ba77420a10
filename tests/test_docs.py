"""The repository stands alone: no tracked file points at a file outside it,
every markdown table in docs/ is one table, and etc/imd.ini describes what
each key does now.  The lists in the docs are whole: alert rules, dashboard
rows and config keys as etc/ and imd/config.py hold them.  Pure: reads
files, no servers."""

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


# --- lists in the docs kept in step with the files they describe (issue 22 item 19)

def section(text, heading):
    """The lines under the markdown ``heading`` (a whole heading line, e.g.
    ``## Grafana``) up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    start = lines.index(heading) + 1
    for end in range(start, len(lines)):
        line = lines[end]
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= level and not lines[end - 1].startswith("```"):
            return "\n".join(lines[start:end])
    return "\n".join(lines[start:])


def alert_names(yml_text):
    import yaml
    document = yaml.safe_load(yml_text)
    return [rule["alert"] for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_rows(dashboard_json):
    import json
    panels = json.loads(dashboard_json)["panels"]
    rows = [p for p in panels if p.get("type") == "row"]
    return [p["title"] for p in sorted(rows, key=lambda p: p["gridPos"]["y"])]


def config_keys():
    """``{(section, key)}`` that imd/config.py reads."""
    import dataclasses

    from imd.config import SECTIONS
    return {(name, f.name) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def protocol_table_keys(text):
    """``{(section, key)}`` named in the ``| `[section]` | `key` [default], ... |``
    rows of every "Configuration keys" table of docs/protocol.md (§6 and §7)."""
    found = set()
    for heading in re.findall(r"^###? .*Configuration keys.*$", text, re.M):
        for match in re.finditer(r"^\| `\[(\w+)\]` \| (.*) \|$", section(text, heading), re.M):
            found.update((match.group(1), key) for key in re.findall(r"`(\w+)`", match.group(2)))
    return found


def readme_table_keys(text):
    """``{(section, key)}`` of the ``| `[section] key`, `key2` | default | meaning |``
    rows of README.md's configuration reference."""
    found = set()
    table = section(text, "### Configuration reference")
    for match in re.finditer(r"^\| `\[(\w+)\] (\w+)`((?:, `\w+`)*) \|", table, re.M):
        found.add((match.group(1), match.group(2)))
        found.update((match.group(1), key) for key in re.findall(r"`(\w+)`", match.group(3)))
    return found


class DocsInStepTests(unittest.SynchronousTestCase):
    """README.md and docs/ list what etc/ and imd/config.py hold, all of it."""

    def read(self, name):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            return f.read()

    def test_the_readme_names_every_alert_rule(self):
        alerts = alert_names(self.read("etc/prometheus/imd-alerts.yml"))
        self.assertGreaterEqual(len(alerts), 12)
        text = section(self.read("README.md"), "### Monitoring and the queue")
        named = list(dict.fromkeys(re.findall(r"`(Imd[A-Za-z]+)`", text)))
        self.assertEqual(named, alerts)
        self.assertIn("The %d alerts" % len(alerts), " ".join(text.split()))

    def test_the_operations_guide_has_every_alert_rule_and_its_runbook(self):
        alerts = alert_names(self.read("etc/prometheus/imd-alerts.yml"))
        text = section(self.read("docs/operations.md"), "## Alerts")
        self.assertEqual(re.findall(r"^\| `(Imd[A-Za-z]+)` \|", text, re.M), alerts)
        self.assertEqual(re.findall(r"^### (Imd[A-Za-z]+)$", text, re.M), alerts)

    def test_the_operations_guide_describes_every_dashboard_row(self):
        rows = dashboard_rows(self.read("etc/grafana/imd.json"))
        self.assertGreaterEqual(len(rows), 8)
        text = section(self.read("docs/operations.md"), "## Grafana")
        self.assertEqual(re.findall(r"^- \*\*(.+?)\*\*:", text, re.M), rows)
        self.assertIn("Its %d rows" % len(rows), " ".join(text.split()))

    def test_the_protocol_tables_name_every_config_key(self):
        keys = config_keys()
        self.assertGreater(len(keys), 60)
        documented = protocol_table_keys(self.read("docs/protocol.md"))
        self.assertEqual(sorted(keys - documented), [], "config keys missing from docs/protocol.md's tables")
        self.assertEqual(sorted(documented - keys), [], "docs/protocol.md names keys imd does not read")

    def test_the_readme_configuration_reference_names_every_config_key(self):
        keys = config_keys()
        documented = readme_table_keys(self.read("README.md"))
        self.assertEqual(sorted(keys - documented), [], "config keys missing from README.md's table")
        self.assertEqual(sorted(documented - keys), [], "README.md names keys imd does not read")


class InStepCheckerTests(unittest.SynchronousTestCase):
    """The parsers above find what they are meant to."""

    def test_section_stops_at_the_next_heading_of_its_level(self):
        text = "# a\n## b\nin b\n### c\nin c\n## d\nin d\n"
        self.assertEqual(section(text, "## b"), "in b\n### c\nin c")

    def test_table_keys(self):
        protocol = ("### Configuration keys\n\n| section | keys |\n|---|---|\n"
                    "| `[http]` | `listen` [tcp:8766], `auth` [dev] |\n\n## 7.\n| `[x]` | `y` |\n")
        self.assertEqual(protocol_table_keys(protocol), {("http", "listen"), ("http", "auth")})
        readme = ("### Configuration reference\n\n| key | default | meaning |\n|---|---|---|\n"
                  "| `[mysql] host`, `port`, `user` | a | b |\n| `[imd] roles` | `ws` | c |\n")
        self.assertEqual(readme_table_keys(readme),
                         {("mysql", "host"), ("mysql", "port"), ("mysql", "user"), ("imd", "roles")})

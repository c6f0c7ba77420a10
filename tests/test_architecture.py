"""The shape of imd/ (docs/architecture.md), checked on the source: the import
graph has no cycle, each room imports only the rooms below it, the libraries
that imd bends are touched by one module each, and the Redis key schema in
imd/stores/keys.py is the one docs/storage.md shows.  Pure: no servers."""

import ast
import os
import re

from twisted.trial import unittest

from imd.stores.keys import CHANNEL_PATTERN, SCHEMA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "imd")


def modules():
    """{module name: path} of every module of imd/."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


def imports_of(path, name, known):
    """Every module imported anywhere in the file (inside functions too):
    imd modules by name, others by their top-level package."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = parent + ("." + base if base else "")
            found.add(base)
            for alias in node.names:   # "from imd import protocol": a module
                if base + "." + alias.name in known:
                    found.add(base + "." + alias.name)
    result = set()
    for target in found:
        if target.startswith("imd"):
            # the module itself, or the innermost imd module that contains it
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                result.add(target)
        else:
            result.add(target.split(".")[0])
    return result


def dotted_imports(path):
    """The full dotted name of every module imported in the file (``from a.b import c``: ``a.b``)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
    return found


def graph():
    known = modules()
    return {name: imports_of(path, name, known) for name, path in known.items()}


def imd_edges(edges):
    return {name: {t for t in targets if t.startswith("imd")} for name, targets in edges.items()}


def _within(module, rooms):
    """``module`` is one of ``rooms`` or inside one (a room ending in "." is
    only what is inside it)."""
    return any(module.startswith(room) if room.endswith(".") else module == room or module.startswith(room + ".")
               for room in rooms)


class ImportGraphTests(unittest.SynchronousTestCase):

    def test_no_cycles(self):
        edges = imd_edges(graph())
        state, stack, cycles = {}, [], []

        def visit(name):
            state[name] = "open"
            stack.append(name)
            for target in sorted(edges.get(name, ())):
                if state.get(target) == "open":
                    cycles.append(stack[stack.index(target):] + [target])
                elif target not in state:
                    visit(target)
            stack.pop()
            state[name] = "done"
        for name in sorted(edges):
            if name not in state:
                visit(name)
        self.assertEqual(cycles, [], "import cycles in imd/")

    def test_rooms_only_import_downwards(self):
        # transport -> protocol -> handlers -> stores / node; nothing reaches back up
        forbidden = {
            "imd.protocol": ("imd.transport", "imd.handlers", "imd.stores", "imd.node", "imd.bus", "imd.app",
                             "imd.http"),
            "imd.handlers": ("imd.transport", "imd.app", "imd.http", "imd.bus"),
            "imd.stores": ("imd.transport", "imd.handlers", "imd.node", "imd.bus", "imd.app", "imd.http"),
            "imd.node": ("imd.transport", "imd.handlers", "imd.app", "imd.http"),
            "imd.bus": ("imd.transport", "imd.handlers", "imd.node", "imd.app", "imd.http"),
            "imd.transport": ("imd.handlers.", "imd.app", "imd.http", "imd.stores", "imd.bus"),
            "imd.http": ("imd.transport", "imd.app"),
            "imd.migrator": ("imd.transport", "imd.handlers", "imd.app", "imd.http"),
            # the message log is pure: the stores and their readers use it, never the reverse
            "imd.messagelog": ("imd.transport", "imd.handlers", "imd.stores", "imd.node", "imd.bus", "imd.app",
                               "imd.http", "imd.admin", "imd.migrator"),
        }
        bad = []
        for name, targets in imd_edges(graph()).items():
            for room, below in forbidden.items():
                if name == room or name.startswith(room + "."):
                    bad += ["%s -> %s" % (name, t) for t in targets if _within(t, below)]
        self.assertEqual(bad, [])

    def test_bent_libraries_are_touched_by_one_module_each(self):
        owners = {"txredisapi": {"imd.stores.redis"}}
        edges = graph()
        for library, allowed in owners.items():
            users = {name for name, targets in edges.items() if library in targets}
            self.assertEqual(users, allowed, library)
        autobahn = {name for name, targets in edges.items() if "autobahn" in targets}
        self.assertEqual(autobahn, {"imd.transport.websocket", "imd.transport.autobahn_tuning"})

    def test_a_session_knows_no_websocket_library_and_no_reactor(self):
        # imd.transport.session: Autobahn stays in the adapter (websocket.py),
        # time comes from the clock it is given; of Twisted only Deferreds,
        # failures and the logger
        allowed_twisted = {"twisted.internet.defer", "twisted.logger", "twisted.python.failure"}
        for name in ("imd.transport.session", "imd.tokenbucket"):
            found = dotted_imports(modules()[name])
            self.assertEqual(sorted(t for t in found if t.startswith("autobahn")), [], name)
            self.assertEqual(sorted(t for t in found if t.startswith("twisted") and t not in allowed_twisted), [],
                             name)
        self.assertEqual({t for t in imd_edges(graph())["imd.tokenbucket"]}, set())


def storage_doc_keys():
    """The key patterns in the first column of docs/storage.md's Redis table."""
    text = open(os.path.join(ROOT, "docs", "storage.md"), encoding="utf-8").read()
    section = text.split("## Redis", 1)[1].split("\n## ", 1)[0]
    keys = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            keys.update(re.findall(r"`([^`]+)`", first))
    return keys


class KeySchemaTests(unittest.SynchronousTestCase):

    def test_storage_doc_lists_exactly_the_schema(self):
        documented = storage_doc_keys()
        schema = {spec.pattern for spec in SCHEMA} | {CHANNEL_PATTERN}
        self.assertEqual(sorted(schema - documented), [], "keys missing from docs/storage.md")
        self.assertEqual(sorted(documented - schema), [], "docs/storage.md names keys imd does not use")

    def test_no_key_is_built_outside_keys_py(self):
        # every other module asks imd.stores.keys for names; a literal like
        # "URS:%d" or 'dev:' elsewhere would be a second way to build a key
        # (and no Lua script builds one: each gets its keys as KEYS)
        patterns = sorted({spec.pattern.split("<")[0] for spec in SCHEMA if "<" in spec.pattern})
        sources = dict(modules())
        for lua in (os.path.join(PACKAGE, "stores", "lua"), os.path.join(PACKAGE, "messagelog", "lua")):
            sources.update({"lua/" + n: os.path.join(lua, n) for n in os.listdir(lua) if n.endswith(".lua")})
        self.assertIn("lua/store_message.lua", sources)
        self.assertIn("lua/store_entry.lua", sources)
        found = []
        for name, path in sources.items():
            if name == "imd.stores.keys":
                continue
            source = open(path, encoding="utf-8").read()
            for pattern in patterns:
                for quote in ('"', "'"):
                    if quote + pattern in source or "%s" + pattern in source:
                        found.append("%s: %s" % (name, pattern))
        self.assertEqual(found, [])

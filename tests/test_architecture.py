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
    return imports_from_source(open(path, encoding="utf-8").read(), name, known, path.endswith("__init__.py"), path)


def imports_from_source(source, name, known, is_package=False, path="<source>"):
    """:func:`imports_of` for the source of module ``name``."""
    tree = ast.parse(source, path)
    package = name if is_package else name.rpartition(".")[0]
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


# The rooms of imd/ (docs/architecture.md), as data: which room each module
# is in, and which rooms each room may import (its own always).  A key names
# that module and everything inside it, the longest key wins; "=name" names
# the module alone (a package's __init__).  Every import of every module is
# checked against it (test_rooms_only_import_downwards), TYPE_CHECKING and
# function-level imports included.
ROOMS = {
    # the entry points: twistd's plugin and the operator's tools
    "imd.tap": "entry",
    "imd.admin": "entry",
    # the container: builds everything, wires it, and the scrape services it adds
    "imd.app": "app",
    "imd.scrape": "app",
    # the two front doors
    "imd.http": "http",
    "imd.transport": "transport",
    # the migrate role and the leader's periodic tasks
    "imd.migrator": "migrate",
    "imd.migrator_child": "migrate",
    "imd.leadertask": "migrate",
    "imd.order_ends": "migrate",
    "imd.retention": "migrate",
    "imd.push": "migrate",
    # the packet logic, and the one thing of it the transport sees (Reply)
    "imd.handlers": "handlers",
    "=imd.handlers": "reply",
    # this process's sessions and its link to the other nodes
    "imd.node": "node",
    "imd.bus": "node",
    # the process's own machinery that reads stores
    "imd.auth": "process",
    "imd.startup": "process",
    "imd.seqfloor": "process",
    "imd.metrics": "process",
    # every Redis key and SQL statement
    "imd.stores": "stores",
    # settings and plumbing that know no store
    "imd.config": "base",
    "imd.tls": "base",
    "imd.moderation": "base",
    "imd.logs": "base",
    "imd.listeners": "base",
    "imd.shutdown": "base",
    "imd.resources": "base",
    "imd.progress": "base",
    # pure: data in, data out
    "=imd": "pure",
    "imd.protocol": "pure",
    "imd.messagelog": "pure",
    "imd.busframes": "pure",
    "imd.errors": "pure",
    "imd.jsonfast": "pure",
    "imd.tokenbucket": "pure",
    "imd.clock": "pure",
    "imd.endpoints": "pure",
    "imd.timespec": "pure",
}

_BELOW_PROCESS = {"stores", "base", "pure"}
MAY_IMPORT = {
    "entry": {"app", "http", "transport", "migrate", "handlers", "reply", "node", "process"} | _BELOW_PROCESS,
    "app": {"http", "transport", "migrate", "handlers", "reply", "node", "process"} | _BELOW_PROCESS,
    "http": {"handlers", "reply", "node", "process"} | _BELOW_PROCESS,
    "transport": {"reply", "node", "process", "base", "pure"},
    "migrate": _BELOW_PROCESS,
    "handlers": {"reply"} | _BELOW_PROCESS,
    "reply": {"pure"},
    "node": _BELOW_PROCESS,
    "process": _BELOW_PROCESS,
    "stores": {"base", "pure"},
    "base": {"pure"},
    "pure": set(),
}


def room_of(module):
    """The room of an imd module (None: it has none)."""
    if "=" + module in ROOMS:
        return ROOMS["=" + module]
    best = None
    for key in ROOMS:
        if not key.startswith("=") and (module == key or module.startswith(key + ".")):
            if best is None or len(key) > len(best):
                best = key
    return ROOMS[best] if best is not None else None


def layering_violations(edges):
    """``module (room) -> target (room)`` for every import the table forbids."""
    bad = []
    for name, targets in sorted(imd_edges(edges).items()):
        room = room_of(name)
        for target in sorted(targets):
            other = room_of(target)
            if other != room and other not in MAY_IMPORT.get(room, ()):
                bad.append("%s (%s) -> %s (%s)" % (name, room, target, other))
    return bad


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
        self.assertEqual(layering_violations(graph()), [])

    def test_every_module_has_a_room(self):
        self.assertEqual(sorted(name for name in modules() if room_of(name) is None), [])

    def test_the_layering_is_a_ladder(self):
        # no two rooms may import each other: nothing below calls back up
        both = sorted((a, b) for a, allowed in MAY_IMPORT.items() for b in allowed
                      if a != b and a in MAY_IMPORT.get(b, ()))
        self.assertEqual(both, [])
        self.assertEqual(sorted(set(ROOMS.values()) ^ set(MAY_IMPORT)), [])

    def test_the_doc_has_a_row_for_every_module_and_package(self):
        # docs/architecture.md's table of rooms names each by its path
        # (a package as imd/<name>/, its modules as imd/<name>/<module>.py)
        text = open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read()
        table = "\n".join(line for line in text.split("## The rooms", 1)[1].split("\n## ", 1)[0].splitlines()
                          if line.startswith("| `"))
        named = set(re.findall(r"`(imd/[^`]*)`", table))
        missing = []
        for path in modules().values():
            relative = os.path.relpath(path, ROOT).replace(os.sep, "/")
            if relative.endswith("/__init__.py"):
                relative = relative[:-len("__init__.py")]
            if relative != "imd/" and relative not in named:
                missing.append(relative)
        self.assertEqual(sorted(missing), [])

    def test_a_forbidden_import_is_caught(self):
        # a store that imported a handler, a handler the node, the transport
        # a store: each is refused, by module and import line
        sources = {
            "imd.stores.fake": "from imd.handlers.messages import MessageHandler\n",
            "imd.handlers.fake": "def f():\n    from imd import node\n",
            "imd.transport.fake": "import imd.stores.redis\n",
            "imd.stores.fine": "from imd.stores import keys\nfrom imd import errors\n",
        }
        known = set(modules()) | set(sources)
        edges = {name: imports_from_source(source, name, known) for name, source in sources.items()}
        self.assertEqual(layering_violations(edges), [
            "imd.handlers.fake (handlers) -> imd.node (node)",
            "imd.stores.fake (stores) -> imd.handlers.messages (handlers)",
            "imd.transport.fake (transport) -> imd.stores.redis (stores)",
        ])

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

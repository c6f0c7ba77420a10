"""imd as a package: the wheel built from this checkout carries the code,
sql/, web/, the SDK's built modules (clients/js/dist, `make sdk`) and the
Twisted plugin, and once installed in a new venv (away from the checkout)
``imd-admin schema apply``, ``imd-admin keys init`` and ``twistd -n imd``
work: a user logs in over WebSocket, sends a message, and the http role
serves the page and the SDK's modules it imports."""

import configparser
import io
import json
import os
import shutil
import signal
import sys
import zipfile

from twisted.internet import defer, reactor, threads, utils
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests.daemon_support import Daemon
from tests.mysql_support import drop_database, mysql_settings
from tests.support import DEADLINE, RedisTestMixin, connect_client, drop, free_port, settings_text, with_deadline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what the wheel is built from: everything setup.cfg names, nothing else
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "imd", "sql", "web", "twisted", "clients/js/dist")
SDK_BUILT = os.path.join(ROOT, "clients", "js", "dist")
STEP_TIMEOUT = 240   # seconds any one pip / venv step may take
# pip's words for "the index cannot be reached": the only reason to skip
_OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "Name or service not known",
            "Network is unreachable", "No matching distribution found", "Could not find a version")


def imd_packages():
    """The packages under imd/ in this checkout (directories with __init__.py)."""
    found = []
    for directory, _, files in os.walk(os.path.join(ROOT, "imd")):
        if "__init__.py" in files:
            found.append(os.path.relpath(directory, ROOT).replace(os.sep, "."))
    return sorted(found)


class SetupCfgTests(unittest.SynchronousTestCase):

    def test_every_package_is_listed(self):
        # setup.cfg lists packages by hand (sql/, web/ and the SDK's dist/ are mapped into imd):
        # a new subpackage left out would be missing from the wheel.
        config = configparser.ConfigParser()
        config.read(os.path.join(ROOT, "setup.cfg"))
        listed = config["options"]["packages"].split()
        mapped = ("imd.sql", "imd.web", "imd.sdk")
        self.assertEqual(sorted(p for p in listed if p.startswith("imd") and p not in mapped), imd_packages())
        self.assertIn("twisted.plugins", listed)
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "plugins", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "__init__.py")))


def _clean_env():
    # Nothing may lead the installed programs back to this checkout.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


class InstalledWheelTests(RedisTestMixin, unittest.TestCase):

    timeout = 900   # a wheel, a venv and an install on a loaded 2-core machine

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        yield self.redis.delete("publicKey", "privateKey")   # keys init makes them
        self.mysql = mysql_settings()
        yield threads.deferToThread(drop_database, self.mysql)  # schema apply creates it
        self.addCleanup(threads.deferToThread, drop_database, self.mysql)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    @defer.inlineCallbacks
    def run_step(self, what, argv, cwd, may_need_index=False):
        """Run ``argv``; its stdout.  Fails naming the step with its output;
        skips when a step that needs the package index cannot reach it."""
        d = utils.getProcessOutputAndValue(argv[0], argv[1:], env=_clean_env(), path=cwd)
        out, err, code = yield with_deadline(d, STEP_TIMEOUT, what)
        text = (out + err).decode("utf-8", "replace")
        if code != 0:
            if may_need_index and any(word in text for word in _OFFLINE):
                raise unittest.SkipTest("%s: the package index cannot be reached here: %s"
                                        % (what, text.strip().splitlines()[-1]))
            self.fail("%s exited %s:\n%s" % (what, code, text[-4000:]))
        return out.decode("utf-8", "replace")

    @defer.inlineCallbacks
    def build_wheel(self):
        self.assertTrue(os.path.isfile(os.path.join(SDK_BUILT, "index.js")),
                        "the SDK is not built (the wheel carries it): make sdk")
        source = os.path.join(self.base, "source")
        for name in SOURCES:
            path = os.path.join(ROOT, name)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(source, name),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache"))
            else:
                os.makedirs(source, exist_ok=True)
                shutil.copy(path, source)
        wheels = os.path.join(self.base, "wheels")
        yield self.run_step("building the wheel", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                                                   "-w", wheels, source], self.base, may_need_index=True)
        (wheel,) = [os.path.join(wheels, n) for n in os.listdir(wheels) if n.startswith("imd-")]
        return wheel

    def check_wheel_contents(self, wheel):
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
        expected = {"twisted/plugins/imd_plugin.py"}
        for package in imd_packages():
            directory = os.path.join(ROOT, *package.split("."))
            expected.update("%s/%s" % (package.replace(".", "/"), n) for n in os.listdir(directory)
                            if n.endswith(".py"))
        expected.update("imd/sql/" + n for n in os.listdir(os.path.join(ROOT, "sql")) if n.endswith(".sql"))
        lua = os.listdir(os.path.join(ROOT, "imd", "stores", "lua"))
        self.assertIn("store_message.lua", lua)
        expected.update("imd/stores/lua/" + n for n in lua if n.endswith(".lua"))
        expected.update("imd/web/" + n for n in os.listdir(os.path.join(ROOT, "web")))
        modules = [n for n in os.listdir(SDK_BUILT) if n.endswith(".js")]
        self.assertIn("client.js", modules)
        expected.update("imd/sdk/" + n for n in modules)
        self.assertEqual(sorted(expected - names), [], "missing from the wheel")
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertEqual([n for n in names if n.startswith("tests/")], [])

    @defer.inlineCallbacks
    def install(self, wheel):
        """A new venv with the wheel and its dependencies.  The dependencies
        are first collected as wheels by this (the test run's) pip, which
        finds them in its cache where it can, then installed with no index."""
        wheelhouse = os.path.dirname(wheel)
        yield self.run_step("collecting the dependencies' wheels",
                            [sys.executable, "-m", "pip", "wheel", "-q", "-w", wheelhouse, wheel],
                            self.base, may_need_index=True)
        venv = os.path.join(self.base, "venv")
        # the interpreter this venv was made from (CPython or PyPy alike)
        yield self.run_step("making a venv", [sys.executable, "-m", "venv", venv], self.base)
        python = os.path.join(venv, "bin", "python")
        yield self.run_step("installing the wheel", [python, "-m", "pip", "install", "-q", "--no-index",
                                                     "--find-links", wheelhouse, wheel], self.base)
        return venv

    def write_config(self, directory, http_port):
        text = settings_text({"imd": {"roles": "ws, http, migrate"},
                              "http": {"listen": "tcp:%d:interface=127.0.0.1" % http_port}})
        path = os.path.join(directory, "imd.ini")
        with open(path, "w") as f:
            f.write(text)
        return path

    @defer.inlineCallbacks
    def http(self, method, url, body=None):
        pool = HTTPConnectionPool(reactor, persistent=False)
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        response = yield with_deadline(Agent(reactor, pool=pool).request(method, url, Headers(), producer),
                                       what="HTTP response")
        data = yield with_deadline(readBody(response), what="HTTP body")
        return response.code, data

    @staticmethod
    def kill(daemon):
        if daemon.has_ended:
            return None
        daemon.signal(signal.SIGKILL)
        return daemon.when_ended()

    async def test_wheel_installed_elsewhere_runs_the_whole_product(self):
        wheel = await self.build_wheel()
        self.check_wheel_contents(wheel)
        venv = await self.install(wheel)
        bin_dir = os.path.join(venv, "bin")
        elsewhere = os.path.join(self.base, "elsewhere")   # neither the checkout nor the venv
        os.makedirs(elsewhere)

        # the programs use the installed copy, its sql/ and web/ included
        where = await self.run_step("importing imd", [
            os.path.join(bin_dir, "python"), "-c",
            "import imd, imd.resources, twisted.plugins.imd_plugin as p;"
            "print(imd.__file__); print(p.__file__);"
            "print(imd.resources.data_dir('sql')); print(imd.resources.data_dir('web'));"
            "print(imd.resources.data_dir('sdk'))"], elsewhere)
        for path in where.split():
            self.assertTrue(path.startswith(venv + os.sep), where)

        http_port = free_port()
        config = self.write_config(elsewhere, http_port)
        admin = os.path.join(bin_dir, "imd-admin")
        await self.run_step("imd-admin schema apply", [admin, "--config", config, "schema", "apply"], elsewhere)
        await self.run_step("imd-admin keys init", [admin, "--config", config, "keys", "init"], elsewhere)
        self.assertTrue((await self.redis.get("publicKey")).startswith("-----BEGIN PUBLIC KEY-----"))
        await self.run_step("imd-admin friend add", [admin, "--config", config, "friend", "add", "1", "2"],
                            elsewhere)

        daemon = Daemon()
        twistd = os.path.join(bin_dir, "twistd")
        reactor.spawnProcess(daemon, twistd, [twistd, "-n", "--pidfile=", "imd", "--config", config],
                             env=_clean_env(), path=elsewhere)
        self.addCleanup(self.kill, daemon)
        port = await with_deadline(daemon.listening, DEADLINE * 3, "the installed twistd taking logins")

        tokens = []
        for uid in (1, 2):
            code, body = await self.http(b"POST", b"http://127.0.0.1:%d/IM/token" % http_port,
                                         json.dumps({"id": uid}).encode())
            self.assertEqual(code, 200, body)
            tokens.append(json.loads(body)["token"])
        alice = await connect_client(port, "/" + tokens[0])
        self.addCleanup(drop, alice)
        bob = await connect_client(port, "/" + tokens[1])
        self.addCleanup(drop, bob)
        self.assertEqual(((await alice.next())["type"], (await bob.next())["type"]), ("L", "L"))
        alice.send({"id": "m1", "to": 2, "type": "t", "msg": "from an installed imd"})
        self.assertEqual((await alice.next())["type"], "A")
        delivered = await bob.next()
        self.assertEqual((delivered["from"], delivered["msg"]), (1, "from an installed imd"))

        code, page = await self.http(b"GET", b"http://127.0.0.1:%d/" % http_port)
        self.assertEqual(code, 200)
        with open(os.path.join(ROOT, "web", "page.html"), "rb") as f:
            self.assertEqual(page, f.read())
        code, module = await self.http(b"GET", b"http://127.0.0.1:%d/sdk/client.js" % http_port)
        self.assertEqual(code, 200)
        with open(os.path.join(SDK_BUILT, "client.js"), "rb") as f:
            self.assertEqual(module, f.read())

        daemon.signal(signal.SIGTERM)
        self.assertEqual(await daemon.wait_ended(), 0, daemon.output())

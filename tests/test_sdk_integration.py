"""Issue 28: the JavaScript SDK (clients/js) against a real imd, through a
proxy that cuts its connections, while the migrator is killed -9.

A real ``twistd -n imd`` (one node: ws + http, dev auth) and a separate
migrator process (``python -m imd.migrator``) run on this run's Redis db and
MySQL database.  ``node clients/js/build/integration.js`` (from
clients/js/test/integration.ts) then plays, for each of 20 random seeds, two
ImdClients on the ``ws`` package that exchange 500 messages each way, each
through its own TCP proxy (Node's net module, 127.0.0.1) that cuts the
connection every 0.2-1 s at a random moment: at once, or after forwarding a
prefix of a chunk in either direction (mid-frame).  Tokens come from
``POST /IM/token``, a fresh one per connection.  Halfway through each seed
the script asks for the migrator to be killed: this test kills it with
SIGKILL and starts another.

The script checks what the app sees (each side's ``message`` events hold
every message of the other once, in the order sent and in ``pos`` order,
nothing else, even after one more reconnect's sync; every ``send()``
resolved); this test checks its verdict per seed, that the cuts happened
(mid-frame both ways), and once the migrator caught up that MySQL holds
every acknowledged message exactly once.  A failure names its seed;
``IMD_SDK_INTEGRATION_SEEDS=1,2,3`` replays chosen seeds, and
``IMD_SDK_INTEGRATION_CUT_MS=30,150`` cuts more often than every 0.2-1 s.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess

from twisted.internet import defer, protocol, reactor, threads
from twisted.logger import Logger
from twisted.trial import unittest

from tests.daemon_support import ROOT, start_daemon, write_config
from tests.mysql_support import MysqlTestMixin, query
from tests.support import DEADLINE, RedisTestMixin, free_port, settings_text, wait_until, with_deadline
from tests.test_faults import exactly_once
from tests.test_migrator_crash import MigratorProcess

_log = Logger()
_TROUBLE = re.compile(r'Traceback|Unhandled|#error\]|#critical\]|"level": "(error|critical)"')
SDK = os.path.join(ROOT, "clients", "js")
SCRIPT = os.path.join(SDK, "build", "integration.js")
SEEDS = 20
MESSAGES = 500          # each way, per seed
FIRST_UID = 5000        # seed k: uids FIRST_UID + 2k and + 2k + 1
SEED_TIMEOUT_MS = 60000
RUN_DEADLINE = 280.0    # the node script, all seeds


def node_missing():
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not on PATH (Node 18+: the SDK's toolchain, make test-js)"
    return None


def _newest_mtime(folder):
    return max((os.path.getmtime(os.path.join(folder, name)) for name in os.listdir(folder) if name.endswith(".ts")),
               default=0.0)


def _stale(built, *sources):
    return not os.path.exists(built) or os.path.getmtime(built) < max(_newest_mtime(f) for f in sources)


def build_script():
    """Blocking: dist/ (the SDK) and build/ (its tests and integration.js)
    built with tsc where older than their sources (``make test`` has just
    built both); an AssertionError saying what failed."""
    if not os.path.isdir(os.path.join(SDK, "node_modules", "ws")):
        raise AssertionError("clients/js/node_modules is missing: run make install (or make test-js)")
    src, test = os.path.join(SDK, "src"), os.path.join(SDK, "test")
    steps = []
    if _stale(os.path.join(SDK, "dist", "index.js"), src):
        steps.append("build")
    if steps or _stale(SCRIPT, src, test):
        steps.append("build:test")
    for script in steps:
        done = subprocess.run(["npm", "run", "--silent", script], cwd=SDK, capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError("npm run %s failed:\n%s%s" % (script, done.stdout, done.stderr))


class NodeRun(protocol.ProcessProtocol):
    """``node build/integration.js ...``: its JSON lines, its stderr, its exit
    status; ``on_line`` is called with each JSON line as it comes."""

    def __init__(self, on_line):
        self.on_line = on_line
        self.results = []
        self.stderr = b""
        self.exit_code = None
        self.ended = defer.Deferred()
        self._partial = b""

    def outReceived(self, data):
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if line.strip():
                try:
                    event = json.loads(line)
                except ValueError:
                    self.stderr += b"(stdout) " + line + b"\n"
                    continue
                self.on_line(event)

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        self.exit_code = reason.value.exitCode
        self.ended.callback(self.exit_code)

    def kill(self):
        if not self.ended.called:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass
        return self.ended


class SdkThroughCutsTests(MysqlTestMixin, RedisTestMixin, unittest.TestCase):

    timeout = RUN_DEADLINE + 60

    @defer.inlineCallbacks
    def setUp(self):
        why = node_missing()
        if why:
            raise unittest.SkipTest(why)
        yield threads.deferToThread(build_script)
        yield super().setUp()

    def seeds(self):
        chosen = os.environ.get("IMD_SDK_INTEGRATION_SEEDS")
        if chosen:
            return [int(s) for s in chosen.split(",")]
        return [random.randrange(2 ** 32) for _ in range(SEEDS)]

    async def start_imd(self):
        self.http_port = free_port()
        config = write_config(self, {
            "imd": {"roles": "ws, http", "node_id": "sdk-node"},
            "websocket": {"rate": "100000", "burst": "100000"},
            "http": {"listen": "tcp:%d:interface=127.0.0.1" % self.http_port, "auth": "dev",
                     "token_user_rate": "0", "token_address_rate": "0"},
            "mysql": {"database": self.mysql_settings.database}})
        return await start_daemon(self, config)

    def migrator_config(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(settings_text({"imd": {"roles": "migrate", "node_id": "sdk-migrator"},
                                   "migrate": {"batch": "100", "interval": "0.02", "lock_ttl": "0.5"},
                                   "mysql": {"database": self.mysql_settings.database}}))
        return path

    async def test_two_sdk_clients_through_cuts_and_a_migrator_kill_see_every_message_once_in_order(self):
        seeds = self.seeds()
        daemon = await self.start_imd()
        for k in range(len(seeds)):
            await self.befriend(FIRST_UID + 2 * k, FIRST_UID + 2 * k + 1)
        migrator_config = self.migrator_config()
        migrators = [MigratorProcess(migrator_config).start()]
        self.addCleanup(lambda: defer.gatherResults([m.kill() for m in migrators]))
        await with_deadline(migrators[0].leading, DEADLINE * 2, "the migrator leading")
        kills = []

        def on_line(event):
            if event.get("event") == "kill-migrator":
                victim = migrators[-1]
                if victim.transport.pid is not None:
                    os.kill(victim.transport.pid, signal.SIGKILL)
                    kills.append(event["seed"])
                migrators.append(MigratorProcess(migrator_config).start())
            else:
                run.results.append(event)

        run = NodeRun(on_line)
        node = shutil.which("node")
        args = [node, SCRIPT, "--http", "http://127.0.0.1:%d" % self.http_port, "--ws", "127.0.0.1:%d" % daemon.port,
                "--seeds", ",".join(map(str, seeds)), "--messages", str(MESSAGES), "--first-uid", str(FIRST_UID),
                "--seed-timeout-ms", str(SEED_TIMEOUT_MS)]
        cut_ms = os.environ.get("IMD_SDK_INTEGRATION_CUT_MS")   # "min,max": harsher (or milder) than 200,1000
        if cut_ms:
            low, high = cut_ms.split(",")
            args += ["--cut-min-ms", low, "--cut-max-ms", high]
        started = reactor.seconds()
        reactor.spawnProcess(run, node, args, env=dict(os.environ), path=SDK)
        self.addCleanup(run.kill)
        code = await with_deadline(run.ended, RUN_DEADLINE, "end of the node script (seeds %s)" % seeds)
        took = reactor.seconds() - started

        results = {r["seed"]: r for r in run.results if r.get("event") == "seed"}
        for r in results.values():
            _log.info("sdk integration: seed {seed}: {figures}", seed=r["seed"],
                      figures=json.dumps({k: v for k, v in r.items() if k != "acked"}))
        failed = ["seed %s: %s" % (seed, results[seed]["error"]) for seed in seeds
                  if seed in results and not results[seed]["ok"]]
        if failed or code != 0:
            self.fail("%s\nnode exit %s, stderr:\n%s" % ("\n".join(failed) or "no seed failed",
                                                         code, run.stderr.decode("utf-8", "replace")[-4000:]))
        try:
            await self.check_run(seeds, results, kills, migrators, daemon, took)
        except AssertionError as e:
            raise AssertionError("%s\n(seeds %s: IMD_SDK_INTEGRATION_SEEDS=%s replays them)"
                                 % (e, seeds, ",".join(map(str, seeds)))) from e

    async def check_run(self, seeds, results, kills, migrators, daemon, took):
        self.assertEqual(sorted(results), sorted(seeds), "a seed without a result")
        self.assertEqual(sorted(kills), sorted(seeds), "one migrator kill per seed")

        sides = [side for r in results.values() for side in r["sides"]]
        cuts = sum(s["cuts"] for s in sides)
        partial_up, partial_down = sum(s["partial_up"] for s in sides), sum(s["partial_down"] for s in sides)
        for r in results.values():   # every seed ran through cuts, each side more than one
            self.assertGreaterEqual(min(s["cuts"] for s in r["sides"]), 2, "seed %s: %s" % (r["seed"], r["sides"]))
        # no sync refused, no E that answers none of the client's packets; of the
        # E codes only the history budget's (a sync page retried after a backoff)
        self.assertEqual([], [(r["seed"], s["uid"], s["warnings"]) for r in results.values() for s in r["sides"]
                              if s["warnings"]])
        self.assertEqual([], [(r["seed"], s["uid"], s["errors"]) for r in results.values() for s in r["sides"]
                              if set(s["errors"]) - {"rate_limited"}])
        self.assertGreater(partial_up, 0, "no cut in the middle of a frame to imd")
        self.assertGreater(partial_down, 0, "no cut in the middle of a frame from imd")

        # MySQL: each acknowledged message once, after the last migrator caught up
        await with_deadline(migrators[-1].leading, DEADLINE * 2, "the last migrator leading")

        async def drained():
            return await self.redis.llen("MQ") == 0 and await self.redis.llen("MQ:processing") == 0
        await wait_until(lambda: defer.ensureDeferred(drained()), seconds=DEADLINE * 3, what="MQ drained")
        acked = [(uid, msg_id) for r in results.values() for uid, msg_id in r["acked"]]
        rows = await query(self.mysql_settings, ("SELECT from_id, msg_id FROM message WHERE from_id BETWEEN %s AND %s",
                                                 (FIRST_UID, FIRST_UID + 2 * len(seeds))))
        stored = [(f, bytes(m).decode("utf-8")) for f, m in rows]
        figures = exactly_once(self, acked, stored)
        self.assertEqual(figures["acked"], 2 * MESSAGES * len(seeds))
        # cut connections, half frames and a migrator gone mid-batch are not errors of imd's
        for name, output in [("imd", daemon.output())] + [("migrator %d" % n, m.output.decode("utf-8", "replace"))
                                                           for n, m in enumerate(migrators)]:
            self.assertEqual([], [line for line in output.splitlines() if _TROUBLE.search(line)], name)
        _log.info("sdk integration: {seeds} seeds, {messages} messages, {cuts} cuts ({up} mid-frame to imd, "
                  "{down} from imd), {logins} logins, {syncs} syncs ({pages} further sync pages), {dups} dup acks, "
                  "{kills} migrator kills, {took:.1f}s",
                  seeds=len(seeds), messages=figures["acked"], cuts=cuts, up=partial_up, down=partial_down,
                  logins=sum(s["logins"] for s in sides), syncs=sum(s["syncs"] for s in sides),
                  pages=sum(s["sync_pages"] for s in sides), dups=sum(s["dup_acks"] for s in sides),
                  kills=len(kills), took=took)

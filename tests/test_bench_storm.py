"""The reconnect storm of ``bench/run.py --only storm`` (issue 29): the load
generator's reconnect delay is the JavaScript SDK's, its catch-up request is
the history request of contract §3, and the storm's table shows what was
measured.  Nothing here is timed."""

import importlib.util
import json
import os
import shutil
import subprocess

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADGEN = os.path.join(ROOT, "bench", "loadgen")
SDK_BACKOFF = os.path.join(ROOT, "clients", "js", "dist", "backoff.js")


def node(script):
    """What ``script`` (run by node in the repository) printed, as JSON."""
    done = subprocess.run(["node", "-e", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError("node failed: %s" % done.stderr)
    return json.loads(done.stdout)


class LoadgenTests(unittest.TestCase):
    def setUp(self):
        if shutil.which("node") is None:
            raise unittest.SkipTest("node is not installed (the load generator runs on it)")

    def test_the_reconnect_delay_is_the_sdks(self):
        if not os.path.exists(SDK_BACKOFF):
            raise unittest.SkipTest("the SDK is not built (make install builds clients/js/dist)")
        rows = node("""
            const { backoffDelay } = require('./bench/loadgen/backoff.js');
            import(%s).then((sdk) => {
              const rows = [];
              for (const [lo, hi] of [[500, 30000], [100, 100], [0, 0], [250, 1000]])
                for (let attempt = -1; attempt <= 20; attempt++)
                  for (const r of [-1, 0, 0.25, 0.5, 0.999, 1, 2])
                    rows.push([backoffDelay(attempt, lo, hi, () => r), sdk.backoffDelay(attempt, lo, hi, () => r)]);
              console.log(JSON.stringify(rows));
            });""" % json.dumps("file://" + SDK_BACKOFF))
        self.assertEqual(4 * 22 * 7, len(rows))
        self.assertEqual([sdk for _, sdk in rows], [ours for ours, _ in rows])

    def test_the_delay_stays_within_the_sdks_bounds_and_its_ceiling_doubles(self):
        delays = node("""
            const { backoffDelay, SDK_MIN_DELAY_MS, SDK_MAX_DELAY_MS } = require('./bench/loadgen/backoff.js');
            const out = {};
            for (let attempt = 1; attempt <= 10; attempt++)
              out[attempt] = [0, 1].map((r) => backoffDelay(attempt, SDK_MIN_DELAY_MS, SDK_MAX_DELAY_MS, () => r));
            console.log(JSON.stringify(out));""")
        self.assertEqual({str(n): [500, min(30000, 500 * 2 ** n)] for n in range(1, 11)}, delays)
        self.assertEqual([500, 1000], delays["1"])   # the first retry after a drop: within 0.5-1 s
        self.assertEqual([500, 30000], delays["10"])

    def test_the_catch_up_is_a_history_request_paged_until_more_is_false(self):
        packets = node("""
            const { catchUpRequest, catchUpDone } = require('./bench/loadgen/storm.js');
            const client = { uid: 7, lastTs: 0, catchUpSeq: 0, catchUpId: null };
            const first = JSON.parse(catchUpRequest(client, null));
            const second = JSON.parse(catchUpRequest(client, { more: true, next: 'c1' }));
            console.log(JSON.stringify({ first, second, id: client.catchUpId,
                                         done: [catchUpDone({ more: true }), catchUpDone({ more: false })] }));""")
        self.assertEqual({"to": 0, "type": "H", "msg": {"since": 0, "limit": 100}},
                         {k: v for k, v in packets["first"].items() if k != "id"})
        self.assertEqual({"after": "c1"}, packets["second"]["msg"])
        self.assertNotEqual(packets["first"]["id"], packets["second"]["id"])
        self.assertEqual(packets["second"]["id"], packets["id"])
        self.assertEqual([False, True], packets["done"])

    def test_refusals_are_named_by_http_status_or_socket_error(self):
        reasons = node("""
            const { refusalReason, timeOfFraction } = require('./bench/loadgen/storm.js');
            console.log(JSON.stringify({
              reasons: [new Error('Unexpected server response: 429'),
                        Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }),
                        new Error('Opening handshake has timed out')].map((e) => refusalReason(e)),
              times: [timeOfFraction([1, 2, 3, 4], 4, 0.5), timeOfFraction([1, 2, 3], 4, 1),
                      timeOfFraction([1, 2, 3, 4], 4, 0.99)] }));""")
        self.assertEqual(["http_429", "socket_ECONNREFUSED", "handshake_timeout"], reasons["reasons"])
        # the time by which that fraction of all the clients (not of those back) was back
        self.assertEqual([2, None, 4], reasons["times"])


def load_run():
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "bench", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def storm_result(**overrides):
    result = {
        "connections": 10, "logged_in": 10, "synced": 10, "seconds": 12.5,
        "login_s": {"p50": 2.25, "p99": 8.0, "p100": 12.0}, "synced_s": {"p50": 2.5, "p99": 8.25, "p100": 12.5},
        "logins_per_s": 1, "peak_logins_per_s": 4, "refused": {"http_429": 30, "socket_ECONNREFUSED": 10},
        "refused_clients": 9, "max_attempts": 6, "refused_clients_by_reason": {
            "http_429": {"clients": 7, "synced_s": {"p50": 4.0, "p99": 12.0, "p100": 12.5}},
            "socket_ECONNREFUSED": {"clients": 5, "synced_s": {"p50": 2.0, "p99": 3.0, "p100": None}}},
        "not_logged_in_after_s": {"5": 4, "10": 1},
        "new_process": {"cpu_s": 3.5, "startup_cpu_s": 0.5, "peak_cores": 0.9, "peak_rss_kb": 102400,
                        "listening_s": 1.5},
        "old_process": {"rss_kb": 204800, "stop_cpu_s": 0.25, "exit_s": 0.5},
        "redis_cpu_s": 0.5, "mysql_cpu_s": None, "generator_cpu_s": 1.0, "drops_after_login": 0,
        "catch_up_errors": {}, "out_of_tokens": 0, "loadavg_before": [2.5, 2, 2]}
    result.update(overrides)
    return result


class StormTableTests(unittest.TestCase):
    def test_each_storm_is_a_column_with_its_figures(self):
        run = load_run()
        back_late = storm_result(logged_in=9, synced=9, login_s={"p50": 3.0, "p99": None, "p100": None},
                                 refused={}, refused_clients_by_reason={}, seconds=240.0,
                                 not_logged_in_after_s={"5": 5, "10": 3, "30": 2, "60": 1, "120": 1})
        report = {"results": {"storm": {"connections": 10, "handshake_limit": 8, "storms": {
            "restart": storm_result(), "restart_limited": back_late}}}}
        rows = run.storm_table(report)
        self.assertIn("restart, `max_handshakes_per_address = 8`", rows[0])
        self.assertNotIn("SIGKILL", rows[0])   # not measured: no column
        by_label = {row.split(" | ")[0].lstrip("| "): row.split(" | ")[1:] for row in rows[2:]}
        self.assertEqual(["2.2 / 8.0 / 12.0", "3.0 / not all / not all |"],
                         by_label["logged in again: 50 % / 99 % / 100 %, s after the signal"])
        self.assertEqual(["http_429 30, socket_ECONNREFUSED 10", "none |"],
                         by_label["refused attempts, by reason"])
        self.assertEqual(["http_429: 7, 4.0 / 12.0 / 12.5; socket_ECONNREFUSED: 5, 2.0 / 3.0 / not all", "none |"],
                         by_label["↳ by reason: clients, and when they were caught up (50 % / 99 % / 100 % of "
                                  "them, s)"])
        # past the end of a storm all came back from: 0; of one some never came back from: counted
        self.assertEqual(["4 / 1 / 0 / 0", "5 / 3 / 2 / 1 |"],
                         by_label["clients not logged in yet after 5 / 10 / 30 / 60 s"])
        self.assertEqual(["3.5 (0.5); 0.9; 100", "3.5 (0.5); 0.9; 100 |"],
                         by_label["new process: CPU s (of which start-up); busiest second, cores; peak RSS MB"])
        self.assertEqual(["0.5 / -; 1.0", "0.5 / -; 1.0 |"], by_label["Redis / MariaDB CPU s; generator CPU s"])

    def test_no_storm_no_table(self):
        self.assertEqual([], load_run().storm_table({"results": {}}))

"""The Grafana dashboard and the Prometheus alert rules point at metrics a
running imd exports, and the rules do what they say (promtool).

Data-driven: every PromQL expression in ``MONITORING_FILES`` is checked, so a
new panel or rule is checked by just being there; a new alert also needs its
case in ``ALERT_CASES``.
"""

import json
import os
import shutil
import subprocess

import yaml
from twisted.internet import threads
from twisted.trial import unittest

from tests.monitoring_support import (RunningImd, exported_names, http_get, promql_metric_names,
                                      template_query_expr)
from tests.support import RedisTestMixin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "etc", "grafana", "imd.json")
ALERTS = os.path.join(ROOT, "etc", "prometheus", "imd-alerts.yml")


def dashboard_expressions(path=DASHBOARD):
    """``[(where, PromQL)]``: every panel target and template variable query."""
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            title = node.get("title", where)
            if isinstance(node.get("expr"), str):
                found.append(("panel %r" % title, node["expr"]))
            for key, value in node.items():
                if key != "templating":
                    walk(value, title)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)
    walk(dashboard, "dashboard")
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            expr = template_query_expr(variable.get("query"))
            if expr:
                found.append(("variable %r" % variable["name"], expr))
    return found


def alert_rules(path=ALERTS):
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_expressions(path=ALERTS):
    return [("alert %r" % rule.get("alert", rule.get("record")), rule["expr"]) for rule in alert_rules(path)]


MONITORING_FILES = ((DASHBOARD, dashboard_expressions), (ALERTS, alert_expressions))


class PromqlNamesTests(unittest.SynchronousTestCase):
    """The extractor the checks below rely on."""

    def test_names_not_functions_labels_or_durations(self):
        cases = {
            'histogram_quantile(0.99, sum by (le) (rate(imd_ack_latency_seconds_bucket{instance=~"$instance"}'
            '[$__rate_interval])))': {"imd_ack_latency_seconds_bucket"},
            'sum(rate(imd_errors_total{code="unavailable"}[2m])) / (sum(rate(imd_acks_total[2m])) + '
            'sum(rate(imd_errors_total[2m]))) > 0.01': {"imd_errors_total", "imd_acks_total"},
            "max(imd_nodes_registered) < 1 or absent(imd_nodes_registered)": {"imd_nodes_registered"},
            "min by (instance, port) (imd_tls_certificate_expiry_timestamp_seconds) - time() < 14 * 86400":
                {"imd_tls_certificate_expiry_timestamp_seconds"},
            "sum(x) without (job) / on (instance) group_left (node) y offset 5m": {"x", "y"},
            'up{job="a}b"} unless count by (a) (rate(z[5m:1m]))': {"up", "z"},
            "deriv(imd_mq_length[5m]) > bool 0 and nan": {"imd_mq_length"},
        }
        for expr, names in cases.items():
            self.assertEqual(promql_metric_names(expr), names, expr)

    def test_template_queries(self):
        self.assertEqual(template_query_expr({"query": "label_values(imd_process_info, instance)"}),
                         "imd_process_info")
        self.assertEqual(template_query_expr("query_result(max(imd_mq_length))"), "max(imd_mq_length)")
        self.assertIsNone(template_query_expr("label_names()"))


class FilesTests(unittest.SynchronousTestCase):

    def test_the_dashboard_covers_what_operators_watch(self):
        expressions = dashboard_expressions()
        self.assertGreaterEqual(len(expressions), 25)
        used = set().union(*(promql_metric_names(expr) for _, expr in expressions))
        for name in ("imd_connections_open", "imd_logins_total", "imd_packets_in_total",
                     "imd_ack_latency_seconds_bucket", "imd_errors_total", "imd_mq_length",
                     "imd_migrator_lag_seconds", "imd_store_errors_total", "imd_store_up",
                     "imd_nodes_registered", "imd_mq_dead_length"):
            self.assertIn(name, used)
        with open(DASHBOARD, encoding="utf-8") as f:
            dashboard = json.load(f)
        ids = [panel["id"] for panel in dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])

    def test_every_alert_has_a_runbook(self):
        rules = alert_rules()
        self.assertEqual(sorted(rule["alert"] for rule in rules), sorted(ALERT_CASES))
        for rule in rules:
            self.assertIn("for", rule, rule["alert"])
            self.assertIn(rule["labels"]["severity"], ("page", "ticket"), rule["alert"])
            for key in ("summary", "description", "runbook"):
                self.assertTrue(rule["annotations"].get(key, "").strip(), "%s: %s" % (rule["alert"], key))
        with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as f:
            operations = f.read()
        for rule in rules:
            self.assertIn(rule["alert"], operations, "docs/operations.md says what to do")


class MetricsExistTests(RedisTestMixin, unittest.TestCase):
    """No panel or rule points at nothing: each metric name is exported by a
    running imd (every role, TLS listener, migrator)."""

    async def test_every_expression_reads_exported_metrics(self):
        imd = await RunningImd(self).start()
        self.addCleanup(imd.stop)
        code, body = await http_get(imd.url)
        self.assertEqual(code, 200)
        exported = exported_names(body)
        missing = []
        for path, expressions in MONITORING_FILES:
            for where, expr in expressions(path):
                for name in sorted(promql_metric_names(expr) - exported):
                    missing.append("%s, %s: %s" % (os.path.relpath(path, ROOT), where, name))
        self.assertEqual(missing, [])


# --- promtool ------------------------------------------------------------------

def promtool():
    """promtool on PATH or beside this Python (bin/ensure-promtool), or None."""
    beside = os.path.join(os.path.dirname(os.path.abspath(os.sys.executable)), "promtool")
    return shutil.which("promtool") or (beside if os.access(beside, os.X_OK) else None)


# alert -> groups of (input series {series: values}, {eval time: fires?}).  Each
# group is one promtool test: ``count(<the rule's expr>)`` is 1 where it
# fires and empty where not (``for`` is Prometheus's business).
ALERT_CASES = {
    "ImdMigratorLagging": [
        ({'imd_migrator_lag_seconds{instance="m"}': "5 45 20"}, {"0m": False, "1m": True, "2m": False})],
    "ImdQueueGrowing": [
        ({'imd_mq_length{instance="a"}': "1000+100x15", 'imd_mq_length{instance="b"}': "1000+100x15"},
         {"10m": True}),
        ({'imd_mq_length{instance="a"}': "5000x15"}, {"10m": False}),
        ({'imd_mq_length{instance="a"}': "0+10x15"}, {"10m": False})],
    "ImdUnavailableAnswers": [
        ({'imd_errors_total{code="unavailable"}': "0+2x10", 'imd_errors_total{code="not_friend"}': "0x10",
          "imd_acks_total": "0+100x10"}, {"5m": True}),
        ({'imd_errors_total{code="unavailable"}': "0+0.5x10", "imd_acks_total": "0+100x10"}, {"5m": False}),
        ({'imd_errors_total{code="unavailable"}': "0x10", "imd_acks_total": "0x10"}, {"5m": False})],
    "ImdNoNodeRegistered": [
        ({'imd_nodes_registered{instance="a"}': "1 1 0 0", 'imd_nodes_registered{instance="b"}': "1 0 0 0"},
         {"0m": False, "1m": False, "2m": True}),
        ({'imd_mq_length{instance="a"}': "0 0"}, {"1m": True})],
    "ImdDeadLetters": [
        ({'imd_mq_dead_length{instance="a"}': "0 0 3"}, {"1m": False, "2m": True})],
    "ImdCertificateExpiring": [
        ({'imd_tls_certificate_expiry_timestamp_seconds{instance="a",port="443",certificate="c"}': "864000",
          'imd_tls_certificate_expiry_timestamp_seconds{instance="b",port="443",certificate="c"}': "2592000"},
         {"0m": True}),
        ({'imd_tls_certificate_expiry_timestamp_seconds{instance="b",port="443",certificate="c"}': "2592000"},
         {"0m": False})],
    "ImdStoreDown": [
        ({'imd_store_up{instance="a",store="redis"}': "1 1 0", 'imd_store_up{instance="a",store="mysql"}': "1 1 1"},
         {"1m": False, "2m": True})],
    "ImdRedisReplicasShort": [
        ({'imd_redis_wait_failures_total{instance="a"}': "0+60x10"}, {"5m": True}),
        ({'imd_redis_wait_failures_total{instance="a"}': "0+1x10"}, {"5m": False})],
    "ImdRedisFailover": [
        ({'imd_redis_master_changes_total{instance="a"}': "0 0 1 1", 'imd_redis_master_changes_total{instance="b"}':
          "0 0 0 0"}, {"1m": False, "2m": True}),
        ({'imd_redis_master_changes_total{instance="a"}': "3 3 3"}, {"2m": False})],
    "ImdNoMigratorLeading": [
        ({'imd_migrator_leader{instance="a"}': "1 0", 'imd_migrator_leader{instance="b"}': "0 0"},
         {"0m": False, "1m": True}),
        ({'imd_mq_length{instance="a"}': "0 0"}, {"1m": True})],
    "ImdPushesDelayed": [
        ({'imd_push_oldest_pending_seconds{instance="a"}': "10 200 400 10",
          'imd_push_oldest_pending_seconds{instance="b"}': "10 10 10 10"},
         {"1m": False, "2m": True, "3m": False})],
    "ImdPushesRejected": [
        ({'imd_push_sent_total': "0+100x20", 'imd_push_failed_total{reason="rejected"}': "0+50x20",
          'imd_push_failed_total{reason="expired"}': "0x20"}, {"15m": True}),
        ({'imd_push_sent_total': "0+100x20", 'imd_push_failed_total{reason="rejected"}': "0+5x20"},
         {"15m": False}),
        ({'imd_push_sent_total': "0x20", 'imd_push_failed_total{reason="rejected"}': "0x20"}, {"15m": False})],
}


class PromtoolTests(unittest.TestCase):

    def setUp(self):
        self.promtool = promtool()
        if self.promtool is None:
            raise unittest.SkipTest("promtool is not installed (Debian package prometheus; make promtool)")

    def run_promtool(self, *args):
        return threads.deferToThread(subprocess.run, [self.promtool] + list(args),
                                     capture_output=True, text=True, timeout=60)

    async def test_check_rules(self):
        result = await self.run_promtool("check", "rules", ALERTS)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS: %d rules found" % len(ALERT_CASES), result.stdout)

    async def test_each_alert_fires_when_it_should(self):
        rules = {rule["alert"]: rule for rule in alert_rules()}
        tests = []
        for alert, groups in sorted(ALERT_CASES.items()):
            for series, expectations in groups:
                tests.append({
                    "interval": "1m",
                    "input_series": [{"series": name, "values": values} for name, values in series.items()],
                    "promql_expr_test": [
                        {"expr": "count(%s)" % rules[alert]["expr"].strip(), "eval_time": at,
                         "exp_samples": [{"labels": "{}", "value": 1}] if fires else []}
                        for at, fires in sorted(expectations.items())],
                })
        path = os.path.abspath(self.mktemp()) + ".yml"
        with open(path, "w") as f:
            yaml.safe_dump({"rule_files": [ALERTS], "evaluation_interval": "1m", "tests": tests}, f)
        result = await self.run_promtool("test", "rules", path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

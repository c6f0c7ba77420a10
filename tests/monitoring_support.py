"""A whole imd (every role, built by ``App.build_service`` as twistd does)
running in the test process with ``[imd] metrics_listen`` on port 0, and
what the monitoring tests need around it: scraping, and the metric names a
PromQL expression uses."""

import os
import re

from twisted.internet import defer, reactor, threads
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from imd.app import App
from imd.stores.processes import ProcessRegistry
from imd.stores.redis import RedisClient
from tests.http_support import ensure_test_database
from tests.support import DEADLINE, make_settings, wait_until, with_deadline
from tests.tls_support import TestCA


def write_certificate(testcase):
    """``(key path, cert path)`` of a fresh certificate from a test CA."""
    cert_pem, key_pem, _ = TestCA().issue("localhost")
    where = os.path.abspath(testcase.mktemp())
    os.makedirs(where)
    paths = os.path.join(where, "key.pem"), os.path.join(where, "cert.pem")
    for path, data in zip(paths, (key_pem, cert_pem)):
        with open(path, "wb") as f:
            f.write(data)
    return paths


class RunningImd:
    """``App.build_service()`` started: ws, http and migrate roles, a wss
    listener (so certificate expiry is exported), metrics on port 0."""

    def __init__(self, testcase, overrides=None):
        key, cert = write_certificate(testcase)
        values = {
            # (the migrator in this process: its settings have no ini file for a child to read)
            "imd": {"roles": "ws, http, migrate", "metrics_listen": "tcp:0:interface=127.0.0.1", "migrator": "inline"},
            "websocket": {"tls_listen": "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (key, cert)},
            "presence": {"ttl": "3"},
        }
        for section, more in (overrides or {}).items():
            values.setdefault(section, {}).update(more)
        self.settings = make_settings(values)
        self.app = App(self.settings, reactor)
        self.service = None

    @defer.inlineCallbacks
    def start(self):
        yield threads.deferToThread(ensure_test_database)
        self.service = self.app.build_service()
        self.service.startService()
        yield wait_until(lambda: self.app.bus.healthy, what="node registered")
        yield wait_until(lambda: not self.app.startup.starting, what="start-up over (/healthz no longer 'starting')")
        yield wait_until(self.metrics_url, what="metrics URL in the process registry")
        self.url = yield self.metrics_url()
        return self

    @defer.inlineCallbacks
    def metrics_url(self):
        """The URL this process registered in Redis (empty until it has)."""
        client = RedisClient(self.settings.redis.url, self.settings.redis.timeout, reactor)
        client.startService()
        try:
            yield client.wait_connected(DEADLINE)
            processes = yield ProcessRegistry(client, self.app.keys).processes()
        finally:
            yield client.stopService()
        for info in processes:
            if info["node"] == self.app.node_id and info["metrics"]:
                return info["metrics"]
        return ""

    def stop(self):
        if self.service is not None and self.service.running:
            return self.service.stopService()
        return None


@defer.inlineCallbacks
def http_get(url, seconds=DEADLINE):
    """``(status, body bytes)`` of a GET."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        response = yield with_deadline(Agent(reactor, pool=pool).request(b"GET", url.encode("ascii")),
                                       seconds, "HTTP response")
        body = yield with_deadline(readBody(response), seconds, "HTTP body")
    finally:
        yield pool.closeCachedConnections()
    return response.code, body


def samples(exposition):
    """``{series: value}`` of Prometheus text (``name{labels}`` as written)."""
    values = {}
    for line in exposition.decode("utf-8").splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def exported_names(exposition):
    """The metric names with at least one sample in Prometheus text."""
    return {re.match(r"[A-Za-z_:][\w:]*", series).group(0) for series in samples(exposition)}


# --- PromQL ------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "offset", "bool", "inf", "nan"}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*")
# Grafana template queries: label_values(metric, label), query_result(expr), metrics(regex)
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\(\s*(.*?)\s*,\s*[\w]+\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((.*)\)\s*$", re.S)


def promql_metric_names(expr):
    """Every metric name a PromQL expression reads (functions, keywords,
    labels, durations and strings left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)      # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)     # ranges and subqueries
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        if text[match.end():].lstrip().startswith("("):
            continue   # a function (or an aggregation written sum(...))
        if name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def template_query_expr(query):
    """The PromQL inside a Grafana template variable's query, or None."""
    if isinstance(query, dict):
        query = query.get("query", "")
    if not isinstance(query, str) or not query.strip():
        return None
    for pattern in (_LABEL_VALUES, _QUERY_RESULT):
        match = pattern.match(query)
        if match:
            return match.group(1)
    if query.strip().startswith("label_names("):
        return None
    return query

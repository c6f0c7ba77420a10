"""``[imd] metrics_listen``: every process serves ``/metrics`` and
``/healthz`` and registers where in Redis; the figures read at scrape time;
the certificate expiry."""

import json
import os

from twisted.internet import reactor, task
from twisted.trial import unittest

from imd.config import ConfigError, parse_settings
from imd.scrape import ProcessAnnouncer, configured_metrics_url, metrics_url
from imd.stores.keys import Keys
from imd.stores.processes import ProcessRegistry, process_identity
from imd.stores.redis import RedisClient
from imd.tap import Options
from tests.monitoring_support import RunningImd, http_get, samples
from tests.support import RedisTestMixin, make_settings, settings_text, wait_until


class MetricsListenConfigTests(unittest.SynchronousTestCase):

    def test_default_is_off(self):
        self.assertEqual(make_settings().imd.metrics_listen, "")

    def test_a_bad_endpoint_is_one_config_line(self):
        with self.assertRaises(ConfigError) as caught:
            parse_settings(settings_text({"imd": {"metrics_listen": "tcp:notaport"}}), "imd.ini")
        self.assertIn("imd.ini: [imd] metrics_listen: not a usable Twisted endpoint string", str(caught.exception))

    def test_a_port_another_listener_takes_is_refused(self):
        with self.assertRaises(ConfigError) as caught:
            parse_settings(settings_text({"imd": {"roles": "ws, http", "metrics_listen": "tcp:8766"},
                                          "http": {"listen": "tcp:port=8766:interface=127.0.0.1"}}), "imd.ini")
        self.assertEqual(str(caught.exception), "imd.ini: [imd] metrics_listen: port 8766 is already "
                                                "[http] listen's; give metrics a port of their own")
        # another role's port is free in this process
        parse_settings(settings_text({"imd": {"roles": "ws", "metrics_listen": "tcp:8766"},
                                      "http": {"listen": "tcp:8766:interface=127.0.0.1"}}), "imd.ini")

    def test_the_command_line_overrides_it(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(settings_text())
        options = Options()
        options.parseOptions(["--config", path, "--metrics-listen", "tcp:18765:interface=127.0.0.1"])
        self.assertEqual(options.settings.imd.metrics_listen, "tcp:18765:interface=127.0.0.1")
        options = Options()
        options.parseOptions(["--config", path, "--metrics-listen="])
        self.assertEqual(options.settings.imd.metrics_listen, "")

    def test_urls(self):
        self.assertEqual(metrics_url("127.0.0.1", 18765), "http://127.0.0.1:18765/metrics")
        self.assertEqual(metrics_url("::1", 9, secure=True), "https://[::1]:9/metrics")
        self.assertEqual(metrics_url("0.0.0.0", 9), "http://%s:9/metrics" % os.uname().nodename)
        self.assertEqual(configured_metrics_url("tcp:8766:interface=127.0.0.1"), "http://127.0.0.1:8766/metrics")
        self.assertEqual(configured_metrics_url(r"tcp:port=8766:interface=\:\:1"), "http://[::1]:8766/metrics")
        self.assertEqual(configured_metrics_url("tcp:0:interface=127.0.0.1"), "")
        self.assertEqual(configured_metrics_url("unix:/run/imd.sock"), "")


class ProcessRegistryTests(RedisTestMixin, unittest.TestCase):

    def client(self):
        client = RedisClient(make_settings().redis.url, 1, reactor)
        client.startService()
        self.addCleanup(client.stopService)
        return client

    async def test_entries_expire_and_ready_nodes_need_a_heartbeat(self):
        client = self.client()
        await client.wait_connected()
        registry = ProcessRegistry(client, Keys())
        ws, migrate = process_identity("h:8765", {"ws"}), process_identity("h:migrate", ["migrate"])
        self.assertEqual((ws, migrate), ("h:8765/ws", "h:migrate/migrate"))
        await registry.register(ws, {"node": "h:8765", "roles": "ws", "metrics": "http://h:1/metrics"}, 30)
        await registry.register(migrate, {"node": "h:migrate", "roles": "migrate", "metrics": ""}, 0.05)
        self.assertEqual(await registry.ready_nodes(), 0)   # no heartbeat of node h:8765
        await self.redis.zadd("nodes", int(reactor.seconds() * 1000) + 60000, "h:8765")
        self.assertEqual(await registry.ready_nodes(), 1)

        await wait_until(lambda: registry.processes().addCallback(len).addCallback(lambda n: n == 1),
                         what="the short-lived entry to expire")
        self.assertEqual([p["node"] for p in await registry.processes()], ["h:8765"])
        # the next refresh deletes what expired; both keys have an expiry
        await registry.register(ws, {"node": "h:8765", "roles": "ws", "metrics": ""}, 30)
        self.assertEqual(await self.redis.hkeys("processes:info"), ["h:8765/ws"])
        self.assertGreater(await self.redis.execute_command("PTTL", "processes"), 0)
        await registry.unregister(ws)
        self.assertEqual(await registry.processes(), [])

    async def test_the_announcer_refreshes_and_leaves(self):
        client = self.client()
        await client.wait_connected()
        registry = ProcessRegistry(client, Keys("p:"))
        clock = task.Clock()
        calls = []

        def info():
            calls.append(1)
            return {"node": "n", "roles": "ws", "metrics": ""}
        announcer = ProcessAnnouncer(registry, "n/ws", info, 30, clock)
        announcer.startService()
        await wait_until(lambda: registry.processes().addCallback(bool), what="registered")
        self.assertEqual(len(calls), 1)
        clock.advance(10)   # ttl / 3
        self.assertEqual(len(calls), 2)
        await announcer.stopService()
        self.assertEqual(await registry.processes(), [])

    def test_stopped_before_redis_connects_it_leaves_nothing_running(self):
        # a process stopped while Redis was never reached: its stop ends at
        # once (it does not wait out [redis] timeout or the ttl), and nothing
        # is left to run later -- no wait for Redis, no announcement
        clock = task.Clock()
        client = RedisClient(make_settings().redis.url, 1, clock)   # never started: never connects
        announcer = ProcessAnnouncer(ProcessRegistry(client, Keys()), "n/ws", dict, 30, clock)
        announcer.startService()
        self.assertNotEqual(clock.getDelayedCalls(), [])   # the refresh loop, the wait for Redis
        stopped = announcer.stopService()
        self.successResultOf(stopped)   # already fired, and not with a failure
        self.assertEqual(clock.getDelayedCalls(), [])


class EveryProcessIsScrapedTests(RedisTestMixin, unittest.TestCase):

    async def test_a_ws_only_process_serves_metrics_and_health(self):
        imd = await RunningImd(self, {"imd": {"roles": "ws"}}).start()
        self.addCleanup(imd.stop)
        self.assertTrue(imd.url.startswith("http://127.0.0.1:"), imd.url)
        code, body = await http_get(imd.url)
        self.assertEqual(code, 200)
        values = samples(body)
        self.assertEqual(values["imd_connections_open"], 0)
        self.assertEqual(values["imd_nodes_registered"], 1)
        self.assertEqual(values['imd_store_up{store="redis"}'], 1)
        self.assertEqual(values['imd_process_info{node="test-node-1",roles="ws",version="0.1.0"}'], 1)
        self.assertNotIn("imd_migrator_lag_seconds", values)
        code, body = await http_get(imd.url.replace("/metrics", "/healthz"))
        health = json.loads(body)
        self.assertEqual((code, health["redis"], health["mysql"]), (200, "ok", "ok"))
        self.assertEqual(health["redis_master"], "127.0.0.1:6379")
        code, _ = await http_get(imd.url.replace("/metrics", "/IM/token"))
        self.assertEqual(code, 404)

    async def test_figures_read_at_scrape_time(self):
        imd = await RunningImd(self).start()
        self.addCleanup(imd.stop)
        await self.redis.lpush("MQ:dead", "not json")
        await self.redis.lpush("MQ:dead", "nor this")
        values = samples((await http_get(imd.url))[1])
        self.assertEqual(values["imd_mq_dead_length"], 2)
        self.assertEqual(values["imd_nodes_registered"], 1)
        self.assertEqual(values['imd_store_up{store="mysql"}'], 1)
        self.assertIn("imd_migrator_lag_seconds", values)
        expiry = [v for k, v in values.items() if k.startswith("imd_tls_certificate_expiry_timestamp_seconds{")]
        self.assertEqual(len(expiry), 1)
        self.assertLess(abs(expiry[0] - (reactor.seconds() + 86400)), 7200)   # the test CA's 1 day

    async def test_a_stopped_node_leaves_the_registry(self):
        imd = await RunningImd(self).start()
        await imd.stop()
        self.assertEqual(await imd.metrics_url(), "")
        self.assertIsNone(await self.redis.zscore("nodes", "test-node-1"))


class SystemdMetricsPortTests(unittest.SynchronousTestCase):
    """Every unit's process gets a /metrics of its own, on a port of its own."""

    def metrics_listen(self, unit, instance):
        from tests.test_systemd import read_unit
        service = read_unit(unit)["Service"]
        env = dict(line.split("=", 1) for line in service.get("Environment", "").splitlines() if line)
        argv = service["ExecStart"].replace("${IMD_METRICS_LISTEN}", env.get("IMD_METRICS_LISTEN", ""))
        argv = argv.replace("%i", instance).replace("%H", "host").split()
        options = Options()
        options.postOptions = lambda: None
        options.parseOptions(argv[argv.index("imd") + 1:])
        return options["metrics-listen"]

    def test_ports(self):
        listens = {
            "ws 8765": self.metrics_listen("imd-ws@.service", "8765"),
            "ws 8767": self.metrics_listen("imd-ws@.service", "8767"),
            "activated 8768": self.metrics_listen("imd-ws-activated@.service", "8768"),
            "migrate": self.metrics_listen("imd-migrate.service", ""),
        }
        self.assertEqual(listens, {"ws 8765": "tcp:18765:interface=127.0.0.1",
                                   "ws 8767": "tcp:18767:interface=127.0.0.1",
                                   "activated 8768": "tcp:18768:interface=127.0.0.1",
                                   "migrate": "tcp:9766:interface=127.0.0.1"})
        for listen in listens.values():
            parse_settings(settings_text({"imd": {"metrics_listen": listen}}), "imd.ini")
        # the http role serves its own /metrics on [http] listen, from the ini
        self.assertIsNone(self.metrics_listen("imd-http.service", ""))

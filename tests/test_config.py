"""Config: every kind of mistake stops start-up with one line naming file, section and key."""

import os
import subprocess
import sys

from twisted.trial import unittest

from imd.config import ConfigError, default_settings, load_settings, parse_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SettingsTests(unittest.SynchronousTestCase):

    def assert_error(self, text, section, key, words):
        with self.assertRaises(ConfigError) as caught:
            parse_settings(text, "etc/test.ini")
        error = caught.exception
        line = str(error)
        self.assertEqual((error.section, error.key), (section, key))
        self.assertTrue(line.startswith("etc/test.ini: "), line)
        self.assertNotIn("\n", line)
        if section:
            self.assertIn("[%s]" % section, line)
        if key:
            self.assertIn(key, line)
        self.assertIn(words, line)

    def test_defaults_are_the_contract_defaults(self):
        s = default_settings()
        self.assertEqual(s.imd.roles, frozenset({"ws", "http", "migrate"}))
        self.assertEqual(s.websocket.listen, "tcp:8765:interface=127.0.0.1")
        self.assertEqual((s.websocket.max_message_bytes, s.websocket.idle_timeout, s.websocket.max_devices,
                          s.websocket.max_errors, s.websocket.rate, s.websocket.burst),
                         (65536, 90, 5, 20, 20, 40))
        self.assertEqual((s.auth.single_use, s.auth.token_ttl), (True, 120))
        self.assertEqual((s.redis.url.host, s.redis.url.port, s.redis.url.db, s.redis.timeout),
                         ("127.0.0.1", 6379, 0, 5))
        self.assertEqual((s.mysql.database, s.mysql.pool_min, s.mysql.pool_max), ("imd", 2, 8))
        self.assertEqual((s.migrate.batch, s.migrate.interval), (500, 0.2))
        self.assertEqual(s.orders.courier_column, "courier_id")
        self.assertEqual((s.presence.ttl, s.site.min_interval, s.log.format, s.log.messages), (30, 1, "text", False))

    def test_shipped_ini_is_valid_and_lists_every_key(self):
        path = os.path.join(ROOT, "etc", "imd.ini")
        settings = load_settings(path)
        self.assertEqual(settings.websocket, default_settings().websocket)
        import configparser
        import dataclasses
        from imd.config import SECTIONS
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path)
        for name, cls in SECTIONS.items():
            self.assertEqual(set(parser[name]), {f.name for f in dataclasses.fields(cls)}, name)

    def test_values_are_typed(self):
        s = parse_settings("[websocket]\nrate = 2.5\nburst = 7\n[auth]\nsingle_use = no\n"
                           "[redis]\nurl = redis://:p%40ss@10.0.0.1:6380/3\n")
        self.assertEqual((s.websocket.rate, s.websocket.burst, s.auth.single_use), (2.5, 7, False))
        self.assertEqual((s.redis.url.host, s.redis.url.port, s.redis.url.db, s.redis.url.password),
                         ("10.0.0.1", 6380, 3, "p@ss"))

    def test_unknown_section(self):
        self.assert_error("[webscoket]\nlisten = tcp:1\n", "webscoket", None, "unknown section")

    def test_unknown_key(self):
        self.assert_error("[websocket]\nmax_conn = 3\n", "websocket", "max_conn", "unknown key")

    def test_bad_values(self):
        self.assert_error("[websocket]\nrate = fast\n", "websocket", "rate", "expected a number")
        self.assert_error("[websocket]\nburst = 0\n", "websocket", "burst", "at least 1")
        self.assert_error("[websocket]\nmax_devices = 2.5\n", "websocket", "max_devices", "integer")
        self.assert_error("[auth]\nsingle_use = maybe\n", "auth", "single_use", "true or false")
        self.assert_error("[imd]\nroles = ws, chat\n", "imd", "roles", "unknown role")
        self.assert_error("[redis]\nurl = http://x\n", "redis", "url", "redis://")
        self.assert_error("[mysql]\nport = 70000\n", "mysql", "port", "at most 65535")
        self.assert_error("[mysql]\ndatabase = imd; drop\n", "mysql", "database", "identifier")
        self.assert_error("[log]\nformat = xml\n", "log", "format", "text, json")
        self.assert_error("[websocket]\nlisten = tcpp:80\n", "websocket", "listen", "endpoint")
        self.assert_error("[http]\nauth = basic\n", "http", "auth", "dev")
        self.assert_error("[http]\npublic_ws_url = http://x\n", "http", "public_ws_url", "ws://")

    def test_orders_table_may_name_another_database(self):
        # contract v3 §9, last paragraph: the platform's own database's table
        settings = parse_settings("[orders]\ntable = platform.orders\n")
        self.assertEqual((settings.orders.table, settings.orders.table_sql, settings.orders.table_database),
                         ("platform.orders", "`platform`.`orders`", "platform"))
        own = parse_settings("")
        self.assertEqual((own.orders.table_sql, own.orders.table_database), ("`orders`", None))
        for bad in ("platform.orders.x", "platform.", ".orders", "1db.orders", "platform.or-ders", "a b",
                    "platform`.orders", "platform.orders; drop", "x" * 65 + ".orders"):
            self.assert_error("[orders]\ntable = %s\n" % bad, "orders", "table", "database.table")

    def test_cross_key_rules(self):
        self.assert_error("[mysql]\npool_min = 9\n", "mysql", "pool_min", "pool_max")
        self.assert_error("[http]\nlisten = tcp:8766:interface=0.0.0.0\n", "http", "auth", "loopback")
        parse_settings("[http]\nlisten = tcp:8766:interface=0.0.0.0\nauth = hs256:%s\n" % ("s" * 32))

    def test_push_secret_is_required_with_url_and_long(self):
        url = "[push]\nurl = http://127.0.0.1:9/push\n"
        self.assert_error(url, "push", "secret", "required")
        # contract §7.5: at least 32 bytes (a short one is guessed from one captured push)
        self.assert_error(url + "secret = %s\n" % ("s" * 31), "push", "secret", "at least 32 bytes (it has 31)")
        self.assert_error("[push]\nsecret = short\n", "push", "secret", "at least 32 bytes")
        self.assert_error(url + "secret = %s\n" % ("é" * 15), "push", "secret", "(it has 30)")   # bytes, not characters
        self.assertEqual(parse_settings(url + "secret = %s\n" % ("s" * 32)).push.secret, "s" * 32)
        self.assertEqual(parse_settings("[push]\n").push.secret, "")

    def test_a_listener_is_read_as_twisted_binds_it(self):
        # issue 13 item 6: the loopback check read the first interface=,
        # Twisted binds the last one (here every interface) -- an error naming the key
        for section in ("http", "websocket"):
            self.assert_error("[%s]\nlisten = tcp:8766:interface=127.0.0.1:interface=0.0.0.0\n" % section,
                              section, "listen", "interface is given twice")
        self.assert_error("[http]\nlisten = tcp:8766:127.0.0.1:interface=0.0.0.0\n", "http", "listen",
                          "interface is given twice")
        # IPv6 loopback (colons escaped, as Twisted reads them) is loopback for dev auth
        settings = parse_settings("[http]\nlisten = tcp6:8766:interface=\\:\\:1\n")
        self.assertEqual(settings.http.auth, "dev")
        self.assert_error("[http]\nlisten = tcp6:8766:interface=\\:\\:\n", "http", "auth", "loopback")

    def test_redis_high_availability_keys(self):
        s = parse_settings("[redis]\nsentinels = 127.0.0.1:26379, sentinel-2.example:26380\nmaster_name = imd\n"
                           "min_replicas = 1\nreplica_timeout = 0.25\n")
        self.assertEqual(s.redis.sentinels, (("127.0.0.1", 26379), ("sentinel-2.example", 26380)))
        self.assertEqual((s.redis.master_name, s.redis.min_replicas, s.redis.replica_timeout), ("imd", 1, 0.25))
        self.assert_error("[redis]\nsentinels = 127.0.0.1:26379\n", "redis", "master_name", "required")
        self.assert_error("[redis]\nmaster_name = imd\n", "redis", "sentinels", "required")
        self.assert_error("[redis]\nsentinels = 127.0.0.1\nmaster_name = imd\n", "redis", "sentinels", "host:port")
        self.assert_error("[redis]\nsentinels = a:1, a:1\nmaster_name = imd\n", "redis", "sentinels", "twice")
        self.assert_error("[redis]\nsentinels = a b:1\nmaster_name = imd\n", "redis", "sentinels", "host name")
        self.assert_error("[redis]\nsentinels = a:1\nmaster_name = my master\n", "redis", "master_name",
                          "letters, digits")
        self.assert_error("[redis]\nmin_replicas = -1\n", "redis", "min_replicas", "at least 0")
        self.assert_error("[redis]\nmin_replicas = one\n", "redis", "min_replicas", "integer")
        self.assert_error("[redis]\nreplica_timeout = 0\n", "redis", "replica_timeout", "at least 0.001")
        self.assert_error("[redis]\nmin_replicas = 1\nreplica_timeout = 5\n", "redis", "replica_timeout",
                          "less than [redis] timeout")
        parse_settings("[redis]\nmin_replicas = 0\nreplica_timeout = 5\n")   # unused without min_replicas

    def test_not_an_ini(self):
        self.assert_error("listen = 1\n", None, None, "cannot parse")

    def test_missing_file(self):
        with self.assertRaises(ConfigError) as caught:
            load_settings("/nonexistent/imd.ini")
        self.assertIn("/nonexistent/imd.ini", str(caught.exception))
        self.assertIn("cannot read", str(caught.exception))
        self.assertIn("--config FILE", str(caught.exception))


class TwistdConfigErrorTests(unittest.TestCase):
    """``twistd imd`` with a bad config prints one line and no traceback."""

    def run_twistd(self, config_path):
        env = dict(os.environ, PYTHONPATH=ROOT)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        return subprocess.run([twistd, "-n", "--pidfile=", "imd", "--config", config_path],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    def test_each_kind_of_error_is_one_line(self):
        bad = os.path.abspath(self.mktemp())
        cases = {
            "[nope]\n": "[nope]",
            "[websocket]\nfoo = 1\n": "[websocket] foo",
            "[websocket]\nrate = x\n": "[websocket] rate",
        }
        for text, where in cases.items():
            with open(bad, "w") as f:
                f.write(text)
            result = self.run_twistd(bad)
            self.assertNotEqual(result.returncode, 0)
            lines = result.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertIn(bad, lines[0])
            self.assertIn(where, lines[0])
            self.assertNotIn("Traceback", result.stdout + result.stderr)
        result = self.run_twistd("/nonexistent/imd.ini")
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("/nonexistent/imd.ini", result.stderr)

    def test_imd_admin_outside_the_checkout_names_the_option(self):
        # issue 22 item 16: run from elsewhere without --config, it said only
        # "cannot read the config file"
        elsewhere = os.path.abspath(self.mktemp())
        os.mkdir(elsewhere)
        admin = os.path.join(os.path.dirname(sys.executable), "imd-admin")
        result = subprocess.run([admin, "friend", "list", "1"], cwd=elsewhere, capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(result.stderr.splitlines(),
                         ["imd-admin: config error: etc/imd.ini: cannot read the config file: "
                          "No such file or directory (name it with --config FILE)"])

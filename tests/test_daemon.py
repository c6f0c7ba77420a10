"""The real programs: ``imd-admin`` and ``twistd -n imd`` as subprocesses."""

import json
import os
import subprocess
import sys

import jwt
from twisted.internet import defer, protocol, reactor, threads
from twisted.protocols import portforward
from twisted.trial import unittest

from tests.daemon_support import spawn_daemon, start_daemon
from tests.http_support import ensure_test_database
from tests.support import (DEADLINE, PrivateRedis, RedisTestMixin, connect_client, drop, free_port, key_pair,
                           mysql_db, redis_connection, redis_db, settings_text, wait_until, with_deadline)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


class ProgramTestMixin(RedisTestMixin):

    def write_config(self, overrides=None):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(settings_text(overrides))
        return path

    def admin(self, config, *args):
        result = subprocess.run([os.path.join(BIN, "imd-admin"), "--config", config] + list(args),
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        return result.returncode, result.stdout, result.stderr


class AdminTests(ProgramTestMixin, unittest.TestCase):

    def test_keys_init_does_not_replace_without_force(self):
        config = self.write_config()
        code, out, _ = self.admin(config, "keys", "init")
        self.assertEqual(code, 0)
        self.assertIn("already set", out)

    async def test_keys_init_on_an_empty_redis_then_force(self):
        await self.redis.delete("publicKey", "privateKey")
        config = self.write_config()
        code, out, err = self.admin(config, "keys", "init")
        self.assertEqual(code, 0, err)
        first = await self.redis.get("publicKey")
        self.assertTrue(first.startswith("-----BEGIN PUBLIC KEY-----"))
        self.assertTrue((await self.redis.get("privateKey")).startswith("-----BEGIN PRIVATE KEY-----"))
        code, out, err = self.admin(config, "keys", "init", "--force")
        self.assertEqual(code, 0, err)
        self.assertNotEqual(await self.redis.get("publicKey"), first)

    async def test_token_issue_gives_a_token_the_server_accepts(self):
        config = self.write_config()
        code, out, err = self.admin(config, "token", "issue", "31")
        self.assertEqual(code, 0, err)
        claims = jwt.decode(out.strip(), await self.redis.get("publicKey"), algorithms=["RS256"])
        self.assertEqual((claims["id"], claims["type"], claims["exp"] - claims["iat"]), (31, "websocket", 120))
        self.assertTrue(claims["jti"])

    async def test_friend_add_list_rm_both_directions(self):
        config = self.write_config()
        self.assertEqual(self.admin(config, "friend", "add", "1", "2")[0], 0)
        self.assertEqual(self.admin(config, "friend", "add", "1", "3")[0], 0)
        self.assertEqual(self.admin(config, "friend", "list", "1")[1].split(), ["2", "3"])
        self.assertEqual(self.admin(config, "friend", "list", "2")[1].split(), ["1"])
        self.assertEqual(self.admin(config, "friend", "rm", "2", "1")[0], 0)
        self.assertEqual(sorted(await self.redis.smembers("URS:1")), ["3"])
        self.assertEqual(await self.redis.smembers("URS:2"), set())

    def test_bad_arguments_and_unreachable_redis_are_one_line(self):
        config = self.write_config()
        code, _, err = self.admin(config, "friend", "add", "1", "x")
        self.assertNotEqual(code, 0)
        self.assertIn("user id", err)
        code, _, err = self.admin(config, "friend", "add", "4", "4")
        self.assertEqual((code, err.strip()), (1, "imd-admin: a user cannot befriend themselves"))
        dead = self.write_config({"redis": {"url": "redis://127.0.0.1:%d/0" % free_port(), "timeout": "0.5"}})
        code, _, err = self.admin(dead, "friend", "list", "1")
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("cannot connect to redis", err)


class TwistdTests(ProgramTestMixin, unittest.TestCase):

    async def test_twistd_imd_serves_logins_and_messages(self):
        port = free_port()
        config = self.write_config({"websocket": {"listen": "tcp:%d:interface=127.0.0.1" % port},
                                    "imd": {"roles": "ws, http"}})
        # listening, subscribed and registered: a login before that is refused
        daemon = await start_daemon(self, config)
        self.assertEqual(daemon.port, port)
        await self.befriend(1, 2)
        alice = await connect_client(port, "/" + self.token(1))
        bob = await connect_client(port, "/" + self.token(2))
        self.addCleanup(lambda: defer.gatherResults([drop(alice), drop(bob)]))
        self.assertEqual((await alice.next())["type"], "L")
        self.assertEqual((await bob.next())["type"], "L")
        alice.send({"id": "d1", "to": 2, "type": "t", "msg": "via twistd"})
        self.assertEqual((await alice.next())["type"], "A")
        self.assertEqual((await bob.next())["msg"], "via twistd")
        self.assertEqual(await self.redis.llen("MQ"), 1)
        self.assertEqual(redis_db(), self.server_db(config))
        # [http] auth = dev (the default): warned once, at start (issue 22 item 15)
        self.assertEqual(daemon.output().count("[http] auth = dev: POST /IM/token trusts"), 1, daemon.output())

    async def test_a_port_already_bound_stops_start_up_with_one_line_before_registering(self):
        # issue 12 item 4: a second daemon printed two tracebacks, then
        # registered in Redis and ran a standby migrator until killed
        busy = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        taken = "tcp:%d:interface=127.0.0.1" % busy.getHost().port
        for section, key in (("websocket", "listen"), ("http", "listen"), ("imd", "metrics_listen")):
            overrides = {"imd": {"roles": "ws, http, migrate", "metrics_listen": "tcp:0:interface=127.0.0.1"},
                         "migrate": {"lock_ttl": "3"}}
            overrides.setdefault(section, {})[key] = taken
            daemon = spawn_daemon(self, self.write_config(overrides))
            daemon.listening.addErrback(lambda _: None)   # it is not meant to
            where = "[%s] %s" % (section, key)
            code = await daemon.wait_ended(DEADLINE)
            self.assertNotEqual(code, 0, where)
            self.assertEqual(daemon.stderr.decode().splitlines(),
                             ["imd: cannot listen on %s: address already in use" % taken], where)
            self.assertNotIn("Traceback", daemon.output(), where)
            # never registered anywhere, and no migrator took the lock
            self.assertEqual((await self.redis.zcard("nodes"), await self.redis.zcard("processes"),
                              await self.redis.exists("MQ:lock")), (0, 0, 0), where)

    @staticmethod
    def server_db(config):
        from imd.config import load_settings
        return load_settings(config).redis.url.db



def _as_root(*statements):
    import pymysql
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _http_get(port, path):
    """Blocking: (status, body) of a GET to the daemon's http port."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=DEADLINE) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class MysqlStartupTests(ProgramTestMixin, unittest.TestCase):
    """Issue 22 item 4: a MySQL that refuses imd's login, or the database,
    passed start-up quietly ("taking logins and messages"); only /healthz
    and each failing query showed it."""

    @defer.inlineCallbacks
    def setUp(self):
        yield ProgramTestMixin.setUp(self)
        tag = "%d_%s" % (os.getpid(), os.urandom(3).hex())
        self.user, self.password = "imd_t22_" + tag, "right-" + tag
        self.missing = "imd_t22_missing_" + tag
        yield threads.deferToThread(_as_root, "CREATE USER '%s'@'%%' IDENTIFIED BY '%s'" % (self.user, self.password),
                                    "GRANT ALL ON `%s`.* TO '%s'@'%%'" % (self.missing, self.user))
        self.addCleanup(threads.deferToThread, _as_root, "DROP USER IF EXISTS '%s'@'%%'" % self.user,
                        "DROP DATABASE IF EXISTS `%s`" % self.missing)

    async def refused_start(self, mysql):
        config = self.write_config({"imd": {"roles": "ws, http, migrate"}, "mysql": mysql})
        daemon = spawn_daemon(self, config)
        daemon.listening.addErrback(lambda _: None)   # it is not meant to
        code = await daemon.wait_ended(DEADLINE)
        lines = daemon.stderr.decode().splitlines()
        self.assertEqual((code, len(lines)), (1, 1), daemon.stderr.decode() + daemon.output())
        self.assertNotIn("Traceback", daemon.output())
        self.assertIn(config, lines[0])
        # stopped before anything listened or registered
        self.assertEqual((await self.redis.zcard("nodes"), await self.redis.zcard("processes"),
                          await self.redis.exists("MQ:lock")), (0, 0, 0))
        self.assertNotIn("taking logins", daemon.output())
        return lines[0]

    async def test_a_wrong_password_stops_start_up_with_one_line(self):
        line = await self.refused_start({"user": self.user, "password": "not-" + self.password})
        self.assertTrue(line.startswith("imd: mysql at 127.0.0.1:3306 refuses the login of user '%s' (1045: "
                                        "Access denied for user" % self.user), line)
        self.assertIn("check [mysql] user and password in", line)
        self.assertNotIn(self.password, line)   # never the password

    async def test_a_missing_database_stops_start_up_with_one_line(self):
        line = await self.refused_start({"user": self.user, "password": self.password, "database": self.missing})
        self.assertTrue(line.startswith("imd: mysql at 127.0.0.1:3306 has no database '%s' (1049: Unknown "
                                        "database" % self.missing), line)
        self.assertIn("run 'imd-admin schema apply', or fix [mysql] database in", line)

    async def test_a_database_the_user_may_not_use_stops_start_up_with_one_line(self):
        await threads.deferToThread(ensure_test_database)
        line = await self.refused_start({"user": self.user, "password": self.password, "database": mysql_db()})
        self.assertTrue(line.startswith("imd: mysql at 127.0.0.1:3306 refuses user '%s' the database '%s' "
                                        "(1044: " % (self.user, mysql_db())), line)

    async def test_an_unreachable_mysql_is_retried_loudly_and_healthz_says_down(self):
        mysql_port, http_port = free_port(), free_port()
        config = self.write_config({"imd": {"roles": "ws, http"},
                                    "http": {"listen": "tcp:%d:interface=127.0.0.1" % http_port},
                                    "mysql": {"port": str(mysql_port)}})
        daemon = await start_daemon(self, config)   # it runs, and takes logins (messages wait in Redis)
        silent = "mysql at 127.0.0.1:%d does not answer" % mysql_port
        self.assertIn(silent, daemon.output())
        self.assertEqual([line for line in daemon.output().splitlines() if silent in line][0].count("#error]"), 1)
        code, body = await threads.deferToThread(_http_get, http_port, "/healthz")
        self.assertEqual((code, json.loads(body)["mysql"]), (503, "down"))
        # MySQL appears on that port: the retry finds it
        forward = reactor.listenTCP(mysql_port, portforward.ProxyFactory("127.0.0.1", 3306), interface="127.0.0.1")
        self.addCleanup(forward.stopListening)
        await wait_until(lambda: "mysql at 127.0.0.1:%d answers now" % mysql_port in daemon.output(),
                         seconds=DEADLINE * 2, what="the login retried")
        code, body = await threads.deferToThread(_http_get, http_port, "/healthz")
        self.assertEqual((code, json.loads(body)["mysql"]), (200, "ok"))


def _accepts(port):
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _http_post(port, path, body):
    """Blocking: (status, body) of a JSON POST to the daemon's http port."""
    import urllib.error
    import urllib.request
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE * 3) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class EarlyRequestTests(ProgramTestMixin, unittest.TestCase):
    """Issue 22 item 3: POST /IM/token right after the http port opened
    answered 503 "storage unavailable" (1 start in 7): the listeners open
    before Redis answers."""

    async def test_a_token_asked_as_soon_as_the_port_accepts_waits_for_redis_and_the_keys(self):
        redis_port, http_port = free_port(), free_port()
        config = self.write_config({"imd": {"roles": "ws, http"},
                                    "http": {"listen": "tcp:%d:interface=127.0.0.1" % http_port},
                                    "redis": {"url": "redis://127.0.0.1:%d/0" % redis_port}})
        daemon = spawn_daemon(self, config)
        await wait_until(lambda: _accepts(http_port), what="the http port accepting")
        # asked at once, while no Redis answers on its port
        token = threads.deferToThread(_http_post, http_port, "/IM/token", {"id": 1})
        code, body = await threads.deferToThread(_http_get, http_port, "/healthz")
        self.assertEqual((code, json.loads(body)["status"]), (503, "starting"), body)
        private = await PrivateRedis(port=redis_port).start()
        self.addCleanup(private.stop)
        # Redis answers; the key pair comes a moment later (imd-admin keys init)
        code, body = await threads.deferToThread(_http_get, http_port, "/healthz")
        self.assertEqual(code, 503, body)
        keys = await redis_connection(db=0, port=redis_port)
        self.addCleanup(keys.disconnect)
        public_pem, private_pem = key_pair()
        await keys.mset({"publicKey": public_pem, "privateKey": private_pem})
        code, body = await with_deadline(token, DEADLINE * 2, "the held token request")
        self.assertEqual(code, 200, body)
        answer = json.loads(body)
        code, body = await threads.deferToThread(_http_get, http_port, "/healthz")
        self.assertEqual((code, json.loads(body).get("status")), (200, None), body)
        self.assertIn("started in", daemon.output())
        # and the token logs in
        port = await with_deadline(daemon.listening, DEADLINE, "the node taking logins")
        client = await connect_client(port, "/" + answer["token"])
        self.addCleanup(drop, client)
        self.assertEqual((await client.next())["type"], "L")


class StartupHeapTests(unittest.SynchronousTestCase):

    def test_objects_alive_at_start_are_out_of_full_collections(self):
        import gc

        from imd.tap import _freeze_startup_heap
        if not hasattr(gc, "freeze"):
            raise unittest.SkipTest("this interpreter's gc has no freeze (PyPy): nothing to move")
        self.addCleanup(gc.unfreeze)
        _freeze_startup_heap()
        self.assertGreater(gc.get_freeze_count(), 10000)
        self.assertLess(len(gc.get_objects()), 1000)

    def test_only_collects_where_gc_has_no_freeze(self):
        import types

        import imd.tap
        collected = []
        self.patch(imd.tap, "gc", types.SimpleNamespace(collect=lambda: collected.append(True)))
        imd.tap._freeze_startup_heap()
        self.assertEqual(collected, [True])

"""The http role over real HTTP: POST /IM/token in both auth modes and every
error status, CORS, the page files and the SDK's modules it imports (and
nothing else of their directories), /healthz up and down, /metrics moving
when packets flow, and request logs without tokens.
"""

import os
import re
import time

import jwt
from twisted.internet import reactor, threads
from twisted.internet.task import Clock
from twisted.internet.endpoints import serverFromString
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from imd.app import App
from imd.auth import TOKEN_TYPE
from imd.errors import LoginRefused
from imd.http import build_site, page
from imd.http.ratelimit import RateLimiter
from imd.http.site import ImdSite
from imd.listeners import ListeningService
from imd.startup import HOLD
from tests.http_support import HttpTestMixin, raw_connect
from tests.mysql_support import recreate_database
from tests.support import (PrivateRedis, connect_client, drop, free_port, key_pair, make_settings,
                           wait_until, with_deadline)

PLATFORM_SECRET = "platform-secret-of-at-least-32-bytes!"


def platform_token(secret=PLATFORM_SECRET, algorithm="HS256", **claims):
    """A platform JWT; valid for 10 minutes unless ``exp`` says otherwise
    (``exp=None`` leaves it out)."""
    claims.setdefault("id", 42)
    claims.setdefault("exp", int(time.time()) + 600)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, secret, algorithm=algorithm)


def decode_wstoken(token):
    return jwt.decode(token, key_pair()[0], algorithms=["RS256"])


class DevTokenTests(HttpTestMixin, unittest.TestCase):
    with_ws = True

    async def test_issues_a_token_that_logs_in(self):
        response = await self.post_token({"id": 7})
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.header(b"content-type"), "application/json; charset=utf-8")
        self.assertEqual(response.header(b"cache-control"), "no-store")
        body = response.json()
        self.assertEqual(set(body), {"token", "expires_in", "url"})
        self.assertEqual(body["expires_in"], 120)
        claims = decode_wstoken(body["token"])
        self.assertEqual((claims["id"], claims["type"]), (7, TOKEN_TYPE))
        self.assertEqual(claims["exp"] - claims["iat"], 120)
        self.assertEqual(body["url"], "ws://127.0.0.1:%d/%s" % (self.http.ws_port, body["token"]))

        client = await connect_client(self.http.ws_port, "/" + body["token"])
        self.addCleanup(drop, client)
        login = await client.next()
        self.assertEqual((login["type"], login["uid"]), ("L", 7))

    async def test_id_as_string_of_digits(self):
        response = await self.post_token({"id": "12"})
        self.assertEqual(response.code, 200, response)
        self.assertEqual(decode_wstoken(response.json()["token"])["id"], 12)

    async def test_each_token_is_fresh(self):
        first = (await self.post_token({"id": 7})).json()["token"]
        second = (await self.post_token({"id": 7})).json()["token"]
        self.assertNotEqual(decode_wstoken(first)["jti"], decode_wstoken(second)["jti"])

    async def assert_error(self, response, code, words):
        self.assertEqual(response.code, code, response)
        self.assertEqual(response.header(b"content-type"), "application/json; charset=utf-8")
        body = response.json()
        self.assertEqual(list(body), ["error"])
        self.assertIn(words, body["error"])

    async def test_missing_credentials(self):
        await self.assert_error(await self.post_token(), 401, "missing credentials")
        await self.assert_error(await self.post_token({}), 401, "missing credentials")

    async def test_bad_credentials(self):
        for bad in ("abc", 0, -3, 1.5, None, [1], "1e3", True):
            await self.assert_error(await self.post_token({"id": bad}), 401, "bad credentials")

    async def test_bad_body(self):
        for bad in (b"{", b"[1]", b'"7"', b"\xff\xfe", b"7"):
            await self.assert_error(await self.post_token(bad), 400, "JSON object")

    async def test_body_over_the_cap(self):
        big = b'{"id": 7, "pad": "' + b"x" * 20000 + b'"}'
        await self.assert_error(await self.post_token(big), 413, "over")
        await self.assert_error(await self.post_token(big, chunked=True), 413, "over")
        # the server is still fine afterwards
        self.assertEqual((await self.post_token({"id": 7})).code, 200)

    async def test_wrong_method(self):
        response = await self.request("GET", "/IM/token")
        await self.assert_error(response, 405, "not allowed")
        self.assertEqual(response.header(b"allow"), "POST, OPTIONS")

    async def test_unknown_paths(self):
        for path in ("/nope", "/IM", "/IM/token/more", "/IM/other"):
            await self.assert_error(await self.request("GET", path), 404, "no such resource")

    async def test_keys_not_set_up(self):
        await self.redis.delete("privateKey")
        await self.assert_error(await self.post_token({"id": 7}), 503, "keys")

    async def test_redis_unavailable(self):
        await self.http.app.redis_client.stopService()
        await self.assert_error(await self.post_token({"id": 7}), 503, "unavailable")

    async def test_no_cors_headers_without_configuration(self):
        response = await self.post_token({"id": 7}, {"Origin": "https://app.example.com"})
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.header(b"access-control-allow-origin"))


class TtlAndUrlTests(HttpTestMixin, unittest.TestCase):
    overrides = {"auth": {"token_ttl": "300"},
                 "websocket": {"listen": "tcp:8765:interface=127.0.0.1",
                               "tls_listen": ""}}

    async def test_ttl_and_url_from_the_ws_listener(self):
        body = (await self.post_token({"id": 3})).json()
        claims = decode_wstoken(body["token"])
        self.assertEqual(claims["exp"] - claims["iat"], 300)
        self.assertEqual(body["expires_in"], 300)
        self.assertEqual(body["url"], "ws://127.0.0.1:8765/" + body["token"])

    async def test_listener_on_all_interfaces_uses_the_host_asked_for(self):
        settings = make_settings({"websocket": {"listen": "tcp:9000:interface=0.0.0.0"}})
        server = await self.start_server(settings)
        body = (await self.post_token({"id": 3}, server=server)).json()
        self.assertEqual(body["url"], "ws://127.0.0.1:9000/" + body["token"])

    async def test_public_ws_url(self):
        settings = make_settings({"http": {"public_ws_url": "wss://chat.example.com/im"}})
        server = await self.start_server(settings)
        body = (await self.post_token({"id": 3}, server=server)).json()
        self.assertEqual(body["url"], "wss://chat.example.com/im/" + body["token"])


class PlatformTokenTests(HttpTestMixin, unittest.TestCase):
    overrides = {"http": {"auth": "hs256:" + PLATFORM_SECRET}}

    def bearer(self, token):
        return {"Authorization": "Bearer " + token}

    async def assert_refused(self, headers, words, body=None):
        response = await self.post_token(body, headers)
        self.assertEqual(response.code, 401, response)
        self.assertEqual(response.header(b"www-authenticate"), 'Bearer realm="imd"')
        self.assertIn(words, response.json()["error"])

    async def test_platform_token_gets_a_wstoken(self):
        exp = int(time.time()) + 60
        response = await self.post_token(None, self.bearer(platform_token(id=42, exp=exp)))
        self.assertEqual(response.code, 200, response)
        self.assertEqual(decode_wstoken(response.json()["token"])["id"], 42)

    async def test_body_id_is_not_trusted(self):
        response = await self.post_token({"id": 1}, self.bearer(platform_token(id="43")))
        self.assertEqual(response.code, 200, response)
        self.assertEqual(decode_wstoken(response.json()["token"])["id"], 43)

    async def test_missing_credentials(self):
        await self.assert_refused({}, "missing credentials")
        # dev-style body alone is not enough
        await self.assert_refused({}, "missing credentials", {"id": 7})

    async def test_bad_credentials(self):
        now = int(time.time())
        cases = [
            ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer"),
            ({"Authorization": "Bearer"}, "Bearer"),
            (self.bearer("not-a-jwt"), "bad credentials"),
            (self.bearer(platform_token(secret="another-secret-of-at-least-32-bytes")), "Signature"),
            (self.bearer(platform_token(algorithm="HS512")), "alg"),
            (self.bearer(jwt.encode({"id": 42}, None, algorithm="none")), "alg"),
            (self.bearer(jwt.encode({"id": 42}, key_pair()[1], algorithm="RS256")), "alg"),
            (self.bearer(platform_token(exp=now - 10)), "expired"),
            (self.bearer(platform_token(nbf=now + 600)), "not yet valid"),
            (self.bearer(platform_token(id=None)), "id"),
            (self.bearer(platform_token(id="x7")), "id"),
            (self.bearer(platform_token(id=0)), "id"),
        ]
        for headers, words in cases:
            await self.assert_refused(headers, words)

    async def test_bad_body_with_good_credentials(self):
        response = await self.post_token(b"{oops", self.bearer(platform_token()))
        self.assertEqual(response.code, 400, response)
        self.assertIn("JSON object", response.json()["error"])


class CorsTests(HttpTestMixin, unittest.TestCase):
    overrides = {"http": {"cors_origins": "https://app.example.com, http://localhost:3000"}}

    async def test_preflight_for_an_allowed_origin(self):
        response = await self.request("OPTIONS", "/IM/token", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertEqual(response.code, 204)
        self.assertEqual(response.header(b"access-control-allow-origin"), "https://app.example.com")
        self.assertIn("POST", response.header(b"access-control-allow-methods"))
        self.assertIn("Authorization", response.header(b"access-control-allow-headers"))
        self.assertEqual(response.header(b"vary"), "Origin")

    async def test_allowed_origin_on_post(self):
        response = await self.post_token({"id": 1}, {"Origin": "http://localhost:3000"})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header(b"access-control-allow-origin"), "http://localhost:3000")

    async def test_other_origin_gets_no_allowance(self):
        response = await self.request("OPTIONS", "/IM/token", headers={"Origin": "https://evil.example"})
        self.assertEqual(response.code, 204)
        self.assertIsNone(response.header(b"access-control-allow-origin"))
        self.assertIsNone(response.header(b"access-control-allow-methods"))


class WildcardCorsTests(HttpTestMixin, unittest.TestCase):
    overrides = {"http": {"cors_origins": "*"}}

    async def test_any_origin(self):
        response = await self.post_token({"id": 1}, {"Origin": "https://anything.example"})
        self.assertEqual(response.header(b"access-control-allow-origin"), "*")


class PageTests(HttpTestMixin, unittest.TestCase):

    async def test_page_and_its_files(self):
        page = await self.request("GET", "/")
        self.assertEqual(page.code, 200)
        self.assertTrue(page.header(b"content-type").startswith("text/html"))
        self.assertIn(b'src="page.js"', page.body)
        self.assertIn(b'href="page.css"', page.body)
        self.assertIn("connect-src", page.header(b"content-security-policy"))
        script = await self.request("GET", "/page.js")
        self.assertEqual(script.code, 200)
        self.assertIn("javascript", script.header(b"content-type"))
        style = await self.request("GET", "/page.css")
        self.assertEqual(style.code, 200)
        self.assertTrue(style.header(b"content-type").startswith("text/css"))

    async def test_the_page_imports_the_built_sdk(self):
        built = page.sdk_dir()
        self.assertIsNotNone(built, "the SDK is not built: make sdk")
        script = await self.request("GET", "/page.js")
        self.assertEqual(script.header(b"content-type"), "text/javascript; charset=utf-8")
        self.assertIn(b'import("./sdk/index.js")', script.body)
        # every module the SDK's entry point imports, and theirs, as built
        wanted, seen = ["index.js"], set()
        while wanted:
            name = wanted.pop()
            if name in seen:
                continue
            seen.add(name)
            module = await self.request("GET", "/sdk/" + name)
            self.assertEqual(module.code, 200, name)
            self.assertEqual(module.header(b"content-type"), "text/javascript; charset=utf-8")
            self.assertEqual(module.header(b"x-content-type-options"), "nosniff")
            self.assertIn("script-src 'self'", module.header(b"content-security-policy"))
            with open(os.path.join(built, name), "rb") as f:
                self.assertEqual(module.body, f.read())
            wanted.extend(re.findall(r'from "\./([a-z]+\.js)"', module.body.decode("utf-8")))
        self.assertIn("client.js", seen)

    def sdk_at(self, directory):
        self.patch(page, "sdk_dir", lambda: directory)

    def built_sdk(self):
        """A directory like clients/js/dist, beside a file that must stay out of reach."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "dist", "sub"))
        files = {"index.js": b"export const a = 1;\n", "index.js.map": b"{}", "index.d.ts": b"x",
                 ".hidden.js": b"x", "sub/deep.js": b"x", "../secret.js": b"secret"}
        for name, data in files.items():
            with open(os.path.join(base, "dist", name), "wb") as f:
                f.write(data)
        return os.path.join(base, "dist")

    async def test_sdk_directory_serves_its_modules_and_nothing_else(self):
        self.sdk_at(self.built_sdk())
        module = await self.request("GET", "/sdk/index.js")
        self.assertEqual((module.code, module.body), (200, b"export const a = 1;\n"))
        self.assertEqual(module.header(b"content-type"), "text/javascript; charset=utf-8")
        head = await self.request("HEAD", "/sdk/index.js")
        self.assertEqual((head.code, head.body), (200, b""))
        for path in ("/sdk", "/sdk/", "/sdk/index.js.map", "/sdk/index.d.ts", "/sdk/.hidden.js",
                     "/sdk/sub", "/sdk/sub/", "/sdk/sub/deep.js", "/sdk/missing.js", "/sdk/index.js/",
                     "/sdk/index.js/x", "/sdk/../secret.js", "/sdk/..%2Fsecret.js", "/sdk/%2e%2e/secret.js",
                     "/sdk/%2E%2E%2Fsecret.js", "/sdk/index.js%00.map", "/sdk/sub%2Fdeep.js"):
            answer = await self.request("GET", path)
            self.assertEqual((answer.code, answer.json()), (404, {"error": "no such resource"}), path)
            self.assertNotIn(b"secret", answer.body)
        refused = await self.request("POST", "/sdk/index.js", b"")
        self.assertEqual(refused.code, 405)
        self.assertEqual(refused.header(b"allow"), "GET, HEAD")

    async def test_sdk_not_built_is_a_503_naming_the_build_and_one_log_line(self):
        self.sdk_at(None)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server = await self.start_server(make_settings())
        lines = [formatEvent(e) for e in events if "SDK" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("make sdk", lines[0])
        self.assertFalse([e for e in events if e.get("log_failure")])
        answer = await self.request("GET", "/sdk/index.js", server=server)
        self.assertEqual(answer.code, 503)
        self.assertIn("make sdk", answer.json()["error"])
        self.assertEqual((await self.request("GET", "/", server=server)).code, 200)
        # built while the daemon runs: served from the next request on
        self.sdk_at(self.built_sdk())
        self.assertEqual((await self.request("GET", "/sdk/index.js", server=server)).code, 200)


class HealthTests(HttpTestMixin, unittest.TestCase):

    async def test_healthy(self):
        response = await self.request("GET", "/healthz")
        self.assertEqual(response.code, 200, response)
        body = response.json()
        self.assertEqual((body["redis"], body["mysql"], body["redis_failovers"]), ("ok", "ok", 0))
        self.assertEqual(body["redis_master"], "127.0.0.1:6379")
        self.assertNotIn("error", body)
        self.assertNotIn("redis_replicas", body)   # [redis] min_replicas = 0

    async def test_through_a_proxy_only_ok_or_down(self):
        # the Redis address is for operators on this machine, not for the public
        response = await self.request("GET", "/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertEqual((response.code, response.json()), (200, {"redis": "ok", "mysql": "ok"}))

    def health_log(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return lambda: [formatEvent(e) for e in events if e.get("log_namespace") == "imd.http.health"]

    async def test_mysql_down(self):
        port = free_port()
        settings = make_settings({"mysql": {"port": str(port)}})
        server = await self.start_server(settings)
        logged = self.health_log()
        response = await self.request("GET", "/healthz", server=server, headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(response.code, 503, response)
        # only ok/down in public; why (host, port, driver text) is in the log
        self.assertEqual(response.json(), {"redis": "ok", "mysql": "down"})
        self.assertNotIn(str(port).encode(), response.body)
        self.assertIn("mysql: ", "\n".join(logged()))

    async def test_redis_stopped(self):
        private = await PrivateRedis().start()
        self.addCleanup(private.stop)
        settings = make_settings({"redis": {"timeout": "0.5"}}, redis_db=0, redis_port=private.port)
        server = await self.start_server(settings)
        self.assertEqual((await self.request("GET", "/healthz", server=server)).code, 200)

        private.stop()
        await wait_until(lambda: not server.app.redis_client.connected, what="redis link down")
        logged = self.health_log()
        response = await self.request("GET", "/healthz", server=server, headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(response.code, 503, response)
        self.assertEqual(response.json(), {"redis": "down", "mysql": "ok"})
        self.assertIn("redis: ", "\n".join(logged()))

    async def test_head_and_wrong_method(self):
        head = await self.request("HEAD", "/healthz")
        self.assertEqual((head.code, head.body), (200, b""))
        self.assertEqual((await self.request("POST", "/healthz")).code, 405)


class MetricsTests(HttpTestMixin, unittest.TestCase):
    with_ws = True

    async def scrape(self):
        response = await self.request("GET", "/metrics")
        self.assertEqual(response.code, 200, response)
        self.assertTrue(response.header(b"content-type").startswith("text/plain"))
        values = {}
        for line in response.body.decode("utf-8").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    async def login(self, uid):
        token = (await self.post_token({"id": uid})).json()["token"]
        client = await connect_client(self.http.ws_port, "/" + token)
        self.addCleanup(lambda: drop(client) if not client.closed.called else None)
        self.assertEqual((await client.next())["type"], "L")
        return client

    async def test_metrics_move_when_packets_flow(self):
        before = await self.scrape()
        self.assertEqual(before["imd_connections_open"], 0)
        self.assertEqual(before["imd_mq_length"], 0)
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        alice.send({"id": "m1", "to": 2, "type": "t", "msg": "hello"})
        self.assertEqual((await alice.next())["type"], "A")
        self.assertEqual((await bob.next())["msg"], "hello")
        alice.send({"id": "p1", "to": 0, "type": "P", "msg": ""})
        self.assertEqual((await alice.next())["type"], "P")
        alice.send({"id": "m2", "to": 3, "type": "t", "msg": "stranger"})
        self.assertEqual((await alice.next())["code"], "not_friend")
        alice.send({"id": "z", "to": 0, "type": "Z", "msg": ""})
        self.assertEqual((await alice.next())["code"], "unknown_type")
        alice.send_raw(b"not json")
        self.assertEqual((await alice.next())["code"], "bad_packet")

        refused = await connect_client(self.http.ws_port, "/" + self.token(5, now=time.time() - 600))
        self.assertEqual((await refused.next())["type"], "C")
        await refused.wait_closed()

        after = await self.scrape()
        self.assertEqual(after["imd_connections_open"], 2)
        self.assertEqual(after['imd_logins_total{reason="",result="ok"}'], 2)
        self.assertEqual(after['imd_logins_total{reason="token_expired",result="refused"}'], 1)
        self.assertEqual(after['imd_packets_in_total{type="t"}'], 2)
        self.assertEqual(after['imd_packets_in_total{type="P"}'], 1)
        self.assertEqual(after['imd_packets_in_total{type="other"}'], 1)
        self.assertEqual(after['imd_packets_in_total{type="invalid"}'], 1)
        self.assertEqual(after["imd_acks_total"], 1)
        self.assertEqual(after["imd_ack_latency_seconds_count"], 1)
        self.assertGreaterEqual(after["imd_ack_latency_seconds_sum"], 0)
        self.assertEqual(after['imd_errors_total{code="not_friend"}'], 1)
        self.assertEqual(after['imd_errors_total{code="unknown_type"}'], 1)
        self.assertEqual(after['imd_errors_total{code="bad_packet"}'], 1)
        # two deliveries of the one message: to its recipient (one connection)
        # and to its sender's other devices (none: contract §2 item 3)
        self.assertEqual(after["imd_delivery_fanout_count"], 2)
        self.assertEqual(after["imd_delivery_fanout_sum"], 1)
        self.assertEqual(after["imd_mq_length"], 1)

        await drop(bob)
        await wait_until(lambda: self.http.app.metrics.connections_open._value.get() == 1,
                         what="connection count to drop")
        self.assertEqual((await self.scrape())["imd_connections_open"], 1)

    async def test_the_redis_address_is_only_for_this_machine(self):
        # issue 22 item 14: imd_redis_master_info{address} went to anyone
        # who reached the http port
        series = 'imd_redis_master_info{address="127.0.0.1:6379",via="url"}'
        self.assertEqual((await self.scrape())[series], 1)
        proxied = await self.request("GET", "/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(proxied.code, 200, proxied)
        self.assertNotIn(b"imd_redis_master_info", proxied.body)
        self.assertNotIn(b"6379", proxied.body)
        self.assertIn(b"imd_redis_master_changes_total", proxied.body)   # only the address is held back
        # [imd] metrics_listen's site is internal: it shows it whoever asks
        from imd.http import build_metrics_site
        internal = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            build_metrics_site(self.http.app))
        self.addCleanup(internal.stopListening)
        where = type("Where", (), {"base_url": "http://127.0.0.1:%d" % internal.getHost().port})()
        proxied = await self.request("GET", "/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, server=where)
        self.assertIn(series.encode() + b" 1.0", proxied.body)

    async def test_migrator_figures(self):
        self.assertNotIn("imd_migrator_lag_seconds", await self.scrape())
        await threads.deferToThread(recreate_database, self.http.app.settings.mysql)
        await self.befriend(1, 2)
        alice = await self.login(1)
        alice.send({"id": "m1", "to": 2, "type": "t", "msg": "to migrate"})
        self.assertEqual((await alice.next())["type"], "A")
        service = self.http.app.migrator_service()
        service.startService()
        self.addCleanup(service.stopService)

        async def migrated():
            return (await self.scrape()).get("imd_migrator_rows_migrated_total", 0) >= 1
        await wait_until(migrated, what="the migrator's figures on /metrics")
        after = await self.scrape()
        self.assertEqual(after["imd_migrator_leader"], 1)
        self.assertEqual(after["imd_mq_length"], 0)
        self.assertIn("imd_migrator_lag_seconds", after)
        self.assertIn("imd_migrator_queue_length", after)

    async def test_store_errors_are_counted(self):
        alice = await self.login(1)
        await self.http.app.redis_client.stopService()
        alice.send({"id": "m1", "to": 2, "type": "t", "msg": "lost"})
        self.assertEqual((await alice.next())["code"], "unavailable")
        after = await self.scrape()
        self.assertEqual(after['imd_errors_total{code="unavailable"}'], 1)
        self.assertGreaterEqual(after['imd_store_errors_total{store="redis"}'], 2)
        self.assertNotEqual(after["imd_mq_length"], after["imd_mq_length"])  # NaN: unknown


class WiringTests(unittest.SynchronousTestCase):

    def http_sites(self, roles):
        app = App(make_settings({"imd": {"roles": roles}}), reactor)
        return [s for s in app.build_service()
                if isinstance(s, ListeningService) and isinstance(s._factory, ImdSite)]

    def test_http_role_listens(self):
        self.assertEqual(len(self.http_sites("http")), 1)
        self.assertEqual(len(self.http_sites("ws, http, migrate")), 1)

    def test_no_http_role_no_site(self):
        self.assertEqual(self.http_sites("ws"), [])


class StartingTests(HttpTestMixin, unittest.TestCase):
    """Issue 22 item 3: while the process is starting (Redis not answering
    yet, or no key pair in it), requests under /IM/ wait for it, for a
    bounded time (imd.startup); /healthz says "starting" meanwhile.  The
    daemon's side: tests/test_daemon.py EarlyRequestTests."""

    async def start_starting(self, clock):
        """An App whose Redis never answers (nothing listens on its port),
        its gate started, its site on port 0."""
        settings = make_settings({"imd": {"roles": "ws, http"}}, redis_port=free_port())
        app = App(settings, reactor, clock)
        app.mysql.startService()
        self.addCleanup(app.mysql.stopService)
        app.startup.startService()
        self.addCleanup(app.startup.stopService)
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(build_site(app))
        self.addCleanup(listening.stopListening)
        return app, type("Where", (), {"base_url": "http://127.0.0.1:%d" % listening.getHost().port})()

    async def test_held_for_at_most_the_hold_then_503(self):
        clock = Clock()
        app, where = await self.start_starting(clock)
        self.assertTrue(app.startup.starting)
        token = self.post_token({"id": 1}, server=where)
        api = self.request("GET", "/IM/api/online?uid=1", server=where)
        await wait_until(lambda: app.startup.waiting == 2, what="both requests held")
        # the page and /healthz answer at once
        self.assertEqual((await self.request("GET", "/", server=where)).code, 200)
        health = await self.request("GET", "/healthz", server=where)
        self.assertEqual((health.code, health.json()["status"]), (503, "starting"), health)
        clock.advance(HOLD - 0.5)
        self.assertFalse(token.called)
        clock.advance(0.5)
        for response in (await token, await api):
            self.assertEqual((response.code, response.json(), response.header(b"retry-after")),
                             (503, {"error": "imd is starting, retry later"}, "5"), response)

    async def test_a_login_while_starting_waits_then_is_refused_as_unavailable(self):
        clock = Clock()
        app, _ = await self.start_starting(clock)
        refused = app.verifier.verify(self.token(1))
        self.assertEqual(app.startup.waiting, 1)
        clock.advance(5)   # half of [websocket] open_handshake_timeout
        failure = self.failureResultOf(refused, LoginRefused)
        self.assertEqual(failure.value.reason, "service unavailable, try again later")

    async def test_ready_releases_what_waits(self):
        # Redis answers and the test's key pair is in it (an http-only
        # process has no node to register)
        app = App(make_settings({"imd": {"roles": "http"}}), reactor)
        app.redis_client.startService()
        self.addCleanup(app.redis_client.stopService)
        app.mysql.startService()
        self.addCleanup(app.mysql.stopService)
        app.startup.startService()
        self.addCleanup(app.startup.stopService)
        waited = app.startup.wait()
        await with_deadline(waited, what="ready")
        self.assertFalse(app.startup.starting)
        self.assertTrue(app.startup.wait().called)   # no wait once ready


class RequestLogTests(HttpTestMixin, unittest.TestCase):

    async def test_no_token_in_the_request_log(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        wstoken = self.token(9)
        issued = (await self.post_token({"id": 9})).json()["token"]
        await self.request("GET", "/?token=" + wstoken + "&x=1")
        await self.request("GET", "/" + wstoken)
        await self.request("GET", "/healthz?access_token=secret-value")

        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "imd.http.site"]
        self.assertEqual(len(lines), 4, lines)
        text = "\n".join(lines)
        for secret in (wstoken, issued, "secret-value", wstoken.split(".")[1]):
            self.assertNotIn(secret, text)
        self.assertIn("POST /IM/token 200", text)
        self.assertIn("GET /?token=[token]&x=1 200", text)
        self.assertIn("GET /[token] 404", text)


class RateLimiterTests(unittest.SynchronousTestCase):

    def test_burst_then_rate(self):
        limiter = RateLimiter(rate=2, burst=3)
        self.assertEqual([limiter.take("a", 100.0) for _ in range(4)], [0, 0, 0, 1])
        self.assertEqual(limiter.take("b", 100.0), 0)      # keys are apart
        self.assertEqual(limiter.take("a", 100.5), 0)      # half a second: one more
        self.assertEqual(limiter.take("a", 100.5), 1)
        self.assertEqual(limiter.take("a", 200.0), 0)      # refilled, never past the burst
        self.assertEqual([limiter.take("a", 200.0) for _ in range(3)], [0, 0, 1])

    def test_retry_after_is_whole_seconds_until_the_next_token(self):
        limiter = RateLimiter(rate=0.1, burst=1)
        self.assertEqual(limiter.take("a", 0.0), 0)
        self.assertEqual(limiter.take("a", 0.0), 10)
        self.assertEqual(limiter.take("a", 5.0), 5)
        self.assertEqual(limiter.take("a", 10.0), 0)

    def test_rate_zero_is_no_limit(self):
        limiter = RateLimiter(rate=0, burst=1)
        self.assertEqual([limiter.take("a", 0.0) for _ in range(100)], [0] * 100)
        self.assertEqual(len(limiter), 0)

    def test_memory_is_bounded(self):
        limiter = RateLimiter(rate=1, burst=1, max_keys=100)
        for key in range(1000):
            limiter.take(key, 0.0)
        self.assertEqual(len(limiter), 100)
        self.assertEqual(limiter.take(999, 0.0), 1)   # the most recent are kept


class KeepAliveTests(HttpTestMixin, unittest.TestCase):

    async def test_pipelined_and_kept_alive_requests_are_answered(self):
        client = await raw_connect(self.http.http_port)
        self.addCleanup(lambda: client.closed)
        self.addCleanup(lambda: None if client.closed.called else client.transport.abortConnection())
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        client.transport.write(request * 2)
        await wait_until(lambda: client.data.count(b"HTTP/1.1 200") == 2, what="two pipelined answers")
        client.transport.write(request)
        await wait_until(lambda: client.data.count(b"HTTP/1.1 200") == 3, what="a third answer")
        self.assertFalse(client.closed.called)
        self.assertEqual(self.http.site.open_connections, 1)

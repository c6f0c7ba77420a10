"""docs/openapi.yaml says what the running server answers: every documented
(path, method, status) is produced by a real request to a real App, and
each answer's body (and the 401's header) matches the documented schema;
the request bodies that succeed match the documented request schemas."""

import copy
import os

import yaml
from jsonschema import Draft202012Validator
from twisted.internet import defer
from twisted.trial import unittest

from imd.errors import ImdError, Refused
from tests.support import PrivateRedis, make_settings, wait_until
from tests.test_api import API_KEY, AUTH, ApiTestMixin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "docs", "openapi.yaml")


def load_spec(path=SPEC):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def resolve(node, spec):
    """``node`` with every local ``$ref`` replaced by what it names."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return resolve(copy.deepcopy(target), spec)
        return {k: resolve(v, spec) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, spec) for v in node]
    return node


def documented(spec):
    """``{(path, method, status)}`` of every documented answer."""
    return {(path, method.upper(), status) for path, item in spec["paths"].items()
            for method, operation in item.items() for status in operation["responses"]}


class Lifecycle:
    def put(self, order_id, customer, courier):
        if order_id in (403, 409):
            raise Refused(order_id, "refused")
        return defer.succeed({"order": order_id, "customer": customer, "courier": courier})

    def close(self, order_id):
        if order_id == 404:
            raise ImdError("not_found", "no order 404")
        return defer.succeed({"order": order_id, "ends_at": 1700000000000})


class OpenApiTests(ApiTestMixin, unittest.TestCase):

    def setUp(self):
        self.spec = resolve(load_spec(), load_spec())
        self.covered = set()
        return super().setUp()

    def test_the_document_is_openapi_3_1_and_its_schemas_are_valid(self):
        spec = load_spec()
        self.assertTrue(spec["openapi"].startswith("3.1"))
        for path, method, status in documented(spec):
            operation = self.spec["paths"][path][method.lower()]
            Draft202012Validator.check_schema(operation["responses"][status]["content"]["application/json"]["schema"])
        self.assertEqual({p for p, _, _ in documented(spec)},
                         {"/IM/api/send", "/IM/api/orders", "/IM/api/orders/{order}/close", "/IM/api/kick",
                          "/IM/api/online", "/IM/api/friends", "/IM/api/messages/delete", "/IM/api/users/{uid}/erase",
                          "/IM/api/rooms", "/IM/api/rooms/{room}/members", "/IM/api/rooms/{room}/send",
                          "/IM/api/rooms/{room}/close", "/IM/api/rooms/{room}"})

    @defer.inlineCallbacks
    def check(self, template, method, path, body=None, headers=AUTH, server=None, request_ok=True):
        """Send it; the answer must be documented for ``template`` and match."""
        response = yield self.api(method, path, body, headers, server=server)
        operation = self.spec["paths"][template][method.lower()]
        status = str(response.code)
        self.assertIn(status, operation["responses"], "%s %s answered %s, not documented" % (method, path, status))
        answer = operation["responses"][status]
        self.assertEqual(response.header(b"content-type"), "application/json; charset=utf-8")
        errors = [e.message for e in Draft202012Validator(answer["content"]["application/json"]["schema"])
                  .iter_errors(response.json())]
        self.assertEqual(errors, [], "%s %s -> %s %r" % (method, path, status, response.json()))
        for name, header in answer.get("headers", {}).items():
            value = response.header(name.encode("ascii"))
            self.assertEqual(list(Draft202012Validator(header["schema"]).iter_errors(value)), [], name)
        if response.code == 200 and isinstance(body, dict) and request_ok:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            self.assertEqual([e.message for e in Draft202012Validator(schema).iter_errors(body)], [], body)
        self.covered.add((template, method, status))
        return response

    async def test_every_documented_answer_is_what_the_server_says(self):
        self.http.app.order_lifecycle = Lifecycle()
        send, close, orders = "/IM/api/send", "/IM/api/orders/{order}/close", "/IM/api/orders"
        kick, online, friends = "/IM/api/kick", "/IM/api/online", "/IM/api/friends"
        wrong = {"Authorization": "Bearer x" + API_KEY}
        await self.login(5)
        await self.check(send, "POST", "send", {"to": [5, "6"], "msg": {"event": "near"}, "id": "e1"})
        await self.check(send, "POST", "send", {"to": 5, "msg": {"event": "near"}})
        await self.check(send, "POST", "send", {"to": 5, "msg": "text"})
        await self.check(send, "POST", "send", {"to": 5, "msg": {}}, headers=wrong)
        await self.check(send, "POST", "send", {"to": 5, "msg": {"pad": "x" * 70000}})
        for body in ({"order": 42, "customer": 5, "courier": 6}, {"order": 43, "customer": 5},
                     {"order": 44, "customer": 5, "courier": None}, {"order": 403, "customer": 5},
                     {"order": 409, "customer": 5, "courier": 6}, {"order": "42", "customer": 5}):
            await self.check(orders, "POST", "orders", body)
        await self.check(orders, "POST", "orders", {"order": 42, "customer": 5}, headers={})
        await self.check(close, "POST", "orders/42/close")
        await self.check(close, "POST", "orders/x/close")
        await self.check(close, "POST", "orders/42/close", headers={})
        await self.check(close, "POST", "orders/404/close")
        await self.check(kick, "POST", "kick", {"uid": 5, "reason": "bye"})
        await self.check(kick, "POST", "kick", {"uid": "five"})
        await self.check(kick, "POST", "kick", {"uid": 5}, headers=wrong)
        await self.check(online, "GET", "online?uid=5&uid=6")
        await self.check(online, "GET", "online?uid=0")
        await self.check(online, "GET", "online?uid=5", headers={"Authorization": "Basic x"})
        await self.check(friends, "POST", "friends", {"a": 5, "b": "6", "op": "add"})
        await self.check(friends, "POST", "friends", {"a": 5, "b": 6, "op": "both"})
        await self.check(friends, "POST", "friends", {"a": 5, "b": 6, "op": "rm"}, headers={})
        # moderation delete and erasure (contract §11)
        delete, erase = "/IM/api/messages/delete", "/IM/api/users/{uid}/erase"
        await self.check(friends, "POST", "friends", {"a": 5, "b": 7, "op": "add"})
        sender = await self.login(7)
        self.assertEqual((await self.ask(sender, {"id": "m1", "to": 5, "type": "t", "msg": "x"}))["type"], "A")
        await self.check(delete, "POST", "messages/delete", {"from": 7, "id": "m1", "to": 5})
        await self.check(delete, "POST", "messages/delete", {"from": 7, "id": "m1", "to": 5})   # false: done before
        await self.check(delete, "POST", "messages/delete", {"from": 7, "id": "nope", "to": 5})
        await self.check(delete, "POST", "messages/delete", {"from": 7, "id": ["m1"], "to": 5})
        await self.check(delete, "POST", "messages/delete", {"from": 7, "id": "m1", "to": 5}, headers=wrong)
        await self.check(erase, "POST", "users/7/erase")
        await self.check(erase, "POST", "users/x/erase")
        await self.check(erase, "POST", "users/7/erase", headers={})
        # rooms (contract §9)
        rooms, members = "/IM/api/rooms", "/IM/api/rooms/{room}/members"
        room_send, room_close = "/IM/api/rooms/{room}/send", "/IM/api/rooms/{room}/close"
        room_show = "/IM/api/rooms/{room}"
        await self.check(rooms, "POST", "rooms", {"room": "order:42", "members": [5, "6"], "meta": {"order": 42}})
        await self.check(rooms, "POST", "rooms", {"room": "order 42", "members": [5]})
        await self.check(rooms, "POST", "rooms", {"room": "order:42", "members": [5]}, headers={})
        await self.check(members, "POST", "rooms/order:42/members", {"add": [8], "rm": [6]})
        await self.check(members, "POST", "rooms/order:42/members", {"add": "8"})
        await self.check(members, "POST", "rooms/order:43/members", {"add": [8]})
        await self.check(members, "POST", "rooms/order:42/members", {"add": [8]}, headers=wrong)
        await self.check(room_send, "POST", "rooms/order:42/send", {"msg": {"event": "assigned"}, "id": "s1"})
        await self.check(room_send, "POST", "rooms/order:42/send", {"msg": "text"})
        await self.check(room_send, "POST", "rooms/order:43/send", {"msg": {}})
        await self.check(room_send, "POST", "rooms/order:42/send", {"msg": {}}, headers={})
        await self.check(room_show, "GET", "rooms/order:42")
        await self.check(room_show, "GET", "rooms/order!42")
        await self.check(room_show, "GET", "rooms/order:43")
        await self.check(room_show, "GET", "rooms/order:42", headers={})
        await self.check(room_close, "POST", "rooms/order:42/close")
        await self.check(room_close, "POST", "rooms/order!42/close")
        await self.check(room_close, "POST", "rooms/order:43/close")
        await self.check(room_close, "POST", "rooms/order:42/close", headers={})
        await self.check(room_show, "GET", "rooms/order:42")   # closed: closed_at and ends_at set

        # 429: a server whose key may make one request
        limited = await self.start_server(make_settings(dict(self.overrides, http={
            "api_key": API_KEY, "api_rate": "0.001", "api_burst": "1"})))
        limited.app.order_lifecycle = Lifecycle()
        await self.check(online, "GET", "online?uid=5", server=limited)
        await self.check(send, "POST", "send", {"to": 5, "msg": {}}, server=limited, request_ok=False)
        await self.check(close, "POST", "orders/42/close", server=limited)
        await self.check(orders, "POST", "orders", {"order": 42, "customer": 5}, server=limited)
        await self.check(kick, "POST", "kick", {"uid": 5}, server=limited)
        await self.check(online, "GET", "online?uid=5", server=limited)
        await self.check(friends, "POST", "friends", {"a": 5, "b": 6, "op": "add"}, server=limited)
        await self.check(delete, "POST", "messages/delete", {"from": 7, "id": "m1", "to": 5}, server=limited)
        await self.check(erase, "POST", "users/7/erase", server=limited)
        await self.check(rooms, "POST", "rooms", {"room": "r", "members": [5]}, server=limited)
        await self.check(members, "POST", "rooms/r/members", {"add": [6]}, server=limited)
        await self.check(room_send, "POST", "rooms/r/send", {"msg": {}}, server=limited)
        await self.check(room_close, "POST", "rooms/r/close", server=limited)
        await self.check(room_show, "GET", "rooms/r", server=limited)

        # 503: the same App's stores away (a server of its own on a private redis-server)
        private = await PrivateRedis().start()
        self.addCleanup(private.stop)
        settings = make_settings(dict(self.overrides, redis={"timeout": "0.5"}), redis_db=0, redis_port=private.port)
        server = await self.start_server(settings)
        server.app.order_lifecycle = None
        private.stop()
        await wait_until(lambda: not server.app.redis_client.connected, what="redis gone")
        await self.check(send, "POST", "send", {"to": 5, "msg": {}}, server=server, request_ok=False)
        await self.check(close, "POST", "orders/42/close", server=server)
        await self.check(orders, "POST", "orders", {"order": 42, "customer": 5}, server=server)
        await self.check(kick, "POST", "kick", {"uid": 5}, server=server)
        await self.check(online, "GET", "online?uid=5", server=server)
        await self.check(friends, "POST", "friends", {"a": 5, "b": 6, "op": "add"}, server=server)
        await self.check(delete, "POST", "messages/delete", {"from": 7, "id": "m1", "to": 5}, server=server)
        await self.check(erase, "POST", "users/7/erase", server=server)
        await self.check(rooms, "POST", "rooms", {"room": "r", "members": [5]}, server=server)
        await self.check(members, "POST", "rooms/r/members", {"add": [6]}, server=server)
        await self.check(room_send, "POST", "rooms/r/send", {"msg": {}}, server=server)
        await self.check(room_close, "POST", "rooms/r/close", server=server)
        await self.check(room_show, "GET", "rooms/r", server=server)

        self.assertEqual(sorted(documented(load_spec()) - self.covered), [], "documented but never seen")

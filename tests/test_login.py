"""Contract §1: connecting with a wstoken, over a real WebSocket."""

import re
import time

import jwt
from twisted.internet import defer
from twisted.trial import unittest

from tests.support import ServerTestMixin, key_pair, wait_until, with_deadline
from tests.test_limits import raw_connect, upgrade_request


class LoginTests(ServerTestMixin, unittest.TestCase):

    async def assert_refused(self, path, why):
        client = await self.connect(path)
        packet = await client.next()
        self.assertEqual(packet["type"], "C")
        self.assertEqual(packet["from"], 0)
        self.assertIn(why, packet["msg"])
        code, _ = await client.wait_closed()
        self.assertEqual(code, 4001)
        self.assertEqual(len(client.received.pending), 0, "nothing may follow C")

    async def test_login_with_token_in_path(self):
        client = await self.connect("/" + self.token(7))
        packet = await client.next()
        self.assertEqual(packet["type"], "L")
        self.assertEqual(packet["from"], 0)
        self.assertEqual(packet["msg"], "login in")
        self.assertEqual(packet["uid"], 7)
        self.assertIsInstance(packet["id"], str)

    async def test_login_with_token_in_query(self):
        client = await self.connect("/?token=" + self.token(8))
        packet = await client.next()
        self.assertEqual((packet["type"], packet["uid"]), ("L", 8))

    async def test_id_as_string_of_digits(self):
        client = await self.connect("/" + self.token("12"))
        packet = await client.next()
        self.assertEqual((packet["type"], packet["uid"]), ("L", 12))

    async def test_missing_token(self):
        await self.assert_refused("/", "missing token")

    async def test_bad_signature(self):
        from imd.auth import generate_key_pair
        other_private = generate_key_pair()[1]
        token = jwt.encode({"id": 1, "type": "websocket", "exp": int(time.time()) + 60, "jti": "x1"},
                           other_private, algorithm="RS256")
        await self.assert_refused("/" + token, "signature")

    async def test_expired(self):
        await self.assert_refused("/" + self.token(1, now=time.time() - 600), "expired")

    async def test_alg_none(self):
        token = jwt.encode({"id": 1, "type": "websocket", "exp": int(time.time()) + 60, "jti": "n1"},
                           None, algorithm="none")
        await self.assert_refused("/" + token, "RS256")

    async def test_hs256_with_public_key_as_secret(self):
        # The classic key-confusion attack: HMAC keyed with the public PEM.
        import base64
        import hashlib
        import hmac
        import json

        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = b64(json.dumps({"id": 1, "type": "websocket", "exp": int(time.time()) + 60, "jti": "h1"}).encode())
        signature = hmac.new(key_pair()[0].encode(), ("%s.%s" % (header, body)).encode(), hashlib.sha256).digest()
        await self.assert_refused("/%s.%s.%s" % (header, body, b64(signature)), "RS256")

    async def test_wrong_type(self):
        await self.assert_refused("/" + self.token(1, type="http"), "type")

    async def test_missing_id(self):
        await self.assert_refused("/" + self.token(None, id=None), "id")

    async def test_non_integer_id(self):
        await self.assert_refused("/" + self.token("abc", id="abc"), "id")
        await self.assert_refused("/" + self.token(1, id=-3), "id")
        await self.assert_refused("/" + self.token(1, id=1.5), "id")

    async def test_replayed_jti(self):
        token = self.token(3)
        client = await self.connect("/" + token)
        self.assertEqual((await client.next())["type"], "L")
        await self.assert_refused("/" + token, "already used")

    async def test_garbage_token(self):
        await self.assert_refused("/not-a-jwt", "malformed")

    async def test_key_rotation_without_restart(self):
        from imd.auth import generate_key_pair, issue_token
        await self.login(1)  # caches the current public key
        public_pem, private_pem = generate_key_pair()
        await self.redis.mset({"publicKey": public_pem, "privateKey": private_pem})
        client = await self.connect("/" + issue_token(private_pem, 2, time.time()))
        packet = await client.next()
        self.assertEqual((packet["type"], packet["uid"]), ("L", 2))

    async def test_keys_missing(self):
        await self.redis.delete("publicKey")
        await self.assert_refused("/" + self.token(1), "keys")

    async def test_public_key_not_rsa(self):
        # A PEM key of another kind is refused with a reason, like one that
        # is no PEM at all (PyJWT raised a TypeError for it: an internal error).
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        public_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
        await self.redis.set("publicKey", public_pem)
        await self.assert_refused("/" + self.token(1), "server public key is not an RSA key")


class ReusableTokenTests(ServerTestMixin, unittest.TestCase):
    overrides = {"auth": {"single_use": "false"}}

    async def test_token_may_be_reused(self):
        token = self.token(4)
        for _ in range(2):
            client = await self.connect("/" + token)
            self.assertEqual((await client.next())["type"], "L")


class TokenSegmentTests(unittest.TestCase):
    """imd.auth's faster check of a token segment accepts and refuses exactly
    what PyJWS's own does, with the same error (pure logic)."""

    def outcome(self, check, segment):
        try:
            return ("ok", check(segment, "payload"))
        except jwt.DecodeError as e:
            return ("error", str(e))

    def test_same_outcome_as_pyjws_on_good_and_bad_segments(self):
        import random

        from jwt.api_jws import PyJWS
        from jwt.utils import base64url_encode

        from imd.auth import _JWS
        rng = random.Random(3)
        segments = [b"", b"=", b"==", b"===", b"QQ", b"QR", b"QQ==", b"QQ=", b"QQ===", b"Q", b"QUJD",
                    b"QUJD=", b"QUJ", b"QUJ=", b"a+b/", b"ab!!", b"ab cd", b"ab\ncd", "ééé".encode(),
                    b"\x00\x01", b"QUJD\x00"]
        for _ in range(300):
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
            good = base64url_encode(raw)
            segments.append(good)
            segments.append(good + b"=" * rng.randrange(1, 4))
            if good:
                i = rng.randrange(len(good))
                segments.append(good[:i] + bytes([rng.randrange(256)]) + good[i + 1:])
        for segment in segments:
            self.assertEqual(self.outcome(_JWS._decode_base64url_segment, segment),
                             self.outcome(PyJWS._decode_base64url_segment, segment), segment)

    def test_tokens_are_decoded_with_it(self):
        from imd.auth import _DECODER, _JWS
        self.assertIsInstance(_DECODER._jws, _JWS)


class AbandonedLoginTests(ServerTestMixin, unittest.TestCase):
    """Issue 13 item 2: a client that sent its upgrade with a valid token
    and left at once became a ghost: its login completed after it was gone,
    it read as online for ever and shutdown waited for it."""

    WATCHER = 999
    overrides = {"websocket": {"rate": "10000", "burst": "10000"}}

    def open_connections(self):
        text = self.server.app.metrics.exposition().decode()
        return float(re.search(r"^imd_connections_open (\S+)$", text, re.M).group(1))

    async def leave_at_once(self, uid, abort):
        """Send the upgrade with a valid token and close at once: a FIN right
        behind it, or (``abort``) a RST as soon as the kernel has it."""
        client = await raw_connect(self.server.port)
        request = upgrade_request("/" + self.token(uid))
        if abort:
            client.transport.getHandle().sendall(request)
            client.transport.abortConnection()
        else:
            client.transport.write(request)
            client.transport.loseConnection()
        await with_deadline(client.lost, what="the client's own close")

    async def assert_nobody_online(self, uids):
        factory = self.server._listening.factory
        await wait_until(lambda: factory.limits.total == 0, what="every abandoned connection lost")
        for uid in uids:
            await self.befriend(self.WATCHER, uid)
        watcher = await self.login(self.WATCHER)
        # (the O round trips also see out any Redis work still under way for the ghosts)
        for uid in uids:
            reply = await self.ask(watcher, {"id": uid, "to": 0, "type": "O", "msg": uid})
            self.assertEqual(reply["msg"], {"uid": uid, "online": False}, uid)
        for uid in uids:
            self.assertEqual(await self.redis.zcard("dev:%d" % uid), 0, uid)
        self.assertEqual(self.open_connections(), 1.0)   # the watcher
        self.assertEqual([s.uid for s in self.server.app.node.sessions()], [self.WATCHER])

    async def test_a_hundred_logins_abandoned_at_once_leave_nothing_behind(self):
        uids = list(range(1000, 1100))
        for uid in uids:
            await self.leave_at_once(uid, abort=uid % 2 == 0)
        await self.assert_nobody_online(uids)

    async def held(self, name, obj):
        """Hold ``obj.name`` (a method returning a Deferred) at its next call:
        (called, release) -- ``release()`` lets the real call go ahead."""
        real, gate, called = getattr(obj, name), defer.Deferred(), defer.Deferred()

        def holding(*args):
            setattr(obj, name, real)
            called.callback(None)
            return gate.addCallback(lambda _: real(*args))
        setattr(obj, name, holding)
        return called, lambda: gate.callback(None)

    async def test_a_login_abandoned_during_the_token_check_is_never_registered(self):
        called, release = await self.held("verify", self.server.app.verifier)
        await self.leave_at_once(5, abort=False)
        await with_deadline(called, what="token check")
        release()
        await self.assert_nobody_online([5])

    async def test_a_login_abandoned_while_it_is_recorded_is_unregistered(self):
        called, release = await self.held("register", self.server.app.node)
        client = await raw_connect(self.server.port, send=upgrade_request("/" + self.token(6)))
        await with_deadline(called, what="registration")
        client.transport.loseConnection()
        await with_deadline(client.lost, what="the client's own close")
        await wait_until(lambda: self.server._listening.factory.limits.total == 0, what="connection lost")
        release()
        await self.assert_nobody_online([6])

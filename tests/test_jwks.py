"""``[http] auth = jwks:<url>`` (contract §12) against a real key set server:
twisted.web on 127.0.0.1, keys generated here with cryptography.  Tokens
signed RS256 or ES256 by a published key get a wstoken; everything else is
401; the set follows rotations without a restart, is refetched for unknown
kids at most once per 30 s (moved with a Clock), and while it cannot be had
tokens whose key is not held get 503 and held keys keep verifying.  The
http role keeps answering while a fetch is slow.
"""

import base64
import collections
import hashlib
import hmac
import json
import os
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet import defer, reactor, ssl
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web import resource, server

from imd.config import ConfigError, parse_settings
from imd.http import jwks as jwks_module
from imd.http.jwks import JwksKeys, parse_key_set
from imd.http.jwks_fetch import FetchError, JwksFetcher
from tests.daemon_support import start_daemon, write_config
from tests.http_support import HttpTestMixin
from tests.support import free_port, key_pair, make_settings, wait_until, with_deadline
from tests.tls_support import TestCA

_KEYS = {}


class SigningKey:
    """A platform signing key: its public JWK, and tokens it signs."""

    def __init__(self, kind, kid=None, bits=2048):
        if kind == "RSA":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
            self.alg, self._algorithm = "RS256", RSAAlgorithm
        else:
            self.private = ec.generate_private_key(ec.SECP256R1() if kind == "EC" else ec.SECP384R1())
            self.alg, self._algorithm = ("ES256" if kind == "EC" else "ES384"), ECAlgorithm
        self.kid = kid or os.urandom(6).hex()

    def jwk(self, **extra):
        data = self._algorithm.to_jwk(self.private.public_key(), as_dict=True)
        data.update(kid=self.kid, alg=self.alg, use="sig")
        data.update(extra)
        return {k: v for k, v in data.items() if v is not None}

    def public_pem(self):
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def token(self, now=None, kid="same", algorithm=None, **claims):
        """Signed by this key, ``id`` 42 and 10 minutes to live unless
        ``claims`` say otherwise (a claim set to None is left out)."""
        now = time.time() if now is None else now
        claims.setdefault("id", 42)
        claims.setdefault("exp", int(now) + 600)
        claims = {k: v for k, v in claims.items() if v is not None}
        headers = {} if kid is None else {"kid": self.kid if kid == "same" else kid}
        return jwt.encode(claims, self.private, algorithm=algorithm or self.alg, headers=headers)


def signing_key(name, kind="RSA"):
    """One key per name for the whole run (RSA keys take a while to make)."""
    if name not in _KEYS:
        _KEYS[name] = SigningKey(kind, kid=name)
    return _KEYS[name]


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_token(secret, kid, **claims):
    """HS256 keyed with ``secret`` (e.g. a public key), built by hand:
    PyJWT itself refuses to use a PEM public key as an HMAC secret."""
    claims.setdefault("id", 42)
    claims.setdefault("exp", int(time.time()) + 600)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, ("%s.%s" % (header, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (header, body, b64(signature))


class KeySetResource(resource.Resource):
    """Serves ``document`` as JSON at any path, counting requests by path;
    ``hold`` keeps each answer back until ``release()``."""
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.document = {"keys": []}
        self.body = None      # raw bytes instead of the document
        self.status = 200
        self.requests = collections.Counter()
        self.hold = False
        self.held = []

    def publish(self, *keys, **extra):
        self.document = {"keys": [key.jwk() for key in keys], **extra}

    def render_GET(self, request):
        self.requests[request.path.decode("ascii")] += 1
        if self.hold:
            self.held.append(request)
            request.notifyFinish().addErrback(lambda _: None)
            return server.NOT_DONE_YET
        return self._answer(request)

    def _answer(self, request):
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/jwk-set+json")
        return self.body if self.body is not None else json.dumps(self.document).encode("utf-8")

    def release(self):
        self.hold = False
        held, self.held = self.held, []
        for request in held:
            if not request.finished and not request._disconnected:
                request.write(self._answer(request))
                request.finish()


class KeySetServer:
    """The platform's JWKS endpoint on 127.0.0.1 (``tls``: a ``(cert PEM,
    key PEM)`` to serve it over https)."""

    def __init__(self, tls=None):
        self.resource = KeySetResource()
        self.site = server.Site(self.resource)
        self.tls = tls
        self.port = None
        self._listening = None

    def start(self, port=0):
        if self.tls is not None:
            cert_pem, key_pem = self.tls
            options = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
            self._listening = reactor.listenSSL(port, self.site, options, interface="127.0.0.1")
        else:
            self._listening = reactor.listenTCP(port, self.site, interface="127.0.0.1")
        self.port = self._listening.getHost().port
        return self

    def stop(self):
        listening, self._listening = self._listening, None
        return defer.succeed(None) if listening is None else defer.maybeDeferred(listening.stopListening)

    def url(self, path="/certs", host="127.0.0.1"):
        return "%s://%s:%d%s" % ("https" if self.tls else "http", host, self.port, path)

    @property
    def requests(self):
        return self.resource.requests


class JwksTestMixin(HttpTestMixin):
    """``self.keyset`` serves the platform's keys (RSA ``rsa-a`` and EC
    ``ec-a`` published); ``self.http`` is imd with ``auth = jwks:`` on it."""

    http_overrides = {}

    @defer.inlineCallbacks
    def setUp(self):
        self.keyset = KeySetServer().start()
        self.addCleanup(self.keyset.stop)
        self.rsa, self.ec = signing_key("rsa-a"), signing_key("ec-a", "EC")
        self.keyset.resource.publish(self.rsa, self.ec)
        self.overrides = self.jwks_overrides(self.keyset.url(), **self.http_overrides)
        self.log = []
        globalLogPublisher.addObserver(self.log.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log.append)
        yield HttpTestMixin.setUp(self)
        yield wait_until(lambda: self.http.app.jwks.fetches_ok, what="the key set fetched at start")

    def jwks_overrides(self, url, **http):
        values = {"auth": "jwks:" + url, "token_address_rate": "0", "token_user_rate": "0"}
        values.update(http)
        return {"imd": {"roles": "http"}, "http": values}

    async def start_with_clock(self, url=None, wait=True, **http):
        """Another imd on ``url`` (default: this key set, at its own path)
        whose clock is a Clock set to now."""
        clock = Clock()
        clock.advance(time.time())
        url = url or self.keyset.url("/clock")
        server = await self.start_server(make_settings(self.jwks_overrides(url, **http)), clock=clock)
        if wait:
            await wait_until(lambda: server.app.jwks.fetches_ok + server.app.jwks.fetches_failed,
                             what="the fetch at start")
        return server, clock

    def bearer(self, token):
        return {"Authorization": "Bearer " + token}

    async def assert_token(self, token, uid=42, server=None):
        response = await self.post_token(None, self.bearer(token), server=server)
        self.assertEqual(response.code, 200, response)
        # (a server on a Clock issues it at the Clock's time)
        claims = jwt.decode(response.json()["token"], key_pair()[0], algorithms=["RS256"],
                            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
        self.assertEqual(claims["id"], uid)
        return response

    async def assert_refused(self, token, words, server=None, status=401):
        response = await self.post_token(None, self.bearer(token), server=server)
        self.assertEqual(response.code, status, (words, response))
        self.assertIn(words, response.json()["error"])
        if status == 401:
            self.assertEqual(response.header(b"www-authenticate"), 'Bearer realm="imd"')
        return response

    def logged(self, words):
        return [formatEvent(e) for e in self.log if words in (formatEvent(e) or "")]

    async def fetched(self, server, count):
        """Wait until ``server``'s key set has ended ``count`` fetches."""
        jwks = server.app.jwks
        await wait_until(lambda: jwks.fetches_ok + jwks.fetches_failed >= count and not jwks.fetching(),
                         what="fetch %d of the key set" % count)


class AcceptedTests(JwksTestMixin, unittest.TestCase):

    async def test_rs256_and_es256_tokens_of_the_set_get_a_wstoken(self):
        await self.assert_token(self.rsa.token(id=7), uid=7)
        await self.assert_token(self.ec.token(id="8"), uid=8)
        # one fetch, at start: a known kid never fetches
        self.assertEqual(self.keyset.requests["/certs"], 1)

    async def test_the_body_is_not_read(self):
        for body in (b"{not json", {"id": 1}):
            response = await self.post_token(body, self.bearer(self.rsa.token(id=9)))
            self.assertEqual(response.code, 200, response)
            self.assertEqual(jwt.decode(response.json()["token"], key_pair()[0], algorithms=["RS256"])["id"], 9)

    async def test_aud_and_iss_are_not_checked_unless_configured(self):
        await self.assert_token(self.rsa.token(aud="someone-else", iss="https://other.example"))

    async def test_a_token_without_kid_needs_a_single_key_of_its_alg(self):
        await self.assert_token(self.rsa.token(kid=None))   # one RS256 key in the set
        other = signing_key("rsa-b")
        server, clock = await self.start_with_clock()
        self.keyset.resource.publish(self.rsa, other)
        clock.advance(600)   # the cache expires: fetched again
        await self.fetched(server, 2)
        await self.assert_refused(self.rsa.token(kid=None, now=clock.seconds()), "names no key", server=server)


class RefusedTests(JwksTestMixin, unittest.TestCase):

    async def test_wrong_key_expired_too_long_and_bad_claims_are_401(self):
        now = int(time.time())
        unpublished = SigningKey("RSA", kid=self.rsa.kid)   # another key under a published kid
        unpublished_ec = SigningKey("EC", kid=self.ec.kid)
        cases = [
            (unpublished.token(), "Signature verification failed"),
            (unpublished_ec.token(), "Signature verification failed"),
            (self.rsa.token(exp=now - 10), "expired"),
            (self.ec.token(exp=now - 1), "expired"),
            (self.rsa.token(exp=now + 24 * 3600 + 60), "longer than 24 h"),
            (self.rsa.token(iat=now - 24 * 3600, exp=now + 3600), "longer than 24 h"),
            (self.rsa.token(exp=None), "no exp"),
            (self.rsa.token(exp=1e30), "bad credentials"),
            (self.rsa.token(nbf=now + 600), "not yet valid"),
            (self.rsa.token(id=None), "id"),
            (self.rsa.token(id="x7"), "id"),
            (self.ec.token(id=0), "id"),
            ("not-a-jwt", "bad credentials"),
        ]
        for token, words in cases:
            await self.assert_refused(token, words)
        await self.assert_token(self.rsa.token(exp=now + 23 * 3600))

    async def test_alg_none_hs256_and_other_algorithms_are_401_without_a_fetch(self):
        now = int(time.time())
        held_back = self.http.app.jwks.held_back
        other_alg = SigningKey("EC384", kid="ec-384")
        self.keyset.resource.publish(self.rsa, self.ec, other_alg)
        cases = [
            jwt.encode({"id": 42, "exp": now + 600}, None, algorithm="none", headers={"kid": self.rsa.kid}),
            # the key confusion attack: HMAC keyed with the published public key, as PEM or as its JWK
            hs256_token(self.rsa.public_pem(), self.rsa.kid),
            hs256_token(json.dumps(self.rsa.jwk()).encode(), self.rsa.kid),
            hs256_token(self.ec.public_pem(), self.ec.kid),
            self.rsa.token(algorithm="RS512"),
            self.rsa.token(algorithm="PS256"),
            other_alg.token(),
        ]
        for token in cases:
            await self.assert_refused(token, "alg must be RS256 or ES256")
        # refused before any key is looked up: no refetch asked for, none held back
        self.assertEqual((self.keyset.requests["/certs"], self.http.app.jwks.held_back), (1, held_back))

    async def test_credentials_missing_or_not_bearer(self):
        for headers, words in (({}, "missing credentials"), ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer"),
                               ({"Authorization": "Bearer"}, "Bearer")):
            response = await self.post_token({"id": 1}, headers)
            self.assertEqual(response.code, 401, response)
            self.assertIn(words, response.json()["error"])

    async def test_a_kid_that_is_not_a_string_is_401(self):
        # built by hand: PyJWT will not put a kid that is not a string in a header
        for kid, words in ((12, "Key ID header parameter must be a string"), (["rsa-a"], "must be a string"),
                           ("", "kid is not a key id")):
            header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
            body = b64(json.dumps({"id": 42, "exp": int(time.time()) + 600}).encode())
            signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(("%s.%s" % (header, body)).encode(), self.rsa.private)
            await self.assert_refused("%s.%s.%s" % (header, body, b64(signature)), words)


class AudienceIssuerTests(JwksTestMixin, unittest.TestCase):
    http_overrides = {"jwks_audience": "imd-chat", "jwks_issuer": "https://sso.example.com/realms/shop"}

    async def test_aud_and_iss_must_match_when_configured(self):
        iss = "https://sso.example.com/realms/shop"
        await self.assert_token(self.rsa.token(aud="imd-chat", iss=iss))
        await self.assert_token(self.ec.token(aud=["account", "imd-chat"], iss=iss))
        await self.assert_refused(self.rsa.token(aud="account", iss=iss), "Audience doesn't match")
        await self.assert_refused(self.rsa.token(aud="imd-chat", iss="https://sso.example.com/realms/other"),
                                  "issuer")
        await self.assert_refused(self.rsa.token(iss=iss), '"aud"')
        await self.assert_refused(self.rsa.token(aud="imd-chat"), '"iss"')


class RotationTests(JwksTestMixin, unittest.TestCase):

    async def test_a_rotated_key_is_used_without_restart(self):
        server, clock = await self.start_with_clock()
        jwks = server.app.jwks
        new = signing_key("rsa-rotated")
        self.keyset.resource.publish(new, self.ec)   # rsa-a retired, rsa-rotated in
        # within 30 s of the fetch at start: the refetch is held back
        clock.advance(10)
        await self.assert_refused(new.token(now=clock.seconds()), "at most once per 30 s (next in 20 s)",
                                  server=server)
        self.assertEqual((self.keyset.requests["/clock"], jwks.held_back), (1, 1))
        clock.advance(20)
        await self.assert_token(new.token(now=clock.seconds()), server=server)
        self.assertEqual(self.keyset.requests["/clock"], 2)
        rotated = self.logged("key set rotated")
        self.assertEqual(len(rotated), 1, rotated)
        self.assertIn("added rsa-rotated (RS256); removed rsa-a (RS256); replaced none", rotated[0])
        # the retired key is gone from the cache (it asks for a refetch, held back)
        await self.assert_refused(self.rsa.token(now=clock.seconds()), "unknown key id 'rsa-a'", server=server)
        await self.assert_token(self.ec.token(now=clock.seconds()), server=server)

    async def test_the_cache_is_refreshed_after_jwks_cache_seconds(self):
        server, clock = await self.start_with_clock(jwks_cache="120")
        new = signing_key("rsa-rotated")
        self.keyset.resource.publish(self.rsa, new)
        clock.advance(119)
        self.assertEqual(self.keyset.requests["/clock"], 1)
        clock.advance(1)
        await self.fetched(server, 2)
        self.assertEqual(self.keyset.requests["/clock"], 2)
        self.assertEqual(server.app.jwks.rotations, 1)
        # the new key was fetched by the refresh: no token had to ask
        await self.assert_token(new.token(now=clock.seconds()), server=server)
        await self.assert_refused(self.ec.token(now=clock.seconds()), "unknown key id", server=server)
        self.assertEqual(self.keyset.requests["/clock"], 2)

    async def test_a_key_replaced_under_its_kid_is_a_rotation(self):
        server, clock = await self.start_with_clock()
        replacement = SigningKey("RSA", kid=self.rsa.kid)
        self.keyset.resource.publish(replacement, self.ec)
        clock.advance(600)
        await self.fetched(server, 2)
        rotated = self.logged("key set rotated")
        self.assertIn("replaced rsa-a (RS256)", rotated[-1])
        await self.assert_token(replacement.token(now=clock.seconds()), server=server)
        await self.assert_refused(self.rsa.token(now=clock.seconds()), "Signature verification failed",
                                  server=server)


class RefetchLimitTests(JwksTestMixin, unittest.TestCase):

    async def flood(self, server, clock, count=40):
        """``count`` tokens at once, each with a kid the set does not hold."""
        impostor = signing_key("rsa-unknown")
        tokens = [impostor.token(now=clock.seconds(), kid="kid-%s" % os.urandom(4).hex()) for _ in range(count)]
        responses = await defer.gatherResults([
            defer.ensureDeferred(self.post_token(None, self.bearer(t), server=server)) for t in tokens])
        self.assertEqual(collections.Counter(r.code for r in responses), {401: count})
        return responses

    async def test_at_most_one_refetch_per_30_s_under_a_flood_of_unknown_kids(self):
        server, clock = await self.start_with_clock()
        jwks = server.app.jwks
        # the fetch at start counts as the first: nothing more within 30 s
        await self.flood(server, clock)
        self.assertEqual(self.keyset.requests["/clock"], 1)
        self.assertEqual(jwks.held_back, 40)
        clock.advance(29)
        await self.flood(server, clock)
        self.assertEqual(self.keyset.requests["/clock"], 1)
        # 30 s on: the flood shares one refetch (the others wait for it, then are held back)
        clock.advance(1)
        await self.flood(server, clock)
        self.assertEqual(self.keyset.requests["/clock"], 2)
        await self.flood(server, clock)
        self.assertEqual(self.keyset.requests["/clock"], 2)
        clock.advance(30)
        await self.flood(server, clock, count=5)
        self.assertEqual(self.keyset.requests["/clock"], 3)
        # the known keys verified all along, without a fetch
        await self.assert_token(self.ec.token(now=clock.seconds()), server=server)
        self.assertEqual(self.keyset.requests["/clock"], 3)

    async def test_the_limit_and_the_cache_on_metrics_and_healthz(self):
        server, clock = await self.start_with_clock(jwks_cache="900")
        clock.advance(12)
        await self.flood(server, clock, count=3)
        metrics = (await self.request("GET", "/metrics", server=server)).body.decode()
        for line in ("imd_jwks_available 1.0", "imd_jwks_keys 2.0", "imd_jwks_age_seconds 12.0",
                     "imd_jwks_cache_seconds 900.0", "imd_jwks_refetch_wait_seconds 18.0",
                     "imd_jwks_refetches_held_back_total 3.0", 'imd_jwks_fetches_total{result="ok"} 1.0',
                     'imd_jwks_fetches_total{result="failed"} 0.0', "imd_jwks_rotations_total 0.0"):
            self.assertIn(line + "\n", metrics)
        health = await self.request("GET", "/healthz", server=server)
        self.assertEqual(health.code, 200, health)
        body = health.json()
        self.assertEqual((body["jwks"], body["jwks_keys"], body["jwks_age"], body["jwks_refetch_wait"],
                          body["jwks_problem"]), ("ok", 2, 12.0, 18.0, None))
        # through a proxy: ok or down, no details
        proxied = (await self.request("GET", "/healthz", headers={"X-Forwarded-For": "203.0.113.7"},
                                      server=server)).json()
        self.assertEqual(proxied["jwks"], "ok")
        self.assertNotIn("jwks_problem", proxied)


class UnavailableTests(JwksTestMixin, unittest.TestCase):

    async def test_unreachable_at_start_503_then_200_when_it_is_back(self):
        port = free_port()
        down = KeySetServer()
        down.resource.publish(self.rsa)
        server, clock = await self.start_with_clock(url="http://127.0.0.1:%d/certs" % port)
        jwks = server.app.jwks
        self.assertEqual((jwks.fetches_ok, jwks.fetches_failed), (0, 1))
        response = await self.assert_refused(self.rsa.token(now=clock.seconds()), "cannot be had", server=server,
                                             status=503)
        self.assertEqual(response.header(b"retry-after"), "1")
        self.assertNotIn(str(port), response.json()["error"])   # why is for the log only
        health = await self.request("GET", "/healthz", server=server)
        self.assertEqual(health.code, 200, health)
        self.assertEqual(health.json()["jwks"], "down")
        self.assertIn("onnection refused", health.json()["jwks_problem"])
        metrics = (await self.request("GET", "/metrics", server=server)).body.decode()
        self.assertIn("imd_jwks_available 0.0\n", metrics)
        self.assertIn("imd_jwks_age_seconds NaN\n", metrics)
        self.assertEqual(len(self.logged("cannot fetch the key set")), 1)
        # retried 1, 2, 4... s apart (at most 30); one log line while it stays down for the same reason
        clock.advance(1)
        await self.fetched(server, 2)
        clock.advance(2)
        await self.fetched(server, 3)
        self.assertEqual(len(self.logged("cannot fetch the key set")), 1)
        response = await self.assert_refused(self.rsa.token(now=clock.seconds()), "cannot be had", server=server,
                                             status=503)
        self.assertEqual(response.header(b"retry-after"), "4")
        down.start(port)
        self.addCleanup(down.stop)
        clock.advance(4)
        await self.fetched(server, 4)
        await self.assert_token(self.rsa.token(now=clock.seconds()), server=server)
        self.assertEqual(len(self.logged("could be fetched again")), 0)   # it had never been fetched
        self.assertEqual((await self.request("GET", "/healthz", server=server)).json()["jwks"], "ok")

    async def test_held_keys_keep_verifying_while_the_set_cannot_be_had(self):
        keyset = KeySetServer().start()
        keyset.resource.publish(self.rsa)
        server, clock = await self.start_with_clock(url=keyset.url())
        jwks = server.app.jwks
        port = keyset.port
        await keyset.stop()
        clock.advance(600)   # the cache expires; the refresh fails
        await self.fetched(server, 2)
        self.assertFalse(jwks.available)
        await self.assert_token(self.rsa.token(now=clock.seconds()), server=server)
        # a key not held: 503 (not 401), and no refetch of its own while the set cannot be had
        await self.assert_refused(self.ec.token(now=clock.seconds()), "cannot be had", server=server, status=503)
        self.assertEqual(jwks.fetches_ok + jwks.fetches_failed, 2)
        keyset.resource.publish(self.rsa, self.ec)
        keyset.start(port)
        self.addCleanup(keyset.stop)
        clock.advance(1)
        await self.fetched(server, 3)
        await self.assert_token(self.ec.token(now=clock.seconds()), server=server)
        self.assertEqual(len(self.logged("could be fetched again")), 1)

    async def test_an_answer_that_is_not_a_key_set_is_a_failed_fetch(self):
        server, clock = await self.start_with_clock()
        jwks = server.app.jwks
        for status, body, words in ((200, b"<html>login</html>", "not JSON"),
                                    (200, b'{"keys": []}', "no usable RS256 or ES256"),
                                    (404, b"{}", "answered 404"),
                                    (200, b"[" * 300000, "over 262144 bytes")):
            self.keyset.resource.status, self.keyset.resource.body = status, body
            ended = jwks.fetches_ok + jwks.fetches_failed
            clock.advance(600)   # the cache refresh, or the retry after a failure
            await self.fetched(server, ended + 1)
            self.assertFalse(jwks.available)
            self.assertIn(words, jwks.problem)
            await self.assert_token(self.rsa.token(now=clock.seconds()), server=server)   # still held


class DaemonTests(JwksTestMixin, unittest.TestCase):

    async def test_twistd_starts_without_the_key_set_and_takes_tokens_once_it_comes(self):
        jwks_port, http_port = free_port(), free_port()
        overrides = self.jwks_overrides("http://127.0.0.1:%d/certs" % jwks_port)
        overrides["imd"]["roles"] = "ws, http"
        overrides["http"]["listen"] = "tcp:%d:interface=127.0.0.1" % http_port
        daemon = await start_daemon(self, write_config(self, overrides))
        daemon_http = type("Daemon", (), {"base_url": "http://127.0.0.1:%d" % http_port})()
        response = await self.assert_refused(self.rsa.token(), "cannot be had", server=daemon_http, status=503)
        self.assertGreaterEqual(int(response.header(b"retry-after")), 1)
        health = await self.request("GET", "/healthz", server=daemon_http)
        self.assertEqual((health.code, health.json()["jwks"]), (200, "down"))
        keyset = KeySetServer()
        keyset.resource.publish(self.rsa)
        keyset.start(jwks_port)
        self.addCleanup(keyset.stop)

        async def accepted():
            answer = await self.post_token(None, self.bearer(self.rsa.token()), server=daemon_http)
            return answer.code == 200
        # retried 1, 2, 4, 8... s after the failures: well within the deadline
        await wait_until(accepted, seconds=40, step=0.25, what="a token accepted once the key set is up")
        output = daemon.output()
        self.assertIn("jwks: cannot fetch the key set from http://127.0.0.1:%d/certs" % jwks_port, output)
        self.assertIn("jwks: 1 key(s) from", output)
        self.assertNotIn("Traceback", output)


class SlowKeySetTests(JwksTestMixin, unittest.TestCase):

    async def test_other_requests_are_answered_while_a_fetch_is_slow(self):
        keyset = KeySetServer().start()
        self.addCleanup(keyset.stop)
        keyset.resource.publish(self.rsa)
        keyset.resource.hold = True
        server = await self.start_server(make_settings(self.jwks_overrides(keyset.url())))
        await wait_until(lambda: keyset.resource.held, what="the fetch at start to arrive")
        waiting = defer.ensureDeferred(self.post_token(None, self.bearer(self.rsa.token(id=5)), server=server))
        # the reactor is free: /healthz and a refused token are answered meanwhile
        for _ in range(3):
            health = await self.request("GET", "/healthz", server=server)
            self.assertEqual((health.code, health.json()["jwks"]), (200, "down"))
        await self.assert_refused(self.rsa.token(algorithm="RS512"), "alg", server=server)
        self.assertFalse(waiting.called)
        keyset.resource.release()
        response = await with_deadline(waiting, what="the token once the key set came")
        self.assertEqual(response.code, 200, response)

    async def test_a_fetch_that_never_ends_is_cut_at_the_timeout(self):
        self.keyset.resource.hold = True
        server, clock = await self.start_with_clock(wait=False)
        await wait_until(lambda: self.keyset.resource.held, what="the fetch at start to arrive")
        waiting = defer.ensureDeferred(self.post_token(None, self.bearer(self.rsa.token(now=clock.seconds())),
                                                       server=server))
        await self.request("GET", "/healthz", server=server)
        self.assertFalse(waiting.called)
        clock.advance(10)
        response = await with_deadline(waiting, what="the 503 after the fetch timeout")
        self.assertEqual(response.code, 503, response)
        self.assertIn("no whole answer within 10 s", server.app.jwks.problem)


class HttpsKeySetTests(JwksTestMixin, unittest.TestCase):

    async def https_server(self, ca):
        cert_pem, key_pem, _ = ca.issue("localhost")
        keyset = KeySetServer(tls=(cert_pem, key_pem)).start()
        self.addCleanup(keyset.stop)
        keyset.resource.publish(self.rsa)
        return keyset

    async def test_the_certificate_is_verified_against_the_system_cas_and_jwks_ca(self):
        ca = TestCA()
        keyset = await self.https_server(ca)
        url = keyset.url(host="localhost")
        untrusted, clock = await self.start_with_clock(url=url)
        self.assertIn("certificate verify failed", untrusted.app.jwks.problem)
        await self.assert_refused(self.rsa.token(now=clock.seconds()), "cannot be had", server=untrusted, status=503)
        ca_path = self.mktemp()
        with open(ca_path, "wb") as f:
            f.write(ca.cert_pem)
        trusted, clock = await self.start_with_clock(url=url, jwks_ca=ca_path)
        await self.assert_token(self.rsa.token(now=clock.seconds()), server=trusted)
        # the name is checked too: the certificate is for localhost, not 127.0.0.1
        wrong_name, _ = await self.start_with_clock(url=keyset.url(host="127.0.0.1"), jwks_ca=ca_path)
        self.assertFalse(wrong_name.app.jwks.available)
        self.assertIn("127.0.0.1", wrong_name.app.jwks.problem)


class KeySetParsingTests(unittest.SynchronousTestCase):

    def parse(self, *entries, **document):
        return parse_key_set(json.dumps(dict({"keys": list(entries)}, **document)).encode())

    def test_only_rs256_and_es256_public_signing_keys_are_kept(self):
        rsa_key, ec_key = signing_key("rsa-a"), signing_key("ec-a", "EC")
        private = RSAAlgorithm.to_jwk(rsa_key.private, as_dict=True)
        keys = self.parse(
            rsa_key.jwk(),
            ec_key.jwk(alg=None),                                     # ES256 from crv P-256
            rsa_key.jwk(kid="enc", alg="RSA-OAEP", use="enc"),        # Keycloak publishes one of these
            rsa_key.jwk(kid="enc2", alg=None, use="enc"),
            rsa_key.jwk(kid="rs512", alg="RS512"),
            SigningKey("EC384").jwk(kid="p384", alg=None),
            ec_key.jwk(kid="p256-as-es384", alg="ES384"),
            {"kty": "oct", "k": b64(b"s" * 32), "kid": "hmac", "alg": "HS256"},
            {"kty": "oct", "k": b64(b"s" * 32), "kid": "hmac2"},
            dict(private, kid="private", alg="RS256"),
            SigningKey("RSA", bits=1024).jwk(kid="short"),
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "broken-ec", "x": "AAAA"},
            {"kty": "RSA", "kid": "bad-n", "n": 5, "e": "AQAB"},
            "not a key",
        )
        self.assertEqual(sorted(keys), [("ec-a", "ES256"), ("rsa-a", "RS256")])
        self.assertEqual(keys[("rsa-a", "RS256")].algorithm_name, "RS256")

    def test_documents_that_are_not_a_usable_key_set(self):
        for body, words in ((b"", "not JSON"), (b"\xff", "not JSON"), (b"[]", "no \"keys\" list"),
                            (b'{"keys": {}}', "no \"keys\" list"), (b'{"keys": []}', "no usable"),
                            (json.dumps({"keys": [{"kty": "RSA"}] * 101}).encode(), "more than 100")):
            with self.assertRaises(FetchError) as caught:
                parse_key_set(body)
            self.assertIn(words, str(caught.exception))


class FetcherTests(unittest.TestCase):
    """The fetcher alone, on the real reactor."""

    def setUp(self):
        self.keyset = KeySetServer().start()
        self.addCleanup(self.keyset.stop)

    async def fetch_error(self, **kwargs):
        fetcher = JwksFetcher(reactor, reactor, self.keyset.url(), **kwargs)
        with self.assertRaises(FetchError) as caught:
            await with_deadline(fetcher.fetch())
        return str(caught.exception)

    async def test_a_body_over_the_cap_is_cut(self):
        self.keyset.resource.body = b"x" * 5000
        self.assertIn("over 4096 bytes (Content-Length 5000)", await self.fetch_error(max_bytes=4096))
        fetcher = JwksFetcher(reactor, reactor, self.keyset.url(), max_bytes=5000)
        self.assertEqual(len(await with_deadline(fetcher.fetch())), 5000)

    async def test_a_body_without_length_over_the_cap_is_cut(self):
        resource = self.keyset.resource

        def chunked(request):
            resource.requests[request.path.decode()] += 1
            for _ in range(10):
                request.write(b"y" * 1000)   # no Content-Length: chunked
            request.finish()
            return server.NOT_DONE_YET
        resource.render_GET = chunked
        self.assertIn("over 4096 bytes", await self.fetch_error(max_bytes=4096))

    async def test_a_redirect_is_not_followed(self):
        self.keyset.resource.status = 302
        self.assertIn("answered 302", await self.fetch_error())


class ConfigTests(unittest.SynchronousTestCase):

    def assert_error(self, text, key, words):
        with self.assertRaises(ConfigError) as caught:
            parse_settings(text, "etc/test.ini")
        line = str(caught.exception)
        self.assertEqual((caught.exception.section, caught.exception.key), ("http", key), line)
        self.assertNotIn("\n", line)
        self.assertIn(words, line)

    def test_jwks_urls(self):
        for url in ("https://sso.example.com/realms/shop/protocol/openid-connect/certs",
                    "https://sso.example.com:8443/.well-known/jwks.json?x=1",
                    "http://127.0.0.1:8080/certs", "http://localhost/certs", "http://[::1]:80/certs",
                    "http://127.0.0.2/certs"):
            settings = parse_settings("[http]\nlisten = tcp:8766:interface=0.0.0.0\nauth = jwks:%s\n" % url)
            self.assertEqual(settings.http.auth, "jwks:" + url)
        for url, words in (("http://sso.example.com/certs", "plain http is allowed only for a loopback host"),
                           ("http://10.0.0.1/certs", "loopback"), ("ftp://sso.example.com/certs", "https://"),
                           ("", "https://"), ("sso.example.com/certs", "https://"),
                           ("https:///certs", "https://"), ("https://sso.example.com:99999/", "https://"),
                           ("https://user:pw@sso.example.com/certs", "credentials"),
                           ("https://sso.example.com/certs#x", "fragment")):
            self.assert_error("[http]\nauth = jwks:%s\n" % url, "auth", words)
        self.assertNotIn("pw", str(self._error("[http]\nauth = jwks:https://user:pw@sso.example.com/certs\n")))

    def _error(self, text):
        try:
            parse_settings(text)
        except ConfigError as e:
            return e
        self.fail("no error")

    def test_jwks_keys(self):
        url = "auth = jwks:https://sso.example.com/certs\n"
        settings = parse_settings("[http]\n" + url + "jwks_audience = imd\njwks_issuer = https://sso.example.com\n")
        self.assertEqual((settings.http.jwks_audience, settings.http.jwks_issuer, settings.http.jwks_cache),
                         ("imd", "https://sso.example.com", 600))
        self.assertEqual(parse_settings("[http]\n" + url + "jwks_cache = 30\n").http.jwks_cache, 30)
        self.assert_error("[http]\n" + url + "jwks_cache = 29\n", "jwks_cache", "at least 30")
        self.assert_error("[http]\n" + url + "jwks_cache = 86401\n", "jwks_cache", "at most 86400")
        self.assert_error("[http]\n" + url + "jwks_cache = soon\n", "jwks_cache", "integer")
        for key in ("jwks_audience", "jwks_issuer"):
            self.assert_error("[http]\nauth = hs256:%s\n%s = x\n" % ("s" * 32, key), key,
                              "only with [http] auth = jwks:<url> (auth is hs256)")
            self.assert_error("[http]\n%s = x\n" % key, key, "(auth is dev)")

    def test_jwks_ca(self):
        url = "auth = jwks:https://sso.example.com/certs\n"
        ca = TestCA()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(ca.cert_pem + TestCA("second").cert_pem)
        self.assertEqual(parse_settings("[http]\n%sjwks_ca = %s\n" % (url, path)).http.jwks_ca, path)
        self.assert_error("[http]\n%sjwks_ca = /nonexistent/ca.pem\n" % url, "jwks_ca", "/nonexistent/ca.pem")
        empty = self.mktemp()
        with open(empty, "wb") as f:
            f.write(b"not a certificate\n")
        self.assert_error("[http]\n%sjwks_ca = %s\n" % (url, empty), "jwks_ca", "no PEM certificate")
        self.assert_error("[http]\nauth = jwks:http://127.0.0.1/certs\njwks_ca = %s\n" % path, "jwks_ca",
                          "https://")
        self.assert_error("[http]\njwks_ca = %s\n" % path, "jwks_ca", "only with")


class ServiceTests(unittest.SynchronousTestCase):
    """The key set service on a Clock with a fetcher that the test answers."""

    def setUp(self):
        self.clock = Clock()
        self.answers = []
        self.keys = JwksKeys(self.fetch, self.clock, 600, "https://sso.example.com/certs")

    def fetch(self):
        d = defer.Deferred()
        self.answers.append(d)
        return d

    def answer(self, *keys):
        self.answers[-1].callback(json.dumps({"keys": [k.jwk() for k in keys]}).encode())

    def test_tokens_during_the_fetch_at_start_wait_for_it(self):
        rsa_key = signing_key("rsa-a")
        self.keys.startService()
        waiting = [self.keys.key_for("rsa-a", "RS256"), self.keys.key_for("other", "RS256"),
                   self.keys.key_for(None, "RS256")]
        self.assertEqual(len(self.answers), 1)
        self.answer(rsa_key)
        self.assertEqual(self.successResultOf(waiting[0]).key_id, "rsa-a")
        self.failureResultOf(waiting[1], jwks_module.UnknownKey)
        self.assertEqual(self.successResultOf(waiting[2]).key_id, "rsa-a")
        self.assertEqual(len(self.answers), 1)

    def test_stopping_cancels_the_fetch_and_the_timer(self):
        self.keys.startService()
        self.keys.stopService()
        self.assertTrue(self.answers[0].called)   # cancelled
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.keys.startService()
        self.answer(signing_key("rsa-a"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)   # the cache refresh
        self.keys.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retries_back_off_to_30_s_and_never_stop(self):
        self.keys.startService()
        delays = []
        for _ in range(1100):   # past 2 ** 1024: an hour and more of outage at 30 s
            self.answers[-1].errback(FetchError("down"))
            [call] = self.clock.getDelayedCalls()
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays[:7], [1, 2, 4, 8, 16, 30, 30])
        self.assertEqual(set(delays[5:]), {30})
        self.assertEqual((len(self.answers), self.keys.fetches_failed), (1101, 1100))
        self.answer(signing_key("rsa-a"))
        self.assertTrue(self.keys.available)

"""``POST /IM/token``: who is asking (``[http] auth``), then a wstoken for them.

``dev``: the JSON body ``{"id": N}`` is trusted (config allows it only on
loopback listeners), and only from a browser or tool on this machine: a
request that came through a proxy, or names a ``Host`` other than a loopback
one (DNS rebinding), is refused.  ``hs256:<secret>``: ``Authorization: Bearer
<JWT>`` signed HS256 by the platform with the user id in claim ``id``; it
must have an ``exp`` at most :data:`PLATFORM_MAX_LIFETIME` ahead, checked
with ``nbf`` against the injected clock.  ``jwks:<url>``: the same, signed
RS256 or ES256 by a key of the platform's key set (imd.http.jwks), with
``aud`` and ``iss`` checked when ``[http] jwks_audience`` / ``jwks_issuer``
are set; the body is not read.

Every request counts against its remote address's allowance, and every
authenticated one against its user's (``[http] token_*``): past either the
answer is 429 with ``Retry-After``, before any signing is done.
"""

import ipaddress
import re
import typing
from typing import TYPE_CHECKING, Any, Dict, Generator, Hashable, Optional

import jwt
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request

from imd import endpoints
from imd.auth import IssuerKeyError, TokenIssuer, is_time
from imd.errors import StoreUnavailable
from imd.http.jwks import ALGORITHMS, KeySetUnavailable, UnknownKey
from imd.http.ratelimit import RateLimiter
from imd.http.resource import HttpError, JsonResource, JsonResult, came_through_proxy, read_json_object
from imd.clock import Clock
from imd.protocol import parse_uid

if TYPE_CHECKING:
    from imd.config import Settings
    from imd.http.jwks import JwksKeys
    from imd.metrics import Metrics
    from imd.stores.tokens import TokenStore

_log = Logger()

PLATFORM_ALGORITHM = "HS256"
# A platform token that leaks is good for at most this long.
PLATFORM_MAX_LIFETIME = 86400
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")
_CHALLENGE = {b"WWW-Authenticate": b'Bearer realm="imd"'}
_LOOPBACK_HOST = re.compile(r"(?:localhost|127\.0\.0\.1|\[::1\])(?::[0-9]{1,5})?", re.IGNORECASE)


def refuse_unless_local(request: Request) -> None:
    """HttpError 403 unless ``request`` came straight from this machine's
    loopback under a loopback name (what ``[http] auth = dev`` trusts)."""
    name = came_through_proxy(request)
    if name is not None:
        raise HttpError(403, "dev mode does not answer requests that came through a proxy "
                             "(%s is set); use [http] auth = hs256:<secret>" % name.decode("ascii"))
    host = request.getHeader(b"host")
    if host is None or not _LOOPBACK_HOST.fullmatch(host.decode("latin-1")):
        raise HttpError(403, "dev mode answers only requests for localhost, 127.0.0.1 or [::1] "
                             "(Host header)")


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def ws_base_url(settings: "Settings", request: Request) -> str:
    """Where clients connect: ``[http] public_ws_url``, else the ws listener's
    own address (``wss`` and ``tls_listen`` when this request came over TLS).
    A listener on all interfaces is named by the host the client asked for.
    """
    if settings.http.public_ws_url:
        return settings.http.public_ws_url
    secure = bool(request.isSecure() and settings.websocket.tls_listen)
    description = settings.websocket.tls_listen if secure else settings.websocket.listen
    endpoint = endpoints.parse(description)
    host = endpoint.interface
    if host is None or _is_unspecified(host):
        host = request.getRequestHostname().decode("ascii", "replace").strip("[]")
        if not _HOST.fullmatch(host):
            host = "localhost"
    if ":" in host:
        host = "[%s]" % host
    return "%s://%s:%d/" % ("wss" if secure else "ws", host, endpoint.port or 0)


class TokenApp(typing.Protocol):
    """What ``/IM/token`` uses of imd.app.App (which imports this package)."""

    @property
    def settings(self) -> "Settings": ...

    @property
    def tokens(self) -> "TokenStore": ...

    @property
    def metrics(self) -> "Metrics": ...

    @property
    def clock(self) -> Clock: ...

    @property
    def jwks(self) -> "Optional[JwksKeys]": ...


class TokenResource(JsonResource):
    methods = ("POST",)

    def __init__(self, app: TokenApp, ws_base_url: Optional[str] = None) -> None:
        http = app.settings.http
        super().__init__(http.cors_origins)
        self._app = app
        self._ws_base_url = ws_base_url
        self._mode = http.auth.split(":", 1)[0]   # dev, hs256 or jwks
        self._secret = http.auth[len("hs256:"):] if self._mode == "hs256" else None
        self._jwks = app.jwks if self._mode == "jwks" else None
        if self._mode == "jwks" and self._jwks is None:
            raise ValueError("[http] auth = jwks:<url> needs the App's key set (App.jwks)")
        self._audience = http.jwks_audience or None
        self._jwks_issuer = http.jwks_issuer or None
        self._issuer = TokenIssuer(app.tokens, app.clock, app.settings.auth.token_ttl)
        self._per_address = RateLimiter(http.token_address_rate, http.token_address_burst)
        self._per_user = RateLimiter(http.token_user_rate, http.token_user_burst)

    @defer.inlineCallbacks
    def render_POST(self, request: Request) -> Generator[defer.Deferred, Any, JsonResult]:
        app = self._app
        if self._mode == "dev":
            refuse_unless_local(request)
        peer = getattr(request.getClientAddress(), "host", None) or "-"
        self._spend(self._per_address, peer, "this address")
        if self._mode == "jwks":
            uid = yield self._jwks_user(request)
        elif self._mode == "hs256":
            uid = self._platform_user(request)
        else:
            uid = self._dev_user(request)
        self._spend(self._per_user, uid, "this user")
        try:
            token = yield self._issuer.issue(uid)
        except StoreUnavailable as e:
            _log.warn("token not issued: {why}", why=str(e))
            app.metrics.store_error(str(e))
            raise HttpError(503, "storage unavailable, retry later")
        except IssuerKeyError as e:
            _log.warn("token not issued: {why}", why=str(e))
            raise HttpError(503, str(e))
        base = self._ws_base_url or ws_base_url(app.settings, request)
        return 200, {"token": token, "expires_in": self._issuer.ttl, "url": base + token}

    def _spend(self, limiter: RateLimiter, key: Hashable, whose: str) -> None:
        wait = limiter.take(key, self._app.clock.seconds())
        if wait:
            raise HttpError(429, "too many token requests for %s, retry in %d s" % (whose, wait),
                            {b"Retry-After": str(wait).encode("ascii")})

    def _dev_user(self, request: Request) -> int:
        body = read_json_object(request)
        if body is None or "id" not in body:
            raise HttpError(401, 'missing credentials: send the JSON body {"id": <user id>}')
        try:
            return parse_uid(body["id"], "id")
        except ValueError as e:
            raise HttpError(401, "bad credentials: %s" % e)

    def _platform_user(self, request: Request) -> int:
        claims = self._verify_platform_token(_bearer_token(request))
        read_json_object(request)  # a body, when sent, must still be JSON
        return _user_of(claims)

    def _verify_platform_token(self, token: str) -> Dict[str, Any]:
        assert self._secret is not None   # asked only with [http] auth = hs256:<secret>
        try:
            claims = jwt.decode(token, self._secret, algorithms=[PLATFORM_ALGORITHM],
                                options={"verify_exp": False, "verify_nbf": False,
                                         "verify_iat": False, "verify_aud": False})
        except jwt.PyJWTError as e:
            raise HttpError(401, "bad credentials: %s" % e, _CHALLENGE)
        return self._check_times(claims)

    @defer.inlineCallbacks
    def _jwks_user(self, request: Request) -> Generator[defer.Deferred, Any, int]:
        token = _bearer_token(request)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise HttpError(401, "bad credentials: %s" % e, _CHALLENGE)
        alg, kid = header.get("alg"), header.get("kid")
        # none, HS256 (keyed with a public key, or not), RS512...: refused
        # before any key is looked up, so they never cause a refetch
        if alg not in ALGORITHMS:
            raise HttpError(401, "bad credentials: the token's alg must be RS256 or ES256, not %.20r" % (alg,),
                            _CHALLENGE)
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise HttpError(401, "bad credentials: the token's kid is not a key id", _CHALLENGE)
        assert self._jwks is not None   # asked only with [http] auth = jwks:<url>
        try:
            key = yield self._jwks.key_for(kid, alg)
        except UnknownKey as e:
            raise HttpError(401, "bad credentials: %s" % e, _CHALLENGE)
        except KeySetUnavailable as e:
            raise HttpError(503, str(e), {b"Retry-After": b"%d" % max(1, round(e.retry_after))})
        try:
            # the key's own algorithm only (the header's was checked above);
            # PyJWT refuses a token without aud / iss when one is asked for;
            # times are checked below, against the injected clock
            claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=self._audience,
                                issuer=self._jwks_issuer,
                                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                         "verify_aud": self._audience is not None,
                                         "verify_iss": self._jwks_issuer is not None})
        except jwt.PyJWTError as e:
            raise HttpError(401, "bad credentials: %s" % e, _CHALLENGE)
        return _user_of(self._check_times(claims))

    def _check_times(self, claims: Dict[str, Any]) -> Dict[str, Any]:
        """``claims`` when ``exp`` (required), ``nbf`` and ``iat`` allow the
        token now, and it lives at most :data:`PLATFORM_MAX_LIFETIME`."""
        now = self._app.clock.seconds()
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if exp is None:
            raise HttpError(401, "bad credentials: the platform token has no exp", _CHALLENGE)
        if not is_time(exp) or exp <= now:
            raise HttpError(401, "bad credentials: the platform token has expired", _CHALLENGE)
        if nbf is not None and (not is_time(nbf) or nbf > now):
            raise HttpError(401, "bad credentials: the platform token is not yet valid", _CHALLENGE)
        if iat is not None and not is_time(iat):
            raise HttpError(401, "bad credentials: the platform token's iat is not a time", _CHALLENGE)
        if exp - min(now, iat if iat is not None else now) > PLATFORM_MAX_LIFETIME:
            raise HttpError(401, "bad credentials: the platform token lives longer than %d h"
                            % (PLATFORM_MAX_LIFETIME // 3600), _CHALLENGE)
        return claims


def _bearer_token(request: Request) -> str:
    header = request.getHeader(b"authorization")
    if header is None:
        raise HttpError(401, "missing credentials: send Authorization: Bearer <platform JWT>", _CHALLENGE)
    scheme, _, token = header.decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HttpError(401, "bad credentials: expected Authorization: Bearer <platform JWT>", _CHALLENGE)
    return token


def _user_of(claims: Dict[str, Any]) -> int:
    try:
        return parse_uid(claims.get("id"), "id")
    except ValueError as e:
        raise HttpError(401, "bad credentials: claim %s" % e, _CHALLENGE)

"""``POST /IM/token``: who is asking (``[http] auth``), then a wstoken for them.

``dev``: the JSON body ``{"id": N}`` is trusted (config allows it only on
loopback listeners).  ``hs256:<secret>``: ``Authorization: Bearer <JWT>``
signed HS256 by the platform with the user id in claim ``id``; its ``exp`` and
``nbf``, when present, are checked against the injected clock.
"""

import ipaddress
import re

import jwt
from twisted.internet import defer
from twisted.logger import Logger

from imd import endpoints
from imd.auth import issue_token
from imd.errors import StoreUnavailable
from imd.http.resource import HttpError, JsonResource, read_json_object
from imd.protocol import parse_uid

_log = Logger()

PLATFORM_ALGORITHM = "HS256"
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")
_CHALLENGE = {b"WWW-Authenticate": b'Bearer realm="imd"'}


def _is_unspecified(host):
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def ws_base_url(settings, request):
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


class TokenResource(JsonResource):
    methods = ("POST",)

    def __init__(self, app, ws_base_url=None):
        super().__init__(app.settings.http.cors_origins)
        self._app = app
        self._ws_base_url = ws_base_url
        auth = app.settings.http.auth
        self._secret = auth[len("hs256:"):] if auth.startswith("hs256:") else None

    @defer.inlineCallbacks
    def render_POST(self, request):
        uid = self._platform_user(request) if self._secret is not None else self._dev_user(request)
        app = self._app
        try:
            private_pem = yield app.tokens.get_private_key()
        except StoreUnavailable as e:
            _log.warn("token not issued: {why}", why=str(e))
            app.metrics.store_error(str(e))
            raise HttpError(503, "storage unavailable, retry later")
        if not private_pem:
            raise HttpError(503, "server keys are not set up (imd-admin keys init)")
        ttl = app.settings.auth.token_ttl
        token = issue_token(private_pem, uid, app.clock.seconds(), ttl)
        base = self._ws_base_url or ws_base_url(app.settings, request)
        return 200, {"token": token, "expires_in": ttl, "url": base + token}

    def _dev_user(self, request):
        body = read_json_object(request)
        if body is None or "id" not in body:
            raise HttpError(401, 'missing credentials: send the JSON body {"id": <user id>}')
        try:
            return parse_uid(body["id"], "id")
        except ValueError as e:
            raise HttpError(401, "bad credentials: %s" % e)

    def _platform_user(self, request):
        header = request.getHeader(b"authorization")
        if header is None:
            raise HttpError(401, "missing credentials: send Authorization: Bearer <platform JWT>", _CHALLENGE)
        scheme, _, token = header.decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "bad credentials: expected Authorization: Bearer <platform JWT>", _CHALLENGE)
        claims = self._verify_platform_token(token)
        read_json_object(request)  # a body, when sent, must still be JSON
        try:
            return parse_uid(claims.get("id"), "id")
        except ValueError as e:
            raise HttpError(401, "bad credentials: claim %s" % e, _CHALLENGE)

    def _verify_platform_token(self, token):
        try:
            claims = jwt.decode(token, self._secret, algorithms=[PLATFORM_ALGORITHM],
                                options={"verify_exp": False, "verify_nbf": False,
                                         "verify_iat": False, "verify_aud": False})
        except jwt.PyJWTError as e:
            raise HttpError(401, "bad credentials: %s" % e, _CHALLENGE)
        now = self._app.clock.seconds()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if exp is not None and (type(exp) not in (int, float) or exp <= now):
            raise HttpError(401, "bad credentials: the platform token has expired", _CHALLENGE)
        if nbf is not None and (type(nbf) not in (int, float) or nbf > now):
            raise HttpError(401, "bad credentials: the platform token is not yet valid", _CHALLENGE)
        return claims

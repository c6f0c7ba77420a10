"""What every imd HTTP resource shares: JSON answers, the one error path,
CORS, the request body cap, and async rendering.

A resource's ``render_<METHOD>`` returns ``(status, body)`` or a Deferred of
it, or raises :class:`HttpError`; anything else that goes wrong is logged and
answered 500.  Every error body is ``{"error": "..."}``.
"""

import json
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from imd.endpoints import is_loopback_host

_log = Logger()

PREFLIGHT_MAX_AGE = 600

# What a render_<METHOD> answers: (status, body) or (status, body, headers);
# the body is a JSON value or a Raw.
JsonResult = Union[Tuple[int, Any], Tuple[int, Any, Dict[bytes, bytes]]]


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[Dict[bytes, bytes]] = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Raw:
    """A non-JSON body: ``Raw(b"...", "text/plain; charset=utf-8")``."""
    __slots__ = ("data", "content_type")

    def __init__(self, data: bytes, content_type: str) -> None:
        self.data = data
        self.content_type = content_type


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8")


def apply_cors(request: Request, origins: Sequence[str]) -> bool:
    """Allow the request's Origin when ``[http] cors_origins`` lists it (or ``*``)."""
    if not origins:
        return False
    origin = request.getHeader(b"origin")
    if origin is None:
        return False
    if "*" in origins:
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        return True
    request.setHeader(b"Vary", b"Origin")
    if origin.decode("latin-1") in origins:
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        return True
    return False


def finish_json(request: Request, result: JsonResult) -> bytes:
    """Set the status and headers of ``(status, body[, headers])`` on
    ``request``; the body bytes to write (none for HEAD)."""
    status, body, headers = result if len(result) == 3 else (result[0], result[1], {})
    request.setResponseCode(status)
    for name, value in headers.items():
        request.setHeader(name, value)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    if isinstance(body, Raw):
        request.setHeader(b"Content-Type", body.content_type.encode("ascii"))
        data = body.data
    else:
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        data = json_bytes(body)
    request.setHeader(b"Content-Length", str(len(data)).encode("ascii"))
    return b"" if request.method == b"HEAD" else data


def error_result(error: HttpError) -> Tuple[int, Dict[str, str], Dict[bytes, bytes]]:
    """``(status, body, headers)`` of an :class:`HttpError`."""
    return error.status, {"error": error.message}, error.headers


def method_not_allowed(method: Union[bytes, str], allowed: Sequence[str]) -> HttpError:
    """405 naming the methods ``allowed`` (a tuple like ``("GET", "HEAD")``)."""
    method = method.decode("ascii", "replace") if isinstance(method, bytes) else method
    return HttpError(405, "method %s not allowed here (use %s)" % (method[:16], ", ".join(allowed)),
                     {b"Allow": ", ".join(allowed).encode("ascii")})


class JsonResource(Resource):
    isLeaf = True
    methods: Tuple[str, ...] = ()   # e.g. ("GET",); HEAD follows GET, OPTIONS is the CORS preflight

    def __init__(self, cors_origins: Sequence[str] = ()) -> None:
        super().__init__()
        self.cors_origins = cors_origins

    def render(self, request: Request) -> Union[bytes, int]:
        allowed = apply_cors(request, self.cors_origins)
        assert request.postpath is not None   # the site set it, finding this resource
        if any(request.postpath):
            return self._finish(request, (404, {"error": "no such resource"}))
        method = request.method.decode("ascii", "replace").upper()
        if method == "OPTIONS":
            return self._preflight(request, allowed)
        if method == "HEAD" and "GET" in self.methods:
            method = "GET"
        if method not in self.methods:
            error = method_not_allowed(method, self.methods)
            error.headers[b"Allow"] = ", ".join(self.methods + ("OPTIONS",)).encode("ascii")
            return self._finish(request, self._error(error))
        if getattr(request, "body_too_large", False):
            # a CappedRequest (imd.http.site, which imports this module)
            max_body: int = getattr(request, "max_body")
            return self._finish(request, self._error(HttpError(413, "request body over %d bytes" % max_body)))
        d = defer.maybeDeferred(getattr(self, "render_" + method), request)
        d.addErrback(self._failed, request)
        d.addCallback(self._write, request)
        return NOT_DONE_YET

    def _preflight(self, request: Request, allowed: bool) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"Allow", ", ".join(self.methods + ("OPTIONS",)).encode("ascii"))
        if allowed:
            request.setHeader(b"Access-Control-Allow-Methods",
                              ", ".join(self.methods + ("OPTIONS",)).encode("ascii"))
            request.setHeader(b"Access-Control-Allow-Headers", b"Authorization, Content-Type")
            request.setHeader(b"Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE).encode("ascii"))
        return b""

    @staticmethod
    def _error(error: HttpError) -> JsonResult:
        return error_result(error)

    def _failed(self, failure: Failure, request: Request) -> JsonResult:
        if isinstance(failure.value, HttpError):
            return self._error(failure.value)
        _log.failure("unexpected error answering {method} {path}", failure,
                     method=request.method, path=request.path)
        return 500, {"error": "internal server error"}, {}

    def _write(self, result: JsonResult, request: Request) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        body = self._finish(request, result)
        request.write(body)
        request.finish()

    @staticmethod
    def _finish(request: Request, result: JsonResult) -> bytes:
        return finish_json(request, result)


class ErrorResource(Resource):
    """Answers every request, whatever its method or path, with one JSON error."""
    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: Request) -> bytes:
        return finish_json(request, (self.status, {"error": self.message}))


class NotFound(ErrorResource):
    def __init__(self) -> None:
        super().__init__(404, "no such resource")


class _NotJson(ValueError):
    """What the strict decoder's hooks raise: text ``json`` takes but JSON is not."""


def _refuse_constant(name: str) -> Any:
    raise _NotJson("%s is not a JSON number" % name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotJson("%s is too large for a number" % text[:20])
    return value


# Python's json takes NaN, Infinity and -Infinity (and reads 1e999 as
# infinity): none is JSON, and a strict client reading one back (in an s
# packet of an H page) fails on the whole page.
_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _encodable(obj: Any) -> bool:
    """False when a string of ``obj``, key or value, holds a lone UTF-16
    surrogate (JSON's "\\ud800" escape decodes to one): it cannot be
    encoded as UTF-8, so storing or answering it would fail later."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_json_object(request: Request) -> Optional[Dict[str, Any]]:
    """The body as a JSON object; None when empty; HttpError 400 otherwise:
    not UTF-8, not JSON, not an object, ``NaN`` or ``Infinity``, a number
    too large for a float, or a lone surrogate in a string."""
    assert request.content is not None   # the body, read in full before rendering
    request.content.seek(0)
    data = request.content.read()
    if not data.strip():
        return None
    try:
        text = data.decode("utf-8")
        obj = _STRICT.decode(text)
    except _NotJson as e:
        raise HttpError(400, "the body must be JSON: %s" % e)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HttpError(400, "the body must be a JSON object")
    if not isinstance(obj, dict):
        raise HttpError(400, "the body must be a JSON object")
    # (UTF-8 bytes never decode to a surrogate: only a \u escape makes one)
    if "\\u" in text and not _encodable(obj):
        raise HttpError(400, "the body must be JSON: a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
                             "without its pair) is not a character")
    return obj


# Set by proxies (nginx's proxy_add_x_forwarded_for, RFC 7239, X-Real-IP).
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip")


def came_through_proxy(request: Any) -> Optional[bytes]:
    """The first proxy header ``request`` carries, or None."""
    for name in PROXY_HEADERS:
        if request.requestHeaders.hasHeader(name):
            return name
    return None


def direct_from_loopback(request: Any) -> bool:
    """``request`` came from this machine's loopback, through no proxy."""
    peer = request.getClientAddress()
    return came_through_proxy(request) is None and is_loopback_host(getattr(peer, "host", None))

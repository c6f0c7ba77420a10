"""The HTTP site: bounded connections and requests, JSON errors, no version
banner, and an access log that never holds a token.

- At most ``[http] max_connections`` connections are open at once; past it a
  new connection is answered ``503`` (JSON) and closed before any request is
  read.
- Each request must arrive whole (request line, headers, body) within
  ``[http] request_timeout`` seconds of the connection being ready for it
  (opened, or the previous answer sent).  Twisted's own timeout is an *idle*
  timeout, reset by every byte, so a client sending one header line now and
  then kept a connection forever; this deadline is not reset.  A late request
  is answered ``408`` (JSON) and the connection closed.
- twisted.web reads a whole request body before rendering;
  :class:`CappedRequest` keeps at most ``max_body`` bytes of it and marks the
  request so the resource answers 413.
- No ``Server:`` header (it named the Twisted version), and a failure in a
  resource is a JSON 500, not Twisted's HTML page.
- While the process is starting (imd.startup: Redis not answering yet, or
  the key pair not set), a request under ``/IM/`` waits for the end of it,
  at most :data:`imd.startup.HOLD` seconds; past that it gets ``503``
  (JSON, ``Retry-After``).  ``/healthz``, ``/metrics`` and the page answer
  at once.
- The access log goes through twisted.logger; its path has tokens masked
  (imd.logs.redact, the one redactor), and it holds no header values (no
  Authorization, no Referer).
"""

import typing
from typing import Dict, Optional, cast

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from imd.clock import Clock
from imd.http.resource import finish_json, json_bytes
from imd.logs import REFUSAL_LOG_INTERVAL, ThrottledLine, redact
from imd.startup import StillStarting

if typing.TYPE_CHECKING:
    from imd.startup import StartupGate

_log = Logger()

MAX_BODY_BYTES = 8192
# The server API (/IM/api/) takes larger bodies: a system message to 1000 users
API_PATH = b"/IM/api/"
API_MAX_BODY_BYTES = 65536
REQUEST_TIMEOUT = 10
MAX_CONNECTIONS = 1000
# What waits while the process is starting (imd.startup), and the Retry-After
# of a request that waited in vain.
HELD_PATH = b"/IM/"
START_RETRY_AFTER = 5

_REASONS = {408: b"Request Timeout", 503: b"Service Unavailable"}


class _ClosingTransport(typing.Protocol):
    """The two calls made below twisted.web, on the connection's transport
    (twisted's ITransport is a zope interface, which mypy cannot call)."""

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...


def closing_response(status: int, message: str, extra_headers: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer with a JSON error body, for a connection that
    is closed right after it (written below twisted.web's Request)."""
    body = json_bytes({"error": message})
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nCache-Control: no-store\r\nConnection: close\r\n%s\r\n"
            % (status, _REASONS[status], len(body), extra_headers)) + body


class CappedRequest(Request):
    max_body = MAX_BODY_BYTES
    body_too_large = False
    _body_bytes = 0

    def gotLength(self, length: Optional[int]) -> None:
        # The request line is parsed (the channel holds its path) before the
        # body arrives: the cap is chosen by path here.
        path = getattr(self.channel, "_path", None) or b""
        if path.startswith(API_PATH):
            self.max_body = API_MAX_BODY_BYTES
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.max_body:
            self.body_too_large = True
            assert self.content is not None   # gotLength made it
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        # While the process is starting (imd.startup), a request under /IM/
        # (tokens, the server API: they need Redis) waits for it, bounded.
        gate = getattr(getattr(self.channel, "site", None), "startup", None)
        if gate is not None and gate.starting and self.path.startswith(HELD_PATH):
            d = gate.wait()
            d.addCallbacks(self._started, self._still_starting)
            d.addErrback(self.processingFailed)
            return
        super().process()

    def _started(self, _: object) -> None:
        if not self._disconnected:
            super().process()

    def _still_starting(self, failure: Failure) -> None:
        failure.trap(StillStarting)
        if self._disconnected:
            return
        _log.warn("http: {method} {path} answered 503: {why}", method=self.method.decode("latin-1")[:16],
                  path=redact(self.uri.decode("latin-1"))[:300], why=failure.getErrorMessage())
        self.write(finish_json(self, (503, {"error": "imd is starting, retry later"},
                                      {b"Retry-After": b"%d" % START_RETRY_AFTER})))
        self.finish()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # twisted.web.server.Request.process sets it to TwistedWeb/<version>.
            self.responseHeaders.removeHeader(b"server")
        super().write(data)

    def processingFailed(self, reason: Failure) -> Failure:
        _log.failure("unexpected error answering {method} {path}", reason,
                     method=self.method, path=redact(self.uri.decode("latin-1"))[:300])
        if self.startedWriting or self.finished:
            self.loseConnection()
            return reason
        self.responseHeaders = type(self.responseHeaders)()
        self.write(finish_json(self, (500, {"error": "internal server error"})))
        self.finish()
        return reason


class ImdChannel(HTTPChannel):
    """HTTP/1.1 with a deadline on receiving each request in full."""

    site: "ImdSite"   # set by Site.buildProtocol
    request_timeout: float = REQUEST_TIMEOUT
    _deadline: Optional[DelayedCall] = None
    _request_started = False
    _counted = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is not None:
            self._request_started = True
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        # Armed before the base class replays pipelined bytes, which may hold
        # the whole next request (and disarm it again).
        if self.persistent:
            self._arm()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self._counted:
            self._counted = False
            self.site.connection_closed()
        super().connectionLost(reason)

    def _arm(self) -> None:
        self._disarm()
        self._request_started = False
        self._deadline = self.callLater(self.request_timeout, self._request_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _request_too_slow(self) -> None:
        self._deadline = None
        if self._request_started:
            cast(_ClosingTransport, self.transport).write(closing_response(
                408, "the request did not arrive within %g s" % self.request_timeout))
        # As HTTPChannel.timeoutConnection: close once the answer is out,
        # abort if the peer does not read it.
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()


class _Refused(Protocol):
    """Past ``max_connections``: one 503 and close, before reading anything."""

    def connectionMade(self) -> None:
        transport = cast(_ClosingTransport, self.transport)
        transport.write(closing_response(503, "too many connections, retry later", b"Retry-After: 5\r\n"))
        transport.loseConnection()


class ImdSite(Site):
    requestFactory = CappedRequest
    startup: Optional["StartupGate"] = None   # holds /IM/ requests while starting
    # HTTP/1.1 only (the TLS listeners offer no h2 either); twisted types
    # this as its wrapper that picks HTTP/1.1 or h2, not a bare channel
    protocol = ImdChannel   # type: ignore[assignment]

    def __init__(self, resource: Resource, clock: Clock, request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, startup: Optional["StartupGate"] = None) -> None:
        # The idle timeout is off: ImdChannel's deadline covers idle
        # connections too, and is not reset by each byte.
        super().__init__(resource, timeout=None, reactor=clock)
        self._clock = clock
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.open_connections = 0
        self.displayTracebacks = False
        self.startup = startup
        # a flood of refusals is a line every REFUSAL_LOG_INTERVAL seconds
        self.refusals = ThrottledLine(clock, self._log_refusals, REFUSAL_LOG_INTERVAL)

    # an ImdChannel or a _Refused, not the wrapper twisted types (see protocol)
    def buildProtocol(self, addr: Optional[IAddress]) -> Protocol:  # type: ignore[override]
        if self.open_connections >= self.max_connections:
            self.refusals.note()
            return _Refused()
        channel = super().buildProtocol(addr)
        channel.request_timeout = self.request_timeout
        channel._counted = True
        self.open_connections += 1
        return channel

    def connection_closed(self) -> None:
        self.open_connections -= 1

    def _log_refusals(self, counts: Dict[str, int]) -> None:
        _log.warn("http: {count} connection(s) refused, {open} open ([http] max_connections)",
                  count=sum(counts.values()), open=self.open_connections)

    def stopFactory(self) -> None:
        self.refusals.stop()
        super().stopFactory()

    def log(self, request: http.Request) -> None:
        peer = request.getClientAddress()
        _log.info("http {peer} {method} {path} {code} {length}",
                  peer=getattr(peer, "host", "-"),
                  method=request.method.decode("latin-1")[:16],
                  path=redact(request.uri.decode("latin-1"))[:300],
                  code=request.code,
                  length=request.sentLength or 0)

"""GET a JSON Web Key Set: Twisted's ``Agent``, never a blocking call.

Each fetch is one GET (no redirects followed), bounded by
:data:`FETCH_TIMEOUT` seconds from connecting to the last byte of the body
and by :data:`MAX_BODY_BYTES` of body: past either it is cut and fails.  An
https URL is checked against the system's CAs (plus ``[http] jwks_ca``) and
the host name (service_identity): imd.tls.client_tls_policy.
"""

from typing import Any, List, Optional, cast

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

from imd import __version__
from imd.tls import client_tls_policy

FETCH_TIMEOUT = 10.0
# A key set is a few kilobytes (Keycloak's: ~3 KB for its two keys)
MAX_BODY_BYTES = 256 * 1024

_HEADERS = {b"Accept": [b"application/jwk-set+json, application/json"],
            b"User-Agent": [b"imd/" + __version__.encode("ascii")]}


class FetchError(Exception):
    """The key set could not be fetched; the message says why (for the log)."""


class _BoundedBody(Protocol):
    """Collects a response body of at most ``limit`` bytes into ``done``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: List[bytes] = []
        self._size = 0
        self.done: defer.Deferred = defer.Deferred(lambda _: self._stop())

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._stop()
            self.done.errback(FetchError("the answer is over %d bytes" % self._limit))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):   # (the latter: no Content-Length, closed at the end)
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(FetchError("the answer was cut short: %s" % reason.getErrorMessage()))

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


class JwksFetcher:
    """``fetch()`` fires with the body of a 200 answer from ``url``, or fails
    with :class:`FetchError` (or CancelledError when its caller cancels)."""

    def __init__(self, reactor: Any, clock: Any, url: str, ca_path: str = "",
                 timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.url = url
        self._url = url.encode("ascii")
        self._clock = clock
        self.timeout = timeout
        self._max_bytes = max_bytes
        pool = HTTPConnectionPool(reactor, persistent=False)   # one GET now and then
        self._agent = Agent(reactor, contextFactory=cast(IPolicyForHTTPS, client_tls_policy(ca_path)),
                            connectTimeout=timeout, pool=pool)

    def fetch(self) -> defer.Deferred:
        d = self._agent.request(b"GET", self._url, Headers(_HEADERS))
        d.addCallback(self._body)
        # Cancelling (the timeout does) aborts the connection at whatever
        # stage it is; each failure becomes one FetchError line.
        d.addTimeout(self.timeout, self._clock)
        return d.addErrback(_explain, self.timeout)

    def _body(self, response: Any) -> defer.Deferred:
        # (an IResponse: a zope interface, whose methods mypy cannot call)
        if response.code != 200:
            response.deliverBody(_Discard())
            raise FetchError("the server answered %d, not 200" % response.code)
        length: Optional[int] = response.length if isinstance(response.length, int) else None
        if length is not None and length > self._max_bytes:
            response.deliverBody(_Discard())
            raise FetchError("the answer is over %d bytes (Content-Length %d)" % (self._max_bytes, length))
        body = _BoundedBody(self._max_bytes)
        response.deliverBody(body)
        return body.done


class _Discard(Protocol):
    """Reads nothing: the connection is closed (the pool keeps none)."""

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


def _explain(failure: Failure, timeout: float) -> Failure:
    if failure.check(FetchError):
        return failure
    # cancelled (by the timeout, or a stop) while the request was out, the
    # Agent fails with a ResponseNeverReceived holding the CancelledError
    inner = getattr(failure.value, "reasons", None) or [failure]
    if any(reason.check(defer.TimeoutError, defer.CancelledError) for reason in inner):
        raise FetchError("no whole answer within %g s" % timeout)
    raise FetchError(_describe(failure))


def _describe(failure: Failure) -> str:
    """One line about a failed request; twisted.web's ResponseNeverReceived
    and friends hold the reason in a list of Failures."""
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        inner = reasons[0]
        return "%s: %s" % (inner.type.__name__, inner.getErrorMessage() or "")
    assert failure.type is not None
    return "%s: %s" % (failure.type.__name__, failure.getErrorMessage() or "")

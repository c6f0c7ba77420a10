"""The HTTP client of the platform's push gateway: one POST per attempt,
signed with the attempt's time (imd.push.payload), on Twisted's ``Agent``
with a persistent connection pool, each bounded by ``[push] timeout``
(connect, request, answer and its body).  Nothing blocks the reactor."""

from typing import Any, cast

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, PartialDownloadError, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from imd import __version__
from imd.push.payload import signature


@implementer(IBodyProducer)
class _Body:
    """A body known in full: written at once, with its length."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    """The gateway's endpoint, built once: Agent's own factory builds one
    per request, and its host name check (IDNA) cost ~200 us a push."""

    def __init__(self, reactor: Any, url: bytes, timeout: float) -> None:
        uri = URI.fromBytes(url)
        endpoint: Any = HostnameEndpoint(reactor, uri.host.decode("ascii"), uri.port, timeout=timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(BrowserLikePolicyForHTTPS().creatorForNetloc(uri.host, uri.port), endpoint)
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> Any:
        return self._endpoint


class Gateway:
    """POSTs to ``url``; ``post`` fires with the HTTP status, or fails
    (connection refused or lost, timeout) when there is none."""

    def __init__(self, reactor: Any, clock: Any, url: str, secret: str, timeout: float, connections: int) -> None:
        self._clock = clock
        self._url = url.encode("ascii")
        self._secret = secret
        self.timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = connections
        # a POST is not idempotent: the drainer decides what is tried again
        self._pool.retryAutomatically = False
        self._agent = Agent.usingEndpointFactory(reactor, _OneEndpoint(reactor, self._url, timeout), self._pool)

    def post(self, data: bytes, delivery: str) -> defer.Deferred:
        # each attempt is signed with its own time: a gateway refuses old ones
        timestamp = int(self._clock.seconds())
        headers = Headers({
            b"Content-Type": [b"application/json"],
            b"User-Agent": [b"imd/" + __version__.encode("ascii")],
            b"X-Imd-Delivery": [delivery.encode("ascii")],
            b"X-Imd-Timestamp": [b"%d" % timestamp],
            b"X-Imd-Signature": [signature(self._secret, timestamp, delivery, data).encode("ascii")],
        })
        d = self._agent.request(b"POST", self._url, headers, cast(IBodyProducer, _Body(data)))
        # the answer's body is read (a small one, from the platform's own
        # service) so that the connection can serve the next push
        d.addCallback(_status)
        # cancelling on timeout aborts the connection, whatever stage it is in
        return d.addTimeout(self.timeout, self._clock)

    def close(self) -> defer.Deferred:
        return self._pool.closeCachedConnections()


def _status(response: Any) -> defer.Deferred:
    """The response's status once its body is read (cut short or not: the
    status is what counts)."""
    def cut_short(failure: Any) -> int:
        failure.trap(PartialDownloadError)
        return response.code
    return readBody(response).addCallbacks(lambda _: response.code, cut_short)

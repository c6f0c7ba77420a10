"""Abuse limits of the WebSocket listener that sit below the protocol:
connections per node and per remote address, and a cap on what may wait in
memory for a client that does not read (a slow consumer).

Both act on TCP connections, before any WebSocket or token work: a refused
connection costs one short HTTP answer.
"""

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

_log = Logger()

_REFUSALS = {
    503: b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n",
    429: b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\n",
}


class ConnectionLimits:
    """Counts one listener's connections, open or still in their opening
    handshake, in total and per remote address (0 = no limit)."""

    def __init__(self, max_total, max_per_address):
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._by_address = {}

    def admit(self, address):
        """None when a connection from ``address`` may open (and is counted),
        else the HTTP status to refuse it with."""
        if self.max_total and self.total >= self.max_total:
            return 503
        held = self._by_address.get(address, 0)
        if self.max_per_address and held >= self.max_per_address:
            return 429
        self.total += 1
        self._by_address[address] = held + 1
        return None

    def release(self, address):
        self.total -= 1
        held = self._by_address.get(address, 0) - 1
        if held > 0:
            self._by_address[address] = held
        else:
            self._by_address.pop(address, None)

    def held_by(self, address):
        return self._by_address.get(address, 0)


class Refusal(Protocol):
    """Answers a connection over a limit with an HTTP status and closes it."""

    def __init__(self, status):
        self.status = status

    def connectionMade(self):
        self.transport.write(_REFUSALS[self.status] + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        self.transport.loseConnection()

    def dataReceived(self, data):
        pass  # the request is not read: the answer does not depend on it


def peer_address(transport_address):
    """The host part of a peer address (what per-address limits count)."""
    return getattr(transport_address, "host", None) or str(transport_address)


@implementer(IPushProducer)
class SendBufferGuard:
    """Registered as the connection's streaming producer, so the transport
    says when more than its ``bufferSize`` (64 KiB) waits to be written and
    when all of it has gone.  Bytes sent in between are counted; past
    ``limit`` the client is not reading and ``on_overflow`` is called (once).
    """

    def __init__(self, limit, on_overflow):
        self.limit = limit
        self.on_overflow = on_overflow
        self.paused = False
        self.backlog = 0
        self.overflowed = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.backlog = 0

    def stopProducing(self):
        self.paused = False

    def sent(self, nbytes):
        if not self.paused or self.overflowed:
            return
        self.backlog += nbytes
        if self.limit and self.backlog > self.limit:
            self.overflowed = True
            self.on_overflow()

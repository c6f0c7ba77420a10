"""Abuse limits of the WebSocket listener: connections per node and per
remote address (and those still in their opening handshake), and a cap on
what may wait in memory for a client that does not read (a slow consumer).
Each connection's packet rates are its session's (imd.transport.session,
with imd.tokenbucket).

The connection limits act on TCP connections, before any WebSocket or token
work: a refused connection costs one short HTTP answer.
"""

import typing
from typing import Any, Callable, Dict, Optional, cast

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

    def __init__(self, max_total: int, max_per_address: int, max_handshakes_per_address: int = 0) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.max_handshakes_per_address = max_handshakes_per_address
        self.total = 0
        self.refused_by = ""   # the [websocket] key of the last refusal's limit
        self._by_address: Dict[Any, int] = {}
        self._handshaking: Dict[Any, int] = {}

    def admit(self, address: Any) -> Optional[int]:
        """None when a connection from ``address`` may open (and is counted,
        as handshaking until :meth:`handshake_done`), else the HTTP status to
        refuse it with (and :attr:`refused_by` names the limit)."""
        if self.max_total and self.total >= self.max_total:
            self.refused_by = "max_connections"
            return 503
        held = self._by_address.get(address, 0)
        if self.max_per_address and held >= self.max_per_address:
            self.refused_by = "max_per_address"
            return 429
        shaking = self._handshaking.get(address, 0)
        if self.max_handshakes_per_address and shaking >= self.max_handshakes_per_address:
            self.refused_by = "max_handshakes_per_address"
            return 429
        self.total += 1
        self._by_address[address] = held + 1
        self._handshaking[address] = shaking + 1
        return None

    def handshake_done(self, address: Any) -> None:
        """A connection from ``address`` left its opening handshake (opened or closed)."""
        shaking = self._handshaking.get(address, 0) - 1
        if shaking > 0:
            self._handshaking[address] = shaking
        else:
            self._handshaking.pop(address, None)

    def handshaking(self, address: Any) -> int:
        return self._handshaking.get(address, 0)

    def release(self, address: Any) -> None:
        self.total -= 1
        held = self._by_address.get(address, 0) - 1
        if held > 0:
            self._by_address[address] = held
        else:
            self._by_address.pop(address, None)

    def held_by(self, address: Any) -> int:
        return self._by_address.get(address, 0)


class _ClosingTransport(typing.Protocol):
    """What a refusal calls on its transport (twisted's ITransport is a zope
    interface, which mypy cannot call)."""

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...


class Refusal(Protocol):
    """Answers a connection over a limit with an HTTP status and closes it."""

    def __init__(self, status: int) -> None:
        self.status = status

    def connectionMade(self) -> None:
        transport = cast(_ClosingTransport, self.transport)
        transport.write(_REFUSALS[self.status] + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass  # the request is not read: the answer does not depend on it


def peer_address(transport_address: Any) -> Any:
    """The host part of a peer address (what per-address limits count)."""
    return getattr(transport_address, "host", None) or str(transport_address)


@implementer(IPushProducer)
class SendBufferGuard:
    """Registered as the connection's streaming producer, so the transport
    says when more than its ``bufferSize`` (64 KiB) waits to be written and
    when all of it has gone.  Bytes sent in between are counted; past
    ``limit`` the client is not reading and ``on_overflow`` is called (once).
    """
    __slots__ = ("limit", "on_overflow", "paused", "backlog", "overflowed")

    def __init__(self, limit: int, on_overflow: Callable[[], None]) -> None:
        self.limit = limit
        self.on_overflow = on_overflow
        self.paused = False
        self.backlog = 0
        self.overflowed = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        self.paused = False

    def sent(self, nbytes: int) -> None:
        if not self.paused or self.overflowed:
            return
        self.backlog += nbytes
        if self.limit and self.backlog > self.limit:
            self.overflowed = True
            self.on_overflow()

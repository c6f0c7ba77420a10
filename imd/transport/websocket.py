"""The WebSocket listener on Autobahn: the one module that bends Autobahn's
protocol for imd (autobahn_tuning.py, applied per class here, bends it for
speed).

One TCP connection = one :class:`ImdServerProtocol`, a thin adapter: what a
connection does is decided by imd.transport.session, which knows no
WebSocket library -- a :class:`~imd.transport.session.Login` during the
opening handshake, then a :class:`~imd.transport.session.Session` once
logged in (what the node holds).  This adapter hands them the client's
messages and control frames and is their
:class:`~imd.transport.session.Wire`: it writes their text frames and close
frames and ends the TCP connection.

Every override of Autobahn's own behaviour is here:

- ``onConnect``: the login during the opening handshake (the Origin check,
  then the token to the Login; the handshake waits for its Deferred, so by
  ``onOpen`` it is known whether to send ``L`` or ``C`` + 4001);
- ``processHandshake``: the request line and headers capped at
  :data:`MAX_HANDSHAKE_BYTES` (431); ``sendHttpErrorResponse``: every
  refusal before the WebSocket opens is a short JSON answer;
- ``onCloseFrame`` and ``dropConnection``: a close frame with a code it may
  not use gets its answer, not a dropped connection;
- ``sendData``: every byte out counts toward ``[websocket] max_send_buffer``;
- ``_closeConnection`` and ``_dataReceived``: after 4008 the TCP
  connection is half-closed, and what still comes is read and thrown away;
- ``onPing``, ``onPong``: control frames take from the session's rate;
- ``connectionLost``: Autobahn's closing handshake timer cancelled.
"""

import json
import typing
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Type, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from imd import protocol
from imd.auth import token_from_request
from imd.logs import ThrottledLine
from imd.transport.autobahn_tuning import tuned
from imd.transport.limits import ConnectionLimits, Refusal, SendBufferGuard, peer_address
from imd.transport.session import Clock, Login, Session, SessionContext

if TYPE_CHECKING:
    from imd.auth import TokenVerifier
    from imd.config import Settings
    from imd.metrics import Metrics
    from imd.node import LocalNode
    from imd.transport.flush import TurnFlusher

_log = Logger()

# The opening handshake's request line and headers may not be longer than
# this (Autobahn buffers whatever comes until the blank line).
MAX_HANDSHAKE_BYTES = 8192
# What a connection closed with 4008 may still send, read and thrown away,
# while its replies, C and close frame reach it (_closeConnection).
LINGER_BYTES = 65536
# Autobahn's closing handshake timeout; a close waits as long for the reply line.
CLOSE_HANDSHAKE_TIMEOUT = 5


class _Transport(typing.Protocol):
    """What is called on the TCP transport (twisted's ITransport is a zope
    interface, which mypy cannot call)."""

    def write(self, data: bytes) -> None: ...

    def abortConnection(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def loseWriteConnection(self) -> None: ...


class Listener:
    """What the connections of one listener share (built by the App)."""

    def __init__(self, settings: "Settings", node: "LocalNode", verifier: "TokenVerifier",
                 handlers: Dict[str, Callable[..., Any]], metrics: "Metrics", clock: Clock,
                 flusher: Optional["TurnFlusher"] = None, allowed_origins: Sequence[str] = ()) -> None:
        self.settings = settings            # the whole Settings
        self.node = node                    # imd.node.LocalNode
        self.metrics = metrics
        self.clock = clock
        self.flusher = flusher              # imd.transport.flush.TurnFlusher or None
        self.allowed_origins = tuple(allowed_origins)
        self.sessions = SessionContext(settings.websocket, node, verifier, handlers, metrics, clock,
                                       CLOSE_HANDSHAKE_TIMEOUT)


class ImdServerProtocol(WebSocketServerProtocol):
    session: Optional[Session] = None   # logged in and open
    _login: Optional[Login] = None      # in its opening handshake
    _gone = False                       # the TCP connection is lost
    _drop_after_close = False           # the flooder's: no close handshake, TCP half-closed at once
    _linger_left: Optional[int] = None  # bytes it may still send once closed (LINGER_BYTES)
    _close_frame_while_open = False
    _flush_deadline: Any = None         # the abort after a close frame, at the latest
    _handshaking = False
    limit_address: Any = None           # counted in the factory's ConnectionLimits
    _send_guard: Optional[SendBufferGuard] = None
    listener: Listener
    closeHandshakeTimeout: float        # copied from the factory's options by Autobahn
    maxMessagePayloadSize: int          # the same ([websocket] max_message_bytes)

    # --- TCP connection: limits ------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        limit = self.listener.settings.websocket.max_send_buffer
        if limit:
            self._send_guard = SendBufferGuard(limit, self._not_reading)
            self.registerProducer(self._send_guard, True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = True
        self._login_lost()
        self._release_handshake()
        if self.limit_address is not None:
            self.factory.limits.release(self.limit_address)
            self.limit_address = None
        super().connectionLost(reason)
        # Autobahn leaves the closing handshake's timer running once the TCP
        # connection is gone; it would hold this connection for 5 s more.
        if self.closeHandshakeTimeoutCall is not None:
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None
        if self._flush_deadline is not None and self._flush_deadline.active():
            self._flush_deadline.cancel()
        self._flush_deadline = None

    def _release_handshake(self) -> None:
        if self._handshaking:
            self._handshaking = False
            self.factory.limits.handshake_done(self.limit_address)

    def _login_lost(self) -> None:
        login, self._login = self._login, None
        if login is not None:
            login.lost()

    # A close frame with a code or reason it may not use: Autobahn answers it
    # with 1002 (or 1007), then takes the same frame for the reply to that
    # answer and aborts the TCP connection -- throwing the unsent answer
    # away, so the client saw 1006.  Close gracefully instead, so the answer
    # goes out, and abort after the closing handshake timeout at the latest.
    def onCloseFrame(self, code: Optional[int], reasonRaw: Optional[bytes]) -> Any:
        self._close_frame_while_open = self.state == WebSocketServerProtocol.STATE_OPEN
        try:
            # Autobahn annotates both as present; a close frame without a code has neither
            return super().onCloseFrame(code, reasonRaw)   # type: ignore[arg-type]
        finally:
            self._close_frame_while_open = False

    def dropConnection(self, abort: bool = False) -> None:
        if abort and self._close_frame_while_open and self.state == WebSocketServerProtocol.STATE_CLOSING:
            abort = False
            self._flush_deadline = self.listener.clock.callLater(self.closeHandshakeTimeout, self.abort)
        super().dropConnection(abort)

    # The flooder's TCP connection, closed once its close frame is written
    # (send_close after stop_reading).  A client may well still be sending
    # then: the rest of a burst written in pieces, its close reply.  A
    # socket closed with unread input answers with a reset, and on a reset
    # a client's library (or a TCP stack on the way) may drop what it had
    # not read yet -- its last replies, the C, the close frame (against
    # twistd, 10 of 1,850 bursts written packet by packet were reset, two
    # before their client had read anything: its next write failed with
    # EPIPE).  So the server only half-closes (FIN after the close frame)
    # and reads and throws away what still comes, up to LINGER_BYTES and the
    # closing handshake timeout (_flush_deadline), until the client closes;
    # a flooder past that is aborted.  (Over TLS the transport is a
    # wrapper, which has no half-close of its own -- its attribute lookups
    # fall through to the TCP connection beneath, which must not be
    # half-closed under unsent TLS records: closed as before.)
    def _closeConnection(self, abort: bool = False) -> None:
        if abort or not self._drop_after_close or not IHalfCloseableDescriptor.providedBy(self.transport):
            return super()._closeConnection(abort)
        self._linger_left = LINGER_BYTES
        transport = cast(_Transport, self.transport)
        transport.loseWriteConnection()
        transport.resumeProducing()
        return None

    def _dataReceived(self, data: bytes) -> None:
        if self._linger_left is None:
            return super()._dataReceived(data)
        if self._linger_left >= 0:
            self._linger_left -= len(data)
            if self._linger_left < 0 and not self._gone:
                cast(_Transport, self.transport).abortConnection()
        return None

    def _not_reading(self) -> None:
        # A slow consumer: more than max_send_buffer waits for it in memory.
        session = self.session
        if session is not None:
            session.slow_consumer()
        else:
            # (not logged in: a few short answers are all it is ever sent)
            self.listener.metrics.slow_consumer_dropped()
        self.wasNotCleanReason = "slow consumer: send buffer over [websocket] max_send_buffer"
        self.dropConnection(abort=True)

    # --- bytes out: every one counts toward max_send_buffer ---------------------

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        # Autobahn's own writes (pongs, close frames, handshake answers) too
        guard = self._send_guard
        if guard is not None:
            guard.sent(len(data))
        super().sendData(data, sync, chopsize)

    def write_text(self, payload: bytes) -> None:
        """One text message (the tuned protocol writes the frame itself).

        ``maxMessagePayloadSize`` is ``[websocket] max_message_bytes``, the
        limit of what clients send; Autobahn's ``sendMessage`` applies it to
        what is sent too, and raised for every server packet over it (an
        ``H`` page, a large server API message).  Those go as a prepared
        message: the same frame, by Autobahn's public API, without that
        check."""
        limit = self.maxMessagePayloadSize
        if 0 < limit < len(payload):
            self.sendPreparedMessage(self.factory.prepareMessage(payload))
        else:
            self.sendMessage(payload)

    def write_frame(self, frame: bytes) -> None:
        """A whole frame straight on the transport (nothing queued before it)."""
        guard = self._send_guard
        if guard is not None:
            guard.sent(len(frame))
        cast(_Transport, self.transport).write(frame)

    # --- the opening handshake ---------------------------------------------------

    def processHandshake(self) -> None:
        end = self.data.find(b"\r\n\r\n", 0, MAX_HANDSHAKE_BYTES + 4)
        if end < 0 and len(self.data) > MAX_HANDSHAKE_BYTES:
            self.data = b""
            return self.failHandshake("request line and headers over %d bytes" % MAX_HANDSHAKE_BYTES, 431)
        return super().processHandshake()

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """Every refusal before the WebSocket opens is a short JSON answer."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        body = json.dumps({"error": reason[:200]}).encode("utf-8")
        head = ["HTTP/1.1 %d %s" % (code, phrase), "Content-Type: application/json; charset=utf-8",
                "Content-Length: %d" % len(body), "Connection: close"]
        if code == 426:
            head.append("Upgrade: websocket")
        for name, value in responseHeaders or ():
            head.append("%s: %s" % (name, value))
        self.sendData(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    # Autobahn on Twisted waits for a Deferred here (its annotation lists only
    # the immediate answers): the login is checked during the handshake.
    def onConnect(self, request: Any) -> Deferred:   # type: ignore[override]
        listener = self.listener
        origin = request.headers.get("origin")
        if origin is not None and listener.allowed_origins and not _origin_allowed(origin, listener.allowed_origins):
            _log.info("refused a handshake from {peer}: origin {origin!r} not in [http] cors_origins",
                      peer=request.peer, origin=origin[:100])
            raise ConnectionDeny(403, "origin not allowed")
        self._login = login = Login(listener.sessions, request.peer)
        return login.check(token_from_request(request.path, request.params))

    def onOpen(self) -> None:
        self._release_handshake()
        if self._gone:
            return
        login, self._login = self._login, None
        if login is not None:
            self.session = login.open(self)

    # --- frames in -----------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is not None:
            session.frame_received(payload, isBinary)

    def onPing(self, payload: bytes) -> None:
        session = self.session
        if session is None or session.control_frame():
            super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        session = self.session
        if session is None or session.control_frame():
            super().onPong(payload)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self._gone = True
        self._release_handshake()
        self._login_lost()
        session = self.session
        if session is not None:
            # The code of whoever closed first (Autobahn reports the peer's echo).
            session.lost(self.localCloseCode if self.closedByMe and self.localCloseCode else code)

    # --- the session's Wire ------------------------------------------------------------

    def is_websocket_open(self) -> bool:
        return self.state == WebSocketServerProtocol.STATE_OPEN

    def is_websocket_closed(self) -> bool:
        return self._gone or self.state == WebSocketServerProtocol.STATE_CLOSED

    def send_text(self, payload: bytes) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.write_text(payload)
            flusher = self.listener.flusher
            if flusher is not None:
                flusher.written(self.transport)

    def send_close(self, code: int, reason: str) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            if code == protocol.CLOSE_GOING_AWAY:
                # sendClose only lets applications use 1000 and 3000-4999, but
                # 1001 "going away" is the standard code for a server stopping.
                self.sendCloseFrame(code=code, reasonUtf8=reason[:100].encode("utf-8"), isReply=False)
            else:
                self.sendClose(code, reason[:100])
        if self._drop_after_close and self.state != WebSocketServerProtocol.STATE_CLOSED:
            # the flooder: the TCP connection ends once the close frame is
            # written, or after the closing handshake timeout at the latest
            self._flush_deadline = self.listener.clock.callLater(self.closeHandshakeTimeout, self.abort)
            self.dropConnection(abort=False)

    def stop_reading(self, why: str) -> None:
        self.wasNotCleanReason = why
        self._drop_after_close = True
        cast(_Transport, self.transport).pauseProducing()

    def drop(self, why: str) -> None:
        # (past Autobahn's dropConnection, which warns of every drop)
        self.wasNotCleanReason = why
        cast(_Transport, self.transport).abortConnection()

    def abort(self) -> None:
        if self.state != WebSocketServerProtocol.STATE_CLOSED:
            self.wasNotCleanReason = self.wasNotCleanReason or "aborted by the server's stop"
            self.dropConnection(abort=True)
        elif not self._gone and self.transport is not None:
            # closed, but the TCP connection still flushes to a client that does not read
            self.transport.abortConnection()


def _origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    return "*" in allowed or origin.rstrip("/") in allowed


class ImdServerFactory(WebSocketServerFactory):
    protocol = ImdServerProtocol

    def __init__(self, listener: Listener, url: Optional[str] = None) -> None:
        super().__init__(url, server=None)
        self.listener = listener
        ws = listener.settings.websocket
        self.limits = ConnectionLimits(ws.max_connections, ws.max_per_address, ws.max_handshakes_per_address)
        # counted on /metrics one by one; a flood of them is a log line every 10 s
        self.refusals = ThrottledLine(listener.clock, self._log_refusals)
        self._last_refused: Any = None
        self.setProtocolOptions(
            maxMessagePayloadSize=ws.max_message_bytes,
            maxFramePayloadSize=ws.max_message_bytes,
            openHandshakeTimeout=ws.open_handshake_timeout,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            autoPingInterval=ws.ping_interval,
            autoPingTimeout=ws.ping_interval or None,
            # only the pong to imd's own ping proves the client is alive
            autoPingRestartOnAnyTraffic=False,
            # a protocol violation (e.g. a frame over max_message_bytes) gets
            # a close frame with its code, not a dropped TCP connection
            failByDrop=False,
            # no HTML status page, no version banner
            webStatus=False,
            # imd checks Origin itself (onConnect), against [http] cors_origins
            allowedOrigins=["*"],
            allowNullOrigin=True,
        )
        # (type() makes a subclass, which mypy sees only as a type)
        self.protocol = cast(Type[ImdServerProtocol],
                             type(ImdServerProtocol.__name__, (ImdServerProtocol,), {"listener": listener}))
        self.protocol = tuned(self, self.protocol)

    def _log_refusals(self, counts: Dict[str, int]) -> None:
        limits = ", ".join("[websocket] %s: %d" % kv for kv in sorted(counts.items()))
        _log.warn("refused {count} connection(s) ({limits}), the last from {peer}; {open} open node={node}",
                  count=sum(counts.values()), limits=limits, peer=self._last_refused, open=self.limits.total,
                  node=self.listener.node.node_id)

    def stopFactory(self) -> None:
        self.refusals.stop()
        super().stopFactory()

    def buildProtocol(self, addr: Any) -> Any:
        address = peer_address(addr)
        status = self.limits.admit(address)
        if status is not None:
            self.listener.metrics.connection_refused(status)
            self._last_refused = address
            self.refusals.note(self.limits.refused_by)
            return Refusal(status)
        protocol = cast(ImdServerProtocol, super().buildProtocol(addr))   # one of self.protocol
        protocol.limit_address = address
        protocol._handshaking = True
        return protocol

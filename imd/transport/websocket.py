"""The WebSocket listener: frames in, packets out, and what guards a connection.

One connection = one :class:`ImdServerProtocol`.  It turns frames into
packets (imd.protocol), hands each to the handler of its type, and sends
the replies back in the order the packets came; it registers the
connection with the node (imd.node), which decides who gets what.  What
it decides itself is what belongs to one connection: the login during the
opening handshake, the per-connection rate limit, the error count, the
idle timer, the cap on unread output, and how the connection closes.

Login happens during the opening handshake (``onConnect`` returns the
verification Deferred), so by ``onOpen`` we know whether to send ``L`` or
``C`` + 4001.

Replies leave in the order their packets arrived even though handlers answer
asynchronously: each packet takes a place in ``_pending`` and the head of the
line is sent as soon as it is ready.  A close (``C`` and the close frame)
waits for that line to be answered, whatever decided it (close_with).
"""

import json
import typing
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple, Type, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from imd import protocol
from imd.auth import token_from_request
from imd.errors import ImdError, LoginRefused, StoreUnavailable
from imd.handlers import Reply
from imd.logs import ThrottledLine
from imd.transport.autobahn_tuning import tuned
from imd.tokenbucket import TokenBucket
from imd.transport.limits import ConnectionLimits, Refusal, SendBufferGuard, peer_address

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
# A T answered with one of these: the order is not the sender's to take.
REFUSED_TAKE_CODES = frozenset(("forbidden", "not_found"))
# What a connection closed with 4008 may still send, read and thrown away,
# while its replies, C and close frame reach it (_closeConnection).
LINGER_BYTES = 65536


class Clock(typing.Protocol):
    """What the connections need of a clock (the reactor, or a test's Clock)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kw: object) -> DelayedCall: ...


class _Transport(typing.Protocol):
    """What is called on the TCP transport (twisted's ITransport is a zope
    interface, which mypy cannot call)."""

    def write(self, data: bytes) -> None: ...

    def abortConnection(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def loseWriteConnection(self) -> None: ...


class _Failed:
    """An ``E`` waiting for its turn in the reply line."""
    __slots__ = ("packet_id", "error")

    def __init__(self, packet_id: Any, error: ImdError) -> None:
        self.packet_id = packet_id
        self.error = error


class _Slot:
    __slots__ = ("outcome", "timing")

    def __init__(self, timing: Any = None) -> None:
        self.outcome: Any = None
        self.timing = timing  # (packet type, time received, packet id) of a handled packet


def _as_failed(failure: Failure, packet_id: Any) -> _Failed:
    if isinstance(failure.value, ImdError):
        return _Failed(packet_id, failure.value)
    if failure.check(StoreUnavailable):
        _log.warn("store unavailable: {why}", why=failure.getErrorMessage())
        return _Failed(packet_id, ImdError("unavailable"))
    _log.failure("unexpected error while handling a packet", failure)
    return _Failed(packet_id, ImdError("internal"))


class Listener:
    """What the connections of one listener share (built by the App)."""

    def __init__(self, settings: "Settings", node: "LocalNode", verifier: "TokenVerifier",
                 handlers: Dict[str, Callable[..., Any]], metrics: "Metrics", clock: Clock,
                 flusher: Optional["TurnFlusher"] = None, allowed_origins: Sequence[str] = ()) -> None:
        self.settings = settings            # the whole Settings
        self.node = node                    # imd.node.LocalNode
        self.verifier = verifier            # imd.auth.TokenVerifier
        self.handlers = handlers            # packet type -> handler(uid, packet)
        self.metrics = metrics
        self.clock = clock
        self.flusher = flusher              # imd.transport.flush.TurnFlusher or None
        self.allowed_origins = tuple(allowed_origins)


class ImdServerProtocol(WebSocketServerProtocol):
    uid: Optional[int] = None
    conn_id: Optional[str] = None   # this connection's id in Redis presence (dev:<uid>)
    login_score = 0
    peer_address: Any = None
    _registered_uid: Optional[int] = None
    _replaced: Sequence[str] = ()
    _refusal: Optional[str] = None
    _closing = False                # a close is decided: no packet is taken any more
    _close_after_line: Optional[Tuple[int, str]] = None   # (code, reason) once the line is answered
    _close_sent = False             # the C is written: nothing more is
    _drop_after_close = False       # the flooder's: no close handshake, TCP half-closed at once
    _linger_left: Optional[int] = None   # bytes it may still send once closed (LINGER_BYTES)
    _gone = False                   # the TCP connection is lost
    _draining = False
    _closed_waiters: Any = ()
    _idle_call: Any = None
    _counted = False
    _handshaking = False
    limit_address: Any = None       # counted in the factory's ConnectionLimits
    _send_guard: Optional[SendBufferGuard] = None
    _bucket: Optional[TokenBucket] = None
    _history_bucket: Optional[TokenBucket] = None
    _control_strikes = 0
    _refused_takes = 0              # T answered forbidden/not_found since the last T that succeeded
    _close_frame_while_open = False
    _flush_deadline: Any = None
    listener: Listener
    closeHandshakeTimeout: float    # copied from the factory's options by Autobahn
    maxMessagePayloadSize: int      # the same ([websocket] max_message_bytes)

    # --- TCP connection: limits ------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._closed_waiters = []
        limit = self.listener.settings.websocket.max_send_buffer
        if limit:
            self._send_guard = SendBufferGuard(limit, self._not_reading)
            self.registerProducer(self._send_guard, True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = True
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
    # (_close_flooder).  A client may well still be sending then: the rest of
    # a burst written in pieces, its close reply.  A socket closed with
    # unread input answers with a reset, and on a reset a client's library
    # (or a TCP stack on the way) may drop what it had not read yet -- its
    # last replies, the C, the close frame (against twistd, 10 of 1,850
    # bursts written packet by packet were reset, two before their client had
    # read anything: its next write failed with EPIPE).  So the server only
    # half-closes (FIN after the close frame) and reads and throws away what
    # still comes, up to LINGER_BYTES and the closing handshake timeout
    # (_flush_deadline), until the client closes; a flooder past that is
    # aborted.  (Over TLS the transport is a wrapper, which has no
    # half-close of its own -- its attribute lookups fall through to the TCP
    # connection beneath, which must not be half-closed under unsent TLS
    # records: closed as before.)
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
        # It cannot read a close frame either; what it missed is stored (H).
        _log.warn("dropped uid={uid} peer={peer} node={node}: not reading its packets",
                  uid=self.uid, peer=self.peer_address or self.peer, node=self.listener.node.node_id)
        self.listener.metrics.slow_consumer_dropped()
        self.wasNotCleanReason = "slow consumer: send buffer over [websocket] max_send_buffer"
        self._closing = True
        self.dropConnection(abort=True)

    # --- bytes out: every one counts toward max_send_buffer ---------------------

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        # Autobahn's own writes (pongs, close frames, handshake answers) too
        guard = self._send_guard
        if guard is not None:
            guard.sent(len(data))
        super().sendData(data, sync, chopsize)

    def send_text(self, payload: bytes) -> None:
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
        self.peer_address = request.peer
        origin = request.headers.get("origin")
        if origin is not None and listener.allowed_origins and not _origin_allowed(origin, listener.allowed_origins):
            _log.info("refused a handshake from {peer}: origin {origin!r} not in [http] cors_origins",
                      peer=request.peer, origin=origin[:100])
            raise ConnectionDeny(403, "origin not allowed")
        token = token_from_request(request.path, request.params)
        d = listener.verifier.verify(token)
        d.addCallback(self._token_verified)
        d.addErrback(self._token_refused)
        return d

    def _token_verified(self, uid: int) -> Any:
        node = self.listener.node
        if self._gone:
            return None   # the client left during the check: register nothing
        if not node.healthy:
            raise LoginRefused("service unavailable, try again later")
        self.conn_id = node.next_server_id()
        self.login_score = int(self.listener.clock.seconds() * 1e6)
        d = node.register(uid, self.conn_id, self.login_score)
        d.addCallbacks(self._registered, self._registration_failed, callbackArgs=(uid,))
        return d

    def _registered(self, replaced: Sequence[str], uid: int) -> None:
        self._registered_uid = uid
        if self._gone:
            # It left while Redis recorded it: take the record back at once.
            self._forget_registration()
            return
        self.uid = uid
        self._replaced = replaced

    def _registration_failed(self, failure: Failure) -> None:
        self.conn_id = None
        failure.trap(StoreUnavailable)
        raise LoginRefused("service unavailable, try again later")

    def _token_refused(self, failure: Failure) -> None:
        if isinstance(failure.value, LoginRefused):
            self._refusal = failure.value.reason
        else:
            _log.failure("login check failed", failure)
            self._refusal = "internal error"
        self.listener.metrics.login_refused(self._refusal)
        _log.info("login refused peer={peer} node={node}: {why}", peer=self.peer_address,
                  node=self.listener.node.node_id, why=self._refusal)

    def onOpen(self) -> None:
        self._release_handshake()
        if self._gone:
            return
        listener = self.listener
        if self.uid is None:
            self.close_with(protocol.CLOSE_UNAUTHORIZED, self._refusal or "unauthorized")
            return
        node = listener.node
        if node.shutting_down:
            self.uid = None
            self._forget_registration()
            self.close_with(protocol.CLOSE_GOING_AWAY, "server shutting down")
            return
        settings = listener.settings.websocket
        now = listener.clock.seconds()
        self._pending: Any = deque()
        self._errors = 0
        self._bucket = TokenBucket(settings.rate, settings.burst, now)
        self._history_bucket = TokenBucket(settings.history_rate, settings.history_burst, now)
        self._idle_call = listener.clock.callLater(settings.idle_timeout, self._idle)
        self._counted = True
        listener.metrics.login_ok()
        listener.metrics.connection_opened()
        # logged in: uid and conn_id are set for as long as the node holds it (a Session)
        node.add(self, self._replaced)   # type: ignore[arg-type]
        _log.info("login uid={uid} peer={peer} node={node}", uid=self.uid, peer=self.peer_address,
                  node=node.node_id)
        self.send_packet(protocol.login(node.next_server_id(), self.uid))

    # --- packets in ----------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.uid is None or self._closing:
            return
        assert self._bucket is not None and self._history_bucket is not None   # onOpen made them, with uid
        listener = self.listener
        now = listener.clock.seconds()
        self._idle_call.reset(listener.settings.websocket.idle_timeout)
        try:
            packet = protocol.parse_frame(payload, isBinary)
        except protocol.PacketError as e:
            listener.metrics.frame_rejected(e.code)
            self._bucket.take(now)
            self._answer(_Failed(e.packet_id, e))
            return
        kind = packet.type
        listener.metrics.packet_in(kind)
        if self._draining:
            # Shutting down: only packets received before the stop are handled.
            self._answer(_Failed(packet.id, ImdError("unavailable", "server shutting down, retry")))
            return
        if not self._bucket.take(now, packet.cost) or (kind == "H" and not self._history_bucket.take(now)):
            self._answer(_Failed(packet.id, ImdError("rate_limited")))
            return
        handler = listener.handlers.get(kind)
        if handler is None:
            self._answer(_Failed(packet.id, ImdError("unknown_type", "%s is not served by this server" % kind)))
            return
        try:
            outcome = handler(self.uid, packet)
        except ImdError as e:
            outcome = _Failed(packet.id, e)
        except Exception:
            _log.failure("unexpected error while handling a packet")
            outcome = _Failed(packet.id, ImdError("internal"))
        self._answer(outcome, packet.id, (kind, now, packet.id))

    # Control frames: they take from the same rate as packets; past it they
    # are not answered, and max_errors of them in a row close the connection.
    # They never keep a connection from being idle.
    def onPing(self, payload: bytes) -> None:
        if self._control_allowed():
            super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        if self._control_allowed():
            super().onPong(payload)

    def _control_allowed(self) -> bool:
        bucket = self._bucket
        if bucket is None:
            return True
        if bucket.take(self.listener.clock.seconds()):
            self._control_strikes = 0
            return True
        self._control_strikes += 1
        if self._control_strikes >= self.listener.settings.websocket.max_errors and not self._closing:
            _log.warn("closing uid={uid} peer={peer}: control frames over [websocket] rate", uid=self.uid,
                      peer=self.peer_address)
            self._close_flooder("too many control frames")
        return False

    # --- replies out, in order -------------------------------------------------------

    def _answer(self, outcome: Any, packet_id: Any = None, timing: Any = None) -> None:
        if not isinstance(outcome, Deferred):
            if self._pending:
                slot = _Slot(timing)
                slot.outcome = outcome
                self._pending.append(slot)
            else:
                self._emit(outcome, timing)
            return
        slot = _Slot(timing)
        self._pending.append(slot)
        # One callback pair, not three callbacks: ~1.5 us each per message.
        outcome.addCallbacks(self._fill, self._fill_failed, callbackArgs=(slot,), errbackArgs=(slot, packet_id))

    def _fill_failed(self, failure: Failure, slot: _Slot, packet_id: Any) -> None:
        if failure.check(StoreUnavailable):
            self.listener.metrics.store_error(failure.getErrorMessage())
        self._fill(_as_failed(failure, packet_id), slot)

    def _fill(self, outcome: Any, slot: _Slot) -> None:
        slot.outcome = outcome
        pending = self._pending
        while pending and pending[0].outcome is not None:
            head = pending.popleft()
            try:
                self._emit(head.outcome, head.timing)
            except Exception:
                # never leave the replies behind it waiting for the next one
                _log.failure("sending a reply to uid={uid} failed", uid=self.uid)
        if not pending:
            if self._close_after_line is not None:
                self._line_answered()
            elif self._draining:
                self.close_with(protocol.CLOSE_GOING_AWAY, "server shutting down")

    def _emit(self, outcome: Any, timing: Any = None) -> None:
        metrics = self.listener.metrics
        if isinstance(outcome, Reply):
            if self._write_packet(outcome.frame):
                self._errors = 0
                if timing is not None and timing[0] == "T":
                    self._refused_takes = 0
                if timing is not None:
                    metrics.reply_sent(timing[0], timing[1], self.listener.clock.seconds())
                return
            # it could not be sent: the packet still gets its one reply
            outcome = _Failed(timing[2] if timing is not None else None, ImdError("internal"))
        error = outcome.error
        metrics.error_sent(error.code)
        self.send_packet(protocol.error(outcome.packet_id, error.code, error.reason))
        if error.code == "unavailable":
            return  # a server-side outage is not the client's fault: it retries
        self._errors += 1
        max_errors = self.listener.settings.websocket.max_errors
        if timing is not None and timing[0] == "T" and error.code in REFUSED_TAKE_CODES:
            # Enumerating order ids: other replies in between (a P) do not
            # reset this count, only a T that succeeds does.
            metrics.take_refused(error.code)
            self._refused_takes += 1
            if self._refused_takes >= max_errors and not self._closing:
                self._close_flooder("too many refused T")
        if self._errors >= max_errors and not self._closing:
            self._close_flooder("too many errors")

    # --- packets out and closing --------------------------------------------------

    def send_packet(self, payload: bytes) -> None:
        self._write_packet(payload)

    def _write_packet(self, payload: bytes) -> bool:
        """False when sending ``payload`` raised (logged): whatever went
        wrong, it stays with this one packet.  Nothing is written after the
        ``C``."""
        if self.state == WebSocketServerProtocol.STATE_OPEN and not self._close_sent:
            try:
                self.send_text(payload)
            except Exception:
                _log.failure("sending a packet of {size} bytes to uid={uid} failed", size=len(payload),
                             uid=self.uid)
                return False
            flusher = self.listener.flusher
            if flusher is not None:
                flusher.written(self.transport)
        return True

    def close_with(self, code: int, reason: str) -> None:
        """``C`` with ``reason``, then the WebSocket close ``code`` -- once
        every packet already taken has its reply.

        From now on no packet is taken and nothing is delivered here, but the
        replies still in the line go out first, whichever close this is
        (4002, 4003, 4004, 4008, 1001): a client whose ``t`` was stored gets
        its ``A`` before the ``C``, never a close frame in its place.  Every
        frame goes through the one transport buffer in the order written, so
        the ``C`` and the close frame, written last, arrive last.  A line
        that does not empty within the closing handshake timeout (a store
        that does not answer) is cut: the ``C`` and the close frame go then."""
        if self._closing:
            return
        self._closing = True
        self._forget()
        if self.state == WebSocketServerProtocol.STATE_OPEN and getattr(self, "_pending", None):
            self._close_after_line = (code, reason)
            self._flush_deadline = self.listener.clock.callLater(self.closeHandshakeTimeout, self._line_cut)
            return
        self._send_close(code, reason)

    def _line_cut(self) -> None:
        self._flush_deadline = None
        _log.warn("uid={uid} peer={peer}: replies still pending after {seconds} s of closing: closed without them",
                  uid=self.uid, peer=self.peer_address, seconds=self.closeHandshakeTimeout)
        self._pending.clear()
        self._line_answered()

    def _line_answered(self) -> None:
        if self._close_after_line is not None:
            code, reason = self._close_after_line
            self._close_after_line = None
            if self._flush_deadline is not None and self._flush_deadline.active():
                self._flush_deadline.cancel()
            self._flush_deadline = None
            self._send_close(code, reason)

    def _send_close(self, code: int, reason: str) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self._write_packet(protocol.close(self.listener.node.next_server_id(), reason))
            self._close_sent = True
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

    def _close_flooder(self, reason: str) -> None:
        """``C`` + 4008, and nothing more read.  A client that floods frames
        gets its replies and its close frame, but imd does not go on parsing
        its flood while it waits for a close reply (an empty-pong flood kept
        a stopping connection's reactor busy for the whole closing handshake
        timeout): it stops reading now, and the TCP connection ends once the
        close frame is written."""
        self.wasNotCleanReason = "%s: C + 4008 sent, not reading any more" % reason
        self._drop_after_close = True
        cast(_Transport, self.transport).pauseProducing()
        self.close_with(protocol.CLOSE_TOO_MANY_ERRORS, reason)

    def go_away(self) -> Deferred:
        """Graceful shutdown: answer the packets in hand, then ``C`` + 1001.
        Fires once the connection is closed, whatever state it is in."""
        closed: Deferred = Deferred()
        if self._gone or self.state == WebSocketServerProtocol.STATE_CLOSED:
            closed.callback(None)
            return closed
        self._closed_waiters.append(closed)
        self._draining = True
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            # still in its opening handshake (or closing): nothing to answer.
            # (Past Autobahn's dropConnection, which warns of every drop.)
            self.wasNotCleanReason = "server shutting down"
            cast(_Transport, self.transport).abortConnection()
        elif not getattr(self, "_pending", None):
            self.close_with(protocol.CLOSE_GOING_AWAY, "server shutting down")
        return closed

    def abort(self) -> None:
        """Drop the TCP connection now (a shutdown whose grace is over),
        whatever state the WebSocket is in."""
        if self.state != WebSocketServerProtocol.STATE_CLOSED:
            self.wasNotCleanReason = self.wasNotCleanReason or "aborted by the server's stop"
            self.dropConnection(abort=True)
        elif not self._gone and self.transport is not None:
            # closed, but the TCP connection still flushes to a client that does not read
            self.transport.abortConnection()

    def _idle(self) -> None:
        self._idle_call = None
        self.close_with(protocol.CLOSE_IDLE, "idle for too long")

    def _forget(self) -> None:
        if self.uid is not None:
            self.listener.node.remove(self)   # type: ignore[arg-type]  # a Session: see onOpen
        self._forget_registration()
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _forget_registration(self) -> None:
        if self.conn_id is not None and self._registered_uid is not None:
            uid, conn_id, self.conn_id = self._registered_uid, self.conn_id, None
            self.listener.node.unregister(uid, conn_id)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self._gone = True
        self._release_handshake()
        if self.uid is not None:
            # The code of whoever closed first (Autobahn reports the peer's echo).
            code = self.localCloseCode if self.closedByMe and self.localCloseCode else code
            _log.info("logout uid={uid} peer={peer} node={node} code={code}", uid=self.uid,
                      peer=self.peer_address, node=self.listener.node.node_id, code=code)
        self._closing = True
        if self._counted:
            self._counted = False
            self.listener.metrics.connection_closed()
        self._forget()
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(code)


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
            closeHandshakeTimeout=5,
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

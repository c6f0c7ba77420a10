"""A connection, without a WebSocket library in it.

:class:`Login` is a connection in its opening handshake: it checks the
token, records the connection in presence, and once the WebSocket opens
either becomes a :class:`Session` or is refused (``C`` + 4001, or + 1001
while the node stops).  A :class:`Session` is a logged-in connection, what
the node (imd.node) holds: it takes the client's packets and hands each to
the handler of its type, sends the replies back in the order the packets
came, keeps the connection's limits (packet rate, ``H`` rate, errors,
refused ``T``, control frames, idle time), drains on shutdown and decides
how and why the connection closes.

Neither knows Autobahn or a reactor.  They act on the connection through a
:class:`Wire` (imd.transport.websocket's Autobahn adapter is one) and read
time from the :class:`Clock` they are given; what happens to the frames
and the TCP connection beneath is the adapter's business.

Replies leave in the order their packets arrived even though handlers answer
asynchronously: each packet takes a place in the reply line and the head of
the line is sent as soon as it is ready.  A close (``C`` and the close frame)
waits for that line to be answered, whatever decided it (close_with).
"""

import heapq
import itertools
import typing
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from imd import protocol
from imd.errors import ImdError, LoginRefused, StoreUnavailable
from imd.handlers import Reply
from imd.tokenbucket import TokenBucket

if TYPE_CHECKING:
    from imd.auth import TokenVerifier
    from imd.config import WebSocketSettings
    from imd.metrics import Metrics
    from imd.node import LocalNode

_log = Logger()

# A T answered with one of these: the order is not the sender's to take.
REFUSED_TAKE_CODES = frozenset(("forbidden", "not_found"))


class Timer(typing.Protocol):
    """A call scheduled on a :class:`Clock` (Twisted's IDelayedCall)."""

    def reset(self, seconds: float) -> object: ...

    def cancel(self) -> object: ...

    def active(self) -> bool: ...


class Clock(typing.Protocol):
    """What the connections need of a clock (the reactor, or a test's Clock)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kw: object) -> Timer: ...


class Wire(typing.Protocol):
    """What a session needs of the WebSocket connection beneath it."""

    def is_websocket_open(self) -> bool:
        """The WebSocket is open: text frames go out."""

    def is_websocket_closed(self) -> bool:
        """The WebSocket is closed, or its TCP connection gone."""

    def send_text(self, payload: bytes) -> None:
        """One text message, if the WebSocket is open (else nothing).
        Raises what writing it raised."""

    def send_close(self, code: int, reason: str) -> None:
        """The close frame, if the WebSocket is open; after
        :meth:`stop_reading`, the TCP connection ends once it is written."""

    def stop_reading(self, why: str) -> None:
        """Read nothing more from the client (a flooder); ``why`` is logged."""

    def drop(self, why: str) -> None:
        """End the TCP connection now, quietly: the WebSocket is not open
        (still in its opening handshake, or closing)."""

    def abort(self) -> None:
        """End the TCP connection now, whatever state it is in (the
        server's stop, once its grace is over)."""


# (a timer may fire a hair before the deadline it was set for: float sums)
_IDLE_SLACK = 1e-6


class IdleWatch:
    """The idle timeout of every session of a listener, on one timer.

    A timer per connection (Twisted's DelayedCall, reset by every packet)
    cost ~450 bytes per idle connection on CPython (issue 29).  Here a
    session's packet only records its time (``Session._active_at``); the
    watch keeps one entry per watched session, ordered by the deadline it
    was filed under, and one timer for the earliest.  When it fires, a
    session whose last packet is older than ``timeout`` is idle; one that
    sent since is filed again under its new deadline.  So each session
    is closed ``timeout`` after its last packet, as with a timer of its own.
    A session no longer watched (closed) is dropped when its entry comes
    up, or at once by a rebuild when those make up half of the entries."""
    __slots__ = ("_clock", "timeout", "_entries", "_order", "_call", "_watched")

    def __init__(self, clock: Clock, timeout: float) -> None:
        self._clock = clock
        self.timeout = timeout
        self._entries: List[Tuple[float, int, "Session"]] = []   # a heap
        self._order = itertools.count()   # (ties of deadlines: filed first, first)
        self._call: Optional[Timer] = None
        self._watched = 0

    def __len__(self) -> int:
        return self._watched

    def watch(self, session: "Session", now: float) -> None:
        """From ``now`` on, ``session`` (its ``_active_at`` set) is watched."""
        self._watched += 1
        self._file(session, now + self.timeout)

    def unwatch(self, session: "Session") -> None:
        """``session`` (its ``_active_at`` now None) is no longer watched."""
        self._watched -= 1
        entries = self._entries
        if not self._watched:
            del entries[:]
            self._cancel()
        elif len(entries) > 64 and self._watched * 2 < len(entries):
            self._entries = [entry for entry in entries if entry[2]._active_at is not None]
            heapq.heapify(self._entries)
            self._schedule()

    def _file(self, session: "Session", deadline: float) -> None:
        entries = self._entries
        heapq.heappush(entries, (deadline, next(self._order), session))
        if entries[0][2] is session:
            self._schedule()

    def _schedule(self) -> None:
        self._cancel()
        if self._entries:
            delay = max(0.0, self._entries[0][0] - self._clock.seconds())
            self._call = self._clock.callLater(delay, self._due)

    def _cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _due(self) -> None:
        self._call = None
        now = self._clock.seconds() + _IDLE_SLACK
        entries = self._entries
        idle = []
        while entries and entries[0][0] <= now:
            _, _, session = heapq.heappop(entries)
            active_at = session._active_at
            if active_at is None:
                continue   # closed: no longer watched
            deadline = active_at + self.timeout
            if deadline <= now:
                idle.append(session)
            else:
                heapq.heappush(entries, (deadline, next(self._order), session))
        self._schedule()
        for session in idle:
            session._idle()


class SessionContext:
    """What the connections of one listener share (built by the listener)."""
    __slots__ = ("node", "verifier", "handlers", "metrics", "clock", "close_timeout", "rate", "burst",
                 "history_rate", "history_burst", "idle", "max_errors")

    def __init__(self, websocket: "WebSocketSettings", node: "LocalNode", verifier: "TokenVerifier",
                 handlers: Dict[str, Callable[..., Any]], metrics: "Metrics", clock: Clock,
                 close_timeout: float) -> None:
        self.node = node                    # imd.node.LocalNode
        self.verifier = verifier            # imd.auth.TokenVerifier
        self.handlers = handlers            # packet type -> handler(uid, packet)
        self.metrics = metrics
        self.clock = clock
        # how long a close may wait for the reply line (the closing handshake's timeout)
        self.close_timeout = close_timeout
        # (burst as floats: one object each, shared by every bucket)
        self.rate = websocket.rate
        self.burst = float(websocket.burst)
        self.history_rate = websocket.history_rate
        self.history_burst = float(websocket.history_burst)
        self.idle = IdleWatch(clock, websocket.idle_timeout)
        self.max_errors = websocket.max_errors


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


def _refuse(context: SessionContext, wire: Wire, code: int, reason: str) -> None:
    """``C`` with ``reason``, then the close ``code``: a connection that did
    not log in (it has nothing in a reply line)."""
    if wire.is_websocket_open():
        try:
            wire.send_text(protocol.close(context.node.next_server_id(), reason))
        except Exception:
            _log.failure("sending C to a refused connection failed")
    wire.send_close(code, reason)


class Login:
    """A connection in its opening handshake: the token checked, the
    connection recorded in presence (``[websocket] max_devices``)."""
    __slots__ = ("_context", "peer", "uid", "conn_id", "login_score", "_registered_uid", "_replaced",
                 "_refusal", "_gone")

    def __init__(self, context: SessionContext, peer: str) -> None:
        self._context = context
        self.peer = peer
        self.uid: Optional[int] = None        # once the token is checked and the connection recorded
        self.conn_id: Optional[str] = None    # this connection's id in Redis presence (dev:<uid>)
        self.login_score = 0
        self._registered_uid: Optional[int] = None
        self._replaced: Sequence[str] = ()
        self._refusal: Optional[str] = None
        self._gone = False

    def check(self, token: Optional[str]) -> Deferred:
        """Fires once the login is decided (with None either way: a refused
        login opens too, to be told why with ``C`` + 4001)."""
        d = self._context.verifier.verify(token)
        d.addCallback(self._token_verified)
        d.addErrback(self._token_refused)
        return d

    def _token_verified(self, uid: int) -> Any:
        node = self._context.node
        if self._gone:
            return None   # the client left during the check: register nothing
        if not node.healthy:
            raise LoginRefused("service unavailable, try again later")
        self.conn_id = node.next_server_id()
        self.login_score = int(self._context.clock.seconds() * 1e6)
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
        self._context.metrics.login_refused(self._refusal)
        _log.info("login refused peer={peer} node={node}: {why}", peer=self.peer,
                  node=self._context.node.node_id, why=self._refusal)

    def _forget_registration(self) -> None:
        if self.conn_id is not None and self._registered_uid is not None:
            uid, conn_id, self.conn_id = self._registered_uid, self.conn_id, None
            self._context.node.unregister(uid, conn_id)

    def lost(self) -> None:
        """The connection ended before it opened."""
        self._gone = True
        self.uid = None
        self._forget_registration()

    def open(self, wire: Wire) -> "Optional[Session]":
        """The WebSocket is open: the logged-in :class:`Session`, or None
        when the login was refused (``C`` and the close are on their way)."""
        context = self._context
        uid, conn_id = self.uid, self.conn_id
        if uid is None or conn_id is None:
            _refuse(context, wire, protocol.CLOSE_UNAUTHORIZED, self._refusal or "unauthorized")
            return None
        if context.node.shutting_down:
            self.uid = None
            self._forget_registration()
            _refuse(context, wire, protocol.CLOSE_GOING_AWAY, "server shutting down")
            return None
        session = Session(context, wire, uid, conn_id, self.login_score, self.peer)
        session.start(self._replaced)
        return session


class Session:
    """A logged-in connection (what imd.node's ``Session`` protocol asks for)."""
    __slots__ = ("uid", "conn_id", "login_score", "peer", "wire", "_context", "_pending", "_errors",
                 "_refused_takes", "_control_strikes", "_bucket", "_history_bucket", "_active_at", "_closing",
                 "_close_after_line", "_close_sent", "_line_deadline", "_draining", "_closed_waiters", "_gone",
                 "_registered")

    def __init__(self, context: SessionContext, wire: Wire, uid: int, conn_id: str, login_score: int,
                 peer: str) -> None:
        self._context = context
        self.wire = wire
        self.uid = uid
        self.conn_id = conn_id              # this connection's id in Redis presence (dev:<uid>)
        self.login_score = login_score
        self.peer = peer
        # the reply line, made by the first reply that has to wait
        self._pending: Optional[Deque[_Slot]] = None
        self._errors = 0
        self._refused_takes = 0             # T answered forbidden/not_found since the last T that succeeded
        self._control_strikes = 0
        # the rate buckets, made full at their first use: a bucket made full
        # at login would be full then too (the same figures, no memory for
        # a connection that sends nothing)
        self._bucket: Optional[TokenBucket] = None
        self._history_bucket: Optional[TokenBucket] = None
        # the time of its last packet while the IdleWatch watches it (None: not watched)
        self._active_at: Optional[float] = None
        self._closing = False               # a close is decided: no packet is taken any more
        self._close_after_line: Optional[tuple] = None   # (code, reason) once the line is answered
        self._close_sent = False            # the C is written: nothing more is
        self._line_deadline: Optional[Timer] = None
        self._draining = False
        self._closed_waiters: Optional[List[Deferred]] = None
        self._gone = False                  # the connection is closed
        self._registered = True             # recorded in presence until _forget

    def start(self, replaced: Sequence[str]) -> None:
        """Logged in: the node delivers to it from now on; ``L`` is sent."""
        context = self._context
        self._active_at = now = context.clock.seconds()
        context.idle.watch(self, now)
        context.metrics.login_ok()
        context.metrics.connection_opened()
        node = context.node
        node.add(self, replaced)
        _log.info("login uid={uid} peer={peer} node={node}", uid=self.uid, peer=self.peer, node=node.node_id)
        self.send_packet(protocol.login(node.next_server_id(), self.uid))

    @property
    def replies_waiting(self) -> int:
        """How many packets taken still wait for their reply to be sent."""
        return len(self._pending) if self._pending is not None else 0

    @property
    def closed(self) -> bool:
        """The connection is closed (its close was seen through)."""
        return self._gone

    # --- packets in ----------------------------------------------------------------

    def frame_received(self, payload: bytes, is_binary: bool) -> None:
        """A whole message from the client."""
        if self._closing:
            return
        context = self._context
        now = context.clock.seconds()
        self._active_at = now   # (for the IdleWatch; not None: _closing until the close)
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = TokenBucket(context.rate, context.burst, now)
        try:
            packet = protocol.parse_frame(payload, is_binary)
        except protocol.PacketError as e:
            context.metrics.frame_rejected(e.code)
            bucket.take(now)
            self._answer(_Failed(e.packet_id, e))
            return
        kind = packet.type
        context.metrics.packet_in(kind)
        if self._draining:
            # Shutting down: only packets received before the stop are handled.
            self._answer(_Failed(packet.id, ImdError("unavailable", "server shutting down, retry")))
            return
        if not bucket.take(now, packet.cost) or (kind == "H" and not self._take_history(now)):
            self._answer(_Failed(packet.id, ImdError("rate_limited")))
            return
        handler = context.handlers.get(kind)
        if handler is None:
            self._answer(_Failed(packet.id, ImdError("unknown_type", "%s is not served by this server" % kind)))
            return
        if type(packet) is protocol.MessagePacket or type(packet) is protocol.RecallPacket:
            packet.origin = self.conn_id   # its other devices get it, this connection only the A
        try:
            outcome = handler(self.uid, packet)
        except ImdError as e:
            outcome = _Failed(packet.id, e)
        except Exception:
            _log.failure("unexpected error while handling a packet")
            outcome = _Failed(packet.id, ImdError("internal"))
        self._answer(outcome, packet.id, (kind, now, packet.id))

    def _take_history(self, now: float) -> bool:
        bucket = self._history_bucket
        if bucket is None:
            context = self._context
            bucket = self._history_bucket = TokenBucket(context.history_rate, context.history_burst, now)
        return bucket.take(now)

    def control_frame(self) -> bool:
        """A ping or a pong came: whether to answer (take) it.  Control
        frames take from the same rate as packets; past it they are not
        answered, and max_errors of them in a row close the connection.
        They never keep a connection from being idle."""
        context = self._context
        now = context.clock.seconds()
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = TokenBucket(context.rate, context.burst, now)
        if bucket.take(now):
            self._control_strikes = 0
            return True
        self._control_strikes += 1
        if self._control_strikes >= context.max_errors and not self._closing:
            _log.warn("closing uid={uid} peer={peer}: control frames over [websocket] rate", uid=self.uid,
                      peer=self.peer)
            self._close_flooder("too many control frames")
        return False

    # --- replies out, in order -------------------------------------------------------

    def _answer(self, outcome: Any, packet_id: Any = None, timing: Any = None) -> None:
        pending = self._pending
        if not isinstance(outcome, Deferred):
            if pending:
                slot = _Slot(timing)
                slot.outcome = outcome
                pending.append(slot)
            else:
                self._emit(outcome, timing)
            return
        if pending is None:
            pending = self._pending = deque()
        slot = _Slot(timing)
        pending.append(slot)
        # One callback pair, not three callbacks: ~1.5 us each per message.
        outcome.addCallbacks(self._fill, self._fill_failed, callbackArgs=(slot,), errbackArgs=(slot, packet_id))

    def _fill_failed(self, failure: Failure, slot: _Slot, packet_id: Any) -> None:
        if failure.check(StoreUnavailable):
            self._context.metrics.store_error(failure.getErrorMessage())
        self._fill(_as_failed(failure, packet_id), slot)

    def _fill(self, outcome: Any, slot: _Slot) -> None:
        slot.outcome = outcome
        pending = self._pending
        assert pending is not None   # the slot is in it
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
        context = self._context
        metrics = context.metrics
        if isinstance(outcome, Reply):
            if self._write_packet(outcome.frame):
                self._errors = 0
                if timing is not None:
                    if timing[0] == "T":
                        self._refused_takes = 0
                    metrics.reply_sent(timing[0], timing[1], context.clock.seconds())
                return
            # it could not be sent: the packet still gets its one reply
            outcome = _Failed(timing[2] if timing is not None else None, ImdError("internal"))
        error = outcome.error
        metrics.error_sent(error.code)
        self._write_packet(protocol.error(outcome.packet_id, error.code, error.reason))
        if error.code == "unavailable":
            return  # a server-side outage is not the client's fault: it retries
        self._errors += 1
        max_errors = context.max_errors
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
        """A packet for this connection's user (delivered by the node)."""
        self._write_packet(payload)

    def _write_packet(self, payload: bytes) -> bool:
        """False when sending ``payload`` raised (logged): whatever went
        wrong, it stays with this one packet.  Nothing is written after the
        ``C``."""
        if not self._close_sent:
            try:
                self.wire.send_text(payload)
            except Exception:
                _log.failure("sending a packet of {size} bytes to uid={uid} failed", size=len(payload),
                             uid=self.uid)
                return False
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
        if self._pending and self.wire.is_websocket_open():
            self._close_after_line = (code, reason)
            self._line_deadline = self._context.clock.callLater(self._context.close_timeout, self._line_cut)
            return
        self._send_close(code, reason)

    def _line_cut(self) -> None:
        self._line_deadline = None
        _log.warn("uid={uid} peer={peer}: replies still pending after {seconds} s of closing: closed without them",
                  uid=self.uid, peer=self.peer, seconds=self._context.close_timeout)
        if self._pending is not None:
            self._pending.clear()
        self._line_answered()

    def _line_answered(self) -> None:
        if self._close_after_line is not None:
            code, reason = self._close_after_line
            self._close_after_line = None
            self._cancel_line_deadline()
            self._send_close(code, reason)

    def _cancel_line_deadline(self) -> None:
        if self._line_deadline is not None and self._line_deadline.active():
            self._line_deadline.cancel()
        self._line_deadline = None

    def _send_close(self, code: int, reason: str) -> None:
        wire = self.wire
        if wire.is_websocket_open():
            self._write_packet(protocol.close(self._context.node.next_server_id(), reason))
            self._close_sent = True
        wire.send_close(code, reason)

    def _close_flooder(self, reason: str) -> None:
        """``C`` + 4008, and nothing more read.  A client that floods frames
        gets its replies and its close frame, but imd does not go on parsing
        its flood while it waits for a close reply (an empty-pong flood kept
        a stopping connection's reactor busy for the whole closing handshake
        timeout): it stops reading now, and the TCP connection ends once the
        close frame is written."""
        self.wire.stop_reading("%s: C + 4008 sent, not reading any more" % reason)
        self.close_with(protocol.CLOSE_TOO_MANY_ERRORS, reason)

    def slow_consumer(self) -> None:
        """The client does not read: more than ``[websocket]
        max_send_buffer`` waits for it in memory (the wire drops it).  It
        cannot read a close frame either; what it missed is stored (H)."""
        context = self._context
        _log.warn("dropped uid={uid} peer={peer} node={node}: not reading its packets",
                  uid=self.uid, peer=self.peer, node=context.node.node_id)
        context.metrics.slow_consumer_dropped()
        self._closing = True

    def go_away(self) -> Deferred:
        """Graceful shutdown: answer the packets in hand, then ``C`` + 1001.
        Fires once the connection is closed, whatever state it is in."""
        closed: Deferred = Deferred()
        if self._gone or self.wire.is_websocket_closed():
            closed.callback(None)
            return closed
        if self._closed_waiters is None:
            self._closed_waiters = []
        self._closed_waiters.append(closed)
        self._draining = True
        if not self.wire.is_websocket_open():
            # closing already (its close frame sent or received): nothing to answer
            self.wire.drop("server shutting down")
        elif not self._pending:
            self.close_with(protocol.CLOSE_GOING_AWAY, "server shutting down")
        return closed

    def abort(self) -> None:
        """Drop the connection now (a shutdown whose grace is over),
        whatever state it is in."""
        self.wire.abort()

    def _idle(self) -> None:
        """The IdleWatch: no packet for ``[websocket] idle_timeout``."""
        self.close_with(protocol.CLOSE_IDLE, "idle for too long")

    def _forget(self) -> None:
        context = self._context
        if self._registered:
            self._registered = False
            context.node.remove(self)
            context.node.unregister(self.uid, self.conn_id)
        if self._active_at is not None:
            self._active_at = None
            context.idle.unwatch(self)

    def lost(self, code: Optional[int]) -> None:
        """The connection is closed (``code``: the one of whoever closed first)."""
        if self._gone:
            return
        self._gone = True
        context = self._context
        _log.info("logout uid={uid} peer={peer} node={node} code={code}", uid=self.uid, peer=self.peer,
                  node=context.node.node_id, code=code)
        self._closing = True
        context.metrics.connection_closed()
        self._forget()
        self._cancel_line_deadline()
        waiters, self._closed_waiters = self._closed_waiters, None
        for waiter in waiters or ():
            if not waiter.called:
                waiter.callback(code)

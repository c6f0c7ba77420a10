"""The Autobahn protocol and factory: frames in, packets out, nothing else.

One connection = one :class:`ImdServerProtocol`.  Login happens during the
opening handshake (``onConnect`` returns the verification Deferred), so by
``onOpen`` we know whether to send ``L`` or ``C`` + 4001.

Replies leave in the order their packets arrived even though handlers answer
asynchronously: each packet takes a place in ``_pending`` and the head of the
line is sent as soon as it is ready (a failed store does not hold up the
packets behind it for longer than its own answer takes).
"""

from collections import deque

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from imd import protocol
from imd.auth import token_from_request
from imd.errors import ImdError, LoginRefused, StoreUnavailable
from imd.handlers import Reply
from imd.transport.autobahn_tuning import (defer_debug_formatting, fast_small_frame_masking,
                                           protocol_with_options, text_frame)
from imd.transport.limits import ConnectionLimits, Refusal, SendBufferGuard, peer_address

_log = Logger()

defer_debug_formatting()
fast_small_frame_masking()

CLOSE_UNAUTHORIZED = 4001
CLOSE_REPLACED = 4002
CLOSE_KICKED = 4003
CLOSE_IDLE = 4004
CLOSE_TOO_MANY_ERRORS = 4008
CLOSE_GOING_AWAY = 1001


class _Failed:
    """An ``E`` waiting for its turn in the reply line."""
    __slots__ = ("packet_id", "error")

    def __init__(self, packet_id, error):
        self.packet_id = packet_id
        self.error = error


class _Slot:
    __slots__ = ("outcome", "timing")

    def __init__(self, timing=None):
        self.outcome = None
        self.timing = timing  # (packet type, time received) for the metrics


def _as_failed(failure, packet_id):
    if failure.check(ImdError):
        return _Failed(packet_id, failure.value)
    if failure.check(StoreUnavailable):
        _log.warn("store unavailable: {why}", why=failure.getErrorMessage())
        return _Failed(packet_id, ImdError("unavailable"))
    _log.failure("unexpected error while handling a packet", failure)
    return _Failed(packet_id, ImdError("internal"))


class ImdServerProtocol(WebSocketServerProtocol):
    uid = None
    conn_id = None          # this connection's id in Redis presence (dev:<uid>)
    _registered_uid = None
    _replaced = ()
    _refusal = None
    _closing = False
    _draining = False
    _closed_waiters = ()
    _idle_call = None
    _counted = False
    limit_address = None    # counted in the factory's ConnectionLimits
    _plain_frames = False   # set by protocol_with_options (autobahn_tuning)
    _send_guard = None

    # --- TCP connection: limits -----------------------------------------------

    def connectionMade(self):
        super().connectionMade()
        limit = self.factory.app.settings.websocket.max_send_buffer
        if limit:
            self._send_guard = SendBufferGuard(limit, self._not_reading)
            self.registerProducer(self._send_guard, True)

    def connectionLost(self, reason):
        if self.limit_address is not None:
            self.factory.limits.release(self.limit_address)
            self.limit_address = None
        super().connectionLost(reason)

    def _not_reading(self):
        # A slow consumer: more than max_send_buffer waits for it in memory.
        # It cannot read a close frame either; what it missed is stored (H).
        _log.warn("dropped uid={uid} peer={peer} node={node}: not reading its packets",
                  uid=self.uid, peer=getattr(self, "peer_address", self.peer), node=self.factory.app.node_id)
        self.factory.app.metrics.slow_consumer_dropped()
        self.wasNotCleanReason = "slow consumer: send buffer over [websocket] max_send_buffer"
        self._closing = True
        self.dropConnection(abort=True)

    # --- login ---------------------------------------------------------------

    def onConnect(self, request):
        self._app = self.factory.app
        self._closed_waiters = []
        self.peer_address = request.peer
        token = token_from_request(request.path, request.params)
        d = self._app.verifier.verify(token)
        d.addCallback(self._token_verified)
        d.addErrback(self._token_refused)
        return d

    def _token_verified(self, uid):
        app = self._app
        if not app.bus.healthy:
            raise LoginRefused("service unavailable, try again later")
        self.conn_id = app.next_server_id()
        settings = app.settings.websocket
        self.login_score = int(app.clock.seconds() * 1e6)
        d = app.presence.login(uid, self.conn_id, self.login_score, settings.max_devices)
        d.addCallbacks(self._registered, self._registration_failed, callbackArgs=(uid,))
        return d

    def _registered(self, replaced, uid):
        self.uid = self._registered_uid = uid
        self._replaced = replaced
        return None

    @staticmethod
    def _registration_failed(failure):
        failure.trap(StoreUnavailable)
        raise LoginRefused("service unavailable, try again later")

    def _token_refused(self, failure):
        if failure.check(LoginRefused):
            self._refusal = failure.value.reason
        else:
            _log.failure("login check failed", failure)
            self._refusal = "internal error"
        self._app.metrics.login_refused(self._refusal)
        _log.info("login refused peer={peer} node={node}: {why}", peer=self.peer_address,
                  node=self._app.node_id, why=self._refusal)
        return None

    def onOpen(self):
        if self.uid is None:
            self.close_with(CLOSE_UNAUTHORIZED, self._refusal or "unauthorized")
            return
        app = self._app
        if app.shutting_down:
            self.uid = None
            self.close_with(CLOSE_GOING_AWAY, "server shutting down")
            return
        settings = app.settings.websocket
        self._pending = deque()
        self._errors = 0
        self._tokens = float(settings.burst)
        self._tokens_at = app.clock.seconds()
        self._idle_call = app.clock.callLater(settings.idle_timeout, self._idle)
        self._counted = True
        app.metrics.login_ok()
        app.metrics.connection_opened()
        for conn_id in self._replaced:
            app.replace_local(self.uid, conn_id)
        app.sessions.add(self)
        _log.info("login uid={uid} peer={peer} node={node}", uid=self.uid, peer=self.peer_address,
                  node=app.node_id)
        self.send_packet(protocol.login(app.next_server_id(), self.uid))

    # --- packets in ----------------------------------------------------------

    def onMessageEnd(self):
        # Autobahn's own also fires a "message" event for observers registered
        # with .on() (a Deferred and two callbacks per message, ~5% of the
        # process's CPU at full load); imd registers none.
        if self._listeners is not None or self._parent is not None or self.trackedTimings:
            return super().onMessageEnd()
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None
        return None

    def onMessage(self, payload, isBinary):
        if self.uid is None or self._closing:
            return
        app = self._app
        settings = app.settings.websocket
        self._idle_call.reset(settings.idle_timeout)
        received = app.clock.seconds()
        try:
            packet = protocol.parse_frame(payload, isBinary)
        except protocol.PacketError as e:
            app.metrics.frame_rejected(e.code)
            self._take_token(settings)
            self._answer(_Failed(e.packet_id, e))
            return
        app.metrics.packet_in(packet.type)
        if self._draining:
            # Shutting down: only packets received before the stop are handled.
            self._answer(_Failed(packet.id, ImdError("unavailable", "server shutting down, retry")))
            return
        if not self._take_token(settings):
            self._answer(_Failed(packet.id, ImdError("rate_limited")))
            return
        handler = app.handlers.get(packet.type)
        if handler is None:
            self._answer(_Failed(packet.id, ImdError("unknown_type", "%s is not served by this server" % packet.type)))
            return
        try:
            outcome = handler(self.uid, packet)
        except ImdError as e:
            outcome = _Failed(packet.id, e)
        except Exception:
            _log.failure("unexpected error while handling a packet")
            outcome = _Failed(packet.id, ImdError("internal"))
        self._answer(outcome, packet.id, (packet.type, received))

    def _take_token(self, settings):
        """Per-connection token bucket: ``rate`` packets/s, ``burst`` at once."""
        now = self._app.clock.seconds()
        self._tokens = min(float(settings.burst), self._tokens + (now - self._tokens_at) * settings.rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    # --- replies out, in order -----------------------------------------------

    def _answer(self, outcome, packet_id=None, timing=None):
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

    def _fill_failed(self, failure, slot, packet_id):
        self._count_store_error(failure)
        self._fill(_as_failed(failure, packet_id), slot)

    def _fill(self, outcome, slot):
        slot.outcome = outcome
        pending = self._pending
        while pending and pending[0].outcome is not None:
            head = pending.popleft()
            self._emit(head.outcome, head.timing)
        if self._draining and not pending:
            self.close_with(CLOSE_GOING_AWAY, "server shutting down")

    def _count_store_error(self, failure):
        if failure.check(StoreUnavailable):
            self._app.metrics.store_error(failure.getErrorMessage())
        return failure

    def _emit(self, outcome, timing=None):
        metrics = self._app.metrics
        if isinstance(outcome, Reply):
            self._errors = 0
            self.send_packet(outcome.frame)
            if timing is not None:
                metrics.reply_sent(timing[0], timing[1], self._app.clock.seconds())
            if outcome.deliver_to is not None:
                if self._app.settings.log.messages:
                    # ("message" is a reserved key of Twisted's legacy log bridge)
                    _log.info("message uid={uid} to={to} node={node}: {packet}", uid=self.uid,
                              to=outcome.deliver_to, node=self._app.node_id,
                              packet=outcome.payload.decode("utf-8", "replace"))
                # Delivered even when the sender has gone: it is stored.
                reached = self._app.router.deliver(outcome.deliver_to, outcome.payload)
                if isinstance(reached, int):
                    metrics.delivered(reached)
            return
        error = outcome.error
        metrics.error_sent(error.code)
        self.send_packet(protocol.error(outcome.packet_id, error.code, error.reason))
        self._errors += 1
        if self._errors >= self._app.settings.websocket.max_errors and not self._closing:
            self.close_with(CLOSE_TOO_MANY_ERRORS, "too many errors")

    # --- packets out and closing ---------------------------------------------

    def send_packet(self, payload):
        if self.state == WebSocketServerProtocol.STATE_OPEN and not self._closing:
            if self.send_queue or self._perMessageCompress is not None or not self._plain_frames or (
                    0 < self.maxMessagePayloadSize < len(payload)):
                self.sendMessage(payload)
            else:
                # What sendMessage would write here, without its generic path.
                self.transport.write(text_frame(payload))
            self._app.flusher.written(self.transport)
            if self._send_guard is not None:
                self._send_guard.sent(len(payload))

    def close_with(self, code, reason):
        """``C`` with ``reason``, then the WebSocket close ``code``."""
        if self._closing:
            return
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(protocol.close(self._app.next_server_id(), reason))
        self._closing = True
        self._forget()
        if code == CLOSE_GOING_AWAY:
            # sendClose only lets applications use 1000 and 3000-4999, but
            # 1001 "going away" is the standard code for a server stopping.
            self.sendCloseFrame(code=code, reasonUtf8=reason[:100].encode("utf-8"), isReply=False)
        else:
            self.sendClose(code, reason[:100])

    def go_away(self):
        """Graceful shutdown: answer the packets in hand, then ``C`` + 1001.
        Fires once the connection is closed."""
        self._draining = True
        closed = Deferred()
        self._closed_waiters.append(closed)
        if not self._pending:
            self.close_with(CLOSE_GOING_AWAY, "server shutting down")
        return closed

    def _idle(self):
        self._idle_call = None
        self.close_with(CLOSE_IDLE, "idle for too long")

    def _forget(self):
        if self.uid is not None:
            self._app.sessions.remove(self)
        if self.conn_id is not None:
            uid, conn_id, self.conn_id = self._registered_uid, self.conn_id, None
            d = self._app.presence.logout(uid, conn_id)
            d.addErrback(lambda f: _log.warn("logout of uid={uid} not recorded: {why}",
                                             uid=uid, why=f.getErrorMessage()))
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def onClose(self, wasClean, code, reason):
        if self.uid is not None:
            # The code of whoever closed first (Autobahn reports the peer's echo).
            code = self.localCloseCode if self.closedByMe and self.localCloseCode else code
            _log.info("logout uid={uid} peer={peer} node={node} code={code}", uid=self.uid,
                      peer=getattr(self, "peer_address", None), node=self._app.node_id, code=code)
        self._closing = True
        if self._counted:
            self._counted = False
            self._app.metrics.connection_closed()
        if hasattr(self, "_app"):
            self._forget()
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(code)


class ImdServerFactory(WebSocketServerFactory):
    protocol = ImdServerProtocol

    def __init__(self, app, url=None):
        super().__init__(url)
        self.app = app
        ws = app.settings.websocket
        self.limits = ConnectionLimits(ws.max_connections, ws.max_per_address)
        self.setProtocolOptions(
            maxMessagePayloadSize=ws.max_message_bytes,
            maxFramePayloadSize=ws.max_message_bytes,
            openHandshakeTimeout=ws.open_handshake_timeout,
            closeHandshakeTimeout=5,
            autoPingInterval=ws.ping_interval,
            autoPingTimeout=ws.ping_interval or None,
            allowedOrigins=["*"],
            allowNullOrigin=True,
        )
        # the options as class attributes, not copied into every connection
        self.protocol = protocol_with_options(self, ImdServerProtocol)

    def buildProtocol(self, addr):
        address = peer_address(addr)
        status = self.limits.admit(address)
        if status is not None:
            self.app.metrics.connection_refused(status)
            _log.warn("refused a connection from {peer} node={node}: HTTP {status} ({open} open)",
                      peer=address, node=self.app.node_id, status=status, open=self.limits.total)
            return Refusal(status)
        protocol = super().buildProtocol(addr)
        protocol.limit_address = address
        return protocol

"""The local node: this process's connections and the only way to reach a user.

:class:`LocalNode` owns the sessions (the WebSocket connections of this
process, by uid), delivery to them, the device limit, kicks, draining on
shutdown and the shutting-down state.  Handlers call :meth:`LocalNode.deliver`
and :meth:`LocalNode.kick`; they never see a socket.  The transport registers
its connections here and never decides who gets what.

Packets that carry a ``pos`` (stored messages, system messages, recalls,
room messages and events: contract §10) are published by the script that
stores them, to every node holding a connection of the recipient or the
sender (of a room's members), this one included (``lua/fanout.lua``,
``lua/room_fanout.lua``), so that each connection gets them in ``pos`` order;
they reach the sessions through :meth:`frame_received` like every frame
from another node (imd.bus receives them).  The rest (receipts, typing,
positions) goes through :meth:`deliver`: this node's connections at once,
and for the others a queue that one script publishes at the end of the
reactor turn (:meth:`PresenceStore.route`), one frame to each other node
that holds a connection of the recipient; rooms' cursors and typing
likewise through :meth:`deliver_room` (one frame per node, not per member).
"""

import itertools
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, TypeVar, Union, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.base import DelayedCall
from twisted.logger import Logger

from imd import busframes, protocol

_log = Logger()

FRAME_TIMEOUT = 5.0        # seconds an A waits for its message's frame at most
MAX_EARLY_FRAMES = 10000   # frames kept for a waiter still to come


T = TypeVar("T")


class Session(Protocol):
    """What the node needs of a logged-in connection (imd.transport.session.Session is one)."""

    uid: int
    conn_id: str
    login_score: int

    def send_packet(self, payload: bytes) -> None: ...

    def close_with(self, code: int, reason: str) -> None: ...

    def go_away(self) -> Deferred: ...

    def abort(self) -> None: ...


class LocalNode:
    def __init__(self, node_id: str, presence: Any, clock: Any, max_devices: int, metrics: Any = None,
                 healthy: Callable[[], bool] = lambda: True) -> None:
        self.node_id = node_id
        self.presence = presence
        self.max_devices = max_devices
        self.metrics = metrics
        self.shutting_down = False
        self._clock = clock
        self._healthy = healthy
        self._by_uid: Dict[int, List[Session]] = {}
        self._remote: List[Tuple[int, bytes]] = []
        self._remote_rooms: List[Tuple[Sequence[int], bytes]] = []
        self._route_call: Any = None
        self._server_id_prefix = "%x" % int(clock.seconds() * 1000)
        self._server_ids = itertools.count(1)
        # pos -> (deadline, Deferred, result) of an A waiting for its
        # message's 'x' frame (a room message's: its 'g' frame naming the
        # connection), in the order they came; pos of such frames that came
        # before their waiter (wait_frame)
        self.frame_timeout = FRAME_TIMEOUT
        self._frame_waiters: Dict[int, Tuple[float, Deferred, object]] = {}
        self._frames_early: Dict[int, None] = {}
        self._sweep_call: Optional[DelayedCall] = None

    # --- identity ----------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """This process run's prefix of server ids (and connection ids)."""
        return self._server_id_prefix

    def next_server_id(self) -> str:
        """An id for server-made packets (``L``, ``C``, ``S``), unique per process run."""
        return "%s-%d" % (self._server_id_prefix, next(self._server_ids))

    @property
    def healthy(self) -> bool:
        """Linked to the other nodes (subscribed and registered): only then
        does this node take logins and messages."""
        return self._healthy()

    # --- sessions ----------------------------------------------------------------

    def register(self, uid: int, conn_id: str, score: int) -> Deferred:
        """Record a new connection in Redis (``[websocket] max_devices``
        across nodes); fires with the conn ids of this node it pushes out."""
        return self.presence.login(uid, conn_id, score, self.max_devices)

    def unregister(self, uid: int, conn_id: str) -> None:
        d = self.presence.logout(uid, conn_id)
        d.addErrback(lambda f: _log.warn("logout of uid={uid} not recorded: {why}", uid=uid,
                                         why=f.getErrorMessage()))

    def add(self, session: Session, replaced: Sequence[str] = ()) -> None:
        """``session`` is open: it receives what is delivered to its user;
        ``replaced`` (its login pushed them out) get ``C`` + 4002."""
        for conn_id in replaced:
            self.replace_local(session.uid, conn_id)
        self._by_uid.setdefault(session.uid, []).append(session)

    def remove(self, session: Session) -> None:
        sessions = self._by_uid.get(session.uid)
        if sessions and session in sessions:
            sessions.remove(session)
            if not sessions:
                del self._by_uid[session.uid]

    def sessions_of(self, uid: int) -> Sequence[Session]:
        return self._by_uid.get(uid, ())

    def find(self, uid: int, conn_id: str) -> Optional[Session]:
        for session in self._by_uid.get(uid, ()):
            if session.conn_id == conn_id:
                return session
        return None

    def sessions(self) -> List[Session]:
        return [s for sessions in self._by_uid.values() for s in sessions]

    def connections(self) -> Iterator[Tuple[int, str, int]]:
        """``(uid, conn_id, login score)`` of every open connection (the bus
        registers them again after Redis lost them)."""
        for uid, sessions in list(self._by_uid.items()):
            for session in sessions:
                if session.conn_id is not None:
                    yield uid, session.conn_id, session.login_score

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_uid.values())

    # --- delivery ----------------------------------------------------------------

    def deliver(self, uid: int, payload: bytes, skip: Optional[str] = None) -> int:
        """``payload`` to every connection of ``uid``, here now and on other
        nodes at the end of this reactor turn, except this node's connection
        ``skip`` (a conn id: the one a message came on, which gets only its
        ``A``; a connection is on one node only, so the other nodes have
        none to leave out).  How many here got it."""
        reached = self.deliver_local(uid, payload, skip)
        self._remote.append((uid, payload))
        if self._route_call is None:
            self._route_call = self._clock.callLater(0, self._route)
        if self.metrics is not None:
            self.metrics.delivered(reached)
        return reached

    def deliver_room(self, uids: Sequence[int], payload: bytes, skip: Optional[str] = None) -> int:
        """A room's packet (contract v3 §9) to every connection of each of
        ``uids``: here now (but ``skip``, as for :meth:`deliver`), and at the
        end of this reactor turn one frame to each other node holding any of
        them (:meth:`PresenceStore.route_room`), not one per member."""
        reached = 0
        for uid in uids:
            reached += self.deliver_local(uid, payload, skip)
        if uids:
            self._remote_rooms.append((uids, payload))
            if self._route_call is None:
                self._route_call = self._clock.callLater(0, self._route)
        if self.metrics is not None:
            self.metrics.delivered(reached)
        return reached

    def deliver_local(self, uid: int, payload: bytes, skip: Optional[str] = None) -> int:
        sessions = self._by_uid.get(uid, ())
        if skip is None:
            for session in sessions:
                session.send_packet(payload)
            return len(sessions)
        reached = 0
        for session in sessions:
            if session.conn_id != skip:
                session.send_packet(payload)
                reached += 1
        return reached

    def _route(self) -> Deferred:
        self._route_call = None
        batch, self._remote = self._remote, []
        rooms, self._remote_rooms = self._remote_rooms, []
        routed = []
        if batch or not rooms:
            d = self.presence.route(batch)
            d.addErrback(lambda f: _log.warn("routing {n} packets to other nodes failed: {why}", n=len(batch),
                                             why=f.getErrorMessage()))
            routed.append(d)
        if rooms:
            d = self.presence.route_room(rooms)
            d.addErrback(lambda f: _log.warn("routing {n} room packets to other nodes failed: {why}", n=len(rooms),
                                             why=f.getErrorMessage()))
            routed.append(d)
        if len(routed) == 1:
            return routed[0]
        return defer.gatherResults(routed)

    def flush(self) -> Deferred:
        """Publish what is waiting for the end of this turn now; fires once
        Redis has it.  For a process about to stop (``imd-admin``)."""
        if self._route_call is None:
            return defer.succeed(None)
        self._route_call.cancel()
        return self._route()

    def kick(self, uid: int, reason: str) -> Deferred:
        """Close every connection of ``uid`` on every node (``C`` + 4003);
        fires with how many nodes were told (this one hears it on the bus)."""
        return self.presence.kick(uid, reason)

    def kick_local(self, uid: int, reason: str) -> int:
        sessions = list(self._by_uid.get(uid, ()))
        for session in sessions:
            session.close_with(protocol.CLOSE_KICKED, reason or "kicked by an operator")
        return len(sessions)

    def replace_local(self, uid: int, conn_id: str) -> None:
        """A newer device of ``uid`` pushed ``conn_id`` out: ``C`` + 4002."""
        session = self.find(uid, conn_id)
        if session is not None:
            session.close_with(protocol.CLOSE_REPLACED, "replaced by a newer device")

    def frame_received(self, frame: Union[bytes, str]) -> None:
        """A frame from another node (imd.busframes): bytes as the node's
        subscription hands it (imd.stores.redis ``raw``), or str (a lone
        surrogate, which the encode refuses, stands for a byte that is not
        UTF-8)."""
        try:
            if type(frame) is str:
                frame = frame.encode("utf-8")
            kind, uid, rest = busframes.decode(frame)
        except (busframes.BadFrame, UnicodeEncodeError):
            _log.warn("ignoring a malformed bus frame: {frame!r}", frame=frame[:80] if frame else frame)
            return
        try:
            if kind == busframes.DELIVER_EXCEPT:
                conn_id, pos, also, packet = busframes.own_message(cast(bytes, rest))
                reached = 0
                if packet is not None:
                    reached = self.deliver_local(uid, packet, conn_id)
                    if also:
                        # (a delivery of its own in the metrics, as when
                        # it came in a 'd' frame of its own)
                        also_reached = self.deliver_local(also, packet)
                        if self.metrics is not None:
                            self.metrics.delivered(also_reached)
                self._frame_came(pos)
            elif kind == busframes.DELIVER:
                reached = self.deliver_local(uid, cast(bytes, rest))
            elif kind == busframes.ROOM:
                uids, leave_out, text = busframes.room_recipients(cast(bytes, rest).decode("utf-8"))
                data = text.encode("utf-8")
                reached = 0
                for member in uids:
                    reached += self.deliver_local(member, data, leave_out)
                if leave_out is not None:
                    self._frame_came(_pos_of(text))
            elif kind == busframes.KICK:
                self.kick_local(uid, cast(bytes, rest).decode("utf-8"))
                return
            else:
                self.replace_local(uid, cast(bytes, rest).decode("utf-8"))
                return
        except busframes.BadFrame:
            _log.warn("ignoring a malformed bus frame: {frame!r}", frame=frame[:80])
            return
        except Exception:
            _log.failure("handling a bus frame")
            return
        if self.metrics is not None:
            self.metrics.delivered(reached)

    def wait_frame(self, pos: int, result: T) -> Union[T, Deferred]:
        """``result`` once the 'x' frame of the message at ``pos`` that came
        on one of this node's connections has been handled here (the store
        script always publishes it to the sending connection's node, in pos
        order with every other frame: so every packet before it has been
        delivered here too): ``result`` itself when it has been already,
        else a Deferred firing with it.  The ``A`` waits for it, so acks
        never run ahead of deliveries.  Fires anyway after
        :attr:`frame_timeout` seconds (the subscription lost meanwhile, the
        connection gone from ``dev:<uid>``): the message is stored either
        way.  (One timer for every waiter, not a DelayedCall each: they wait
        in the order they came, each as long.)"""
        if self._frames_early.pop(pos, 1) is None:
            return result
        d: Deferred = Deferred()
        self._frame_waiters[pos] = (self._clock.seconds() + self.frame_timeout, d, result)
        if self._sweep_call is None:
            self._sweep_call = self._clock.callLater(self.frame_timeout, self._sweep_waiters)
        return d

    def _frame_came(self, pos: Optional[int]) -> None:
        """The frame of the message at ``pos`` that came on one of this
        node's connections has been handled: its waiting ``A`` goes on."""
        if pos is None:
            return
        waiters = self._frame_waiters
        waiter = waiters.pop(pos, None)
        if waiter is None:
            self._frame_early(pos)
            return
        if not waiters and self._sweep_call is not None:
            self._sweep_call.cancel()   # (none left to time out)
            self._sweep_call = None
        waiter[1].callback(waiter[2])

    def _frame_early(self, pos: int) -> None:
        early = self._frames_early
        early[pos] = None
        if len(early) > MAX_EARLY_FRAMES:   # (waiters that never came: a failed handler)
            del early[next(iter(early))]

    def _sweep_waiters(self) -> None:
        """Fire the waiters whose time is up (the oldest first); again when the next one's is."""
        self._sweep_call = None
        waiters = self._frame_waiters
        now = self._clock.seconds()
        while waiters:
            pos = next(iter(waiters))
            deadline, d, result = waiters[pos]
            if deadline > now:
                self._sweep_call = self._clock.callLater(deadline - now, self._sweep_waiters)
                return
            del waiters[pos]
            d.callback(result)

    # --- shutting down -----------------------------------------------------------

    def drain(self) -> Deferred:
        """Turn new logins away; every connection answers the packets it has,
        then gets ``C`` + 1001.  Fires when all are closed; cancelling it
        aborts whatever is left."""
        self.shutting_down = True
        sessions = self.sessions()
        _log.info("shutdown: closing {count} connections on node {node}", count=len(sessions),
                  node=self.node_id)
        closing = [session.go_away() for session in sessions]

        def cancel(d: Deferred) -> None:
            for session in sessions:
                session.abort()
        done: Deferred = Deferred(cancel)

        def all_closed(_: Any) -> None:
            if not done.called:
                done.callback(None)
        defer.DeferredList(closing, consumeErrors=True).addBoth(all_closed)
        return done


def _pos_of(packet: str) -> Optional[int]:
    """The ``pos`` a room packet ends with, or None."""
    at = packet.rfind(',"pos":')
    if at < 0:
        return None
    try:
        return int(packet[at + 7:-1])
    except ValueError:
        return None

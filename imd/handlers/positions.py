"""``S`` site (contract §4, §11): a courier's position, kept in Redis and
pushed at most once per ``[site] min_interval`` to its audience
(:class:`imd.stores.positions.PositionAudience`: with ``[privacy] positions
= orders`` the customers of its open orders and the members of the open
rooms whose meta tracks it, who get it with ``"room"``; with ``friends`` its
friends), read afresh for every push: after an order's or a room's close, on
whatever node, the next push leaves its customer or its members out.

Every valid ``S`` is acked and recorded (so the stored position is always the
latest).  Pushes are throttled per courier: when positions come faster than
``min_interval``, the ones in between are not pushed, and the newest is pushed
when the interval is over — nobody sees an older position last.
"""

from typing import Any, Dict, NamedTuple, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from imd import protocol
from imd.clock import Clock
from imd.handlers import Reply
from imd.handlers.ports import PositionAudience, Positions, SiteNode
from imd.stores.positions import Audience

_log = Logger()


class _Position(NamedTuple):
    """One position to push (its packet is made per audience: plain, or per room)."""
    server_id: str
    longitude: float
    latitude: float
    ts: int


class _Window:
    """One courier's push window: a push opens it for ``min_interval``;
    positions arriving meanwhile wait in ``pending`` (newest wins)."""
    __slots__ = ("timer", "pending")

    def __init__(self) -> None:
        self.timer: Any = None
        self.pending: Optional[_Position] = None


class SiteHandler:
    def __init__(self, positions: Positions, audience: PositionAudience, node: SiteNode, clock: Clock,
                 min_interval: float) -> None:
        self._positions = positions
        self._audience = audience
        self._node = node
        self._clock = clock
        self._min_interval = min_interval
        self._windows: Dict[int, _Window] = {}

    def handle(self, sender: int, packet: protocol.SitePacket) -> Deferred:
        ts = int(self._clock.seconds() * 1000)
        d = self._positions.record_site(sender, packet.longitude, packet.latitude, ts)
        return d.addCallback(self._recorded, sender, packet, ts)

    def _recorded(self, _: Any, sender: int, packet: protocol.SitePacket, ts: int) -> Reply:
        payload = _Position(self._node.next_server_id(), packet.longitude, packet.latitude, ts)
        window = self._windows.get(sender)
        if window is not None:
            window.pending = payload
        else:
            self._push(sender, payload)
            if self._min_interval > 0:
                window = self._windows[sender] = _Window()
                window.timer = self._clock.callLater(self._min_interval, self._window_over, sender, window)
        return Reply(protocol.ack(packet.id))

    def _window_over(self, sender: int, window: _Window) -> None:
        if window.pending is None:
            del self._windows[sender]
            return
        payload, window.pending = window.pending, None
        self._push(sender, payload)
        window.timer = self._clock.callLater(self._min_interval, self._window_over, sender, window)

    def _push(self, sender: int, payload: _Position) -> None:
        d = self._audience.audience(sender, int(self._clock.seconds() * 1000))
        d.addCallback(self._deliver, sender, payload)
        d.addErrback(lambda f: _log.warn("position push of {uid} failed: {why}", uid=sender,
                                         why=f.getErrorMessage()))

    def _deliver(self, audience: Audience, sender: int, position: _Position) -> None:
        if audience.users:
            payload = protocol.site(position.server_id, sender, position.longitude, position.latitude, position.ts)
            for uid in audience.users:
                self._node.deliver(uid, payload)
        for room, members in audience.rooms:
            # (the courier, a member too, has its own position)
            others = [m for m in members if m != sender]
            if others:
                self._node.deliver_room(others, protocol.room_site(position.server_id, sender, room,
                                                                   position.longitude, position.latitude,
                                                                   position.ts))

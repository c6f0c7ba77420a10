"""``S`` site (contract §4, §11): a courier's position, kept in Redis and
pushed at most once per ``[site] min_interval`` to its audience
(:class:`imd.stores.positions.PositionAudience`: with ``[privacy] positions
= orders`` the customers of its open orders, with ``friends`` its friends),
read afresh for every push: after an order's close, on whatever node, the
next push leaves its customer out.

Every valid ``S`` is acked and recorded (so the stored position is always the
latest).  Pushes are throttled per courier: when positions come faster than
``min_interval``, the ones in between are not pushed, and the newest is pushed
when the interval is over — nobody sees an older position last.
"""

from typing import Any, Dict, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from imd import protocol
from imd.clock import Clock
from imd.handlers import Reply
from imd.handlers.ports import Node, PositionAudience, Positions
from imd.stores.positions import Audience

_log = Logger()


class _Window:
    """One courier's push window: a push opens it for ``min_interval``;
    positions arriving meanwhile wait in ``pending`` (newest wins)."""
    __slots__ = ("timer", "pending")

    def __init__(self) -> None:
        self.timer: Any = None
        self.pending: Optional[bytes] = None


class SiteHandler:
    def __init__(self, positions: Positions, audience: PositionAudience, node: Node, clock: Clock,
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
        payload = protocol.site(self._node.next_server_id(), sender, packet.longitude, packet.latitude, ts)
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

    def _push(self, sender: int, payload: bytes) -> None:
        d = self._audience.audience(sender, int(self._clock.seconds() * 1000))
        d.addCallback(self._deliver, payload)
        d.addErrback(lambda f: _log.warn("position push of {uid} failed: {why}", uid=sender,
                                         why=f.getErrorMessage()))

    def _deliver(self, audience: Audience, payload: bytes) -> None:
        for uid in audience.users:
            self._node.deliver(uid, payload)

"""The server API's logic (contract §7.4): what the platform's backend asks
of imd without a WebSocket.  imd.http.api checks the caller and the JSON;
this does the work, through the stores and the node.

``send`` stores a system ``s`` message (from 0) for each recipient once per
(recipient, id) in one script, then delivers the stored ones through the
node: in an http-only process the node has no connections of its own, and
delivery goes to the nodes that hold the recipients' connections.
"""

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, cast

from twisted.internet import defer

from imd import protocol
from imd.clock import Clock
from imd.errors import ImdError
from imd.handlers.ports import Friends, Messages, Node, Presence
from imd.handlers.recall import Recaller

if TYPE_CHECKING:
    from imd.handlers.erasure import Eraser


# About this many bytes of packets are stored and delivered per slice of a
# send to many recipients (imd.stores' script and one publish per slice).
FANOUT_SLICE_BYTES = 256 * 1024


def new_message_id(clock: Clock) -> str:
    """An id for a system message sent without one: unique, and sorted by time."""
    return "api-%x-%s" % (int(clock.seconds() * 1000), os.urandom(6).hex())


class ServerApi:
    def __init__(self, messages: Messages, presence: Presence, friends: Friends, node: Node, clock: Clock,
                 order_lifecycle: Callable[[], Any] = lambda: None, recaller: Optional[Recaller] = None,
                 eraser: Optional["Eraser"] = None) -> None:
        self._messages = messages
        self._presence = presence
        self._friends = friends
        self._node = node
        self._clock = clock
        self._order_lifecycle = order_lifecycle
        self._recaller = recaller
        self._eraser = eraser

    @defer.inlineCallbacks
    def send(self, recipients: Sequence[int], msg: Dict[str, Any], packet_id: Optional[str]) -> Any:
        """Store and deliver; fires with ``(id, number of messages stored now)``.

        In slices of about :data:`FANOUT_SLICE_BYTES` of packets: each
        slice is stored (one script) and delivered (its publish to the other
        nodes leaves at the end of that turn) before the next one is stored;
        while Redis stores a slice the reactor serves everybody else.  One
        script and one publish for a 64 KiB message to 1000 users moved 64 MB
        at once and held the reactor for 420-474 ms.  A slice that fails
        (Redis away) fails the call: the slices before it are stored and
        delivered, and a retry with the same ``id`` stores the rest only.
        """
        packet_id = packet_id or new_message_id(self._clock)
        ts = int(self._clock.seconds() * 1000)
        head, tail = protocol.system_message_parts(packet_id, msg, ts)
        recipients = list(recipients)
        size = max(1, FANOUT_SLICE_BYTES // (len(head) + len(tail) + 20))
        stored_count = 0
        for start in range(0, len(recipients), size):
            chunk = recipients[start:start + size]
            # ([redis] min_replicas: stored means on the replicas too)
            stored = yield self._messages.store_system_messages(packet_id, chunk, head, tail, ts)
            if not self._messages.publishes:   # (else the script published them, in pos order)
                for to, pos in stored:
                    self._node.deliver(to, protocol.with_pos(head + b"%d" % to + tail, pos))
            stored_count += len(stored)
        return packet_id, stored_count

    def online(self, uids: Sequence[int]) -> Any:
        """``{uid: bool}``, one round trip."""
        return self._presence.online_many(list(uids))

    @defer.inlineCallbacks
    def kick(self, uid: int, reason: str) -> Any:
        """Close every connection of ``uid`` on every node; fires with how
        many connections were registered for it when asked."""
        connections = yield self._presence.connection_count(uid)
        yield self._node.kick(uid, reason)
        return connections

    def friends(self, a: int, b: int, add: bool) -> Any:
        return self._friends.add_friends(a, b) if add else self._friends.remove_friends(a, b)

    def close_order(self, order_id: int) -> Any:
        """The order lifecycle's close (contract §7.3); ``{"order", "ends_at"}``."""
        lifecycle = self._order_lifecycle()
        if lifecycle is None:
            raise ImdError("unavailable", "closing orders is not available in this imd")
        return defer.maybeDeferred(lifecycle.close, order_id)


    def put_order(self, order_id: int, customer: int, courier: Optional[int]) -> defer.Deferred:
        """Create or update an order (``POST /IM/api/orders``); ``{"order", "customer", "courier"}``."""
        lifecycle = self._order_lifecycle()
        if lifecycle is None:
            raise ImdError("unavailable", "orders are not available in this imd")
        return defer.maybeDeferred(lifecycle.put, order_id, customer, courier)

    def delete_message(self, sender: int, msg_id: str, to: Optional[int], room: Optional[str] = None) -> defer.Deferred:
        """The moderation delete (contract v3 §11) of a message to ``to`` or
        in ``room``: fires with True, False (already recalled or deleted) or
        None (no such message)."""
        if self._recaller is None:
            raise ImdError("unavailable", "deleting messages is not available in this imd")
        if room is not None:
            return self._recaller.delete_room(sender, room, msg_id)
        return self._recaller.delete(sender, cast(int, to), msg_id)


    def erase_user(self, uid: int) -> defer.Deferred:
        """Erasure of ``uid`` (contract v3 §11): fires with the number of messages recalled now."""
        if self._eraser is None:
            raise ImdError("unavailable", "erasure is not available in this imd")
        return self._eraser.erase(uid)


def recipients_list(value: Any, limit: int) -> List[int]:
    """``to`` of ``send``: a uid or a list of 1..limit uids (duplicates once), or ValueError."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("to: at least one recipient")
    if len(values) > limit:
        raise ValueError("to: at most %d recipients" % limit)
    uids = [protocol.parse_uid(v, "to") for v in values]
    return list(dict.fromkeys(uids))

"""``t`` and ``i``: store in Redis (friend check, dedup, MQ), then deliver.

The ``A`` goes back once the message is stored (and, with ``[redis]
min_replicas``, on that many replicas), with the message's ``pos`` (its
accept order, contract §10); every connection of the recipient and every
other connection of the sender (contract §2 item 3: not the one it came
on), on this node and the others, gets it with that ``pos``: the store
script publishes it to the nodes of their connections, this one included
(imd/stores/lua/fanout.lua), so every connection gets its packets in
``pos`` order; the ``A`` leaves once this node has handled the message's
own frame (:meth:`imd.node.LocalNode.wait_frame`), so acks never run ahead
of deliveries.  With ``[redis] min_replicas`` nothing may reach a client
before the replicas have it: the node delivers it once the store fires.  A retry already
stored is acked with ``"dup": true`` and the first store's ``pos``, and
delivered to nobody.

A ``t``'s text goes through the :class:`imd.moderation.TextPolicy` first
(``[privacy] mask``, ``[moderation]``): what is stored, delivered, logged
and pushed is what it gives back, and the ``A`` says ``"masked": true``
when that differs.
"""

from typing import Optional, Union, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from imd import protocol
from imd.clock import Clock
from imd.errors import ImdError
from imd.handlers import Reply
from imd.handlers.ports import Messages, Node
from imd.moderation import TextPolicy
from imd.stores.messages import DUPLICATE, NOT_FRIEND, StoreResult

_log = Logger()


class MessageHandler:
    def __init__(self, store: Messages, node: Node, clock: Clock, log_messages: bool = False,
                 text_policy: Optional[TextPolicy] = None) -> None:
        self._store = store
        self._node = node
        self._clock = clock
        self._log_messages = log_messages
        # [privacy] mask, [moderation]: applied to every t before it is stored
        self._text_policy = text_policy if text_policy is not None and text_policy.active else None

    def handle(self, sender: int, packet: protocol.MessagePacket) -> Deferred:
        if not self._node.healthy:
            # Without its subscription this node cannot route replies or
            # deliveries reliably: no A for what it cannot stand behind.
            raise ImdError("unavailable", "this node lost its message bus, retry")
        masked = False
        if self._text_policy is not None and packet.type == "t":
            # the original text goes no further than this (contract §11)
            packet.msg, masked = self._text_policy.apply(cast(str, packet.msg))
        ts = int(self._clock.seconds() * 1000)
        payload = protocol.message_json(packet, sender, ts)
        # (with [redis] min_replicas it fires once the replicas have it:
        # nothing is delivered or acked before)
        d = self._store.store_message(sender, packet.to, packet.dedup_id, payload, ts, packet.origin)
        return d.addCallback(self._stored, sender, packet, payload, masked)

    def _stored(self, result: StoreResult, sender: int, packet: protocol.MessagePacket, payload: bytes,
                masked: bool) -> Union[Reply, Deferred]:
        status, pos = result
        if status == NOT_FRIEND:
            raise ImdError("not_friend", "user %d is not your friend" % packet.to)
        if status == DUPLICATE:
            # stored and delivered the first time: acked again, saying so, nothing more
            return Reply(protocol.ack_duplicate(packet.id, masked, pos))
        if self._log_messages:
            # ("message" is a reserved key of Twisted's legacy log bridge)
            _log.info("message uid={uid} to={to} node={node}: {packet}", uid=sender, to=packet.to,
                      node=self._node.node_id, packet=payload.decode("utf-8", "replace"))
        reply = Reply(protocol.ack_masked(packet.id, pos) if masked else protocol.ack_stored(packet.id, pos))
        if self._store.publishes:
            # the store script published it, in pos order; the A goes once
            # this node has handled its frame (acks never outrun deliveries)
            if packet.origin is not None:
                return self._node.wait_frame(pos, reply)
            return reply
        # ([redis] min_replicas: stored on the replicas, delivered now)
        delivered = protocol.with_pos(payload, pos)
        node = self._node
        if packet.to != sender:
            node.deliver(packet.to, delivered)
        node.deliver(sender, delivered, packet.origin)   # its other devices (contract §2 item 3)
        return reply

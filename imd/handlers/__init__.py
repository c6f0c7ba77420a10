"""Packet handlers: the logic of each packet type, no sockets.

A handler takes the sender's uid and a typed packet and returns a
:class:`Reply` (or a Deferred of one), or raises :class:`imd.errors.ImdError`.
"""


class Reply:
    """What the transport does for one client packet, in order: send ``frame``
    back to the sender, then ``payload`` to every connection of ``deliver_to``.
    """
    __slots__ = ("frame", "deliver_to", "payload")

    def __init__(self, frame, deliver_to=None, payload=None):
        self.frame = frame
        self.deliver_to = deliver_to
        self.payload = payload

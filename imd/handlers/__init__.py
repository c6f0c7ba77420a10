"""Packet handlers: the logic of each packet type, no sockets.

A handler takes the sender's uid and a typed packet and returns a
:class:`Reply` (or a Deferred of one), or raises :class:`imd.errors.ImdError`.
It reaches other users only through the node (``node.deliver``), and stores
only through imd.stores.
"""


class Reply:
    """The one reply a client packet gets: ``frame`` back to the sender."""
    __slots__ = ("frame",)

    def __init__(self, frame: bytes) -> None:
        self.frame = frame

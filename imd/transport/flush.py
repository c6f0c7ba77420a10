"""Send what a reactor turn wrote at the end of that turn, not in the next one.

Twisted's ``transport.write`` only buffers: the bytes leave when the next
poll reports the socket writable.  On the message path that costs a whole
reactor turn twice per message (the store command waits one turn to go to
Redis, the ``A`` one more turn to go to the client), and a turn of a busy
node is several milliseconds: at a steady load that was most of the ack
latency (bench/run.py's open-loop run; docs/performance.md).

:class:`TurnFlusher` remembers the transports written to during a turn and,
from a ``callLater(0)`` that runs as soon as the turn's events are handled,
calls their ``doWrite`` (the method the reactor itself would call next
turn).  Many writes to one transport in a turn still leave in one ``send``.
A socket that cannot take everything keeps the rest in Twisted's buffer and
the reactor goes on as usual; errors are left to the reactor's own
``doWrite``, which meets them again on its next poll.

This is the one module that reads Twisted's private transport state
(``_tempDataBuffer``, ``_writeDisconnecting``).  ``IMD_PLAIN_TWISTED=1`` in
the environment turns it off (writes leave on the reactor's next poll, as in
stock Twisted); tests/test_flush.py runs the same traffic both ways.
"""

import os
from typing import Any, Dict


def enabled() -> bool:
    return os.environ.get("IMD_PLAIN_TWISTED", "") not in ("1", "true", "yes")


class TurnFlusher:
    def __init__(self, clock: Any, on: bool = True) -> None:
        self._clock = clock
        self._written: Dict[int, Any] = {}   # id(transport) -> transport, in write order
        self._call: Any = None
        self.on = on and enabled()

    def written(self, transport: Any) -> None:
        """``transport`` was written to during this turn."""
        if not self.on:
            return
        self._written[id(transport)] = transport
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        self._call = None
        written, self._written = self._written, {}
        for transport in written.values():
            do_write = getattr(transport, "doWrite", None)
            if (do_write is None or not transport.connected or transport.disconnecting
                    or getattr(transport, "_writeDisconnecting", False)):
                continue   # the reactor's next turn writes, or closes, as usual
            if transport.dataBuffer or transport._tempDataBuffer:
                do_write()

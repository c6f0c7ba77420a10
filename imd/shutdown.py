"""Graceful shutdown: what SIGTERM does, within ``[imd] shutdown_grace``.

twistd answers SIGTERM by stopping the top service and waiting for the
Deferred it returns.  Twisted's ``MultiService`` stops its children all at
once; :class:`GracefulMultiService` stops them one after another, last added
first, so the order of ``App.build_service`` is the order of shutdown:

1. the listeners stop accepting;
2. :class:`ConnectionDrainer`: every connection finishes the packets it has
   received (their ``A`` or ``E`` goes out), then gets ``C`` "server shutting
   down" and close 1001;
3. the migrator finishes its batch;
4. the Redis and MySQL connections close.

A child with a ``begin_stop()`` is told as the stop begins, before anyone
is stopped: the migrator's child process (imd.migrator_child) gets its
SIGTERM then and finishes its batch while the connections drain; it is
waited for in its turn.

Whatever is still running when the grace is over is cancelled (connections
are dropped), and the process exits 0.
"""

import signal
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

_log = Logger()


class GracefulMultiService(MultiService):
    def __init__(self, grace: float, clock: Any, reactor: Any = None) -> None:
        super().__init__()
        self.grace = grace
        self._clock = clock
        self._reactor = reactor

    def stopService(self) -> Deferred:
        Service.stopService(self)
        deadline = self._clock.seconds() + self.grace
        for child in list(self):
            begin_stop = getattr(child, "begin_stop", None)
            if begin_stop is not None and child.running:
                begin_stop()
        return self._stop_children(deadline)

    @defer.inlineCallbacks
    def _stop_children(self, deadline: float) -> Any:
        for child in reversed(list(self)):
            if not child.running:
                continue
            d = defer.maybeDeferred(child.stopService)
            # Even a step that starts after the deadline gets a moment: closing
            # sockets and pools is quick and worth doing.
            d.addTimeout(max(deadline - self._clock.seconds(), 0.1), self._clock)
            try:
                yield d
            except defer.TimeoutError:
                _log.warn("shutdown: {service} did not finish within [imd] shutdown_grace = {grace}s; "
                          "cancelled", service=_name(child), grace=self.grace)
            except Exception:
                _log.failure("shutdown: stopping {service} failed", service=_name(child))
        self._exit_cleanly()

    def _exit_cleanly(self) -> None:
        # twistd re-raises the signal that stopped the reactor once it is done
        # (so the exit status would be "killed by SIGTERM").  SIGTERM is how an
        # operator or systemd asks for a normal stop, and the stop was
        # orderly: report success.
        if self._reactor is None:
            return  # a group inside the top service
        if getattr(self._reactor, "_exitSignal", None) == signal.SIGTERM:
            self._reactor._exitSignal = None
        _log.info("shutdown complete")


def _name(service: Any) -> str:
    return service.name or service.__class__.__name__


class ConnectionDrainer(Service):
    """On stop: the node turns new logins away and every connection finishes
    its packets, gets ``C`` + 1001 and is closed (imd.node.LocalNode.drain)."""

    name = "websocket-drainer"

    def __init__(self, node: Any) -> None:
        self._node = node

    def stopService(self) -> Deferred:
        super().stopService()
        return self._node.drain()

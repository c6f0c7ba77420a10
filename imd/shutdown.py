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

Whatever is still running when the grace is over is cancelled (connections
are dropped), and the process exits 0.
"""

import signal

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger

_log = Logger()


class GracefulMultiService(MultiService):
    def __init__(self, grace, clock, reactor=None):
        super().__init__()
        self.grace = grace
        self._clock = clock
        self._reactor = reactor

    def stopService(self):
        Service.stopService(self)
        return self._stop_children(self._clock.seconds() + self.grace)

    @defer.inlineCallbacks
    def _stop_children(self, deadline):
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

    def _exit_cleanly(self):
        # twistd re-raises the signal that stopped the reactor once it is done
        # (so the exit status would be "killed by SIGTERM").  SIGTERM is how an
        # operator or systemd asks for a normal stop, and the stop was
        # orderly: report success.
        if self._reactor is None:
            return  # a group inside the top service
        if getattr(self._reactor, "_exitSignal", None) == signal.SIGTERM:
            self._reactor._exitSignal = None
        _log.info("shutdown complete")


def _name(service):
    return service.name or service.__class__.__name__


class ConnectionDrainer(Service):
    """On stop: every WebSocket connection finishes its packets, gets ``C`` +
    1001, and is closed; new logins are turned away the same way."""

    name = "websocket-drainer"

    def __init__(self, app):
        self._app = app

    def stopService(self):
        super().stopService()
        app = self._app
        app.shutting_down = True
        connections = [c for uid in app.sessions.users() for c in list(app.sessions.sessions_of(uid))]
        _log.info("shutdown: closing {count} connections on node {node}", count=len(connections),
                  node=app.node_id)
        closing = [connection.go_away() for connection in connections]

        def cancel(d):
            for connection in connections:
                connection.dropConnection(abort=True)
        done = defer.Deferred(cancel)
        defer.DeferredList(closing).addBoth(lambda _: done.called or done.callback(None))
        return done

"""A listener that binds before anything else starts, or stops start-up.

twistd calls ``privilegedStartService`` on the whole service tree before any
``startService``: a listener that binds there makes a port that cannot be
bound stop the process with one line on stderr and exit status 1, before the
node or the process registers anywhere in Redis (those start in
``startService``).
"""

import sys
from typing import Any, List

from twisted.application.service import Service
from twisted.python.failure import Failure


class ListeningService(Service):
    """Listens on ``endpoint`` with ``factory`` from ``privilegedStartService``
    on (or ``startService`` when nobody called that); ``port`` is the
    listening port.  A port that cannot be bound: one line, exit status 1."""

    def __init__(self, description: str, endpoint: Any, factory: Any, role: str = "") -> None:
        self.description = description
        self.name = "%s listener %s" % (role, description)
        self._endpoint = endpoint
        self._factory = factory
        self.port: Any = None
        self._listen_called = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if not self._listen_called:
            self.listen()

    def startService(self) -> None:
        super().startService()
        if not self._listen_called:
            self.listen()

    def listen(self) -> None:
        self._listen_called = True
        outcome: List[Any] = []   # the listening port, or the Failure of listen
        self._endpoint.listen(self._factory).addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            failure = outcome[0]
            why = getattr(failure.value, "socketError", None) or failure.value
            text = getattr(why, "strerror", None) or str(why)
            # the process's own stderr: twistd has already turned sys.stderr into log lines
            stderr = sys.__stderr__ or sys.stderr
            stderr.write("imd: cannot listen on %s: %s\n" % (self.description, text.lower()))
            stderr.flush()
            raise SystemExit(1)
        self.port = outcome[0] if outcome else None

    def stopService(self) -> Any:
        super().stopService()
        self._listen_called = False
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

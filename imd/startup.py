"""Start-up: a process takes requests once Redis answers and its keys are set.

The listeners bind first thing (imd.listeners: a port that cannot be bound
stops start-up before anything registers), which is before the Redis
connection is up.  A request that needed Redis then failed: ``POST
/IM/token`` right after the http port opened answered 503 "storage
unavailable".  Rather than open the ports late (a port that cannot be bound
would then be found late, and ``/healthz`` could not say why the process
is not serving), early requests are *held*:

- :class:`StartupGate` is *starting* until the Redis command connection is
  up, the RSA key pair is in Redis (a process with the ``ws`` or ``http``
  role: tokens are signed and checked with it) and, in a ws node, the node
  is subscribed and registered (imd.bus: it takes logins).  Then it is
  ready, for good: later outages are each component's business, as before.
- While it is starting, a request under ``/IM/`` (imd.http.site) and a
  WebSocket login (imd.auth.TokenVerifier) wait for it, for at most
  :data:`HOLD` seconds; past that the answer is 503 (``Retry-After``) or the
  login is refused as "service unavailable", as when Redis is down.
- ``/healthz`` answers 503 with ``"status": "starting"`` meanwhile.

A gate that was never started (imd-admin, tests that start the stores by
hand) holds nothing.

And what a process warns about when it starts (:func:`start_warnings`):
``[http] auth = dev`` must never be reachable through a proxy.
"""

from typing import TYPE_CHECKING, Any, Callable, List, Optional

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from imd.errors import StoreUnavailable

if TYPE_CHECKING:
    from imd.config import Settings
    from imd.stores.redis import RedisClient
    from imd.stores.tokens import TokenStore

_log = Logger()

# Seconds a request or login that came while starting waits for the end of it.
HOLD = 10.0
# Seconds between two looks at Redis while starting.
POLL_INTERVAL = 0.1
# Seconds of starting before what is awaited is logged as a warning.
QUIET_START = 3.0


class StillStarting(StoreUnavailable):
    """The process did not finish starting within the hold."""


class StartupGate(Service):
    name = "startup-gate"

    def __init__(self, client: "RedisClient", tokens: "TokenStore", clock: Any, needs_keys: bool,
                 node_ready: Optional[Callable[[], bool]] = None, hold: float = HOLD) -> None:
        """``needs_keys``: wait for the key pair; ``node_ready()``: a ws
        node's registration (imd.bus.NodeBus.healthy)."""
        self._client = client
        self._tokens = tokens
        self._clock = clock
        self._needs_keys = needs_keys
        self._node_ready = node_ready
        self.hold = hold
        self.ready = False
        self._waiters: List[Deferred] = []
        self._loop: Optional[task.LoopingCall] = None
        self._looking = False
        self._started_at = 0.0
        self._awaiting = ""      # what it waits for now
        self._logged = ""        # what it waits for, as last logged

    @property
    def starting(self) -> bool:
        """Started and not yet ready: requests wait (see the module)."""
        return bool(self.running) and not self.ready

    @property
    def waiting(self) -> int:
        """Requests and logins held right now."""
        return len(self._waiters)

    def wait(self, timeout: Optional[float] = None) -> Deferred:
        """Fires once the process is ready (at once when it is not starting);
        :class:`StillStarting` after ``timeout`` (default: the hold)."""
        if not self.starting:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        seconds = self.hold if timeout is None else timeout

        def gave_up(failure: Failure) -> None:
            failure.trap(defer.TimeoutError, defer.CancelledError)
            if d in self._waiters:
                self._waiters.remove(d)
            raise StillStarting("still starting after %g s (%s)" % (seconds, self._awaiting or "redis"))
        return d.addTimeout(seconds, self._clock).addErrback(gave_up)

    def startService(self) -> None:
        super().startService()
        if self.ready:
            return
        self._started_at = self._clock.seconds()
        self._loop = task.LoopingCall(self._look)
        self._loop.clock = self._clock
        self._loop.start(POLL_INTERVAL, now=True)

    def stopService(self) -> None:
        super().stopService()
        self._stop_looking()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.cancel()   # StillStarting, through gave_up

    def _stop_looking(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _look(self) -> Optional[Deferred]:
        if self._looking or self.ready:
            return None
        if not self._client.connected:
            address = self._client.address
            self._awaiting_now("redis at %s:%s does not answer yet" % (address.host, address.port))
            return None
        if not self._needs_keys:
            self._keys_checked(True)
            return None
        self._looking = True
        d = self._tokens.has_key_pair()
        d.addCallbacks(self._keys_checked, lambda f: f.trap(StoreUnavailable))
        d.addBoth(self._looked)
        return d

    def _looked(self, _: object) -> None:
        self._looking = False

    def _keys_checked(self, key_pair: bool) -> None:
        if not self.running or self.ready:
            return
        if not key_pair:
            self._awaiting_now("the key pair is not in redis (run imd-admin keys init)")
            return
        if self._node_ready is not None and not self._node_ready():
            self._awaiting_now("the node is not registered in redis yet")
            return
        self.ready = True
        self._stop_looking()
        _log.info("started in {seconds:.2f} s: redis answers{keys}; taking requests",
                  seconds=self._clock.seconds() - self._started_at,
                  keys=" and the key pair is set" if self._needs_keys else "")
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def _awaiting_now(self, what: str) -> None:
        self._awaiting = what
        if what != self._logged and self._clock.seconds() - self._started_at >= QUIET_START:
            _log.warn("starting: {what}; requests wait up to {hold:g} s, then get 503, and /healthz says "
                      "starting", what=what, hold=self.hold)
            self._logged = what


# Logged at start by a process whose http role runs with [http] auth = dev.
DEV_MODE_WARNING = (
    "[http] auth = dev: POST /IM/token trusts {\"id\": N} from whoever reaches it from this machine. "
    "It refuses requests carrying proxy headers, but a forwarder that adds none (nginx with a plain "
    "proxy_pass, stunnel, socat, an ssh tunnel) cannot be told from a local caller: never make this "
    "listener reachable through a proxy or a port forward, or it hands out every user's token. "
    "Anything but development: [http] auth = hs256:<secret> (docs/http.md)")


def start_warnings(settings: "Settings") -> List[str]:
    """What a process with these settings warns about when it starts."""
    warnings = []
    if "http" in settings.imd.roles and settings.http.auth == "dev":
        warnings.append(DEV_MODE_WARNING)
    return warnings


class StartWarnings(Service):
    """Logs :func:`start_warnings` when the process starts (once twistd's
    log observer is in place)."""

    name = "start-warnings"

    def __init__(self, warnings: List[str]) -> None:
        self.warnings = warnings

    def startService(self) -> None:
        super().startService()
        for text in self.warnings:
            _log.warn("{text}", text=text)

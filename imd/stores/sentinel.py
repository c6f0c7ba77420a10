"""Where the Redis master is: Redis Sentinel (``[redis] sentinels``, ``master_name``).

:class:`SentinelMaster` is shared by every Redis connection of a process (the
command connection, the node bus subscription, the migrator's own client).
It does what Redis' guidelines for Sentinel clients ask:

- on every connection attempt, ask the sentinels in turn
  ``SENTINEL get-master-addr-by-name <master_name>``; the first answer wins
  and that sentinel is asked first next time (:meth:`endpoint`);
- the connection then asks ``ROLE`` after its AUTH/SELECT and drops itself
  unless it reached a master (imd.stores.redis ``check_role``): a sentinel
  that has not yet heard of a failover sends us to a demoted master;
- one subscription to ``+switch-master`` on a sentinel: when the master
  moves, every connection still on the old address is dropped and
  reconnects through the sentinels (:meth:`follow`).  A master that was
  demoted without telling us also answers writes with ``READONLY``, which
  drops the connection too (imd.stores.redis).

The ``url`` of ``[redis]`` still gives the db index and the password; its
host and port are not used.

Why not txredisapi's own ``Sentinel``/``master_for``: it builds its own
connection factory and pool (this adapter runs one connection under a
``ClientService`` with its own reply watchdog); it keeps a
``lazyConnection`` to each sentinel with no reply timeout, so a call to a
sentinel that is down waits for ever while each discovery adds another;
its discovery timer runs on the global reactor (no injected clock, no
``task.Clock`` in tests); and it only looks for a new master when a
connection breaks: it has no ``+switch-master`` subscription, so a master
demoted while still up (a manual failover, a healed partition) keeps it on
a replica.  The sentinels are asked through imd.stores.redis like Redis
itself (``ask_once``, ``RedisSubscriber``): the same write path, the same
reply timeout, replies decoded the same way.
"""

from collections import namedtuple
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from imd.errors import StoreUnavailable
from imd.stores.redis import RedisSubscriber, ask_once

_log = Logger()

SWITCH_CHANNEL = "+switch-master"

Address = Tuple[str, int]

# What RedisSubscriber needs of an address; a sentinel gets no AUTH, no SELECT.
_SentinelAddress = namedtuple("_SentinelAddress", "host port db password")


@implementer(IStreamClientEndpoint)
class _MasterEndpoint:
    """Connects to whatever address the sentinels give at each attempt."""

    def __init__(self, sentinel: "SentinelMaster") -> None:
        self._sentinel = sentinel

    def connect(self, factory: Any) -> Deferred:
        sentinel = self._sentinel

        def reach(address: Address) -> Deferred:
            host, port = address
            return TCP4ClientEndpoint(sentinel.reactor, host, port, timeout=sentinel.timeout).connect(factory)
        return sentinel.resolve().addCallback(reach)

    def __repr__(self) -> str:
        return "<master %r through sentinels %s>" % (self._sentinel.master_name, self._sentinel.sentinels_text)


@implementer(IStreamClientEndpoint)
class _SentinelEndpoint:
    """Each attempt of the ``+switch-master`` subscription goes to the next sentinel."""

    def __init__(self, sentinel: "SentinelMaster") -> None:
        self._sentinel = sentinel
        self._next = 0

    def connect(self, factory: Any) -> Deferred:
        sentinel = self._sentinel
        host, port = sentinel.sentinels[self._next % len(sentinel.sentinels)]
        self._next += 1
        return TCP4ClientEndpoint(sentinel.reactor, host, port, timeout=sentinel.timeout).connect(factory)


class SentinelMaster(Service):
    """The master of ``master_name`` as the sentinels see it, and who to tell when it moves."""

    name = "redis-sentinel"

    def __init__(self, sentinels: Sequence[Address], master_name: str, timeout: float, clock: Any,
                 reactor: Any) -> None:
        self.sentinels: List[Address] = list(sentinels)
        self.master_name = master_name
        self.timeout = timeout
        self.clock = clock
        self.reactor = reactor
        self.master: Optional[Address] = None   # the last address a sentinel gave
        self.switch_events = 0                  # +switch-master messages for our master
        self._followers: List[Callable[[str, int], None]] = []
        self._events = RedisSubscriber(
            _SentinelAddress("sentinels", 0, 0, None), timeout, clock, reactor, [SWITCH_CHANNEL],
            on_message=self._switch_message, on_subscribed=self._events_subscribed,
            endpoint=lambda: _SentinelEndpoint(self), max_retry_delay=1.0, name="sentinel subscription")

    @property
    def sentinels_text(self) -> str:
        return ", ".join("%s:%d" % s for s in self.sentinels)

    # --- service ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._events.startService()

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        return self._events.stopService()

    # --- for the Redis connections ------------------------------------------------

    def endpoint(self) -> _MasterEndpoint:
        """The ``endpoint`` hook of RedisClient / RedisSubscriber."""
        return _MasterEndpoint(self)

    def follow(self, on_switch: Callable[[str, int], None]) -> None:
        """``on_switch(host, port)`` whenever the master is known to have moved
        (a client's ``follow_master``)."""
        self._followers.append(on_switch)

    @defer.inlineCallbacks
    def resolve(self) -> Any:
        """The master's ``(host, port)``: the first sentinel that knows it;
        StoreUnavailable when none does."""
        problems = []
        for sentinel in list(self.sentinels):
            host, port = sentinel
            try:
                reply = yield ask_once(self.reactor, self.clock, host, port,
                                       ("SENTINEL", "get-master-addr-by-name", self.master_name), self.timeout)
            except StoreUnavailable as e:
                problems.append(str(e))
                continue
            if not reply or len(reply) < 2:
                problems.append("%s:%d does not monitor %r" % (host, port, self.master_name))
                continue
            # Redis' guidelines: the sentinel that answered is asked first next time.
            if self.sentinels[0] != sentinel:
                self.sentinels.remove(sentinel)
                self.sentinels.insert(0, sentinel)
            address = (str(reply[0]), int(reply[1]))
            self._learned(address)
            return address
        why = "; ".join(problems)
        _log.warn("no sentinel gave the master {name!r}: {why}", name=self.master_name, why=why)
        raise StoreUnavailable("no sentinel gave the master %r: %s" % (self.master_name, why))

    # --- failovers -------------------------------------------------------------------

    def _learned(self, address: Address) -> None:
        # Only recorded: a sentinel that has not yet heard of a failover may
        # answer the old address for a moment, and the ROLE check turns that
        # away.  Connections are moved by +switch-master alone.
        if address != self.master:
            _log.info("sentinels give {new} as redis master {name!r}", name=self.master_name,
                      new="%s:%d" % address)
        self.master = address

    def _switch_message(self, message: Any) -> None:
        # "<master name> <old ip> <old port> <new ip> <new port>"
        fields = message.split()
        if len(fields) != 5 or fields[0] != self.master_name or not fields[4].isdigit():
            return
        self.switch_events += 1
        address = (fields[3], int(fields[4]))
        _log.warn("+switch-master: redis master {name!r} moved from {old} to {new}", name=self.master_name,
                  old="%s:%s" % (fields[1], fields[2]), new="%s:%d" % address)
        self.master = address
        for follower in list(self._followers):
            follower(*address)

    def _events_subscribed(self) -> None:
        # A switch may have happened while no sentinel was listened to: ask.
        self.resolve().addErrback(lambda f: None)

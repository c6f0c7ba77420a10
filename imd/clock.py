"""What imd needs of time: the reactor, or a test's
``twisted.internet.task.Clock``.

Twisted's own ``IReactorTime`` is a zope interface, which mypy (without a
plugin) reads as a class whose methods take no ``self``; this Protocol says
the same thing in a form mypy checks.  Where a Twisted API asks for an
``IReactorTime`` (``LoopingCall.clock``, ``deferLater``), :func:`reactor_time`
hands the same object over."""

from typing import Any, Callable, Protocol, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Clock(Protocol):

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kw: object) -> IDelayedCall: ...


def reactor_time(clock: Clock) -> IReactorTime:
    """``clock`` for a Twisted API that is annotated with ``IReactorTime``."""
    return cast(IReactorTime, clock)

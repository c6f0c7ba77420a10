"""``imd-admin top``: a live view of every imd process, refreshed every second.

Each refresh reads the process registry and the queue from Redis
(imd.stores.processes, imd.stores.deadletter) and every registered
``/metrics`` at once; imd.admin.top_figures turns that into a screen.

On a terminal it is a full-screen view drawn with the standard library's
``curses`` (no dependency: a table redrawn in place is all it needs), which
quits on ``q`` or Ctrl-C.  When stdout is not a terminal it prints one plain
line per refresh instead.  ``--iterations N`` stops after N refreshes.
"""

import argparse
import sys
import typing
from typing import TYPE_CHECKING, Any, Callable, Dict, Generator, Optional, TextIO, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from zope.interface import implementer

from imd.errors import StoreUnavailable
from imd.admin.top_figures import Frame, NodeHistory, build_frame, parse_metrics, plain_line, screen_lines

if TYPE_CHECKING:
    import curses

    from imd.app import App

_log = Logger()


class Collector:
    """What one refresh knows: Redis's view and each process's ``/metrics``."""

    def __init__(self, app: "App", interval: float) -> None:
        self._app = app
        self._letters = app.dead_letters
        self._registry = app.process_registry
        self._pool = HTTPConnectionPool(app.reactor, persistent=True)
        self._pool.maxPersistentPerHost = 1
        self._agent = Agent(app.reactor, connectTimeout=interval, pool=self._pool)
        self._timeout = max(0.2, min(interval * 0.8, 5.0))
        self._histories: Dict[str, NodeHistory] = {}
        self._states: Dict[str, str] = {}   # url -> "" or why it was not read
        address = app.settings.redis.url
        self.redis = "%s:%d/%d" % (address.host, address.port, address.db)

    @defer.inlineCallbacks
    def refresh(self) -> Generator[defer.Deferred, Any, Frame]:
        """Fires with a :class:`imd.admin.top_figures.Frame`."""
        clock = self._app.clock
        try:
            status, processes, nodes_up = yield defer.gatherResults(
                [self._letters.status(), self._registry.processes(), self._registry.ready_nodes()],
                consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.trap(StoreUnavailable)
            return build_frame(clock.seconds(), self.redis, None, [], None, {}, {},
                               problem=e.subFailure.getErrorMessage())
        urls = sorted({info["metrics"] for info in processes if info.get("metrics")})
        yield defer.DeferredList([self._scrape(url) for url in urls], consumeErrors=True)
        for gone in set(self._histories) - set(urls):
            del self._histories[gone]
        return build_frame(clock.seconds(), self.redis, status, processes, nodes_up, self._histories,
                           self._states)

    @defer.inlineCallbacks
    def _scrape(self, url: str) -> Generator[defer.Deferred, Any, None]:
        clock = self._app.clock
        try:
            d = self._agent.request(b"GET", url.encode("ascii"))
            response = yield d.addTimeout(self._timeout, clock)
            if response.code != 200:
                raise ValueError("HTTP %d" % response.code)
            body = yield readBody(response).addTimeout(self._timeout, clock)
            sample = parse_metrics(body.decode("utf-8"), clock.seconds())
        except Exception as e:
            self._states[url] = "unreachable: %s" % (str(e) or e.__class__.__name__)[:60]
            return
        self._states[url] = ""
        self._histories.setdefault(url, NodeHistory()).add(sample)

    def close(self) -> defer.Deferred:
        return self._pool.closeCachedConnections()


class Output(typing.Protocol):
    """Where the frames go: :class:`PlainOutput` or :class:`CursesOutput`."""

    def start(self, quit: Callable[[], None]) -> None: ...

    def show(self, frame: Frame) -> None: ...

    def stop(self) -> None: ...


class PlainOutput:
    """One line per refresh (stdout is not a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def start(self, quit: Callable[[], None]) -> None:
        pass

    def show(self, frame: Frame) -> None:
        self._out.write(plain_line(frame) + "\n")
        self._out.flush()

    def stop(self) -> None:
        pass


@implementer(IReadDescriptor)
class _Keys:
    """Keys typed while the view runs (stdin, read by curses)."""

    def __init__(self, screen: "curses.window", quit: Callable[[], None], redraw: Callable[[], object]) -> None:
        self._screen = screen
        self._quit = quit
        self._redraw = redraw

    def fileno(self) -> int:
        return sys.stdin.fileno()

    def doRead(self) -> None:
        import curses
        while True:
            key = self._screen.getch()
            if key == -1:
                return
            if key in (ord("q"), ord("Q")):
                self._quit()
                return
            if key == curses.KEY_RESIZE:
                self._redraw()

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "imd-top"


class Reactor(typing.Protocol):
    """What the full-screen view calls on the reactor (the casts below say
    that _Keys provides IReadDescriptor: mypy does not read @implementer)."""

    def addSystemEventTrigger(self, phase: str, eventType: str, callable: Callable[..., Any],
                              *args: object, **kwargs: object) -> object: ...

    def removeSystemEventTrigger(self, triggerID: object) -> None: ...

    def addReader(self, reader: IReadDescriptor) -> None: ...

    def removeReader(self, reader: IReadDescriptor) -> None: ...


class CursesOutput:
    """The full-screen view."""

    def __init__(self, reactor: Reactor, interval: float) -> None:
        self._reactor = reactor
        self._interval = interval
        self._screen: Optional["curses.window"] = None
        self._keys: Optional[_Keys] = None
        self._last: Optional[Frame] = None

    def start(self, quit: Callable[[], None]) -> None:
        import curses
        self._curses = curses
        self._screen = curses.initscr()
        curses.noecho()
        curses.cbreak()   # keys one by one; Ctrl-C still raises SIGINT
        self._screen.keypad(True)
        self._screen.nodelay(True)
        try:
            curses.curs_set(0)
        except curses.error:
            pass   # a terminal without an invisible cursor
        self._screen.addstr(0, 0, "imd top: reading redis and /metrics ...")
        self._screen.refresh()
        # Restored however the program ends (Ctrl-C stops the reactor).
        self._trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        if sys.stdin.isatty():
            self._keys = _Keys(self._screen, quit, self._redraw)
            self._reactor.addReader(cast(IReadDescriptor, self._keys))

    def _redraw(self) -> None:
        if self._last:
            self.show(self._last)

    def show(self, frame: Frame) -> None:
        if self._screen is None:
            return
        curses = self._curses
        self._last = frame
        height, width = self._screen.getmaxyx()
        self._screen.erase()
        for y, (text, emphasis) in enumerate(screen_lines(frame, self._interval)[:height]):
            attributes: Dict[Optional[str], int] = {"title": curses.A_BOLD, "header": curses.A_REVERSE}
            attribute = attributes.get(emphasis, curses.A_NORMAL)
            try:
                self._screen.addnstr(y, 0, text, max(0, width - 1), attribute)
            except curses.error:
                pass   # the last cell of a tiny window
        self._screen.refresh()

    def stop(self) -> None:
        if self._screen is None:
            return
        if self._keys is not None:
            self._reactor.removeReader(cast(IReadDescriptor, self._keys))
        self._reactor.removeSystemEventTrigger(self._trigger)
        curses = self._curses
        self._screen.keypad(False)
        curses.nocbreak()
        curses.echo()
        curses.endwin()
        self._screen = None


def choose_output(app: "App", out: TextIO, interval: float) -> Output:
    """The curses view on a terminal, plain lines otherwise (or when curses
    cannot drive this terminal, e.g. TERM unknown)."""
    if hasattr(out, "isatty") and out.isatty() and out is sys.stdout:
        import curses
        try:
            curses.setupterm()
        except curses.error as e:
            sys.stderr.write("imd-admin: top: no full-screen view on this terminal (%s); plain lines\n" % e)
        else:
            return CursesOutput(app.reactor, interval)
    return PlainOutput(out)


@defer.inlineCallbacks
def run(app: "App", args: argparse.Namespace, out: TextIO,
        output: Optional[Output] = None) -> Generator[defer.Deferred, Any, None]:
    """Refresh until ``q``, Ctrl-C or ``args.iterations`` refreshes."""
    collector = Collector(app, args.interval)
    output = output or choose_output(app, out, args.interval)
    done: defer.Deferred[None] = defer.Deferred()
    count = [0]

    def quit() -> None:
        if not done.called:
            done.callback(None)

    @defer.inlineCallbacks
    def tick() -> Generator[defer.Deferred, Any, None]:
        frame = yield collector.refresh()
        if done.called:
            return
        output.show(frame)
        count[0] += 1
        if args.iterations and count[0] >= args.iterations:
            quit()

    loop = task.LoopingCall(tick)
    loop.clock = app.clock
    output.start(quit)
    try:
        finished = loop.start(args.interval, now=True)

        def loop_failed(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)
        finished.addErrback(loop_failed)
        yield done
    finally:
        if loop.running:
            loop.stop()
        output.stop()
        yield collector.close()

"""``imd-admin top``: a live view of every imd process, refreshed every second.

Each refresh reads the process registry and the queue from Redis
(imd.stores.processes, imd.stores.deadletter) and every registered
``/metrics`` at once; imd.top_figures turns that into a screen.

On a terminal it is a full-screen view drawn with the standard library's
``curses`` (no dependency: a table redrawn in place is all it needs), which
quits on ``q`` or Ctrl-C.  When stdout is not a terminal it prints one plain
line per refresh instead.  ``--iterations N`` stops after N refreshes.
"""

import argparse
import sys
from typing import TextIO

from twisted.internet import defer, task
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from zope.interface import implementer

from imd.errors import StoreUnavailable
from imd.stores.deadletter import DeadLetters
from imd.stores.processes import ProcessRegistry
from imd.top_figures import NodeHistory, build_frame, parse_metrics, plain_line, screen_lines

_log = Logger()


class Collector:
    """What one refresh knows: Redis's view and each process's ``/metrics``."""

    def __init__(self, app, interval: float):
        self._app = app
        self._letters = DeadLetters(app.redis_client, app.keys)
        self._registry = ProcessRegistry(app.redis_client, app.keys)
        self._pool = HTTPConnectionPool(app.reactor, persistent=True)
        self._pool.maxPersistentPerHost = 1
        self._agent = Agent(app.reactor, connectTimeout=interval, pool=self._pool)
        self._timeout = max(0.2, min(interval * 0.8, 5.0))
        self._histories = {}
        self._states = {}
        address = app.settings.redis.url
        self.redis = "%s:%d/%d" % (address.host, address.port, address.db)

    @defer.inlineCallbacks
    def refresh(self) -> defer.Deferred:
        """Fires with a :class:`imd.top_figures.Frame`."""
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
    def _scrape(self, url):
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


class PlainOutput:
    """One line per refresh (stdout is not a terminal)."""

    def __init__(self, out):
        self._out = out

    def start(self, quit):
        pass

    def show(self, frame):
        self._out.write(plain_line(frame) + "\n")
        self._out.flush()

    def stop(self):
        pass


@implementer(IReadDescriptor)
class _Keys:
    """Keys typed while the view runs (stdin, read by curses)."""

    def __init__(self, screen, quit, redraw):
        self._screen = screen
        self._quit = quit
        self._redraw = redraw

    def fileno(self):
        return sys.stdin.fileno()

    def doRead(self):
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

    def connectionLost(self, reason):
        pass

    def logPrefix(self):
        return "imd-top"


class CursesOutput:
    """The full-screen view."""

    def __init__(self, reactor, interval):
        self._reactor = reactor
        self._interval = interval
        self._screen = None
        self._keys = None
        self._last = None

    def start(self, quit):
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
            self._keys = _Keys(self._screen, quit, lambda: self._last and self.show(self._last))
            self._reactor.addReader(self._keys)

    def show(self, frame):
        if self._screen is None:
            return
        curses = self._curses
        self._last = frame
        height, width = self._screen.getmaxyx()
        self._screen.erase()
        for y, (text, emphasis) in enumerate(screen_lines(frame, self._interval)[:height]):
            attribute = {"title": curses.A_BOLD, "header": curses.A_REVERSE}.get(emphasis, curses.A_NORMAL)
            try:
                self._screen.addnstr(y, 0, text, max(0, width - 1), attribute)
            except curses.error:
                pass   # the last cell of a tiny window
        self._screen.refresh()

    def stop(self):
        if self._screen is None:
            return
        if self._keys is not None:
            self._reactor.removeReader(self._keys)
        self._reactor.removeSystemEventTrigger(self._trigger)
        curses = self._curses
        self._screen.keypad(False)
        curses.nocbreak()
        curses.echo()
        curses.endwin()
        self._screen = None


def choose_output(app, out: TextIO, interval: float):
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
def run(app, args: argparse.Namespace, out: TextIO, output=None) -> defer.Deferred:
    """Refresh until ``q``, Ctrl-C or ``args.iterations`` refreshes."""
    collector = Collector(app, args.interval)
    output = output or choose_output(app, out, args.interval)
    done = defer.Deferred()
    count = [0]

    def quit():
        if not done.called:
            done.callback(None)

    @defer.inlineCallbacks
    def tick():
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
        finished.addErrback(lambda f: done.called or done.errback(f))
        yield done
    finally:
        if loop.running:
            loop.stop()
        output.stop()
        yield collector.close()

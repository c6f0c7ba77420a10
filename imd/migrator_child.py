"""The migrate role in a process of its own, started and watched by the
process that runs the ws role (``[imd] migrator = child``, the default).

Why: in one process the migrator's work -- claiming, parsing and mapping
rows on the reactor's thread, PyMySQL building each INSERT in adbapi's
threads under the same GIL -- is taken from the WebSocket clients: the
one-process layout ran at about 0.8x the split one (the migrator in a
process of its own, as the systemd units run it).  As a child process the
default layout runs like the split one and is still one command
(docs/performance.md, "One process or two").

Both ends of the link are here.

The parent: :class:`MigratorProcess`, a service of the ws process.

- Starts ``python -m imd.migrator_child --nodaemon --pidfile= imd --config
  FILE --roles migrate --node-id NODE --metrics-listen= --supervised`` once
  the reactor runs: the same interpreter and ini, the parent's node id, no
  metrics listener of its own (its figures are the parent's, below); and
  sets its niceness to its own + 10 at once (:func:`lower_priority`).
- Writes the child's log lines into its own log as events of the system
  ``migrate``: a text line reads ``<time> [migrate] migrator: leading ...``,
  a JSON line carries ``"process": "migrate"``; the child's levels, times
  and fields are kept.  What the child writes on stderr (a config error, a
  crash of the interpreter) is logged as errors.
- Reads the child's figures (one JSON line a second on the child's fd 3)
  and serves them as its own ``imd_migrator_*`` and ``imd_push_*`` series
  (counters keep counting across restarts), with
  ``imd_migrator_process_up`` and ``imd_migrator_process_restarts``;
  ``/healthz`` says ``"migrator": "running"`` or ``"restarting"``.
- Restarts the child when it dies: after 0.5 s, doubling to 30 s while it
  keeps dying within 30 s of its start; one warning line each time.
- On SIGTERM the child gets SIGTERM at once (:meth:`begin_stop`, called by
  imd.shutdown as the stop begins), so it finishes its batch while the
  connections drain; the parent waits for it within ``[imd]
  shutdown_grace``: SIGKILL half a second before the grace is over
  (:func:`kill_after`), so that its end is seen and logged in time.

The child: :class:`ParentLink`, which ``--supervised`` adds to the service.

- Runs at niceness +10, as ``imd-migrate.service`` does, in a process
  group of its own (:func:`become_child`).
- Logs JSON lines on stdout, whatever ``[log] format`` says (the parent
  writes them in its own format).
- Stops (cleanly: it finishes its batch and releases the lock) when its
  stdin reaches end of file: that pipe's other end is the parent's, and the
  kernel closes it when the parent exits, ``kill -9`` included.  Nothing to
  poll, nothing Linux-only, and no race with a parent that died before the
  child started watching.
- Writes its figures to fd 3 every second.
"""

import json
import os
import sys
import time
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer, error, fdesc, main, protocol, task
from twisted.internet.base import DelayedCall
from twisted.logger import LogLevel, Logger, globalLogPublisher, InvalidLogLevelError
from twisted.python.failure import Failure

_log = Logger()

SYSTEM = "migrate"            # the log system of the child's lines ("[migrate] " in text lines)
FIGURES_FD = 3                # the child's figures, one JSON line a second
REPORT_INTERVAL = 1.0
NICENESS = 10                 # as imd-migrate.service's Nice=
FIRST_RESTART_DELAY = 0.5     # seconds
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 30.0           # a child that ran this long restarts after FIRST_RESTART_DELAY again
MAX_LINE = 1 << 20            # bytes of a line without its newline before it is cut

MIGRATOR_GAUGES = {"oldest_age": 0.0, "queue_length": 0.0, "is_leader": 0.0, "mysql_up": 1.0}
MIGRATOR_COUNTERS = ("rows_migrated", "rows_skipped", "receipts_migrated", "dead_entries")
PUSH_COUNTERS = ("sent", "rejected", "expired", "retried")


def child_arguments(config_path: str, node_id: str) -> List[str]:
    """The child's command line after the interpreter."""
    return ["-m", "imd.migrator_child", "--nodaemon", "--pidfile=", "imd", "--config", os.path.abspath(config_path),
            "--roles", "migrate", "--node-id", node_id, "--metrics-listen=", "--supervised"]


# --- the parent's side --------------------------------------------------------

def kill_after(grace: float) -> float:
    """Seconds from the SIGTERM to the SIGKILL: the grace less a moment
    (half a second, or a quarter of a short grace) in which the parent
    reaps the child and logs its end before its own grace is over."""
    return max(grace - 0.5, grace * 0.75)


class RelayedFigures:
    """A child's figures, read by name (getattr) as imd.metrics reads a
    Migrator's or a PushDrainer's: gauges as last reported, counters summed
    over every child this process started."""

    def __init__(self, gauges: Dict[str, float], counters: Tuple[str, ...]) -> None:
        self._values: Dict[str, float] = dict(gauges)
        self._counters = counters
        self._before: Dict[str, float] = {name: 0.0 for name in counters}   # children that ended
        self._current: Dict[str, float] = {name: 0.0 for name in counters}

    def update(self, figures: Dict[str, Any]) -> None:
        for name, value in figures.items():
            if isinstance(value, (bool, int, float)):
                if name in self._current:
                    self._current[name] = float(value)
                else:
                    self._values[name] = float(value)

    def child_ended(self) -> None:
        for name in self._counters:
            self._before[name] += self._current[name]
            self._current[name] = 0.0

    def __getattr__(self, name: str) -> float:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._current:
            return self._before[name] + self._current[name]
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name)


class MigratorFigures(RelayedFigures):
    """The migrator's figures, and its process's (``process_up``, ``process_restarts``)."""

    def __init__(self, process: "MigratorProcess") -> None:
        super().__init__(MIGRATOR_GAUGES, MIGRATOR_COUNTERS)
        self._process = process

    def __getattr__(self, name: str) -> float:
        if name == "process_up":
            return 1.0 if self._process.running_child else 0.0
        if name == "process_restarts":
            return float(self._process.restarts)
        if name == "is_leader" and not self._process.running_child:
            return 0.0
        return super().__getattr__(name)


def relayed_event(line: str, stream: int, now: float) -> Dict[str, Any]:
    """The log event for one line of the child's stdout (1: JSON, as
    imd.logs writes it) or stderr (2: anything)."""
    record: Any = None
    if stream == 1 and line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        level = LogLevel.error if stream == 2 else LogLevel.info
        return {"log_format": "{log_child_text}", "log_child_text": line, "log_level": level,
                "log_namespace": "imd.migrator_child", "log_system": SYSTEM, "log_time": now, "process": SYSTEM}
    event: Dict[str, Any] = {}
    for key, value in record.items():
        if key not in ("time", "level", "namespace", "text", "traceback") and not key.startswith("log_"):
            event[key] = value
    try:
        level = LogLevel.levelWithName(str(record.get("level")))
    except InvalidLogLevelError:
        level = LogLevel.info
    text = record["text"]
    if isinstance(record.get("traceback"), str):
        text += "\n" + record["traceback"].rstrip("\n")
    event.update(log_format="{log_child_text}", log_child_text=text, log_level=level,
                 log_namespace=str(record.get("namespace") or "imd.migrator_child"), log_system=SYSTEM,
                 log_time=_timestamp(record.get("time"), now), process=SYSTEM)
    return event


def _timestamp(text: Any, default: float) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except (TypeError, ValueError):
        return default


class _Lines:
    """Whole lines out of the chunks of one pipe."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> List[str]:
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        return [line.decode("utf-8", "replace") for line in lines]

    def rest(self) -> List[str]:
        rest, self._partial = self._partial, b""
        return [rest.decode("utf-8", "replace")] if rest else []


class _ChildProtocol(protocol.ProcessProtocol):
    def __init__(self, owner: "MigratorProcess") -> None:
        self._owner = owner
        self._lines = {1: _Lines(), 2: _Lines(), FIGURES_FD: _Lines()}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = self._lines.get(childFD)
        if lines is not None:
            for line in lines.feed(data):
                self._owner.line_received(childFD, line)

    def childConnectionLost(self, childFD: int) -> None:
        lines = self._lines.get(childFD)
        if lines is not None:
            for line in lines.rest():
                self._owner.line_received(childFD, line)

    def processEnded(self, reason: Failure) -> None:
        self._owner.child_ended(self, reason)


class MigratorProcess(Service):
    """The migrate role run as a child process, supervised (module docstring)."""

    name = "migrator-process"

    def __init__(self, executable: str, arguments: List[str], grace: float, reactor: Any, clock: Any = None,
                 publish: Callable[[Dict[str, Any]], None] = globalLogPublisher,
                 lower: Optional[Callable[[int, int], Optional[int]]] = None) -> None:
        """``executable`` runs with ``arguments`` (:func:`child_arguments`);
        ``reactor`` spawns it; ``clock`` times restarts and the kill;
        ``lower(pid, parent)`` lowers a new child's priority
        (:func:`lower_priority`)."""
        self._lower = lower if lower is not None else lower_priority
        self._executable = executable
        self._arguments = arguments
        self.grace = grace
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._publish = publish
        self.migrator = MigratorFigures(self)
        self.push = RelayedFigures({}, PUSH_COUNTERS)
        self.restarts = 0
        self.pid: Optional[int] = None
        self._child: Optional[_ChildProtocol] = None
        self._started_at = 0.0
        self._delay = FIRST_RESTART_DELAY
        self._restart: Optional[DelayedCall] = None
        self._kill_timer: Optional[DelayedCall] = None
        self._killed = False
        self._stopping = False
        self._ended_waiters: List[defer.Deferred] = []

    @property
    def running_child(self) -> bool:
        return self._child is not None

    # --- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        # once the reactor runs: after twistd's fork and the listeners' bind
        self._reactor.callWhenRunning(self._spawn)

    def begin_stop(self) -> None:
        """SIGTERM to the child now; SIGKILL if it still runs ``grace`` seconds later."""
        if self._stopping:
            return
        self._stopping = True
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        if self._child is not None:
            self._signal("TERM")
            self._kill_timer = self._clock.callLater(kill_after(self.grace), self._kill, True)

    def stopService(self) -> defer.Deferred:
        """Fires once the child has exited (cancelling it kills the child)."""
        super().stopService()
        self.begin_stop()
        if self._child is None:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred(lambda _: self._kill(True))
        self._ended_waiters.append(d)
        return d

    # --- the child -------------------------------------------------------------

    def _spawn(self) -> None:
        self._restart = None
        if self._stopping or not self.running:
            return
        child = _ChildProtocol(self)
        transport = self._reactor.spawnProcess(
            child, self._executable, [self._executable] + self._arguments, env=dict(os.environ),
            path=os.getcwd(), childFDs={0: "w", 1: "r", 2: "r", FIGURES_FD: "r"})
        self._child = child
        self._killed = False
        self.pid = transport.pid
        # at once, before its interpreter starts: its start-up (imports, and
        # on PyPy its first compilations) costs the clients nothing either
        try:
            self._lower(self.pid, os.getpid())
        except OSError as e:
            _log.warn("migrator: cannot lower its process's priority (it does so itself): {why}", why=e)
        self._started_at = self._clock.seconds()
        _log.info("migrator: started its process (pid {pid})", pid=self.pid)

    def _signal(self, name: str) -> None:
        transport: Any = self._child.transport if self._child is not None else None
        if transport is None:
            return
        try:
            transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass   # gone a moment ago: processEnded follows

    def _kill(self, timed_out: bool) -> None:
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        self._kill_timer = None
        if self._child is None or self._killed:
            return
        self._killed = True
        if timed_out:
            _log.warn("migrator: its process (pid {pid}) did not stop within [imd] shutdown_grace = {grace}s "
                      "of its SIGTERM; sending SIGKILL", pid=self.pid, grace=self.grace)
        self._signal("KILL")

    def line_received(self, stream: int, line: str) -> None:
        if stream == FIGURES_FD:
            try:
                figures = json.loads(line)
            except ValueError:
                return
            if isinstance(figures, dict):
                for name, target in (("migrator", self.migrator), ("push", self.push)):
                    if isinstance(figures.get(name), dict):
                        target.update(figures[name])
            return
        if line.strip():
            self._publish(relayed_event(line, stream, time.time()))

    def child_ended(self, child: _ChildProtocol, reason: Failure) -> None:
        if child is not self._child:
            return
        self._child = None
        self.migrator.child_ended()
        self.push.child_ended()
        code, signal = getattr(reason.value, "exitCode", None), getattr(reason.value, "signal", None)
        how = "was killed by signal %s" % signal if signal is not None else "exited with status %s" % code
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        self._kill_timer = None
        if self._stopping or not self.running:
            _log.info("migrator: its process (pid {pid}) {how}", pid=self.pid, how=how)
            waiters, self._ended_waiters = self._ended_waiters, []
            for d in waiters:
                if not d.called:   # (a cancelled wait has fired already)
                    d.callback(None)
            return
        ran = self._clock.seconds() - self._started_at
        if ran >= STABLE_AFTER:
            self._delay = FIRST_RESTART_DELAY
        delay, self._delay = self._delay, min(self._delay * 2, MAX_RESTART_DELAY)
        self.restarts += 1
        _log.warn("migrator: its process (pid {pid}) {how} after {ran:.1f}s; starting another in {delay:g}s "
                  "(restart {n})", pid=self.pid, how=how, ran=ran, delay=delay, n=self.restarts)
        self._restart = self._clock.callLater(delay, self._spawn)


# --- the child's side ---------------------------------------------------------

def lower_priority(pid: int, parent: int) -> Optional[int]:
    """Set ``pid``'s niceness to ``parent``'s + NICENESS (at most 19) unless
    it is that low already; the niceness it has then (None: it has gone).

    Both ends call it: the parent as soon as the child exists -- as the
    ``nice -n 10`` of ``imd-migrate.service``, so the child's start-up
    (~0.8 s of CPU to import its modules on PyPy, at every restart) does not
    compete with the clients' reactor at the parent's priority -- and the
    child in :func:`become_child`, in case the parent could not.  Absolute,
    not ``os.nice``: two calls give +10, not +20."""
    target = min(19, os.getpriority(os.PRIO_PROCESS, parent) + NICENESS)
    try:
        current = os.getpriority(os.PRIO_PROCESS, pid)
        if current < target:
            os.setpriority(os.PRIO_PROCESS, pid, target)
        return max(current, target)
    except ProcessLookupError:
        return None


def become_child() -> None:
    """What the child does first, before any thread starts: niceness +10
    for its threads, those started later included (they inherit it), if
    the parent has not set it already (:func:`lower_priority`); and a
    process group of its own, so that Ctrl-C in the terminal of ``make
    run`` reaches the parent only, which stops it in order (SIGTERM, then
    the wait) instead of both stopping at once."""
    try:
        lower_priority(0, os.getppid())
    except OSError as e:
        _log.warn("migrator: cannot lower its priority: {why}", why=e)
    try:
        os.setpgid(0, 0)
    except OSError:
        pass   # a session leader already: nothing from a terminal reaches it


class _EndOfFile:
    """A reader of ``fd`` that calls ``gone`` once it reaches end of file."""

    def __init__(self, fd: int, gone: Callable[[], None]) -> None:
        self._fd = fd
        self._gone = gone
        fdesc.setNonBlocking(fd)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError as e:
            return Failure(e)
        return None if data else main.CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        self._gone()

    def logPrefix(self) -> str:
        return "parent-link"


class ParentLink(Service):
    """The child's end (module docstring): stops when stdin closes, reports
    ``figures()`` on fd 3."""

    name = "parent-link"

    def __init__(self, figures: Callable[[], Dict[str, Any]], reactor: Any, clock: Any = None,
                 stdin: int = 0, out: int = FIGURES_FD) -> None:
        self._figures = figures
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._stdin = stdin
        self._out = out
        self._watch: Optional[_EndOfFile] = None
        self._loop: Optional[task.LoopingCall] = None

    def startService(self) -> None:
        super().startService()
        self._watch = _EndOfFile(self._stdin, self._parent_gone)
        self._reactor.addReader(self._watch)
        self._loop = task.LoopingCall(self.report)
        self._loop.clock = self._clock
        self._loop.start(REPORT_INTERVAL, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._watch is not None:
            self._reactor.removeReader(self._watch)
            self._watch = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def report(self) -> None:
        line = (json.dumps(self._figures(), sort_keys=True) + "\n").encode("ascii")
        try:
            os.write(self._out, line)   # a few hundred bytes: one write, whole, on a pipe
        except OSError as e:
            if self._loop is not None and self._loop.running:
                self._loop.stop()
            _log.warn("migrator: cannot report its figures to the ws process: {why}", why=e)

    def _parent_gone(self) -> None:
        self._watch = None
        if not self.running:
            return
        _log.info("migrator: the ws process that started it has gone (its stdin closed); stopping")
        try:
            self._reactor.stop()
        except error.ReactorNotRunning:
            pass


def figures_of(app: Any) -> Callable[[], Dict[str, Any]]:
    """What :class:`ParentLink` reports of an imd.app.App running the migrate role."""
    def figures() -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        migrator = app.migrator
        if migrator is not None:
            out["migrator"] = {name: getattr(migrator, name)
                               for name in tuple(MIGRATOR_GAUGES) + MIGRATOR_COUNTERS}
        drainer = app.push_drainer
        if drainer is not None:
            out["push"] = {name: getattr(drainer, name, 0) for name in PUSH_COUNTERS}
        return out
    return figures


def run_twistd() -> None:
    """``python -m imd.migrator_child ARGS``: ``twistd ARGS`` in this interpreter."""
    from twisted.scripts.twistd import run
    sys.argv[0] = "twistd"
    run()


if __name__ == "__main__":
    run_twistd()

"""``twistd -n imd`` as a child process: its log lines, the port it listens
on (read from its log, so it can bind port 0), its exit status."""

import os
import re
import signal
import sys

from twisted.internet import defer, protocol, reactor

from tests.support import DEADLINE, settings_text, with_deadline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
_LISTENING = re.compile(rb"ImdServerFactory starting on (\d+)")
# imd.bus: until then the node refuses logins ("service unavailable")
_READY = re.compile(rb"registered in redis: taking logins")


class Daemon(protocol.ProcessProtocol):
    def __init__(self):
        self.lines = []          # stdout, one entry per line (bytes)
        self.stderr = b""
        self.exit_code = self.exit_signal = None
        self.listening = defer.Deferred()   # fires with the ws port once the node takes logins
        self.has_ended = False
        self._end_waiters = []
        self._partial = b""
        self._port = self._ready = None

    def outReceived(self, data):
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match:
                self._port = int(match.group(1))
            if _READY.search(line):
                self._ready = True
            if self._port is not None and self._ready and not self.listening.called:
                self.listening.callback(self._port)

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        if self._partial:
            self.lines.append(self._partial)
        self.exit_code, self.exit_signal = reason.value.exitCode, reason.value.signal
        if not self.listening.called:
            self.listening.errback(AssertionError("twistd ended before listening: %s\n%s"
                                                  % (self.stderr.decode(errors="replace"), self.output())))
        self.has_ended = True
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(self.exit_code)

    def when_ended(self):
        """A Deferred of its own firing with the exit code: a deadline on it
        cancels only it, so the clean-up still knows whether to kill."""
        waiter = defer.Deferred()
        if self.has_ended:
            waiter.callback(self.exit_code)
        else:
            self._end_waiters.append(waiter)
        return waiter

    def output(self):
        return b"\n".join(self.lines).decode("utf-8", "replace")

    @property
    def pid(self):
        return self.transport.pid

    def signal(self, number):
        os.kill(self.pid, number)

    def wait_ended(self, seconds=DEADLINE * 3):
        return with_deadline(self.when_ended(), seconds, "twistd exit")


def write_config(testcase, overrides=None):
    path = os.path.abspath(testcase.mktemp())
    with open(path, "w") as f:
        f.write(settings_text(overrides))
    return path


def spawn_daemon(testcase, config_path):
    """``twistd -n imd`` started (not waited for); killed by its pid in the
    test's cleanup if it still runs.  This run's MySQL database is made
    first when missing: a daemon whose database does not exist stops at
    start-up (imd.stores.mysql_check)."""
    from tests.http_support import ensure_test_database
    ensure_test_database()
    daemon = Daemon()
    reactor.spawnProcess(daemon, TWISTD, [TWISTD, "-n", "--pidfile=", "imd", "--config", config_path],
                         env=dict(os.environ), path=ROOT)

    def stop():
        if daemon.has_ended:
            return None
        daemon.signal(signal.SIGKILL)
        return daemon.when_ended()
    testcase.addCleanup(stop)
    return daemon


@defer.inlineCallbacks
def start_daemon(testcase, config_path):
    """A running ``twistd -n imd``; stopped (by its pid) in the test's cleanup."""
    daemon = spawn_daemon(testcase, config_path)
    daemon.port = yield with_deadline(daemon.listening, DEADLINE * 2, "twistd listening")
    return daemon

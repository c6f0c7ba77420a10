"""Running imd-admin's audit, export and retention commands in a test: in
this process against an App of the test's stores (output captured), or as
the installed program (exit status, stderr, a pseudo-terminal)."""

import io
import os
import sys

from twisted.internet import defer, protocol, reactor, utils

from imd import protocol as packets
from imd.admin.console import build_parser
from imd.app import App
from tests.migrator_support import start_migrator, with_drain
from tests.mysql_support import MysqlTestMixin
from tests.support import DEADLINE, RedisTestMixin, make_settings, settings_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = os.path.join(os.path.dirname(sys.executable), "imd-admin")


class AdminAppMixin(RedisTestMixin, MysqlTestMixin):
    """``self.app``: an App of the test settings (plus ``overrides``) with
    Redis and the MySQL pool running, on a fresh database."""

    overrides: dict = {}

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        self.settings = make_settings(self.overrides)
        self.app = App(self.settings, reactor)
        self.app.redis_client.startService()
        self.addCleanup(self.app.redis_client.stopService)
        self.app.mysql.startService()
        self.addCleanup(self.app.mysql.stopService)
        yield self.app.redis_client.wait_connected(DEADLINE)

    async def admin(self, *argv):
        """``(stdout, result, progress output)`` of a command run here."""
        args = build_parser().parse_args(list(argv))
        args.progress_stream = io.StringIO()
        out = io.StringIO()
        result = await args.run(self.app, args, out)
        return out.getvalue(), result, args.progress_stream.getvalue()

    def config_file(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(settings_text(self.overrides))
        return path

    def run_admin(self, *argv):
        """Deferred ``(stdout, stderr, exit status)`` of the installed program (no terminal)."""
        return utils.getProcessOutputAndValue(ADMIN, ["--config", self.config_file()] + list(argv),
                                              env=dict(os.environ), path=ROOT)

    async def send(self, sender, to, packet_id, text="hello", ts=None):
        """A message stored as the daemon stores it (dedup record, MQ, pending)."""
        await self.befriend(sender, to)
        ts = int(reactor.seconds() * 1000) if ts is None else ts
        packet = packets.message_json(packets.MessagePacket(packet_id, "t", to, text), sender, ts)
        result = await self.app.messages.store_message(sender, to, str(packet_id), packet, ts)
        self.assertEqual(result.status, "stored")
        return packet.decode("utf-8")

    async def migrate(self):
        migrator = start_migrator(self, self.settings)
        await with_drain(migrator)


class Terminal(protocol.ProcessProtocol):
    """A program on a pseudo-terminal: everything it wrote, its exit status."""

    def __init__(self):
        self.output = b""
        self.ended = defer.Deferred()

    def childDataReceived(self, fd, data):
        self.output += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


def run_in_terminal(test, config, *argv, size=(30, 120)):
    """The installed imd-admin with stdin, stdout and stderr on a pty of
    ``size`` (rows, columns; None: as a new pty is, 0 x 0); fires with
    ``(Terminal, exit status)`` once it ended."""
    import fcntl
    import struct
    import termios
    master, slave = os.openpty()
    if size is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    terminal = Terminal()
    env = dict(os.environ, TERM="xterm")
    reactor.spawnProcess(terminal, ADMIN, [ADMIN, "--config", config] + list(argv), env=env, path=ROOT,
                         usePTY=(master, slave, os.ttyname(slave)))

    def stop():
        if not terminal.ended.called:
            terminal.transport.signalProcess("KILL")
            return terminal.ended
    test.addCleanup(stop)
    return terminal.ended.addTimeout(DEADLINE * 3, reactor).addCallback(lambda code: (terminal, code))

"""Endpoint strings (imd.endpoints): the listen queue imd asks for when a
listener's string names none."""

import shutil
import subprocess

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from imd.app import App
from imd.endpoints import DEFAULT_BACKLOG, with_backlog
from tests.support import make_settings


class WithBacklogTests(unittest.SynchronousTestCase):

    def test_added_where_none_is_named(self):
        self.assertEqual(with_backlog("tcp:8765:interface=127.0.0.1"), "tcp:8765:interface=127.0.0.1:backlog=4096")
        self.assertEqual(with_backlog("tcp6:port=8765"), "tcp6:port=8765:backlog=4096")
        self.assertEqual(with_backlog("ssl:8443:privateKey=k.pem:certKey=c.pem"),
                         "ssl:8443:privateKey=k.pem:certKey=c.pem:backlog=4096")

    def test_the_operators_own_is_kept(self):
        for text in ("tcp:8765:interface=127.0.0.1:backlog=100", "tcp:8765:127.0.0.1:100",
                     "ssl:8443:privateKey=k.pem:backlog=7"):
            self.assertEqual(with_backlog(text), text)

    def test_other_endpoints_and_unreadable_strings_as_they_are(self):
        for text in ("unix:/run/imd.sock", "systemd:domain=INET:index=0", "", "tcp:1:interface=a:interface=b"):
            self.assertEqual(with_backlog(text), text)


def listen_queue(port):
    """The listen queue the kernel gives the socket listening on ``port``
    (``ss``: Send-Q of a listening socket)."""
    out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True, text=True,
                         timeout=10, check=True).stdout.split()
    return int(out[2])


class ListenerBacklogTests(unittest.TestCase):
    """What an operator sees with ``ss -ltn``: a listener whose endpoint
    string names no backlog gets DEFAULT_BACKLOG (at most the kernel's
    net.core.somaxconn), not Twisted's 50."""

    def setUp(self):
        if shutil.which("ss") is None:
            raise unittest.SkipTest("ss (iproute2) is not installed here")
        self.app = App(make_settings(), reactor)
        with open("/proc/sys/net/core/somaxconn") as f:
            self.cap = int(f.read())

    @defer.inlineCallbacks
    def listen(self, description):
        port = yield self.app.server_endpoint(description).listen(protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_default_and_named(self):
        port = yield self.listen("tcp:0:interface=127.0.0.1")
        self.assertEqual(listen_queue(port), min(DEFAULT_BACKLOG, self.cap))
        port = yield self.listen("tcp:0:interface=127.0.0.1:backlog=50")
        self.assertEqual(listen_queue(port), 50)

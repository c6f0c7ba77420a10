"""TurnFlusher: what a turn wrote is sent once, at the end of that turn."""

import os
import select
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from imd.transport.flush import TurnFlusher
from tests.support import wait_until, with_deadline


class _Transport:
    """The parts of tcp.Connection the flusher reads."""

    def __init__(self):
        self.connected = True
        self.disconnecting = False
        self.dataBuffer = b""
        self._tempDataBuffer = []
        self.sent = []

    def write(self, data):
        self._tempDataBuffer.append(data)

    def doWrite(self):
        self.sent.append(b"".join(self._tempDataBuffer))
        self._tempDataBuffer = []


class TurnFlusherTests(unittest.TestCase):

    def setUp(self):
        self.clock = Clock()
        self.flusher = TurnFlusher(self.clock)

    def test_writes_of_one_turn_leave_in_one_send_when_the_turn_ends(self):
        transport = _Transport()
        for data in (b"a", b"b", b"c"):
            transport.write(data)
            self.flusher.written(transport)
        self.assertEqual(transport.sent, [])
        self.clock.advance(0)
        self.assertEqual(transport.sent, [b"abc"])
        self.clock.advance(0)
        self.assertEqual(transport.sent, [b"abc"])

    def test_closing_or_closed_transports_are_left_to_the_reactor(self):
        closing, closed, plain = _Transport(), _Transport(), object()
        closing.disconnecting = True
        closed.connected = False
        for transport in (closing, closed):
            transport.write(b"x")
            self.flusher.written(transport)
        self.flusher.written(plain)   # no doWrite (e.g. a TLS wrapper): skipped
        self.clock.advance(0)
        self.assertEqual((closing.sent, closed.sent), ([], []))

    def test_nothing_buffered_nothing_sent(self):
        transport = _Transport()
        self.flusher.written(transport)
        self.clock.advance(0)
        self.assertEqual(transport.sent, [])


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Collect(Protocol):
    def connectionMade(self):
        self.factory.connected.callback(self)

    def dataReceived(self, data):
        self.factory.received.append(data)
        if b"".join(self.factory.received) == self.factory.expected:
            self.factory.done.callback(None)


class RealSocketTests(unittest.TestCase):
    """Over a real TCP connection, on the real reactor."""

    async def _bytes_arrive_whole_and_in_order(self, flusher):
        port = reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        factory = ClientFactory.forProtocol(_Collect)
        factory.connected, factory.done, factory.received = Deferred(), Deferred(), []
        factory.expected = b"".join(b"%05d" % i for i in range(2000))
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        self.addCleanup(connector.disconnect)
        client = await with_deadline(factory.connected, what="connection")
        for i in range(2000):
            client.transport.write(b"%05d" % i)
            flusher.written(client.transport)
        await with_deadline(factory.done, what="all the bytes")
        self.assertEqual(b"".join(factory.received), factory.expected)

    def test_bytes_arrive_whole_and_in_order(self):
        return self._bytes_arrive_whole_and_in_order(TurnFlusher(reactor))

    def test_the_same_with_the_flusher_off(self):
        # the plain way (IMD_PLAIN_TWISTED=1): the reactor writes on its next poll
        flusher = TurnFlusher(reactor, on=False)
        self.assertFalse(flusher.on)
        return self._bytes_arrive_whole_and_in_order(flusher)

    async def _a_client_socket_and_its_server_transport(self):
        """A plain socket (read without the reactor) connected to a
        listener on the real reactor, and the server side's transport."""
        made = Deferred()

        class Server(Protocol):
            def connectionMade(self):
                made.callback(self.transport)
        port = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        self.addCleanup(client.close)
        transport = await with_deadline(made, what="connection")
        self.addCleanup(transport.abortConnection)
        return client, transport

    async def test_a_client_has_what_a_turn_wrote_when_the_turn_ends(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "IMD_PLAIN_TWISTED"})
        client, transport = await self._a_client_socket_and_its_server_transport()
        clock = Clock()
        flusher = TurnFlusher(clock)
        transport.write(b"A reply")
        flusher.written(transport)
        clock.advance(0)   # the end of the turn; the reactor does not run again before the read
        self.assertEqual(select.select([client], [], [], 5)[0], [client], "nothing sent at the end of the turn")
        self.assertEqual(client.recv(100), b"A reply")

    async def test_with_the_environment_switch_it_waits_for_the_reactors_next_poll(self):
        # IMD_PLAIN_TWISTED=1: stock Twisted, the bytes leave when the
        # reactor next polls the socket -- not at the end of the turn
        self.patch(os, "environ", dict(os.environ, IMD_PLAIN_TWISTED="1"))
        client, transport = await self._a_client_socket_and_its_server_transport()
        clock = Clock()
        flusher = TurnFlusher(clock)
        transport.write(b"A reply")
        flusher.written(transport)
        clock.advance(0)
        self.assertEqual(select.select([client], [], [], 0.2)[0], [])
        await wait_until(lambda: select.select([client], [], [], 0)[0], what="the reactor's write")
        self.assertEqual(client.recv(100), b"A reply")

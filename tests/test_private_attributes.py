"""Every private or undocumented attribute of a library that imd reads,
calls or replaces is still there (pure: no server).

setup.cfg bounds these libraries below their next major version; this test
is what fails, naming the attribute, when a release inside that range (or a
deliberate raise of the bound) drops one.  Where imd reads one with a
default (``getattr(x, name, None)``) the code would go on silently with a
wrong result, so those are checked here too.
"""

import jwt
import txredisapi
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import abstract
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest


class PrivateAttributeTestCase(unittest.SynchronousTestCase):

    def assertHas(self, obj, names, where):
        missing = [name for name in names if not hasattr(obj, name)]
        self.assertEqual(missing, [], "%s no longer has %s: imd relies on it (see the module's comments)"
                         % (where, ", ".join(missing)))


class TwistedTests(PrivateAttributeTestCase):

    def test_transport_buffers_for_the_turn_flusher(self):
        # imd/transport/flush.py
        self.assertHas(abstract.FileDescriptor(),
                       ("dataBuffer", "_tempDataBuffer", "doWrite", "_writeDisconnecting", "connected",
                        "disconnecting"), "twisted.internet.abstract.FileDescriptor")

    def test_reactor_exit_signal(self):
        # imd/shutdown.py: a SIGTERM stop exits 0
        from twisted.internet import reactor
        self.assertHas(reactor, ("_exitSignal",), "the reactor")

    def test_request_knows_its_connection_is_gone(self):
        # imd/http/site.py (a request held while starting) and
        # imd/http/resource.py: nothing is written to a client that left
        from twisted.web.test.requesthelper import DummyChannel

        from imd.http.site import CappedRequest
        self.assertHas(CappedRequest(DummyChannel()), ("_disconnected",), "twisted.web.http.Request")


class _Probe(WebSocketServerProtocol):
    seen = None

    def onMessageEnd(self):
        # what the tuned onMessageEnd (imd/transport/autobahn_tuning.py,
        # AutobahnTuning) reads instead of calling Autobahn's own
        self.seen = {name: getattr(self, name, "MISSING")
                     for name in ("message_data", "message_is_binary", "failedByMe")}
        return super().onMessageEnd()


def _masked_text_frame(payload, mask=b"\x01\x02\x03\x04"):
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + masked


_HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class AutobahnTests(PrivateAttributeTestCase):

    def test_what_the_tuned_class_replaces(self):
        # imd/transport/autobahn_tuning.py: the options as class attributes,
        # and the list of them (CONFIG_ATTRS) that _connectionMade walks and
        # formats replaced on the tuned class; the compiled masker it still uses
        self.assertHas(WebSocketServerProtocol, ("CONFIG_ATTRS", "_connectionMade"), "WebSocketServerProtocol")
        from autobahn.websocket import xormasker
        self.assertHas(xormasker, ("create_xor_masker",), "autobahn.websocket.xormasker")

    def test_what_the_tuned_data_received_reads(self):
        # imd/transport/autobahn_tuning.py: txaio binds a disabled level to _no_op;
        # the tuned dataReceived does what _dataReceived and consumeData do
        import txaio.tx
        self.assertHas(txaio.tx, ("_no_op",), "txaio.tx")
        logger = txaio.make_logger()
        logger.set_log_level("info")
        self.assertIs(logger.debug, txaio.tx._no_op)
        self.assertHas(WebSocketServerProtocol, ("_dataReceived", "consumeData", "processData", "STATE_OPEN",
                                                 "STATE_CLOSED"), "WebSocketServerProtocol")

    def test_what_the_lingering_close_replaces(self):
        # imd/transport/websocket.py: after 4008 a TCP connection is half-closed
        # (Autobahn's _closeConnection replaced) and what still comes is thrown
        # away (its _dataReceived replaced); a transport that is not a
        # half-closeable descriptor (TLS) is closed as before
        from twisted.internet import tcp
        from twisted.internet.interfaces import IHalfCloseableDescriptor
        from twisted.protocols.tls import TLSMemoryBIOProtocol
        self.assertHas(WebSocketServerProtocol, ("_closeConnection", "_dataReceived"), "WebSocketServerProtocol")
        self.assertTrue(IHalfCloseableDescriptor.implementedBy(tcp.Server), "tcp.Server no longer half-closes")
        self.assertFalse(IHalfCloseableDescriptor.implementedBy(TLSMemoryBIOProtocol))
        self.assertHas(tcp.Server, ("loseWriteConnection", "resumeProducing"), "twisted.internet.tcp.Server")

    def test_protocol_state_imd_reads(self):
        # imd/transport/autobahn_tuning.py (onMessageEnd, write_text) and
        # imd/transport/websocket.py (the handshake's size cap, the close
        # code of onClose, the timer connectionLost cancels, why a drop)
        factory = WebSocketServerFactory("ws://127.0.0.1:1")
        factory.setProtocolOptions(openHandshakeTimeout=0)   # no timer left behind
        factory.protocol = _Probe
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertHas(protocol, ("_listeners", "_parent", "trackedTimings", "_perMessageCompress",
                                  "send_queue", "state", "applyMask", "data",
                                  "maxMessagePayloadSize", "localCloseCode", "closedByMe",
                                  "closeHandshakeTimeoutCall", "wasNotCleanReason"),
                       "an Autobahn server protocol")
        protocol.dataReceived(_HANDSHAKE)
        self.assertEqual(protocol.state, protocol.STATE_OPEN, transport.value())
        self.assertHas(protocol, ("current_frame",), "an open Autobahn server protocol")
        protocol.dataReceived(_masked_text_frame(b"hello"))
        self.assertEqual(protocol.seen, {"message_data": [b"hello"], "message_is_binary": False,
                                         "failedByMe": False})
        protocol.connectionLost(Failure(ConnectionDone()))


class TxredisapiTests(PrivateAttributeTestCase):

    def test_parser_internals(self):
        # imd/stores/redis.py: a connection is txredisapi's BaseRedisProtocol (its
        # reply parser) with imd's own connectionMade (AUTH/SELECT through imd's
        # write path); imd writes each command itself and takes its reply from
        # the parser's reply queue, and replaces two hooks the parser calls:
        # tryConvertData for each bulk string (imd decodes it) and
        # replyReceived for each reply (imd's reply timeout, pub/sub messages)
        protocol = txredisapi.BaseRedisProtocol(password="p", dbid=3, convertNumbers=False)
        self.assertHas(protocol, ("replyQueue", "transport", "connected", "password", "dbid", "tryConvertData",
                                  "replyReceived"), "txredisapi.BaseRedisProtocol")
        self.assertEqual((protocol.password, protocol.dbid), ("p", 3))
        self.assertTrue(callable(getattr(protocol.replyQueue, "get", None)), "BaseRedisProtocol.replyQueue.get")
        calls = []
        protocol.tryConvertData = lambda data: calls.append(data) or "converted"
        protocol.replyReceived = calls.append
        protocol.dataReceived(b"$3\r\nabc\r\n")
        protocol.dataReceived(b":7\r\n")
        self.assertEqual(calls, [b"abc", "converted", 7])

    def test_line_and_bulk_hooks(self):
        # imd/stores/redis.py: _Connection.dataReceived reads a whole read
        # itself and hands each line to lineReceived (str; a "$n" line sets
        # bulk_length = n + 2 and line_mode 0, a "$-1" line answers None)
        # and each bulk string, whole, to bulkDataReceived; bulk_buffer is
        # the bytearray a bulk string spanning reads grows in
        protocol = txredisapi.BaseRedisProtocol(password=None, dbid=None, convertNumbers=False)
        self.assertHas(protocol, ("lineReceived", "bulkDataReceived", "line_mode", "bulk_length", "bulk_buffer"),
                       "txredisapi.BaseRedisProtocol")
        self.assertIsInstance(protocol.bulk_buffer, bytearray)
        calls = []
        protocol.replyReceived = calls.append
        protocol.lineReceived("*2")
        protocol.lineReceived("$3")
        self.assertEqual((protocol.line_mode, protocol.bulk_length), (0, 5))
        protocol.line_mode = 1
        protocol.bulkDataReceived(b"abc")
        protocol.lineReceived("$-1")
        protocol.lineReceived(":4")
        self.assertEqual(calls, [["abc", None], 4])

    def test_a_lost_connection_fails_the_replies_awaited(self):
        # imd/stores/redis.py: _Connection.connectionLost leaves this to txredisapi
        protocol = txredisapi.BaseRedisProtocol(password=None, dbid=None, convertNumbers=False)
        waiting = protocol.replyQueue.get()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(self.successResultOf(waiting), txredisapi.ConnectionError)


class PyJWTTests(PrivateAttributeTestCase):

    def test_decoder_internals(self):
        # imd/auth.py: a PyJWT whose PyJWS is imd's faster segment check
        self.assertTrue(callable(getattr(jwt.PyJWS, "_decode_base64url_segment", None)),
                        "jwt.PyJWS._decode_base64url_segment is gone: imd.auth._JWS overrides it")
        self.assertHas(jwt.PyJWT(), ("_jws", "_get_sig_options"), "jwt.PyJWT")

    def test_imd_decoder_uses_its_jws(self):
        from imd import auth
        self.assertIsInstance(auth._DECODER._jws, auth._JWS)


"""wss: the same login and packets over TLS, the TLS policy, and certificate
reload on SIGHUP without dropping open connections."""

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys

from autobahn.twisted.websocket import WebSocketClientFactory
from cryptography import x509
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.protocols.wire import Echo
from twisted.trial import unittest

import imd.tls
from imd.config import ConfigError, parse_settings
from imd.tls import parse_tls_endpoint
from tests.support import (DEADLINE, ClientMixin, ImdServer, RedisTestMixin, TestClient, drop, make_settings,
                           settings_text, with_deadline)
from tests.tls_support import TestCA


class TlsEndpointParsingTests(unittest.SynchronousTestCase):

    def test_parts(self):
        spec = parse_tls_endpoint("ssl:8443:interface=0.0.0.0:privateKey=/etc/imd/tls/key.pem"
                                  ":certKey=/etc/imd/tls/fullchain.pem:extraCertChain=/etc/imd/tls/chain.pem")
        self.assertEqual(spec.tcp_description(), "tcp:port=8443:interface=0.0.0.0")
        self.assertEqual((spec.key_path, spec.cert_path, spec.chain_path),
                         ("/etc/imd/tls/key.pem", "/etc/imd/tls/fullchain.pem", "/etc/imd/tls/chain.pem"))

    def test_escaped_colons_and_key_file_holding_both(self):
        spec = parse_tls_endpoint(r"ssl:port=443:interface=\:\:1:privateKey=C\:/both.pem")
        self.assertEqual(spec.tcp_description(), r"tcp:port=443:interface=\:\:1")
        self.assertEqual((spec.key_path, spec.cert_path), ("C:/both.pem", "C:/both.pem"))

    def test_refusals(self):
        for text in ("tcp:8443", "ssl:privateKey=k.pem", "ssl:8443", "ssl:8443:privateKey=k:sslmethod=TLSv1_METHOD"):
            self.assertRaises(ValueError, parse_tls_endpoint, text)

    def test_config_names_the_key_when_files_are_unusable(self):
        text = settings_text({"websocket": {"tls_listen": "ssl:8443:privateKey=/nonexistent/key.pem"}})
        with self.assertRaises(ConfigError) as caught:
            parse_settings(text, "imd.ini")
        self.assertIn("[websocket] tls_listen", str(caught.exception))
        self.assertIn("/nonexistent/key.pem", str(caught.exception))

    def test_tls_listen_must_be_ssl(self):
        text = settings_text({"websocket": {"tls_listen": "tcp:8443"}})
        self.assertRaises(ConfigError, parse_settings, text, "imd.ini")


class _ContextFactoryOnly:
    """CertificateOptions as Twisted before 26 has it: getContext alone."""

    def __init__(self, options):
        self.getContext = options.getContext


class WssTests(ClientMixin, RedisTestMixin, unittest.TestCase):
    """A real wss listener on 127.0.0.1 with a certificate from a test CA."""

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        self.ca = TestCA()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.key_path = os.path.join(self.dir, "key.pem")
        self.cert_path = os.path.join(self.dir, "cert.pem")
        self.serial = self.install_certificate(self.ca.issue("localhost"))
        settings = make_settings({"websocket": {
            "tls_listen": "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (self.key_path, self.cert_path)}})
        # The usual test server (stores, node bus, plain listener), plus wss.
        server = yield ImdServer(settings).start()
        self.addCleanup(server.stop)
        self.app = server.app
        endpoint = self.app.server_endpoint(settings.websocket.tls_listen)
        listening = yield endpoint.listen(self.app.websocket_factory(secure=True))
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        self.app.tls.startService()  # the SIGHUP handler
        self.addCleanup(self.app.tls.stopService)
        self.clients = []
        self.addCleanup(lambda: defer.gatherResults([drop(c) for c in self.clients if not c.closed.called]))

    def install_certificate(self, issued):
        cert_pem, key_pem, serial = issued
        with open(self.key_path, "wb") as f:
            f.write(key_pem)
        with open(self.cert_path, "wb") as f:
            f.write(cert_pem)
        return serial

    @defer.inlineCallbacks
    def connect(self, path, hostname="localhost", ca_pem=None):
        options = optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(ca_pem or self.ca.cert_pem),
                                      acceptableProtocols=[b"http/1.1"])
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5))
        factory = WebSocketClientFactory("wss://%s:%d%s" % (hostname, self.port, path))
        factory.protocol = TestClient
        client = yield endpoint.connect(factory)
        self.clients.append(client)
        yield with_deadline(client.opened, what="wss open")
        return client

    async def test_login_and_message_over_wss(self):
        await self.befriend(1, 2)
        alice, bob = await self.login(1), await self.login(2)
        reply = await self.ask(alice, {"id": "m1", "to": 2, "type": "t", "msg": "over TLS"})
        self.assertEqual(reply["type"], "A")
        delivered = await bob.next()
        self.assertEqual((delivered["from"], delivered["type"], delivered["msg"]), (1, "t", "over TLS"))
        self.assertEqual(alice.transport.negotiatedProtocol, b"http/1.1")
        self.assertEqual(alice.transport.getPeerCertificate().get_serial_number(), self.serial)

    async def test_a_burst_past_max_errors_over_wss_gets_every_E_then_C_then_4008(self):
        # issue 22 item 1: over TLS the connection is closed, not half-closed,
        # once the close frame is written; everything before it still arrives
        client = await self.login(1)
        seen = []
        on_message = client.onMessage
        client.onMessage = lambda payload, binary: (seen.append(json.loads(payload)["type"]),
                                                    on_message(payload, binary))
        for n in range(22):
            client.send({"id": n, "to": 0, "type": "X"})
        code, _ = await client.wait_closed()
        self.assertEqual((seen, code), (["E"] * 20 + ["C"], 4008))

    async def test_listener_as_on_twisted_before_26(self):
        # Twisted before 26 (PyPy 3.9's) has no wrapServerTLS, and its
        # CertificateOptions is only a context factory: imd wraps the TCP
        # endpoint with TLSMemoryBIOFactory itself and makes the connection.
        self.patch(imd.tls, "wrapServerTLS", None)
        endpoint = self.app.server_endpoint(self.app.settings.websocket.tls_listen)
        self.assertIsInstance(endpoint, imd.tls._TLSServerEndpoint)
        creator = self.app.tls._creators[-1]
        creator._options = _ContextFactoryOnly(creator._options)
        listening = await endpoint.listen(self.app.websocket_factory(secure=True))
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        await self.test_login_and_message_over_wss()

    async def test_refused_token_over_wss(self):
        client = await self.connect("/not-a-jwt")
        self.assertEqual((await client.next())["type"], "C")
        self.assertEqual((await client.wait_closed())[0], 4001)

    async def test_client_verifies_the_hostname(self):
        with self.assertRaises(ConnectionError):
            await self.connect("/" + self.token(1), hostname="imd.example.org")

    async def test_client_refuses_an_unknown_ca(self):
        with self.assertRaises(ConnectionError):
            await self.connect("/" + self.token(1), ca_pem=TestCA("another CA").cert_pem)

    async def test_sighup_reloads_the_certificate_and_keeps_open_connections(self):
        await self.befriend(1, 2)
        alice = await self.login(1)
        self.assertEqual(alice.transport.getPeerCertificate().get_serial_number(), self.serial)

        new_serial = self.install_certificate(self.ca.issue("localhost"))
        reloaded = self.app.tls.when_reloaded()
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(await with_deadline(reloaded, what="reload"), 1)

        bob = await self.login(2)
        self.assertEqual(bob.transport.getPeerCertificate().get_serial_number(), new_serial)
        # The connection opened before the reload is still up and working.
        self.assertEqual((await self.ask(alice, {"id": "p", "to": 0, "type": "P"}))["type"], "P")
        self.assertEqual((await self.ask(alice, {"id": "m", "to": 2, "type": "t", "msg": "hi"}))["type"], "A")
        self.assertEqual((await bob.next())["msg"], "hi")
        self.assertFalse(alice.closed.called)

    async def test_failed_reload_keeps_the_old_certificate(self):
        with open(self.cert_path, "wb") as f:
            f.write(b"not a certificate\n")
        self.assertEqual(self.app.tls.reload(), 0)
        self.flushLoggedErrors()
        client = await self.login(3)
        self.assertEqual(client.transport.getPeerCertificate().get_serial_number(), self.serial)

    def _stdlib_handshake(self, maximum_version):
        context = ssl.create_default_context(cadata=self.ca.cert_pem.decode("ascii"))
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum_version
        try:
            # Let an old protocol through on the client side, so that only
            # the server's policy can refuse it.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        with socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.version()

    async def test_tls_1_2_is_the_minimum(self):
        version = await threads.deferToThread(self._stdlib_handshake, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(version, "TLSv1.2")
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            await threads.deferToThread(self._stdlib_handshake, ssl.TLSVersion.TLSv1_1)


class SelfSignedTests(unittest.TestCase):
    """``imd-admin tls selfsigned``: the development certificate serves
    every loopback name a client on this machine may be handed."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        self.cert_path = os.path.join(self.dir, "cert.pem")
        self.key_path = os.path.join(self.dir, "key.pem")

    def selfsigned(self, *hosts):
        admin = os.path.join(os.path.dirname(sys.executable), "imd-admin")
        argv = [admin, "tls", "selfsigned", "--out", self.dir]
        for host in hosts:
            argv += ["--host", host]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    async def listen(self, interface):
        escaped = interface.replace(":", "\\:")
        description = "ssl:0:interface=%s:privateKey=%s:certKey=%s" % (escaped, self.key_path, self.cert_path)
        port = await imd.tls.TlsReloader(reactor).endpoint(description).listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def verified_handshake(self, address, port, name):
        """A TLS handshake to ``address`` as a client that trusts only the
        generated certificate and checks it names ``name``."""
        context = ssl.create_default_context(cafile=self.cert_path)
        with socket.create_connection((address, port), timeout=DEADLINE) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                return tls.version()

    async def test_the_certificate_for_localhost_verifies_for_every_loopback_name(self):
        # issue 22 item 18: --host localhost, then wss://127.0.0.1:PORT/ URLs
        # (interface=127.0.0.1) failed verification
        out = self.selfsigned("localhost")
        self.assertIn("localhost, 127.0.0.1, ::1", out)
        port4 = await self.listen("127.0.0.1")
        port6 = await self.listen("::1")
        for address, port, name in (("127.0.0.1", port4, "127.0.0.1"), ("127.0.0.1", port4, "localhost"),
                                    ("::1", port6, "::1")):
            version = await threads.deferToThread(self.verified_handshake, address, port, name)
            self.assertIn(version, ("TLSv1.2", "TLSv1.3"), name)
        # a name it does not cover still fails: the client does verify
        with self.assertRaises(ssl.SSLCertVerificationError):
            await threads.deferToThread(self.verified_handshake, "127.0.0.1", port4, "imd.example.org")
        # the certificate is public, its key is not
        self.assertEqual((stat.S_IMODE(os.stat(self.cert_path).st_mode), stat.S_IMODE(os.stat(self.key_path).st_mode)),
                         (0o644, 0o600))

    async def test_no_host_covers_the_loopback_names_and_other_hosts_are_added(self):
        self.selfsigned("imd.example.org", "192.0.2.7")
        with open(self.cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(([str(n) for n in names.get_values_for_type(x509.DNSName)],
                          [str(a) for a in names.get_values_for_type(x509.IPAddress)]),
                         (["imd.example.org", "localhost"], ["192.0.2.7", "127.0.0.1", "::1"]))
        os.remove(self.cert_path)
        os.remove(self.key_path)
        self.selfsigned()
        port = await self.listen("127.0.0.1")
        self.assertIn(await threads.deferToThread(self.verified_handshake, "127.0.0.1", port, "127.0.0.1"),
                      ("TLSv1.2", "TLSv1.3"))

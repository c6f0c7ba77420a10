"""TLS listeners whose certificate can be replaced while the daemon runs.

A ``tls_listen`` value is a Twisted ``ssl:`` endpoint string
(``ssl:8443:interface=0.0.0.0:privateKey=KEY:certKey=CERT[:extraCertChain=CHAIN]``).
We take it apart ourselves and listen on the plain TCP part wrapped in
:class:`ReloadableServerTLS`, which hands each new connection the *current*
:class:`CertificateOptions`: a reload (SIGHUP) swaps that object, so new
connections get the new certificate while open ones keep the session they
negotiated.  A reload that fails (missing file, key not matching the
certificate) is logged and the old certificate stays in use.

Policy, the same for every listener: TLS 1.2 minimum, forward-secret AEAD
ciphers only (TLS 1.3 suites are all modern), ALPN ``http/1.1`` (WebSocket
runs over HTTP/1.1).
"""

import datetime
import hashlib
import ipaddress
import re
import signal
import typing
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple, Union, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import FILETYPE_PEM
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolFactory, IStreamServerEndpoint
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.ssl import (AcceptableCiphers, Certificate, CertificateOptions,
                                  DiffieHellmanParameters, KeyPair, TLSVersion, platformTrust,
                                  trustRootFromCertificates)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.filepath import FilePath
from twisted.web.client import BrowserLikePolicyForHTTPS
from zope.interface import implementer

from imd import endpoints

if TYPE_CHECKING:
    _WrapServerTLS = Callable[[IOpenSSLServerConnectionCreator, IStreamServerEndpoint], IStreamServerEndpoint]
wrapServerTLS: "Optional[_WrapServerTLS]"
try:
    from twisted.internet.endpoints import wrapServerTLS
except ImportError:  # Twisted before 26 (PyPy 3.9 gets 25.5)
    wrapServerTLS = None

_log = Logger()

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
ALPN = [b"http/1.1"]

_KNOWN = {"port", "interface", "backlog", "privateKey", "certKey", "extraCertChain", "dhParameters"}
_CERT_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def is_tls_endpoint(description: str) -> bool:
    return description.split(":", 1)[0] == "ssl"


class TlsEndpointSpec:
    """The parts of an ``ssl:`` string: where to listen and which files to load."""

    def __init__(self, port: str, interface: str, backlog: str, key_path: str, cert_path: str,
                 chain_path: Optional[str], dh_path: Optional[str]) -> None:
        self.port, self.interface, self.backlog = port, interface, backlog
        self.key_path, self.cert_path, self.chain_path, self.dh_path = key_path, cert_path, chain_path, dh_path

    def tcp_description(self) -> str:
        text = "tcp:port=%s" % self.port
        if self.interface:
            text += ":interface=" + endpoints.escape(self.interface)
        if self.backlog:
            text += ":backlog=" + self.backlog
        return text


def parse_tls_endpoint(description: str) -> TlsEndpointSpec:
    """A :class:`TlsEndpointSpec` from ``ssl:...``; ValueError naming what is wrong."""
    endpoint = endpoints.parse(description)
    if endpoint.kind != "ssl":
        raise ValueError("a TLS listener must be an ssl: endpoint string")
    named = dict(endpoint.arguments)
    unknown = sorted(set(named) - _KNOWN)
    if unknown or endpoint.extra_positional:
        raise ValueError("ssl: option %r is not supported here (known: %s); the TLS version and ciphers "
                         "are fixed by imd" % ((unknown or endpoint.extra_positional)[0], ", ".join(sorted(_KNOWN))))
    if not named.get("port", "").isdigit():
        raise ValueError("ssl: needs a port, e.g. ssl:8443:privateKey=key.pem:certKey=cert.pem")
    if not named.get("privateKey"):
        raise ValueError("ssl: needs privateKey=<PEM key file>")
    key_path = named["privateKey"]
    return TlsEndpointSpec(named["port"], named.get("interface", ""), named.get("backlog", ""),
                           key_path, named.get("certKey") or key_path,
                           named.get("extraCertChain") or None, named.get("dhParameters") or None)


def load_certificate_options(spec: TlsEndpointSpec) -> CertificateOptions:
    """Read the files named by ``spec`` into server :class:`CertificateOptions`.

    Every certificate after the first in the ``certKey`` file (a
    ``fullchain.pem``) is sent as part of the chain, as is ``extraCertChain``.
    Raises on any problem, including a key that does not match.
    """
    cert_pems = _CERT_PEM.findall(FilePath(spec.cert_path).getContent())
    if not cert_pems:
        raise ValueError("no certificate in %s" % spec.cert_path)
    key = KeyPair.load(FilePath(spec.key_path).getContent(), FILETYPE_PEM)
    chain = cert_pems[1:]
    if spec.chain_path:
        chain += _CERT_PEM.findall(FilePath(spec.chain_path).getContent())
    options = CertificateOptions(
        privateKey=key.original,
        certificate=Certificate.loadPEM(cert_pems[0]).original,
        extraCertChain=[Certificate.loadPEM(pem).original for pem in chain],
        dhParameters=DiffieHellmanParameters.fromFile(FilePath(spec.dh_path)) if spec.dh_path else None,
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        acceptableProtocols=ALPN,
    )
    # Builds the OpenSSL context now, so a key that does not match the
    # certificate fails here rather than on the first client.
    options.getContext()
    return options


def certificate_expiry(path: str) -> float:
    """When the first certificate in ``path`` expires, as Unix time (for /metrics)."""
    cert = x509.load_pem_x509_certificate(_CERT_PEM.findall(FilePath(path).getContent())[0])
    return cert.not_valid_after_utc.timestamp()


def describe_certificate(path: str) -> str:
    """``subject, expires ..., sha256 ...`` of the first certificate in ``path``, for the log."""
    cert = x509.load_pem_x509_certificate(_CERT_PEM.findall(FilePath(path).getContent())[0])
    return "%s, expires %s, sha256 %s" % (
        cert.subject.rfc4514_string(), cert.not_valid_after_utc.strftime("%Y-%m-%d"),
        hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:16])


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """Gives each new TLS connection the certificate loaded most recently."""

    not_after: Optional[float] = None   # Unix time the certificate in use expires

    def __init__(self, spec: TlsEndpointSpec, options: CertificateOptions) -> None:
        self.spec = spec
        self._options = options

    @classmethod
    def load(cls, spec: TlsEndpointSpec) -> "ReloadableServerTLS":
        creator = cls(spec, load_certificate_options(spec))
        creator.not_after = certificate_expiry(spec.cert_path)
        return creator

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        options = self._options
        if hasattr(options, "serverConnectionForTLS"):
            return options.serverConnectionForTLS(protocol)
        # Twisted before 26 (PyPy 3.9's): CertificateOptions is only a context
        # factory; this is what Twisted itself then does with one.
        return SSL.Connection(options.getContext(), None)

    def reload(self) -> bool:
        """Re-read the files; True when the new certificate is in use."""
        try:
            options = load_certificate_options(self.spec)
            about = describe_certificate(self.spec.cert_path)
            not_after = certificate_expiry(self.spec.cert_path)
        except Exception as e:
            _log.error("TLS certificate reload failed for {cert}, keeping the old one: {why}",
                       cert=self.spec.cert_path, why=str(e) or e.__class__.__name__)
            return False
        self._options = options
        self.not_after = not_after
        _log.info("TLS certificate reloaded from {cert}: {about}", cert=self.spec.cert_path, about=about)
        return True


class ServerEndpoint(typing.Protocol):
    """A stream server endpoint as this module calls it (twisted's
    IStreamServerEndpoint is a zope interface, which mypy cannot call; for
    the same reason the casts below say which interface an object provides)."""

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred: ...


@implementer(IStreamServerEndpoint)
class _TLSServerEndpoint:
    """What Twisted's ``wrapServerTLS`` returns, for Twisted versions without it."""

    def __init__(self, creator: ReloadableServerTLS, wrapped: ServerEndpoint) -> None:
        self._creator = creator
        self._wrapped = wrapped

    def listen(self, factory: IProtocolFactory) -> defer.Deferred:
        creator = cast(IOpenSSLServerConnectionCreator, self._creator)
        return self._wrapped.listen(cast(IProtocolFactory, TLSMemoryBIOFactory(creator, False, factory)))


def wrap_server_tls(creator: ReloadableServerTLS, endpoint: ServerEndpoint) -> ServerEndpoint:
    """``endpoint`` with TLS from ``creator`` on every connection it accepts."""
    if wrapServerTLS is not None:
        wrapped = wrapServerTLS(cast(IOpenSSLServerConnectionCreator, creator), cast(IStreamServerEndpoint, endpoint))
        return cast(ServerEndpoint, wrapped)
    return _TLSServerEndpoint(creator, endpoint)


class Reactor(typing.Protocol):
    """What the reloader calls on the reactor (which it also hands to
    ``serverFromString``)."""

    def callFromThread(self, f: Callable[..., Any], *args: object, **kwargs: object) -> None: ...


_SignalHandler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers]


class TlsReloader(Service):
    """Owns the reloadable listeners' certificates and reloads them on
    SIGHUP, with whatever else registered through :meth:`also_reload` (the
    blocklist, imd.moderation): the process's one SIGHUP handler."""

    name = "tls-reloader"

    def __init__(self, reactor: Reactor) -> None:
        self._reactor = reactor
        self._creators: List[ReloadableServerTLS] = []
        self._waiters: List[defer.Deferred[int]] = []
        self._previous_handler: Optional[_SignalHandler] = None
        self._also: List[Tuple[str, Callable[[], Any]]] = []

    def endpoint(self, description: str) -> ServerEndpoint:
        """A server endpoint for an ``ssl:`` string whose certificate reloads."""
        spec = parse_tls_endpoint(description)
        creator = ReloadableServerTLS.load(spec)
        self._creators.append(creator)
        return wrap_server_tls(creator, serverFromString(self._reactor, spec.tcp_description()))

    def __len__(self) -> int:
        return len(self._creators)

    def certificates(self) -> List[Tuple[str, str, Optional[float]]]:
        """``(port, certificate path, expiry Unix time)`` of each listener."""
        return [(c.spec.port, c.spec.cert_path, c.not_after) for c in self._creators]

    def also_reload(self, what: str, reload: Callable[[], Any]) -> None:
        """Something else SIGHUP reloads (``what`` names it in the log
        line), after the certificates: one signal handler for the process."""
        self._also.append((what, reload))

    def reload(self) -> int:
        """Reload every certificate, then what :meth:`also_reload` added;
        how many certificates were replaced."""
        replaced = sum(1 for creator in self._creators if creator.reload())
        for what, reload in self._also:
            try:
                reload()
            except Exception:
                _log.failure("reloading {what} failed", what=what)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(replaced)
        return replaced

    def when_reloaded(self) -> defer.Deferred:
        """Fires (with the number replaced) after the next reload."""
        d: defer.Deferred[int] = defer.Deferred()
        self._waiters.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        # Installed even without TLS listeners: systemd's ExecReload sends
        # SIGHUP, whose default action would end the process.
        if hasattr(signal, "SIGHUP"):
            self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None

    def _on_sighup(self, signum: int, frame: Optional[FrameType]) -> None:
        # A signal handler may run between any two bytecodes: hand the work
        # to the reactor thread (this also wakes the reactor up).
        _log.info("SIGHUP: reloading {what}", what=", ".join(["TLS certificates"] + [w for w, _ in self._also]))
        self._reactor.callFromThread(self.reload)


# What a development certificate always covers: a client on this machine
# may be handed ws URLs with any of them (a listener on interface=127.0.0.1
# gives wss://127.0.0.1:PORT/ URLs, a browser asks for localhost).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def self_signed(hosts: Union[str, Sequence[str]] = (), days: int = 30,
                now: Optional[datetime.datetime] = None) -> Tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for ``hosts`` (names or IP
    addresses) and the loopback names: development only."""
    if isinstance(hosts, str):
        hosts = (hosts,)
    names = list(dict.fromkeys(list(hosts) + list(LOOPBACK_NAMES)))
    host = names[0]
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: List[x509.GeneralName] = []
    for each in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(each)))
        except ValueError:
            alt_names.append(x509.DNSName(each))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imd development (self-signed)")])
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


# --- the client side: trusting a server imd fetches from ----------------------

def load_ca_certificates(path: str) -> List[Certificate]:
    """Every certificate in the PEM file ``path`` (OSError, or ValueError when
    it holds none or one does not parse)."""
    pems = _CERT_PEM.findall(FilePath(path).getContent())
    if not pems:
        raise ValueError("no PEM certificate in the file")
    return [Certificate.loadPEM(pem) for pem in pems]


@implementer(IOpenSSLTrustRoot)
class _SystemAndExtraCAs:
    """The system's CAs (Twisted's ``platformTrust``) and some more."""

    def __init__(self, extra: List[Certificate]) -> None:
        self._system: Any = platformTrust()
        self._extra: Any = trustRootFromCertificates(extra)

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        # IOpenSSLTrustRoot's one method: each adds to the same context's store
        self._system._addCACertsToContext(context)
        self._extra._addCACertsToContext(context)


def client_tls_policy(ca_path: str = "") -> BrowserLikePolicyForHTTPS:
    """What an ``Agent`` checks an https server against: the system's CAs,
    plus those of the PEM file ``ca_path`` when given; the host name is
    checked by service_identity."""
    if not ca_path:
        return BrowserLikePolicyForHTTPS()
    return BrowserLikePolicyForHTTPS(trustRoot=_SystemAndExtraCAs(load_ca_certificates(ca_path)))

"""wstokens: RS256 JWTs signed with the private key and verified against the
public key kept in Redis.

PyJWT does the cryptography; expiry is checked here against the injected
clock so tests can move time.  The public key is cached and re-read when a
signature does not verify, so a key rotation takes effect without a restart;
the private key is parsed once per PEM text Redis holds.
"""

import binascii
import math
import re
import uuid
from typing import TYPE_CHECKING, Any, Dict, Generator, List, Optional, Protocol, Tuple, Union

import jwt
from jwt.utils import base64url_decode, base64url_encode
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from twisted.internet import defer

from imd.errors import LoginRefused, StoreUnavailable
from imd.protocol import parse_uid
from imd.startup import StartupGate, StillStarting

if TYPE_CHECKING:
    from typing_extensions import TypeGuard

    from imd.stores.tokens import TokenStore

TOKEN_TYPE = "websocket"
ALGORITHM = "RS256"
# The ceiling of [auth] token_ttl: a verifier built without a ttl still
# refuses tokens meant to live longer.
MAX_TOKEN_LIFETIME = 86400

_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")


class Clock(Protocol):
    """What the token code needs of a clock (the reactor, or a test's Clock)."""

    def seconds(self) -> float: ...


class _JWS(jwt.PyJWS):
    """PyJWS whose check of each token segment tests the alphabet with one
    regex instead of a Python generator over every byte: that generator
    alone was ~100 of the ~180 us PyJWT spent on a wstoken, more than the
    RSA verification (~30 us).  The checks and their errors are PyJWS's own
    (2.x, GHSA-hxm8-2xgr-2p9m); tests/test_login.py compares the two on
    good and bad segments."""

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        padding = 0
        stripped = segment
        while stripped.endswith(b"="):
            stripped = stripped[:-1]
            padding += 1
            if padding > 2:
                raise jwt.DecodeError(f"Invalid {name} padding")
        if padding and len(segment) % 4 != 0:
            raise jwt.DecodeError(f"Invalid {name} padding")
        if len(stripped) % 4 == 1 or not _BASE64URL.fullmatch(stripped):
            raise jwt.DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64url_decode(stripped)
        except (TypeError, binascii.Error) as err:
            raise jwt.DecodeError(f"Invalid {name} padding") from err
        if base64url_encode(decoded) != stripped:
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded


def _token_decoder() -> jwt.PyJWT:
    """PyJWT with :class:`_JWS`, where this PyJWT has the method it replaces
    (else PyJWT as it comes)."""
    decoder = jwt.PyJWT()
    if callable(getattr(jwt.PyJWS, "_decode_base64url_segment", None)) and hasattr(decoder, "_jws"):
        decoder._jws = _JWS(options=decoder._get_sig_options())
    return decoder


_DECODER = _token_decoder()


def generate_key_pair(bits: int = 2048) -> Tuple[str, str]:
    """(public PEM, private PEM) as text."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode("ascii")
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
    return public_pem, private_pem


def issue_token(private_key: Union[str, rsa.RSAPrivateKey], uid: int, now: float, ttl: int = 120) -> str:
    """A wstoken for ``uid`` (contract §1 claims); ``private_key`` is a PEM
    or a key :func:`load_private_key` parsed (much faster: see there)."""
    iat = int(now)
    claims = {"id": uid, "type": TOKEN_TYPE, "iat": iat, "exp": iat + ttl, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, private_key, algorithm=ALGORITHM)


class IssuerKeyError(Exception):
    """The private key in Redis is missing or cannot sign."""


_PROBE = b"imd private key self-test"


def load_private_key(pem: Union[str, bytes]) -> rsa.RSAPrivateKey:
    """The RSA private key of ``pem``, checked by signing and verifying a probe.

    cryptography's full key validation (primality of p and q) takes ~45 ms
    of CPU and holds the GIL, so a thread would not take it off the reactor.
    The key is our own (imd-admin keys init wrote it), so that validation is
    skipped and a sign/verify round trip (~1 ms) proves the key signs what its
    public half verifies.
    """
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IssuerKeyError("server private key is not a PEM key")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise IssuerKeyError("server private key is not an RSA key")
    try:
        signature = key.sign(_PROBE, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(signature, _PROBE, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise IssuerKeyError("server private key does not verify its own signature")
    return key


class TokenIssuer:
    """Signs wstokens with ``privateKey`` from Redis.

    Each call GETs the PEM (so a rotation takes effect on the next token);
    it is parsed only when its text differs from the last one.  Signing with
    the parsed key takes ~0.6 ms and stays on the reactor: cryptography holds
    the GIL while it signs (measured: two threads sign slower than one), and
    the http role's rate limits bound how often it runs.
    """

    def __init__(self, store: "TokenStore", clock: Clock, ttl: int) -> None:
        self._store = store
        self._clock = clock
        self.ttl = ttl
        self._key: Optional[rsa.RSAPrivateKey] = None
        self._key_pem: Optional[str] = None
        self._key_problem: Optional[str] = None

    @defer.inlineCallbacks
    def issue(self, uid: int) -> Generator[defer.Deferred, Any, str]:
        """A Deferred wstoken; StoreUnavailable or IssuerKeyError otherwise."""
        pem = yield self._store.get_private_key()
        if not pem:
            raise IssuerKeyError("server keys are not set up (imd-admin keys init)")
        if pem != self._key_pem:
            # An unusable key is remembered too, so it is not parsed again
            # for every request until the PEM changes.
            try:
                self._key, self._key_problem = load_private_key(pem), None
            except IssuerKeyError as e:
                self._key, self._key_problem = None, str(e)
            self._key_pem = pem
        if self._key_problem is not None:
            raise IssuerKeyError(self._key_problem)
        assert self._key is not None   # parsed whenever there is no problem
        return issue_token(self._key, uid, self._clock.seconds(), self.ttl)


def is_time(value: Any) -> "TypeGuard[float]":
    """A finite number of seconds (JSON allows NaN and 1e999 through PyJWT)."""
    try:
        return type(value) in (int, float) and math.isfinite(value)
    except OverflowError:   # an int past float's range
        return False


def token_from_request(path: str, params: Optional[Dict[str, List[str]]]) -> Optional[str]:
    """The token from ``/<token>`` or ``?token=<token>``; None when absent."""
    values = params.get("token") if params else None
    if values and values[0]:
        return values[0]
    token = path.strip("/")
    return token or None


class TokenVerifier:
    """Checks a wstoken and returns the user id it names, or LoginRefused."""

    def __init__(self, store: "TokenStore", clock: Clock, single_use: bool = True,
                 max_lifetime: float = MAX_TOKEN_LIFETIME, startup: Optional[StartupGate] = None,
                 hold: Optional[float] = None) -> None:
        """``startup``: while the process is starting, a login waits for
        it, at most ``hold`` seconds (imd.startup)."""
        self._store = store
        self._clock = clock
        self._single_use = single_use
        self._max_lifetime = max_lifetime
        self._startup = startup
        self._hold = hold
        self._key: Optional[rsa.RSAPublicKey] = None
        self._key_pem: Union[str, bytes, None] = None

    @defer.inlineCallbacks
    def verify(self, token: Optional[str]) -> Generator[defer.Deferred, Any, int]:
        if not token:
            raise LoginRefused("missing token")
        if self._startup is not None and self._startup.starting:
            try:
                yield self._startup.wait(self._hold)
            except StillStarting:
                raise LoginRefused("service unavailable, try again later")
        claims = yield self._decode(token)
        uid = self._check_claims(claims)
        if self._single_use:
            try:
                fresh = yield self._store.claim_jti(claims["jti"], claims["exp"])
            except StoreUnavailable:
                raise LoginRefused("service unavailable, try again later")
            if not fresh:
                raise LoginRefused("token already used")
        return uid

    @defer.inlineCallbacks
    def _decode(self, token: str) -> Generator[defer.Deferred, Any, Dict[str, Any]]:
        if self._key is None:
            yield self._load_key()
        try:
            return self._decode_with_cached_key(token)
        except jwt.InvalidSignatureError:
            # The key may have been rotated since we cached it.
            changed = yield self._load_key()
            if not changed:
                raise LoginRefused("bad token signature")
            return self._decode_with_cached_key(token)

    def _decode_with_cached_key(self, token: str) -> Dict[str, Any]:
        # One decode does it all: PyJWT refuses any alg but RS256 (none,
        # HS256 keyed with the public PEM, ...) before it checks a signature.
        # (Reading the header first, as a separate step, decoded the token
        # twice: ~6% of a login's CPU.)
        assert self._key is not None   # _decode loaded it
        try:
            return _DECODER.decode(token, self._key, algorithms=[ALGORITHM],
                                   options={"verify_exp": False, "verify_iat": False,
                                            "verify_nbf": False, "verify_aud": False})
        except jwt.InvalidSignatureError:
            raise
        except jwt.InvalidAlgorithmError:
            raise LoginRefused("token algorithm must be RS256")
        except jwt.DecodeError:
            raise LoginRefused("malformed token")
        except jwt.PyJWTError as e:
            raise LoginRefused("bad token: %s" % e)

    @defer.inlineCallbacks
    def _load_key(self) -> Generator[defer.Deferred, Any, bool]:
        """Re-read ``publicKey``; True when it differs from the cached one."""
        try:
            pem = yield self._store.get_public_key()
        except StoreUnavailable:
            raise LoginRefused("service unavailable, try again later")
        if not pem:
            raise LoginRefused("server keys are not set up")
        if pem == self._key_pem:
            return False
        try:
            key = serialization.load_pem_public_key(pem.encode("ascii") if isinstance(pem, str) else pem)
        except ValueError:
            raise LoginRefused("server public key is not a PEM key")
        if not isinstance(key, rsa.RSAPublicKey):
            raise LoginRefused("server public key is not an RSA key")
        self._key, self._key_pem = key, pem
        return True

    def _check_claims(self, claims: Dict[str, Any]) -> int:
        now = self._clock.seconds()
        if claims.get("type") != TOKEN_TYPE:
            raise LoginRefused("wrong token type")
        exp = claims.get("exp")
        if not is_time(exp):
            raise LoginRefused("token has no expiry")
        if exp <= now:
            raise LoginRefused("token expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not is_time(nbf) or nbf > now):
            raise LoginRefused("token not yet valid")
        iat = claims.get("iat")
        if iat is not None and (not is_time(iat) or iat > now + 60):
            raise LoginRefused("token issued in the future")
        # A token meant to live longer than imd issues them was not issued by
        # this config; its exp would also be out of range for Redis (1e30).
        if exp - (now if iat is None else iat) > self._max_lifetime:
            raise LoginRefused("token lifetime over token_ttl")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= 128:
            raise LoginRefused("token has no jti")
        try:
            return parse_uid(claims.get("id"), "id")
        except ValueError:
            raise LoginRefused("token id is not a user id")

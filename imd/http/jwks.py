"""The platform's JSON Web Key Set (``[http] auth = jwks:<url>``): which keys
verify platform tokens, fetched at start, kept ``[http] jwks_cache``
seconds, refetched for an unknown key id at most once per
:data:`REFETCH_INTERVAL` seconds.

- Keys are PyJWT's :class:`jwt.PyJWK`, built one by one (``PyJWKSet``
  lets a malformed member's KeyError through); only RS256 (RSA of at least
  2048 bits) and ES256 (P-256) public keys are kept, by ``(kid, alg)``.
  Others in the set (Keycloak's ``RSA-OAEP`` encryption key, HS256 ``oct``
  keys, RS512...) are skipped; a set with none of ours is a failed fetch.
- Fetches: at start, when the cache expires, after a failure (1, 2, 4...
  s later, at most :data:`REFETCH_INTERVAL` apart), and for a token whose
  key is not held -- only when the last fetch of any kind (the one at
  start included) began at least :data:`REFETCH_INTERVAL` ago; while that
  limit holds, the token is refused (:class:`UnknownKey`, a 401).  A token
  that arrives while a fetch is under way waits for it.
- While the set cannot be had (the last fetch failed, or none has
  succeeded yet), keys already held keep verifying and a token whose key is
  not held gets :class:`KeySetUnavailable` (a 503).
- Each change seen between two fetches (keys added, removed or replaced)
  is logged as a rotation.

No I/O here but through the fetcher (imd.http.jwks_fetch); time is the
injected clock's.
"""

import json
from typing import Any, Callable, Dict, List, Optional, Tuple

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK, PyJWTError
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from imd.http.jwks_fetch import FetchError

_log = Logger()

ALGORITHMS = ("RS256", "ES256")
REFETCH_INTERVAL = 30.0
FIRST_RETRY = 1.0
MIN_RSA_BITS = 2048
MAX_KEYS = 100

KeyId = Tuple[Optional[str], str]   # (kid, alg)


class UnknownKey(Exception):
    """No key of the set verifies this token (a 401)."""


class KeySetUnavailable(Exception):
    """The set cannot be had and the token's key is not held (a 503);
    ``retry_after``: seconds until the next try."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_key_set(body: bytes) -> Dict[KeyId, PyJWK]:
    """The RS256 and ES256 public keys of a JWKS document, by (kid, alg);
    FetchError when it is not one or holds none of them."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FetchError("the answer is not JSON")
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FetchError('the answer is not a key set (no "keys" list)')
    if len(entries) > MAX_KEYS:
        raise FetchError("the key set has %d keys, more than %d" % (len(entries), MAX_KEYS))
    keys: Dict[KeyId, PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not _may_verify(entry):
            continue
        try:
            jwk = PyJWK(entry)
        except (PyJWTError, KeyError, TypeError, ValueError):   # a member missing or malformed
            continue
        if _usable(jwk):
            keys.setdefault((_kid(jwk), jwk.algorithm_name), jwk)
    if not keys:
        raise FetchError("the key set has no usable RS256 or ES256 public key (%d keys)" % len(entries))
    return keys


def _may_verify(entry: Dict[str, Any]) -> bool:
    """A JWK meant for signatures with one of our algorithms (no private
    key: a set that publishes one is misconfigured, and nothing of it is
    taken)."""
    if entry.get("use", "sig") != "sig" or "d" in entry:
        return False
    alg = entry.get("alg")
    if alg is not None:
        return alg in ALGORITHMS
    return entry.get("kty") == "RSA" or (entry.get("kty") == "EC" and entry.get("crv") == "P-256")


def _usable(jwk: PyJWK) -> bool:
    key = jwk.key
    if jwk.algorithm_name == "RS256":
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if jwk.algorithm_name == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    return False


def _kid(jwk: PyJWK) -> Optional[str]:
    kid = jwk.key_id
    return kid if isinstance(kid, str) else None


def _fingerprints(keys: Dict[KeyId, PyJWK]) -> Dict[KeyId, str]:
    """What each key is (its JWK's public members), to tell a key replaced
    under the same kid."""
    found = {}
    for key_id, jwk in keys.items():
        data = jwk.Algorithm.to_jwk(jwk.key, as_dict=True)
        found[key_id] = json.dumps({k: data[k] for k in sorted(data) if k in ("kty", "crv", "n", "e", "x", "y")})
    return found


def _names(key_ids: List[KeyId]) -> str:
    return ", ".join("%s (%s)" % (kid if kid is not None else "no kid", alg) for kid, alg in sorted(
        key_ids, key=lambda k: (k[0] or "", k[1]))) or "none"


class JwksKeys(Service):
    """The key set of ``[http] auth = jwks:<url>``, a service of the http role."""

    def __init__(self, fetch: Callable[[], defer.Deferred], clock: Any, cache_seconds: float,
                 url: str = "") -> None:
        self._fetch = fetch
        self._clock = clock
        self.cache_seconds = cache_seconds
        self.url = url
        self.keys: Dict[KeyId, PyJWK] = {}
        self._fingerprints: Dict[KeyId, str] = {}
        self.available = False
        self.problem: Optional[str] = "not fetched yet"
        # figures (read by /metrics and /healthz)
        self.fetched_at: Optional[float] = None     # last fetch that succeeded
        self.attempted_at: Optional[float] = None   # last fetch started
        self.fetches_ok = 0
        self.fetches_failed = 0
        self.held_back = 0
        self.rotations = 0
        self._failures = 0
        self._in_flight: Optional[defer.Deferred] = None
        self._timer: Optional[DelayedCall] = None
        self._next_at: Optional[float] = None

    # --- the service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._start_fetch("start")

    def stopService(self) -> None:
        super().stopService()
        self._cancel_timer()
        if self._in_flight is not None:
            self._in_flight.cancel()

    # --- what the token endpoint asks -----------------------------------------

    def key_for(self, kid: Optional[str], alg: str) -> defer.Deferred:
        """A Deferred :class:`jwt.PyJWK` for a token's header ``kid`` and
        ``alg`` (one of :data:`ALGORITHMS`): from the cache when held; else,
        within the refetch limit, from a fresh fetch; else UnknownKey or
        KeySetUnavailable."""
        key = self._held(kid, alg)
        if key is not None:
            return defer.succeed(key)
        if self._in_flight is None:
            if not self.available:
                return defer.fail(self._unavailable())
            if kid is None:   # (a key set refetched would not name it either)
                return defer.fail(self._no_kid(alg))
            wait = self.refetch_wait()
            if wait > 0:
                self.held_back += 1
                return defer.fail(UnknownKey("unknown key id %r; the key set is refetched for an unknown "
                                             "key at most once per %d s (next in %d s)"
                                             % (kid[:64], REFETCH_INTERVAL, max(1, round(wait)))))
            self._start_fetch("unknown key %r" % (kid[:64],))
        if self._in_flight is None:   # it ended at once
            return defer.maybeDeferred(self._looked_up, kid, alg)
        waiting: defer.Deferred = defer.Deferred()
        self._in_flight.addBoth(_pass_on(lambda _: waiting.callback(None)))
        return waiting.addCallback(lambda _: self._looked_up(kid, alg))

    def refetch_wait(self) -> float:
        """Seconds until an unknown key may refetch the set (0: now)."""
        if self.attempted_at is None:
            return 0.0
        return max(0.0, self.attempted_at + REFETCH_INTERVAL - self._clock.seconds())

    def fetch_age(self) -> Optional[float]:
        """Seconds since the last fetch that succeeded (None: none yet)."""
        return None if self.fetched_at is None else max(0.0, self._clock.seconds() - self.fetched_at)

    def fetching(self) -> bool:
        return self._in_flight is not None

    def _held(self, kid: Optional[str], alg: str) -> Optional[PyJWK]:
        if kid is not None:
            return self.keys.get((kid, alg))
        candidates = [jwk for (_, a), jwk in self.keys.items() if a == alg]
        return candidates[0] if len(candidates) == 1 else None

    def _looked_up(self, kid: Optional[str], alg: str) -> PyJWK:
        """The key after a fetch has ended (found, or why not)."""
        key = self._held(kid, alg)
        if key is not None:
            return key
        if not self.available:
            raise self._unavailable()
        if kid is None:
            raise self._no_kid(alg)
        raise UnknownKey("unknown key id %r (not in the key set as fetched now)" % (kid[:64],))

    def _no_kid(self, alg: str) -> UnknownKey:
        # a token that names no key can only be meant for the one key of its alg
        return UnknownKey("the token names no key (kid) and the key set has %d %s keys, not one"
                          % (sum(1 for _, a in self.keys if a == alg), alg))

    def _unavailable(self) -> KeySetUnavailable:
        retry = 1.0
        if self._next_at is not None:
            retry = max(1.0, self._next_at - self._clock.seconds())
        # (why goes to the log and /healthz: it may name internal hosts)
        return KeySetUnavailable("the platform's key set cannot be had, retry later", retry)

    # --- fetching -------------------------------------------------------------

    def _start_fetch(self, why: str) -> None:
        if self._in_flight is not None or not self.running:
            return
        self._cancel_timer()
        self.attempted_at = self._clock.seconds()
        d = defer.maybeDeferred(self._fetch)
        self._in_flight = d
        d.addCallback(parse_key_set)
        d.addCallbacks(self._fetched, self._failed, errbackArgs=(why,))

    def _fetched(self, keys: Dict[KeyId, PyJWK]) -> None:
        self._in_flight = None
        now = self._clock.seconds()
        was_down = not self.available and self.fetched_at is not None
        fingerprints = _fingerprints(keys)
        if self.fetched_at is None:
            _log.info("jwks: {count} key(s) from {url}: {keys}", count=len(keys), url=self.url,
                      keys=_names(list(keys)))
        elif fingerprints != self._fingerprints:
            added = [k for k in fingerprints if k not in self._fingerprints]
            removed = [k for k in self._fingerprints if k not in fingerprints]
            replaced = [k for k in fingerprints if k in self._fingerprints and fingerprints[k] != self._fingerprints[k]]
            self.rotations += 1
            _log.info("jwks: key set rotated: added {added}; removed {removed}; replaced {replaced} "
                      "({count} key(s) now)", added=_names(added), removed=_names(removed),
                      replaced=_names(replaced), count=len(keys))
        if was_down:
            _log.info("jwks: the key set could be fetched again from {url} (last fetched {age:.0f} s ago)",
                      url=self.url, age=now - (self.fetched_at or now))
        self.keys, self._fingerprints = keys, fingerprints
        self.available, self.problem = True, None
        self.fetched_at = now
        self.fetches_ok += 1
        self._failures = 0
        self._schedule(self.cache_seconds, "cache expired")

    def _failed(self, failure: Failure, why: str) -> None:
        self._in_flight = None
        if not self.running:
            return
        if not failure.check(FetchError):
            _log.failure("jwks: fetching {url} failed unexpectedly", failure, url=self.url)
        problem = failure.getErrorMessage()
        if problem != self.problem or self.available:
            _log.warn("jwks: cannot fetch the key set from {url} ({why}): {problem}; {held} key(s) held keep "
                      "verifying, tokens for others get 503", url=self.url, why=why, problem=problem,
                      held=len(self.keys))
        self.available, self.problem = False, problem
        self.fetches_failed += 1
        self._failures += 1
        # (the exponent is capped: 2.0 ** 1024 would not be a float)
        self._schedule(min(REFETCH_INTERVAL, FIRST_RETRY * 2.0 ** min(self._failures - 1, 16)), "retry")

    def _schedule(self, delay: float, why: str) -> None:
        self._cancel_timer()
        if not self.running:
            return
        self._next_at = self._clock.seconds() + delay
        self._timer = self._clock.callLater(delay, self._timer_fired, why)

    def _timer_fired(self, why: str) -> None:
        self._timer = None
        self._start_fetch(why)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._next_at = None


def _pass_on(call: Callable[[Any], None]) -> Callable[[Any], Any]:
    """A callback that runs ``call`` and hands the result on unchanged."""
    def callback(result: Any) -> Any:
        call(result)
        return result
    return callback

"""Read ``imd.ini`` into typed, validated settings, once.

Every section and key of the contract is known here, including keys whose
feature is built later: a config written against the contract never breaks on
start-up.  Anything wrong stops start-up with one :class:`ConfigError` line
naming the file, the section, the key and the problem.
"""

import configparser
import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, List, Optional, Tuple, Type, TypeVar
from urllib.parse import urlsplit, unquote

from imd import endpoints

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Section = TypeVar("_Section", bound="DataclassInstance")


class ConfigError(Exception):
    """One line: ``FILE: [section] key: problem``."""

    def __init__(self, path: str, section: Optional[str], key: Optional[str], problem: str) -> None:
        self.path, self.section, self.key, self.problem = path, section, key, problem
        where = "[%s]" % section if section else ""
        if key:
            where += " " + key
        super().__init__("%s: %s: %s" % (path, where, problem) if where else "%s: %s" % (path, problem))


class _Invalid(ValueError):
    """Raised by a value parser; the loader adds file, section and key."""


# --- value parsers: str -> typed value, or _Invalid ---------------------------

def _int(low: Optional[int] = None, high: Optional[int] = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise _Invalid("expected an integer, got %r" % (text,))
        if low is not None and value < low:
            raise _Invalid("must be at least %d, got %d" % (low, value))
        if high is not None and value > high:
            raise _Invalid("must be at most %d, got %d" % (high, value))
        return value
    return parse


def _number(low: float = 0.0, strictly_positive: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _Invalid("expected a number, got %r" % (text,))
        if value != value or value in (float("inf"), float("-inf")):
            raise _Invalid("expected a finite number, got %r" % (text,))
        if strictly_positive and value <= low:
            raise _Invalid("must be greater than %g, got %r" % (low, text))
        if not strictly_positive and value < low:
            raise _Invalid("must be at least %g, got %r" % (low, text))
        return value
    return parse


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}


def _bool(text: str) -> bool:
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise _Invalid("expected true or false, got %r" % (text,))


def _text(text: str) -> str:
    return text


def _node_id(text: str) -> str:
    """A node's name ('' for the default, host:port): it is the part of a
    ``dev:<uid>`` member ``'<node> <conn id>'`` before its first space, so a
    space in it would route every stored packet to a channel nobody reads."""
    if text and not re.fullmatch(r"[!-~]+", text):
        raise _Invalid("expected printable ASCII with no spaces (letters, digits, - . : _ ...), got %r" % (text,))
    return text


def _identifier(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,63}", text):
        raise _Invalid("expected a SQL identifier (letters, digits, _), got %r" % (text,))
    return text


def _table(text: str) -> str:
    """``table`` or ``database.table``: one or two SQL identifiers."""
    parts = text.split(".")
    if len(parts) > 2 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,63}", part) for part in parts):
        raise _Invalid("expected a table name or database.table, each a SQL identifier (letters, digits, _), "
                       "got %r" % (text,))
    return text


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise _Invalid("expected one of %s, got %r" % (", ".join(choices), text))
        return text
    return parse


ROLES = ("ws", "http", "migrate")


def _roles(text: str) -> FrozenSet[str]:
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    if not roles:
        raise _Invalid("at least one role is needed (%s)" % ", ".join(ROLES))
    for role in roles:
        if role not in ROLES:
            raise _Invalid("unknown role %r (known: %s)" % (role, ", ".join(ROLES)))
    return frozenset(roles)


def _endpoint(optional: bool, tls: bool = False) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text:
            if optional:
                return ""
            raise _Invalid("an endpoint string is required, e.g. tcp:8765:interface=127.0.0.1")
        try:
            endpoints.parse(text)
        except endpoints.EndpointError as e:
            raise _Invalid(str(e))
        if tls:
            return _tls_endpoint(text)
        # Constructing a server endpoint parses the string (and, for ssl:,
        # loads the certificate files) without listening on anything.
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString
        try:
            serverFromString(reactor, text)
        except Exception as e:
            raise _Invalid("not a usable Twisted endpoint string %r: %s" % (text, e))
        return text
    return parse


def _tls_endpoint(text: str) -> str:
    """An ``ssl:`` string whose key and certificate load and match."""
    from imd.tls import load_certificate_options, parse_tls_endpoint
    try:
        spec = parse_tls_endpoint(text)
    except ValueError as e:
        raise _Invalid("%s (got %r)" % (e, text))
    try:
        load_certificate_options(spec)
    except Exception as e:
        raise _Invalid("cannot load the TLS key/certificate %s / %s: %s"
                       % (spec.key_path, spec.cert_path, str(e) or e.__class__.__name__))
    return text


MIN_HS256_SECRET_BYTES = 32


def _auth_mode(text: str) -> str:
    if text == "dev":
        return text
    if text.startswith("hs256:") and len(text) > len("hs256:"):
        # A short HMAC secret can be found by brute force from one platform
        # token, and then anyone can mint tokens for anyone (RFC 7518 3.2).
        length = len(text[len("hs256:"):].encode("utf-8"))
        if length < MIN_HS256_SECRET_BYTES:
            raise _Invalid("the hs256 secret must be at least %d bytes (it has %d)"
                           % (MIN_HS256_SECRET_BYTES, length))
        return text
    if text.startswith("jwks:"):
        return "jwks:" + _jwks_url(text[len("jwks:"):])
    raise _Invalid("expected 'dev', 'hs256:<secret>' or 'jwks:<url>', got %r" % (text.split(":")[0],))


def _jwks_url(text: str) -> str:
    """The URL of ``auth = jwks:<url>``: https, or plain http to a loopback
    host (a key set fetched in clear over a network could be replaced, and
    with it every user's identity)."""
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port   # raises on a port that is not a number in range
    except ValueError:
        raise _Invalid("jwks: expected an https:// URL, got %r" % (text,))
    if parts.scheme not in ("http", "https") or not host:
        raise _Invalid("jwks: expected an https:// URL, got %r" % (text,))
    if parts.username is not None or parts.password is not None:
        raise _Invalid("jwks: the URL must not hold credentials (it is logged)")
    if parts.fragment:
        raise _Invalid("jwks: the URL must not have a #fragment")
    if parts.scheme == "http" and not endpoints.is_loopback_host(host):
        raise _Invalid("jwks: plain http is allowed only for a loopback host (localhost, 127.0.0.1, [::1]); "
                       "use https:// for %s" % (host,))
    return text


def _ca_file(text: str) -> str:
    """A PEM file of one or more CA certificates (empty: none)."""
    if not text:
        return ""
    from imd.tls import load_ca_certificates
    try:
        load_ca_certificates(text)
    except Exception as e:   # OSError, ValueError, OpenSSL's Error for a PEM block that does not parse
        raise _Invalid("cannot load CA certificates from %s: %s"
                       % (text, getattr(e, "strerror", None) or str(e) or e.__class__.__name__))
    return text


MIN_PUSH_SECRET_BYTES = 32


def _push_secret(text: str) -> str:
    # The gateway trusts whatever this key signs: a short one is guessed
    # offline from one captured push (contract §7.5: at least 32 bytes).
    length = len(text.encode("utf-8"))
    if text and length < MIN_PUSH_SECRET_BYTES:
        raise _Invalid("must be at least %d bytes (it has %d); e.g. the output of `openssl rand -hex 32`"
                       % (MIN_PUSH_SECRET_BYTES, length))
    return text


def _ws_url(text: str) -> str:
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise _Invalid("expected a ws:// or wss:// URL, got %r" % (text,))
    return text if text.endswith("/") else text + "/"


def _origins(text: str) -> Tuple[str, ...]:
    origins = tuple(o.strip() for o in text.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise _Invalid("expected '*' or origins like https://app.example.com, got %r" % (origin,))
    return origins


def _api_key(text: str) -> str:
    if text and (len(text) < 32 or not text.isprintable() or " " in text):
        raise _Invalid("expected empty (server API off) or a key of at least 32 printable characters "
                       "without spaces")
    return text


def _http_url(text: str) -> str:
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Invalid("expected an http:// or https:// URL, got %r" % (text,))
    return text


def _host_ports(text: str) -> Tuple[Tuple[str, int], ...]:
    """``host:port, host:port`` -> ((host, port), ...), each once."""
    found: List[Tuple[str, int]] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _Invalid("expected host:port, host:port, ...; got %r" % (item,))
        if not re.fullmatch(r"[A-Za-z0-9._:-]+", host):
            raise _Invalid("expected a host name or IP address, got %r" % (host,))
        if (host, int(port)) in found:
            raise _Invalid("%s:%s is listed twice" % (host, port))
        found.append((host, int(port)))
    return tuple(found)


def _master_name(text: str) -> str:
    # Sentinel's own rule for names is looser, but +switch-master messages
    # are split on spaces: a name with one could not be followed.
    if text and not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", text):
        raise _Invalid("expected the name the sentinels monitor (letters, digits, '.', '_', '-'), got %r"
                       % (text,))
    return text


MASK_KINDS = ("phone", "email")   # imd.moderation's, without importing it here


def _mask_kinds(text: str) -> Tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    for kind in kinds:
        if kind not in MASK_KINDS:
            raise _Invalid("unknown mask %r (known: %s)" % (kind, ", ".join(MASK_KINDS)))
    if len(set(kinds)) != len(kinds):
        raise _Invalid("a mask is listed twice in %r" % (text,))
    return kinds


def _blocklist_file(text: str) -> str:
    """A file of blocked words that imd can read now (it is read again on SIGHUP)."""
    if not text:
        return ""
    from imd.moderation import BlocklistError, load_blocklist
    try:
        load_blocklist(text)
    except BlocklistError as e:
        raise _Invalid(str(e))
    return text


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int
    password: Optional[str] = None


def _redis_url(text: str) -> RedisAddress:
    parts = urlsplit(text)
    if parts.scheme != "redis" or not parts.hostname:
        raise _Invalid("expected redis://[:password@]host[:port][/db], got %r" % (text,))
    try:
        port = parts.port or 6379
    except ValueError:
        raise _Invalid("bad port in %r" % (text,))
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise _Invalid("the database index must be a number, got %r" % (path,))
    password = unquote(parts.password) if parts.password else None
    return RedisAddress(parts.hostname, port, int(path or 0), password)


def _setting(default: str, parse: Callable[[str], Any], doc: str = "") -> Any:
    # Any: dataclasses' field() passes for the field's value, but this
    # default is the ini text, which _build_section parses.
    return field(default=default, metadata={"parse": parse, "doc": doc})


# --- one class per section ----------------------------------------------------

@dataclass(frozen=True)
class ImdSettings:
    roles: FrozenSet[str] = _setting("ws, http, migrate", _roles)
    node_id: str = _setting("", _node_id)
    shutdown_grace: float = _setting("10", _number())
    # /metrics and /healthz of this process whatever its roles (empty = none
    # beyond the http role's own); docs/http.md
    metrics_listen: str = _setting("", _endpoint(optional=True))
    # with ws and migrate in one process: the migrator in a child process of
    # its own (child) or on this process's reactor (inline); imd.migrator_child
    migrator: str = _setting("child", _choice("child", "inline"))


@dataclass(frozen=True)
class WebSocketSettings:
    listen: str = _setting("tcp:8765:interface=127.0.0.1", _endpoint(optional=False))
    tls_listen: str = _setting("", _endpoint(optional=True, tls=True))
    max_message_bytes: int = _setting("65536", _int(64, 16 * 1024 * 1024))
    idle_timeout: float = _setting("90", _number())
    max_devices: int = _setting("5", _int(1, 1000))
    max_errors: int = _setting("20", _int(1))
    rate: float = _setting("20", _number())
    burst: int = _setting("40", _int(1))
    open_handshake_timeout: float = _setting("10", _number())
    ping_interval: float = _setting("30", _number(strictly_positive=False))
    max_connections: int = _setting("50000", _int(0))
    max_per_address: int = _setting("0", _int(0))
    max_send_buffer: int = _setting("1048576", _int(0))
    max_handshakes_per_address: int = _setting("0", _int(0))
    history_rate: float = _setting("2", _number())
    history_burst: int = _setting("10", _int(1))
    # the same per user, across its connections and nodes (Redis): 0 = off
    history_user_rate: float = _setting("2", _number(strictly_positive=False))
    history_user_burst: int = _setting("10", _int(1))
    # R packets per user naming ids without a dedup record (looked up in
    # Redis and MySQL): 0 = off
    receipt_lookup_rate: float = _setting("1", _number(strictly_positive=False))
    receipt_lookup_burst: int = _setting("20", _int(1))


@dataclass(frozen=True)
class HttpSettings:
    listen: str = _setting("tcp:8766:interface=127.0.0.1", _endpoint(optional=False))
    tls_listen: str = _setting("", _endpoint(optional=True, tls=True))
    auth: str = _setting("dev", _auth_mode)
    public_ws_url: str = _setting("", _ws_url)
    cors_origins: Tuple[str, ...] = _setting("", _origins)
    token_user_rate: float = _setting("0.5", _number(strictly_positive=False))
    token_user_burst: int = _setting("10", _int(1))
    token_address_rate: float = _setting("0", _number(strictly_positive=False))
    token_address_burst: int = _setting("40", _int(1))
    request_timeout: float = _setting("10", _number())
    max_connections: int = _setting("1000", _int(1))
    api_key: str = _setting("", _api_key)
    # auth = jwks:<url> (docs/http.md): claims the platform tokens must hold,
    # how long the key set is kept, extra CAs for an https key set URL
    jwks_audience: str = _setting("", _text)
    jwks_issuer: str = _setting("", _text)
    jwks_cache: int = _setting("600", _int(30, 86400))
    jwks_ca: str = _setting("", _ca_file)
    # the server API's allowance per key, in units per second (a request is
    # one; a send one per recipient per started 4 KiB of its msg): 0 = off
    api_rate: float = _setting("1000", _number(strictly_positive=False))
    api_burst: int = _setting("5000", _int(1))


@dataclass(frozen=True)
class AuthSettings:
    single_use: bool = _setting("true", _bool)
    token_ttl: int = _setting("120", _int(1, 86400))


@dataclass(frozen=True)
class RedisSettings:
    url: RedisAddress = _setting("redis://127.0.0.1:6379/0", _redis_url)
    prefix: str = _setting("", _text)
    timeout: float = _setting("5", _number())
    dedup_ttl: int = _setting("3600", _int(1))
    sentinels: Tuple[Tuple[str, int], ...] = _setting("", _host_ports)
    master_name: str = _setting("", _master_name)
    min_replicas: int = _setting("0", _int(0, 100))
    replica_timeout: float = _setting("0.5", _number(low=0.001, strictly_positive=False))


@dataclass(frozen=True)
class MysqlSettings:
    host: str = _setting("127.0.0.1", _text)
    port: int = _setting("3306", _int(1, 65535))
    user: str = _setting("root", _text)
    password: str = _setting("", _text)
    database: str = _setting("imd", _identifier)
    pool_min: int = _setting("2", _int(1, 100))
    pool_max: int = _setting("8", _int(1, 100))


@dataclass(frozen=True)
class MigrateSettings:
    batch: int = _setting("500", _int(1, 10000))
    interval: float = _setting("0.2", _number())
    lock_ttl: float = _setting("10", _number())
    # parts of a batch of 200 rows or more inserted at once, each on a pool
    # connection of its own: 2 drains a backlog a little faster, for more
    # CPU per row in the migrator and in MariaDB (docs/performance.md,
    # "Migrator", "per row, after issue 29")
    inserts_at_once: int = _setting("1", _int(1, 4))


@dataclass(frozen=True)
class OrdersSettings:
    # a table of imd's database, or ``database.table`` of another one (the platform's)
    table: str = _setting("orders", _table)
    id_column: str = _setting("id", _identifier)
    customer_column: str = _setting("customer_id", _identifier)
    courier_column: str = _setting("courier_id", _identifier)
    close_grace: float = _setting("1800", _number(strictly_positive=False))

    @property
    def table_sql(self) -> str:
        """``table`` quoted for SQL: `orders` or `platform`.`orders`."""
        return ".".join("`%s`" % part for part in self.table.split("."))

    @property
    def table_database(self) -> Optional[str]:
        """The database ``table`` names, or None for imd's own."""
        return self.table.split(".")[0] if "." in self.table else None


@dataclass(frozen=True)
class RoomsSettings:
    # a room is a conversation, not a broadcast channel (contract v3 §9)
    max_members: int = _setting("50", _int(1, 10000))
    # seconds after a room's close until its members' sends are refused
    close_grace: float = _setting("1800", _number(strictly_positive=False))


@dataclass(frozen=True)
class TypingSettings:
    min_interval: float = _setting("2", _number(strictly_positive=False))


@dataclass(frozen=True)
class MessagesSettings:
    # seconds after its ts a message may still be recalled by its sender (contract v3 §11)
    recall_window: float = _setting("120", _number(strictly_positive=False))


@dataclass(frozen=True)
class PushSettings:
    url: str = _setting("", _http_url)
    secret: str = _setting("", _push_secret)
    delay: float = _setting("10", _number(strictly_positive=False))
    timeout: float = _setting("5", _number())
    max_age: float = _setting("3600", _number())
    preview: bool = _setting("true", _bool)


@dataclass(frozen=True)
class RetentionSettings:
    days: int = _setting("0", _int(0))


@dataclass(frozen=True)
class PresenceSettings:
    ttl: float = _setting("30", _number(low=1, strictly_positive=False))


@dataclass(frozen=True)
class SiteSettings:
    min_interval: float = _setting("1", _number(strictly_positive=False))


@dataclass(frozen=True)
class PrivacySettings:
    # phone numbers and e-mail addresses in t replaced before storing (imd.moderation)
    mask: Tuple[str, ...] = _setting("", _mask_kinds)
    phone_min_digits: int = _setting("8", _int(4, 20))
    # who gets a courier's S: the customers of its open orders, or its friends (contract §4)
    positions: str = _setting("orders", _choice("orders", "friends"))


@dataclass(frozen=True)
class ModerationSettings:
    blocklist: str = _setting("", _blocklist_file)
    action: str = _setting("refuse", _choice("refuse", "mask"))


@dataclass(frozen=True)
class LogSettings:
    format: str = _setting("text", _choice("text", "json"))
    messages: bool = _setting("false", _bool)


SECTIONS = {
    "imd": ImdSettings,
    "websocket": WebSocketSettings,
    "http": HttpSettings,
    "auth": AuthSettings,
    "redis": RedisSettings,
    "mysql": MysqlSettings,
    "migrate": MigrateSettings,
    "orders": OrdersSettings,
    "presence": PresenceSettings,
    "site": SiteSettings,
    "typing": TypingSettings,
    "rooms": RoomsSettings,
    "messages": MessagesSettings,
    "push": PushSettings,
    "retention": RetentionSettings,
    "privacy": PrivacySettings,
    "moderation": ModerationSettings,
    "log": LogSettings,
}


@dataclass(frozen=True)
class Settings:
    path: str
    imd: ImdSettings
    websocket: WebSocketSettings
    http: HttpSettings
    auth: AuthSettings
    redis: RedisSettings
    mysql: MysqlSettings
    migrate: MigrateSettings
    orders: OrdersSettings
    presence: PresenceSettings
    site: SiteSettings
    typing: TypingSettings
    rooms: RoomsSettings
    messages: MessagesSettings
    push: PushSettings
    retention: RetentionSettings
    privacy: PrivacySettings
    moderation: ModerationSettings
    log: LogSettings

    def replace(self, section: str, **values: Any) -> "Settings":
        """A copy with some typed values of one section changed (for tests)."""
        updated = dataclasses.replace(getattr(self, section), **values)
        return dataclasses.replace(self, **{section: updated})


def _build_section(path: str, name: str, cls: Type[_Section], raw: Dict[str, str]) -> _Section:
    values = {}
    for f in dataclasses.fields(cls):
        default = f.default
        assert isinstance(default, str)   # every setting's default is its ini text (_setting)
        text = raw.pop(f.name, default).strip()
        try:
            values[f.name] = f.metadata["parse"](text)
        except _Invalid as e:
            raise ConfigError(path, name, f.name, str(e))
    for unknown in raw:
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ConfigError(path, name, unknown, "unknown key (known: %s)" % known)
    return cls(**values)


def _check_across_keys(path: str, settings: Settings) -> None:
    redis = settings.redis
    if redis.sentinels and not redis.master_name:
        raise ConfigError(path, "redis", "master_name",
                          "is required with [redis] sentinels (the name the sentinels monitor)")
    if redis.master_name and not redis.sentinels:
        raise ConfigError(path, "redis", "sentinels",
                          "is required with [redis] master_name (host:port of each sentinel)")
    if redis.min_replicas and redis.replica_timeout >= redis.timeout:
        # A WAIT holds the connection for up to replica_timeout; past
        # [redis] timeout the reply watchdog would cut it first.
        raise ConfigError(path, "redis", "replica_timeout",
                          "must be less than [redis] timeout (%g >= %g)" % (redis.replica_timeout, redis.timeout))
    if settings.push.url and not settings.push.secret:
        raise ConfigError(path, "push", "secret", "is required with [push] url (it signs every push)")
    _check_metrics_port(path, settings)
    if settings.mysql.pool_min > settings.mysql.pool_max:
        raise ConfigError(path, "mysql", "pool_min",
                          "must not exceed pool_max (%d > %d)"
                          % (settings.mysql.pool_min, settings.mysql.pool_max))
    _check_jwks_keys(path, settings)
    if settings.http.auth == "dev" and "http" in settings.imd.roles:
        for key in ("listen", "tls_listen"):
            endpoint = getattr(settings.http, key)
            if endpoint and not is_loopback_endpoint(endpoint):
                raise ConfigError(path, "http", "auth",
                                  "'dev' trusts any caller and is allowed only on loopback "
                                  "listeners; [http] %s is %r" % (key, endpoint))


def _check_jwks_keys(path: str, settings: Settings) -> None:
    """The jwks_* keys that only ``auth = jwks:<url>`` reads: set with
    another mode they would look like checks that are not made."""
    http = settings.http
    if http.auth.startswith("jwks:"):
        if http.jwks_ca and not http.auth.startswith("jwks:https:"):
            raise ConfigError(path, "http", "jwks_ca", "is for an https:// key set URL; [http] auth is %r"
                              % (http.auth,))
        return
    for key in ("jwks_audience", "jwks_issuer", "jwks_ca"):
        if getattr(http, key):
            raise ConfigError(path, "http", key, "applies only with [http] auth = jwks:<url> "
                                                 "(auth is %s)" % http.auth.split(":")[0])


def _check_metrics_port(path: str, settings: Settings) -> None:
    """``metrics_listen`` on a port another listener of this process takes
    would only fail at start-up, with a less clear message."""
    metrics = _fixed_port(settings.imd.metrics_listen)
    if metrics is None:
        return
    others: List[Tuple[str, str]] = []
    if "ws" in settings.imd.roles:
        others += [("websocket", "listen"), ("websocket", "tls_listen")]
    if "http" in settings.imd.roles:
        others += [("http", "listen"), ("http", "tls_listen")]
    for section, key in others:
        if _fixed_port(getattr(getattr(settings, section), key)) == metrics:
            raise ConfigError(path, "imd", "metrics_listen",
                              "port %d is already [%s] %s's; give metrics a port of their own"
                              % (metrics, section, key))


def _fixed_port(description: str) -> Optional[int]:
    """The port of a tcp:/ssl: endpoint string, None for port 0 or none."""
    port = endpoints.port_of(description) if description else None
    return port or None


def is_loopback_endpoint(description: str) -> bool:
    """True when a tcp:/tcp6:/ssl: endpoint string listens on loopback only."""
    try:
        return endpoints.parse(description).is_loopback()
    except endpoints.EndpointError:
        return False


def parse_settings(text: str, path: str = "<string>") -> Settings:
    """Settings from the text of an ini file (for tests and ``load``)."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    parser.optionxform = str   # type: ignore[method-assign, assignment]  # keys keep their case (configparser's way)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ConfigError(path, None, None, "cannot parse: %s" % first)
    for name in parser.sections():
        if name not in SECTIONS:
            raise ConfigError(path, name, None,
                              "unknown section (known: %s)" % ", ".join(SECTIONS))
    built: Dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        raw = dict(parser.items(name)) if parser.has_section(name) else {}
        built[name] = _build_section(path, name, cls, raw)
    settings = Settings(path=path, **built)
    _check_across_keys(path, settings)
    return settings


def load_settings(path: str) -> Settings:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        # imd-admin and twistd imd both default to etc/imd.ini, relative to
        # the working directory: outside the checkout, say how to name it.
        raise ConfigError(path, None, None, "cannot read the config file: %s (name it with --config FILE)"
                          % (e.strerror or e))
    except UnicodeDecodeError:
        raise ConfigError(path, None, None, "the config file is not UTF-8 text")
    return parse_settings(text, path)


def default_settings() -> Settings:
    return parse_settings("", "<defaults>")


def with_override(settings: Settings, section: str, key: str, text: str, source: str) -> Settings:
    """``settings`` with one key set from the command line (``source`` names
    the option in errors), validated like the ini value."""
    cls = type(getattr(settings, section))
    spec = {f.name: f for f in dataclasses.fields(cls)}[key]
    try:
        value = spec.metadata["parse"](text.strip())
    except _Invalid as e:
        raise ConfigError(source, section, key, str(e))
    updated = settings.replace(section, **{key: value})
    _check_across_keys(settings.path, updated)
    return updated

"""Prometheus metrics of one App, in a registry of its own.

A registry per App (not prometheus_client's global one) lets several Apps
live in one process, as the tests do.  Label values come from fixed sets so a
client cannot grow the number of series: packet types outside the contract
count as ``other``, refusal reasons lose their variable tail.
"""

import re
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Iterator, List, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from imd import __version__
from imd.errors import ERROR_CODES
from imd.protocol import COMMAND_TYPES, MESSAGE_TYPES, SIGNAL_TYPES, STATE_NAMES

if TYPE_CHECKING:
    from imd.stores.redis import RedisClient
    from imd.stores.sentinel import SentinelMaster

# Client packet types answered with an ``A`` when they succeed (contract §2, §4, §7).
ACKED_TYPES = frozenset("tiTSRY")
_PACKET_TYPES = MESSAGE_TYPES | COMMAND_TYPES | SIGNAL_TYPES
_RECEIPT_STATES = STATE_NAMES[1:]
# The server API's endpoints (imd.http.api), a fixed set of label values
API_ENDPOINTS = ("send", "orders", "close", "kick", "online", "friends", "delete", "erase", "other")

CONTENT_TYPE = CONTENT_TYPE_LATEST

# ``(port, certificate path, expiry Unix time or None)`` of each TLS listener
Certificates = Iterable[Tuple[str, str, Optional[float]]]


def refusal_label(reason: str) -> str:
    """``"bad token: Signature has expired"`` -> ``"bad_token"``: a bounded label."""
    head = reason.split(":", 1)[0].strip().lower()
    label = re.sub(r"[^a-z0-9]+", "_", head).strip("_")[:40]
    return label or "other"


def store_of(message: str) -> str:
    """Which store a StoreUnavailable message is about (they name it first)."""
    return "mysql" if "mysql" in message.lower() else "redis"


class _MigratorCollector:
    """The migrator's own figures, read when scraped (none when this process
    does not run the migrate role)."""

    def __init__(self, get_migrator: Callable[[], object]) -> None:
        self._get_migrator = get_migrator   # its figures are read by name (getattr)

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        migrator = self._get_migrator()
        if migrator is None:
            return
        gauges = (
            ("imd_migrator_lag_seconds", "Age of the oldest message not yet migrated to MySQL", "oldest_age"),
            ("imd_migrator_queue_length", "Messages in MQ plus the batch in flight, as the migrator last saw",
             "queue_length"),
            ("imd_migrator_leader", "1 while this migrator holds the queue lock", "is_leader"),
            ("imd_migrator_mysql_up", "0 while the migrator cannot reach MySQL", "mysql_up"),
        )
        for name, text, attribute in gauges:
            yield GaugeMetricFamily(name, text, value=float(getattr(migrator, attribute, float("nan"))))
        counters = (
            ("imd_migrator_rows_migrated", "Rows inserted into the message table", "rows_migrated"),
            ("imd_migrator_rows_skipped", "Rows already present (a replayed batch)", "rows_skipped"),
            ("imd_migrator_receipts_migrated", "Rows inserted into the receipt table", "receipts_migrated"),
            ("imd_migrator_dead_entries", "MQ entries that could not be read, moved to MQ:dead", "dead_entries"),
        )
        for name, text, attribute in counters:
            yield CounterMetricFamily(name, text, value=float(getattr(migrator, attribute, 0)))
        # [imd] migrator = child: the figures above are the child's, as it last reported them
        up = getattr(migrator, "process_up", None)
        if up is not None:
            yield GaugeMetricFamily("imd_migrator_process_up", "1 while the migrator's child process runs "
                                    "([imd] migrator = child)", value=float(up))
            yield CounterMetricFamily("imd_migrator_process_restarts", "Times the migrator's child process "
                                      "died and was started again", value=float(getattr(migrator, "process_restarts")))


class _PushCollector:
    """The push drainer's counts (zero in a process that runs none: only
    the leading migrator's process sends)."""

    def __init__(self, get_drainer: Callable[[], object]) -> None:
        self._get_drainer = get_drainer   # its counts are read by name (getattr); None: all 0

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        drainer = self._get_drainer()
        yield CounterMetricFamily("imd_push_sent", "Pushes the gateway accepted (2xx)",
                                  value=float(getattr(drainer, "sent", 0)))
        failed = CounterMetricFamily("imd_push_failed", "Pushes given up: refused by the gateway (4xx, "
                                     "not retried) or still failing after [push] max_age", labels=["reason"])
        failed.add_metric(["rejected"], float(getattr(drainer, "rejected", 0)))
        failed.add_metric(["expired"], float(getattr(drainer, "expired", 0)))
        yield failed
        yield CounterMetricFamily("imd_push_retried", "Push tries that failed (timeout, 5xx, no connection) "
                                  "and were scheduled again", value=float(getattr(drainer, "retried", 0)))


class _JwksCollector:
    """The platform key set of ``[http] auth = jwks:<url>`` (imd.http.jwks),
    read when scraped; nothing in a process without one."""

    def __init__(self, get_jwks: Callable[[], object]) -> None:
        self._get_jwks = get_jwks   # its figures are read by name (getattr)

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        jwks: Any = self._get_jwks()
        if jwks is None:
            return
        yield GaugeMetricFamily("imd_jwks_available", "0 while the platform's key set cannot be had (the last "
                                "fetch failed, or none succeeded yet): held keys still verify, others get 503",
                                value=1.0 if jwks.available else 0.0)
        yield GaugeMetricFamily("imd_jwks_keys", "RS256/ES256 keys of the platform's key set held",
                                value=float(len(jwks.keys)))
        age = jwks.fetch_age()
        yield GaugeMetricFamily("imd_jwks_age_seconds", "Time since the key set was last fetched (NaN: never)",
                                value=float("nan") if age is None else age)
        yield GaugeMetricFamily("imd_jwks_cache_seconds", "[http] jwks_cache: how long a fetched key set is "
                                "kept before it is fetched again", value=float(jwks.cache_seconds))
        yield GaugeMetricFamily("imd_jwks_refetch_wait_seconds", "Time until a token with an unknown kid may "
                                "refetch the key set (the limit: once per 30 s; 0 = now)",
                                value=jwks.refetch_wait())
        fetches = CounterMetricFamily("imd_jwks_fetches", "Fetches of the key set, by result", labels=["result"])
        fetches.add_metric(["ok"], float(jwks.fetches_ok))
        fetches.add_metric(["failed"], float(jwks.fetches_failed))
        yield fetches
        yield CounterMetricFamily("imd_jwks_refetches_held_back", "Tokens with an unknown kid refused (401) "
                                  "because the key set was fetched less than 30 s before",
                                  value=float(jwks.held_back))
        yield CounterMetricFamily("imd_jwks_rotations", "Key set fetches that added, removed or replaced keys",
                                  value=float(jwks.rotations))


class _CertificateCollector:
    """When each TLS listener's certificate expires (read when scraped: a
    SIGHUP reload changes it)."""

    def __init__(self, get_certificates: Callable[[], Certificates]) -> None:
        self._get_certificates = get_certificates

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "imd_tls_certificate_expiry_timestamp_seconds",
            "When the certificate a TLS listener serves expires (Unix time)", labels=["port", "certificate"])
        for port, path, not_after in self._get_certificates():
            if not_after is not None:
                family.add_metric([str(port), path], not_after)
        yield family


class _RedisAddressCollector:
    """Which Redis address this process's command connection is on: a
    private figure (see :meth:`Metrics.exposition`)."""

    def __init__(self, get_redis: Callable[[], Tuple["RedisClient", Optional["SentinelMaster"]]]) -> None:
        self._get_redis = get_redis

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        client, sentinel = self._get_redis()
        master = GaugeMetricFamily("imd_redis_master_info", "1 for the Redis address this process's command "
                                   "connection is on (none while down); via: url or sentinel",
                                   labels=["address", "via"])
        if client.master_address:
            master.add_metric([client.master_address, "sentinel" if sentinel is not None else "url"], 1)
        yield master


class _RedisCollector:
    """What this process's Redis connection went through and what its
    replicas confirm (read when scraped from the App's command client and
    sentinel)."""

    def __init__(self, get_redis: Callable[[], Tuple["RedisClient", Optional["SentinelMaster"]]]) -> None:
        self._get_redis = get_redis

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        client, sentinel = self._get_redis()
        yield CounterMetricFamily("imd_redis_master_changes", "Times the command connection came back on "
                                  "another Redis master (failovers seen)", value=client.master_changes)
        yield CounterMetricFamily("imd_redis_switch_master_events", "+switch-master messages from the "
                                  "sentinels for [redis] master_name",
                                  value=sentinel.switch_events if sentinel is not None else 0)
        yield GaugeMetricFamily("imd_redis_min_replicas", "[redis] min_replicas: replicas a write must reach "
                                "before its A", value=client.min_replicas)
        figures = client.wait_figures
        yield GaugeMetricFamily("imd_redis_replicas_acknowledged", "Replicas that confirmed the last WAIT "
                                "(NaN before the first)",
                                value=figures.acknowledged if figures.acknowledged >= 0 else float("nan"))
        yield CounterMetricFamily("imd_redis_wait_failures", "WAITs answered below [redis] min_replicas, "
                                  "timed out or cut (their replies became E unavailable)", value=figures.failed)
        buckets, total = [], 0
        for bound, count in zip(figures.BOUNDS + (float("inf"),), figures.counts):
            total += count
            buckets.append((floatToGoString(bound), total))
        yield HistogramMetricFamily("imd_redis_wait_seconds", "Time from a WAIT sent to its answer",
                                    buckets=buckets, sum_value=figures.seconds)


class _Histogram:
    """A histogram counted with plain ints (``le`` buckets, as Prometheus')."""
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)   # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets, total = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            buckets.append((floatToGoString(bound), total))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class _PacketCollector:
    """What is counted for every packet: plain ints and dicts, read when
    scraped.  prometheus_client's Counter and Histogram take a lock on each
    ``inc``/``observe`` (four per relayed message, ~5% of the ws process's
    CPU at full load); this process's reactor is single-threaded."""

    def __init__(self) -> None:
        # label -> count; every label at 0 from the start (a rate() of 0, not absent)
        self.packets_in = dict.fromkeys(sorted(_PACKET_TYPES | {"other", "invalid"}), 0)
        self.acks = 0
        self.ack_latency = _Histogram((0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.fanout = _Histogram((0, 1, 2, 3, 5, 10))
        self.receipt_ids = [0, 0, 0]        # by state (1 delivered, 2 read)
        self.receipts_advanced = [0, 0, 0]
        self.typing_relayed = 0
        self.typing_coalesced = 0

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        packets = CounterMetricFamily("imd_packets_in", "Client packets received, by type (invalid = not parsed)",
                                      labels=["type"])
        for label, count in sorted(self.packets_in.items()):
            packets.add_metric([label], count)
        yield packets
        yield CounterMetricFamily("imd_acks", "A packets sent", value=self.acks)
        receipts = CounterMetricFamily("imd_receipt_ids", "Message ids named in R packets received, by state",
                                       labels=["state"])
        advanced = CounterMetricFamily("imd_receipt_ids_advanced", "Message ids whose state an R moved "
                                       "forward (stored and relayed), by state", labels=["state"])
        for state, name in enumerate(_RECEIPT_STATES, 1):
            receipts.add_metric([name], self.receipt_ids[state])
            advanced.add_metric([name], self.receipts_advanced[state])
        yield receipts
        yield advanced
        typing = CounterMetricFamily("imd_typing", "Y packets accepted, by outcome (relayed, or coalesced "
                                     "inside [typing] min_interval)", labels=["outcome"])
        typing.add_metric(["relayed"], self.typing_relayed)
        typing.add_metric(["coalesced"], self.typing_coalesced)
        yield typing
        yield self.ack_latency.family("imd_ack_latency_seconds", "Time from a frame received to its A sent")
        yield self.fanout.family("imd_delivery_fanout", "Connections of this process each relayed message reached")


class Metrics:
    def __init__(self, migrator: Optional[Callable[[], object]] = None,
                 certificates: Optional[Callable[[], Certificates]] = None, node: str = "",
                 roles: Collection[str] = (), push: Optional[Callable[[], object]] = None,
                 redis: Optional[Callable[[], Tuple["RedisClient", Optional["SentinelMaster"]]]] = None,
                 jwks: Optional[Callable[[], object]] = None) -> None:
        """``migrator()``: the App's migrator or None, read at each scrape;
        ``push()``: the App's push drainer or None, likewise;
        ``certificates()``: ``(port, path, expiry)`` of each TLS listener;
        ``node``, ``roles``: this process, for ``imd_process_info``;
        ``redis()``: ``(command RedisClient, SentinelMaster or None)``;
        ``jwks()``: the App's platform key set (imd.http.jwks) or None."""
        # The *_created series only repeat the process start time.
        disable_created_metrics()
        self.registry = registry = CollectorRegistry(auto_describe=True)
        # Figures that name an address (the Redis master's): shown only
        # where the answer cannot be public (exposition(private=True)).
        self.private_registry = CollectorRegistry(auto_describe=True)
        self.connections_open = Gauge(
            "imd_connections_open", "Logged-in WebSocket connections of this process",
            registry=registry)
        self.logins = Counter(
            "imd_logins", "WebSocket logins, by result and refusal reason",
            ["result", "reason"], registry=registry)
        self._per_packet = per_packet = _PacketCollector()
        registry.register(per_packet)
        self._packets_in = per_packet.packets_in
        self._ack_latency = per_packet.ack_latency
        self._fanout = per_packet.fanout
        self.errors = Counter(
            "imd_errors", "E packets sent, by code", ["code"], registry=registry)
        self.takes_refused = Counter(
            "imd_order_takes_refused", "T packets refused: the order is another courier's or closed "
            "(forbidden), or unknown (not_found)", ["code"], registry=registry)
        self.api_requests = Counter(
            "imd_api_requests", "Server API requests (/IM/api/), by endpoint and HTTP status",
            ["endpoint", "status"], registry=registry)
        self.mq_length = Gauge(
            "imd_mq_length", "Messages in the Redis MQ list not yet migrated (read at scrape time)",
            registry=registry)
        self.store_errors = Counter(
            "imd_store_errors", "Calls to Redis or MySQL that failed or timed out",
            ["store"], registry=registry)
        self.connections_refused = Counter(
            "imd_connections_refused", "TCP connections refused by [websocket] max_connections (503) "
            "or max_per_address (429)", ["status"], registry=registry)
        self.erasures = Counter(
            "imd_user_erasures", "Erasures of a user run by this process (contract v3 §11)", registry=registry)
        self.erased_messages = Counter(
            "imd_erased_messages", "Messages recalled by erasures of their sender", registry=registry)
        self.slow_consumers = Counter(
            "imd_slow_consumers_dropped", "Connections dropped for not reading "
            "([websocket] max_send_buffer)", registry=registry)
        # Set at scrape time from Redis and MySQL (imd.http.metrics): what
        # the alerts need whichever process Prometheus asks.
        self.mq_dead_length = Gauge(
            "imd_mq_dead_length", "Entries in MQ:dead, which the migrator could not store (read at scrape time)",
            registry=registry)
        self.nodes_registered = Gauge(
            "imd_nodes_registered", "WebSocket nodes registered in Redis with a live heartbeat "
            "(read at scrape time)", registry=registry)
        self.push_pending = Gauge(
            "imd_push_pending", "Pushes not sent yet: users whose [push] delay window is open, plus pushes "
            "being sent or waiting for a retry (read at scrape time)", registry=registry)
        self.push_oldest_age = Gauge(
            "imd_push_oldest_pending_seconds", "Time since the delay window of the oldest pending push opened "
            "(0 when none; read at scrape time)", registry=registry)
        self.store_up = Gauge(
            "imd_store_up", "1 when this process reached the store at scrape time (Redis LLEN, MySQL SELECT 1)",
            ["store"], registry=registry)
        process_info = Gauge(
            "imd_process_info", "Always 1: this process's node id, roles and imd version",
            ["node", "roles", "version"], registry=registry)
        process_info.labels(node, ",".join(sorted(roles)), __version__).set(1)
        # Every label value known up front gets its series at 0, so that a
        # rate() over it is 0 rather than absent before the first event.
        for code in ERROR_CODES:
            self.errors.labels(code)
        for code in ("forbidden", "not_found"):
            self.takes_refused.labels(code)
        for store in ("redis", "mysql"):
            self.store_errors.labels(store)
            self.store_up.labels(store)
        for status in ("503", "429"):
            self.connections_refused.labels(status)
        self.logins.labels("ok", "")
        for endpoint in API_ENDPOINTS:
            self.api_requests.labels(endpoint, "200")
        if migrator is not None:
            registry.register(_MigratorCollector(migrator))
        if certificates is not None:
            registry.register(_CertificateCollector(certificates))
        registry.register(_PushCollector(push or (lambda: None)))
        if redis is not None:
            registry.register(_RedisCollector(redis))
            self.private_registry.register(_RedisAddressCollector(redis))
        if jwks is not None:
            registry.register(_JwksCollector(jwks))

    # --- called by the transport ---------------------------------------------

    def connection_opened(self) -> None:
        self.connections_open.inc()

    def connection_closed(self) -> None:
        self.connections_open.dec()

    def connection_refused(self, status: int) -> None:
        self.connections_refused.labels(str(status)).inc()

    def slow_consumer_dropped(self) -> None:
        self.slow_consumers.inc()

    def login_ok(self) -> None:
        self.logins.labels("ok", "").inc()

    def login_refused(self, reason: str) -> None:
        self.logins.labels("refused", refusal_label(reason)).inc()

    def packet_in(self, packet_type: str) -> None:
        label = packet_type if packet_type in _PACKET_TYPES else "other"
        counts = self._packets_in
        counts[label] = counts.get(label, 0) + 1

    def frame_rejected(self, code: str) -> None:
        """A frame that did not parse: an unknown type, or anything else wrong."""
        label = "other" if code == "unknown_type" else "invalid"
        counts = self._packets_in
        counts[label] = counts.get(label, 0) + 1

    def reply_sent(self, packet_type: str, received_at: float, now: float) -> None:
        """A successful reply to a ``packet_type`` packet left at ``now``."""
        if packet_type in ACKED_TYPES:
            self._per_packet.acks += 1
            self._ack_latency.observe(max(0.0, now - received_at))

    def error_sent(self, code: str) -> None:
        self.errors.labels(code if code in ERROR_CODES else "internal").inc()

    def take_refused(self, code: str) -> None:
        """A ``T`` answered ``forbidden`` or ``not_found``."""
        self.takes_refused.labels(code).inc()

    def delivered(self, connections: int) -> None:
        self._fanout.observe(connections)

    def receipt_in(self, state: int, ids: int) -> None:
        """An ``R`` naming ``ids`` message ids, ``state`` 1 or 2."""
        self._per_packet.receipt_ids[state] += ids

    def receipts_advanced(self, state: int, ids: int) -> None:
        self._per_packet.receipts_advanced[state] += ids

    def typing(self, relayed: bool) -> None:
        if relayed:
            self._per_packet.typing_relayed += 1
        else:
            self._per_packet.typing_coalesced += 1

    def api_request(self, endpoint: str, status: int) -> None:
        self.api_requests.labels(endpoint if endpoint in API_ENDPOINTS else "other", str(status)).inc()

    def user_erased(self, messages: int) -> None:
        self.erasures.inc()
        self.erased_messages.inc(messages)

    def store_error(self, message: str) -> None:
        self.store_errors.labels(store_of(message)).inc()

    def exposition(self, private: bool = True) -> bytes:
        """The Prometheus text of every metric (bytes); without ``private``,
        less the ones that name an address (``imd_redis_master_info``), for
        an answer that may reach the public."""
        text = generate_latest(self.registry)
        return text + generate_latest(self.private_registry) if private else text

"""The container: builds the stores, the node, the handlers and the listeners
from settings and hands each its dependencies.  Nothing here does I/O until
the service starts.

The rooms (docs/architecture.md): ``imd.transport`` (WebSocket frames in,
packets out), ``imd.protocol`` (the JSON, pure), ``imd.handlers`` (one per
packet type), ``imd.stores`` (every Redis key and SQL statement), ``imd.node``
(this process's connections and delivery to users), ``imd.bus`` (the link to
the other nodes), ``imd.http``, ``imd.migrator``.
"""

import functools
import socket
from typing import Any, Callable, Dict, cast

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from imd import endpoints
from imd.auth import TokenVerifier
from imd.bus import NodeBus
from imd.config import ConfigError
from imd.handlers.commands import OnlineHandler, PingHandler
from imd.handlers.history import HistoryHandler
from imd.handlers.erasure import Eraser, ErasureStore, RoomErasure
from imd.handlers.messages import MessageHandler
from imd.handlers.recall import RecallHandler, Recaller, RoomRecaller
from imd.handlers.orders import OrderLifecycle, TakeOrderHandler
from imd.handlers.receipts import ReceiptHandler
from imd.handlers.positions import SiteHandler
from imd.handlers.rooms import RoomAdmin, RoomHandler, dispatch, history_dispatch
from imd.handlers.typing import TypingHandler
from imd.listeners import ListeningService
from imd.metrics import Metrics
from imd.moderation import BlocklistError, PrivateDataMask, TextPolicy, blocklist_reloader, load_blocklist
from imd.node import LocalNode
from imd.shutdown import ConnectionDrainer, GracefulMultiService
from imd.startup import HOLD as STARTUP_HOLD
from imd.startup import StartupGate, StartWarnings, start_warnings
from imd.stores.audit import AuditStore
from imd.stores.budgets import Budget
from imd.stores.deadletter import DeadLetters
from imd.stores.friends import FriendStore
from imd.stores.keys import Keys
from imd.stores.conversations import ConversationStore
from imd.stores.room_conversations import RoomConversations
from imd.stores.messages import MessageStore
from imd.stores.recalls import RecallStore
from imd.stores.roomrecalls import RoomRecallStore
from imd.stores.mysql import MessageRows, MysqlStore
from imd.stores.mysql_check import MysqlLoginCheck, check_login
from imd.seqfloor import SeqFloor
from imd.stores.orders import OrderStore
from imd.stores.positions import PositionAudience, PositionStore
from imd.stores.presence import PresenceStore
from imd.stores.processes import ProcessRegistry
from imd.stores.push import PushNotes, PushStore
from imd.stores.queue import QueueStore
from imd.stores.receipts import ReceiptStore
from imd.stores.redis import RedisClient, RedisSubscriber
from imd.stores.sentinel import SentinelMaster
from imd.stores.tokens import TokenStore
from imd.stores.rooms import RoomStore
from imd.stores.typing import TypingStore
from imd.tls import TlsReloader, is_tls_endpoint
from imd.transport.flush import TurnFlusher

_log = Logger()


def default_node_id(settings: Any) -> str:
    return "%s:%s" % (socket.gethostname(), endpoints.port_of(settings.websocket.listen) or 0)


class App:
    _http_site = None

    def __init__(self, settings: Any, reactor: Any, clock: Any = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        redis = settings.redis
        self.node_id = settings.imd.node_id or default_node_id(settings)
        self.keys = Keys(redis.prefix, redis.url.db)
        self.flusher = TurnFlusher(self.clock)
        # [redis] sentinels: every Redis connection finds the master through them.
        self.sentinel = (SentinelMaster(redis.sentinels, redis.master_name, redis.timeout, self.clock, reactor)
                         if redis.sentinels else None)
        self.redis_client = self.redis_connection(RedisClient, flusher=self.flusher,
                                                  min_replicas=redis.min_replicas,
                                                  replica_timeout=redis.replica_timeout)
        client, keys = self.redis_client, self.keys
        self.tokens = TokenStore(client, keys)
        self.friends = FriendStore(client, keys)
        # [push] url set: the store scripts also note pending pushes (§7.5)
        self.push_notes = PushNotes(keys, settings.push.delay) if settings.push.url else None
        self.messages = MessageStore(client, keys, redis.dedup_ttl, self.push_notes, self.node_id)
        # the conversation list's one-to-one source (contract §10); its page
        # spends the user's H budget like every H
        self.conversations = ConversationStore(client, keys, Budget(settings.websocket.history_user_rate,
                                                                    settings.websocket.history_user_burst))
        self.recalls = RecallStore(client, keys, redis.dedup_ttl, self.push_notes, self.node_id)
        self.presence = PresenceStore(client, keys, self.node_id)
        self.orders = OrderStore(client, keys, self.push_notes, redis.dedup_ttl)
        self.positions = PositionStore(client, keys)
        # [privacy] positions: who a courier's S goes to (rooms add those tracking it)
        self.position_audience = PositionAudience(client, keys, settings.privacy.positions)
        self.receipts = ReceiptStore(client, keys, redis.dedup_ttl, self.push_notes)
        self.typing = TypingStore(client, keys, settings.typing.min_interval)
        self.rooms = RoomStore(client, keys, redis.dedup_ttl, settings.typing.min_interval, self.push_notes,
                               self.node_id)
        self.room_conversations = RoomConversations(client, keys)
        self.mysql = MysqlStore(settings.mysql)
        # read by /metrics, imd-admin (mq, top, reconcile, retention) and the process registry
        self.dead_letters = DeadLetters(client, keys)
        self.process_registry = ProcessRegistry(client, keys)
        self.push_store = PushStore(client, keys)
        self.audit = AuditStore(client, keys)
        self.message_rows = MessageRows(self.mysql)
        self.migrator: Any = None
        self.migrator_process: Any = None   # [imd] migrator = child: imd.migrator_child.MigratorProcess
        self.order_ends: Any = None
        self.push_drainer: Any = None
        self.retention: Any = None
        self.metrics = Metrics(migrator=lambda: self.migrator, certificates=lambda: self.tls.certificates(),
                               push=lambda: self.push_drainer, jwks=lambda: self.jwks,
                               node=self.node_id, roles=settings.imd.roles,
                               redis=lambda: (self.redis_client, self.sentinel))
        self.tls = TlsReloader(reactor)
        # [http] auth = jwks:<url>: the platform's key set, fetched by the http role
        self.jwks = self._jwks_keys() if "http" in settings.imd.roles and settings.http.auth.startswith("jwks:") \
            else None
        # Until Redis answers and the keys are set, requests and logins wait (imd.startup).
        roles = settings.imd.roles
        self.startup = StartupGate(self.redis_client, self.tokens, self.clock, needs_keys=bool({"ws", "http"} & roles),
                                   node_ready=(lambda: self.bus.healthy) if "ws" in roles else None)
        handshake = settings.websocket.open_handshake_timeout
        self.verifier = TokenVerifier(self.tokens, self.clock, settings.auth.single_use, settings.auth.token_ttl,
                                      startup=self.startup,
                                      # a held login still leaves time to finish the handshake
                                      hold=min(STARTUP_HOLD, handshake / 2.0) if handshake else STARTUP_HOLD)
        self.node = LocalNode(self.node_id, self.presence, self.clock, settings.websocket.max_devices,
                              self.metrics, healthy=lambda: self.bus.healthy)
        self.bus = NodeBus(self.presence, self._subscriber, self.clock, self.node.run_id, settings.presence.ttl,
                           self.node.frame_received, self.node.connections)
        node = self.node
        self.text_policy = self._text_policy()
        messages = MessageHandler(self.messages, node, self.clock, settings.log.messages, self.text_policy)
        room_recalls = RoomRecallStore(self.redis_client, keys, self.rooms, settings.redis.dedup_ttl, self.push_notes)
        self.recaller = Recaller(self.recalls, self.mysql, node, self.clock,
                                 rooms=RoomRecaller(room_recalls, self.mysql, node, self.clock))
        self.eraser = Eraser(ErasureStore(self.redis_client, keys), self.mysql, self.recaller, node.kick, self.metrics)
        history_budget = Budget(settings.websocket.history_user_rate, settings.websocket.history_user_burst)
        rooms = RoomHandler(self.rooms, self.mysql, node, self.clock, self.text_policy, history_budget,
                            log_messages=settings.log.messages)
        self.handlers: Dict[str, Callable[..., Any]] = {
            "t": dispatch(rooms.message, messages.handle),
            "i": dispatch(rooms.message, messages.handle),
            "P": PingHandler().handle,
            "O": OnlineHandler(self.presence).handle,
            "T": TakeOrderHandler(self.mysql, settings.orders, self.orders, node, self.clock).handle,
            "S": SiteHandler(self.positions, self.position_audience, node, self.clock,
                             settings.site.min_interval).handle,
            "H": history_dispatch(rooms, HistoryHandler(self.messages, self.mysql, self.clock, history_budget,
                                                        conversation_sources=[self.conversations,
                                                                              self.room_conversations],
                                                        room_stream=rooms.stream).handle),
            "R": dispatch(rooms.read, ReceiptHandler(self.receipts, self.mysql, node, self.clock,
                                                     Budget(settings.websocket.receipt_lookup_rate,
                                                            settings.websocket.receipt_lookup_burst),
                                                     self.metrics).handle),
            "Y": dispatch(rooms.typing, TypingHandler(self.typing, node, self.metrics).handle),
            "D": RecallHandler(self.recaller, settings.messages.recall_window).handle,
        }
        # rooms: the server API and imd-admin (contract v3 §9)
        self.room_admin = RoomAdmin(self.rooms, node, self.clock, settings.rooms.max_members,
                                    settings.rooms.close_grace, track=self.position_audience.track_room)
        # an erasure's room part: the user's room messages and memberships (contract v3 §11)
        self.eraser.rooms = RoomErasure(ErasureStore(self.redis_client, keys), self.mysql,
                                        cast(RoomRecaller, self.recaller.rooms), self.room_admin,
                                        node.next_server_id)
        # closing orders: the server API and imd-admin (contract §7.3)
        self.order_lifecycle = OrderLifecycle(self.orders, self.mysql, settings.orders, node, self.clock,
                                              redis.dedup_ttl)

    def _raise_seq(self) -> Deferred:
        """MQ:seq to at least MySQL's highest accept_seq (imd.startup)."""
        return self.mysql.max_accept_seq().addCallback(self.messages.raise_seq)

    def _text_policy(self) -> TextPolicy:
        """``[privacy] mask`` and ``[moderation]``; the blocklist file is
        read now (the config check read it too) and again on SIGHUP."""
        privacy, moderation = self.settings.privacy, self.settings.moderation
        blocklist = None
        if moderation.blocklist:
            try:
                blocklist = load_blocklist(moderation.blocklist)
            except BlocklistError as e:   # gone since the config was checked
                raise ConfigError(self.settings.path, "moderation", "blocklist", str(e))
            _log.info("blocklist {path}: {entries} entries, action {action}", path=moderation.blocklist,
                      entries=len(blocklist), action=moderation.action)
        policy = TextPolicy(PrivateDataMask(privacy.mask, privacy.phone_min_digits), blocklist, moderation.action)
        if moderation.blocklist:
            self.tls.also_reload("the blocklist", blocklist_reloader(policy, moderation.blocklist))
        return policy

    def _jwks_keys(self) -> Any:
        from imd.http.jwks import JwksKeys
        from imd.http.jwks_fetch import JwksFetcher
        http = self.settings.http
        url = http.auth[len("jwks:"):]
        fetcher = JwksFetcher(self.reactor, self.clock, url, http.jwks_ca)
        return JwksKeys(fetcher.fetch, self.clock, http.jwks_cache, url)

    def redis_connection(self, kind: Any, **options: Any) -> Any:
        """A RedisClient or RedisSubscriber on ``[redis] url``, or on the master
        the sentinels give (and follow) when ``[redis] sentinels`` is set."""
        redis = self.settings.redis
        if self.sentinel is not None:
            options.update(endpoint=self.sentinel.endpoint, check_role=True, max_retry_delay=1.0)
        connection = kind(redis.url, redis.timeout, self.clock, self.reactor, **options)
        if self.sentinel is not None:
            self.sentinel.follow(connection.follow_master)
        return connection

    def _subscriber(self, **callbacks: Any) -> RedisSubscriber:
        return self.redis_connection(RedisSubscriber, **callbacks)

    def websocket_factory(self, secure: bool = False) -> Any:
        from imd.transport.websocket import ImdServerFactory, Listener
        listener = Listener(self.settings, self.node, self.verifier, self.handlers, self.metrics, self.clock,
                            self.flusher, self.settings.http.cors_origins)
        return ImdServerFactory(listener, url="wss://localhost" if secure else None)

    def build_service(self) -> MultiService:
        """The MultiService twistd runs: Redis first, then the listeners of the roles.

        On SIGTERM the children stop one by one in reverse order of addition
        (imd.shutdown): listeners, then the drainer (C + 1001 to every
        client), then whatever was added before it (bus, migrator, stores).
        """
        top = GracefulMultiService(self.settings.imd.shutdown_grace, self.clock, self.reactor)
        StartWarnings(start_warnings(self.settings)).setServiceParent(top)
        if self.sentinel is not None:
            self.sentinel.setServiceParent(top)
        self.redis_client.setServiceParent(top)
        self.mysql.setServiceParent(top)
        # a MySQL that refuses imd's login stops start-up here, before
        # anything listens or registers (imd.stores.mysql_check)
        # (and [orders] table, when it is another database's)
        MysqlLoginCheck(self.settings.mysql, self.settings.path, self.clock,
                        functools.partial(check_login, orders=self.settings.orders)).setServiceParent(top)
        # positions are never reused (contract §10): MQ:seq raised to MySQL's highest
        if {"ws", "http", "migrate"} & self.settings.imd.roles:
            SeqFloor(self._raise_seq, self.clock).setServiceParent(top)
        # [imd] metrics_listen and this process's registry entry: stopped
        # late, so a draining node can still be scraped.
        from imd.scrape import scrape_services
        scrape_services(self).setServiceParent(top)
        roles = self.settings.imd.roles
        if "migrate" in roles:
            self.migrate_role().setServiceParent(top)
        if "ws" in roles:
            self.bus.setServiceParent(top)
            ConnectionDrainer(self.node).setServiceParent(top)
            for description, secure in ((self.settings.websocket.listen, False),
                                        (self.settings.websocket.tls_listen, True)):
                if description:
                    self.listening_service(description, self.websocket_factory(secure), "ws").setServiceParent(top)
        if "http" in roles:
            if self.jwks is not None:
                self.jwks.setServiceParent(top)   # fetched at start; imd starts even when it cannot be
            for description in (self.settings.http.listen, self.settings.http.tls_listen):
                if description:
                    self.listening_service(description, self.http_site(), "http").setServiceParent(top)
        # SIGHUP reloads the certificates of every ssl: listener built through
        # server_endpoint (and is harmless without any: see imd.tls).
        self.tls.setServiceParent(top)
        # Started last: holds the requests that come before Redis answers.
        self.startup.setServiceParent(top)
        return top

    def server_endpoint(self, description: str) -> Any:
        """The endpoint for a listener string; ``ssl:`` ones reload their
        certificate on SIGHUP.  Every listener gets imd's listen queue unless
        its string names one (:func:`imd.endpoints.with_backlog`)."""
        description = endpoints.with_backlog(description)
        if is_tls_endpoint(description):
            return self.tls.endpoint(description)
        return serverFromString(self.reactor, description)

    def listening_service(self, description: str, factory: Any, role: str = "") -> ListeningService:
        return ListeningService(description, self.server_endpoint(description), factory, role)

    def http_site(self) -> Any:
        """The one Site of the http role (token, page, /healthz, /metrics)."""
        if self._http_site is None:
            from imd.http import build_site
            self._http_site = build_site(self)
        return self._http_site

    def migrate_role(self) -> Any:
        """The migrate role's service: beside the ws role and with ``[imd]
        migrator = child`` (the default), a child process of its own that
        this one supervises (:mod:`imd.migrator_child`: the migrator's work
        is not taken from the clients); else :meth:`migrator_service`, here.
        With no ws role there is no client traffic to protect: no child."""
        if "ws" not in self.settings.imd.roles or self.settings.imd.migrator != "child":
            return self.migrator_service()
        import sys

        from imd.migrator_child import MigratorProcess, child_arguments
        process = self.migrator_process = MigratorProcess(
            sys.executable, child_arguments(self.settings.path, self.node_id), self.settings.imd.shutdown_grace,
            self.reactor, self.clock)
        # its figures, as the child reports them, for /metrics
        self.migrator, self.push_drainer = process.migrator, process.push
        return process

    def migrator_service(self) -> MultiService:
        """The migrate role (it uses ``self.mysql``, started by the caller):
        its own Redis connection, so its batches never queue behind client
        traffic, the :class:`imd.migrator.Migrator`, and, while that leads,
        the ends of closed orders' friendships (:mod:`imd.order_ends`),
        with ``[push] url`` set the push drainer (:mod:`imd.push.drainer`),
        and with ``[retention] days`` set the purge of older messages
        (:mod:`imd.retention`)."""
        from imd.migrator import Migrator
        from imd.order_ends import OrderEnds
        # (no WAIT here: a batch whose claim or delete a failover loses is
        # replayed, and MySQL's unique key keeps its rows once)
        client = self.redis_connection(RedisClient, name="redis (migrator)")
        migrator = self.migrator = Migrator(QueueStore(client, self.keys), self.mysql, self.settings.migrate,
                                            self.clock)
        self.order_ends = OrderEnds(OrderStore(client, self.keys), self.clock, leading=lambda: migrator.is_leader)
        # Stopped in order: the order ends and the migrator finish what they
        # are doing before their Redis connection closes.
        group = GracefulMultiService(self.settings.imd.shutdown_grace, self.clock)
        client.setServiceParent(group)
        self.migrator.setServiceParent(group)
        self.order_ends.setServiceParent(group)
        if self.settings.push.url:
            self.push_drainer = self.push_drainer_service(client, leading=lambda: migrator.is_leader)
            self.push_drainer.setServiceParent(group)
        if self.settings.retention.days:
            from imd.retention import RetentionPurge
            self.retention = RetentionPurge(self.message_rows, self.settings.retention.days, self.clock,
                                            leading=lambda: migrator.is_leader)
            self.retention.setServiceParent(group)
        return group

    def push_drainer_service(self, client: RedisClient, leading: Callable[[], bool]) -> Any:
        """The drainer of pending pushes on ``client``, sending while ``leading()``."""
        from imd.push.drainer import CONNECTIONS, PushDrainer
        from imd.push.gateway import Gateway
        push = self.settings.push
        gateway = Gateway(self.reactor, self.clock, push.url, push.secret, push.timeout, CONNECTIONS)
        return PushDrainer(PushStore(client, self.keys), gateway, push, self.clock, leading)

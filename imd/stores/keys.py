"""The whole Redis key schema, in one place.

Every key imd reads or writes is named here, with the optional
``[redis] prefix`` in front, and nowhere else: stores ask :class:`Keys` for
names and hand them to their Lua scripts as ``KEYS`` (no script builds a key
name itself, as Redis Cluster requires).  :data:`SCHEMA` describes each key
for ``docs/storage.md``, which a test keeps in step with it.

Pub/sub channels are not keys (Redis does not scope them by db index), so the
db index is part of their name: two installations on one Redis never hear
each other.
"""

from typing import NamedTuple, Tuple, Union

Uid = int
PacketId = str


class KeySpec(NamedTuple):
    pattern: str      # as docs/storage.md shows it, without the prefix
    type: str         # Redis type
    store: str        # the module of imd/stores that writes it
    what: str


SCHEMA: Tuple[KeySpec, ...] = (
    KeySpec("publicKey", "string", "tokens", "PEM public key that verifies wstokens"),
    KeySpec("privateKey", "string", "tokens", "PEM private key that signs wstokens"),
    KeySpec("jti:<jti>", "string", "tokens", "a single-use wstoken already used; expires at the token's exp"),
    KeySpec("URS:<uid>", "set", "friends", "the user's friends (uids)"),
    KeySpec("dedup:<uid>:<id>", "string", "messages",
            "a stored (sender, packet id), for [redis] dedup_ttl: a retry is acked, not stored again; "
            "the value is the recipient's uid, then ':d' or ':r' once receipts moved its state (receipts)"),
    KeySpec("dedup:0:<to>:<id>", "string", "messages",
            "the same for a system message (sender 0), per recipient"),
    KeySpec("MQ", "list", "messages", "stored entries (JSON) not yet migrated, newest at the head"),
    KeySpec("MQ:seq", "string (counter)", "messages", "the accept order: each stored entry takes the next value"),
    KeySpec("pending:<uid>", "sorted set", "messages",
            "the user's entries still in MQ or MQ:processing (score: accept order), for H; "
            "trimmed by the migrator after each commit"),
    KeySpec("MQ:processing", "list", "queue", "the migrator's batch in flight"),
    KeySpec("MQ:lock", "string", "queue", "the leading migrator's token, with an expiry of [migrate] lock_ttl"),
    KeySpec("MQ:dead", "list", "queue", "MQ entries that are not readable messages, kept for an operator"),
    KeySpec("dev:<uid>", "sorted set", "presence",
            "the user's live connections: member '<node> <conn id>', score: login time in us"),
    KeySpec("nodes", "sorted set", "presence",
            "live nodes: member the node id, score when its heartbeat expires (Unix ms)"),
    KeySpec("nodeusers:<node>", "set", "presence", "uids with connections on that node"),
    KeySpec("processes", "sorted set", "processes",
            "the process registry: member '<node_id>/<roles>', score when that entry expires (Unix ms)"),
    KeySpec("processes:info", "hash", "processes",
            "'<node_id>/<roles>' -> JSON {node, roles, metrics, host, pid, version}"),
    KeySpec("typing:<uid>:<to>", "string", "typing",
            "a 'typing' (Y true) from uid to a friend was relayed; expires after [typing] min_interval"),
    KeySpec("taken:<order>", "string", "orders", "the courier who took an order (T is idempotent)"),
    KeySpec("geo:couriers", "geo set", "positions", "the latest position of each courier"),
    KeySpec("site:<uid>", "hash", "positions", "a courier's latest longitude, latitude, ts"),
)

CHANNEL_PATTERN = "imd:<db>:node:<node>"


class Keys:
    """Key names with ``[redis] prefix`` in front.  ``db`` (the Redis db
    index) goes into channel names only."""

    def __init__(self, prefix: str = "", db: int = 0) -> None:
        self.prefix = prefix
        self.db = db
        self.public_key = prefix + "publicKey"
        self.private_key = prefix + "privateKey"
        self.mq = prefix + "MQ"
        self.mq_seq = prefix + "MQ:seq"
        self.mq_processing = prefix + "MQ:processing"
        self.mq_lock = prefix + "MQ:lock"
        self.mq_dead = prefix + "MQ:dead"
        self.geo_couriers = prefix + "geo:couriers"
        self.nodes = prefix + "nodes"
        self.processes = prefix + "processes"
        self.processes_info = prefix + "processes:info"
        self._channel_prefix = "%simd:%d:node:" % (prefix, db)
        # hot-path formats, built once
        self._friends = prefix + "URS:%d"
        self._pending = prefix + "pending:%d"
        self._dedup = prefix + "dedup:%d:%s"
        self._devices = prefix + "dev:%d"

    def used_jti(self, jti: str) -> str:
        return "%sjti:%s" % (self.prefix, jti)

    def friends(self, uid: Uid) -> str:
        return self._friends % uid

    def dedup(self, sender: Uid, packet_id: PacketId, to: Uid) -> str:
        """A user's packet ids are theirs alone; the system (sender 0) reuses
        one id for many recipients (an order's event to both parties)."""
        if sender == 0:
            return "%sdedup:0:%d:%s" % (self.prefix, to, packet_id)
        return self._dedup % (sender, packet_id)

    def pending(self, uid: Uid) -> str:
        return self._pending % uid

    def devices(self, uid: Uid) -> str:
        return self._devices % uid

    def node_users(self, node_id: str) -> str:
        return "%snodeusers:%s" % (self.prefix, node_id)

    def typing(self, sender: Uid, to: Uid) -> str:
        return "%styping:%d:%d" % (self.prefix, sender, to)

    def taken(self, order: int) -> str:
        return "%staken:%d" % (self.prefix, order)

    def site(self, uid: Uid) -> str:
        return "%ssite:%d" % (self.prefix, uid)

    def channel(self, node_id: Union[str, bytes]) -> str:
        """The pub/sub channel a node listens on."""
        if isinstance(node_id, bytes):
            node_id = node_id.decode("utf-8")
        return self._channel_prefix + node_id

    @property
    def channel_prefix(self) -> str:
        return self._channel_prefix

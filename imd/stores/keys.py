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

import re
from typing import NamedTuple, Optional, Tuple

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
    KeySpec("kept:<uid>", "set", "friends",
            "the user's friends that no order's close ends: made with friend add, or friends already "
            "when an order's T came"),
    KeySpec("dedup:<uid>:<id>", "string", "messages",
            "a stored (sender, packet id), for [redis] dedup_ttl: a retry is acked, not stored again; "
            "the value is the recipient's uid, '/' and the message's accept order (its pos; a t or i), "
            "then ':d' or ':r' once receipts moved its state (receipts)"),
    KeySpec("recalled:<uid>:<id>", "string", "recalls",
            "the user's message <id> is recalled or deleted (contract v3 §11), value its recipient: says so "
            "until the D is migrated (MySQL's recalled column then does); 30 days"),
    KeySpec("dedup:0:<to>:<id>", "string", "messages",
            "the same for a system message (sender 0), per recipient"),
    KeySpec("MQ", "list", "messages", "stored entries (JSON) not yet migrated, newest at the head"),
    KeySpec("MQ:seq", "string (counter)", "messages",
            "the accept order: each stored entry takes the next value (its pos, contract §10); "
            "raised at start-up to the highest accept_seq in MySQL, never lowered"),
    KeySpec("pending:<uid>", "sorted set", "messages",
            "the user's entries still in MQ or MQ:processing (score: accept order), for H; "
            "trimmed by the migrator after each commit"),
    KeySpec("conv:<uid>", "sorted set", "messages",
            "the user's conversations (contract §10): member the other party's uid (0: the system), "
            "score the pos of its latest message"),
    KeySpec("convlast:<uid>", "hash", "messages",
            "the latest message packet (with its pos) of each of the user's conversations, field as conv:<uid>"),
    KeySpec("unread:<uid>:<other>", "sorted set", "messages",
            "the messages from <other> (0: the system) to the user after its latest read receipt: member the "
            "message's dedup record's key, score its pos; a read receipt removes those up to the latest read"),
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
    KeySpec("order:<order>", "hash", "orders",
            "an order's conversation: courier, customer, before, taken_at, closed_at, ends_at, ended_at, end; "
            "30 days after its last T while open, kept from its close until its end, then 30 days"),
    KeySpec("assigned:<order>", "string", "orders",
            "a random token, new at each change of an order's courier or customer by POST /IM/api/orders "
            "(imd-admin order create): a T that read the token before it and the orders row is refused "
            "and reads both again; 1 hour"),
    KeySpec("links:<a>:<b>", "sorted set", "orders",
            "the orders that keep users a < b friends: member the order id, score until when (Unix ms): "
            "an open order 30 days after its last T, a closed one inf (until its end removes it)"),
    KeySpec("open:<courier>", "sorted set", "orders",
            "the courier's open orders (taken, not closed), who its positions go to: member "
            "'<order>:<customer>', score until when (Unix ms): 30 days after the order's last T"),
    KeySpec("orders:ending", "sorted set", "orders",
            "closed orders whose friendship end is still to run: member the order id, score when (Unix ms)"),
    KeySpec("push:unread", "hash", "push",
            "uid -> the user's stored messages no receipt has marked delivered yet (with [push] url set)"),
    KeySpec("push:last", "hash", "push",
            "uid -> the JSON of the user's newest message not yet named by a push"),
    KeySpec("push:due", "sorted set", "push",
            "users with a push waiting for its delay window to end: member the uid, score when it is due (Unix ms)"),
    KeySpec("push:inflight", "hash", "push",
            "delivery key -> a push taken by the drainer and not yet answered: attempts, first try, window "
            "start, recipient, unread, message JSON"),
    KeySpec("push:sending", "sorted set", "push",
            "the in-flight pushes by when they may be tried next (Unix ms): a retry's time, or the lease "
            "of an attempt under way"),
    KeySpec("push:born", "sorted set", "push",
            "the in-flight pushes by when their delay window opened (Unix ms), for the oldest pending age"),
    KeySpec("push:current", "hash", "push",
            "uid -> the delivery key of the user's push in flight (one at most): a window ending meanwhile "
            "joins it"),
    KeySpec("typing:<uid>:<to>", "string", "typing",
            "a 'typing' (Y true) from uid to a friend was relayed; expires after [typing] min_interval"),
    KeySpec("budget:history:<uid>", "hash", "budgets",
            "the user's H budget across its connections and nodes ([websocket] history_user_rate, "
            "history_user_burst): t (tokens), at (Unix ms); expires once full again"),
    KeySpec("budget:lookups:<uid>", "hash", "budgets",
            "the user's budget of R packets naming ids without a dedup record, each looked up in "
            "pending:<uid> and MySQL ([websocket] receipt_lookup_rate, receipt_lookup_burst)"),
    KeySpec("room:<room>", "hash", "rooms",
            "a room (contract v3 §9): seq (its last seq), last (that message's packet), meta (JSON), created_at, "
            "closed_at and ends_at "
            "(Unix ms, once closed); kept like messages, without expiry"),
    KeySpec("roommembers:<room>", "set", "rooms", "the room's members (uids), checked by every send"),
    KeySpec("roomread:<room>", "hash", "rooms", "uid -> the member's read cursor (a seq; forward only)"),
    KeySpec("roompending:<room>", "sorted set", "rooms",
            "the room's messages still in MQ or MQ:processing (score: accept order), for H {\"room\"} (a binary "
            "search on rank: a room's seq follows the score; an entry keeps its ',\"seq\":N,\"pos\":P' last); "
            "trimmed by the migrator after each commit"),
    KeySpec("roomspans:<room>", "hash", "rooms",
            "uid -> the member's spans of the room in its stream (contract §10): 'from:to,...', the positions "
            "above from (MQ:seq when it was added) up to to (its left event; empty while a member)"),
    KeySpec("roomsof:<uid>", "set", "rooms", "the rooms the user is or was a member of (for its sync stream)"),
    KeySpec("roomconv:<uid>", "sorted set", "rooms",
            "the user's rooms in its conversation list (contract §10): member the room's id, score the pos of "
            "its latest packet there (a removed member's: its left event); written by the scripts that store "
            "room packets; no cap, like roomsof:<uid>; a sync reads the rooms scored above its pos (a room "
            "leaves it only with the user's stream there)"),
    KeySpec("roomsync:<uid>", "sorted set", "rooms",
            "the rooms where the user got a recall's D: member the room's id, score the D's pos (room_recall); "
            "a sync reads the rooms scored above its pos here too, since a D does not move the room in the "
            "conversation list (roomconv:<uid>); one member per room; erasure deletes it"),
    KeySpec("roomgone:<uid>", "hash", "rooms",
            "room -> '<unread> <left packet>': a removed member's conversation-list row, as it was at its left "
            "event; deleted when it joins again"),
    KeySpec("roommine:<room>:<uid>", "sorted set", "rooms",
            "the member's own messages in the room above its read cursor (member and score: their seq), which "
            "its unread count leaves out; trimmed as the cursor moves, kept when it leaves (its own never count, "
            "even once back)"),
    KeySpec("rdedup:<uid>:<room>/<id>", "string", "rooms",
            "a stored room message (sender, packet id; 0 for the API's), for [redis] dedup_ttl: value "
            "'<seq>/<pos>', so a retry answers the first seq"),
    KeySpec("rrecalled:<uid>:<room>/<id>", "string", "roomrecalls",
            "the user's room message <id> is recalled or deleted (contract v3 §11), for 30 days: until its D is "
            "migrated, when room_message's tombstone takes over"),
    KeySpec("rtyping:<room>:<uid>", "string", "rooms",
            "a 'typing' (Y true) of uid in the room was relayed; expires after [typing] min_interval"),
    KeySpec("roomtrack:<courier>", "set", "positions",
            "rooms whose meta has (or had) \"track\": <courier> (contract §11): a hint written before the meta, "
            "checked against each room's meta and close at every push of the courier's position, which drops "
            "the rooms that no longer track it"),
    KeySpec("geo:couriers", "geo set", "positions", "the latest position of each courier"),
    KeySpec("site:<uid>", "hash", "positions", "a courier's latest longitude, latitude, ts"),
)

CHANNEL_PATTERN = "imd:<db>:node:<node>"
_GLOB = re.compile(r"[*?\[\]\\]")


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
        self.orders_ending = prefix + "orders:ending"
        self.push_unread = prefix + "push:unread"
        self.push_last = prefix + "push:last"
        self.push_due = prefix + "push:due"
        self.push_inflight = prefix + "push:inflight"
        self.push_sending = prefix + "push:sending"
        self.push_born = prefix + "push:born"
        self.push_current = prefix + "push:current"
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

    @property
    def dedup_match(self) -> str:
        """The SCAN ``MATCH`` pattern of every dedup record (the prefix's
        glob characters escaped)."""
        return _GLOB.sub(r"\\\g<0>", self.prefix) + "dedup:*"

    def parse_dedup(self, key: str) -> Optional[Tuple[Uid, PacketId, Optional[Uid]]]:
        """``(sender, packet id, recipient)`` of a dedup record's name; the
        recipient is in the name only for the system (sender 0), else None.
        None for a name that is not a dedup record's.  An id may hold ``:``:
        the sender (and the system's recipient) come first."""
        head = self.prefix + "dedup:"
        if not key.startswith(head):
            return None
        sender, _, rest = key[len(head):].partition(":")
        try:
            if sender == "0":
                to, _, packet_id = rest.partition(":")
                return (0, packet_id, int(to)) if packet_id and to.isdigit() else None
            return (int(sender), rest, None) if rest and sender.isdigit() else None
        except ValueError:
            return None

    def pending(self, uid: Uid) -> str:
        return self._pending % uid

    def devices(self, uid: Uid) -> str:
        return self._devices % uid

    def conversations(self, uid: Uid) -> str:
        return "%sconv:%d" % (self.prefix, uid)

    def conversation_last(self, uid: Uid) -> str:
        return "%sconvlast:%d" % (self.prefix, uid)

    def unread(self, uid: Uid, other: Uid) -> str:
        return "%sunread:%d:%d" % (self.prefix, uid, other)

    def node_users(self, node_id: str) -> str:
        return "%snodeusers:%s" % (self.prefix, node_id)

    def recalled(self, sender: Uid, packet_id: PacketId) -> str:
        return "%srecalled:%d:%s" % (self.prefix, sender, packet_id)

    def kept(self, uid: Uid) -> str:
        return "%skept:%d" % (self.prefix, uid)

    def order(self, order: int) -> str:
        return "%sorder:%d" % (self.prefix, order)

    def assigned(self, order: int) -> str:
        return "%sassigned:%d" % (self.prefix, order)

    def open_orders(self, courier: Uid) -> str:
        return "%sopen:%d" % (self.prefix, courier)

    def links(self, a: Uid, b: Uid) -> str:
        """One key per pair of users, whichever way round they are named."""
        if a > b:
            a, b = b, a
        return "%slinks:%d:%d" % (self.prefix, a, b)
    def room(self, room: str) -> str:
        """A room's keys: ``room:``, ``roommembers:``, ``roomread:``,
        ``roompending:``, ``roomspans:`` then the id, ``rdedup:<uid>:<room>/<id>``,
        ``roommine:<room>:<uid>`` (a uid is digits: the last ``:`` ends the id):
        a room id may hold ``:``, so no room's key is another's with a
        suffix (``/`` is not in a room id; a uid is digits)."""
        return "%sroom:%s" % (self.prefix, room)

    def room_members(self, room: str) -> str:
        return "%sroommembers:%s" % (self.prefix, room)

    def room_read(self, room: str) -> str:
        return "%sroomread:%s" % (self.prefix, room)

    def room_pending(self, room: str) -> str:
        return "%sroompending:%s" % (self.prefix, room)

    def room_dedup(self, room: str, sender: Uid, packet_id: PacketId) -> str:
        return "%srdedup:%d:%s/%s" % (self.prefix, sender, room, packet_id)

    def room_recalled(self, room: str, sender: Uid, packet_id: PacketId) -> str:
        return "%srrecalled:%d:%s/%s" % (self.prefix, sender, room, packet_id)

    def room_spans(self, room: str) -> str:
        return "%sroomspans:%s" % (self.prefix, room)

    def rooms_of(self, uid: Uid) -> str:
        return "%sroomsof:%d" % (self.prefix, uid)

    def room_conversations(self, uid: Uid) -> str:
        return "%sroomconv:%d" % (self.prefix, uid)

    def room_sync(self, uid: Uid) -> str:
        return "%sroomsync:%d" % (self.prefix, uid)

    def room_gone(self, uid: Uid) -> str:
        return "%sroomgone:%d" % (self.prefix, uid)

    def room_mine(self, room: str, uid: Uid) -> str:
        return "%sroommine:%s:%d" % (self.prefix, room, uid)

    def room_typing(self, room: str, uid: Uid) -> str:
        return "%srtyping:%s:%d" % (self.prefix, room, uid)

    def room_track(self, courier: Uid) -> str:
        return "%sroomtrack:%d" % (self.prefix, courier)

    def typing(self, sender: Uid, to: Uid) -> str:
        return "%styping:%d:%d" % (self.prefix, sender, to)


    def budget(self, kind: str, uid: Uid) -> str:
        """A user's budget of ``kind`` (``history``, ``lookups``): imd.stores.budgets."""
        return "%sbudget:%s:%d" % (self.prefix, kind, uid)

    def site(self, uid: Uid) -> str:
        return "%ssite:%d" % (self.prefix, uid)

    def channel(self, node_id: str) -> str:
        """The pub/sub channel a node listens on."""
        return self._channel_prefix + node_id

    @property
    def channel_prefix(self) -> str:
        return self._channel_prefix

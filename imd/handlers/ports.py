"""What the handlers need of the node and of the stores: one
``typing.Protocol`` per dependency, naming only the methods the handlers
call.  ``App`` hands each handler the real object (imd.node.LocalNode,
imd.stores.*), and mypy checks there that it has what the Protocol says;
a test hands it whatever it likes that does.

typing.Protocol rather than zope.interface: the check is structural (no
``@implementer`` on the stores, which need not know who uses them), it is
made by mypy as it stands (zope interfaces need the mypy-zope plugin, which
follows mypy's internals release by release) and costs nothing at run time.
"""

from typing import TYPE_CHECKING, Dict, Iterable, Optional, Protocol, Sequence, Tuple, TypeVar, Union

from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from imd import protocol
    from imd.config import OrdersSettings
    from imd.stores.budgets import Budget
    from imd.stores.orders import OrderRecord

T = TypeVar("T")


class Node(Protocol):
    """This process's sessions and the way to every user (imd.node.LocalNode)."""

    @property
    def node_id(self) -> str: ...

    @property
    def healthy(self) -> bool: ...

    def deliver(self, uid: int, payload: bytes, skip: Optional[str] = None) -> int: ...

    def kick(self, uid: int, reason: str) -> Deferred: ...

    def wait_frame(self, pos: int, result: T) -> Union[T, Deferred]: ...

    def next_server_id(self) -> str: ...


class RoomNode(Protocol):
    """What the rooms need of the node (imd.node.LocalNode)."""

    @property
    def healthy(self) -> bool: ...

    def deliver_room(self, uids: Sequence[int], payload: bytes, skip: Optional[str] = None) -> int: ...

    def wait_frame(self, pos: int, result: T) -> Union[T, Deferred]: ...


class Messages(Protocol):
    """Messages into Redis and back out of it (imd.stores.messages.MessageStore)."""

    # True: the store scripts publish what they store to every connection
    # (in pos order); False ([redis] min_replicas): the caller delivers
    publishes: bool

    def store_message(self, sender: int, to: int, dedup_id: str, packet: bytes, ts: int = 0,
                      origin: Optional[str] = None) -> Deferred: ...

    def store_system_messages(self, packet_id: str, recipients: Sequence[int], head: bytes, tail: bytes,
                              ts: int = 0) -> Deferred: ...

    def pending(self, uid: int) -> Deferred: ...

    def pending_for_history(self, uid: int, budget: "Budget", now_ms: int) -> Deferred: ...

    def pending_for_sync(self, uid: int, after_pos: int, budget: "Optional[Budget]", now_ms: int) -> Deferred: ...


class Presence(Protocol):
    """Who is online (imd.stores.presence.PresenceStore)."""

    def is_online(self, asker: int, uid: int) -> Deferred: ...

    def online_many(self, uids: Sequence[int]) -> Deferred: ...

    def connection_count(self, uid: int) -> Deferred: ...


class Friends(Protocol):
    """Friend sets (imd.stores.friends.FriendStore)."""

    def add_friends(self, a: int, b: int) -> Deferred: ...

    def remove_friends(self, a: int, b: int) -> Deferred: ...


class Positions(Protocol):
    """Couriers' positions (imd.stores.positions.PositionStore)."""

    def record_site(self, uid: int, longitude: float, latitude: float, ts: int) -> Deferred: ...


class SiteNode(Node, Protocol):
    """What positions need of the node: a user's connections, and a room's
    members' (imd.node.LocalNode)."""

    def deliver_room(self, uids: Sequence[int], payload: bytes, skip: Optional[str] = None) -> int: ...


class PositionAudience(Protocol):
    """Who a courier's position goes to (imd.stores.positions.PositionAudience)."""

    def audience(self, courier: int, now_ms: int) -> Deferred: ...


class Typing(Protocol):
    """The typing relay's checks (imd.stores.typing.TypingStore)."""

    def check(self, sender: int, to: int, is_typing: bool) -> Deferred: ...


class Orders(Protocol):
    """Orders in Redis (imd.stores.orders.OrderStore)."""

    publishes: bool   # as Messages.publishes

    def assignment(self, order: int) -> Deferred: ...

    def reassign(self, order: int) -> Deferred: ...

    def take_order(self, order: int, courier: int, customer: int, packet: bytes, now_ms: int,
                   earlier: Optional[Tuple[int, int, Optional[str]]] = None, assigned: str = "") -> Deferred: ...

    def restore_taken(self, order: int, courier: int, customer: int, taken_at: int, before: Optional[str],
                      now_ms: int) -> Deferred: ...

    def record(self, order: int) -> Deferred: ...

    def close_order(self, record: "OrderRecord", now_ms: int, grace_ms: int, packets: Dict[int, bytes],
                    dedup_ttl: int) -> Deferred: ...

    def close_untaken(self, order: int, customer: int, courier: Optional[int], now_ms: int) -> Deferred: ...


class OrderRows(Protocol):
    """Orders in MySQL: the platform's table and imd's record (imd.stores.mysql.MysqlStore)."""

    def order_parties(self, orders: "OrdersSettings", order_id: int) -> Deferred: ...

    def order_for_take(self, orders: "OrdersSettings", order_id: int) -> Deferred: ...

    def order_conversation(self, order_id: int) -> Deferred: ...

    def create_order(self, orders: "OrdersSettings", order_id: int, customer_id: int,
                     courier_id: Optional[int] = None) -> Deferred: ...

    def record_taken(self, order_id: int, customer_id: int, courier_id: int, friends_before: Optional[str],
                     taken_at: int) -> Deferred: ...

    def record_closed(self, order_id: int, customer_id: int, courier_id: Optional[int],
                      friends_before: Optional[str], taken_at: Optional[int], closed_at: int,
                      ends_at: int) -> Deferred: ...


class HistoryRows(Protocol):
    """Migrated messages, for ``H`` (imd.stores.mysql.MysqlStore)."""

    def history(self, uid: int, with_uid: Optional[int], position: Tuple[int, Optional[int]],
                limit: int) -> Deferred: ...

    def stream(self, uid: int, after_pos: int, limit: int) -> Deferred: ...


class Recalls(Protocol):
    """Recall and delete in Redis (imd.stores.recalls.RecallStore)."""

    publishes: bool   # as Messages.publishes

    def recall(self, sender: int, to: int, d_id: str, msg_id: str, d_packet: bytes, now_ms: int,
               window_ms: Optional[int], force: bool = False, to_sender: bool = False,
               origin: Optional[str] = None) -> Deferred: ...


class RoomRecalls(Protocol):
    """Recall and delete of a room's message in Redis (imd.stores.roomrecalls.RoomRecallStore)."""

    @property
    def publishes(self) -> bool:
        """True: the script publishes the D to the members' connections (in
        pos order); False (``[redis] min_replicas``): the caller delivers."""

    def recall(self, sender: int, room: str, d_id: str, msg_id: str, d_head: bytes, now_ms: int,
               window_ms: Optional[int], force: bool = False, origin: Optional[str] = None) -> Deferred: ...


class RoomRecallRows(Protocol):
    """Migrated room messages, for a recall (imd.stores.mysql.MysqlStore)."""

    def room_message_for_recall(self, sender: int, msg_id: str, room: str) -> Deferred: ...


class RecallRows(Protocol):
    """Migrated messages, for a recall (imd.stores.mysql.MysqlStore)."""

    def message_for_recall(self, sender: int, msg_id: str, to: int) -> Deferred: ...


class ReceiptRows(Protocol):
    """Migrated messages' states, for ``R`` (imd.stores.mysql.MysqlStore)."""

    def message_states(self, sender: int, reader: int, msg_ids: Iterable[str]) -> Deferred: ...


class Receipts(Protocol):
    """Receipts in Redis (imd.stores.receipts.ReceiptStore)."""

    def apply(self, packet: "protocol.ReceiptPacket", reader: int, ts: int,
              seeds: Optional[Sequence[str]] = None) -> Deferred: ...

    def old_pending(self, reader: int, sender: int, now_ms: int, lookups: "Budget") -> Deferred: ...


class TypingFigures(Protocol):
    """The ``Y`` figures of ``/metrics`` (imd.metrics.Metrics)."""

    def typing(self, relayed: bool) -> None: ...


class ReceiptFigures(Protocol):
    """The ``R`` figures of ``/metrics`` (imd.metrics.Metrics)."""

    def receipt_in(self, state: int, ids: int) -> None: ...

    def receipts_advanced(self, state: int, ids: int) -> None: ...


class ConversationRow(Protocol):
    """A row of a conversation list: ``pos`` (its latest message's, the
    list's order: unique per user, as every message is in one
    conversation) and ``item``, its JSON (``{"with"|"room", "last",
    "unread"}``)."""

    pos: int
    item: bytes


class ConversationSource(Protocol):
    """Where ``H {"conversations": true}`` finds conversations (contract
    §10): one-to-one (imd.stores.conversations.ConversationStore), rooms
    (another source, the same shape)."""

    def newest(self, uid: int, below_pos: Optional[int], limit: int, now_ms: int) -> Deferred:
        """Fires with up to ``limit`` :class:`ConversationRow` of ``uid``
        whose ``pos`` is below ``below_pos`` (None: any), newest first; or
        None when the user's ``H`` budget is spent (a source that spends it)."""
        ...

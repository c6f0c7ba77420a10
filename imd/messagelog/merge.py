"""The one merge of the message log: a user's entries still in Redis
(``pending:<uid>``: not yet migrated) with the rows read from MySQL, for
every reader (``H``, ``imd-admin export``, the receipts' verification).

Redis is read *before* MySQL: an entry leaves Redis only after its row has
committed, so whatever is not in the Redis snapshot is already visible to
the MySQL read that follows — no gap at the boundary — and the merge drops
the overlap: each message (``(from, id, to)``) once.

A message's receipt state (contract §7.1: 0 sent, 1 delivered, 2 read) is
the furthest of its receipts in MySQL (read with its row) and of the
receipt entries among the same pending entries.  A receipt follows its
message in accept order, so whenever the message is read from Redis its
receipts still are too, and once a receipt has left Redis its row is in
MySQL.

Which messages a reader wants is one :class:`Selection`, the same for both
sides: :meth:`Selection.matches` picks the pending entries, and
imd.stores.mysql reads the rows of the same selection (one SQL reader).

A selection is in history order (``(ts, seq)``), or, for a sync
(``after_pos`` set, contract §10), in stream order: by ``seq`` alone, the
entry's ``pos``.  A user's stream is the message entries this merge reads
(``t``, ``i``, ``s``: :class:`~imd.messagelog.entry.StoredMessage`) and
the recalls (``D``, contract §11: in the stream, not in history; their
rows are read with the stream's, imd.stores.mysql); receipts (``R``) are
not in it.  A new kind of entry joins the stream by
being read here as a message.
"""

from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Set, Tuple, cast

from imd.messagelog.entry import Identity, StoredMessage, StoredReceipt, parse_entry, recalled_identity, tombstone

Position = Tuple[int, Optional[int]]   # (ts, seq); seq None: "ts strictly after"
Item = Tuple[StoredMessage, int]       # a message and its receipt state
# A row of the log as imd.stores.mysql reads it: ts, accept_seq, from_id,
# msg_id, to_id, type, msg (None when not read: H), packet, state
LogRow = Tuple[int, int, int, bytes, int, str, Optional[str], str, int]


def _history_key(message: StoredMessage) -> Tuple[int, int]:
    return (message[5], message[6])   # StoredMessage.key: (ts, seq)


def _stream_key(message: StoredMessage) -> int:
    return message[6]   # seq: its pos


class Selection(NamedTuple):
    """``uid``'s messages, sent and received (with ``with_uid`` only, if
    set), and the system's messages ``system_ids`` to either of the two;
    ``H`` reads those after ``after``, export those with ``since <= ts <
    until``, a sync (``H {"sync"}``) those whose ``seq`` (``pos``) is above
    ``after_pos``, in stream order (:attr:`by_pos`).  None: no such bound."""
    uid: int
    with_uid: Optional[int] = None
    after: Optional[Position] = None
    since: Optional[int] = None
    until: Optional[int] = None
    system_ids: Tuple[str, ...] = ()
    after_pos: Optional[int] = None

    @property
    def by_pos(self) -> bool:
        """In stream order (by ``seq``) rather than history order (``(ts, seq)``)."""
        return self.after_pos is not None

    def matches(self, message: StoredMessage) -> bool:
        """Whether a pending message is one of the selection (as the SQL of
        imd.stores.mysql reads them from MySQL)."""
        ts = message.ts
        if self.after_pos is not None and message.seq <= self.after_pos:
            return False
        if self.after is not None:
            after_ts, after_seq = self.after
            if not (ts > after_ts if after_seq is None else message.key > self.after):
                return False
        if (self.since is not None and ts < self.since) or (self.until is not None and ts >= self.until):
            return False
        uid, with_uid = self.uid, self.with_uid
        if (self.system_ids and message.from_id == 0 and message.to_id in (uid, with_uid)
                and message.msg_id.decode("utf-8") in self.system_ids):
            return True
        if message.from_id == uid:
            return with_uid is None or message.to_id == with_uid
        if message.to_id == uid:
            return with_uid is None or message.from_id == with_uid
        return False


class Pending:
    """A user's entries still in Redis, read once: :attr:`messages`, those
    that ``keep`` takes (each ``(from, id, to)`` once: its first entry), in
    history order; and the furthest state the receipt entries among them
    give each message (:meth:`state`), and the messages the ``D`` entries
    among them recall (:attr:`recalled`: their entries in Redis lost their
    text when the D was stored, their rows in MySQL once the D is
    migrated; until then the merge shows the row as a tombstone).  A ``D``
    is not itself a message of history; in stream order (``by_pos``) it is
    one of :attr:`messages`, the packet every connection got.  An entry that cannot be read is
    passed over (the migrator moves it to ``MQ:dead``)."""

    def __init__(self, entries: Iterable[str], keep: Callable[[StoredMessage], bool],
                 by_pos: bool = False) -> None:
        """``by_pos``: :attr:`messages` in stream order (by ``seq``)."""
        messages: Dict[Identity, StoredMessage] = {}
        states: Dict[Identity, int] = {}
        recalled: Set[Identity] = set()
        for entry in entries:
            try:
                value = parse_entry(entry)
            except ValueError:
                continue
            if not isinstance(value, (StoredMessage, StoredReceipt)):
                continue   # a room's entry: never in a user's pending index
            if isinstance(value, StoredReceipt):
                state = value.state
                for identity in value.identities():
                    if states.get(identity, 0) < state:
                        states[identity] = state
            elif value.type == "D":
                recalled.add(cast(Identity, recalled_identity(value)))
                if by_pos and keep(value):   # in the stream, not in history (contract §10, §11)
                    messages.setdefault(value.identity, value)
            elif keep(value):
                messages.setdefault(value.identity, value)
        self.messages: List[StoredMessage] = sorted(messages.values(), key=_stream_key if by_pos else _history_key)
        self.states = states
        self.recalled = recalled

    def state(self, identity: Identity, known: int = 0) -> int:
        """The furthest of ``known`` (MySQL's) and the pending receipts' state of a message."""
        pending = self.states.get(identity, 0)
        return pending if pending > known else known


_new_tuple = tuple.__new__


def merged(rows: Iterable[LogRow], pending: Pending, by_pos: bool = False) -> Iterator[Item]:
    """MySQL's rows and the pending messages in one history order
    (``(ts, seq)``; ``by_pos``: stream order, by ``seq``), each message
    once — the first met; on equal keys the row, so the pending copy of a
    message migrated meanwhile is dropped — with the furthest state either
    side knows.  Lazy: a reader takes what it needs (a page) or streams it
    all.

    ``rows``: as imd.stores.mysql reads them (:data:`LogRow`), in the same
    order; ``pending`` built with the same ``by_pos``.  A message a pending
    ``D`` recalls comes out as its tombstone."""
    if pending.recalled:
        return _tombstoned(_merged(rows, pending, by_pos), pending.recalled)
    return _merged(rows, pending, by_pos)


def _tombstoned(items: Iterator[Item], recalled: Set[Identity]) -> Iterator[Item]:
    """Each message a pending ``D`` recalls as its tombstone (contract v3 §11)."""
    for message, state in items:
        if (message[1], message[0], message[2]) in recalled:
            message = message._replace(msg=None if message.msg is None else "", packet=tombstone(message.packet))
        yield message, state


def _merged(rows: Iterable[LogRow], pending: Pending, by_pos: bool) -> Iterator[Item]:
    # (one generator, no heapq.merge: this is every H's path, ~0.3 µs an item)
    waiting = pending.messages
    states = pending.states
    pending_ids: Set[Identity] = {m.identity for m in waiting}
    seen: Set[Identity] = set()
    i, n = 0, len(waiting)
    for ts, seq, from_id, msg_id, to_id, kind, msg, packet, state in rows:
        while i < n:
            first = waiting[i]
            if by_pos:
                if first[6] >= seq:
                    break
            elif first[5] > ts or (first[5] == ts and first[6] >= seq):
                break
            i += 1
            identity = (first[1], first[0], first[2])
            if identity not in seen:
                seen.add(identity)
                yield first, states.get(identity, 0)
        identity = (from_id, msg_id, to_id)
        if identity in pending_ids:
            if identity in seen:
                continue
            seen.add(identity)
        if states:
            extra = states.get(identity, 0)
            if extra > state:
                state = extra
        yield _new_tuple(StoredMessage, (msg_id, from_id, to_id, kind, msg, ts, seq, packet)), state
    while i < n:
        first = waiting[i]
        i += 1
        identity = (first[1], first[0], first[2])   # (from, id, to)
        if identity not in seen:
            seen.add(identity)
            yield first, states.get(identity, 0)


def found_states(pending: Pending, sender: int, reader: int, in_mysql: Dict[bytes, int]) -> Dict[bytes, int]:
    """The receipts' verification: the state of each message ``sender``
    sent ``reader`` that is stored, by id (UTF-8): the pending messages
    (``pending`` kept those wanted; 0 before their receipts) and those
    found in MySQL (``in_mysql``: the ids not pending, with their state
    there), each with the furthest of that and the pending receipts'."""
    found = {m.msg_id: 0 for m in pending.messages if m.from_id == sender and m.to_id == reader}
    for msg_id, state in in_mysql.items():
        found.setdefault(msg_id, state)
    return {msg_id: pending.state((sender, msg_id, reader), state) for msg_id, state in found.items()}

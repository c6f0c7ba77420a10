"""``imd-admin export --order ORDER | --user UID [--with UID] [--since]
[--until] [--format jsonl|csv]``: a conversation as history (``H``) shows
it, for support or an archive.

Each message with its receipt state (``sent``, ``delivered``, ``read``),
oldest first by ``(ts, accept order)``.  The messages still in Redis
(``pending:<uid>``, not yet migrated) are merged with the rows of MySQL as
``H`` merges them (imd/handlers/history.py): Redis is read first, then
MySQL, duplicates dropped by ``(from, id, to)``, and a message's state is
the furthest of its receipt rows and of the receipt entries still pending.

MySQL is read by server-side cursors in a thread (imd.stores.mysql
``ConversationReader``) and each message written as it comes: memory stays
the same for a million rows.  Only the user's pending entries (what the
migrator has not stored yet) are held.

``--order``: the two users of the order's record in Redis (its courier and
customer, imd.stores.orders), from its ``T`` to the end of the conversation
(its friendship's end after the close; now while open), and the ``closed``
event imd sent each of them.  The record lasts 30 days after the end.
"""

import argparse
import csv
import heapq
import sys
from typing import TYPE_CHECKING, Any, Dict, Generator, Iterable, Iterator, List, NamedTuple, Optional, TextIO, Tuple

from twisted.internet import defer, threads

from imd import protocol
from imd.errors import AdminError
from imd.progress import progress
from imd.stored import StoredMessage, StoredReceipt, parse_entry
from imd.stores.mysql import ConversationReader
from imd.timespec import iso

if TYPE_CHECKING:
    from imd.app import App

NO_END = 2 ** 63 - 1
CSV_COLUMNS = ("ts", "time", "from", "to", "id", "type", "state", "msg")


class Conversation(NamedTuple):
    """What to export: ``uid``'s messages (with ``with_uid`` only, if set)
    with ``since <= ts < until``, and the system's messages ``system_ids``
    to either of them."""
    uid: int
    with_uid: Optional[int]
    since: int
    until: int
    system_ids: Tuple[str, ...] = ()
    title: str = ""


class Item(NamedTuple):
    ts: int
    seq: int
    from_id: int
    msg_id: str
    to_id: int
    type: str
    msg: str
    packet: str
    state: int

    @property
    def identity(self) -> Tuple[int, str, int]:
        return (self.from_id, self.msg_id, self.to_id)


def _bounded(args: argparse.Namespace, now: float, since: int, until: int) -> Tuple[int, int]:
    if args.since is not None:
        since = max(since, args.since.at(now))
    if args.until is not None:
        until = min(until, args.until.at(now))
    if since >= until:
        raise AdminError("nothing to export: the window %s .. %s is empty" % (iso(since), iso(until)))
    return since, until


@defer.inlineCallbacks
def conversation_of(app: "App", args: argparse.Namespace) -> Generator[defer.Deferred, Any, Conversation]:
    now = app.clock.seconds()
    if args.order is None:
        since, until = _bounded(args, now, 0, NO_END)
        return Conversation(args.user, args.with_uid, since, until, (),
                            "user %d" % args.user + (" with %d" % args.with_uid if args.with_uid else ""))
    record = yield app.orders.record(args.order)
    if record is None:
        raise AdminError("order %d has no record in Redis (none was ever taken, or its conversation ended over "
                         "30 days ago): export --user CUSTOMER --with COURIER --since ... --until ... instead"
                         % args.order)
    if not record.taken or record.courier is None or record.customer is None:
        raise AdminError("order %d was closed before a courier took it: it has no conversation" % args.order)
    end = record.ended_at if record.ended_at is not None else record.ends_at
    until = end + 1 if end is not None else int(now * 1000) + 1
    since, until = _bounded(args, now, record.taken_at or 0, until)
    return Conversation(record.customer, record.courier, since, until, ("closed-%d" % args.order,),
                        "order %d (customer %d, courier %d)" % (args.order, record.customer, record.courier))


def _belongs(stored: StoredMessage, conv: Conversation) -> bool:
    if not conv.since <= stored.ts < conv.until:
        return False
    uid, with_uid = conv.uid, conv.with_uid
    if stored.from_id == 0 and stored.to_id in (uid, with_uid) and stored.msg_id.decode("utf-8") in conv.system_ids:
        return True
    if stored.from_id == uid:
        return with_uid is None or stored.to_id == with_uid
    if stored.to_id == uid:
        return with_uid is None or stored.from_id == with_uid
    return False


def pending_items(entries: Iterable[str], conv: Conversation) -> Tuple[List[Item], Dict[Tuple[int, str, int], int]]:
    """The conversation's messages among the user's pending entries, in
    history order, and the states their receipt entries give."""
    items: Dict[Tuple[int, str, int], Item] = {}
    states: Dict[Tuple[int, str, int], int] = {}
    for entry in entries:
        try:
            stored = parse_entry(entry)
        except ValueError:
            continue   # the migrator moves it to MQ:dead
        if isinstance(stored, StoredReceipt):
            for sender, msg_id, reader in stored.identities():
                identity = (sender, msg_id.decode("utf-8"), reader)
                states[identity] = max(states.get(identity, 0), stored.state)
        elif _belongs(stored, conv):
            item = Item(stored.ts, stored.seq, stored.from_id, stored.msg_id.decode("utf-8"), stored.to_id,
                        stored.type, stored.msg, stored.packet, 0)
            items.setdefault(item.identity, item)
    return sorted(items.values(), key=lambda i: (i.ts, i.seq)), states


def merged(rows: Iterable[Tuple[Any, ...]], pending: List[Item],
           states: Dict[Tuple[int, str, int], int]) -> Iterator[Item]:
    """MySQL's rows and the pending messages in one history order, each
    message once, with the furthest state either side knows."""
    pending_ids = {item.identity for item in pending}
    seen = set()

    def from_mysql() -> Iterator[Item]:
        for ts, seq, from_id, msg_id, to_id, kind, msg, packet, state in rows:
            yield Item(ts, seq, from_id, msg_id.decode("utf-8"), to_id, kind, msg, packet, state)
    # on equal keys heapq.merge gives the first iterable's item first: the
    # row, so the pending copy of a message migrated meanwhile is dropped
    for item in heapq.merge(from_mysql(), pending, key=lambda i: (i.ts, i.seq)):
        identity = item.identity
        if identity in pending_ids:
            if identity in seen:
                continue
            seen.add(identity)
        extra = states.get(identity, 0)
        yield item._replace(state=extra) if extra > item.state else item


class JsonLines:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, item: Item) -> None:
        self.out.write(protocol.with_state(item.packet, item.state).decode("utf-8") + "\n")


class CsvRows:
    def __init__(self, out: TextIO) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.writer.writerow(CSV_COLUMNS)

    def write(self, item: Item) -> None:
        self.writer.writerow((item.ts, iso(item.ts), item.from_id, item.to_id, item.msg_id, item.type,
                              protocol.STATE_NAMES[item.state], item.msg))


def write_export(mysql_settings: Any, conv: Conversation, entries: List[str], fmt: str, out: TextIO,
                 stream: Optional[TextIO] = None) -> int:
    """Blocking (a thread): the conversation written to ``out``; how many messages."""
    pending, states = pending_items(entries, conv)
    writer = JsonLines(out) if fmt == "jsonl" else CsvRows(out)
    written = 0
    with ConversationReader(mysql_settings, conv.uid, conv.with_uid, conv.since, conv.until,
                            conv.system_ids) as reader:
        bar = progress("export", reader.count() + len(pending), "messages", stream)
        try:
            for item in merged(reader.rows(), pending, states):
                writer.write(item)
                written += 1
                bar.update(1)
            out.flush()
        finally:
            bar.close()
    return written


@defer.inlineCallbacks
def export(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    conv = yield conversation_of(app, args)
    # Redis before MySQL, as H: whatever leaves pending meanwhile has committed
    entries = yield app.messages.pending(conv.uid)
    if conv.system_ids:
        # the other party's events are in their own pending index only
        entries = entries + (yield app.messages.pending(conv.with_uid))
    written = yield threads.deferToThread(write_export, app.settings.mysql, conv, entries, args.format, out,
                                          getattr(args, "progress_stream", None))
    stream = getattr(args, "progress_stream", None) or sys.stderr
    stream.write("export: %s, %s .. %s: %d messages\n"
                 % (conv.title, iso(conv.since), "now" if conv.until >= NO_END else iso(conv.until), written))

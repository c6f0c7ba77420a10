"""``imd-admin export --order ORDER | --user UID [--with UID] | --room ROOM
[--since] [--until] [--format jsonl|csv]``: a conversation as history
(``H``) shows it, for support or an archive.

Each message with its receipt state (``sent``, ``delivered``, ``read``),
oldest first by ``(ts, accept order)``.  The messages still in Redis
(``pending:<uid>``, not yet migrated) are merged with the rows of MySQL by
the merge ``H`` uses (imd.messagelog.merge): Redis is read first, then
MySQL, duplicates dropped by ``(from, id, to)``, and a message's state is
the furthest of its receipt rows and of the receipt entries still pending.

MySQL is read by server-side cursors in a thread (imd.stores.mysql
``LogReader``: ``H``'s statements, streamed) and each message written as it
comes: memory stays the same for a million rows.  Only the user's pending entries (what the
migrator has not stored yet) are held.

``--order``: the two users of the order's record in Redis (its courier and
customer, imd.stores.orders), from its ``T`` to the end of the conversation
(its friendship's end after the close; now while open), and the ``closed``
event imd sent each of them.  The record lasts 30 days after the end.

``--room``: a room's messages (contract v3 §9) as ``H {"room"}`` pages them,
by the room's seq: those still in Redis (``roompending:<room>``) read
first, then ``room_message`` a page of :data:`ROOM_PAGE` at a time by its
primary key, merged by the merge ``H {"room"}`` uses (imd.handlers.rooms
``merge_room``: each seq once, a recalled message as its tombstone).  No
receipt state: a room's reads are its members' cursors (``imd-admin room
show``).  The room need not exist any more in Redis: its rows in MySQL are
exported.
"""

import argparse
import bisect
import csv
import json
import sys
from typing import (TYPE_CHECKING, Any, Dict, Generator, List, NamedTuple, Optional, Sequence, TextIO, Tuple, Union,
                    cast)

from twisted.internet import defer, threads

from imd import protocol
from imd.errors import AdminError
from imd.handlers.rooms import merge_room_entries, room_entries
from imd.progress import progress
from imd.messagelog.entry import StoredMessage, StoredRoomMessage
from imd.messagelog.merge import Pending, Selection, merged
from imd.stores.mysql import LogReader
from imd.timespec import iso

if TYPE_CHECKING:
    from imd.app import App

NO_END = 2 ** 63 - 1
CSV_COLUMNS = ("ts", "time", "from", "to", "id", "type", "state", "msg")
ROOM_CSV_COLUMNS = ("ts", "time", "room", "seq", "from", "id", "type", "msg")
ROOM_PAGE = 1000                # room_message rows read at a time
ROOM_PENDING_MAX = 10_000_000   # a room's entries still in Redis: all of them


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

    @property
    def selection(self) -> Selection:
        return Selection(self.uid, self.with_uid, since=self.since, until=self.until, system_ids=self.system_ids)


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


class JsonLines:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, message: StoredMessage, state: int) -> None:
        self.out.write(protocol.history_item(message.packet, state, message.seq).decode("utf-8") + "\n")


class CsvRows:
    def __init__(self, out: TextIO) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.writer.writerow(CSV_COLUMNS)

    def write(self, message: StoredMessage, state: int) -> None:
        self.writer.writerow((message.ts, iso(message.ts), message.from_id, message.to_id,
                              message.msg_id.decode("utf-8"), message.type, protocol.STATE_NAMES[state], message.msg))


def write_export(mysql_settings: Any, conv: Conversation, entries: List[str], fmt: str, out: TextIO,
                 stream: Optional[TextIO] = None) -> int:
    """Blocking (a thread): the conversation written to ``out``; how many messages."""
    selection = conv.selection
    pending = Pending(entries, selection.matches)
    writer = JsonLines(out) if fmt == "jsonl" else CsvRows(out)
    written = 0
    with LogReader(mysql_settings, selection) as reader:
        bar = progress("export", reader.count() + len(pending.messages), "messages", stream)
        try:
            for message, state in merged(reader.rows(), pending):
                writer.write(message, state)
                written += 1
                bar.update(1)
            out.flush()
        finally:
            bar.close()
    return written


@defer.inlineCallbacks
def export(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    if getattr(args, "room", None) is not None:
        yield export_room(app, args, out)
        return
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


class RoomJsonLines:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, packet: bytes, fields: Dict[str, object]) -> None:
        self.out.write(packet.decode("utf-8") + "\n")


class RoomCsvRows:
    def __init__(self, out: TextIO) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.writer.writerow(ROOM_CSV_COLUMNS)

    def write(self, packet: bytes, fields: Dict[str, object]) -> None:
        msg = fields.get("msg")
        self.writer.writerow((fields["ts"], iso(cast(int, fields["ts"])), fields["room"], fields["seq"], fields["from"],
                              fields["id"], fields["type"],
                              msg if isinstance(msg, str) else json.dumps(msg, ensure_ascii=False,
                                                                           separators=(",", ":"))))


class RoomPending:
    """A room's entries still in Redis, read once: its messages by seq (to
    hand each page only the ones it can hold) and its recalls (every page
    needs them: a recall may name a message of any page)."""

    def __init__(self, entries: Sequence[Union[str, bytes]]) -> None:
        messages, self.recalls = room_entries(entries)
        self.messages: List[StoredRoomMessage] = sorted(messages, key=lambda m: m.room_seq)
        self.seqs = [m.room_seq for m in self.messages]

    def between(self, after_seq: int, last_seq: Optional[int]) -> List[StoredRoomMessage]:
        """The messages with ``after_seq < seq <= last_seq`` (None: no upper end)."""
        start = bisect.bisect_right(self.seqs, after_seq)
        end = len(self.seqs) if last_seq is None else bisect.bisect_right(self.seqs, last_seq)
        return self.messages[start:end]


@defer.inlineCallbacks
def export_room(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, object, None]:
    if args.with_uid is not None:
        raise AdminError("--with goes with --user, not --room")
    since, until = _bounded(args, app.clock.seconds(), 0, NO_END)
    # Redis before MySQL, as H {"room"}: whatever leaves roompending meanwhile has committed
    pending = RoomPending(cast(Optional[List[str]], (yield app.rooms.pending(args.room, 0, 0, ROOM_PENDING_MAX))) or [])
    writer = RoomJsonLines(out) if args.format == "jsonl" else RoomCsvRows(out)
    bar = progress("export", None, "messages", getattr(args, "progress_stream", None))
    written = 0
    after = 0
    try:
        while True:
            rows = cast(List[Tuple[int, str]], (yield app.mysql.room_history(args.room, after, ROOM_PAGE)))
            last = rows[-1][0] if len(rows) >= ROOM_PAGE else None
            page = merge_room_entries(pending.between(after, last), pending.recalls, rows, after, ROOM_PAGE)
            if not page:
                break
            for _, packet in page:
                fields = json.loads(packet)
                if since <= cast(int, fields["ts"]) < until:
                    writer.write(packet, fields)
                    written += 1
            bar.update(len(page))
            after = page[-1][0]
        out.flush()
    finally:
        bar.close()
    stream = getattr(args, "progress_stream", None) or sys.stderr
    stream.write("export: room %s, %s .. %s: %d messages\n"
                 % (args.room, iso(since), "now" if until >= NO_END else iso(until), written))

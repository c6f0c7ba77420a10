"""``imd-admin reconcile --since TIME [--until TIME]``: is every message imd
acked in the window in MySQL, exactly once?

What counts as acked (docs/operations.md, "Reconcile"):

- the dedup records (``dedup:<uid>:<id>``, ``dedup:0:<to>:<id>``): the
  script that stores a message writes one, with the recipient's uid as its
  value, in the same step as the ``MQ`` entry, and it lives ``[redis]
  dedup_ttl``.  When it was written follows from the time it has left:
  ``now - (dedup_ttl - PTTL)``, to the millisecond -- as long as dedup_ttl
  was not changed since, and except for records a receipt wrote back for a
  message whose own had expired (they look as young as that receipt).  So
  the records reach back ``dedup_ttl`` (an hour by default) and no further;
- the entries still in ``MQ`` and ``MQ:processing``, by their own ``ts``.

Each record's message is looked up in MySQL by its sender and id (and, for
the system's, its recipient).  Found once: fine.  Not found: it is still
queued if its recipient's ``pending:<uid>`` holds it (an entry leaves that
index only after its row committed); otherwise MySQL is asked again (the
migrator may have committed it meanwhile) and only then is it **missing**.

**Duplicated** means that history (``H``), which replays each row's stored
packet, would show the message more than once: the unique key
``(from_id, msg_id, to_id)`` forbids two rows of one identity, but not

- two rows of one user's message id with different recipients (a user's
  ids are the user's alone: imd stores each one once, to one recipient), or
- a row whose packet is another message's (its id, sender or recipient are
  not the row's): found among the rows of the window by ``ts``, it makes
  that other message appear twice -- or, if that one has no row of its
  own, under an id that is not its own.

Memory stays the same whatever the window: Redis is read a page at a time
(SCAN, never KEYS; LRANGE pages), MySQL a page of records at a time, and
only the first ``--show`` ids of each kind are kept for the listing.
"""

import argparse
import json
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Dict, Generator, List, Optional, Set, TextIO, Tuple

from twisted.internet import defer

from imd.errors import AdminError
from imd.progress import progress
from imd.messagelog.entry import StoredMessage, parse_entry
from imd.stores.audit import SCAN_COUNT, DedupRecord
from imd.timespec import TimeSpec, iso

if TYPE_CHECKING:
    from imd.app import App

EXIT_DISCREPANCY = 3   # exit status when a message is missing or duplicated
QUEUE_PAGE = 1000      # entries per LRANGE
MISFILED_LIMIT = 10000  # rows whose packet is another message's, read at most
DUPLICATES_KEPT = 100000  # duplicates remembered, so one met twice counts once

Identity = Tuple[int, str, int]   # (from, id, to)


def describe(identity: Identity) -> str:
    sender, packet_id, to = identity
    return "%d -> %d id %s" % (sender, to, json.dumps(packet_id, ensure_ascii=False))


class Findings:
    """Counts, and the first ``show`` lines of each kind."""

    def __init__(self, show: int) -> None:
        self.show = show
        self.records = 0          # dedup records in the window
        self.once = 0
        self.record_queued = 0    # records whose message is still queued
        self.undated = 0          # records whose time cannot be told
        self.queued = 0           # queue entries in the window
        self.queued_where: Dict[str, int] = defaultdict(int)
        self.missing = 0
        self.duplicated = 0
        self.lines: Dict[str, List[str]] = {"queued": [], "missing": [], "duplicated": []}
        self._duplicates_seen: Set[Any] = set()

    def note(self, kind: str, line: str) -> None:
        if len(self.lines[kind]) < self.show:
            self.lines[kind].append(line)

    def add_duplicate(self, key: Any, line: str) -> None:
        # the same duplicate may be met through its record and among the
        # window's rows; memory is bounded by DUPLICATES_KEPT
        if key in self._duplicates_seen:
            return
        if len(self._duplicates_seen) < DUPLICATES_KEPT:
            self._duplicates_seen.add(key)
        self.duplicated += 1
        self.note("duplicated", line)


class Reconcile:
    def __init__(self, app: "App", since: int, until: int, show: int, started: int,
                 stream: Optional[TextIO] = None) -> None:
        """``started``: the Unix ms the window was worked out at."""
        self.app = app
        self.since, self.until = since, until
        self.started = started
        self.audit = app.audit
        self.rows = app.message_rows
        self.ttl_ms = app.settings.redis.dedup_ttl * 1000
        self.found = Findings(show)
        self.stream = stream   # progress (stderr by default)
        self.dead = 0

    def _now_ms(self) -> int:
        return int(self.app.clock.seconds() * 1000)

    @defer.inlineCallbacks
    def run(self) -> Generator[defer.Deferred, Any, Findings]:
        queued, processing, self.dead = yield self.audit.lengths()
        yield self.walk_queue(queued + processing)
        yield self.check_records()
        yield self.check_misfiled()
        return self.found

    # --- the queue --------------------------------------------------------------

    @defer.inlineCallbacks
    def walk_queue(self, total: int) -> Generator[defer.Deferred, Any, None]:
        bar = progress("reconcile: MQ", total, "entries", self.stream)
        try:
            yield self._walk(True, "MQ:processing", bar)
            yield self._walk(False, "MQ", bar)
        finally:
            bar.close()

    @defer.inlineCallbacks
    def _walk(self, processing: bool, name: str, bar: Any) -> Generator[defer.Deferred, Any, None]:
        # From the newest entry on, where seq only falls: entries pushed
        # meanwhile shift the older ones down, so one may come twice (its
        # seq is then not below the last one seen); those the migrator
        # claims meanwhile leave from the other end and are simply not met.
        start, last_seq = 0, None
        while True:
            page = yield self.audit.queue_page(processing, start, start + QUEUE_PAGE - 1)
            for entry in page:
                try:
                    stored = parse_entry(entry)
                except ValueError:
                    continue   # the migrator moves it to MQ:dead
                if stored.seq:
                    if last_seq is not None and stored.seq >= last_seq:
                        continue
                    last_seq = stored.seq
                bar.update(1)
                if isinstance(stored, StoredMessage) and self.since <= stored.ts < self.until:
                    self.found.queued += 1
                    self.found.queued_where[name] += 1
                    identity = (stored.from_id, stored.msg_id.decode("utf-8"), stored.to_id)
                    self.found.note("queued", "%s  accepted %s  (%s)" % (describe(identity), iso(stored.ts), name))
            if len(page) < QUEUE_PAGE:
                return
            start += QUEUE_PAGE

    # --- the dedup records --------------------------------------------------------

    @defer.inlineCallbacks
    def check_records(self) -> Generator[defer.Deferred, Any, None]:
        keys = yield self.audit.key_count()
        bar = progress("reconcile: dedup records", keys, "keys", self.stream)
        cursor, looked = 0, 0
        try:
            while True:
                cursor, records = yield self.audit.dedup_page(cursor)
                # SCAN looks at about COUNT keys a call: the bar is an estimate
                step = min(SCAN_COUNT, max(0, keys - looked))
                looked += step
                bar.update(step)
                window = self._in_window(records)
                if window:
                    yield self._check(window)
                if cursor == 0:
                    break
        finally:
            bar.close(complete=True)

    def _in_window(self, records: List[DedupRecord]) -> List[Tuple[DedupRecord, int]]:
        now = self._now_ms()
        found = []
        for record in records:
            if record.ms_left < 0 or record.ms_left > self.ttl_ms:
                self.found.undated += 1   # no expiry, or dedup_ttl was lowered since
                continue
            accepted = now - (self.ttl_ms - record.ms_left)
            if self.since <= accepted < self.until:
                found.append((record, accepted))
        return found

    @defer.inlineCallbacks
    def _check(self, window: List[Tuple[DedupRecord, int]]) -> Generator[defer.Deferred, Any, None]:
        self.found.records += len(window)
        absent = []
        copies = yield self._copies([record for record, _ in window])
        for record, accepted in window:
            rows = copies.get((record.sender, record.packet_id), [])
            if record.sender == 0:   # the system reuses an id, one message per recipient
                rows = [row for row in rows if row[1] == record.to]
            own = [row for row in rows if row[1] == record.to]
            identity = (record.sender, record.packet_id, record.to)
            if not own:
                absent.append((record, accepted))
            elif len(rows) == 1:
                self.found.once += 1
            else:
                where = ", ".join("seq %d to %d" % row for row in sorted(rows))
                self.found.add_duplicate(identity, "%s: %d rows (%s)" % (describe(identity), len(rows), where))
        if absent:
            yield self._absent(absent)

    @defer.inlineCallbacks
    def _copies(self, records: List[DedupRecord]) -> Generator[defer.Deferred, Any, Dict[Tuple[int, str], List]]:
        found = yield self.rows.copies({(r.sender, r.packet_id) for r in records})
        by_message: Dict[Tuple[int, str], List[Tuple[int, int]]] = defaultdict(list)
        for seq, sender, msg_id, to in found:
            by_message[(sender, msg_id.decode("utf-8", "replace"))].append((seq, to))
        return by_message

    @defer.inlineCallbacks
    def _absent(self, absent: List[Tuple[DedupRecord, int]]) -> Generator[defer.Deferred, Any, None]:
        """Records whose message MySQL did not have: still queued, or missing."""
        pending: Set[Identity] = set()
        for to in sorted({record.to for record, _ in absent}):
            for entry in (yield self.app.messages.pending(to)):
                try:
                    stored = parse_entry(entry)
                except ValueError:
                    continue
                if isinstance(stored, StoredMessage) and stored.to_id == to:
                    pending.add((stored.from_id, stored.msg_id.decode("utf-8"), stored.to_id))
        gone = []
        for record, accepted in absent:
            if (record.sender, record.packet_id, record.to) in pending:
                self.found.record_queued += 1
            else:
                gone.append((record, accepted))
        if not gone:
            return
        # migrated since the first look? (it left pending only after its commit)
        copies = yield self._copies([record for record, _ in gone])
        for record, accepted in gone:
            identity = (record.sender, record.packet_id, record.to)
            rows = copies.get((record.sender, record.packet_id), [])
            if any(row[1] == record.to for row in rows):
                self.found.once += 1   # a duplicate among them shows in the next run
                continue
            self.found.missing += 1
            line = "%s  accepted %s  (state %s)" % (describe(identity), iso(accepted), record.state)
            if rows:
                line += "; its id is stored to %s" % ", ".join(str(row[1]) for row in rows)
            self.found.note("missing", line)

    # --- rows whose packet is another message's ------------------------------------

    @defer.inlineCallbacks
    def check_misfiled(self) -> Generator[defer.Deferred, Any, None]:
        rows = yield self.rows.misfiled(self.since, self.until, MISFILED_LIMIT)
        for seq, sender, msg_id, to, packet in rows:
            row = (sender, msg_id.decode("utf-8", "replace"), to)
            named = _named_by(packet)
            if named is None:
                self.found.add_duplicate(("row", seq), "row seq %d (%s): its packet is not a message" %
                                         (seq, describe(row)))
                continue
            twins = yield self.rows.copies([(named[0], named[1])])
            twins = [t for t in twins if t[0] != seq and (named[0] != 0 or t[3] == named[2])]
            if twins:
                line = "%s: stored as itself (seq %s) and again in row seq %d under %s" % (
                    describe(named), ", ".join(str(t[0]) for t in twins), seq, describe(row))
            else:
                line = "%s: stored only under another id, in row seq %d (%s)" % (describe(named), seq, describe(row))
            self.found.add_duplicate(("row", seq), line)
        if len(rows) >= MISFILED_LIMIT:
            self.found.note("duplicated", "(the first %d such rows only)" % MISFILED_LIMIT)


def _named_by(packet: str) -> Optional[Identity]:
    """The ``(from, id, to)`` a stored packet carries, or None."""
    try:
        obj = json.loads(packet)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    packet_id, sender, to = obj.get("id"), obj.get("from"), obj.get("to")
    if type(packet_id) is int:
        packet_id = str(packet_id)
    if not isinstance(packet_id, str) or type(sender) is not int or type(to) is not int:
        return None
    return sender, packet_id, to


def window_of(args: argparse.Namespace, now: float) -> Tuple[int, int]:
    since = args.since.at(now)
    until = args.until.at(now) if args.until is not None else int(now * 1000)
    if since >= until:
        raise AdminError("--since (%s) must be before --until (%s)" % (iso(since), iso(until)))
    return since, until


def _count(n: int, one: str, many: str) -> str:
    return "%s %s" % ("{:,}".format(n), one if n == 1 else many)


def report(found: Findings, reconcile: Reconcile, out: TextIO) -> int:
    """Writes the findings; returns the exit status."""
    ttl = reconcile.ttl_ms // 1000
    out.write("reconcile: %s .. %s (UTC)\n" % (iso(reconcile.since), iso(reconcile.until)))
    reach = reconcile.started - reconcile.ttl_ms
    if reconcile.since < reach:
        out.write("note: dedup records reach back [redis] dedup_ttl = %ds, to %s: messages acked before that\n"
                  "      are audited only while still queued\n" % (ttl, iso(reach)))
    out.write("dedup records in the window:  %s\n" % "{:,}".format(found.records))
    out.write("  in MySQL once:              %s\n" % "{:,}".format(found.once))
    out.write("  still queued:               %s\n" % "{:,}".format(found.record_queued))
    out.write("  missing:                    %s\n" % "{:,}".format(found.missing))
    out.write("queued entries in the window: %s" % "{:,}".format(found.queued))
    if found.queued:
        out.write(" (%s)" % ", ".join("%s %d" % kv for kv in sorted(found.queued_where.items())))
    out.write("\nduplicated:                   %s\n" % "{:,}".format(found.duplicated))
    if found.undated:
        out.write("(%s without a usable expiry left out: no TTL, or more than dedup_ttl left)\n"
                  % _count(found.undated, "record", "records"))
    for kind, title in (("missing", "missing (acked, not in MySQL, not queued)"),
                        ("duplicated", "duplicated (history would show them more than once)"),
                        ("queued", "still queued (the migrator has not stored them yet)")):
        lines = found.lines[kind]
        if lines:
            total = {"missing": found.missing, "duplicated": found.duplicated, "queued": found.queued}[kind]
            out.write("%s:\n" % title)
            for line in lines:
                out.write("  %s\n" % line)
            if total > len(lines):
                out.write("  ... and %s more (--show N lists more)\n" % "{:,}".format(total - len(lines)))
    if found.missing and reconcile.dead:
        out.write("note: MQ:dead holds %s the migrator could not store: a missing message may be among them"
                  " (imd-admin mq dead list)\n" % _count(reconcile.dead, "entry", "entries"))
    if found.missing or found.duplicated:
        out.write("result: NOT OK: %s missing, %s duplicated\n" % ("{:,}".format(found.missing),
                                                                 "{:,}".format(found.duplicated)))
        return EXIT_DISCREPANCY
    out.write("result: OK: every acked message of the window is in MySQL once, or still queued\n")
    return 0


@defer.inlineCallbacks
def reconcile(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, int]:
    now = app.clock.seconds()
    since, until = window_of(args, now)
    run = Reconcile(app, since, until, args.show, int(now * 1000), getattr(args, "progress_stream", None))
    found = yield run.run()
    return report(found, run, out)


def time_argument(text: str) -> TimeSpec:
    from imd.timespec import parse_time
    try:
        return parse_time(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))

"""The migrator (role ``migrate``): Redis ``MQ`` -> MySQL ``message`` (and
``receipt``, for the ``R`` entries).

One step: move a batch from ``MQ`` into ``MQ:processing`` (atomic), insert it
with multi-row ``INSERT IGNORE`` statements, and only after they are
committed delete it from ``MQ:processing``.  A crash anywhere leaves the
batch in ``MQ:processing`` and the next step (of this or any later migrator)
inserts it again; ``UNIQUE (from_id, msg_id, to_id)`` turns the replay into
a no-op.  Receipts are rows of their own, keyed by the message they are
about and the state (``PRIMARY KEY (from_id, msg_id, to_id, state)``), so a
replayed receipt is a no-op too, and they go in with the same multi-row
``INSERT IGNORE`` in the same transaction as the messages of their part:
nothing about them depends on the order rows commit in.

With ``[migrate] inserts_at_once`` 2 or more, a large batch goes in as
that many parts in as many transactions on pool connections at once: MySQL
inserts them on several cores, a little faster for more CPU per row than
one insert, the default (docs/performance.md, "Migrator").  The batch is
deleted only when every part has committed; if one fails, the whole batch
is replayed and the parts that did commit are skipped by the unique key.

While full batches keep coming the stages overlap (``_step``): the next
batch is claimed and read from JSON while MySQL inserts the current one,
and deletes do not hold up the next insert; inserts still go one batch after
the other and deletes in the order claimed (docs/storage.md, "The
migrator").  ``IMD_MIGRATOR_SERIAL=1`` turns that off.

Several migrators may run (one per node, say): exactly one leads, the holder
of ``MQ:lock`` (a Redis key with an expiry, extended by its holder every
third of ``[migrate] lock_ttl``); the others stand by and take over within
``lock_ttl`` once a leader dies.  Every queue operation checks the lock
token, so a leader that lost the lock cannot touch the queue any more.

Run alone: ``twistd -n imd --config etc/imd.ini --roles migrate``
(``python -m imd.migrator --config FILE`` is the same command).
"""

import os
import socket
import sys
from typing import TYPE_CHECKING, Any, Dict, Generator, List, Optional, Sequence, Tuple, cast

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from imd.errors import StoreUnavailable
from imd.messagelog.entry import (Identity, RoomMessageRow, RoomReadRow, RoomRecallRow, StoredMessage,
                                  StoredReceipt, StoredRoomMessage, StoredRoomRead, StoredRoomRecall, parse_entry,
                                  recalled_identity)

if TYPE_CHECKING:
    from imd.config import MigrateSettings
    from imd.stores.mysql import MysqlStore
    from imd.stores.queue import QueueStore

_log = Logger()

MAX_BACKOFF = 5.0        # seconds between tries while a store is away
SPLIT_FROM = 200         # rows: from here a batch may go in as [migrate] inserts_at_once parts at once
LAG_INTERVAL = 1.0       # seconds between lag samples
LAG_LOG_INTERVAL = 30.0  # seconds between lag log lines
# Claim and prepare the next batch while the current one is inserted, ack
# without waiting (IMD_MIGRATOR_SERIAL=1: one stage after the other, as
# before; for comparing).
PIPELINE = os.environ.get("IMD_MIGRATOR_SERIAL", "") != "1"


class _Batch:
    """A claimed batch on its way: its insert parts, its unreadable entries,
    each party's highest ``seq`` in it (for the ack)."""

    __slots__ = ("replayed", "size", "parts", "dead", "migrated", "messages", "inserted", "room_messages",
                 "room_reads", "room_recalls", "room_migrated")

    def __init__(self, replayed: bool, size: int) -> None:
        self.replayed = replayed
        self.size = size
        self.parts: List[Tuple[List[Any], List[Any], List[Identity]]] = []
        self.dead: List[str] = []
        self.migrated: Dict[int, int] = {}   # uid -> highest seq of theirs in this batch
        self.messages = 0
        self.inserted = 0
        # rooms (contract v3 §9): room_message and room_read rows, and each
        # room's highest pos in this batch (for its roompending:<room>)
        self.room_messages: List[RoomMessageRow] = []
        self.room_reads: List[RoomReadRow] = []
        # recalls in rooms (contract v3 §11): room_recall rows, each emptying
        # its message's room_message row in the same transaction
        self.room_recalls: List[RoomRecallRow] = []
        self.room_migrated: Dict[str, int] = {}


def new_token() -> str:
    return "%s:%d:%s" % (socket.gethostname(), os.getpid(), os.urandom(6).hex())


class Migrator(Service):
    """Drains the queue while it holds the lock.

    For ``/metrics``: ``queue_length`` (entries in ``MQ`` + in flight),
    ``oldest_age`` (seconds since the oldest unmigrated entry was stored, 0
    when none), ``rows_migrated``, ``rows_skipped`` (already present),
    ``receipts_migrated`` (receipt rows inserted), ``dead_entries``,
    ``is_leader``, ``mysql_up``.
    """

    def __init__(self, queue: "QueueStore", mysql: "MysqlStore", settings: "MigrateSettings", clock: Any,
                 token: Optional[str] = None) -> None:
        self.queue = queue
        self.mysql = mysql
        self.batch = settings.batch
        self.interval = settings.interval
        self.lock_ttl = settings.lock_ttl
        self.inserts_at_once = settings.inserts_at_once
        self._clock = clock
        self.token = token or new_token()
        self.queue_length = 0
        self.oldest_age = 0.0
        self.rows_migrated = 0
        self.rows_skipped = 0
        self.receipts_migrated = 0
        self.dead_entries = 0
        self.is_leader = False
        self.mysql_up = True
        self._running = False
        self._loop: Optional[defer.Deferred] = None
        self._sleeping: Optional[defer.Deferred] = None
        self._drain_waiters: List[defer.Deferred] = []
        self._timers: List[task.LoopingCall] = []
        self._last_lag_log: Optional[float] = None

    # --- service -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._running = True
        for interval, call in ((self.lock_ttl / 3.0, self._renew_lock), (LAG_INTERVAL, self._sample_lag)):
            timer = task.LoopingCall(call)
            timer.clock = self._clock
            timer.start(interval, now=False)
            self._timers.append(timer)
        self._loop = self._run()

    @defer.inlineCallbacks
    def stopService(self) -> Generator[defer.Deferred, Any, None]:
        super().stopService()
        self._running = False
        for timer in self._timers:
            if timer.running:
                timer.stop()
        self._timers = []
        if self._sleeping is not None:
            self._sleeping.cancel()
        if self._loop is not None:
            yield self._loop
        if self.is_leader:
            self.is_leader = False
            try:
                yield self.queue.release_lock(self.token)
            except StoreUnavailable:
                pass  # it expires by itself

    def wait_drained(self) -> defer.Deferred:
        """Fires the next time a step finds nothing to migrate."""
        d: defer.Deferred = defer.Deferred()
        self._drain_waiters.append(d)
        return d

    # --- the loop ------------------------------------------------------------

    @defer.inlineCallbacks
    def _run(self) -> Generator[defer.Deferred, Any, None]:
        failures = 0
        while self._running:
            try:
                delay = yield self._step()
                if failures:
                    _log.info("migrator: stores are back after {n} failed tries", n=failures)
                failures = 0
                self.mysql_up = True
            except StoreUnavailable as e:
                failures += 1
                delay = min(self.interval * 2 ** failures, MAX_BACKOFF)
                if failures == 1 or failures % 20 == 0:
                    _log.warn("migrator: {why}; retrying in {delay:.1f}s (try {n})",
                              why=e, delay=delay, n=failures)
            except Exception:
                _log.failure("migrator: unexpected error")
                delay = MAX_BACKOFF
            if delay and self._running:
                yield self._sleep(delay)

    def _sleep(self, seconds: float) -> defer.Deferred:
        self._sleeping = task.deferLater(self._clock, seconds, lambda: None)
        self._sleeping.addErrback(lambda f: f.trap(defer.CancelledError))
        self._sleeping.addBoth(self._woke)
        return self._sleeping

    def _woke(self, result: Any) -> Any:
        self._sleeping = None
        return result

    @defer.inlineCallbacks
    def _step(self) -> Generator[defer.Deferred, Any, float]:
        """Batches, one after the other, while full ones keep coming.
        Returns the seconds to wait before the next step.

        The stages overlap (from a step's second batch on): while a batch's
        INSERT runs in the pool's threads, the next batch is claimed and its
        rows prepared, and the batch before is acked.  What keeps exactly
        once and ``pending:`` right: inserts go one batch after the other (a
        batch's insert starts once the previous batch has committed), and
        the acks are chained
        (each is sent once the one before it has succeeded), so a batch
        leaves ``MQ:processing`` only after it and every batch claimed before
        it have committed.  When anything fails, nothing more starts; the
        step waits for what is under way and fails, and the next step
        replays whatever is still in ``MQ:processing``."""
        if not self.queue.connected:
            yield self.queue.wait_connected()
        if not self.is_leader:
            if not (yield self.queue.hold_lock(self.token, self.lock_ttl)):
                return self.lock_ttl / 3.0
            self._became_leader()
        batch = yield self._claim(more=False)
        acks: defer.Deferred = defer.succeed(True)
        following: Optional[defer.Deferred] = None
        delay = 0.0
        trouble: List[bool] = []    # an ack found the lock lost, or failed

        def watch(result: Any) -> Any:
            if result is not True:
                trouble.append(True)
            return result
        try:
            first = True
            while batch is not None and batch.size:
                inserting = self._insert(batch)
                more = batch.replayed or batch.size >= self.batch
                go_on = more and self._running and PIPELINE
                # Not during a step's first insert: until MySQL has taken a
                # batch, MQ:processing holds one (a step that fails again
                # and again, MySQL away, replays the same batch).
                following = self._claim(more=True) if go_on and not first else None
                yield inserting
                acks.addCallback(self._ack, batch).addBoth(watch)
                if not go_on:
                    delay = 0.0 if more else self.interval
                    break
                if trouble:
                    break   # (a failure is raised below)
                if following is None:
                    following = self._claim(more=True)
                first = False
                batch = yield following
                following = None
        except Exception as e:
            # Nothing more starts; wait for what is under way (a claimed
            # batch stays in MQ:processing for the next step to replay).
            yield defer.DeferredList([d for d in (following, acks) if d is not None], consumeErrors=True)
            raise e
        if following is not None:
            yield defer.DeferredList([following], consumeErrors=True)
        if not (yield acks) or batch is None:
            self._lost_lock()
            return self.lock_ttl / 3.0 if batch is None else 0.0
        if not batch.size:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)
            return self.interval
        return delay

    def _claim(self, more: bool) -> defer.Deferred:
        """The next batch, its rows prepared (None: not the leader)."""
        return self.queue.claim(self.token, self.batch, more).addCallback(self._prepare)

    def _prepare(self, claimed: Optional[Tuple[bool, List[str]]]) -> Optional["_Batch"]:
        if claimed is None:
            return None
        replayed, entries = claimed
        batch = _Batch(replayed, len(entries))
        parts = self.inserts_at_once if len(entries) >= SPLIT_FROM else 1
        size = -(-len(entries) // parts) if entries else 1
        for start in range(0, len(entries), size):
            recalls: List[Identity] = []
            rows, receipts = self._rows(entries[start:start + size], batch.dead, batch.migrated, recalls, batch)
            batch.messages += len(rows)
            if rows or receipts:
                batch.parts.append((rows, receipts, recalls))
        if len(batch.parts) > 1 and any(part[2] for part in batch.parts):
            # A D recalls a message stored before it, maybe in an earlier
            # part: the parts commit at once, so such a batch goes in one
            # transaction, its rows before its recalls (contract v3 §11).
            batch.parts = [([r for p in batch.parts for r in p[0]], [r for p in batch.parts for r in p[1]],
                            [r for p in batch.parts for r in p[2]])]
        return batch

    @defer.inlineCallbacks
    def _insert(self, batch: "_Batch") -> Generator[defer.Deferred, Any, None]:
        """Every part of ``batch`` committed (at once, on pool connections
        of their own), or the first failure once all have settled."""
        insert = self.mysql.insert_entries
        inserts = [insert(rows, receipts, recalls) if recalls else insert(rows, receipts)
                   for rows, receipts, recalls in batch.parts]
        if batch.room_messages or batch.room_reads or batch.room_recalls:
            # (a transaction of its own: the batch is acked only once every
            # part has committed, and each insert is idempotent; a room's
            # recalls after its messages, as a D comes after what it recalls)
            inserts.append(self.mysql.insert_room_entries(batch.room_messages, batch.room_reads, batch.room_recalls)
                           .addCallback(lambda n: (n, 0)))
        results = yield defer.DeferredList(inserts, consumeErrors=True)
        inserted, receipts_inserted, failure = 0, 0, None
        for ok, result in results:
            if ok:
                inserted += result[0]
                receipts_inserted += result[1]
            elif failure is None:
                failure = result
        # committed, whatever became of the other part
        batch.inserted = inserted
        self.rows_migrated += inserted
        self.receipts_migrated += receipts_inserted
        if failure is not None:
            if failure.check(StoreUnavailable):
                self.mysql_up = False
            failure.raiseException()
        self.mysql_up = True

    def _ack(self, previous_held: bool, batch: "_Batch") -> Any:
        """After the ack before it: this batch's (committed) ack."""
        if not previous_held:
            return False
        d = self.queue.ack(self.token, batch.size, batch.dead, batch.migrated, batch.room_migrated)
        return d.addCallback(self._acked, batch)

    def _acked(self, held: bool, batch: "_Batch") -> bool:
        if held:
            if batch.replayed:
                _log.info("migrator: replayed a batch left in flight ({n} entries, {new} new)",
                          n=batch.size, new=batch.inserted)
            self.rows_skipped += batch.messages - batch.inserted
            self.dead_entries += len(batch.dead)
        return held

    @staticmethod
    def _rows(entries: Sequence[str], dead: List[str], migrated: Dict[int, int],
              recalls: Optional[List[Identity]] = None,
              rooms: Optional["_Batch"] = None) -> Tuple[List[Any], List[Any]]:
        """The ``message`` and ``receipt`` rows of ``entries``; unreadable
        ones go to ``dead``; ``migrated`` gets each party's highest ``seq``;
        ``recalls`` the messages the ``D`` entries recall (a D is a row
        too: the log keeps it); ``rooms`` (a batch) the rooms' rows and
        each room's highest pos (without it a room's entry is dead)."""
        rows: List[Any] = []
        receipts: List[Any] = []
        for entry in entries:
            try:
                stored = parse_entry(entry)
            except ValueError as e:
                _log.error("migrator: cannot store MQ entry ({why}); moved to MQ:dead: {entry!r}",
                           why=e, entry=entry[:200])
                dead.append(entry)
                continue
            if type(stored) is StoredMessage:
                # (most entries: a message between two users, or the system's)
                rows.append(stored.row())
                if recalls is not None and stored.type == "D":
                    recalls.append(cast(Identity, recalled_identity(stored)))
                seq = stored.seq
                if seq:
                    for uid in (stored.from_id, stored.to_id):
                        if seq > migrated.get(uid, 0):
                            migrated[uid] = seq
                continue
            if isinstance(stored, (StoredRoomMessage, StoredRoomRead, StoredRoomRecall)):
                if rooms is None:
                    dead.append(entry)
                elif isinstance(stored, StoredRoomRead):
                    rooms.room_reads.append(stored.row())
                elif isinstance(stored, StoredRoomRecall):
                    rooms.room_recalls.append(stored.row())
                    if stored.seq > rooms.room_migrated.get(stored.room, 0):
                        rooms.room_migrated[stored.room] = stored.seq
                else:
                    rooms.room_messages.append(stored.row())
                    rooms.messages += 1
                    if stored.seq > rooms.room_migrated.get(stored.room, 0):
                        rooms.room_migrated[stored.room] = stored.seq
                continue
            if isinstance(stored, StoredReceipt):
                receipts.extend(stored.rows())
            else:
                rows.append(stored.row())
                if recalls is not None and stored.type == "D":
                    recalls.append(cast(Identity, recalled_identity(stored)))
            seq = stored.seq
            if seq:
                for uid in stored.parties:
                    if seq > migrated.get(uid, 0):
                        migrated[uid] = seq
        return rows, receipts

    def _became_leader(self) -> None:
        self.is_leader = True
        _log.info("migrator: leading (lock token {token})", token=self.token)

    def _lost_lock(self) -> None:
        if self.is_leader:
            _log.warn("migrator: lost the lock; standing by")
        self.is_leader = False

    # --- timers --------------------------------------------------------------

    def _renew_lock(self) -> Optional[defer.Deferred]:
        if not self.is_leader:
            return None
        # extend only: a lapsed lock is lost, whoever holds it now
        d = self.queue.extend_lock(self.token, self.lock_ttl)

        def renewed(held: bool) -> None:
            if not held:
                self._lost_lock()
        d.addCallbacks(renewed, lambda f: f.trap(StoreUnavailable))
        return d

    def _sample_lag(self) -> defer.Deferred:
        d = self.queue.lag()
        d.addCallbacks(self._lag, lambda f: f.trap(StoreUnavailable))
        return d

    def _lag(self, sample: Tuple[int, int, Optional[str]]) -> None:
        queued, in_flight, oldest = sample
        self.queue_length = queued + in_flight
        self.oldest_age = 0.0
        if oldest:
            try:
                age = self._clock.seconds() - parse_entry(oldest).ts / 1000.0
                self.oldest_age = max(0.0, age)
            except ValueError:
                pass
        now = self._clock.seconds()
        if self._last_lag_log is None or now - self._last_lag_log >= LAG_LOG_INTERVAL:
            self._last_lag_log = now
            _log.info("migrator lag: {queue_length} queued, oldest {oldest_age:.1f}s;"
                      " {rows} rows migrated; {role}",
                      queue_length=self.queue_length, oldest_age=self.oldest_age,
                      rows=self.rows_migrated, role="leading" if self.is_leader else "standing by")


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m imd.migrator [--config FILE]``: the migrate role alone,
    exactly as ``twistd -n imd --roles migrate`` runs it (that command is run)."""
    args = list(sys.argv[1:] if argv is None else argv)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    os.execv(twistd, [twistd, "--nodaemon", "--pidfile=", "imd"] + args + ["--roles", "migrate"])


if __name__ == "__main__":
    main()

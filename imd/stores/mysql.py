"""MySQL: the schema migrations and every SQL statement imd runs.

Access goes through one ``twisted.enterprise.adbapi`` pool of PyMySQL
connections (``utf8mb4``, autocommit off, one transaction per interaction).
A connection is pinged when a thread takes it, so a connection that MySQL's
``wait_timeout`` or a server restart killed is replaced before use; an
interaction that still loses its connection is run once more (every write
here is idempotent).  Whatever says "the server is not there" becomes
:class:`imd.errors.StoreUnavailable`.
"""

import json
import heapq
import os
import re
import socket
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, Generator, Iterable, Iterator, List, NamedTuple, Optional,
                    Sequence, Tuple, Union)

import pymysql
import pymysql.cursors
from pymysql.constants import SERVER_STATUS
from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from imd.errors import Refused, StoreUnavailable
from imd.messagelog.entry import Identity, RoomMessageRow, RoomReadRow, RoomRecallRow, tombstone
from imd.messagelog.merge import LogRow, Selection
from imd.resources import data_dir

if TYPE_CHECKING:
    from imd.config import MysqlSettings, OrdersSettings

_log = Logger()

SQL_DIR = data_dir("sql")
CONNECT_TIMEOUT = 5
# A query that takes longer than this is treated as a lost server (a stopped,
# not crashed, MySQL would otherwise hold a pool thread forever).
QUERY_TIMEOUT = 30
SCHEMA_LOCK_TIMEOUT = 30

# PyMySQL client error codes meaning the link itself is gone.
_LINK_LOST = frozenset((2006, 2013, 2014, 2045, 2055))
_NO_SUCH_TABLE = 1146


def connect_kwargs(settings: "MysqlSettings", database: bool = True) -> Dict[str, Any]:
    kwargs = dict(host=settings.host, port=settings.port, user=settings.user,
                  password=settings.password, charset="utf8mb4", autocommit=False,
                  connect_timeout=CONNECT_TIMEOUT, read_timeout=QUERY_TIMEOUT,
                  write_timeout=QUERY_TIMEOUT)
    if database:
        kwargs["database"] = settings.database
    return kwargs


# --- schema: numbered SQL files applied in order ------------------------------

_MIGRATION_NAME = re.compile(r"^(\d{3})_([A-Za-z0-9_]+)\.sql$")


def migrations(directory: str = SQL_DIR) -> List[Tuple[int, str, str]]:
    """``[(version, name, path)]`` of ``NNN_name.sql`` files, in version order."""
    found = []
    for entry in sorted(os.listdir(directory)):
        match = _MIGRATION_NAME.match(entry)
        if match:
            found.append((int(match.group(1)), match.group(2), os.path.join(directory, entry)))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError("two migrations share a version number in %s" % directory)
    return found


def split_statements(text: str) -> List[str]:
    """The statements of a schema file: ``--`` comments dropped, split on a
    ``;`` that ends a line."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    statements = re.split(r";[ \t]*(?:\n|$)", "\n".join(lines))
    return [s.strip() for s in statements if s.strip()]


def apply_schema(settings: "MysqlSettings", upto: Optional[int] = None,
                 directory: str = SQL_DIR) -> Tuple[int, int]:
    """Create the database and bring it to the newest version (or ``upto``).

    Blocking (run it in a thread).  Returns ``(version_before, version_after)``;
    running it again changes nothing.  Concurrent runs are serialised by a
    MySQL named lock.  Each file must be safe to re-run (``IF NOT EXISTS``):
    MySQL commits DDL at once, so a run cut short half-way through a file
    simply does that file again next time.
    """
    try:
        conn = pymysql.connect(**connect_kwargs(settings, database=False))
    except pymysql.err.MySQLError as e:
        raise StoreUnavailable("mysql at %s:%d: %s" % (settings.host, settings.port, e))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, %s)", ("imd_schema_" + settings.database, SCHEMA_LOCK_TIMEOUT))
            if cur.fetchone()[0] != 1:
                raise StoreUnavailable("another 'schema apply' holds the schema lock")
            cur.execute("CREATE DATABASE IF NOT EXISTS `%s` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                        % settings.database)
            cur.execute("USE `%s`" % settings.database)
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                        " version INT NOT NULL PRIMARY KEY,"
                        " name VARCHAR(255) NOT NULL,"
                        " applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP"
                        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            before = current = cur.fetchone()[0]
            for version, name, path in migrations(directory):
                if version <= current or (upto is not None and version > upto):
                    continue
                with open(path, encoding="utf-8") as f:
                    for statement in split_statements(f.read()):
                        _execute_schema_statement(cur, statement)
                cur.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name))
                conn.commit()
                current = version
                _log.info("schema: applied {version:03d}_{name}", version=version, name=name)
            cur.execute("SELECT RELEASE_LOCK(%s)", ("imd_schema_" + settings.database,))
        conn.commit()
        return before, current
    except pymysql.err.OperationalError as e:
        raise StoreUnavailable("mysql: %s" % (e,))
    finally:
        conn.close()


# A change already made: a column or key that exists, a key already dropped.
_ALREADY_DONE = frozenset((1060, 1061, 1091))


def _execute_schema_statement(cursor: pymysql.cursors.Cursor, statement: str) -> None:
    """Run one schema statement; one whose change is already there (a file
    cut short part-way and run again) is skipped."""
    try:
        cursor.execute(statement)
    except pymysql.err.OperationalError as e:
        if not e.args or e.args[0] not in _ALREADY_DONE:
            raise
        _log.info("schema: already done: {statement}", statement=statement.splitlines()[0][:100])


# --- the pool -----------------------------------------------------------------

class _PingingPool(adbapi.ConnectionPool):
    """Checks a thread's connection before handing it out (``ping`` on
    checkout), and on close cuts off the queries MySQL is not answering.

    ``close()`` joins every pool thread, so one query that MySQL never
    answers (a wedged server, a lock that is never released) held a stopping
    imd until ``read_timeout``, past ``[imd] shutdown_grace``.  Each
    connection is made on a socket of the pool's own (PyMySQL's
    ``defer_connect`` and ``connect(sock)``), and close ends their reading
    side first: a blocked read returns at once, an idle connection still
    says goodbye.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._address = (kwargs["host"], kwargs["port"])
        self._sockets: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()
        self._closing = False
        super().__init__(*args, defer_connect=True, cp_openfun=self._open, **kwargs)

    def _open(self, conn: pymysql.connections.Connection) -> None:
        if self._closing:
            raise pymysql.err.OperationalError(2013, "the mysql pool is closing")
        try:
            sock = socket.create_connection(self._address, CONNECT_TIMEOUT)
        except OSError as e:
            # what PyMySQL raises when it cannot connect itself
            raise pymysql.err.OperationalError(2003, "Can't connect to MySQL server on %r (%s)"
                                               % (self._address[0], e))
        self._sockets.add(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            conn.connect(sock)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        self._closing = True
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass   # already closed
        super().close()

    @property
    def closing(self) -> bool:
        return self._closing

    def connect(self) -> pymysql.connections.Connection:
        conn = super().connect()
        try:
            conn.ping(reconnect=False)
        except Exception:
            self.disconnect(conn)
            conn = super().connect()
        return conn


def _is_link_lost(failure: Failure) -> bool:
    if failure.check(adbapi.ConnectionLost, pymysql.err.InterfaceError):
        return True
    error = failure.value
    if isinstance(error, pymysql.err.OperationalError):
        return bool(error.args) and error.args[0] in _LINK_LOST
    return False


def _as_unavailable(failure: Failure) -> Failure:
    if failure.check(adbapi.ConnectionLost, pymysql.err.OperationalError, pymysql.err.InterfaceError):
        raise StoreUnavailable("mysql: %s" % (failure.getErrorMessage(),))
    if isinstance(failure.value, pymysql.err.ProgrammingError) and failure.value.args[0] == _NO_SUCH_TABLE:
        raise StoreUnavailable("mysql: %s (run 'imd-admin schema apply')" % (failure.getErrorMessage(),))
    return failure


class MysqlStore(Service):
    """The adbapi pool (started and closed with the service) and the queries."""

    def __init__(self, settings: "MysqlSettings") -> None:
        self.settings = settings
        self._pool: Optional[_PingingPool] = None

    def startService(self) -> None:
        super().startService()
        s = self.settings
        self._pool = _PingingPool("pymysql", cp_min=s.pool_min, cp_max=s.pool_max,
                                  cp_reconnect=True, cp_noisy=False, **connect_kwargs(s))

    def stopService(self) -> None:
        super().stopService()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()

    @defer.inlineCallbacks
    def run_interaction(self, interaction: Callable[..., Any], *args: Any) -> Generator[defer.Deferred, Any, Any]:
        """``interaction(cursor, *args)`` in one transaction; retried once if
        the connection was lost, so it must be idempotent."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("mysql pool is not running")
        try:
            result = yield pool.runInteraction(interaction, *args)
        except Exception:
            failure = Failure()
            if not _is_link_lost(failure):
                _as_unavailable(failure)
                raise
            if pool.closing:
                raise StoreUnavailable("mysql: cut off by the stop (%s)" % (failure.getErrorMessage(),))
            _log.info("mysql connection lost ({why}); retrying once", why=failure.getErrorMessage())
            try:
                result = yield pool.runInteraction(interaction, *args)
            except Exception:
                _as_unavailable(Failure())
                raise
        return result

    # --- message (contract §5) -----------------------------------------------

    def insert_entries(self, rows: Sequence[Tuple[Any, ...]], receipts: Sequence[Tuple[Any, ...]],
                       recalls: Sequence[Identity] = ()) -> defer.Deferred:
        """Insert message rows and receipt rows (``StoredReceipt.rows``) in
        one transaction, each kind with multi-row ``INSERT IGNORE``, then
        set each message of ``recalls`` (``(from, id, to)`` named by the
        batch's ``D`` entries) recalled: its text gone, in ``msg`` and
        ``packet`` (a no-op for one already recalled, so a replay is one).
        Fires with ``(messages inserted, receipts inserted)``."""
        return self.run_interaction(_insert_entries_txn, rows, receipts, recalls)

    def sent_messages(self, uid: int, after: Tuple[int, int], limit: int) -> defer.Deferred:
        """Up to ``limit`` of the ``t`` and ``i`` messages ``uid`` sent that
        are not recalled, after ``after`` (``(ts, accept_seq)``), in that
        order (the message_by_sender index): ``[(ts, accept_seq, msg_id,
        to_id)]``, for an erasure."""
        return self.run_interaction(_sent_messages_txn, uid, after, limit)

    def message_for_recall(self, sender: int, msg_id: str, to: int) -> defer.Deferred:
        """``sender``'s message ``msg_id`` to ``to`` as MySQL has it:
        ``(ts, recalled)``, or None (no such message; ``D`` rows are not
        messages)."""
        return self.run_interaction(_message_for_recall_txn, sender, msg_id, to)

    def message_states(self, sender: int, reader: int, msg_ids: Iterable[str]) -> defer.Deferred:
        """Which of ``msg_ids`` (str) ``sender`` sent to ``reader``, with the
        state receipts gave each in MySQL (0 sent, 1 delivered, 2 read):
        ``{msg_id: state}``, for receipts whose dedup record is gone."""
        return self.run_interaction(_message_states_txn, sender, reader, list(msg_ids))

    def history(self, uid: int, with_uid: Optional[int], position: Tuple[int, Optional[int]],
                limit: int) -> defer.Deferred:
        """Up to ``limit`` of ``uid``'s messages after ``position`` (``with_uid``
        keeps one conversation), as :class:`LogReader` reads a selection,
        through the pool: a list of rows in (ts, accept_seq) order.

        ``position`` is ``(ts, None)`` for "ts strictly after" or a full
        ``(ts, seq)`` key.  A row's ``msg`` is not read (None: ``H``
        replays the packet).
        """
        selection = Selection(uid, with_uid, after=position)
        return self.run_interaction(_history_txn, selection, limit)

    def stream(self, uid: int, after_pos: int, limit: int) -> defer.Deferred:
        """A sync's rows (contract §10): up to ``limit`` of ``uid``'s
        messages, sent and received, with ``accept_seq > after_pos``, in
        accept_seq order (``msg`` not read), and the highest accept_seq
        retention has removed (``log_mark`` 'purged'; 0: none), read in
        one transaction: fires with ``(rows, purged)``."""
        return self.run_interaction(_stream_txn, Selection(uid, after_pos=after_pos), limit)

    def max_accept_seq(self) -> defer.Deferred:
        """The highest accept_seq in ``message``, ``room_message`` and
        ``room_recall``, or that retention removed (0 when none), by their
        pos keys: the floor of ``MQ:seq`` at start-up."""
        return self.run_interaction(_max_accept_seq_txn)

    # --- rooms (contract v3 §9) ------------------------------------------------------

    def insert_room_entries(self, messages: Sequence[RoomMessageRow], reads: Sequence[RoomReadRow],
                            recalls: Sequence[RoomRecallRow] = ()) -> defer.Deferred:
        """Room message rows (``StoredRoomMessage.row``: room, seq,
        accept_seq, msg_id, from_id, type, msg, ts, packet; INSERT IGNORE on
        (room, seq)) and read cursors (room, uid, seq, ts: forward only) and
        recalls (``StoredRoomRecall.row``: a ``room_recall`` row each, and
        the message it recalls emptied, after the messages went in) in
        one transaction; fires with the messages inserted."""
        return self.run_interaction(_insert_room_entries_txn, messages, reads, recalls)

    def room_stream(self, spans: Dict[str, List[Tuple[int, Optional[int]]]], after_pos: int,
                    limit: int) -> defer.Deferred:
        """A member's room messages for its sync (contract §10): up to
        ``limit`` rows of ``room_message`` with accept_seq above ``after_pos``
        inside the member's ``spans`` ({room: [(from, to or None)]}: above
        from, up to to), by accept_seq: ``[(accept_seq, room, seq, packet)]``."""
        return self.run_interaction(_room_stream_txn, spans, after_pos, limit)

    def sent_room_messages(self, uid: int, after: Tuple[str, str, int], limit: int) -> defer.Deferred:
        """Up to ``limit`` of the room ``t`` and ``i`` messages ``uid`` sent
        that are not recalled, after ``after`` (``(msg_id, room, seq)``), in
        that order (the room_message_sender index): ``[(msg_id, room,
        seq)]``, for an erasure."""
        return self.run_interaction(_sent_room_messages_txn, uid, after, limit)

    def forget_room_reads(self, uid: int) -> defer.Deferred:
        """``uid``'s read cursors in ``room_read`` deleted (an erasure)."""
        return self.run_interaction(_forget_room_reads_txn, uid)

    def room_message_for_recall(self, sender: int, msg_id: str, room: str) -> defer.Deferred:
        """``sender``'s message ``msg_id`` in ``room`` as MySQL has it:
        ``(ts, recalled)``, or None (no such message)."""
        return self.run_interaction(_room_message_for_recall_txn, sender, msg_id, room)

    def room_history(self, room: str, after_seq: int, limit: int) -> defer.Deferred:
        """Up to ``limit`` of the room's migrated messages with seq above
        ``after_seq``: ``[(seq, packet)]`` by seq."""
        return self.run_interaction(_room_history_txn, room, after_seq, limit)

    # --- orders (contract §4 T; table and columns from [orders]) ---------------

    def order_parties(self, orders: "OrdersSettings", order_id: int) -> defer.Deferred:
        """``(customer_id, courier_id or None)`` of an order, or None if unknown."""
        return self.run_interaction(_order_parties_txn, orders, order_id)

    def order_for_take(self, orders: "OrdersSettings", order_id: int) -> defer.Deferred:
        """``(parties, conversation)`` in one transaction: the order's
        ``(customer_id, courier_id or None)`` from the orders table, or
        None; and imd's own :class:`OrderConversation` of it, or None."""
        return self.run_interaction(_order_for_take_txn, orders, order_id)

    def order_conversation(self, order_id: int) -> defer.Deferred:
        """imd's :class:`OrderConversation` of an order, or None."""
        return self.run_interaction(_order_conversation_txn, order_id)

    def record_taken(self, order_id: int, customer_id: int, courier_id: int, friends_before: Optional[str],
                     taken_at: int) -> defer.Deferred:
        """The order's first ``T`` (what its Redis record says), kept for
        good; a row that has it already keeps what it had."""
        return self.run_interaction(_record_conversation_txn, order_id, customer_id, courier_id, friends_before,
                                    taken_at, None, None)

    def record_closed(self, order_id: int, customer_id: int, courier_id: Optional[int],
                      friends_before: Optional[str], taken_at: Optional[int], closed_at: int,
                      ends_at: int) -> defer.Deferred:
        """The order's close (``courier_id``, ``taken_at`` None: closed
        before any ``T``); columns already set keep their value."""
        return self.run_interaction(_record_conversation_txn, order_id, customer_id, courier_id, friends_before,
                                    taken_at, closed_at, ends_at)

    def create_order(self, orders: "OrdersSettings", order_id: int, customer_id: int,
                     courier_id: Optional[int] = None) -> defer.Deferred:
        """Insert or update a row of the orders table (``[orders] table``);
        fires with the row's ``(customer_id, courier_id or None)`` before,
        or None when it was new.  :class:`imd.errors.Refused` (403) when
        imd's MySQL user may not write that table (the platform's own,
        granted SELECT only)."""
        return self.run_interaction(_create_order_txn, orders, order_id, customer_id, courier_id)

    def ping(self) -> defer.Deferred:
        """``SELECT 1`` through the pool: is MySQL reachable right now (/healthz)."""
        return self.run_interaction(_ping_txn)


_INSERT_MESSAGES = "INSERT IGNORE INTO message (msg_id, from_id, to_id, type, msg, ts, accept_seq, packet) VALUES "
_MAX_STATEMENT_BYTES = 4 * 1024 * 1024  # well under max_allowed_packet (16 MiB by default)


# What PyMySQL's escape_string does to text (pymysql.converters._escape_table),
# as C-level str.replace calls: its str.translate through a dict was a third
# of the migrator's CPU (py-spy, bench/run.py --only migrate).  But for '"':
# inside a '...' literal it is an ordinary character (whatever ANSI_QUOTES
# says), and every packet holds a dozen, so escaping it copied each packet
# once more and sent MariaDB a dozen bytes more to read (issue 29).
_TEXT_ESCAPES = (("\0", "\\0"), ("\n", "\\n"), ("\r", "\\r"), ("\x1a", "\\Z"),
                 ("'", "\\'"))


def quote_text(value: str) -> str:
    """``value`` as a quoted MySQL string literal, with backslash escapes
    (the default sql_mode; see :func:`_insert_messages_txn`)."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    for char, escaped in _TEXT_ESCAPES:
        if char in value:
            value = value.replace(char, escaped)
    return "'" + value + "'"


def _insert_entries_txn(cursor: pymysql.cursors.Cursor, rows: Sequence[Tuple[Any, ...]],
                        receipts: Sequence[Tuple[Any, ...]],
                        recalls: Sequence[Identity] = ()) -> Tuple[int, int]:
    inserted = _insert_messages_txn(cursor, rows) if rows else 0
    receipts_inserted = _insert_receipts_txn(cursor, receipts) if receipts else 0
    if recalls:
        _recall_txn(cursor, recalls)
    return inserted, receipts_inserted


def _recall_txn(cursor: pymysql.cursors.Cursor, recalls: Sequence[Identity]) -> int:
    """Each message of ``recalls`` recalled (after the batch's own rows went
    in: a message recalled in the batch that stored it is there)."""
    done = 0
    for from_id, msg_id, to_id in recalls:
        cursor.execute("SELECT seq, packet FROM message WHERE from_id = %s AND msg_id = %s AND to_id = %s"
                       " AND type <> 'D' AND recalled = 0 FOR UPDATE", (from_id, msg_id, to_id))
        row = cursor.fetchone()
        if row is not None:
            done += cursor.execute("UPDATE message SET msg = '', recalled = 1, packet = %s WHERE seq = %s",
                                   (tombstone(row[1]), row[0]))
    return done


def _sent_messages_txn(cursor: pymysql.cursors.Cursor, uid: int, after: Tuple[int, int],
                       limit: int) -> List[Tuple[int, int, str, int]]:
    where, args = _after(after)
    cursor.execute("SELECT ts, accept_seq, msg_id, to_id FROM message WHERE from_id = %s AND " + where
                   + " AND type IN ('t', 'i') AND recalled = 0 ORDER BY ts, accept_seq LIMIT %s",
                   [uid] + args + [limit])
    return [(int(ts), int(seq), bytes(msg_id).decode("utf-8"), int(to)) for ts, seq, msg_id, to in cursor.fetchall()]


def _message_for_recall_txn(cursor: pymysql.cursors.Cursor, sender: int, msg_id: str,
                            to: int) -> Optional[Tuple[int, bool]]:
    cursor.execute("SELECT ts, recalled FROM message WHERE from_id = %s AND msg_id = %s AND to_id = %s"
                   " AND type <> 'D'", (sender, msg_id.encode("utf-8"), to))
    row = cursor.fetchone()
    return None if row is None else (int(row[0]), bool(row[1]))


_INSERT_RECEIPTS = "INSERT IGNORE INTO receipt (from_id, msg_id, to_id, state, ts, accept_seq) VALUES "


def _text_quoter(cursor: pymysql.cursors.Cursor) -> Callable[[str], str]:
    connection = cursor.connection
    return (connection.escape if connection.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES
            else quote_text)


def _insert_receipts_txn(cursor: pymysql.cursors.Cursor, rows: Sequence[Tuple[Any, ...]]) -> int:
    # As _insert_messages_txn: one VALUES list, ints checked by imd.messagelog.entry.
    text = _text_quoter(cursor)
    inserted, values, size = 0, [], 0
    for from_id, msg_id, to_id, state, ts, seq in rows:
        value = "(%d,%s,%d,%d,%d,%d)" % (from_id, text(msg_id), to_id, state, ts, seq)
        values.append(value)
        size += len(value)
        if size >= _MAX_STATEMENT_BYTES:
            inserted += cursor.execute(_INSERT_RECEIPTS + ",".join(values))
            values, size = [], 0
    if values:
        inserted += cursor.execute(_INSERT_RECEIPTS + ",".join(values))
    return inserted


def _message_states_txn(cursor: pymysql.cursors.Cursor, sender: int, reader: int,
                        msg_ids: List[str]) -> Dict[str, int]:
    if not msg_ids:
        return {}
    cursor.execute("SELECT m.msg_id, " + _STATE + " FROM message m"
                   " WHERE m.from_id = %s AND m.to_id = %s AND m.msg_id IN (" + ",".join(["%s"] * len(msg_ids)) + ")",
                   [sender, reader] + [m.encode("utf-8") for m in msg_ids])
    return {bytes(msg_id).decode("utf-8"): int(state) for msg_id, state in cursor.fetchall()}


def _insert_messages_txn(cursor: pymysql.cursors.Cursor, rows: Sequence[Tuple[Any, ...]]) -> int:
    # The VALUES list is built here rather than by executemany: PyMySQL's
    # generic per-value escaping was half the migrator's time.  The ints are
    # ints (checked by imd.messagelog.entry); text is quoted by quote_text, or by the
    # PyMySQL connection's own escape when the server runs with
    # NO_BACKSLASH_ESCAPES (then only '' escapes a quote).
    connection = cursor.connection
    text = (connection.escape if connection.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES
            else quote_text)
    inserted, values, size = 0, [], 0
    for msg_id, from_id, to_id, kind, msg, ts, seq, packet in rows:
        value = "(%s,%d,%d,%s,%s,%d,%d,%s)" % (
            text(msg_id), from_id, to_id, text(kind), text(msg), ts, seq, text(packet))
        values.append(value)
        size += len(value)
        if size >= _MAX_STATEMENT_BYTES:
            inserted += cursor.execute(_INSERT_MESSAGES + ",".join(values))
            values, size = [], 0
    if values:
        inserted += cursor.execute(_INSERT_MESSAGES + ",".join(values))
    return inserted


def _after(position: Tuple[int, Optional[int]]) -> Tuple[str, List[int]]:
    ts, seq = position
    if seq is None:
        return "ts > %s", [ts]
    return "(ts > %s OR (ts = %s AND accept_seq > %s))", [ts, ts, seq]


# A message's state: the furthest receipt (read implies delivered), by the
# receipt table's primary key; 0 when there is none.
_STATE = ("COALESCE((SELECT MAX(r.state) FROM receipt r WHERE r.from_id = m.from_id"
          " AND r.msg_id = m.msg_id AND r.to_id = m.to_id), 0)")


def _history_txn(cursor: pymysql.cursors.Cursor, selection: Selection, limit: int) -> List[LogRow]:
    sides: List[List[LogRow]] = []
    for statement, args in log_statements(selection, limit, text=False):
        cursor.execute(statement, args)
        sides.append([_log_row(row) for row in cursor.fetchall()])
    key = _log_pos if selection.by_pos else _log_key
    return list(heapq.merge(*sides, key=key)) if len(sides) > 1 else sides[0]


PURGED_MARK = "purged"   # log_mark: the highest accept_seq retention removed


def _stream_txn(cursor: pymysql.cursors.Cursor, selection: Selection, limit: int) -> Tuple[List[LogRow], int]:
    rows = _history_txn(cursor, selection, limit)
    cursor.execute("SELECT accept_seq FROM log_mark WHERE name = %s", (PURGED_MARK,))
    mark = cursor.fetchone()
    return rows, int(mark[0]) if mark else 0


def _max_accept_seq_txn(cursor: pymysql.cursors.Cursor) -> int:
    # (and the highest one retention removed: a purge that took every row
    # must not let positions start again below what clients have seen)
    cursor.execute("SELECT GREATEST(COALESCE((SELECT MAX(accept_seq) FROM message), 0),"
                   " COALESCE((SELECT MAX(accept_seq) FROM room_message), 0),"
                   " COALESCE((SELECT MAX(accept_seq) FROM room_recall), 0),"
                   " COALESCE((SELECT accept_seq FROM log_mark WHERE name = %s), 0))", (PURGED_MARK,))
    return int(cursor.fetchone()[0] or 0)


_INSERT_ROOM_MESSAGES = ("INSERT IGNORE INTO room_message (room, seq, accept_seq, msg_id, from_id, type, msg, ts,"
                         " packet) VALUES ")


def _insert_room_entries_txn(cursor: pymysql.cursors.Cursor, messages: Sequence[RoomMessageRow],
                             reads: Sequence[RoomReadRow], recalls: Sequence[RoomRecallRow] = ()) -> int:
    # As _insert_messages_txn: one VALUES list (the ints checked by
    # imd.messagelog.entry, the room id by its pattern), text quoted here.
    text = _text_quoter(cursor)
    inserted, values, size = 0, [], 0
    for room, seq, pos, msg_id, from_id, kind, msg, ts, packet in messages:
        value = "(%s,%d,%d,%s,%d,%s,%s,%d,%s)" % (text(room), seq, pos, text(msg_id), from_id, text(kind), text(msg),
                                                  ts, text(packet))
        values.append(value)
        size += len(value)
        if size >= _MAX_STATEMENT_BYTES:
            inserted += cursor.execute(_INSERT_ROOM_MESSAGES + ",".join(values))
            values, size = [], 0
    if values:
        inserted += cursor.execute(_INSERT_ROOM_MESSAGES + ",".join(values))
    for room, uid, seq, ts in reads:
        cursor.execute("INSERT INTO room_read (room, uid, seq, ts) VALUES (%s, %s, %s, %s)"
                       " ON DUPLICATE KEY UPDATE ts = IF(VALUES(seq) > seq, VALUES(ts), ts),"
                       " seq = GREATEST(seq, VALUES(seq))", (room, uid, seq, ts))
    for pos, room, d_id, from_id, recalled_id, ts, packet in recalls:
        cursor.execute("INSERT IGNORE INTO room_recall (accept_seq, room, msg_id, from_id, recalled_id, ts, packet)"
                       " VALUES (%s, %s, %s, %s, %s, %s, %s)", (pos, room, d_id, from_id, recalled_id, ts, packet))
        _recall_room_row(cursor, room, from_id, recalled_id)
    return inserted


def _recall_room_row(cursor: pymysql.cursors.Cursor, room: str, from_id: int, msg_id: str) -> int:
    """The room message ``msg_id`` of ``from_id`` emptied: msg '' and its
    packet as a tombstone (a no-op for one already emptied)."""
    cursor.execute("SELECT seq, packet FROM room_message WHERE room = %s AND from_id = %s AND msg_id = %s"
                   " FOR UPDATE", (room, from_id, msg_id))
    done = 0
    for seq, packet in cursor.fetchall():
        if not _is_tombstone(packet):
            dead = tombstone(packet)
            done += cursor.execute("UPDATE room_message SET msg = '', packet = %s WHERE room = %s AND seq = %s",
                                   (dead, room, seq))
    return done


def _room_stream_txn(cursor: pymysql.cursors.Cursor, spans: Dict[str, List[Tuple[int, Optional[int]]]],
                     after_pos: int, limit: int) -> List[Tuple[int, str, int, str]]:
    terms: List[str] = []
    args: List[object] = [after_pos]
    for room, ranges in sorted(spans.items()):
        for start, end in ranges:
            if end is not None and end <= after_pos:
                continue
            if end is None:
                terms.append("(room = %s AND accept_seq > %s)")
                args += [room, start]
            else:
                terms.append("(room = %s AND accept_seq > %s AND accept_seq <= %s)")
                args += [room, start, end]
    if not terms:
        return []
    # the room's messages and its recalls (seq 0: a D takes none), each
    # part limited on its own, then the two merged by pos
    where = "accept_seq > %s AND (" + " OR ".join(terms) + ") ORDER BY accept_seq LIMIT %s"
    cursor.execute("(SELECT accept_seq, room, seq, packet FROM room_message WHERE " + where + ") UNION ALL"
                   " (SELECT accept_seq, room, 0, packet FROM room_recall WHERE " + where + ")"
                   " ORDER BY 1 LIMIT %s", args + [limit] + args + [limit, limit])
    return [(int(pos), room, int(seq), packet) for pos, room, seq, packet in cursor.fetchall()]


def _sent_room_messages_txn(cursor: pymysql.cursors.Cursor, uid: int, after: Tuple[str, str, int],
                            limit: int) -> List[Tuple[str, str, int]]:
    msg_id, room, seq = after
    # (a tombstone's msg is '' and its packet says "recalled":true: a text
    # cannot, its quotes are escaped in the packet)
    cursor.execute("SELECT msg_id, room, seq FROM room_message WHERE from_id = %s"
                   " AND (msg_id > %s OR (msg_id = %s AND (room > %s OR (room = %s AND seq > %s))))"
                   " AND type IN ('t', 'i') AND NOT (msg = '' AND packet LIKE '%%\"recalled\":true%%')"
                   " ORDER BY msg_id, room, seq LIMIT %s",
                   (uid, msg_id, msg_id, room, room, seq, limit))
    return [(bytes(m).decode("utf-8") if isinstance(m, (bytes, bytearray)) else m, r, int(s))
            for m, r, s in cursor.fetchall()]


def _forget_room_reads_txn(cursor: pymysql.cursors.Cursor, uid: int) -> int:
    return int(cursor.execute("DELETE FROM room_read WHERE uid = %s", (uid,)))


def _is_tombstone(packet: str) -> bool:
    try:
        obj = json.loads(packet)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("recalled") is True


def _room_message_for_recall_txn(cursor: pymysql.cursors.Cursor, sender: int, msg_id: str,
                                 room: str) -> Optional[Tuple[int, bool]]:
    cursor.execute("SELECT ts, packet FROM room_message WHERE room = %s AND from_id = %s AND msg_id = %s"
                   " AND type IN ('t', 'i') LIMIT 1", (room, sender, msg_id))
    row = cursor.fetchone()
    if row is None:
        return None
    return int(row[0]), bool(_is_tombstone(row[1]))


def _room_history_txn(cursor: pymysql.cursors.Cursor, room: str, after_seq: int,
                      limit: int) -> List[Tuple[int, str]]:
    cursor.execute("SELECT seq, packet FROM room_message WHERE room = %s AND seq > %s ORDER BY seq LIMIT %s",
                   (room, after_seq, limit))
    return [(int(seq), packet) for seq, packet in cursor.fetchall()]


def _ping_txn(cursor: pymysql.cursors.Cursor) -> int:
    cursor.execute("SELECT 1")
    return cursor.fetchone()[0]


def _order_parties_txn(cursor: pymysql.cursors.Cursor, orders: "OrdersSettings",
                       order_id: int) -> Optional[Tuple[int, Optional[int]]]:
    # Identifiers come from [orders], validated as SQL identifiers by imd.config.
    cursor.execute("SELECT `%s`, `%s` FROM %s WHERE `%s` = %%s"
                   % (orders.customer_column, orders.courier_column, orders.table_sql, orders.id_column),
                   (order_id,))
    row = cursor.fetchone()
    if row is None:
        return None
    customer, courier = row
    return int(customer), (int(courier) if courier is not None else None)


class OrderConversation(NamedTuple):
    """A row of ``order_conversation`` (sql/006): what imd recorded of an
    order's conversation, for good.  Times are Unix ms, None until then."""
    order: int
    customer: int
    courier: Optional[int]          # the courier whose T took it; None: never taken
    friends_before: Optional[str]
    taken_at: Optional[int]
    closed_at: Optional[int]
    ends_at: Optional[int]


_CONVERSATION = ("SELECT order_id, customer_id, courier_id, friends_before, taken_at, closed_at, ends_at"
                 " FROM order_conversation WHERE order_id = %s")


def _order_conversation_txn(cursor: pymysql.cursors.Cursor, order_id: int) -> Optional[OrderConversation]:
    cursor.execute(_CONVERSATION, (order_id,))
    row = cursor.fetchone()
    if row is None:
        return None
    order, customer, courier, before, taken_at, closed_at, ends_at = row
    return OrderConversation(int(order), int(customer), _int_or_none(courier), before, _int_or_none(taken_at),
                             _int_or_none(closed_at), _int_or_none(ends_at))


def _int_or_none(value: Any) -> Optional[int]:
    return None if value is None else int(value)


def _order_for_take_txn(cursor: pymysql.cursors.Cursor, orders: "OrdersSettings",
                        order_id: int) -> Tuple[Optional[Tuple[int, Optional[int]]], Optional[OrderConversation]]:
    return _order_parties_txn(cursor, orders, order_id), _order_conversation_txn(cursor, order_id)


def _record_conversation_txn(cursor: pymysql.cursors.Cursor, order_id: int, customer_id: int,
                             courier_id: Optional[int], friends_before: Optional[str], taken_at: Optional[int],
                             closed_at: Optional[int], ends_at: Optional[int]) -> None:
    # COALESCE(column, new): a column once set is never changed, so a replay,
    # or a close racing a late T's write, leaves the first values.
    cursor.execute("INSERT INTO order_conversation"
                   " (order_id, customer_id, courier_id, friends_before, taken_at, closed_at, ends_at)"
                   " VALUES (%s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE"
                   " courier_id = COALESCE(courier_id, VALUES(courier_id)),"
                   " friends_before = COALESCE(friends_before, VALUES(friends_before)),"
                   " taken_at = COALESCE(taken_at, VALUES(taken_at)),"
                   " closed_at = COALESCE(closed_at, VALUES(closed_at)),"
                   " ends_at = COALESCE(ends_at, VALUES(ends_at))",
                   (order_id, customer_id, courier_id, friends_before, taken_at, closed_at, ends_at))


# MySQL's "command denied" for a table and for a column
_ACCESS_DENIED = frozenset((1142, 1143))


def _create_order_txn(cursor: pymysql.cursors.Cursor, orders: "OrdersSettings", order_id: int, customer_id: int,
                      courier_id: Optional[int]) -> Optional[Tuple[int, Optional[int]]]:
    try:
        return _upsert_order(cursor, orders, order_id, customer_id, courier_id)
    except (pymysql.err.OperationalError, pymysql.err.ProgrammingError) as e:
        if e.args and e.args[0] in _ACCESS_DENIED:
            raise Refused(403, "imd's MySQL user may not write %s ([orders] table): the platform writes its "
                               "orders there itself, or grants imd INSERT and UPDATE on it" % orders.table)
        raise


def _upsert_order(cursor: pymysql.cursors.Cursor, orders: "OrdersSettings", order_id: int, customer_id: int,
                  courier_id: Optional[int]) -> Optional[Tuple[int, Optional[int]]]:
    # the row before, locked until the write commits (a concurrent put waits)
    cursor.execute("SELECT `%s`, `%s` FROM %s WHERE `%s` = %%s FOR UPDATE"
                   % (orders.customer_column, orders.courier_column, orders.table_sql, orders.id_column),
                   (order_id,))
    row = cursor.fetchone()
    cursor.execute("INSERT INTO %s (`%s`, `%s`, `%s`) VALUES (%%s, %%s, %%s)"
                   " ON DUPLICATE KEY UPDATE `%s` = VALUES(`%s`), `%s` = VALUES(`%s`)"
                   % (orders.table_sql, orders.id_column, orders.customer_column, orders.courier_column,
                      orders.customer_column, orders.customer_column,
                      orders.courier_column, orders.courier_column),
                   (order_id, customer_id, courier_id))
    return None if row is None else (int(row[0]), _int_or_none(row[1]))


# --- operators' reads and deletes (imd-admin reconcile, export, retention) ---

class MessageRows:
    """The operator's side of ``message`` (and ``receipt``): the audit's
    lookups and retention's deletes, through a :class:`MysqlStore`'s pool
    (each one short transaction).  (Export streams a conversation with
    :class:`LogReader`.)
    """

    def __init__(self, store: "MysqlStore") -> None:
        self.store = store

    def copies(self, messages: Iterable[Tuple[int, str]]) -> defer.Deferred:
        """The rows stored for ``messages`` ([(from_id, msg_id str)]),
        whatever their recipient: ``[(seq, from_id, msg_id bytes, to_id)]``."""
        return self.store.run_interaction(_copies_txn, list(messages))

    def misfiled(self, since: int, until: int, limit: int) -> defer.Deferred:
        """Up to ``limit`` rows with ``since <= ts < until`` whose stored
        packet does not carry the row's own id, sender and recipient (a
        copy of another message, or a packet MySQL cannot read as JSON):
        ``[(seq, from_id, msg_id bytes, to_id, packet)]``."""
        return self.store.run_interaction(_misfiled_txn, since, until, limit)

    def count_older(self, before: int) -> defer.Deferred:
        """``(rows, oldest ts or None)`` of the messages with ``ts < before``:
        one-to-one and those of rooms (room messages and recalls, as the
        purge takes them: oldest first up to the first newer one)."""
        return self.store.run_interaction(_count_older_txn, before)

    def purge_older(self, before: int, limit: int) -> defer.Deferred:
        """Delete up to ``limit`` of the oldest messages with ``ts < before``
        and their receipts, then with what ``limit`` leaves the oldest room
        messages and room recalls, in one short transaction: fires with
        ``(messages deleted, receipts deleted)`` (room rows count as
        messages)."""
        return self.store.run_interaction(_purge_older_txn, before, limit)


def _copies_txn(cursor: pymysql.cursors.Cursor, messages: List[Tuple[int, str]]) -> List[Tuple[int, int, bytes, int]]:
    if not messages:
        return []
    cursor.execute("SELECT seq, from_id, msg_id, to_id FROM message WHERE (from_id, msg_id) IN ("
                   + ",".join(["(%s,%s)"] * len(messages)) + ")",
                   [value for from_id, msg_id in messages for value in (from_id, msg_id.encode("utf-8"))])
    return [(seq, from_id, bytes(msg_id), to_id) for seq, from_id, msg_id, to_id in cursor.fetchall()]


# A packet names the row it is stored under when its id (a number's decimal
# string, as the dedup key and msg_id have it), from and to are the row's.
# <=>: a packet MySQL cannot read gives NULL, and counts as not naming it.
_NAMES_ITS_ROW = ("CAST(JSON_UNQUOTE(JSON_EXTRACT(packet, '$.id')) AS BINARY) <=> msg_id"
                  " AND JSON_EXTRACT(packet, '$.from') <=> from_id AND JSON_EXTRACT(packet, '$.to') <=> to_id")


def _misfiled_txn(cursor: pymysql.cursors.Cursor, since: int, until: int,
                  limit: int) -> List[Tuple[int, int, bytes, int, str]]:
    cursor.execute("SELECT seq, from_id, msg_id, to_id, packet FROM message"
                   " WHERE ts >= %s AND ts < %s AND NOT (" + _NAMES_ITS_ROW + ") ORDER BY ts LIMIT %s",
                   (since, until, limit))
    return [(seq, from_id, bytes(msg_id), to_id, packet) for seq, from_id, msg_id, to_id, packet in cursor.fetchall()]


def _count_older_txn(cursor: pymysql.cursors.Cursor, before: int) -> Tuple[int, Optional[int]]:
    # message_by_ts (sql/005), room_message_by_ts and room_recall_by_ts
    # (sql/011): read from the keys alone
    count, oldest = 0, None
    for table in ("message",) + tuple(table for table, _ in _ROOM_KEYS):
        cursor.execute("SELECT COUNT(*), MIN(ts) FROM " + table + " WHERE ts < %s", (before,))
        found, first = cursor.fetchone()
        count += int(found)
        if first is not None:
            oldest = int(first) if oldest is None else min(oldest, int(first))
    return count, oldest


# Room messages and room recalls (sql/009, sql/010) go with the messages,
# oldest first by their ts keys (sql/011): each table with its primary key.
_ROOM_KEYS = (("room_message", ("room", "seq")), ("room_recall", ("accept_seq",)))


def _purge_room_rows(cursor: pymysql.cursors.Cursor, table: str, key: Tuple[str, ...], before: int,
                     limit: int) -> Tuple[int, int]:
    """Delete up to ``limit`` of ``table``'s oldest rows with ``ts < before``
    by their primary key ``key``: ``(rows deleted, the highest accept_seq
    among them, 0 for none)``."""
    cursor.execute("SELECT accept_seq, " + ", ".join(key) + " FROM " + table + " WHERE ts < %s ORDER BY ts LIMIT %s",
                   (before, limit))
    older = cursor.fetchall()
    if not older:
        return 0, 0
    one = "(" + ",".join(["%s"] * len(key)) + ")"
    deleted = cursor.execute("DELETE FROM " + table + " WHERE (" + ", ".join(key) + ") IN ("
                             + ",".join([one] * len(older)) + ") AND ts < %s",
                             [value for row in older for value in row[1:]] + [before])
    return deleted, max(int(row[0]) for row in older)


def _purge_older_txn(cursor: pymysql.cursors.Cursor, before: int, limit: int) -> Tuple[int, int]:
    # A plain (non-locking) read of the batch, then deletes by primary key:
    # the transaction locks only the rows it deletes, never a range, so the
    # migrator's inserts (new rows, at the other end of ts) never wait on it.
    # One-to-one messages first, then, with what is left of ``limit``, room
    # messages and room recalls (oldest first by ts, _ROOM_KEYS).
    cursor.execute("SELECT seq, from_id, msg_id, to_id, accept_seq FROM message WHERE ts < %s ORDER BY ts LIMIT %s",
                   (before, limit))
    found = cursor.fetchall()
    deleted = receipts = 0
    highest = 0
    if found:
        highest = max(row[4] for row in found)
        rows = [row[:4] for row in found]
        receipts = cursor.execute("DELETE FROM receipt WHERE (from_id, msg_id, to_id) IN ("
                                  + ",".join(["(%s,%s,%s)"] * len(rows)) + ")",
                                  [value for _, from_id, msg_id, to_id in rows for value in (from_id, msg_id, to_id)])
        deleted = cursor.execute("DELETE FROM message WHERE seq IN (" + ",".join(["%s"] * len(rows)) + ")"
                                 " AND ts < %s", [seq for seq, _, _, _ in rows] + [before])
    for table, key in _ROOM_KEYS:
        if deleted < limit:
            count, top = _purge_room_rows(cursor, table, key, before, limit - deleted)
            deleted += count
            highest = max(highest, top)
    if highest:
        # a sync from below the highest position removed says "truncated"
        # (contract §10): recorded with the delete, in the same transaction
        cursor.execute("INSERT INTO log_mark (name, accept_seq) VALUES (%s, %s)"
                       " ON DUPLICATE KEY UPDATE accept_seq = GREATEST(accept_seq, VALUES(accept_seq))",
                       (PURGED_MARK, highest))
    return deleted, receipts


EXPORT_FETCH = 1000          # rows a server-side cursor hands over at a time
EXPORT_WRITE_TIMEOUT = 3600  # s MySQL waits for a slow reader (a pipe into gzip) before it gives up

# --- the message log's one reader -------------------------------------------

SqlArgs = List[Union[int, bytes]]   # a statement's arguments

# A row of the log as read: (ts, accept_seq, from_id, msg_id, to_id, type,
# msg, packet, state), imd.messagelog.merge's shape; without ``text`` (H)
# msg is not read.
_LOG_COLUMNS = "SELECT ts, accept_seq, from_id, msg_id, to_id, type, %s, packet, " + _STATE + " FROM message m WHERE "


def _args(*parts: Iterable[Union[int, bytes]]) -> SqlArgs:
    return [value for part in parts for value in part]


def _log_sides(selection: Selection) -> List[Tuple[str, SqlArgs]]:
    """``[(where, args)]``: the messages the selection's user received and
    those it sent (to ``with_uid`` only, if given), each side read in (ts,
    accept_seq) order straight from an index (message_by_recipient,
    message_by_sender, message_by_pair), so MySQL streams it without
    sorting; and the system's messages ``system_ids`` to either of them (a
    few rows, by the unique key).  Only rows where the user is the sender
    or the recipient are ever read."""
    uid, with_uid = selection.uid, selection.with_uid
    window, window_args = "", []   # type: str, List[int]
    if selection.after_pos is not None:
        window, window_args = " AND accept_seq > %s", [selection.after_pos]
    if selection.after is not None:
        after, window_args = _after(selection.after)
        window = " AND " + after
    if selection.since is not None:
        window += " AND ts >= %s"
        window_args = window_args + [selection.since]
    if selection.until is not None:
        window += " AND ts < %s"
        window_args = window_args + [selection.until]
    # (a D row is in the log and in the stream, not in history: contract v3 §10, §11)
    if selection.after_pos is None:
        window = " AND type <> 'D'" + window
    received, received_args = "to_id = %s", [uid]
    if with_uid is not None:
        received += " AND from_id = %s"
        received_args.append(with_uid)
    sides = [(received + window, _args(received_args, window_args))]
    # a message to oneself was read as received
    if with_uid is None:
        sides.append(("from_id = %s AND to_id <> %s" + window, _args([uid, uid], window_args)))
    elif with_uid != uid:
        sides.append(("from_id = %s AND to_id = %s" + window, _args([uid, with_uid], window_args)))
    system_ids = selection.system_ids
    if system_ids and with_uid is not None:
        sides.append(("from_id = 0 AND msg_id IN (" + ",".join(["%s"] * len(system_ids)) + ") AND to_id IN (%s, %s)"
                      + window, _args([i.encode("utf-8") for i in system_ids], [uid, with_uid], window_args)))
    return sides


def log_statements(selection: Selection, limit: Optional[int] = None,
                   text: bool = True) -> List[Tuple[str, SqlArgs]]:
    """The statements that read a selection's rows from MySQL, one per side
    (:func:`_log_sides`), each in (ts, accept_seq) order, with at most
    ``limit`` rows each; ``text``: read ``msg`` too (export's CSV)."""
    head = _LOG_COLUMNS % ("msg" if text else "NULL")
    tail = (" ORDER BY accept_seq" if selection.by_pos else " ORDER BY ts, accept_seq") \
        + ("" if limit is None else " LIMIT %s")
    more: SqlArgs = [] if limit is None else [limit]
    return [(head + where + tail, args + more) for where, args in _log_sides(selection)]


def _log_row(row: Tuple[Any, ...]) -> LogRow:
    ts, seq, from_id, msg_id, to_id, kind, msg, packet, state = row
    return ts, seq, from_id, bytes(msg_id), to_id, kind, msg, packet, int(state)


def _log_key(row: LogRow) -> Tuple[int, int]:
    return (row[0], row[1])


def _log_pos(row: LogRow) -> int:
    return row[1]


class LogReader:
    """A selection of the message log read from MySQL with server-side
    cursors (``SSCursor``) on connections of its own, so a million rows
    pass through in constant memory: blocking, for a thread (export).
    The statements and rows are :meth:`MysqlStore.history`'s
    (:func:`log_statements`), without its limit.

    ``with LogReader(...) as reader: reader.count(); for row in reader.rows()``.
    """

    def __init__(self, settings: "MysqlSettings", selection: Selection) -> None:
        self._settings = settings
        self._selection = selection
        self._connections: List[Any] = []

    def __enter__(self) -> "LogReader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except pymysql.err.Error:
                pass   # it is gone either way

    def _connect(self) -> Any:
        kwargs = connect_kwargs(self._settings)
        kwargs.update(read_timeout=None, write_timeout=None, cursorclass=pymysql.cursors.SSCursor)
        try:
            conn = pymysql.connect(**kwargs)
            with conn.cursor() as cur:
                cur.execute("SET SESSION net_write_timeout = %s", (EXPORT_WRITE_TIMEOUT,))
        except pymysql.err.OperationalError as e:
            raise StoreUnavailable("mysql at %s:%d: %s" % (self._settings.host, self._settings.port, e))
        self._connections.append(conn)
        return conn

    def count(self) -> int:
        """How many rows :meth:`rows` yields (read first: for a progress bar)."""
        conn = self._connect()
        total = 0
        with conn.cursor(pymysql.cursors.Cursor) as cur:
            for where, args in _log_sides(self._selection):
                cur.execute("SELECT COUNT(*) FROM message m WHERE " + where, args)
                total += cur.fetchone()[0]
        return int(total)

    def rows(self) -> Iterator[LogRow]:
        """The rows, in (ts, accept_seq) order."""
        streams = [self._side(statement, args) for statement, args in log_statements(self._selection)]
        return heapq.merge(*streams, key=_log_key)

    def _side(self, statement: str, args: SqlArgs) -> Iterator[LogRow]:
        conn = self._connect()
        cur = conn.cursor()
        try:
            cur.execute(statement, args)
            while True:
                rows = cur.fetchmany(EXPORT_FETCH)
                if not rows:
                    return
                for row in rows:
                    yield _log_row(row)
        except pymysql.err.OperationalError as e:
            raise StoreUnavailable("mysql: %s" % (e,))

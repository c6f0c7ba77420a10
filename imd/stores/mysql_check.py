"""The start-up check of imd's MySQL login.

The pool connects on first use, so a MySQL that refused imd's login, or had
no such database, used to show only in ``/healthz`` and in each query that
failed, while the daemon logged "taking logins and messages".  Now, before
anything listens or registers (``privilegedStartService``, like the
listeners: imd.listeners), the daemon logs in once as its pool will:

- MySQL refuses the login (1045 wrong user or password, 1698 refused by an
  authentication plugin such as ``unix_socket``), refuses the user the
  database (1044) or has no such database (1049): one line on stderr naming
  the ``[mysql]`` keys and the config file, and exit status 1.  Waiting would
  not help: only the operator can fix it.
- ``[orders] table`` names another database's table (``platform.orders``)
  that imd's user cannot read (no grant, no such database, table or column):
  one line naming ``[orders] table``, the grant to give and the config file,
  and exit status 1 (every ``T`` would fail).  imd's own database's table is
  made by ``imd-admin schema apply``, so it is not checked here.
- MySQL does not answer (down, not yet up, a wrong port): a loud log line,
  and start-up goes on (messages are stored in Redis first; the migrator,
  ``H`` and ``T`` wait for MySQL as they do after any outage, and
  ``/healthz`` answers 503).  The login is tried again every
  :data:`RETRY_INTERVAL` seconds until it succeeds; a refusal seen then is
  logged as an error (the process is running by then).
"""

import sys
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

import pymysql
from twisted.application.service import Service
from twisted.internet import task, threads
from twisted.logger import Logger

from imd.stores.mysql import connect_kwargs

if TYPE_CHECKING:
    from imd.config import MysqlSettings, OrdersSettings

_log = Logger()

# The first login may block start-up this long (a host that drops packets);
# a closed port answers at once.
CONNECT_TIMEOUT = 3
RETRY_INTERVAL = 5.0
# seconds between two log lines while MySQL stays unreachable or refusing
LOG_INTERVAL = 60.0

LOGIN_REFUSED = frozenset((1045, 1698))
DATABASE_REFUSED = 1044
UNKNOWN_DATABASE = 1049


class MysqlRefused(Exception):
    """MySQL answered and refuses imd's login or database: one line."""


# what MySQL answers a user who cannot read a table: command denied (table,
# column), no such database, table or column
ORDERS_UNREADABLE = frozenset((1142, 1143, 1044, 1049, 1146, 1054))


def check_login(settings: "MysqlSettings", config_path: str = "the config file",
                orders: Optional["OrdersSettings"] = None) -> Optional[str]:
    """Blocking: log in once as imd's pool does, then out.  None when MySQL
    accepted; why it could not be reached otherwise; :class:`MysqlRefused`
    when it answered no.  With ``orders`` naming another database's table,
    that the login can read the table's three columns too."""
    kwargs = connect_kwargs(settings)
    kwargs["connect_timeout"] = CONNECT_TIMEOUT
    try:
        conn = pymysql.connect(**kwargs)
    except pymysql.err.OperationalError as e:
        code = e.args[0] if e.args else None
        problem = refusal(settings, config_path, code, str(e.args[1]) if len(e.args) > 1 else str(e))
        if problem is not None:
            raise MysqlRefused(problem)
        return str(e)
    except pymysql.err.MySQLError as e:
        return str(e)
    except OSError as e:   # what PyMySQL does not wrap (it wraps socket errors as 2003)
        return str(e)
    try:
        if orders is not None and orders.table_database is not None:
            _check_orders_table(conn, settings, config_path, orders)
    except pymysql.err.MySQLError as e:   # the link went down meanwhile: as if it had not answered
        return str(e)
    finally:
        conn.close()
    return None


def _check_orders_table(conn: pymysql.connections.Connection, settings: "MysqlSettings", config_path: str,
                        orders: "OrdersSettings") -> None:
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT `%s`, `%s`, `%s` FROM %s LIMIT 0"
                           % (orders.id_column, orders.customer_column, orders.courier_column, orders.table_sql))
    except (pymysql.err.OperationalError, pymysql.err.ProgrammingError, pymysql.err.InternalError) as e:
        code = e.args[0] if e.args else None
        if code not in ORDERS_UNREADABLE:
            raise
        raise MysqlRefused(
            "mysql at %s:%d: user %r cannot read [orders] table %s (%s: %s): GRANT SELECT ON %s TO imd's user, "
            "or fix [orders] table (or its columns) in %s"
            % (settings.host, settings.port, settings.user, orders.table, code, e.args[1] if len(e.args) > 1 else e,
               orders.table_sql, config_path))


def refusal(settings: "MysqlSettings", config_path: str, code: Any, text: str) -> Optional[str]:
    """The line for a MySQL error ``code`` that refuses the login for good, or None."""
    where = "mysql at %s:%d" % (settings.host, settings.port)
    if code in LOGIN_REFUSED:
        return ("%s refuses the login of user %r (%d: %s): check [mysql] user and password in %s"
                % (where, settings.user, code, text, config_path))
    if code == DATABASE_REFUSED:
        return ("%s refuses user %r the database %r (%d: %s): grant it (README.md, \"MySQL user\") "
                "or fix [mysql] database in %s" % (where, settings.user, settings.database, code, text,
                                                   config_path))
    if code == UNKNOWN_DATABASE:
        return ("%s has no database %r (%d: %s): run 'imd-admin schema apply', or fix [mysql] database in %s"
                % (where, settings.database, code, text, config_path))
    return None


class MysqlLoginCheck(Service):
    """Stops start-up when MySQL refuses imd's login; retries, loudly, a
    MySQL that does not answer.  Only twistd calls
    ``privilegedStartService`` (imd-admin and tests start services one by
    one and check nothing here)."""

    name = "mysql-login-check"

    def __init__(self, settings: "MysqlSettings", config_path: str, clock: Any,
                 check: Callable[["MysqlSettings", str], Optional[str]] = check_login) -> None:
        self._settings = settings
        self._config_path = config_path
        self._clock = clock
        self._check = check
        self._loop: Optional[task.LoopingCall] = None
        self._in_flight = False
        self._logged: Tuple[str, float] = ("", float("-inf"))   # last problem logged, and when
        self.unreachable = False     # the start-up login found MySQL silent; retrying until it answers

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            why = self._check(self._settings, self._config_path)
        except MysqlRefused as e:
            # the process's own stderr: twistd has already turned sys.stderr into log lines
            stderr = sys.__stderr__ or sys.stderr
            stderr.write("imd: %s\n" % e)
            stderr.flush()
            raise SystemExit(1)
        if why is not None:
            self.unreachable = True
            _log.error("mysql at {host}:{port} does not answer ({why}): starting without it, trying again "
                       "every {interval:g} s. Until it answers, messages wait in Redis, H and T answer "
                       "E unavailable and /healthz answers 503",
                       host=self._settings.host, port=self._settings.port, why=why, interval=RETRY_INTERVAL)
            self._logged = (why, self._clock.seconds())

    def startService(self) -> None:
        super().startService()
        if self.unreachable:
            self._loop = task.LoopingCall(self._retry)
            self._loop.clock = self._clock
            self._loop.start(RETRY_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _retry(self) -> None:
        if self._in_flight:
            return
        self._in_flight = True
        d = threads.deferToThread(self._check, self._settings, self._config_path)
        d.addCallbacks(self._answered, self._refused)
        d.addBoth(self._done)

    def _done(self, _: object) -> None:
        self._in_flight = False

    def _answered(self, why: Optional[str]) -> None:
        if not self.running:
            return
        if why is None:
            self.unreachable = False
            if self._loop is not None and self._loop.running:
                self._loop.stop()
            _log.info("mysql at {host}:{port} answers now", host=self._settings.host, port=self._settings.port)
            return
        self._log_problem(why, lambda: _log.warn(
            "mysql at {host}:{port} still does not answer ({why}); trying again every {interval:g} s",
            host=self._settings.host, port=self._settings.port, why=why, interval=RETRY_INTERVAL))

    def _refused(self, failure: Any) -> None:
        failure.trap(MysqlRefused)
        if not self.running:
            return
        text = failure.getErrorMessage()
        self._log_problem(text, lambda: _log.error("{text}", text=text))

    def _log_problem(self, problem: str, log: Callable[[], None]) -> None:
        last, at = self._logged
        now = self._clock.seconds()
        if problem != last or now - at >= LOG_INTERVAL:
            log()
            self._logged = (problem, now)

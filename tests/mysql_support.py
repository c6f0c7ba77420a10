"""MySQL fixtures: a fresh test database (this run's own,
``tests.support.mysql_db``) made by the same code as ``imd-admin schema
apply``, and blocking queries run in a thread.
"""

import pymysql
from twisted.internet import threads

from imd.stores.mysql import apply_schema, connect_kwargs
from tests.support import make_settings


def mysql_settings(**values):
    settings = make_settings().mysql
    if values:
        import dataclasses
        settings = dataclasses.replace(settings, **values)
    return settings


def _run(settings, statements, database=True):
    conn = pymysql.connect(**connect_kwargs(settings, database=database))
    try:
        with conn.cursor() as cur:
            result = None
            for statement in statements:
                if isinstance(statement, tuple):
                    cur.execute(*statement)
                else:
                    cur.execute(statement)
                result = cur.fetchall()
        conn.commit()
        return result
    finally:
        conn.close()


def drop_database(settings):
    return _run(settings, ["DROP DATABASE IF EXISTS `%s`" % settings.database], database=False)


def recreate_database(settings, upto=None):
    drop_database(settings)
    return apply_schema(settings, upto=upto)


def query(settings, *statements):
    """Deferred: the rows of the last statement."""
    return threads.deferToThread(_run, settings, statements)


class MysqlTestMixin:
    """A freshly made test database around each test (``self.mysql_settings``)."""

    schema_upto = None

    def setUp(self):
        self.mysql_settings = mysql_settings()
        d = threads.deferToThread(recreate_database, self.mysql_settings, self.schema_upto)
        self.addCleanup(threads.deferToThread, drop_database, self.mysql_settings)

        def parent(_):
            return super(MysqlTestMixin, self).setUp()
        return d.addCallback(parent)

    def message_rows(self):
        """Deferred: ``[(from_id, msg_id str, packet)]`` of every row."""
        d = query(self.mysql_settings, "SELECT from_id, msg_id, packet FROM message ORDER BY seq")
        return d.addCallback(lambda rows: [(f, bytes(m).decode("utf-8"), p) for f, m, p in rows])


class RowLock:
    """An open transaction holding a row with the identity of a message:
    an INSERT IGNORE of that message waits until it ends."""

    def __init__(self, settings):
        self.settings = settings
        self.conn = None

    def _take(self, from_id, msg_id, to_id):
        self.conn = pymysql.connect(**connect_kwargs(self.settings))
        self.conn.begin()
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO message (msg_id, from_id, to_id, type, msg, ts, accept_seq, packet)"
                        " VALUES (%s, %s, %s, 't', 'lock', 0, 0, '{}')", (msg_id, from_id, to_id))

    def take(self, from_id, msg_id, to_id):
        return threads.deferToThread(self._take, from_id, msg_id, to_id)

    def _release(self):
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                conn.rollback()
            finally:
                conn.close()

    def release(self):
        return threads.deferToThread(self._release)

"""``imd-admin schema apply``: creates the database, upgrades an older one,
and a second run changes nothing."""

import os
import sys

from twisted.internet import threads, utils
from twisted.trial import unittest

from imd.stores.mysql import apply_schema, migrations, split_statements
from tests.mysql_support import MysqlTestMixin, query
from tests.support import free_port, settings_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SchemaFilesTests(unittest.SynchronousTestCase):
    def test_numbered_in_order(self):
        found = migrations()
        self.assertEqual([v for v, _, _ in found], list(range(1, len(found) + 1)))
        self.assertEqual([n for _, n, _ in found][:2], ["message", "orders"])

    def test_split_statements(self):
        text = "-- a comment; with a semicolon\nCREATE TABLE a (x INT);\n\nCREATE TABLE b (\n y INT\n);\n"
        self.assertEqual(split_statements(text), ["CREATE TABLE a (x INT)", "CREATE TABLE b (\n y INT\n)"])


class SchemaApplyTests(MysqlTestMixin, unittest.TestCase):

    def describe(self):
        return threads.deferToThread(self._describe_sync, ("schema_version", "message", "orders", "receipt",
                                                                     "order_conversation"))

    def _describe_sync(self, tables):
        import pymysql

        from imd.stores.mysql import connect_kwargs
        conn = pymysql.connect(**connect_kwargs(self.mysql_settings))
        try:
            with conn.cursor() as cur:
                out = {}
                for table in tables:
                    cur.execute("SHOW CREATE TABLE %s" % table)
                    out[table] = cur.fetchone()[1]
                cur.execute("SELECT version, name, applied_at FROM schema_version ORDER BY version")
                out["versions"] = cur.fetchall()
                return out
        finally:
            conn.close()

    async def test_second_apply_changes_nothing(self):
        before = await self.describe()
        self.assertEqual([v[:2] for v in before["versions"]], [(1, "message"), (2, "orders"), (3, "accept_order"),
                                                               (4, "receipts"), (5, "message_by_ts"),
                                                               (6, "order_conversation")])
        self.assertIn("KEY `message_by_ts` (`ts`)", before["message"])
        result = await threads.deferToThread(apply_schema, self.mysql_settings)
        self.assertEqual(result, (6, 6))
        self.assertEqual(await self.describe(), before)

    async def test_cli_applies_and_is_idempotent(self):
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(settings_text({"mysql": {"database": self.mysql_settings.database}}))
        await query(self.mysql_settings, "DROP DATABASE `%s`" % self.mysql_settings.database)
        argv = ["-m", "imd.admin", "--config", config, "schema", "apply"]
        out, err, code = await utils.getProcessOutputAndValue(sys.executable, argv, env=os.environ, path=ROOT)
        self.assertEqual(code, 0, err)
        self.assertIn(b"upgraded from version 0 to 6", out)
        out, err, code = await utils.getProcessOutputAndValue(sys.executable, argv, env=os.environ, path=ROOT)
        self.assertEqual(code, 0, err)
        self.assertIn(b"at version 6; nothing to do", out)

    async def test_cli_mysql_away_is_one_line(self):
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(settings_text({"mysql": {"database": self.mysql_settings.database, "port": str(free_port())}}))
        argv = ["-m", "imd.admin", "--config", config, "schema", "apply"]
        out, err, code = await utils.getProcessOutputAndValue(sys.executable, argv, env=os.environ, path=ROOT)
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(b"mysql", err)


class SchemaUpgradeTests(MysqlTestMixin, unittest.TestCase):
    schema_upto = 1

    async def test_older_database_is_upgraded(self):
        tables = await query(self.mysql_settings, "SHOW TABLES")
        self.assertEqual(sorted(t for (t,) in tables), ["message", "schema_version"])
        # a row written at version 1 survives the upgrade
        await query(self.mysql_settings,
                    "INSERT INTO message (msg_id, from_id, to_id, type, msg, ts, packet)"
                    " VALUES ('1', 1, 2, 't', 'x', 5, '{}')")
        result = await threads.deferToThread(apply_schema, self.mysql_settings)
        self.assertEqual(result, (1, 6))
        tables = await query(self.mysql_settings, "SHOW TABLES")
        self.assertEqual(sorted(t for (t,) in tables), ["message", "order_conversation", "orders", "receipt",
                                                          "schema_version"])
        rows = await query(self.mysql_settings, "SELECT COUNT(*) FROM message")
        self.assertEqual(rows[0][0], 1)
        # the older row keeps its place in history: its insertion order
        rows = await query(self.mysql_settings, "SELECT seq = accept_seq FROM message")
        self.assertEqual(rows[0][0], 1)
        # one system event id may now go to two recipients
        await query(self.mysql_settings,
                    "INSERT INTO message (msg_id, from_id, to_id, type, msg, ts, packet)"
                    " VALUES ('closed-1', 0, 2, 's', '{}', 5, '{}'), ('closed-1', 0, 3, 's', '{}', 5, '{}')")

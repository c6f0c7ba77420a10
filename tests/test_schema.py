"""``imd-admin schema apply``: creates the database, upgrades an older one,
and a second run changes nothing."""

import os
import re
import sys

import pymysql
from twisted.internet import threads, utils
from twisted.trial import unittest

from imd.stores.mysql import MessageRows, MysqlStore, apply_schema, connect_kwargs, migrations, split_statements
from imd.stores.mysql_check import check_login
from tests.mysql_support import MysqlTestMixin, mysql_settings, query
from tests.support import free_port, make_settings, settings_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SchemaFilesTests(unittest.SynchronousTestCase):
    def test_numbered_in_order(self):
        found = migrations()
        versions = [v for v, _, _ in found]
        self.assertEqual(versions, list(range(1, versions[-1] + 1)))
        self.assertEqual([n for _, n, _ in found][:2], ["message", "orders"])

    def test_split_statements(self):
        text = "-- a comment; with a semicolon\nCREATE TABLE a (x INT);\n\nCREATE TABLE b (\n y INT\n);\n"
        self.assertEqual(split_statements(text), ["CREATE TABLE a (x INT)", "CREATE TABLE b (\n y INT\n)"])


class SchemaApplyTests(MysqlTestMixin, unittest.TestCase):

    def describe(self):
        return threads.deferToThread(self._describe_sync, ("schema_version", "message", "orders", "receipt",
                                                                     "order_conversation", "room_message",
                                                                     "room_recall"))

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
                                                               (6, "order_conversation"), (7, "stream_positions"),
                                                               (8, "recall"), (9, "rooms"), (10, "room_recall"),
                                                               (11, "room_retention")])
        self.assertIn("KEY `message_by_ts` (`ts`)", before["message"])
        self.assertIn("KEY `message_recipient_pos` (`to_id`,`accept_seq`)", before["message"])
        self.assertIn("KEY `message_sender_pos` (`from_id`,`accept_seq`)", before["message"])
        self.assertIn("KEY `message_by_pos` (`accept_seq`)", before["message"])
        self.assertIn("KEY `room_message_by_ts` (`ts`)", before["room_message"])
        self.assertIn("KEY `room_recall_by_ts` (`ts`)", before["room_recall"])
        result = await threads.deferToThread(apply_schema, self.mysql_settings)
        self.assertEqual(result, (11, 11))
        self.assertEqual(await self.describe(), before)

    async def test_cli_applies_and_is_idempotent(self):
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(settings_text({"mysql": {"database": self.mysql_settings.database}}))
        await query(self.mysql_settings, "DROP DATABASE `%s`" % self.mysql_settings.database)
        argv = ["-m", "imd.admin", "--config", config, "schema", "apply"]
        out, err, code = await utils.getProcessOutputAndValue(sys.executable, argv, env=os.environ, path=ROOT)
        self.assertEqual(code, 0, err)
        self.assertIn(b"upgraded from version 0 to 11", out)
        out, err, code = await utils.getProcessOutputAndValue(sys.executable, argv, env=os.environ, path=ROOT)
        self.assertEqual(code, 0, err)
        self.assertIn(b"at version 11; nothing to do", out)

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
        self.assertEqual(result, (1, 11))
        tables = await query(self.mysql_settings, "SHOW TABLES")
        self.assertEqual(sorted(t for (t,) in tables), ["log_mark", "message", "order_conversation", "orders",
                                                          "receipt", "room_message", "room_read", "room_recall",
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


def readme_grants():
    """The SQL block of README.md's "MySQL user" section, one statement each."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    part = text[text.index("### MySQL user"):]
    block = re.search(r"```sql\n(.*?)```", part, re.S).group(1)
    return [s for s in split_statements(block)]


def _as_root(*statements):
    import pymysql
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        conn.commit()
    finally:
        conn.close()


class ReadmeGrantTests(unittest.TestCase):
    """Issue 22 item 4: the GRANTs README.md names are enough: ``schema
    apply`` as the schema user makes a database from nothing, and imd's own
    user stores, reads, and purges messages, reads orders and passes the
    start-up login check, with nothing more."""

    async def test_the_readme_grants_are_enough(self):
        tag = "%d_%s" % (os.getpid(), os.urandom(3).hex())
        database, names = "imd_t22_grants_" + tag, {"imd": "imd_t22_run_" + tag, "imd_schema": "imd_t22_sch_" + tag}
        passwords = {name: "pw-" + user for name, user in names.items()}
        statements = []
        for statement in readme_grants():
            statement = statement.replace("`imd`.*", "`%s`.*" % database)
            for name, user in names.items():
                statement = statement.replace("'%s'@'127.0.0.1'" % name, "'%s'@'127.0.0.1'" % user)
            statement = re.sub(r"IDENTIFIED BY '[^']*'", "IDENTIFIED BY '@PASSWORD@'", statement)
            user = re.search(r"CREATE USER '(\w+)'", statement)
            if user:
                name = [n for n, u in names.items() if u == user.group(1)][0]
                statement = statement.replace("@PASSWORD@", passwords[name])
            statements.append(statement)
        self.assertEqual(len(statements), 4, statements)
        self.assertEqual([s.split()[0] for s in statements], ["CREATE", "GRANT", "CREATE", "GRANT"])
        self.addCleanup(threads.deferToThread, _as_root, "DROP DATABASE IF EXISTS `%s`" % database,
                        *["DROP USER IF EXISTS '%s'@'127.0.0.1'" % user for user in names.values()])
        await threads.deferToThread(_as_root, *statements)

        schema = mysql_settings(user=names["imd_schema"], password=passwords["imd_schema"], database=database)
        before, after = await threads.deferToThread(apply_schema, schema)
        self.assertEqual((before, after), (0, migrations()[-1][0]))

        own = mysql_settings(user=names["imd"], password=passwords["imd"], database=database)
        self.assertIsNone(await threads.deferToThread(check_login, own))
        store = MysqlStore(own)
        store.startService()
        self.addCleanup(store.stopService)
        packet = '{"id": "m1", "from": 1, "to": 2, "type": "t", "msg": "hi", "ts": 5}'
        inserted = await store.insert_entries([("m1", 1, 2, "t", "hi", 5, 1, packet)], [(1, "m1", 2, 2, 6, 2)])
        self.assertEqual(inserted, (1, 1))
        self.assertEqual([row[3] for row in await store.history(2, None, (0, None), 10)], [b"m1"])
        self.assertEqual(await store.message_states(1, 2, ["m1"]), {"m1": 2})
        await threads.deferToThread(_as_root, "INSERT INTO `%s`.orders (id, customer_id, courier_id) VALUES "
                                              "(42, 2, 1)" % database)
        orders = make_settings().orders
        self.assertEqual(await store.order_parties(orders, 42), (2, 1))
        # T and the close record the order's conversation in imd's own table (an upsert)
        await store.record_taken(42, 2, 1, None, 7)
        await store.record_closed(42, 2, 1, None, 7, 8, 9)
        self.assertEqual((await store.order_conversation(42)).closed_at, 8)
        self.assertEqual(await MessageRows(store).purge_older(10, 100), (1, 1))
        # and nothing beyond: imd's own user cannot change the schema
        with self.assertRaises(pymysql.err.OperationalError):
            await threads.deferToThread(_as_user, own, "ALTER TABLE message ADD COLUMN x INT")


def _as_user(settings, statement):
    conn = pymysql.connect(**connect_kwargs(settings))
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()

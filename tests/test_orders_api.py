"""Orders from the platform's backend (contract v3 §9, last paragraph):
``POST /IM/api/orders`` writes the row ``T`` reads, so a platform that does
not share imd's database can still open order conversations; and
``[orders] table`` naming another database's table (``platform.orders``),
read by imd's own MySQL user, checked at start-up.

Everything through real HTTP, real WebSocket clients, real Redis and a real
second MariaDB database made by the test (its name is this run's test
database's plus ``_platform``, dropped by the test and, for a run that died,
by tests.isolation)."""

import dataclasses
import os

import pymysql
from twisted.internet import defer, threads
from twisted.trial import unittest

from imd.admin.console import AdminError
from imd.errors import Refused
from imd.handlers.orders import OrderLifecycle
from imd.stores.mysql import connect_kwargs
from imd.stores.mysql_check import MysqlRefused, check_login
from tests.admin_support import AdminAppMixin
from tests.isolation import RUN
from tests.mysql_support import mysql_settings, query
from tests.test_api import API_KEY, ApiTestMixin
from tests.support import make_settings

PLATFORM_DB = RUN.mysql_db() + "_platform"
# a MySQL user of this run only (name at most 32 characters), made and dropped by the tests that need it
READER = "imdt_%d_%s" % (os.getpid() % 100000, os.urandom(3).hex())
READER_PASSWORD = os.urandom(12).hex()

PLATFORM_TABLE = ("CREATE TABLE `%s`.orders (id BIGINT UNSIGNED NOT NULL PRIMARY KEY,"
                  " customer_id BIGINT UNSIGNED NOT NULL, courier_id BIGINT UNSIGNED NULL)" % PLATFORM_DB)


def as_root(*statements):
    """Blocking: run ``statements`` as root, outside any database; the last one's rows."""
    conn = pymysql.connect(**connect_kwargs(mysql_settings(), database=False))
    try:
        with conn.cursor() as cur:
            for statement in statements:
                if isinstance(statement, tuple):
                    cur.execute(*statement)
                else:
                    cur.execute(statement)
            rows = cur.fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def root(*statements):
    return threads.deferToThread(as_root, *statements)


class OrdersApiTests(ApiTestMixin, unittest.TestCase):
    """imd's own orders table, written by the API."""

    async def rows(self):
        return await query(self.mysql_settings, "SELECT id, customer_id, courier_id FROM orders ORDER BY id")

    async def put(self, body):
        return await self.api("POST", "orders", body)

    async def take(self, courier, order, packet_id="take"):
        """The reply to ``T``: its type, or its error code."""
        reply = await self.ask(courier, {"id": packet_id, "to": 0, "type": "T", "msg": order})
        return reply.get("code", reply["type"]), reply

    async def test_an_order_made_by_the_api_is_taken_with_t(self):
        customer, courier = await self.login(10), await self.login(20)
        response = await self.put({"order": 42, "customer": 10, "courier": 20})
        self.assertEqual((response.code, response.json()), (200, {"order": 42, "customer": 10, "courier": 20}))
        self.assertEqual(await self.rows(), ((42, 10, 20),))
        outcome, reply = await self.take(courier, 42)
        self.assertEqual((outcome, reply["msg"]), ("A", {"order": 42, "uid": 10}))
        taken = await customer.next()
        self.assertEqual((taken["type"], taken["msg"]), ("s", {"order": 42, "event": "taken", "courier": 20}))
        # the two talk now
        said = await self.ask(courier, {"id": "hi", "to": 10, "type": "t", "msg": "at the gate"})
        self.assertEqual(said["type"], "A", said)

    async def test_the_courier_may_come_later_and_null_clears_it(self):
        courier = await self.login(20)
        response = await self.put({"order": 42, "customer": 10})
        self.assertEqual(response.json(), {"order": 42, "customer": 10, "courier": None})
        self.assertEqual((await self.take(courier, 42, "t1"))[0], "forbidden")
        self.assertEqual((await self.put({"order": 42, "customer": 10, "courier": 21})).code, 200)
        self.assertEqual((await self.put({"order": 42, "customer": 10, "courier": None})).json(),
                         {"order": 42, "customer": 10, "courier": None})
        self.assertEqual(await self.rows(), ((42, 10, None),))
        self.assertEqual((await self.take(courier, 42, "t2"))[0], "forbidden")
        self.assertEqual((await self.put({"order": 42, "customer": 10, "courier": 20})).code, 200)
        self.assertEqual((await self.take(courier, 42, "t3"))[0], "A")

    async def test_bad_ids_are_400_naming_the_field_and_change_nothing(self):
        await self.put({"order": 42, "customer": 10, "courier": 20})
        for field in ("order", "customer", "courier"):
            for value in (True, False, 1.5, 7.0, "7", 0, -1, 2 ** 63, [7], {"id": 7}):
                body = {"order": 42, "customer": 10, "courier": 20}
                body[field] = value
                if field == "order":
                    body["customer"] = 11   # would change the row, were it taken
                response = await self.put(body)
                self.assert_error(response, 400, field + ":")
        for body in ({"customer": 10}, {"order": 42}, {"order": 42, "customer": None},
                     {"order": 42, "customer": 10, "courier": 10}, {"order": 42, "customer": 11, "extra": 1}):
            self.assert_error(await self.put(body), 400)
        self.assert_error(await self.put(b"[42, 10]"), 400, "JSON object")
        self.assertEqual(await self.rows(), ((42, 10, 20),))
        self.assert_error(await self.api("POST", "orders", {"order": 42, "customer": 10}, headers={}), 401)
        self.assert_error(await self.api("GET", "orders"), 405)

    async def test_a_taken_order_keeps_its_courier_and_customer(self):
        customer, courier, other = await self.login(10), await self.login(20), await self.login(21)
        await self.put({"order": 42, "customer": 10, "courier": 20})
        self.assertEqual((await self.take(courier, 42))[0], "A")
        await customer.next()   # taken
        for body in ({"order": 42, "customer": 10, "courier": 21}, {"order": 42, "customer": 10, "courier": None},
                     {"order": 42, "customer": 11, "courier": 20}):
            self.assert_error(await self.put(body), 409, "was taken by courier 20 for customer 10")
        self.assertEqual(await self.rows(), ((42, 10, 20),))
        self.assertEqual((await self.take(other, 42))[0], "forbidden")
        # a retry of what the order is: 200, nothing changes
        again = await self.put({"order": 42, "customer": 10, "courier": 20})
        self.assertEqual((again.code, again.json()), (200, {"order": 42, "customer": 10, "courier": 20}))
        # also once Redis's record is gone (MySQL's order_conversation decides)
        await self.redis.delete("order:42")
        self.assert_error(await self.put({"order": 42, "customer": 10, "courier": 21}), 409, "was taken")
        self.assertEqual(await self.rows(), ((42, 10, 20),))

    async def test_a_closed_order_can_no_longer_change(self):
        courier = await self.login(20)
        await self.put({"order": 42, "customer": 10, "courier": 20})
        self.assertEqual((await self.take(courier, 42))[0], "A")
        self.assertEqual((await self.api("POST", "orders/42/close")).code, 200)
        self.assert_error(await self.put({"order": 42, "customer": 10, "courier": 21}), 409, "order 42 is closed")
        self.assertEqual((await self.put({"order": 42, "customer": 10, "courier": 20})).code, 200)
        # closed before any T: it cannot get a courier now (its T would be forbidden)
        await self.put({"order": 43, "customer": 11})
        self.assertEqual((await self.api("POST", "orders/43/close")).code, 200)
        self.assert_error(await self.put({"order": 43, "customer": 11, "courier": 20}), 409, "order 43 is closed")
        self.assertEqual((await self.put({"order": 43, "customer": 11, "courier": None})).code, 200)
        self.assertEqual(await self.rows(), ((42, 10, 20), (43, 11, None)))
        self.assertEqual((await self.take(courier, 43))[0], "forbidden")

    async def test_a_t_that_wins_the_race_with_a_reassignment_undoes_it(self):
        # T read the row (courier 20) before the put wrote courier 21, and took
        # the order after the put's first check: the put is undone, 409
        app = self.http.app
        await self.put({"order": 42, "customer": 10, "courier": 20})

        class RacingRows:
            def __getattr__(self, name):
                return getattr(app.mysql, name)

            async def _create(self, *args):
                before = await app.mysql.create_order(*args)
                if args[3] == 21:   # the reassignment: T lands now
                    await app.orders.take_order(42, 20, 10, b'{"id":"taken-42"}', 1000)
                return before

            def create_order(self, *args):
                return defer.ensureDeferred(self._create(*args))

        lifecycle = OrderLifecycle(app.orders, RacingRows(), app.settings.orders, app.node, app.clock, 3600)
        with self.assertRaises(Refused) as caught:
            await lifecycle.put(42, 10, 21)
        self.assertEqual(caught.exception.status, 409)
        self.assertEqual(await self.rows(), ((42, 10, 20),))

    async def test_a_t_that_read_the_row_before_a_reassignment_cannot_take_it_after(self):
        # The race the token closes (docs/reliability.md): courier 20's T reads
        # the row (courier 20), is held there while the reassignment to 21 is
        # written and answered 200, then takes.  Without the token it took the
        # order for 20 while the row said 21; now its take is refused, it reads
        # again, and is forbidden: the conversation is 21's.
        app = self.http.app
        customer, courier, other = await self.login(10), await self.login(20), await self.login(21)
        await self.put({"order": 42, "customer": 10, "courier": 20})
        handler = app.handlers["T"].__self__
        rows, read, go = handler._orders_db, defer.Deferred(), defer.Deferred()
        test = self

        class HeldRows:
            def __getattr__(self, name):
                return getattr(rows, name)

            async def _read(self, *args):
                result = await rows.order_for_take(*args)
                if not read.called:   # the first read only: hold the T between its read and its take
                    test.assertEqual(result[0], (10, 20))
                    read.callback(None)
                    await go
                return result

            def order_for_take(self, *args):
                return defer.ensureDeferred(self._read(*args))

        handler._orders_db = HeldRows()
        taking = defer.ensureDeferred(self.take(courier, 42))
        await read
        response = await self.put({"order": 42, "customer": 10, "courier": 21})
        self.assertEqual((response.code, response.json()), (200, {"order": 42, "customer": 10, "courier": 21}))
        go.callback(None)
        outcome, reply = await taking
        self.assertEqual(outcome, "forbidden", reply)
        self.assertIn("not yours", reply["msg"])
        self.assertEqual(await self.rows(), ((42, 10, 21),))
        self.assertFalse(await self.redis.exists("order:42"))
        # the courier the API named takes it, and the customer is told of that one
        self.assertEqual((await self.take(other, 42))[0], "A")
        taken = await customer.next()
        self.assertEqual(taken["msg"], {"order": 42, "event": "taken", "courier": 21})

    async def test_the_http_docs_close_example_works_on_a_fresh_install(self):
        # docs/http.md: create the order first, then close it
        response = await self.put({"order": 42, "customer": 1001, "courier": 2002})
        self.assertEqual(response.code, 200)
        closed = await self.api("POST", "orders/42/close")
        self.assertEqual((closed.code, sorted(closed.json())), (200, ["ends_at", "order"]), closed)

    async def test_metrics_count_the_endpoint(self):
        await self.put({"order": 42, "customer": 10})
        text = self.http.app.metrics.exposition().decode()
        self.assertIn('imd_api_requests_total{endpoint="orders",status="200"} 1.0', text)


class PlatformDatabaseMixin:
    """``[orders] table = <run's db>_platform.orders``: a real second database."""

    async def make_platform_database(self):
        await root("DROP DATABASE IF EXISTS `%s`" % PLATFORM_DB, "CREATE DATABASE `%s`" % PLATFORM_DB, PLATFORM_TABLE)
        self.addCleanup(root, "DROP DATABASE IF EXISTS `%s`" % PLATFORM_DB)

    async def make_reader(self, *grants):
        """imd's own user as the README grants it, plus ``grants`` on the platform's database."""
        database = mysql_settings().database
        await root("DROP USER IF EXISTS '%s'@'127.0.0.1'" % READER,
                   "CREATE USER '%s'@'127.0.0.1' IDENTIFIED BY '%s'" % (READER, READER_PASSWORD),
                   "GRANT SELECT, INSERT, UPDATE, DELETE ON `%s`.* TO '%s'@'127.0.0.1'" % (database, READER),
                   *["GRANT %s TO '%s'@'127.0.0.1'" % (grant, READER) for grant in grants])
        self.addCleanup(root, "DROP USER IF EXISTS '%s'@'127.0.0.1'" % READER)
        return dataclasses.replace(mysql_settings(), user=READER, password=READER_PASSWORD)


class CrossDatabaseTests(PlatformDatabaseMixin, ApiTestMixin, unittest.TestCase):
    overrides = dict(ApiTestMixin.overrides, orders={"table": PLATFORM_DB + ".orders"})

    async def setUp(self):
        await super().setUp()
        await self.make_platform_database()

    async def test_t_reads_the_platform_table_and_the_api_writes_it(self):
        await root(("INSERT INTO `%s`.orders VALUES (42, 10, 20)" % PLATFORM_DB,))
        customer, courier = await self.login(10), await self.login(20)
        reply = await self.ask(courier, {"id": "take", "to": 0, "type": "T", "msg": 42})
        self.assertEqual((reply["type"], reply["msg"]), ("A", {"order": 42, "uid": 10}))
        self.assertEqual((await customer.next())["msg"]["event"], "taken")
        response = await self.api("POST", "orders", {"order": 43, "customer": 11, "courier": 20})
        self.assertEqual(response.code, 200, response)
        self.assertEqual(await root("SELECT id, customer_id, courier_id FROM `%s`.orders ORDER BY id" % PLATFORM_DB),
                         ((42, 10, 20), (43, 11, 20)))
        # imd's own database has no such row
        self.assertEqual(await query(self.mysql_settings, "SELECT COUNT(*) FROM orders"), ((0,),))
        self.assert_error(await self.api("POST", "orders", {"order": 42, "customer": 10, "courier": 21}), 409)


class ReadOnlyPlatformTableTests(PlatformDatabaseMixin, ApiTestMixin, unittest.TestCase):
    """imd's user may only read the platform's table: T works, the API's write is 403 and changes nothing."""
    overrides = dict(ApiTestMixin.overrides, orders={"table": PLATFORM_DB + ".orders"},
                     mysql={"user": READER, "password": READER_PASSWORD})

    async def setUp(self):
        # the user and its grants before the App starts (its pool logs in as READER)
        await self.make_platform_database()
        await self.make_reader("SELECT ON `%s`.orders" % PLATFORM_DB)
        await super().setUp()

    async def test_t_works_and_the_api_write_is_403(self):
        await root(("INSERT INTO `%s`.orders VALUES (42, 10, 20)" % PLATFORM_DB,))
        courier = await self.login(20)
        reply = await self.ask(courier, {"id": "take", "to": 0, "type": "T", "msg": 42})
        self.assertEqual(reply["type"], "A", reply)
        for body in ({"order": 43, "customer": 11}, {"order": 42, "customer": 10, "courier": 20}):
            self.assert_error(await self.api("POST", "orders", body), 403, "may not write %s.orders" % PLATFORM_DB)
        self.assertEqual(await root("SELECT id, customer_id, courier_id FROM `%s`.orders" % PLATFORM_DB),
                         ((42, 10, 20),))


class StartupCheckTests(PlatformDatabaseMixin, unittest.TestCase):
    """At start-up (imd.stores.mysql_check): imd's user must be able to read the platform's table."""

    def setUp(self):
        from tests.http_support import ensure_test_database
        return threads.deferToThread(ensure_test_database)

    async def check(self, login, table=None):
        orders = make_settings({"orders": {"table": table or PLATFORM_DB + ".orders"}}).orders
        return await threads.deferToThread(check_login, login, "etc/imd.ini", orders)

    async def refusal(self, login, table=None):
        try:
            await self.check(login, table)
        except MysqlRefused as e:
            line = str(e)
            self.assertNotIn("\n", line)
            self.assertIn("[orders] table", line)
            self.assertIn("etc/imd.ini", line)
            return line
        self.fail("check_login accepted an unreadable [orders] table")

    async def test_a_user_without_select_is_one_line(self):
        await self.make_platform_database()
        login = await self.make_reader()
        line = await self.refusal(login)
        self.assertIn("cannot read [orders] table %s.orders" % PLATFORM_DB, line)
        self.assertIn("GRANT SELECT ON `%s`.`orders`" % PLATFORM_DB, line)
        await root("GRANT SELECT ON `%s`.orders TO '%s'@'127.0.0.1'" % (PLATFORM_DB, READER))
        self.assertIsNone(await self.check(login))

    async def test_missing_database_table_or_column(self):
        login = mysql_settings()   # root: it could read anything that exists
        await self.refusal(login)   # no such database yet
        await self.make_platform_database()
        self.assertIsNone(await self.check(login))
        await self.refusal(login, PLATFORM_DB + ".order_rows")
        orders = make_settings({"orders": {"table": PLATFORM_DB + ".orders", "courier_column": "rider"}}).orders
        with self.assertRaises(MysqlRefused):
            await threads.deferToThread(check_login, login, "etc/imd.ini", orders)

    async def test_imds_own_table_is_left_to_schema_apply(self):
        # an unqualified table lives in imd's database, made by schema apply: not checked here
        self.assertIsNone(await self.check(mysql_settings(), "no_such_table"))


class DaemonStartupTests(PlatformDatabaseMixin, unittest.TestCase):
    """``twistd -n imd`` with an unreadable platform table: one line, exit 1."""

    async def test_twistd_stops_with_one_line(self):
        from tests.daemon_support import spawn_daemon, write_config
        login = await self.make_reader()
        path = write_config(self, {"orders": {"table": PLATFORM_DB + ".orders"},
                                   "mysql": {"user": login.user, "password": login.password},
                                   "http": {"api_key": API_KEY}})
        daemon = spawn_daemon(self, path)
        daemon.listening.addErrback(lambda _: None)   # it is not meant to
        code = await daemon.wait_ended()
        lines = daemon.stderr.decode().splitlines()
        self.assertEqual((code, len(lines)), (1, 1), daemon.stderr.decode() + daemon.output())
        self.assertNotIn("Traceback", daemon.output())
        self.assertTrue(lines[0].startswith("imd: mysql at 127.0.0.1:3306: user '%s' cannot read [orders] table "
                                            "%s.orders (1142: " % (READER, PLATFORM_DB)), lines[0])
        self.assertIn(path, lines[0])
        self.assertNotIn("taking logins", daemon.output())


class AdminOrderCreateTests(AdminAppMixin, unittest.TestCase):
    """``imd-admin order create`` follows the API's rules (imd.handlers.orders.OrderLifecycle.put)."""

    async def test_create_update_and_a_taken_order_is_one_line(self):
        out, _, _ = await self.admin("order", "create", "42", "10")
        self.assertEqual(out, "order 42: customer 10, no courier yet\n")
        out, _, _ = await self.admin("order", "create", "42", "10", "--courier", "20")
        self.assertEqual(out, "order 42: customer 10, courier 20\n")
        # the order's first T, as the ws node records it
        self.assertEqual((await self.app.orders.take_order(42, 20, 10, b'{"id":"taken-42"}', 1000)).outcome, "taken")
        with self.assertRaises(AdminError) as caught:
            await self.admin("order", "create", "42", "10", "--courier", "21")
        self.assertIn("order 42 was taken by courier 20 for customer 10", str(caught.exception))
        self.assertEqual(await query(self.mysql_settings, "SELECT id, customer_id, courier_id FROM orders"),
                         ((42, 10, 20),))

"""``imd-admin export``: a conversation exactly as ``H`` pages it (messages
in MySQL and still in Redis, each with its receipt state), an order's
conversation, CSV, and 100,000 rows in a bounded amount of memory."""

import csv
import io
import json
import os
import platform
import sys

from twisted.internet import reactor, threads, utils
from twisted.trial import unittest

from imd import protocol
from imd.admin import export as admin_export
from imd.errors import AdminError
from imd.handlers.history import HistoryHandler
from imd.messagelog.entry import id_json, receipt_entry_parts
from imd.stores.mysql import connect_kwargs
from tests.admin_support import ADMIN, ROOT, AdminAppMixin
from tests.mysql_support import query
from tests.test_history import store_entries

# Peak RSS an export of 100,000 rows may add to one of 100 rows.  Measured:
# CPython +2 MB (a buffered cursor, every row in memory at once: +69 MB);
# PyPy +18 MB, its JIT and GC warming up (buffered: +89 MB).
MEMORY_BOUND_KB = (45 if platform.python_implementation() == "PyPy" else 20) * 1024


async def history(app, uid, with_uid=None):
    """Every item ``H`` gives ``uid``, paged through to the end."""
    handler = HistoryHandler(app.messages, app.mysql)
    items, packet = [], protocol.HistoryPacket("h", since=0, limit=protocol.HISTORY_MAX_LIMIT, with_uid=with_uid)
    while True:
        reply = json.loads((await handler.handle(uid, packet)).frame)
        items += reply["msg"]
        if not reply["more"]:
            return items
        packet = protocol.HistoryPacket("h", after=reply["next"])


def receipt_entry(reader, sender, state, ids, ts):
    head, tail = receipt_entry_parts("r%d" % ts, reader, sender, state, ts)
    return (head + b",".join(id_json(i) for i in ids) + tail).decode("utf-8")


def insert_rows(settings, count, sender=1, to=2, ts0=1_600_000_000_000):
    """``count`` messages between ``sender`` and ``to`` (both ways), straight
    into MySQL, every third one read."""
    import pymysql
    conn = pymysql.connect(**connect_kwargs(settings))
    try:
        with conn.cursor() as cur:
            for start in range(0, count, 5000):
                rows, receipts = [], []
                for i in range(start, min(count, start + 5000)):
                    a, b = (sender, to) if i % 2 else (to, sender)
                    text = "message number %d of a long conversation, with some words in it to make it real" % i
                    packet = protocol.message_json(protocol.MessagePacket("x%d" % i, "t", b, text), a, ts0 + i)
                    rows.append(("x%d" % i, a, b, "t", text, ts0 + i, i + 1, packet.decode("utf-8")))
                    if i % 3 == 0:
                        receipts.append((a, "x%d" % i, b, 2, ts0 + i + 5, i + 1))
                cur.executemany("INSERT INTO message (msg_id, from_id, to_id, type, msg, ts, accept_seq, packet)"
                                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", rows)
                cur.executemany("INSERT INTO receipt (from_id, msg_id, to_id, state, ts, accept_seq)"
                                " VALUES (%s,%s,%s,%s,%s,%s)", receipts)
                conn.commit()
    finally:
        conn.close()


class ExportTests(AdminAppMixin, unittest.TestCase):

    async def conversation(self):
        """Messages 1 <-> 2 and 1 <-> 3 in MySQL (some with receipts), more
        still in Redis with receipt entries about both kinds."""
        now = int(reactor.seconds() * 1000)
        for n in range(30):
            await self.send(1 + n % 2, 2 - n % 2, "a%d" % n, "migrated %d" % n, ts=now - 100000 + n)
            await self.send(1, 3, "c%d" % n, "to three %d" % n, ts=now - 100000 + n)
        await self.migrate()
        await query(self.mysql_settings, "INSERT INTO receipt VALUES (2, 'a1', 1, 1, %d, 999)" % now,
                    "INSERT INTO receipt VALUES (1, 'a4', 2, 2, %d, 999)" % now)
        for n in range(5):
            await self.send(2, 1, "p%d" % n, "pending %d" % n, ts=now - 1000 + n)
        await self.send(1, 2, 42, {"structured": True}, ts=now - 500)
        await store_entries(self.redis, [receipt_entry(1, 2, 2, ["p1", "a3"], now - 10),
                                         receipt_entry(2, 1, 1, [42], now - 5)])

    async def exported(self, *argv):
        out, _, progress_text = await self.admin("export", *argv)
        return [json.loads(line) for line in out.splitlines()], progress_text

    async def test_matches_history(self):
        await self.conversation()
        items, progress_text = await self.exported("--user", "1", "--with", "2")
        self.assertEqual(items, await history(self.app, 1, 2))
        self.assertEqual(len(items), 36)
        states = {item["id"]: item["state"] for item in items}
        self.assertEqual((states["a1"], states["a4"], states["p1"], states["a3"], states[42], states["p0"]),
                         ("delivered", "read", "read", "read", "delivered", "sent"))
        self.assertIn("export: user 1 with 2, 1970-01-01T00:00:00.000Z .. now: 36 messages", progress_text)
        everything, _ = await self.exported("--user", "1")
        self.assertEqual(everything, await history(self.app, 1))
        self.assertEqual(len(everything), 66)

    async def test_a_window(self):
        await self.conversation()
        items = await history(self.app, 1, 2)
        since, until = items[10]["ts"], items[20]["ts"]
        window, _ = await self.exported("--user", "1", "--with", "2", "--since", str(since), "--until", str(until))
        self.assertEqual(window, [i for i in items if since <= i["ts"] < until])
        self.assertEqual(len(window), 10)

    async def test_csv(self):
        await self.conversation()
        out, _, _ = await self.admin("export", "--user", "2", "--with", "1", "--format", "csv")
        rows = list(csv.reader(io.StringIO(out)))
        self.assertEqual(rows[0], ["ts", "time", "from", "to", "id", "type", "state", "msg"])
        self.assertEqual(len(rows), 37)
        by_id = {row[4]: row for row in rows[1:]}
        self.assertEqual(by_id["a1"][2:], ["2", "1", "a1", "t", "delivered", "migrated 1"])
        self.assertEqual(by_id["42"][2:], ["1", "2", "42", "t", "delivered", '{"structured":true}'])
        self.assertRegex(by_id["a1"][1], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    async def test_an_order(self):
        now = int(reactor.seconds() * 1000)
        await self.send(7, 8, "before", "before the order", ts=now - 60000)
        taken = protocol.system_message_json("taken-55", 8, 7, {"order": 55, "event": "taken", "courier": 8},
                                             now - 50000)
        self.assertEqual((await self.app.orders.take_order(55, 8, 7, taken, now - 50000)).outcome, "taken")
        await self.send(7, 8, "o1", "where are you?", ts=now - 40000)
        await self.send(8, 7, "o2", "at the door", ts=now - 30000)
        await self.send(7, 9, "other", "someone else", ts=now - 30000)
        await self.migrate()
        await self.send(7, 8, "o3", "thanks", ts=now - 20000)
        await self.app.order_lifecycle.close(55)
        items, _ = await self.exported("--order", "55")
        # the closed events: the courier's first (stored first), both still in Redis
        self.assertEqual([(i["from"], i["to"], i["id"]) for i in items],
                         [(8, 7, "taken-55"), (7, 8, "o1"), (8, 7, "o2"), (7, 8, "o3"),
                          (0, 8, "closed-55"), (0, 7, "closed-55")])
        self.assertEqual(items[0]["msg"], {"order": 55, "event": "taken", "courier": 8})

    async def test_an_order_without_a_record(self):
        with self.assertRaises(AdminError) as caught:
            await self.admin("export", "--order", "56")
        self.assertIn("order 56 has no record in Redis", str(caught.exception))

    async def test_a_reader_that_goes_away(self):
        # more than a pipe holds, so the export is still writing when head exits
        await threads.deferToThread(insert_rows, self.mysql_settings, 3000)
        command = "%s --config %s export --user 1 | head -n 1" % (ADMIN, self.config_file())
        out, err, code = await utils.getProcessOutputAndValue("/bin/sh", ["-c", command], env=dict(os.environ),
                                                              path=ROOT)
        self.assertEqual(len(out.splitlines()), 1)
        self.assertNotIn(b"Traceback", err)
        self.assertNotIn(b"Exception ignored", err)

    async def test_bad_arguments(self):
        out, err, code = await self.run_admin("export", "--user", "1", "--order", "2")
        self.assertEqual(code, 2)
        self.assertIn("argument --order: not allowed with argument --user", err.decode("utf-8"))
        out, err, code = await self.run_admin("export", "--user", "1", "--since", "1h", "--until", "2h")
        self.assertEqual((code, out), (1, b""))
        self.assertRegex(err.decode("utf-8"), r"^imd-admin: nothing to export: the window \S+ \.\. \S+ is empty\n$")


class LargeExportTests(AdminAppMixin, unittest.TestCase):

    async def peak_rss_kb(self, output, *argv):
        """The export run as its own process; the peak RSS of that process."""
        measure = ("import resource, subprocess, sys\n"
                   "with open(sys.argv[1], 'wb') as out:\n"
                   "    code = subprocess.call(sys.argv[2:], stdout=out, stderr=subprocess.DEVNULL)\n"
                   "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-c", measure, output, ADMIN, "--config", self.config_file(), "export"] + list(argv),
            env=dict(os.environ), path=ROOT)
        self.assertEqual(code, 0, err)
        status, peak = out.split()
        self.assertEqual(int(status), 0)
        return int(peak)

    async def test_100000_rows_in_bounded_memory_as_history_shows_them(self):
        await threads.deferToThread(insert_rows, self.mysql_settings, 100000)
        await threads.deferToThread(insert_rows, self.mysql_settings, 100, 5, 6)
        small = await self.peak_rss_kb(os.path.abspath(self.mktemp()), "--user", "5")
        path = os.path.abspath(self.mktemp())
        large = await self.peak_rss_kb(path, "--user", "1", "--with", "2")
        self.assertLess(large - small, MEMORY_BOUND_KB,
                        "peak RSS %d KB for 100,000 rows, %d KB for 100" % (large, small))
        with open(path, "rb") as f:
            exported = [json.loads(line) for line in f]
        self.assertEqual(len(exported), 100000)
        self.assertEqual(exported, await history(self.app, 1, 2))


class RoomExportTests(AdminAppMixin, unittest.TestCase):
    """``export --room``: a room's messages by seq, migrated and still in
    Redis, each once, a recalled one as its tombstone, paged through MySQL."""

    ROOM = "order:77"

    async def say(self, sender, packet_id, text, ts):
        head = protocol.room_message_head(packet_id, sender, self.ROOM, "t", text, ts)
        return await self.app.rooms.store(self.ROOM, sender, packet_id, head, ts)

    async def room(self, migrated, pending):
        now = int(reactor.seconds() * 1000)
        await self.app.room_admin.create(self.ROOM, [1, 2])
        for n in range(migrated):
            await self.say(1 + n % 2, "m%d" % n, "migrated %d" % n, now - 100000 + n)
        await self.migrate()
        for n in range(pending):
            await self.say(2, "p%d" % n, "pending %d" % n, now - 1000 + n)
        return now

    async def exported(self, *argv):
        out, _, progress_text = await self.admin("export", "--room", self.ROOM, *argv)
        return out, progress_text

    async def test_every_message_once_by_seq_with_tombstones(self):
        self.patch(admin_export, "ROOM_PAGE", 7)   # several pages of MySQL, a boundary inside a page
        await self.room(20, 5)
        # one migrated message recalled: its D still in Redis, the row in MySQL still with the text
        self.assertTrue(await self.app.recaller.delete_room(1, self.ROOM, "m4"))
        out, progress_text = await self.exported()
        items = [json.loads(line) for line in out.splitlines()]
        # the room's created/joined events are stored messages of the room too
        texts = [i for i in items if i["type"] == "t"]
        self.assertEqual([i["seq"] for i in items], list(range(1, len(items) + 1)))
        self.assertEqual([i["id"] for i in texts], ["m%d" % n for n in range(20)] + ["p%d" % n for n in range(5)])
        m4 = next(i for i in texts if i["id"] == "m4")
        self.assertEqual((m4["msg"], m4.get("recalled")), ("", True))
        self.assertEqual(next(i for i in texts if i["id"] == "p3")["msg"], "pending 3")
        self.assertNotIn("migrated 4", out)
        self.assertIn("export: room order:77, 1970-01-01T00:00:00.000Z .. now: %d messages" % len(items),
                      progress_text)

    async def test_csv_and_a_window(self):
        now = await self.room(6, 2)
        out, _ = await self.exported("--format", "csv", "--since", str(now - 100000 + 2),
                                     "--until", str(now - 1000 + 1))
        rows = list(csv.reader(io.StringIO(out)))
        self.assertEqual(rows[0], ["ts", "time", "room", "seq", "from", "id", "type", "msg"])
        self.assertEqual([row[5] for row in rows[1:]], ["m2", "m3", "m4", "m5", "p0"])
        m3 = rows[1:][1]
        self.assertEqual((m3[0], m3[2], m3[4], m3[6], m3[7]), (str(now - 100000 + 3), self.ROOM, "2", "t",
                                                               "migrated 3"))

    async def test_refusals(self):
        for bad in (".", "..", "a b"):
            out, err, code = await self.run_admin("export", "--room", bad)
            self.assertEqual(code, 2, bad)
            self.assertIn("a room id is 1-64 characters", err.decode("utf-8"))
        out, err, code = await self.run_admin("export", "--room", "r", "--user", "1")
        self.assertEqual(code, 2)
        self.assertIn("not allowed with argument", err.decode("utf-8"))
        out, err, code = await self.run_admin("export", "--room", "r", "--with", "1")
        self.assertEqual((code, out), (1, b""))
        self.assertIn("--with goes with --user, not --room", err.decode("utf-8"))

"""``imd-admin reconcile``: every message acked in a window is in MySQL once
-- and a row deleted by hand, or a duplicate inserted by hand, is found and
makes it exit non-zero.  Real Redis and MariaDB, messages stored as the
daemon stores them and migrated by the real migrator."""

from twisted.internet import reactor
from twisted.trial import unittest

from imd.admin.reconcile import EXIT_DISCREPANCY
from imd.stores.keys import Keys
from tests.admin_support import AdminAppMixin
from tests.mysql_support import query

DAY = 86400


def lines_of(out):
    return [line.strip() for line in out.splitlines()]


class ReconcileTests(AdminAppMixin, unittest.TestCase):
    # a day of dedup records, so that a record can be made to look hours old
    overrides = {"redis": {"dedup_ttl": str(DAY)}}

    async def stored_and_migrated(self, count=6):
        for n in range(count):
            await self.send(1, 2, "m%d" % n, "message %d" % n)
        await self.send(2, 1, 77, "a number for an id")
        await self.migrate()

    async def test_all_there(self):
        await self.stored_and_migrated()
        out, status, _ = await self.admin("reconcile", "--since", "10m")
        self.assertEqual(status, 0, out)
        lines = lines_of(out)
        self.assertIn("dedup records in the window:  7", lines)
        self.assertIn("in MySQL once:              7", lines)
        self.assertIn("missing:                    0", lines)
        self.assertIn("duplicated:                   0", lines)
        self.assertEqual(lines[-1], "result: OK: every acked message of the window is in MySQL once, or still queued")

    async def test_a_row_deleted_by_hand_is_missing(self):
        await self.stored_and_migrated()
        await query(self.mysql_settings, "DELETE FROM message WHERE msg_id = 'm3'")
        out, status, _ = await self.admin("reconcile", "--since", "10m")
        self.assertEqual(status, EXIT_DISCREPANCY, out)
        lines = lines_of(out)
        self.assertIn("missing:                    1", lines)
        self.assertIn("in MySQL once:              6", lines)
        missing = lines[lines.index("missing (acked, not in MySQL, not queued):") + 1]
        self.assertRegex(missing, r'^1 -> 2 id "m3"  accepted \d{4}-\d\d-\d\dT[\d:.]+Z  \(state sent\)$')
        self.assertEqual(lines[-1], "result: NOT OK: 1 missing, 0 duplicated")

    async def test_a_row_copied_under_another_id_is_a_duplicate(self):
        # the same message twice in history: its packet stored again under a new id
        await self.stored_and_migrated()
        await query(self.mysql_settings,
                    "INSERT INTO message (msg_id, from_id, to_id, type, msg, ts, accept_seq, packet)"
                    " SELECT 'm4-copy', from_id, to_id, type, msg, ts, accept_seq, packet FROM message"
                    " WHERE msg_id = 'm4'")
        out, status, _ = await self.admin("reconcile", "--since", "10m")
        self.assertEqual(status, EXIT_DISCREPANCY, out)
        lines = lines_of(out)
        self.assertIn("duplicated:                   1", lines)
        self.assertIn("missing:                    0", lines)
        seq = (await query(self.mysql_settings, "SELECT seq FROM message WHERE msg_id = 'm4-copy'"))[0][0]
        line = lines[lines.index("duplicated (history would show them more than once):") + 1]
        self.assertRegex(line, r'^1 -> 2 id "m4": stored as itself \(seq \d+\) and again in row seq %d under '
                               r'1 -> 2 id "m4-copy"$' % seq)

    async def test_one_id_stored_for_two_recipients_is_a_duplicate(self):
        # the unique key (from_id, msg_id, to_id) lets this in; imd never stores
        # one user id twice (its dedup record is per sender and id)
        await self.stored_and_migrated()
        await query(self.mysql_settings,
                    "INSERT INTO message (msg_id, from_id, to_id, type, msg, ts, accept_seq, packet)"
                    " SELECT msg_id, from_id, 9, type, msg, ts, accept_seq,"
                    " REPLACE(packet, '\"to\":2', '\"to\":9') FROM message WHERE msg_id = 'm1'")
        out, status, _ = await self.admin("reconcile", "--since", "10m")
        self.assertEqual(status, EXIT_DISCREPANCY, out)
        lines = lines_of(out)
        self.assertIn("duplicated:                   1", lines)
        self.assertIn("in MySQL once:              6", lines)
        line = lines[lines.index("duplicated (history would show them more than once):") + 1]
        self.assertRegex(line, r'^1 -> 2 id "m1": 2 rows \(seq \d+ to 2, seq \d+ to 9\)$')

    async def test_both_at_once_through_the_installed_program(self):
        await self.stored_and_migrated()
        await query(self.mysql_settings, "DELETE FROM message WHERE msg_id = 'm0'")
        await query(self.mysql_settings,
                    "INSERT INTO message (msg_id, from_id, to_id, type, msg, ts, accept_seq, packet)"
                    " SELECT '77-copy', from_id, to_id, type, msg, ts, accept_seq, packet FROM message"
                    " WHERE msg_id = '77'")
        out, err, code = await self.run_admin("reconcile", "--since=-10m")
        self.assertEqual(code, EXIT_DISCREPANCY, (out, err))
        text = out.decode("utf-8")
        self.assertIn('1 -> 2 id "m0"', text)
        self.assertIn('2 -> 1 id "77": stored as itself', text)
        self.assertIn("result: NOT OK: 1 missing, 1 duplicated", text)
        # no terminal: the progress is plain lines on stderr, ending with the totals
        self.assertRegex(err.decode("utf-8"), r"(?m)^reconcile: dedup records: [\d,]+ keys in 0:\d\d \(")
        self.assertNotIn(b"\r", err)

    async def test_still_queued_is_no_loss(self):
        await self.stored_and_migrated(2)
        await self.send(3, 4, "q1", "not migrated yet")
        await self.send(3, 4, "q2", "nor this one")
        out, status, _ = await self.admin("reconcile", "--since", "10m")
        self.assertEqual(status, 0, out)
        lines = lines_of(out)
        self.assertIn("dedup records in the window:  5", lines)
        self.assertIn("still queued:               2", lines)
        self.assertIn("queued entries in the window: 2 (MQ 2)", lines)
        queued = lines[lines.index("still queued (the migrator has not stored them yet):") + 1:]
        self.assertRegex(queued[0], r'^3 -> 4 id "q2"  accepted \S+  \(MQ\)$')
        self.assertRegex(queued[1], r'^3 -> 4 id "q1"  accepted \S+  \(MQ\)$')

    async def test_an_entry_lost_from_the_queue_is_missing(self):
        await self.stored_and_migrated(1)
        await self.send(3, 4, "lost", "dropped from MQ by hand")
        keys = Keys()
        await self.redis.delete(keys.mq, keys.pending(3), keys.pending(4))
        out, status, _ = await self.admin("reconcile", "--since", "10m")
        self.assertEqual(status, EXIT_DISCREPANCY, out)
        self.assertIn('3 -> 4 id "lost"', out)

    async def test_the_window_is_told_by_the_records_time_left(self):
        await self.stored_and_migrated(3)
        # m1's record as if written three hours ago; then its row goes
        keys = Keys()
        await self.redis.execute_command("PEXPIRE", keys.dedup(1, "m1", 2), (DAY - 3 * 3600) * 1000)
        await query(self.mysql_settings, "DELETE FROM message WHERE msg_id = 'm1'")
        out, status, _ = await self.admin("reconcile", "--since", "1h")
        self.assertEqual(status, 0, out)
        self.assertIn("dedup records in the window:  3", lines_of(out))
        out, status, _ = await self.admin("reconcile", "--since", "4h", "--until", "2h")
        self.assertEqual(status, EXIT_DISCREPANCY, out)
        self.assertIn("dedup records in the window:  1", lines_of(out))
        self.assertIn('1 -> 2 id "m1"', out)

    async def test_a_window_reaching_past_the_records_says_so(self):
        out, status, _ = await self.admin("reconcile", "--since", "2d")
        self.assertEqual(status, 0)
        self.assertIn("note: dedup records reach back [redis] dedup_ttl = 86400s", out)

    async def test_system_messages_are_per_recipient(self):
        head, tail = b'{"id":"ev1","from":0,"to":', b',"type":"s","msg":"hi","ts":%d}' % int(reactor.seconds() * 1000)
        await self.app.messages.store_system_messages("ev1", [5, 6], head, tail)
        await self.migrate()
        out, status, _ = await self.admin("reconcile", "--since", "10m")
        self.assertEqual(status, 0, out)
        self.assertIn("in MySQL once:              2", lines_of(out))
        await query(self.mysql_settings, "DELETE FROM message WHERE from_id = 0 AND to_id = 6")
        out, status, _ = await self.admin("reconcile", "--since", "10m")
        self.assertEqual(status, EXIT_DISCREPANCY, out)
        self.assertIn('0 -> 6 id "ev1"', out)
        self.assertIn("in MySQL once:              1", lines_of(out))

    async def test_bad_window(self):
        out, err, code = await self.run_admin("reconcile", "--since", "1h", "--until", "2h")
        self.assertEqual(code, 1)
        self.assertRegex(err.decode("utf-8"), r"^imd-admin: --since \(\S+\) must be before --until \(\S+\)\n$")
        out, err, code = await self.run_admin("reconcile", "--since", "yesterday")
        self.assertEqual(code, 2)
        self.assertIn("not a time: 'yesterday' (expected ISO 8601", err.decode("utf-8"))

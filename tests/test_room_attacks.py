"""Hostile input against rooms and the conversation list (contract v3 §9,
§10): replay tests of the attacks in docs/reliability.md, "Attacks and
hostile input", each against the real Redis and MySQL."""

from twisted.trial import unittest

from tests.test_migrator import FAST
from tests.test_rooms import ROOM, RoomTestMixin


class RoomHistoryBudgetTests(RoomTestMixin, unittest.TestCase):
    """``H {"room"}`` (and its cursor's pages) spent nothing of the user's
    ``H`` budget (``history_user_rate``): a member's connections each got
    their own ``history_rate``, every request reading the room's pending
    entries and MySQL.  It now takes from the same per-user budget as
    every other ``H``.  (A rate of 0.01/s: nothing refills while the test
    runs.)"""

    overrides = dict(FAST, websocket=dict(FAST["websocket"], history_user_rate="0.01", history_user_burst="4"))

    async def test_room_history_spends_the_users_budget_across_connections(self):
        await self.admin.create(ROOM, [1, 2])
        phone, web, bob = await self.login(1), await self.login(1), await self.login(2)
        for n in range(3):
            await self.send(bob, "m%d" % n, "text %d" % n)
        answers = []
        for client in (phone, web, phone):
            for n in range(2):
                reply = await self.ask(client, {"id": "h%d" % n, "type": "H",
                                                "msg": {"room": ROOM, "limit": 1}})
                answers.append(reply.get("code", reply["type"]))
        self.assertEqual(answers, ["H"] * 4 + ["rate_limited"] * 2)
        self.assertIn("history budget", reply["msg"])
        # the cursor's next page is an H like any other
        cursor = await self.ask(bob, {"id": "c", "type": "H", "msg": {"room": ROOM, "limit": 1}})
        self.assertTrue(cursor["more"])
        for n in range(3):
            await self.ask(bob, {"id": "x%d" % n, "type": "H", "msg": {"room": ROOM, "limit": 1}})
        reply = await self.ask(bob, {"id": "n", "type": "H", "msg": {"after": cursor["next"]}})
        self.assertEqual(reply.get("code"), "rate_limited", reply)
        # one budget for every form of H: the one-to-one H is refused too
        self.assertEqual((await self.ask(bob, {"id": "o", "to": 0, "type": "H", "msg": 0})).get("code"),
                         "rate_limited")

"""Positions are never reused (contract §10): MQ:seq raised at start-up to
MySQL's highest accept_seq, never lowered, retried while it fails."""

from twisted.internet import defer, task
from twisted.trial import unittest

from imd.errors import StoreUnavailable
from imd.seqfloor import SeqFloor
from tests.support import ServerTestMixin


class SeqFloorServiceTests(unittest.TestCase):

    def test_retried_every_few_seconds_until_it_succeeds_then_never_again(self):
        clock, calls = task.Clock(), []

        def raise_seq():
            calls.append(clock.seconds())
            if len(calls) < 3:
                return defer.fail(StoreUnavailable("mysql away"))
            return defer.succeed(42)
        floor = SeqFloor(raise_seq, clock, retry=5.0)
        floor.startService()
        self.assertEqual((calls, floor.value), ([0.0], None))
        clock.advance(5.0)
        clock.advance(5.0)
        self.assertEqual((calls, floor.value), ([0.0, 5.0, 10.0], 42))
        clock.advance(60.0)
        self.assertEqual(len(calls), 3)
        floor.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.flushLoggedErrors()

    def test_a_stop_cancels_the_next_try(self):
        clock = task.Clock()
        floor = SeqFloor(lambda: defer.fail(StoreUnavailable("mysql away")), clock, retry=5.0)
        floor.startService()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        floor.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


class RaiseSeqTests(ServerTestMixin, unittest.TestCase):

    async def test_raises_to_the_floor_and_never_lowers(self):
        messages = self.server.app.messages
        self.assertEqual(await messages.raise_seq(100), 100)
        self.assertEqual(await self.redis.get("MQ:seq"), "100")
        self.assertEqual(await messages.raise_seq(7), 100, "a lower floor changes nothing")
        await self.redis.set("MQ:seq", "250")
        self.assertEqual(await messages.raise_seq(100), 250)
        self.assertEqual(await self.redis.get("MQ:seq"), "250")

"""imd.tokenbucket: the one token bucket (pure).  Its users: a session's
packet and H rates (tests/test_session.py RateTests, over sockets
tests/test_messages.py RateLimitTests) and the http limits
(tests/test_http.py RateLimiterTests)."""

from twisted.trial import unittest

from imd.tokenbucket import TokenBucket


class TokenBucketTests(unittest.SynchronousTestCase):

    def test_full_when_made_then_rate_never_past_the_burst(self):
        bucket = TokenBucket(2, 3, 100.0)
        self.assertEqual([bucket.take(100.0) for _ in range(4)], [True, True, True, False])
        self.assertTrue(bucket.take(100.5))      # half a second at 2/s: one token
        self.assertFalse(bucket.take(100.5))
        self.assertEqual([bucket.take(200.0) for _ in range(4)], [True, True, True, False])

    def test_a_cost_over_the_burst_costs_the_burst(self):
        bucket = TokenBucket(1, 5, 0.0)
        self.assertTrue(bucket.take(0.0, cost=50))
        self.assertFalse(bucket.take(0.0))
        self.assertEqual(bucket.wait(50), 5)

    def test_a_refused_take_keeps_what_was_refilled(self):
        bucket = TokenBucket(1, 2, 0.0)
        self.assertTrue(bucket.take(0.0, cost=2))
        self.assertFalse(bucket.take(0.5))
        self.assertTrue(bucket.take(1.0))       # the half token of 0.5 was kept

    def test_a_clock_that_goes_back_refills_and_takes_nothing(self):
        bucket = TokenBucket(1, 2, 100.0)
        self.assertTrue(bucket.take(100.0, cost=2))
        self.assertFalse(bucket.take(90.0))
        self.assertEqual(bucket.tokens, 0.0)
        self.assertTrue(bucket.take(91.0))      # refilled from the time it was last told

    def test_wait_is_whole_seconds_until_the_cost_is_there(self):
        bucket = TokenBucket(0.1, 1, 0.0)
        self.assertTrue(bucket.take(0.0))
        self.assertFalse(bucket.take(5.0))
        self.assertEqual(bucket.wait(), 5)
        self.assertFalse(bucket.take(9.99))
        self.assertEqual(bucket.wait(), 1)      # at least one

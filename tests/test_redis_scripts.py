"""RedisClient.eval_script (EVALSHA on the connection) against the real Redis."""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from imd.errors import StoreUnavailable
from imd.stores.redis import RedisClient
from tests.support import RedisTestMixin, make_settings, with_deadline

ECHO = "return {KEYS[1], ARGV[1]}"


class EvalScriptTests(RedisTestMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        settings = make_settings()
        self.client = RedisClient(settings.redis.url, settings.redis.timeout, reactor)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield with_deadline(self.client.wait_connected())

    @defer.inlineCallbacks
    def test_runs_the_script_in_order(self):
        replies = yield defer.gatherResults([self.client.eval_script(ECHO, ["k"], [i]) for i in range(50)])
        self.assertEqual(replies, [["k", str(i)] for i in range(50)])

    @defer.inlineCallbacks
    def test_script_flushed_by_an_operator_falls_back_to_eval(self):
        self.assertEqual((yield self.client.eval_script(ECHO, ["a"], [1])), ["a", "1"])
        yield self.redis.execute_command("SCRIPT", "FLUSH")
        self.assertEqual((yield self.client.eval_script(ECHO, ["b"], [2])), ["b", "2"])
        self.assertEqual((yield self.client.eval_script(ECHO, ["c"], [3])), ["c", "3"])

    @defer.inlineCallbacks
    def test_not_connected_is_unavailable(self):
        yield self.client.stopService()
        yield self.assertFailure(self.client.eval_script(ECHO, ["k"], [1]), StoreUnavailable)

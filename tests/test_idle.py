"""Idle connections are closed with C + 4004 after [websocket] idle_timeout (Clock-driven)."""

import time

from twisted.internet import defer, task
from twisted.trial import unittest

from tests.support import ImdServer, RedisTestMixin, connect_client, drop, make_settings, wait_until


class IdleTests(RedisTestMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        yield RedisTestMixin.setUp(self)
        self.clock = task.Clock()
        self.clock.advance(time.time())
        settings = make_settings({"websocket": {"idle_timeout": "90"}})
        self.server = ImdServer(settings, clock=self.clock)
        # Redis keep-alive and timeouts follow the fake clock too; connect first.
        yield self.server.start()
        self.addCleanup(self.server.stop)

    async def login(self, uid):
        client = await connect_client(self.server.port, "/" + self.token(uid, now=self.clock.seconds()))
        self.addCleanup(lambda: drop(client) if not client.closed.called else None)
        self.assertEqual((await client.next())["type"], "L")
        return client

    async def test_idle_connection_is_closed_with_4004(self):
        client = await self.login(1)
        self.clock.advance(89)
        client.send({"id": "p", "to": 0, "type": "P"})
        self.assertEqual((await client.next())["type"], "P")
        self.clock.advance(89)  # 178 s since login, 89 s since the ping
        self.assertFalse(client.closed.called)
        self.clock.advance(1.5)
        close = await client.next()
        self.assertEqual((close["type"], close["from"]), ("C", 0))
        self.assertEqual((await client.wait_closed())[0], 4004)

    async def test_pings_and_pongs_do_not_keep_a_connection_from_being_idle(self):
        # issue 13 item 1: only packets the client sends count
        client = await self.login(1)
        pongs = []
        client.onPong = pongs.append
        self.clock.advance(89)
        client.sendPing(b"still here")
        client.sendPong(b"unasked")
        await wait_until(lambda: pongs, what="pong")   # (both frames have been read)
        self.clock.advance(1.5)
        close = await client.next()
        self.assertEqual((close["type"], close["from"]), ("C", 0))
        self.assertEqual((await client.wait_closed())[0], 4004)

"""RedisClient (the one Redis adapter) against the real Redis: scripts, commands, timeouts; the Lua
files of imd/stores/lua and how they are composed."""

import glob
import os
import re
import signal
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from imd.errors import StoreUnavailable
from imd.stores import redis as redis_module
from imd.stores.keys import Keys
from imd.stores.redis import (LUA_DIRECTORIES, RedisClient, RedisReplyError, Script, _Connection, _Factory, check_role,
                              compose_lua, encode_command, lua_source)
from tests.support import PrivateRedis, RedisTestMixin, make_settings, with_deadline

ECHO = Script("return {KEYS[1], ARGV[1]}", "echo")


def plain_encoding(args):
    """The Redis protocol written out the plain way, for encode_command's tables."""
    out = b"*%d\r\n" % len(args)
    for arg in args:
        value = arg if isinstance(arg, bytes) else (repr(arg) if isinstance(arg, float) else str(arg)).encode()
        out += b"$%d\r\n%s\r\n" % (len(value), value)
    return out


class EncodeCommandTests(unittest.SynchronousTestCase):
    """encode_command's precomputed headers (and a script's precomputed
    EVALSHA head) give the bytes the plain encoding gives."""

    args = st.lists(st.binary(max_size=1100) | st.text(max_size=400) | st.integers() | st.floats(allow_nan=False),
                    max_size=70)

    @settings(max_examples=300, deadline=None)
    @given(args)
    def test_same_bytes_as_the_plain_encoding(self, args):
        self.assertEqual(encode_command(args), plain_encoding(args))

    @settings(max_examples=100, deadline=None)
    @given(st.text(max_size=50), args)
    def test_evalsha_head(self, text, args):
        script = Script(text)
        self.assertEqual(encode_command(args, script.evalsha, 2), plain_encoding(["EVALSHA", script.sha] + args))

    def test_sizes_past_the_tables(self):
        for args in (list(range(63, 66)), [b"x" * 1023, b"y" * 1024, "z" * 5000]):
            self.assertEqual(encode_command(args), plain_encoding(args))


class _Owner:
    """What a connection tells its owner (a RedisClient or RedisSubscriber)."""

    def __init__(self):
        self.ready, self.lost = [], []

    def _authenticated(self, conn):
        self.ready.append(conn)

    def _lost(self, conn):
        self.lost.append(conn)


class ConnectionTests(unittest.SynchronousTestCase):
    """One connection in memory: the one write path, its reply timeout,
    replies decoded once."""

    def connect(self, password=None, dbid=None, timeout=1.0):
        self.clock, self.owner = Clock(), _Owner()
        conn = _Factory(_Connection, self.clock, timeout, "test", owner=self.owner, password=password,
                        dbid=dbid).buildProtocol(None)
        transport = StringTransport()
        conn.makeConnection(transport)
        self.addCleanup(lambda: conn.connected and conn.connectionLost(Failure(ConnectionDone())))
        return conn, transport

    def test_auth_and_select_take_the_write_path_before_the_connection_is_handed_out(self):
        conn, transport = self.connect(password="secret", dbid=3)
        self.assertEqual(transport.value(), encode_command(("AUTH", "secret")) + encode_command(("SELECT", 3)))
        self.assertEqual(len(conn.issued), 2)
        conn.dataReceived(b"+OK\r\n")
        self.assertEqual(self.owner.ready, [])
        conn.dataReceived(b"+OK\r\n")
        self.assertEqual((self.owner.ready, len(conn.issued)), ([conn], 0))

    def test_a_refused_auth_drops_the_connection(self):
        conn, transport = self.connect(password="wrong", dbid=0)
        conn.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
        conn.dataReceived(b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(self.owner.ready, [])
        self.assertTrue(transport.disconnecting)

    def test_replies_are_decoded_once_and_a_byte_that_is_not_utf8_goes_back_as_it_came(self):
        conn, _ = self.connect()
        replies = [conn.send(encode_command(("GET", "k"))) for _ in range(6)]
        # (each bulk string ends its chunk: txredisapi's parser reads what
        # follows one in a later reactor turn)
        for data in (b"$2\r\n\xc3\xa9\r\n", b"$3\r\na\xffb\r\n", b":12\r\n", b"$-1\r\n", b"+OK\r\n",
                     b"*2\r\n$1\r\nx\r\n", b":3\r\n"):
            conn.dataReceived(data)
        values = [self.successResultOf(d) for d in replies]
        self.assertEqual(values, ["\u00e9", "a\udcffb", 12, None, "OK", ["x", 3]])
        self.assertEqual(encode_command((values[1],)), b"*1\r\n$3\r\na\xffb\r\n")
        self.assertEqual(len(conn.issued), 0)

    def test_no_reply_within_the_timeout_drops_the_connection(self):
        conn, transport = self.connect(timeout=1.0)
        conn.send(encode_command(("PING",)))
        self.clock.advance(0.5)
        conn.send(encode_command(("PING",)))
        conn.dataReceived(b"+PONG\r\n")   # the first answered: the second is 0.75 s old at 1.25
        self.clock.advance(0.75)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.5)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.owner.lost, [conn])   # told at once: nothing more is written on it

    def test_role_check_timeout_and_refusal(self):
        conn, transport = self.connect(timeout=1.0)
        d = check_role(conn, "test")
        self.assertEqual(transport.value(), encode_command(("ROLE",)))
        # (each bulk string ends its chunk: txredisapi's parser reads what
        # follows one in a later reactor turn)
        for data in (b"*3\r\n$5\r\n", b"slave\r\n", b"$9\r\n", b"127.0.0.1\r\n", b":6379\r\n"):
            conn.dataReceived(data)
        self.failureResultOf(d, StoreUnavailable)
        self.assertTrue(transport.disconnected)
        conn, transport = self.connect(timeout=1.0)
        d = check_role(conn, "test")
        self.clock.advance(1.5)
        self.assertTrue(transport.disconnected)
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertIn("no reply in 1s", str(self.failureResultOf(d, StoreUnavailable).value))
        conn, _ = self.connect()
        d = check_role(conn, "test")
        conn.dataReceived(b"*1\r\n$6\r\nmaster\r\n")
        self.assertIs(self.successResultOf(d), conn)


def lua_paths():
    """{name: path} of every Lua file, in imd/stores/lua and imd/messagelog/lua."""
    return {os.path.basename(path)[:-4]: path
            for directory in LUA_DIRECTORIES for path in glob.glob(os.path.join(directory, "*.lua"))}


def lua_names():
    return sorted(lua_paths())


def includes_of(name):
    with open(lua_paths()[name], encoding="utf-8") as f:
        first = f.readline()
    return first[len("-- include:"):].split() if first.startswith("-- include:") else []


class LuaFileTests(unittest.SynchronousTestCase):
    """The scripts in imd/stores/lua (and the message log's snippets in
    imd/messagelog/lua): loaded by name, their includes resolved."""

    def test_each_name_is_in_one_directory_only(self):
        found = [os.path.basename(path)[:-4]
                 for directory in LUA_DIRECTORIES for path in glob.glob(os.path.join(directory, "*.lua"))]
        self.assertEqual(sorted(found), sorted(set(found)))
        self.assertIn("store_entry", found)
        self.assertFalse(os.path.exists(os.path.join(LUA_DIRECTORIES[0], "store_entry.lua")),
                         "the entry's writer lives with the message log")

    def test_a_snippet_comes_once_before_what_uses_it(self):
        text = compose_lua("-- include: store_entry note_push store_entry\nreturn 1\n")
        self.assertEqual(text.count("local function store_entry("), 1)
        self.assertEqual(text.count("local function note_push("), 1)
        self.assertLess(text.index("local function store_entry("), text.index("local function note_push("))
        self.assertTrue(text.endswith("\nreturn 1\n"))
        self.assertNotIn("-- include:", text)
        # an include of an include comes before it, once
        text = lua_source("take_order")
        self.assertEqual(text.count("local function expire_links("), 1)
        self.assertLess(text.index("local function expire_links("), text.index("local function restore("))

    def test_every_include_names_a_snippet_defining_that_function(self):
        names = set(lua_names())
        snippets = {included for name in names for included in includes_of(name)}
        self.assertEqual(sorted(snippets - names), [], "included but missing")
        for snippet in sorted(snippets):
            self.assertRegex(lua_source(snippet), r"(?m)^local function %s\(" % snippet)

    def test_every_script_names_its_keys_and_arguments(self):
        snippets = {included for name in lua_names() for included in includes_of(name)}
        for name in lua_names():
            if name in snippets:
                continue
            with open(lua_paths()[name], encoding="utf-8") as f:
                text = f.read()
            if re.search(r"KEYS\[|#KEYS", text):
                self.assertIn("-- KEYS", text, name)
            if re.search(r"ARGV\[|#ARGV", text):
                self.assertIn("ARGV", "".join(line for line in text.splitlines() if line.startswith("--")), name)

    def test_the_sha_is_that_of_the_composed_text(self):
        script = Script.load("store_message")
        self.assertEqual(script.text, lua_source("store_message"))
        self.assertIn("local function store_entry(", script.text)
        self.assertEqual(Script(script.text).sha, script.sha)

    def test_a_cycle_or_a_bad_name_is_refused(self):
        self.assertRaises(ValueError, Script.load, "../redis")
        self.assertRaises(ValueError, compose_lua, "-- include: Store_Entry\n")
        files = {"a": "-- include: b\nlocal function a() end\n", "b": "-- include: a\nlocal function b() end\n"}
        self.patch(redis_module, "_lua_file", files.__getitem__)
        error = self.assertRaises(ValueError, compose_lua, "-- include: a\n")
        self.assertIn("a -> b -> a", str(error))


class _ClientMixin(RedisTestMixin):
    """``self.client``: a started RedisClient on the test db."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        settings = make_settings()
        self.client = RedisClient(settings.redis.url, settings.redis.timeout, reactor)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield with_deadline(self.client.wait_connected())


class EvalScriptTests(_ClientMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def test_runs_the_script_in_order(self):
        replies = yield defer.gatherResults([self.client.run(ECHO, ["k"], [i]) for i in range(50)])
        self.assertEqual(replies, [["k", str(i)] for i in range(50)])

    @defer.inlineCallbacks
    def test_script_flushed_by_an_operator_falls_back_to_eval(self):
        self.assertEqual((yield self.client.run(ECHO, ["a"], [1])), ["a", "1"])
        yield self.redis.execute_command("SCRIPT", "FLUSH")
        self.assertEqual((yield self.client.run(ECHO, ["b"], [2])), ["b", "2"])
        self.assertEqual((yield self.client.run(ECHO, ["c"], [3])), ["c", "3"])

    @defer.inlineCallbacks
    def test_plain_command_and_its_error_reply(self):
        self.assertEqual((yield self.client.command("SET", "k", "v", "NX")), "OK")
        self.assertIsNone((yield self.client.command("SET", "k", "w", "NX")))
        self.assertEqual((yield self.client.command("GET", "k")), "v")
        yield self.assertFailure(self.client.command("INCR", "k"), RedisReplyError)

    @defer.inlineCallbacks
    def test_commands_run_in_the_configured_db_from_the_first_one(self):
        # a connection is handed out only once its SELECT is done
        client = RedisClient(self.client.address, 1, reactor)
        client.startService()
        self.addCleanup(client.stopService)
        yield with_deadline(client.wait_connected())
        yield client.command("SET", "where-am-i", "here")
        self.assertEqual((yield self.redis.get("where-am-i")), "here")

    @defer.inlineCallbacks
    def test_every_script_compiles_in_redis(self):
        for name in lua_names():
            script = Script.load(name)
            sha = yield self.client.command("SCRIPT", "LOAD", script.text)
            self.assertEqual(sha, script.sha, name)

    @defer.inlineCallbacks
    def test_not_connected_is_unavailable(self):
        yield self.client.stopService()
        yield self.assertFailure(self.client.run(ECHO, ["k"], [1]), StoreUnavailable)
        yield self.assertFailure(self.client.command("GET", "k"), StoreUnavailable)


class ReplyTimeoutTests(unittest.TestCase):
    """A Redis that stops answering (SIGSTOP on a private redis-server)."""

    @defer.inlineCallbacks
    def setUp(self):
        self.private = yield PrivateRedis().start()
        self.addCleanup(self.private.stop)
        settings = make_settings({"redis": {"timeout": "0.4"}}, redis_db=0, redis_port=self.private.port)
        self.client = RedisClient(settings.redis.url, settings.redis.timeout, reactor)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield with_deadline(self.client.wait_connected())
        self.assertEqual((yield self.client.run(ECHO, ["k"], [0])), ["k", "0"])

    @defer.inlineCallbacks
    def test_no_reply_fails_every_call_in_flight_then_recovers(self):
        pid = self.private.process.pid
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        started = time.monotonic()
        calls = [self.client.run(ECHO, ["k"], [i]) for i in range(3)]
        for d in calls:
            yield with_deadline(self.assertFailure(d, StoreUnavailable))
        waited = time.monotonic() - started
        self.assertTrue(0.4 <= waited < 1.5, waited)
        os.kill(pid, signal.SIGCONT)
        yield with_deadline(self.client.wait_connected(5))
        self.assertEqual((yield self.client.run(ECHO, ["k"], [9])), ["k", "9"])


class ClaimTests(_ClientMixin, unittest.TestCase):
    """The migrator's claim moves the oldest entries of MQ, whatever their number."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        from imd.stores.queue import QueueStore
        self.queue = QueueStore(self.client, Keys())
        self.assertTrue((yield self.queue.hold_lock("me", 10)))

    @defer.inlineCallbacks
    def test_oldest_first_in_one_move_larger_than_a_lua_unpack(self):
        # Lua's unpack stops at 8,000 values (LUAI_MAXCSTACK in Redis)
        entries = ["e%d" % i for i in range(10000)]   # pushed at the head: e0 is the oldest
        for start in range(0, 10000, 1000):
            yield self.redis.lpush("MQ", entries[start:start + 1000])
        replayed, claimed = yield self.queue.claim("me", 9000)
        self.assertEqual((replayed, claimed), (False, entries[:9000]))
        self.assertEqual((yield self.redis.lrange("MQ", 0, -1)), list(reversed(entries[9000:])))
        # in flight, in MQ's order: claimed again as such until acked
        self.assertEqual((yield self.queue.claim("me", 9000)), (True, entries[:9000]))
        self.assertTrue((yield self.queue.ack("me", 9000)))
        self.assertEqual((yield self.queue.claim("me", 9000)), (False, entries[9000:]))
        self.assertEqual((yield self.redis.exists("MQ")), 0)

    @defer.inlineCallbacks
    def test_the_next_batch_is_claimed_behind_the_one_in_flight_and_acks_go_oldest_first(self):
        entries = ["e%d" % i for i in range(2500)]   # e0 is the oldest
        yield self.redis.lpush("MQ", entries)
        self.assertEqual((yield self.queue.claim("me", 1000)), (False, entries[:1000]))
        # the first batch is being inserted: the next comes after it, never as a replay
        self.assertEqual((yield self.queue.claim("me", 1000, more=True)), (False, entries[1000:2000]))
        in_flight = yield self.redis.lrange("MQ:processing", 0, -1)
        self.assertEqual(in_flight, list(reversed(entries[:2000])), "MQ's order, the oldest batch at the tail")
        # a leader starting now (or after a failure) replays both, oldest first
        self.assertEqual((yield self.queue.claim("me", 1000)), (True, entries[:2000]))
        # the ack of the first batch takes exactly it
        self.assertTrue((yield self.queue.ack("me", 1000)))
        self.assertEqual((yield self.redis.lrange("MQ:processing", 0, -1)), list(reversed(entries[1000:2000])))
        self.assertEqual((yield self.queue.claim("me", 1000, more=True)), (False, entries[2000:]))
        self.assertTrue((yield self.queue.ack("me", 1000)))
        self.assertEqual((yield self.redis.lrange("MQ:processing", 0, -1)), list(reversed(entries[2000:])))
        self.assertTrue((yield self.queue.ack("me", 500)))
        self.assertEqual((yield self.redis.exists("MQ:processing")), 0)
        self.assertFalse((yield self.queue.ack("someone else", 1)))

    @defer.inlineCallbacks
    def test_a_lapsed_lock_is_extended_by_nobody(self):
        # the renew timer's script: extends its own lock, never takes a free one
        self.assertTrue((yield self.queue.extend_lock("me", 10)))
        self.assertFalse((yield self.queue.extend_lock("someone else", 10)))
        self.assertEqual((yield self.redis.get("MQ:lock")), "me")
        yield self.redis.delete("MQ:lock")
        self.assertFalse((yield self.queue.extend_lock("me", 10)))
        self.assertEqual((yield self.redis.exists("MQ:lock")), 0)

    @defer.inlineCallbacks
    def test_a_stale_ack_cannot_trim_the_next_leaders_batch(self):
        entries = ["e%d" % i for i in range(6)]      # e0 is the oldest
        yield self.redis.lpush("MQ", entries)
        _, old = yield self.queue.claim("me", 3)       # "me" inserts e0-e2, slowly
        yield self.redis.delete("MQ:lock")             # and its lock lapses
        self.assertTrue((yield self.queue.hold_lock("next", 10)))
        self.assertEqual((yield self.queue.claim("next", 3)), (True, old))
        self.assertTrue((yield self.queue.ack("next", 3)))
        self.assertEqual((yield self.queue.claim("next", 3)), (False, entries[3:]))
        yield self.redis.delete("MQ:lock")             # "next" lapses too, e3-e5 not committed
        # "me"'s timer cannot take the free lock back, so its stale ack is refused
        self.assertFalse((yield self.queue.extend_lock("me", 10)))
        self.assertFalse((yield self.queue.ack("me", 3)))
        self.assertEqual((yield self.redis.lrange("MQ:processing", 0, -1)), list(reversed(entries[3:])))

    @defer.inlineCallbacks
    def test_empty_queue_claims_nothing_and_others_claim_nothing(self):
        self.assertEqual((yield self.queue.claim("me", 500)), (False, []))
        yield self.redis.lpush("MQ", ["x"])
        self.assertIsNone((yield self.queue.claim("someone else", 500)))
        self.assertEqual((yield self.redis.llen("MQ")), 1)

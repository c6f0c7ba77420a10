"""What each piece of ``store_message`` costs Redis: runs
bench/fanout_probe.py or bench/claim_probe.py with the script's text edited
(in this process only: the files are not touched) to leave one piece out,
so that the difference against ``base`` is that piece's redis-server CPU
per message.  Alternate the variants, back to back: the figures are noisy
on a shared machine.

    .venv/bin/python bench/store_breakdown.py VARIANT fanout [PORT] [same|two|nofanout]
    .venv/bin/python bench/store_breakdown.py VARIANT claim [PORT] [BATCH]

VARIANT: one of EDITS below.  The edited scripts are for measuring only:
they break the contract (no dedup record, no conversation list, ...).
``original`` stores entries without a seq: with the fanout probe only.
"""
import os
import runpy
import sys

from imd.stores import redis as stores_redis

DEDUP_SET = "redis.call('SET', KEYS[2], ARGV[1] .. '/' .. seq, 'EX', ARGV[3])"
PENDING = ("  redis.call('ZADD', pending_a, seq, entry)\n"
           "  if pending_b ~= pending_a then redis.call('ZADD', pending_b, seq, entry) end")
CONVERSATIONS = [("note_conversation(KEYS[9]", "--"), ("if ARGV[1] ~= ARGV[4] then note_conversation", "--")]
EDITS = {
    "base": [],
    # the script's floor: EVALSHA with its keys and arguments, nothing run
    "empty": [("if redis.call('SISMEMBER'", "do return {1, 1} end\nif redis.call('SISMEMBER'")],
    # the cost of a redis.call as such: as many as the script makes (15, one pair on one node), each
    # a SISMEMBER of the same small set, nothing written
    "calls": [("if redis.call('SISMEMBER'", "for _ = 1, 15 do redis.call('SISMEMBER', KEYS[1], ARGV[1]) end\n"
               "do return {1, 1} end\nif redis.call('SISMEMBER'")],
    # the original design's script (bench/original/server.js: SISMEMBER, LPUSH), with this one's arguments
    "original": [("if redis.call('SISMEMBER'", "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end\n"
                  "redis.call('LPUSH', KEYS[3], ARGV[2])\ndo return {1, 1} end\nif redis.call('SISMEMBER'")],
    # the fanout's PUBLISHes (its ZRANGEs and frames still made): "publish" is a local function
    "nopublish": [("local function fanout(", "local function publish() end\nlocal function fanout("),
                  ("redis.call('PUBLISH', ", "publish(")],
    # the fanout cut to its two ZRANGE dev:<uid> (nothing made of their replies, nothing published)
    "zrangeonly": [("if ARGV[5] ~= '' then fanout(",
                    "redis.call('ZRANGE', KEYS[7], 0, -1) redis.call('ZRANGE', KEYS[8], 0, -1)\n"
                    "if false then fanout(")],
    # the lower bound of the fanout's Lua: its two ZRANGEs and the one frame the one-node case publishes
    # ("same": sender n1 c1, recipient on n1), made in one go (for that case only)
    "fanoutfloor": [("if ARGV[5] ~= '' then fanout(",
                     "redis.call('ZRANGE', KEYS[7], 0, -1) redis.call('ZRANGE', KEYS[8], 0, -1)\n"
                     "redis.call('PUBLISH', ARGV[5] .. 'n1',"
                     " 'x ' .. ARGV[4] .. ' c1 ' .. seq .. ' ' .. ARGV[1] .. ' ' .. delivered)\n"
                     "if false then fanout(")],
    "nodedup": [(DEDUP_SET, "")],                       # the dedup record's SET ... EX
    "nopending": [(PENDING, "")],                       # both pending:<uid> ZADDs
    "noconversation": CONVERSATIONS,                    # note_conversation for both parties
    "noconvlast": [("  redis.call('HSET', last, b, packet)\n", "")],    # both convlast HSETs
    "oneconvlast": [("  redis.call('HSET', last, b, packet)\n",         # one of them (one per pair)
                     "  if unread then redis.call('HSET', last, b, packet) end\n")],
    # the copies' size: the pending members and the convlast values as short as the seq
    "shortpending": [(PENDING, PENDING.replace("seq, entry)", "seq, seq)"))],
    "shortconvlast": [("  redis.call('HSET', last, b, packet)\n", "  redis.call('HSET', last, b, seq)\n")],
    "noconv": [("  redis.call('ZADD', conv, seq, b)\n", "")],           # both conv ZADDs
    "nounread": [("  if unread then redis.call('ZADD', unread, seq, member) end\n", "")],
    # SISMEMBER, GET, INCR, LPUSH and the fanout: what the Node design's script does, and more
    "minimal": [(DEDUP_SET, ""), (PENDING, "")] + CONVERSATIONS,
}


def main() -> None:
    variant, probe = sys.argv[1], sys.argv[2]
    edits = EDITS[variant]
    load = stores_redis.Script.load.__func__  # type: ignore[attr-defined]

    def edited(cls: type, name: str) -> stores_redis.Script:
        script = load(cls, name)
        if name != "store_message":
            return script
        text = script.text
        for old, new in edits:
            if old not in text:
                raise SystemExit("store_message no longer holds %r: update EDITS" % old)
            text = text.replace(old, new)
        return stores_redis.Script(text, name)
    stores_redis.Script.load = classmethod(edited)  # type: ignore[assignment]
    sys.argv = [sys.argv[0]] + sys.argv[3:]
    print(variant, end=": ", flush=True)
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "%s_probe.py" % probe), run_name="__main__")


main()

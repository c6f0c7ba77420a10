#!/usr/bin/env python3
"""Hypothesis over every handler's argument validation, through a real
WebSocket connection to a running imd (loopback).  Run by
tests/test_security.py; usable by hand:

    .venv/bin/python tests/handler_properties.py --port P --redis redis://127.0.0.1:6379/0 \
        --uid 500 --examples 300

User ``--uid`` (friend of ``--uid + 1``; the caller sets that up) sends
generated packets of every type.  For each: exactly one reply carries its
id; its type and error code are among those the contract allows for that
packet type (never ``internal`` or ``unavailable``); an ``O`` about someone
who is neither a friend nor oneself is ``forbidden``; an ``H`` reply lists
only the user's own messages; and the connection stays usable.  Prints one
JSON line of figures; exit status 0 when the property held.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))   # the checkout: imd and tests

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzz_ws import RawWs  # noqa: E402

ALLOWED = {
    "t": {"A", "E:bad_packet", "E:too_long", "E:not_friend"},
    "i": {"A", "E:bad_packet", "E:too_long", "E:not_friend"},
    "P": {"P", "E:bad_packet"},
    "T": {"A", "E:bad_packet", "E:forbidden", "E:not_found"},
    "S": {"A", "E:bad_packet"},
    "O": {"O", "E:bad_packet", "E:forbidden"},
    "H": {"H", "E:bad_packet"},
}
OTHER = {"E:unknown_type", "E:bad_packet"}

scalars = (st.none() | st.booleans() | st.integers(min_value=-2 ** 64, max_value=2 ** 64)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                         max_size=3), max_leaves=8)


def uids(me):
    return st.sampled_from([me, me + 1, me + 2, 1, 2, 0, -1, str(me + 1), "x"]) | json_values


def msg_for(kind, me):
    near = {
        "t": st.text(min_size=0, max_size=1100) | st.sampled_from(["x" * 1023, "x" * 1024, "😀" * 1024]),
        "i": st.text(min_size=0, max_size=140) | st.integers(min_value=-5, max_value=2 ** 64),
        "P": json_values,
        "T": st.sampled_from([41, 42, 43, "43", 0, -1, 2 ** 63, "4x"]) | st.integers(),
        "S": st.fixed_dictionaries({"longitude": st.floats(min_value=-180, max_value=180),
                                    "latitude": st.floats(min_value=-85.05112878, max_value=85.05112878)})
        | st.fixed_dictionaries({}, optional={
            "longitude": st.floats(min_value=-200, max_value=200) | json_values,
            "longtitude": st.floats(min_value=-200, max_value=200),
            "latitude": st.floats(min_value=-90, max_value=90) | json_values}),
        "O": st.sampled_from([me + 2, 1, 2, me, me + 1, str(me + 2)]) | uids(me),
        "H": st.integers(min_value=-5, max_value=2 ** 64) | st.fixed_dictionaries({}, optional={
            "since": st.integers(min_value=-5, max_value=2 ** 64) | json_values,
            "limit": st.integers(min_value=-2, max_value=502) | json_values,
            "with": uids(me),
            "after": st.text(max_size=120) | json_values}),
    }
    return near.get(kind, json_values) | json_values


def packets(me):
    kinds = st.sampled_from(list("tiPTSOH") + ["s", "A", "x", "", "tt"])
    friend = st.just(me + 1)
    return kinds.flatmap(lambda kind: st.fixed_dictionaries(
        {"type": st.just(kind), "msg": msg_for(kind, me), "to": friend | friend | st.just(0) | uids(me)},
        optional={"from": json_values}))


class Checker:
    def __init__(self, ws, me, friends):
        self.ws, self.me, self.friends = ws, me, friends
        self.n = 0
        self.seen = {}

    def check(self, packet):
        self.n += 1
        packet = dict(packet, id="hp-%d" % self.n)
        if "to" not in packet:
            packet["to"] = 0
        self.ws.send_json(packet)
        sync = "sync-%d" % self.n
        self.ws.send_json({"id": sync, "to": 0, "type": "P"})
        replies = []
        while True:
            reply = self.ws.recv_json()
            if reply.get("id") == sync:
                assert reply["type"] == "P", reply
                break
            if reply.get("id") == packet["id"]:
                replies.append(reply)
            else:
                assert reply["type"] not in "AEPOHC", ("a reply to nobody", packet, reply)
        assert len(replies) == 1, ("not exactly one reply", packet, replies)
        reply = replies[0]
        outcome = reply["type"] if reply["type"] != "E" else "E:" + reply["code"]
        allowed = ALLOWED.get(packet["type"], OTHER) if isinstance(packet["type"], str) else OTHER
        assert outcome in allowed, ("reply not allowed for this type", packet, reply)
        if outcome == "O":
            assert reply["msg"]["uid"] in self.friends | {self.me}, ("O about a stranger answered", packet, reply)
        if outcome == "H":
            for item in reply["msg"]:
                assert self.me in (item["from"], item["to"]), ("someone else's message in H", packet, item)
        key = "%s %s" % (packet["type"] if isinstance(packet["type"], str) else "?", outcome)
        self.seen[key] = self.seen.get(key, 0) + 1


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    from tests.fuzz_ws import Fuzzer
    fuzz_args = argparse.Namespace(redis=args.redis, port=args.port, seed=args.seed, first_uid=args.uid)
    fuzzer = Fuzzer(fuzz_args)
    ws = RawWs(args.port, "/" + fuzzer.token(args.uid))
    assert ws.recv_json()["type"] == "L"
    me = args.uid
    checker = Checker(ws, me, {me + 1})

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=args.seed is not None,
              suppress_health_check=list(HealthCheck))
    @given(packets(args.uid))
    # one sure example of each outcome, whatever the random draw
    @example({"type": "t", "msg": "hello", "to": me + 1})
    @example({"type": "t", "msg": "", "to": me + 1})
    @example({"type": "i", "msg": 7, "to": me + 1})
    @example({"type": "t", "msg": "hi", "to": me + 2})
    @example({"type": "S", "msg": {"longitude": 1.5, "latitude": -2}, "to": 0})
    @example({"type": "O", "msg": me + 2, "to": 0})
    @example({"type": "O", "msg": me + 1, "to": 0})
    @example({"type": "H", "msg": {"since": 0, "with": 1}, "to": 0})
    @example({"type": "T", "msg": 41, "to": 0})
    @example({"type": "T", "msg": 43, "to": 0})
    @example({"type": "T", "msg": 44, "to": 0})
    def property_holds(packet):
        checker.check(packet)

    result = {"examples": args.examples}
    try:
        property_holds()
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 - reported, exit status 1
        result.update(ok=False, failure=repr(e)[:2000])
    result.update(packets=checker.n, outcomes=checker.seen)
    print(json.dumps(result, sort_keys=True, ensure_ascii=False))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

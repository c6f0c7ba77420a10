"""Micro-benchmarks of the per-packet paths the performance work changed,
each the old way and the new way in one run (docs/performance.md, "What
each change bought").  Run it with each interpreter:

    .venv/bin/python bench/micro.py
    .venv-pypy3/bin/python bench/micro.py
"""

import platform
import sys
import time

from imd import jsonfast, protocol

PACKET = b'{"id":12345,"type":"t","to":42,"msg":"hello there, this is a chat message of typical length"}'


def per_call(fn, arg, n=200000, rounds=5):
    """Best µs per call over ``rounds`` (the first rounds warm the JIT)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn(arg)
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def parse_frame():
    saved = jsonfast.plain_loads
    try:
        jsonfast.use_plain_loads(False)
        old = per_call(protocol.parse_frame, PACKET)
        jsonfast.use_plain_loads(True)
        new = per_call(protocol.parse_frame, PACKET)
    finally:
        jsonfast.use_plain_loads(saved)
    return old, new, "hooked decoder", "json.loads (default here: %s)" % ("on" if saved else "off")


CASES = {"parse_frame": parse_frame}


def main(names):
    print("%s %s" % (platform.python_implementation(), platform.python_version()))
    for name in names or CASES:
        old, new, old_what, new_what = CASES[name]()
        print("%-14s %6.2f µs (%s) -> %6.2f µs (%s)" % (name, old, old_what, new, new_what))


if __name__ == "__main__":
    main(sys.argv[1:])

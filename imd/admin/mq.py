"""``imd-admin mq``: the migration queue as an operator sees it.

``status`` (MQ, the batch in flight, MQ:dead, the leader lock), and MQ:dead's
entries listed, replayed into MQ, or dropped.  The Redis side is
imd.stores.deadletter; this module only words it.
"""

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any, Generator, TextIO, Union

from twisted.internet import defer, threads

from imd.errors import AdminError
from imd.messagelog.entry import parse_entry, readable
from imd.stores.deadletter import DeadLetters

if TYPE_CHECKING:
    from imd.app import App

LIST_WIDTH = 300   # characters of an entry ``dead list`` shows without --full
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def format_age(seconds: float) -> str:
    """``0.4 s``, ``3 min 2 s``, ``2 h 5 min``, ``3 d 2 h``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return "%.1f s" % seconds
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return "%d min %d s" % (minutes, secs)
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return "%d h %d min" % (hours, minutes)
    days, hours = divmod(hours, 24)
    return "%d d %d h" % (days, hours)


def _text(entry: Union[str, bytes]) -> str:
    """For the terminal: a byte that is not UTF-8 as U+FFFD (imd.messagelog.entry.readable)."""
    return readable(entry.decode("utf-8", "surrogateescape") if isinstance(entry, bytes) else entry)


def entry_age(entry: Union[str, bytes], now: float) -> str:
    """How long ago an entry was stored, from its ``ts``; or why not known."""
    try:
        return format_age(now - parse_entry(_text(entry)).ts / 1000.0) + " ago"
    except ValueError:
        return "(not a readable message)"


def show_entry(entry: Union[str, bytes], full: bool = False) -> str:
    """One line: control characters as ``\\xNN``, long entries cut unless ``full``."""
    text = _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group(0)), _text(entry))
    if not full and len(text) > LIST_WIDTH:
        return "%s... (%d bytes)" % (text[:LIST_WIDTH], len(_text(entry).encode("utf-8")))
    return text


def _entries(count: int) -> str:
    return "1 entry" if count == 1 else "%d entries" % count


def dead_letters(app: "App") -> DeadLetters:
    return app.dead_letters


@defer.inlineCallbacks
def mq_status(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    status = yield dead_letters(app).status()
    now = app.clock.seconds()
    queued = _entries(status.queued)
    if status.queued:
        queued += ", oldest stored " + entry_age(status.oldest_queued, now)
    in_flight = _entries(status.in_flight)
    if status.in_flight:
        in_flight += " (a batch being inserted), oldest stored " + entry_age(status.oldest_in_flight, now)
    dead = _entries(status.dead)
    if status.dead:
        dead += " (imd-admin mq dead list)"
    if status.leader:
        lock = "held by %s (expires in %s)" % (_text(status.leader), format_age(status.lock_ms / 1000.0))
    else:
        lock = "free: no migrator leads"
    for name, text in (("MQ", queued), ("MQ:processing", in_flight), ("MQ:dead", dead), ("MQ:lock", lock)):
        out.write("%-15s %s\n" % (name, text))


@defer.inlineCallbacks
def mq_dead_list(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    total, entries = yield dead_letters(app).oldest(args.limit)
    if not total:
        out.write("MQ:dead is empty\n")
        return
    out.write("MQ:dead: %s, oldest first\n" % _entries(total))
    for number, entry in enumerate(entries, 1):
        out.write("%d  %s\n" % (number, show_entry(entry, args.full)))
    if total > len(entries):
        out.write("... and %d more (--limit N shows more)\n" % (total - len(entries)))


@defer.inlineCallbacks
def mq_dead_replay(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    moved = yield dead_letters(app).replay(args.limit or 0)
    if not moved:
        out.write("mq dead replay: MQ:dead is empty; nothing moved\n")
        return
    left = yield dead_letters(app).length()
    out.write("mq dead replay: moved %s back to MQ; %s left in MQ:dead\n" % (_entries(moved), _entries(left)))


def ask_on_terminal(prompt: str) -> defer.Deferred:
    """A Deferred of the operator's answer (read in a thread: the reactor keeps running)."""
    if not sys.stdin.isatty():
        return defer.fail(AdminError("not confirmed (stdin is not a terminal): pass --yes to drop without asking"))
    return threads.deferToThread(input, prompt)


@defer.inlineCallbacks
def mq_dead_drop(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    letters = dead_letters(app)
    total = yield letters.length()
    count = min(total, args.limit) if args.limit else total
    if not count:
        out.write("mq dead drop: MQ:dead is empty; nothing dropped\n")
        return
    if not args.yes:
        ask = getattr(args, "ask", None) or ask_on_terminal
        out.flush()
        which = ("all %s of MQ:dead" % _entries(total) if count == total
                 else "the %d oldest of the %d entries of MQ:dead" % (count, total))
        answer = yield ask("Drop %s? They cannot be recovered. [y/N] " % which)
        if answer.strip().lower() not in ("y", "yes"):
            raise AdminError("nothing dropped")
    dropped = yield letters.drop(count)
    out.write("mq dead drop: dropped %s\n" % _entries(dropped))

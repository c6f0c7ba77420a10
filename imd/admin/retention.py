"""``imd-admin retention purge --older-than DAYS [--dry-run]``: what the
leading migrator does every hour with ``[retention] days`` set
(imd.retention), run once now, with a progress bar on stderr."""

import argparse
from typing import TYPE_CHECKING, Any, Generator, TextIO

from twisted.internet import defer, task

from imd.progress import progress
from imd.retention import cutoff, purge
from imd.timespec import iso

if TYPE_CHECKING:
    from imd.app import App


def days_argument(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if days < 1:
        raise argparse.ArgumentTypeError("expected a whole number of days, 1 or more, got %r" % text)
    return days


@defer.inlineCallbacks
def retention_purge(app: "App", args: argparse.Namespace, out: TextIO) -> Generator[defer.Deferred, Any, None]:
    started = app.clock.seconds()
    before = cutoff(started, args.older_than)
    rows = app.message_rows
    count, oldest = yield rows.count_older(before)
    what = "messages older than %d days (before %s)" % (args.older_than, iso(before))
    if not count:
        out.write("retention purge: no %s\n" % what)
        return
    if args.dry_run:
        out.write("retention purge: would delete %s %s, the oldest from %s, and their receipts (dry run)\n"
                  % ("{:,}".format(count), what, iso(oldest)))
        return
    bar = progress("retention purge", count, "messages", getattr(args, "progress_stream", None))
    try:
        messages, receipts = yield defer.ensureDeferred(
            purge(rows, before, lambda seconds: task.deferLater(app.clock, seconds, lambda: None),
                  app.clock.seconds, progress=bar.update))
    finally:
        bar.close()
    out.write("retention purge: deleted %s %s and %s receipts in %.1f s\n"
              % ("{:,}".format(messages), what, "{:,}".format(receipts), app.clock.seconds() - started))

"""How far a long ``imd-admin`` command is (reconcile, export, retention
purge), on stderr so that stdout carries only its result.

On a terminal: a tqdm bar (count, share, rate, time left), redrawn in
place.  Anywhere else (a pipe, a file, cron's mail) redrawing makes a mess,
so it writes one plain line every :data:`PLAIN_EVERY` seconds and one at the
end.
"""

import io
import os
import sys
import time
from typing import Any, Callable, Dict, Optional, TextIO, Tuple

PLAIN_EVERY = 10.0   # seconds between two plain lines


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return "%d:%02d:%02d" % (hours, minutes, secs) if hours else "%d:%02d" % (minutes, secs)


class PlainProgress:
    """One line every ``every`` seconds: ``WHAT: 1,200/5,000 rows (24.0%),
    400 rows/s, 0:09 left``; at :meth:`close`, how many in how long."""

    def __init__(self, what: str, total: Optional[int], unit: str, stream: TextIO,
                 clock: Callable[[], float] = time.monotonic, every: float = PLAIN_EVERY) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.count = 0
        self._stream = stream
        self._clock = clock
        self._every = every
        self._started = self._last = clock()

    def update(self, n: int) -> None:
        self.count += n
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self._started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        text = "%s: %s" % (self.what, "{:,}".format(self.count))
        if self.total:
            text += "/%s %s (%.1f%%)" % ("{:,}".format(self.total), self.unit, 100.0 * self.count / self.total)
        else:
            text += " " + self.unit
        text += ", %s %s/s" % ("{:,.0f}".format(rate), self.unit)
        if self.total and rate > 0 and self.count < self.total:
            text += ", %s left" % _clock_text((self.total - self.count) / rate)
        self._stream.write(text + "\n")
        self._stream.flush()

    def close(self, complete: bool = False) -> None:
        """The last line; ``complete``: the total was an estimate and the
        work is done (shown as all of it)."""
        if complete and self.total:
            self.count = self.total
        elapsed = self._clock() - self._started
        rate = "{:,.0f}".format(self.count / elapsed) if elapsed > 0 else "-"
        self._stream.write("%s: %s %s in %s (%s %s/s)\n" % (self.what, "{:,}".format(self.count), self.unit,
                                                             _clock_text(elapsed), rate, self.unit))
        self._stream.flush()


class BarProgress:
    """A tqdm bar on a terminal."""

    def __init__(self, what: str, total: Optional[int], unit: str, stream: TextIO) -> None:
        from tqdm import tqdm
        # follow the terminal's size; one that reports none (a pty nobody
        # sized, as under script(1)) would get no bar at all from tqdm
        columns, rows = _size(stream)
        size: Dict[str, Any] = {"dynamic_ncols": True} if columns else {"ncols": 80}
        if not rows:
            size["nrows"] = 24
        self._bar = tqdm(total=total, desc=what, unit=" " + unit, file=stream, mininterval=0.2, smoothing=0.1,
                         leave=True, **size)

    @property
    def count(self) -> int:
        return int(self._bar.n)

    def update(self, n: int) -> None:
        self._bar.update(n)

    def close(self, complete: bool = False) -> None:
        if complete and self._bar.total:
            self._bar.n = self._bar.total
            self._bar.refresh()
        self._bar.close()


def _size(stream: TextIO) -> Tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0, 0
    return size.columns, size.lines


def progress(what: str, total: Optional[int], unit: str, stream: Optional[TextIO] = None,
             tty: Optional[bool] = None, clock: Callable[[], float] = time.monotonic,
             every: float = PLAIN_EVERY) -> Any:
    """A :class:`BarProgress` when ``stream`` (stderr by default) is a
    terminal, else a :class:`PlainProgress`; ``total`` None when unknown."""
    stream = stream if stream is not None else sys.stderr
    if tty is None:
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty and isatty())
    if tty:
        return BarProgress(what, total, unit, stream)
    return PlainProgress(what, total, unit, stream, clock, every)

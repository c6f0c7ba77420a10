"""Points in time as an operator types them (``--since``, ``--until``):

- ISO 8601: ``2026-11-30``, ``2026-11-30T21:15``, ``2026-11-30 21:15:07.250``,
  with ``Z`` or an offset (``+01:00``); without one it is UTC;
- Unix time: seconds (``1764537300``, ``1764537300.25``) or milliseconds
  (``1764537300250``): a number from 10^11 on is taken as milliseconds
  (10^11 s is the year 5138, 10^11 ms 1973);
- relative to now: ``now``, or a time ago: ``90s``, ``15m``, ``2h``, ``7d``
  (``-2h`` too, written ``--since=-2h``: argparse takes a lone ``-2h`` for
  an option).

Each becomes Unix milliseconds, the unit of every ``ts`` imd stores.
"""

import re
from datetime import datetime, timezone
from typing import NamedTuple

MS_FROM = 10 ** 11
_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")

FORMATS = ("ISO 8601 (2026-11-30T21:15:00Z; UTC without an offset), Unix seconds or ms, now, "
           "or a time ago: 90s, 15m, 2h, 7d")


class TimeSpec(NamedTuple):
    """An absolute time (``ms``) or one relative to now (``ago_ms``)."""
    text: str
    ms: int
    relative: bool

    def at(self, now: float) -> int:
        """Unix ms, ``now`` being the current time in seconds."""
        return int(now * 1000) - self.ms if self.relative else self.ms


def parse_time(text: str) -> TimeSpec:
    """A :class:`TimeSpec`, or ValueError saying which formats are understood."""
    value = text.strip()
    if value == "now":
        return TimeSpec(text, 0, True)
    match = _RELATIVE.match(value)
    if match:
        return TimeSpec(text, int(float(match.group(1)) * _UNITS[match.group(2)] * 1000), True)
    if _NUMBER.match(value):
        number = float(value)
        return TimeSpec(text, int(round(number if number >= MS_FROM else number * 1000)), False)
    iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError("not a time: %r (expected %s)" % (text, FORMATS))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return TimeSpec(text, int(round(when.timestamp() * 1000)), False)


def iso(ms: int) -> str:
    """Unix ms as ISO 8601 UTC with milliseconds: ``2026-11-30T21:15:07.250Z``."""
    stamp = datetime.fromtimestamp(ms / 1000.0, timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")

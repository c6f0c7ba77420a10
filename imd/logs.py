"""The daemon's log output: human lines (``[log] format = text``, the default)
or one JSON object per line (``json``), with wstokens scrubbed from both.

A wstoken in a log would let whoever reads the log log in as that user until
it expires, and Autobahn or Twisted may put a request path (``/<token>``) in a
message, so every line is passed through :func:`redact` whatever produced it.
Message text is logged only by the transport and only with
``[log] messages = true``.

twistd picks its log observer before it starts the service: it asks the
application for an ``ILogObserver`` component, which :class:`LoggingRoot`
sets.  The output goes where twistd's own would (stdout under ``-n``, else
``--logfile`` or twistd.log); ``twistd --logger`` or ``--syslog`` still win.
"""

import json
import re
import sys
from collections import Counter
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, formatEventAsClassicLogText, formatTime
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# (a server API key in a query string is refused, and never logged either)
_TOKEN_PARAM = re.compile(r"((?:access_token|token|jwt|api_key|apikey|key)=)[^&\s'\"]+", re.IGNORECASE)
REDACTED = "[token]"


def redact(text: str) -> str:
    """``text`` with anything that looks like a JWT or a ``token=`` (or
    ``access_token=``, ``jwt=``) value replaced: the one redactor of imd,
    for log lines and the HTTP access log alike."""
    return _TOKEN_PARAM.sub(r"\1" + REDACTED, _JWT.sub(REDACTED, text))


class _Clock(Protocol):
    """What :class:`ThrottledLine` needs of a clock (the reactor, or a test's Clock)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kw: object) -> Any: ...


REFUSAL_LOG_INTERVAL = 10.0   # seconds between two lines about refused connections, on every port


class ThrottledLine:
    """At most one log line per ``interval`` seconds for events that come in
    floods (connections refused by a listener's limits): the first is
    written at once; those that follow within the interval are counted, by
    kind, and written as one line with their counts when it ends.  A flood
    of refusals (22,680 in 8 s from one attacker) is then a line every
    ``interval`` seconds; the metrics count each one.

    ``write(counts)`` writes the line: ``counts`` maps each kind to how many
    happened since the previous line.  :meth:`stop` writes what is counted
    and cancels the timer (a listener that stops)."""

    def __init__(self, clock: _Clock, write: Callable[[Dict[str, int]], None],
                 interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self._clock = clock
        self._write = write
        self.interval = interval
        self._counts: "Counter[str]" = Counter()
        self._written_at: Optional[float] = None
        self._call: Any = None

    def note(self, kind: str = "") -> None:
        """One event of ``kind``."""
        self._counts[kind] += 1
        if self._call is not None:
            return
        now = self._clock.seconds()
        if self._written_at is None or now - self._written_at >= self.interval:
            self._flush()
        else:
            self._call = self._clock.callLater(self._written_at + self.interval - now, self._flush)

    def _flush(self) -> None:
        self._call = None
        counts, self._counts = dict(self._counts), Counter()
        if counts:
            self._written_at = self._clock.seconds()
            self._write(counts)

    def stop(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._flush()


class LogOutput(Protocol):
    """Where log lines go: a text stream or a twisted ``LogFile``."""

    def write(self, data: str) -> object: ...

    def flush(self) -> object: ...


def _iso_time(when: Optional[float]) -> str:
    return formatTime(when, "%Y-%m-%dT%H:%M:%S.%f%z")


def event_as_json(event: LogEvent) -> str:
    """One JSON line: time, level, namespace, text, and the event's simple fields."""
    record = {
        "time": _iso_time(event.get("log_time")),
        "level": event["log_level"].name if event.get("log_level") is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "text": redact(formatEvent(event)),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message", "isError", "time", "system"):
            continue
        if isinstance(value, str):
            record[key] = redact(value)
        elif isinstance(value, (bool, int, float)) or value is None:
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["level"] = "critical" if record["level"] == "info" else record["level"]
        record["traceback"] = redact(failure.getTraceback())
    return json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"


class _SecondsClock:
    """Twisted's ``formatTime``, remembering the text of the last second: the
    classic line has no fraction of a second, and formatting the time was a
    third of what a log line cost (~16 of ~48 us).  One tuple, swapped whole,
    so threads logging at once never see a time and a text that differ."""

    def __init__(self) -> None:
        # the text is read only when its second matched, so never the ""
        self._last: Tuple[Optional[int], str] = (None, "")

    def __call__(self, when: Optional[float]) -> str:
        if when is None:
            return formatTime(None)
        second = int(when // 1)
        cached_second, text = self._last
        if second != cached_second:
            text = formatTime(second)
            self._last = (second, text)
        return text


_clock_text = _SecondsClock()


def _system(event: LogEvent) -> str:
    """The ``[system]`` of a classic line, as Twisted's _formatSystem."""
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        return "%s#%s" % (event.get("log_namespace", "-"), "-" if level is None else level.name)
    try:
        return str(system)
    except Exception:
        return "UNFORMATTABLE"


def classic_line(event: LogEvent) -> Optional[str]:
    """What ``formatEventAsClassicLogText`` gives, ~3x faster for the plain
    events imd logs (a str format without ``{call()}`` fields, no failure):
    ``str.format_map`` reads them exactly as Twisted's formatter does.
    Anything else, or any error, takes Twisted's own path."""
    fmt = event.get("log_format")
    if (type(fmt) is str and "()" not in fmt and "log_failure" not in event
            and "log_flattened" not in event):
        try:
            text = fmt.format_map(event)
        except Exception:
            return formatEventAsClassicLogText(event, formatTime=_clock_text)
        if not text:
            return None
        line = "%s [%s] %s" % (_clock_text(event.get("log_time")), _system(event), text)
        return line.replace("\n", "\n\t") + "\n"
    return formatEventAsClassicLogText(event, formatTime=_clock_text)


def event_as_text(event: LogEvent) -> Optional[str]:
    text = classic_line(event)
    return redact(text) if text else None


# What twisted.enterprise.adbapi logs with a full traceback when MySQL went
# away under a transaction: the loss itself is reported (and retried) by
# imd.stores.mysql, so these are one warning line each.
_ADBAPI_CLEAN_UPS = frozenset(("Rollback failed", "Connection close failed"))
# With cp_reconnect, adbapi reports the failed rollback, raises this, and
# reports the same rollback again as failed with it: said once is enough.
_ADBAPI_ECHO = "twisted.enterprise.adbapi.ConnectionLost"
_SKIP = object()


def _adbapi_clean_up(event: LogEvent) -> Any:
    """The one warning line to write for an adbapi clean-up event, _SKIP for
    its echo, else None.  adbapi logs with the legacy ``log.err``, whose
    events carry ``failure`` (their text, traceback included, is in
    ``log_text``), not ``log_failure``."""
    if event.get("why") not in _ADBAPI_CLEAN_UPS:
        return None
    failure = event.get("log_failure") or event.get("failure")
    if not isinstance(failure, Failure):
        return None
    if failure.check(_ADBAPI_ECHO):
        return _SKIP
    message = failure.getErrorMessage()
    assert failure.type is not None   # a Failure always has its exception's class
    return {"log_level": LogLevel.warn, "log_namespace": "imd.stores.mysql", "log_time": event.get("log_time"),
            "log_format": "mysql: {why} after a lost connection: {error}", "why": event["why"].lower(),
            "error": "%s: %s" % (failure.type.__name__, message) if message else failure.type.__name__}


@implementer(ILogObserver)
class ImdLogObserver:
    """Writes every event to ``out``, as text or as JSON lines, token-free."""

    def __init__(self, out: LogOutput, format: str = "text") -> None:
        self._out = out
        self._format: Callable[[LogEvent], Optional[str]] = event_as_json if format == "json" else event_as_text

    def __call__(self, event: LogEvent) -> None:
        clean_up = _adbapi_clean_up(event)
        if clean_up is _SKIP:
            return
        if clean_up is not None:
            event = clean_up
        try:
            line = self._format(event)
        except Exception as e:
            line = json.dumps({"level": "error", "text": "unformattable log event: %s" % e}) + "\n"
        if line:
            self._out.write(line)
            self._out.flush()


def twistd_log_file(twistd_options: Optional[usage.Options]) -> LogOutput:
    """Where twistd would have logged, given its command-line options."""
    logfile = twistd_options.get("logfile") if twistd_options else None
    nodaemon = twistd_options.get("nodaemon") if twistd_options else True
    if logfile == "-" or (not logfile and nodaemon):
        return sys.stdout
    return LogFile.fromFullPath(logfile or "twistd.log")


class LoggingRoot(MultiService):
    """The service twistd is given: hands the application our log observer."""

    def __init__(self, observer: Optional[Callable[[LogEvent], None]], service: Service) -> None:
        super().__init__()
        self.observer = observer
        service.setServiceParent(self)

    def setServiceParent(self, parent: IServiceCollection) -> None:
        super().setServiceParent(parent)
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)

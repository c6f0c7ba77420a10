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

from twisted.application.service import MultiService
from twisted.logger import ILogObserver, formatEvent, formatEventAsClassicLogText, formatTime
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile
from zope.interface import implementer

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_TOKEN_PARAM = re.compile(r"(token=)[^&\s'\"]+")
REDACTED = "[token]"


def redact(text):
    """``text`` with anything that looks like a JWT or a ``token=`` value replaced."""
    return _TOKEN_PARAM.sub(r"\1" + REDACTED, _JWT.sub(REDACTED, text))


def _iso_time(when):
    return formatTime(when, "%Y-%m-%dT%H:%M:%S.%f%z")


def event_as_json(event):
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


def event_as_text(event):
    text = formatEventAsClassicLogText(event)
    return redact(text) if text else None


@implementer(ILogObserver)
class ImdLogObserver:
    """Writes every event to ``out``, as text or as JSON lines, token-free."""

    def __init__(self, out, format="text"):
        self._out = out
        self._format = event_as_json if format == "json" else event_as_text

    def __call__(self, event):
        try:
            line = self._format(event)
        except Exception as e:
            line = json.dumps({"level": "error", "text": "unformattable log event: %s" % e}) + "\n"
        if line:
            self._out.write(line)
            self._out.flush()


def twistd_log_file(twistd_options):
    """Where twistd would have logged, given its command-line options."""
    logfile = twistd_options.get("logfile") if twistd_options else None
    nodaemon = twistd_options.get("nodaemon") if twistd_options else True
    if logfile == "-" or (not logfile and nodaemon):
        return sys.stdout
    return LogFile.fromFullPath(logfile or "twistd.log")


class LoggingRoot(MultiService):
    """The service twistd is given: hands the application our log observer."""

    def __init__(self, observer, service):
        super().__init__()
        self.observer = observer
        service.setServiceParent(self)

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)

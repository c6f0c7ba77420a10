"""``twistd imd``: options and the service maker."""

import sys

from twisted.python import usage

from imd.config import ConfigError, load_settings


class Options(usage.Options):
    synopsis = "[--config FILE]"
    optParameters = [
        ["config", "c", "etc/imd.ini", "the imd.ini file to run with"],
    ]

    def postOptions(self):
        try:
            self.settings = load_settings(self["config"])
        except ConfigError as e:
            # One line, no usage text and no traceback: the operator reads it.
            sys.stderr.write("imd: config error: %s\n" % e)
            raise SystemExit(2)


def makeService(options):
    from twisted.internet import reactor

    from imd.app import App
    from imd.logs import ImdLogObserver, LoggingRoot, twistd_log_file
    settings = options.settings
    twistd_options = getattr(options, "parent", None)
    observer = None
    if not (twistd_options and twistd_options.get("syslog")):
        observer = ImdLogObserver(twistd_log_file(twistd_options), settings.log.format)
    return LoggingRoot(observer, App(settings, reactor).build_service())

"""``twistd imd``: options and the service maker."""

import gc
import sys
from typing import TYPE_CHECKING

from twisted.python import usage

from imd.config import ConfigError, load_settings, with_override

if TYPE_CHECKING:
    from imd.logs import LoggingRoot

# Command-line options that override one key of the ini, so that several
# systemd units can share /etc/imd/imd.ini (e.g. imd-ws@8765 runs
# --roles ws --listen tcp:8765).
OVERRIDES = (("roles", "imd", "roles"), ("listen", "websocket", "listen"), ("node-id", "imd", "node_id"),
             ("metrics-listen", "imd", "metrics_listen"))


class Options(usage.Options):
    synopsis = ("[--config FILE] [--roles ROLES] [--listen ENDPOINT] [--node-id NAME] "
                "[--metrics-listen ENDPOINT] [--supervised]")
    optFlags = [
        # how a ws process starts its migrator (imd.migrator_child), not for operators
        ["supervised", None, "run as the child of the process that started this one: stop when stdin "
                             "closes, log JSON lines, report figures on fd 3, at niceness +10"],
    ]
    optParameters = [
        ["config", "c", "etc/imd.ini", "the imd.ini file to run with"],
        ["roles", None, None, "override [imd] roles, e.g. ws"],
        ["listen", None, None, "override [websocket] listen, e.g. tcp:8765:interface=0.0.0.0"],
        ["node-id", None, None, "override [imd] node_id"],
        ["metrics-listen", None, None, "override [imd] metrics_listen (empty = none)"],
    ]

    def postOptions(self) -> None:
        try:
            settings = load_settings(self["config"])
            for option, section, key in OVERRIDES:
                if self[option] is not None:
                    settings = with_override(settings, section, key, self[option], "--" + option)
            self.settings = settings
        except ConfigError as e:
            # One line, no usage text and no traceback: the operator reads it.
            sys.stderr.write("imd: config error: %s\n" % e)
            raise SystemExit(2)


def _freeze_startup_heap() -> None:
    """Collect once, then move every object alive now (modules, classes,
    the services: what lives as long as the process) out of the collector's
    sight, so that full collections only walk what was made since (a ws
    process starts with ~64,000 such objects).  PyPy's collector has no
    freeze (nor the need: it is generational and moving)."""
    gc.collect()
    if hasattr(gc, "freeze"):
        gc.freeze()


def makeService(options: Options) -> "LoggingRoot":
    from twisted.internet import reactor

    from imd.app import App
    from imd.logs import ImdLogObserver, LoggingRoot, twistd_log_file
    settings = options.settings
    supervised = bool(options["supervised"])
    if supervised:
        from imd.migrator_child import become_child
        become_child()   # before any thread starts: they inherit its priority
    twistd_options = getattr(options, "parent", None)
    observer = None
    if supervised or not (twistd_options and twistd_options.get("syslog")):
        # a supervised process's lines are written by its parent, in the parent's format
        observer = ImdLogObserver(twistd_log_file(twistd_options), "json" if supervised else settings.log.format)
    app = App(settings, reactor)
    service = app.build_service()
    if supervised:
        from imd.migrator_child import ParentLink, figures_of
        ParentLink(figures_of(app), reactor).setServiceParent(service)
    root = LoggingRoot(observer, service)
    # before the reactor runs: nothing listens yet, so no client waits on it
    _freeze_startup_heap()
    return root

"""Running a migrator inside a test."""

from twisted.internet import reactor

from imd.app import App
from tests.support import DEADLINE, with_deadline


def start_migrator(test, settings, clock=None):
    """An App's MySQL pool and migrator service, running; stopped at cleanup.
    With ``clock`` (a task.Clock) its waits between steps and its lock
    renewals run only when the test advances that clock."""
    app = App(settings, reactor, clock)
    if app.sentinel is not None:
        app.sentinel.startService()
        test.addCleanup(app.sentinel.stopService)
    app.mysql.startService()
    group = app.migrator_service()
    group.startService()
    test.addCleanup(app.mysql.stopService)
    test.addCleanup(group.stopService)
    return app.migrator


def with_drain(migrator, seconds=DEADLINE):
    """Fires once the migrator finds the queue empty (after this call)."""
    return with_deadline(migrator.wait_drained(), seconds, "drained queue")

"""The web test page in a real browser: Playwright for Python driving
Debian's Chromium (``/usr/bin/chromium``) against a real imd (http + ws) on
127.0.0.1.

Two pages log in as two friends; one sends a text; the other shows it; the
sender's row turns acked; after a reload the text comes back as history (the
page asks for it 3 s after login); when the server closes a connection the
page shows the code and reason and logs in again by itself.  On failure a screenshot of each page is
saved under tests/artifacts/.

The browser runs in a worker thread (Playwright's sync API) while the reactor
serves it; every wait is a Playwright wait with a deadline.
"""

import os
import re

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from tests.http_support import HttpTestMixin
from tests.mysql_support import recreate_database

CHROMIUM = os.environ.get("IMD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
WAIT_MS = 10000
HISTORY_WAIT_MS = 15000  # the page asks for history 3 s after login


def browser_missing():
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return ("%s is missing: install Debian's chromium (make test does it with apt, "
                "bin/ensure-chromium)" % CHROMIUM)
    return None


def friends_chat(base_url, text, artifact_prefix, close_from_server):
    """Blocking, in a worker thread: the whole scenario in Chromium."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = {}
        try:
            for uid in (1, 2):
                pages[uid] = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
                pages[uid].set_default_timeout(WAIT_MS)
                pages[uid].goto("%s/?uid=%d&connect" % (base_url, uid))
            alice, bob = pages[1], pages[2]
            for uid, page in pages.items():
                expect(page.locator("#status")).to_have_text("open as uid %d" % uid)

            alice.fill("#t-to", "2")
            alice.fill("#t-msg", text)
            alice.click("#t-send")

            live = bob.locator("#messages li[data-source=live]", has_text=text)
            expect(live).to_have_count(1)
            expect(live).to_have_attribute("data-from", "1")
            sent = alice.locator("#log li[data-dir=out][data-type=t]")
            expect(sent).to_have_attribute("data-state", "acked")
            expect(sent.locator(".state")).to_have_text(re.compile(r"acked in \d+ ms"))
            expect(alice.locator("#messages li[data-source=sent]", has_text=text)).to_have_count(1)

            bob.reload()
            expect(bob.locator("#status")).to_have_text("open as uid 2")
            history = bob.locator("#messages li[data-source=history]", has_text=text)
            expect(history).to_have_count(1, timeout=HISTORY_WAIT_MS)
            expect(bob.locator("#log li[data-dir=out][data-type=H]")).to_have_attribute(
                "data-state", "replied", timeout=HISTORY_WAIT_MS)

            # The server closes Bob's connection: the page shows the code and
            # reason, then logs in again on its own with a fresh token.
            close_from_server(2, 4004, "idle for too long")
            expect(bob.locator("#log li[data-dir=sys]", has_text="closed 4004: idle for too long")).to_have_count(1)
            expect(bob.locator("#log li[data-dir=in][data-type=L]")).to_have_count(2)
            expect(bob.locator("#status")).to_have_text("open as uid 2")
        except BaseException:
            os.makedirs(ARTIFACTS, exist_ok=True)
            for uid, page in pages.items():
                try:
                    page.screenshot(path=os.path.join(ARTIFACTS, "%s-uid%d.png" % (artifact_prefix, uid)),
                                    full_page=True)
                except Exception:
                    pass
            raise
        finally:
            browser.close()


class BrowserTests(HttpTestMixin, unittest.TestCase):
    with_ws = True
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        why = browser_missing()
        if why:
            raise unittest.SkipTest(why)
        yield HttpTestMixin.setUp(self)
        # H reads the message table too: a fresh one, without rows of earlier runs.
        yield threads.deferToThread(recreate_database, self.http.app.settings.mysql)

    async def test_two_friends_chat_in_the_browser(self):
        await self.befriend(1, 2)
        prefix = self.id().rsplit(".", 1)[-1]
        for stale in os.listdir(ARTIFACTS) if os.path.isdir(ARTIFACTS) else ():
            if stale.startswith(prefix):
                os.remove(os.path.join(ARTIFACTS, stale))
        await threads.deferToThread(friends_chat, self.http.base_url, "hello from chromium ✓", prefix,
                                    self.close_from_server)

    def close_from_server(self, uid, code, reason):
        """Called from the browser's thread: C + ``code`` to each connection of ``uid``."""
        def close():
            sessions = list(self.http.app.node.sessions_of(uid))
            for session in sessions:
                session.close_with(code, reason)
            return len(sessions)
        closed = threads.blockingCallFromThread(reactor, close)
        assert closed == 1, "uid %d had %d connections" % (uid, closed)



"""The web test page in a real browser: Playwright for Python driving
Debian's Chromium (``/usr/bin/chromium``) against a real imd (http + ws) on
127.0.0.1.

- Two pages log in as two friends; one sends a text; the other shows it; the
  sender's row turns acked; after a reload the text comes back as history
  (the page asks for it 3 s after login); when the server closes a
  connection the page shows the code and reason and logs in again by itself.
- History that arrives after live messages is merged into one timeline in
  ``ts`` order, each message once.
- No input's placeholder is cut off, on a phone and on a wide screen.
- Receipts and typing: the reader's page answers with receipts, the
  sender's shows ✓✓ delivered / read; "typing…" comes and goes; the read
  receipts switch holds the read back.
- The page is a user of the SDK (imd-client, served built under /sdk/):
  against a real ``twistd -n imd`` that is stopped and started again, both
  pages reconnect by themselves; a message sent while one of them is still
  away appears on it exactly once (the SDK's sync, or against this server,
  which has none, the page's own catch-up H), counted unread in its
  conversation list (the server's, contract §10) until the conversation
  is opened.
- A room: its message shows in the conversation list (the server's) with
  its unread count; the open room shows every member's read cursor, the
  reader's own as it reads and the others' as their ``R`` packets come.
- Throughout, the browser console shows no error and the server answers no
  request of the page with 4xx/5xx (a missing favicon was one).

On failure a screenshot of each page is saved under tests/artifacts/.  The
browser runs in a worker thread (Playwright's sync API) while the reactor
serves it; every wait is a Playwright wait with a deadline.
"""

import contextlib
import os
import re
import signal

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from imd.http.site import ImdSite
from tests.daemon_support import start_daemon, write_config
from tests.http_support import HttpTestMixin
from tests.mysql_support import recreate_database
from tests.support import ClientMixin, RedisTestMixin, connect_client, drop, free_port, make_settings

CHROMIUM = os.environ.get("IMD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
WAIT_MS = 10000
HISTORY_WAIT_MS = 15000  # the page asks for history 3 s after login
PHONE = {"width": 390, "height": 844}
WIDE = {"width": 1280, "height": 800}
OLD_MESSAGES = 105       # more than the page's first H asks for (100)
# The H rows of the page's own history requests (the first one, "More"),
# not those the SDK sends by itself (data-role "sync") nor the page's
# conversation list, room or catch-up requests (their own data-role).
PAGE_H = "#log li[data-dir=out][data-type=H]:not([data-role])"
ROOM = "order:7"

# Run in the page: the inputs whose placeholder is wider than their text box.
_CUT_PLACEHOLDERS = """() => {
  document.querySelectorAll("details").forEach((d) => { d.open = true; });
  const ctx = document.createElement("canvas").getContext("2d");
  return [...document.querySelectorAll("input[placeholder]")].filter((i) => i.offsetParent !== null)
    .map((i) => {
      const style = getComputedStyle(i, "::placeholder");
      ctx.font = style.font;
      const room = i.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
      return {input: (i.closest("form").dataset.type || "login") + " " + (i.name || i.id), placeholder: i.placeholder,
              width: Math.ceil(ctx.measureText(i.placeholder).width), room: Math.floor(room)};
    }).filter((i) => i.width > i.room);
}"""


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


class Browser:
    """Chromium pages of one scenario, each noting its console errors and
    failed responses in ``problems``."""

    def __init__(self, playwright_browser, base_url):
        self.browser = playwright_browser
        self.base_url = base_url
        self.pages = {}
        self.problems = []

    def open(self, name, path, viewport=PHONE):
        page = self.browser.new_context(viewport=viewport).new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("console", lambda m: m.type == "error" and self.problems.append("%s console: %s" % (name, m.text)))
        page.on("pageerror", lambda e: self.problems.append("%s page error: %s" % (name, e)))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(
            "%s: HTTP %d for %s" % (name, r.status, r.url)))
        self.pages[name] = page
        page.goto(self.base_url + path)
        return page

    def screenshots(self, prefix):
        os.makedirs(ARTIFACTS, exist_ok=True)
        for name, page in self.pages.items():
            try:
                page.screenshot(path=os.path.join(ARTIFACTS, "%s-%s.png" % (prefix, name)), full_page=True)
            except Exception:
                pass


@contextlib.contextmanager
def chromium(base_url, artifact_prefix):
    """Blocking: a Browser; screenshots of its pages if the block fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        browser = Browser(launched, base_url)
        try:
            yield browser
        except BaseException:
            browser.screenshots(artifact_prefix)
            raise
        finally:
            launched.close()


def expect_open(page, uid):
    from playwright.sync_api import expect
    expect(page.locator("#status")).to_have_text("open as uid %d" % uid)


def friends_chat(browser, text, close_from_server):
    """Blocking, in a worker thread: two friends chat, one reloads, one is closed."""
    from playwright.sync_api import expect

    alice = browser.open("uid1", "/?uid=1&connect")
    bob = browser.open("uid2", "/?uid=2&connect")
    expect_open(alice, 1)
    expect_open(bob, 2)

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
    expect_open(bob, 2)
    # the server's sync (contract §10) brings it back, once
    synced = bob.locator("#messages li", has_text=text)
    expect(synced).to_have_count(1, timeout=HISTORY_WAIT_MS)
    expect(bob.locator(PAGE_H)).to_have_attribute("data-state", "replied", timeout=HISTORY_WAIT_MS)

    # The server closes Bob's connection: the page shows the code and
    # reason, then logs in again on its own with a fresh token.
    close_from_server(2, 4004, "idle for too long")
    expect(bob.locator("#log li[data-dir=sys]", has_text="closed 4004: idle for too long")).to_have_count(1)
    expect(bob.locator("#log li[data-dir=in][data-type=L]")).to_have_count(2)
    expect_open(bob, 2)


def receipts_and_typing(browser):
    """Blocking: Bob has his conversation with Alice open; Alice types (Bob
    sees "typing…"), sends, and sees ✓✓ read; with Bob's read receipts off
    her next message gets ✓✓ delivered only, and read once he turns them on."""
    from playwright.sync_api import expect

    alice = browser.open("uid1", "/?uid=1&connect")
    bob = browser.open("uid2", "/?uid=2&connect")
    expect_open(alice, 1)
    expect_open(bob, 2)
    bob.fill("#t-to", "1")
    alice.fill("#t-to", "2")

    alice.fill("#t-msg", "I'm at the gate")
    typing = bob.locator("#typing")
    expect(typing).to_be_visible()
    expect(typing).to_have_text("uid 1 is typing…")
    alice.click("#t-send")
    expect(typing).to_be_hidden()
    expect(bob.locator("#messages li[data-source=live]", has_text="I'm at the gate")).to_have_count(1)
    first = alice.locator("#messages li[data-source=sent]", has_text="I'm at the gate").locator(".tick")
    expect(first).to_have_attribute("data-state", "read")
    expect(first).to_have_text("✓✓")
    expect(bob.locator("#log li[data-dir=out][data-type=R]").last).to_have_attribute("data-state", "acked")

    bob.uncheck("#read-receipts")
    alice.fill("#t-msg", "second")
    alice.click("#t-send")
    second = alice.locator("#messages li[data-source=sent]", has_text="second").locator(".tick")
    expect(second).to_have_attribute("data-state", "delivered")
    expect(second).to_have_text("✓✓")
    # the one R Bob sent for it says delivered, not read
    expect(bob.locator("#log li[data-dir=out][data-type=R]")).to_have_count(2)
    expect(bob.locator("#log li[data-dir=out][data-type=R]").last).to_contain_text('"state":"delivered"')
    bob.check("#read-receipts")
    expect(second).to_have_attribute("data-state", "read")
    return alice.evaluate("() => getComputedStyle(document.querySelector('#messages .tick[data-state=read]')).color")


def history_after_live(browser, send_live):
    """Blocking: the SDK's sync brings Bob the stored messages (his page's
    first H, the oldest 100, and "More" show none of them twice); one
    arrives live, and Bob answers.
    Returns the ids of Bob's Messages panel, top to bottom, and their ts."""
    from playwright.sync_api import expect

    bob = browser.open("uid2", "/?uid=2&connect")
    expect_open(bob, 2)
    asked = bob.locator(PAGE_H)
    expect(asked).to_have_attribute("data-state", "replied", timeout=HISTORY_WAIT_MS)
    # the server's sync (contract §10) brought all of them; the page's own H shows none twice
    expect(bob.locator("#messages li")).to_have_count(OLD_MESSAGES)

    send_live("live-1", "while the older ones are still to come")
    expect(bob.locator("#messages li[data-source=live]")).to_have_count(1)

    bob.click("#history-more")
    expect(asked).to_have_count(2)
    expect(asked.nth(1)).to_have_attribute("data-state", "replied")
    expect(bob.locator("#messages li")).to_have_count(OLD_MESSAGES + 1)

    bob.fill("#t-to", "1")
    bob.fill("#t-msg", "bob answers last")
    bob.click("#t-send")
    expect(bob.locator("#messages li[data-source=sent]")).to_have_count(1)
    items = bob.locator("#messages li")
    return items.evaluate_all("(items) => items.map((i) => [i.dataset.from, i.dataset.id, Number(i.dataset.ts)])")


def room_view(browser, bob_does):
    """Blocking: a room's message from Bob shows in Alice's conversation
    list (the server's) with 1 unread; opening the room reads it (her
    cursor moves) and shows every member's read cursor, Bob's moving live
    when he reads."""
    from playwright.sync_api import expect

    alice = browser.open("uid1", "/?uid=1&connect")
    expect_open(alice, 1)
    bob_does({"id": "r1", "room": ROOM, "type": "t", "msg": "hello room"})
    row = alice.locator('#conversations li[data-conversation="room:%s"]' % ROOM)
    expect(row).to_have_attribute("data-unread", "1")
    expect(row.locator(".last")).to_have_text("hello room")
    alice.fill("#room-id", ROOM)
    alice.click("#open-room button")
    expect(alice.locator("#conversation li", has_text="hello room")).to_have_count(1)
    cursors = alice.locator("#room-reads .cursor")
    expect(alice.locator('#room-reads .cursor[data-uid="1"]')).to_have_attribute("data-seq", "1")
    expect(alice.locator('#room-reads .cursor[data-uid="1"]')).to_have_text("you → seq 1")
    expect(alice.locator('#room-reads .cursor[data-uid="2"]')).to_have_attribute("data-seq", "0")
    expect(cursors).to_have_count(2)
    expect(row).to_have_attribute("data-unread", "0")
    bob_does({"id": "rr", "room": ROOM, "type": "R", "msg": {"state": "read", "seq": 1}})
    expect(alice.locator('#room-reads .cursor[data-uid="2"]')).to_have_text("uid 2 → seq 1")


class HeldTokens:
    """Holds a page's ``POST /IM/token`` requests (Playwright routes them)
    until released: the page keeps trying on its own, its request simply
    has no answer yet. Called in the browser's thread only."""

    def __init__(self, page):
        self.holding = False
        self.held = []
        page.route("**/IM/token", self._route)

    def _route(self, route):
        if self.holding:
            self.held.append(route)
        else:
            route.continue_()

    def hold(self):
        self.holding = True

    def release(self):
        self.holding = False
        held, self.held = self.held, []
        for route in held:
            route.continue_()


def missed_while_away(browser, restart):
    """Blocking: Alice and Bob are open; the daemon stops and starts again;
    Alice is back first and sends; then Bob is back. Returns Bob's
    conversation list entry for Alice once he has opened it."""
    from playwright.sync_api import expect

    alice = browser.open("uid1", "/?uid=1&connect")
    bob = browser.open("uid2", "/?uid=2&connect")
    alice_tokens, bob_tokens = HeldTokens(alice), HeldTokens(bob)
    expect_open(alice, 1)
    expect_open(bob, 2)
    for page in (alice, bob):   # the first history is in: what comes later is the reconnect's doing
        expect(page.locator(PAGE_H)).to_have_attribute("data-state", "replied", timeout=HISTORY_WAIT_MS)
    # the server syncs (contract §10): the SDK's sync is answered
    expect(bob.locator("#log li[data-dir=out][data-type=H][data-role=sync]").first).to_have_attribute(
        "data-state", "replied")
    # and has a conversation list (contract §10): the page shows the server's, refreshed as messages
    # and receipts come (the unread counts below are the server's)
    expect(bob.locator("#chat-source")).to_contain_text("the server's conversation list")

    alice_tokens.hold()
    bob_tokens.hold()
    restart()   # SIGTERM, exit 0, a new twistd on the same ports
    for page in (alice, bob):
        expect(page.locator("#log li[data-dir=sys]", has_text="closed 1001")).to_have_count(1)
        expect(page.locator("#status")).not_to_have_text(re.compile("^open"))

    alice_tokens.release()
    expect_open(alice, 1)
    expect(alice.locator("#log li[data-dir=in][data-type=L]")).to_have_count(2)
    alice.fill("#t-to", "2")
    alice.fill("#t-msg", "sent while you were away")
    alice.click("#t-send")
    stored = alice.locator("#log li[data-dir=out][data-type=t]", has_text="sent while you were away")
    expect(stored).to_have_attribute("data-state", "acked")
    expect(bob.locator("#status")).not_to_have_text(re.compile("^open"))   # still held

    bob_tokens.release()
    expect_open(bob, 2)
    expect(bob.locator("#log li[data-dir=in][data-type=L]")).to_have_count(2)
    missed = bob.locator("#messages li", has_text="sent while you were away")
    expect(missed).to_have_count(1)
    expect(missed).to_have_attribute("data-from", "1")
    # it came with the SDK's sync: the page's own catch-up (for a server without one) is not needed
    expect(bob.locator("#log li[data-dir=out][data-type=H][data-role=catch-up]")).to_have_count(0)
    expect(missed).to_have_count(1)
    entry = bob.locator("#conversations li[data-conversation='user:1']")
    expect(entry).to_have_attribute("data-unread", "1")
    expect(entry.locator(".unread")).to_have_text("1")

    # live again: the next message comes once too, and the first is still there once
    alice.fill("#t-msg", "and one more")
    alice.click("#t-send")
    expect(bob.locator("#messages li", has_text="and one more")).to_have_count(1)
    expect(entry).to_have_attribute("data-unread", "2")
    expect(missed).to_have_count(1)

    entry.locator("button").click()   # Bob opens the conversation: both are read
    expect(entry).to_have_attribute("data-unread", "0")
    expect(entry.locator(".unread")).to_be_hidden()
    expect(bob.locator("#conversation-title")).to_have_text("uid 1")
    shown = bob.locator("#conversation li")
    expect(shown).to_have_count(2)
    expect(shown.nth(0)).to_contain_text("sent while you were away")
    expect(shown.nth(1)).to_contain_text("and one more")
    first = alice.locator("#messages li[data-source=sent]", has_text="sent while you were away").locator(".tick")
    expect(first).to_have_attribute("data-state", "read")
    expect(missed).to_have_count(1)


def placeholders_cut(browser):
    """Blocking: {viewport: [inputs whose placeholder does not fit]}."""
    cut = {}
    for name, viewport in (("phone", PHONE), ("wide", WIDE)):
        page = browser.open(name, "/", viewport)
        cut[name] = page.evaluate(_CUT_PLACEHOLDERS)
    return cut


class BrowserTests(ClientMixin, HttpTestMixin, unittest.TestCase):
    with_ws = True
    # the history test stores 105 messages back to back
    overrides = {"websocket": {"rate": "1000", "burst": "1000"}}
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        why = browser_missing()
        if why:
            raise unittest.SkipTest(why)
        yield HttpTestMixin.setUp(self)
        # H reads the message table too: a fresh one, without rows of earlier runs.
        yield threads.deferToThread(recreate_database, self.http.app.settings.mysql)
        self.server_errors = []
        site_log = ImdSite.log

        def note_response(site, request):
            # every request the http role answers, whoever made it (the
            # browser's own favicon request included)
            if request.code >= 400:
                self.server_errors.append("HTTP %d for %s" % (request.code, request.uri.decode("latin-1")))
            return site_log(site, request)
        self.patch(ImdSite, "log", note_response)
        prefix = self.id().rsplit(".", 1)[-1]
        for stale in os.listdir(ARTIFACTS) if os.path.isdir(ARTIFACTS) else ():
            if stale.startswith(prefix):
                os.remove(os.path.join(ARTIFACTS, stale))

    def in_browser(self, scenario, *args):
        """Deferred: ``scenario(browser, *args)`` in a worker thread; then no
        console error, no failed response."""
        def run():
            with chromium(self.http.base_url, self.id().rsplit(".", 1)[-1]) as browser:
                result = scenario(browser, *args)
                return result, browser.problems

        def check(outcome):
            result, problems = outcome
            self.assertEqual([], problems + self.server_errors)
            return result
        return threads.deferToThread(run).addCallback(check)

    @defer.inlineCallbacks
    def connect(self, path):
        client = yield connect_client(self.http.ws_port, path)
        self.addCleanup(drop, client)
        return client

    async def test_two_friends_chat_in_the_browser(self):
        await self.befriend(1, 2)
        await self.in_browser(friends_chat, "hello from chromium ✓", self.close_from_server)

    async def test_receipts_ticks_typing_and_the_receipts_switch(self):
        await self.befriend(1, 2)
        color = await self.in_browser(receipts_and_typing)
        self.assertEqual(color, "rgb(45, 108, 223)")   # read ticks are blue

    async def test_history_after_live_messages_makes_one_timeline(self):
        await self.befriend(1, 2)
        alice = await self.login(1)
        old = ["old-%03d" % n for n in range(OLD_MESSAGES)]
        for msg_id in old:
            await self.ask(alice, {"id": msg_id, "to": 2, "type": "t", "msg": msg_id})

        def send_live(msg_id, text):
            reply = threads.blockingCallFromThread(
                reactor, self.ask, alice, {"id": msg_id, "to": 2, "type": "t", "msg": text})
            assert reply["type"] == "A", reply

        shown = await self.in_browser(history_after_live, send_live)
        self.assertEqual([("1", i) for i in old] + [("1", "live-1"), ("2", shown[-1][1])],
                         [(sender, msg_id) for sender, msg_id, _ in shown])
        stamps = [ts for _, _, ts in shown]
        self.assertEqual(sorted(stamps), stamps)

    async def test_a_room_in_the_list_with_unread_and_its_read_cursors(self):
        await self.http.app.room_admin.create(ROOM, [1, 2])
        bob = await self.login(2)

        def bob_does(packet):
            reply = threads.blockingCallFromThread(reactor, self.ask, bob, packet)
            assert reply["type"] == "A", reply
        await self.in_browser(room_view, bob_does)

    async def test_no_placeholder_is_cut_off(self):
        cut = await self.in_browser(placeholders_cut)
        self.assertEqual({"phone": [], "wide": []}, cut)

    def close_from_server(self, uid, code, reason):
        """Called from the browser's thread: C + ``code`` to each connection of ``uid``."""
        def close():
            sessions = list(self.http.app.node.sessions_of(uid))
            for session in sessions:
                session.close_with(code, reason)
            return len(sessions)
        closed = threads.blockingCallFromThread(reactor, close)
        assert closed == 1, "uid %d had %d connections" % (uid, closed)


class DaemonRestartBrowserTests(RedisTestMixin, unittest.TestCase):
    """The page against a real ``twistd -n imd`` (ws, http, migrate) that is
    stopped and started again on the same ports."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        why = browser_missing()
        if why:
            raise unittest.SkipTest(why)
        yield RedisTestMixin.setUp(self)
        yield threads.deferToThread(recreate_database, make_settings().mysql)
        self.http_port, ws_port = free_port(), free_port()
        self.config = write_config(self, {
            "imd": {"roles": "ws, http, migrate", "shutdown_grace": "2"},
            "websocket": {"listen": "tcp:%d:interface=127.0.0.1" % ws_port},
            "http": {"listen": "tcp:%d:interface=127.0.0.1" % self.http_port}})
        self.daemon = yield start_daemon(self, self.config)
        self.exits = []

    @defer.inlineCallbacks
    def restart(self):
        self.daemon.signal(signal.SIGTERM)
        self.exits.append((yield self.daemon.wait_ended()))
        self.daemon = yield start_daemon(self, self.config)

    async def test_after_a_restart_the_page_reconnects_and_shows_what_it_missed_once(self):
        await self.befriend(1, 2)

        def scenario():
            with chromium("http://127.0.0.1:%d" % self.http_port, "restart") as browser:
                missed_while_away(browser, lambda: threads.blockingCallFromThread(reactor, self.restart))
                return browser.problems

        problems = await threads.deferToThread(scenario)
        self.assertEqual([], problems)
        self.assertEqual([0], self.exits)

"""A push gateway for the tests: a real HTTP server on 127.0.0.1 port 0
that records every POST and answers as the test tells it (a status per
request in turn, 200 once they run out; ``status`` to every request while
it is set; or no answer at all while ``hold`` is set)."""

import json
from typing import Any, List, NamedTuple, Optional

from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.web import resource, server

from tests.support import wait_until

SECRET = "test-push-secret-of-at-least-32-bytes"


class Post(NamedTuple):
    delivery: str
    timestamp: str
    signature: str
    body: bytes
    at: float          # the drainer's clock when it arrived (see Receiver.clock)

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


class _Gateway(resource.Resource):
    isLeaf = True

    def __init__(self, receiver: "Receiver") -> None:
        super().__init__()
        self._receiver = receiver

    def render_POST(self, request: Any) -> Any:
        r = self._receiver
        header = request.requestHeaders.getRawHeaders
        r.posts.append(Post((header(b"x-imd-delivery") or [b""])[0].decode(),
                            (header(b"x-imd-timestamp") or [b""])[0].decode(),
                            (header(b"x-imd-signature") or [b""])[0].decode(),
                            request.content.read(), r.clock.seconds()))
        if r.hold:
            r.held.append(request)
            request.notifyFinish().addErrback(lambda _: None)
            return server.NOT_DONE_YET
        request.setResponseCode(r.status or (r.answers.pop(0) if r.answers else 200))
        request.setHeader(b"content-type", b"application/json")
        return b"{}"


class Receiver:
    """``posts`` in arrival order; ``answers`` the statuses to give next;
    ``status`` the one to give every request while set."""

    def __init__(self, clock: Any = reactor) -> None:
        self.clock = clock
        self.posts: List[Post] = []
        self.answers: List[int] = []
        self.status: Optional[int] = None
        self.hold = False
        self.held: List[Any] = []
        self._port: Any = None

    @defer.inlineCallbacks
    def start(self) -> Any:
        site = server.Site(_Gateway(self))
        site.noisy = False
        self._port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
        self.url = "http://127.0.0.1:%d/push" % self._port.getHost().port
        return self

    def release(self, status: int = 200) -> None:
        """Answer the held requests now."""
        held, self.held = self.held, []
        for request in held:
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            request.write(b"{}")
            request.finish()

    def stop(self) -> Any:
        for request in self.held:
            if request.channel is not None and request.channel.transport is not None:
                request.channel.transport.abortConnection()
        self.held = []
        return self._port.stopListening() if self._port is not None else None

    @property
    def deliveries(self) -> set:
        return {post.delivery for post in self.posts}

    def wait_posts(self, count: int, seconds: float = 10) -> Any:
        return wait_until(lambda: len(self.posts) >= count, seconds, what="%d POSTs" % count)

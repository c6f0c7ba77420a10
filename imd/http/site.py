"""The HTTP site: a body cap on every request and an access log that never
holds a token.

twisted.web reads a whole request body before rendering; :class:`CappedRequest`
keeps at most ``max_body`` bytes of it and marks the request so the resource
answers 413.  The access log goes through twisted.logger; its path has
tokens masked (imd.logs.redact, the one redactor), and it holds no header
values (no Authorization, no Referer).
"""

from twisted.logger import Logger
from twisted.web.server import Request, Site

from imd.logs import redact

_log = Logger()

MAX_BODY_BYTES = 8192
# The server API (/IM/api/) takes larger bodies: a system message to 1000 users
API_PATH = b"/IM/api/"
API_MAX_BODY_BYTES = 65536
REQUEST_IDLE_TIMEOUT = 60


class CappedRequest(Request):
    max_body = MAX_BODY_BYTES
    body_too_large = False
    _body_bytes = 0

    def gotLength(self, length):
        # The request line is parsed (the channel holds its path) before the
        # body arrives: the cap is chosen by path here.
        path = getattr(self.channel, "_path", None) or b""
        if path.startswith(API_PATH):
            self.max_body = API_MAX_BODY_BYTES
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.max_body:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class ImdSite(Site):
    requestFactory = CappedRequest

    def __init__(self, resource, clock):
        super().__init__(resource, timeout=REQUEST_IDLE_TIMEOUT)
        self._clock = clock
        self.displayTracebacks = False

    def log(self, request):
        peer = request.getClientAddress()
        _log.info("http {peer} {method} {path} {code} {length}",
                  peer=getattr(peer, "host", "-"),
                  method=request.method.decode("latin-1")[:16],
                  path=redact(request.uri.decode("latin-1"))[:300],
                  code=request.code,
                  length=request.sentLength or 0)

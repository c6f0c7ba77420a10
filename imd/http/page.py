"""The web test page (``web/``) and the SDK's built ES modules it imports
(``/sdk/<name>.js``, from ``clients/js/dist``), served as plain files.

Only ``GET`` and ``HEAD``; of ``web/`` the three page files alone, of the
SDK's directory only names like ``client.js`` (letters, digits, ``_``, ``-``,
then ``.js``: no other file, no directory listing, nothing below a file, no
way out of the directory).  Anything else (another method, another path) is
a JSON error like the rest of the site.  When the SDK is not built, its
modules answer 503 naming the command that builds it, and the process logs
that once when it builds the site.
"""

import os
import re
from typing import Callable, Dict, Optional, Union

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import File

from imd.http.resource import ErrorResource, NotFound, error_result, finish_json, method_not_allowed
from imd.resources import data_dir

_log = Logger()

WEB_DIR = data_dir("web")
PAGE_FILES = ("page.html", "page.js", "page.css")
PAGE_METHODS = ("GET", "HEAD")
SDK_PATH = b"sdk"
SDK_MODULE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\.js\Z")
JAVASCRIPT = "text/javascript; charset=utf-8"
SDK_MISSING = ("the web page's SDK is not built: run `make sdk` (npm ci and npm run build in clients/js), "
               "then reload the page")

# The page talks to this origin (tokens) and to any ws:/wss: address the
# token's url names; nothing else runs on it.
_CSP = (b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        b"style-src 'self'; script-src 'self'; frame-ancestors 'none'")


class PageFile(File):
    # File declares these as its own HTML error pages; any resource serves
    childNotFound = NotFound()   # type: ignore[assignment]
    forbidden = ErrorResource(403, "forbidden")   # type: ignore[assignment]
    # whatever the system's mime table says of .js (application/javascript, or nothing)
    contentTypes = dict(File.contentTypes, **{".js": JAVASCRIPT})

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self.childNotFound   # each page file is a file: nothing below it

    def render(self, request: Request) -> Union[bytes, int]:
        if request.method.decode("ascii", "replace").upper() not in PAGE_METHODS:
            return finish_json(request, error_result(method_not_allowed(request.method, PAGE_METHODS)))
        # The files are a few KiB: whole answers only, so no 416 page either.
        request.requestHeaders.removeHeader(b"range")
        request.setHeader(b"Content-Security-Policy", _CSP)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"no-cache")
        return super().render(request)


def sdk_dir() -> Optional[str]:
    """Where the SDK's built modules are, or None before ``make sdk``."""
    try:
        return data_dir("sdk")
    except FileNotFoundError:
        return None


class SdkModules(Resource):
    """``/sdk/<name>.js``: one built module of the SDK; ``locate`` says
    where they are (looked up at each request: a build made while the
    daemon runs is served at once)."""

    def __init__(self, locate: Optional[Callable[[], Optional[str]]] = None) -> None:
        super().__init__()
        self._locate = locate or (lambda: sdk_dir())

    def getChild(self, path: bytes, request: Request) -> Resource:
        name = path.decode("ascii", "replace")
        # one path segment, a plain name: no "..", no "/", no hidden file, no .map or .d.ts
        if request.postpath or not SDK_MODULE.match(name):
            return NotFound()
        directory = self._locate()
        if directory is None:
            return ErrorResource(503, SDK_MISSING)
        path_name = os.path.join(directory, name)
        if not os.path.isfile(path_name):
            return NotFound()
        return PageFile(path_name)

    def render(self, request: Request) -> bytes:
        return NotFound().render(request)   # /sdk and /sdk/: no listing


def page_resources(web_dir: str = WEB_DIR,
                   locate_sdk: Optional[Callable[[], Optional[str]]] = None) -> Dict[bytes, Resource]:
    """{child name: resource}: ``/`` is page.html, the others by their
    names, ``sdk`` the SDK's modules (a line in the log when it is not built)."""
    locate_sdk = locate_sdk or (lambda: sdk_dir())
    children: Dict[bytes, Resource] = {
        b"": PageFile(os.path.join(web_dir, "page.html"), defaultType="text/html; charset=utf-8")}
    for name in PAGE_FILES:
        children[name.encode("ascii")] = PageFile(os.path.join(web_dir, name))
    children[SDK_PATH] = SdkModules(locate_sdk)
    if locate_sdk() is None:
        _log.warn("the web page will not work: " + SDK_MISSING)
    return children

"""The web test page (``web/``) served as plain files: no build step.

Only ``GET`` and ``HEAD`` of the three files; anything else (another method,
a path below a file) is a JSON error like the rest of the site.
"""

import os
from typing import Dict, Union

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import File

from imd.http.resource import ErrorResource, NotFound, error_result, finish_json, method_not_allowed
from imd.resources import data_dir

WEB_DIR = data_dir("web")
PAGE_FILES = ("page.html", "page.js", "page.css")
PAGE_METHODS = ("GET", "HEAD")

# The page talks to this origin (tokens) and to any ws:/wss: address the
# token's url names; nothing else runs on it.
_CSP = (b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        b"style-src 'self'; script-src 'self'; frame-ancestors 'none'")


class PageFile(File):
    # File declares these as its own HTML error pages; any resource serves
    childNotFound = NotFound()   # type: ignore[assignment]
    forbidden = ErrorResource(403, "forbidden")   # type: ignore[assignment]

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


def page_resources(web_dir: str = WEB_DIR) -> Dict[bytes, PageFile]:
    """{child name: resource}: ``/`` is page.html, the others by their names."""
    children = {b"": PageFile(os.path.join(web_dir, "page.html"), defaultType="text/html; charset=utf-8")}
    for name in PAGE_FILES:
        children[name.encode("ascii")] = PageFile(os.path.join(web_dir, name))
    return children

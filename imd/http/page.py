"""The web test page (``web/``) served as plain files: no build step."""

import os

from twisted.web.static import File

from imd.resources import data_dir

WEB_DIR = data_dir("web")
PAGE_FILES = ("page.html", "page.js", "page.css")

# The page talks to this origin (tokens) and to any ws:/wss: address the
# token's url names; nothing else runs on it.
_CSP = (b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        b"style-src 'self'; script-src 'self'; frame-ancestors 'none'")


class PageFile(File):
    def render(self, request):
        request.setHeader(b"Content-Security-Policy", _CSP)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"no-cache")
        return super().render(request)


def page_resources(web_dir=WEB_DIR):
    """{child name: resource}: ``/`` is page.html, the others by their names."""
    children = {b"": PageFile(os.path.join(web_dir, "page.html"), defaultType="text/html; charset=utf-8")}
    for name in PAGE_FILES:
        children[name.encode("ascii")] = PageFile(os.path.join(web_dir, name))
    return children

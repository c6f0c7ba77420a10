"""The ``http`` role: token issuer, web test page, ``/healthz``, ``/metrics``,
the server API (``/IM/api/``); and the ``[imd] metrics_listen`` site that
any process serves (``/metrics`` and ``/healthz`` only)."""

from twisted.web.resource import Resource

from imd.handlers.api import ServerApi
from imd.http.api import ApiResource
from imd.http.health import HealthResource
from imd.http.metrics import MetricsResource
from imd.http.page import page_resources
from imd.http.resource import NotFound
from imd.http.site import ImdSite
from imd.http.token import TokenResource


class Root(Resource):
    def getChild(self, path, request):
        return NotFound()


class _Folder(Root):
    def render(self, request):
        return NotFound().render(request)


def build_site(app, ws_base_url=None):
    """The Site of the http role.  ``ws_base_url`` overrides where issued
    tokens point (tests whose ws listener took port 0)."""
    root = Root()
    for name, resource in page_resources().items():
        root.putChild(name, resource)
    im = _Folder()
    im.putChild(b"token", TokenResource(app, ws_base_url))
    api = ServerApi(app.messages, app.presence, app.friends, app.node, app.clock,
                    lambda: getattr(app, "order_lifecycle", None))
    im.putChild(b"api", ApiResource(api, app.settings.http.api_key, app.metrics))
    root.putChild(b"IM", im)
    root.putChild(b"healthz", HealthResource(app))
    root.putChild(b"metrics", MetricsResource(app))
    http = app.settings.http
    return ImdSite(root, app.clock, http.request_timeout, http.max_connections)


def build_metrics_site(app) -> ImdSite:
    """``/metrics`` and ``/healthz`` alone, for ``[imd] metrics_listen``."""
    root = Root()
    root.putChild(b"healthz", HealthResource(app, details=True))
    root.putChild(b"metrics", MetricsResource(app))
    http = app.settings.http
    return ImdSite(root, app.clock, http.request_timeout, http.max_connections)

"""The ``http`` role: token issuer, web test page, ``/healthz``, ``/metrics``,
the server API (``/IM/api/``); and the ``[imd] metrics_listen`` site that
any process serves (``/metrics`` and ``/healthz`` only)."""

import typing
from typing import TYPE_CHECKING, Optional, cast

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from imd.handlers.api import ServerApi
from imd.http.api import ApiResource
from imd.http.health import HealthApp, HealthResource
from imd.http.metrics import MetricsApp, MetricsResource
from imd.http.page import page_resources
from imd.http.resource import NotFound
from imd.http.site import ImdSite
from imd.http.token import TokenApp, TokenResource

if TYPE_CHECKING:
    from imd.node import LocalNode
    from imd.stores.friends import FriendStore
    from imd.stores.messages import MessageStore
    from imd.stores.presence import PresenceStore


class MetricsSiteApp(HealthApp, MetricsApp, typing.Protocol):
    """What the ``[imd] metrics_listen`` site uses of imd.app.App (which
    imports this package)."""


class SiteApp(MetricsSiteApp, TokenApp, typing.Protocol):
    """What the http role's site uses of imd.app.App."""

    @property
    def messages(self) -> "MessageStore": ...

    @property
    def presence(self) -> "PresenceStore": ...

    @property
    def friends(self) -> "FriendStore": ...

    @property
    def node(self) -> "LocalNode": ...


def _put(parent: Resource, name: bytes, child: Resource) -> None:
    # putChild takes the zope interface IResource, which mypy (without
    # mypy-zope) does not see Resource implement.
    parent.putChild(name, cast(IResource, child))


class Root(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()


class _Folder(Root):
    def render(self, request: Request) -> bytes:
        return NotFound().render(request)
def build_site(app: SiteApp, ws_base_url: Optional[str] = None) -> ImdSite:
    """The Site of the http role.  ``ws_base_url`` overrides where issued
    tokens point (tests whose ws listener took port 0)."""
    root = Root()
    for name, resource in page_resources().items():
        _put(root, name, resource)
    im = _Folder()
    _put(im, b"token", TokenResource(app, ws_base_url))
    api = ServerApi(app.messages, app.presence, app.friends, app.node, app.clock,
                    lambda: getattr(app, "order_lifecycle", None), getattr(app, "recaller", None),
                    getattr(app, "eraser", None))
    http = app.settings.http
    _put(im, b"api", ApiResource(api, http.api_key, app.metrics, app.clock, http.api_rate, http.api_burst,
                                 getattr(app, "room_admin", None)))
    _put(root, b"IM", im)
    _put(root, b"healthz", HealthResource(app))
    _put(root, b"metrics", MetricsResource(app))
    http = app.settings.http
    # /IM/ requests wait while the process is starting (imd.startup)
    return ImdSite(root, app.clock, http.request_timeout, http.max_connections, startup=app.startup)


def build_metrics_site(app: MetricsSiteApp) -> ImdSite:
    """``/metrics`` and ``/healthz`` alone, for ``[imd] metrics_listen``."""
    root = Root()
    _put(root, b"healthz", HealthResource(app, details=True))
    _put(root, b"metrics", MetricsResource(app, details=True))
    http = app.settings.http
    return ImdSite(root, app.clock, http.request_timeout, http.max_connections)

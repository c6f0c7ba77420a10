"""The process registry in Redis: every running imd process and the URL its
``/metrics`` is served on, so that ``imd-admin top`` finds every node and a
scrape can tell whether any WebSocket node is up.

Keys (imd.stores.keys):

- ``processes``: sorted set, member = the process's identity
  (``<node_id>/<roles>``, e.g. ``host:8765/ws``), score = when its entry
  expires (Unix ms, Redis's own clock).
- ``processes:info``: hash, identity -> JSON ``{"node", "roles", "metrics",
  "host", "pid", "version"}`` (``metrics`` is empty for a process that
  serves none).

Each process refreshes its entry every ``[presence] ttl / 3`` seconds with an
expiry of ``ttl``; the scripts read the time from Redis (``TIME``) so that
the clocks of the hosts do not matter.  An entry whose process died without
a clean stop expires; the next refresh by any process deletes it.
"""

import json
from typing import Any, Dict, Iterable, List, Optional

from twisted.internet import defer

from imd.stores.keys import Keys
from imd.stores.redis import RedisClient, RedisStore, Script

REGISTER = Script.load("register")
UNREGISTER = Script.load("unregister")
LIVE = Script.load("live")
READY_NODES = Script.load("ready_nodes")


def process_identity(node_id: str, roles: Iterable[str]) -> str:
    """``host:8765/ws``: one entry per process (a node id may be shared by
    processes of different roles, e.g. imd-http beside imd-ws@8765)."""
    return "%s/%s" % (node_id, ",".join(sorted(roles)))


class ProcessRegistry(RedisStore):
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys
        self.key = keys.processes
        self.info_key = keys.processes_info

    def register(self, identity: str, info: dict, ttl: float) -> defer.Deferred:
        """Add or refresh this process's entry for ``ttl`` seconds."""
        return self._client.run(REGISTER, [self.key, self.info_key],
                                [identity, json.dumps(info, sort_keys=True), max(1, int(ttl * 1000))])

    def unregister(self, identity: str) -> defer.Deferred:
        return self._client.run(UNREGISTER, [self.key, self.info_key], [identity])

    def processes(self) -> defer.Deferred:
        """Fires with the info dicts of the live entries (unreadable ones skipped)."""
        d = self._client.run(LIVE, [self.key, self.info_key], [])
        return d.addCallback(_decoded)

    def ready_nodes(self) -> defer.Deferred:
        """Fires with how many WebSocket nodes are registered and beating."""
        d = self._client.run(READY_NODES, [self.key, self.keys.nodes], [])
        return d.addCallback(int)


def _decoded(replies: Optional[List[str]]) -> List[Dict[str, Any]]:
    found = []
    for reply in replies or ():
        try:
            info = json.loads(reply)
        except (TypeError, ValueError):
            continue
        if isinstance(info, dict):
            found.append(info)
    return sorted(found, key=lambda info: (str(info.get("node")), str(info.get("roles"))))

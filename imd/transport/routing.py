"""Delivery of a server packet to every connection of a user."""


class LocalRouter:
    """Delivers to the connections of this process; packets for connections
    on other nodes travel through Redis (imd.stores.presence, imd.transport.bus)."""

    def __init__(self, registry):
        self._registry = registry

    def deliver(self, uid, payload):
        """Send ``payload`` (bytes) to each connection of ``uid``; how many got it."""
        sessions = self._registry.sessions_of(uid)
        for session in sessions:
            session.send_packet(payload)
        return len(sessions)

    def deliver_frame(self, uid, payload):
        """A ``d`` frame from the node bus (text): deliver it here."""
        return self.deliver(uid, payload.encode("utf-8") if isinstance(payload, str) else payload)

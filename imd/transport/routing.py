"""Delivery of a server packet to every connection of a user."""


class LocalRouter:
    """Delivers to the connections of this process."""

    def __init__(self, registry):
        self._registry = registry

    def deliver(self, uid, payload):
        """Send ``payload`` (bytes) to each connection of ``uid``; how many got it."""
        sessions = self._registry.sessions_of(uid)
        for session in sessions:
            session.send_packet(payload)
        return len(sessions)

"""The local connections of each logged-in user, oldest first."""


class SessionRegistry:
    def __init__(self, max_devices):
        self.max_devices = max_devices
        self._by_uid = {}

    def add(self, session):
        """Register ``session``; returns the sessions it pushes past
        ``max_devices`` (oldest first), which the caller closes."""
        sessions = self._by_uid.setdefault(session.uid, [])
        sessions.append(session)
        excess = len(sessions) - self.max_devices
        if excess <= 0:
            return []
        evicted, sessions[:excess] = sessions[:excess], []
        return evicted

    def remove(self, session):
        sessions = self._by_uid.get(session.uid)
        if sessions and session in sessions:
            sessions.remove(session)
            if not sessions:
                del self._by_uid[session.uid]

    def sessions_of(self, uid):
        return self._by_uid.get(uid, ())

    def is_online(self, uid):
        return uid in self._by_uid

    def users(self):
        return list(self._by_uid)

    def __len__(self):
        return sum(len(s) for s in self._by_uid.values())

"""The local connections of each logged-in user, oldest first.

``[websocket] max_devices`` is enforced across nodes in Redis
(imd.stores.presence); this is only the local index.
"""


class SessionRegistry:
    def __init__(self):
        self._by_uid = {}

    def add(self, session):
        self._by_uid.setdefault(session.uid, []).append(session)

    def find(self, uid, conn_id):
        for session in self._by_uid.get(uid, ()):
            if session.conn_id == conn_id:
                return session
        return None

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

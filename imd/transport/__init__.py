"""Transport: connections (session.py, no WebSocket library in it), their
Autobahn adapter (websocket.py) and their limits."""

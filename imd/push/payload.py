"""What a push POSTs: the JSON body and its signature.  Pure.

The body is built from the in-flight record alone.  The signature (contract
§7.5) covers ``"<timestamp>.<delivery key>.<body>"``: the timestamp of the
attempt and the delivery key are in the signed text, so a gateway can
refuse a request replayed later (an old timestamp) or re-keyed to slip past
its duplicate check.
"""

import hashlib
import hmac
import json
from typing import Any

PREVIEW_CHARS = 100
IMAGE_PREVIEW = "[image]"


def preview(packet: Any, enabled: bool = True) -> str:
    """The first 100 characters of a ``t``, ``"[image]"`` for an ``i``, the
    ``event`` of an ``s``; ``""`` when previews are off (or an ``s`` has no
    string ``event``)."""
    if not enabled:
        return ""
    kind, msg = packet.get("type"), packet.get("msg")
    if kind == "t" and isinstance(msg, str):
        return msg[:PREVIEW_CHARS]   # code points, as the contract counts characters
    if kind == "i":
        return IMAGE_PREVIEW
    if kind == "s" and isinstance(msg, dict) and isinstance(msg.get("event"), str):
        return msg["event"][:PREVIEW_CHARS]
    return ""


def body(to: int, packet_json: str, unread: int, with_preview: bool = True) -> bytes:
    """``{"to","from","id","type","preview","ts","unread"}`` (and
    ``"room"`` for a room's message) for the newest message (its stored JSON) and the recipient's undelivered count;
    ValueError when that is not a JSON object.  Without previews the
    client-chosen ``id`` is ``""`` too: an id can carry text."""
    packet = json.loads(packet_json)
    if not isinstance(packet, dict):
        raise ValueError("not a message: %r" % (packet_json[:100],))
    out = {"to": to, "from": packet.get("from"), "id": packet.get("id") if with_preview else "",
           "type": packet.get("type"), "preview": preview(packet, with_preview), "ts": packet.get("ts"),
           "unread": unread}
    if "room" in packet:
        out["room"] = packet["room"]   # a room's message (contract v3 §9)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signature(secret: str, timestamp: int, delivery: str, data: bytes) -> str:
    """``X-Imd-Signature``: ``sha256=<hex HMAC-SHA256 of
    "<timestamp>.<delivery key>.<body>">`` (``timestamp``: the attempt's
    ``X-Imd-Timestamp``, Unix seconds)."""
    signed = b"%d.%s." % (timestamp, delivery.encode("ascii")) + data
    return "sha256=" + hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()

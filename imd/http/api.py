"""``/IM/api/``: the server API for the platform's backend (contract §7.4).

Off (every path 404) unless ``[http] api_key`` is set.  Every request sends
``Authorization: Bearer <api_key>``; the key is compared in constant time
(both sides hashed with SHA-256 first, so not even its length shows in the
time of an answer).  A key in the query string is refused (400), whatever
else the request holds: query strings end up in proxies' and browsers' logs.
The access log (imd.http.site) never holds a header.

The credentials are checked before the path and the method: a request
without the right key gets the same 401 whatever its method and path (a key
in the query string, the same 400), so the routes cannot be mapped from
outside.  Bodies are JSON objects of at most 64 KiB
(:data:`API_MAX_BODY_BYTES`, applied by the site before the body is read);
every error is ``{"error"}`` with 400, 401, 403 (imd may not write the
orders table), 404, 405, 409 (an order taken or closed), 413, 429 or 503
(Redis or MySQL away).

The key has an allowance (``[http] api_rate`` units per second, ``api_burst``
at once, per http process): a request takes one unit, a ``send`` one per
recipient per started 4 KiB of its ``msg`` (so a 64 KiB message to 1000
users, 64 MB to store, waits for a full bucket); past it ``429`` with
``Retry-After``, before anything is stored.

    POST /IM/api/send                 {"to": uid | [uids], "msg": {...}, "id": "..."}
    POST /IM/api/orders               {"order", "customer", "courier" (optional, null: none yet)}
    POST /IM/api/orders/<order>/close
    POST /IM/api/kick                 {"uid", "reason"}
    GET  /IM/api/online?uid=1&uid=2
    POST /IM/api/friends              {"a", "b", "op": "add" | "rm"}
    POST /IM/api/rooms                {"room", "members": [uids], "meta": {...}}
    POST /IM/api/rooms/<room>/members {"add": [uids], "rm": [uids]}
    POST /IM/api/rooms/<room>/send    {"msg": {...}, "id": "..."}
    POST /IM/api/rooms/<room>/close
    GET  /IM/api/rooms/<room>
"""

import hashlib
import hmac
import json
from typing import Any, Dict, Generator, List, Optional, Tuple, cast
from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request

from imd import protocol
from imd.errors import ImdError, Refused, StoreUnavailable
from imd.handlers.api import ServerApi, recipients_list
from imd.handlers.rooms import RoomAdmin
from imd.http.ratelimit import RateLimiter
from imd.http.resource import HttpError, JsonResource, read_json_object
from imd.http.site import API_MAX_BODY_BYTES

_log = Logger()

MAX_RECIPIENTS = 1000
# a send costs one unit of the key's allowance per recipient per started COST_BYTES of msg
COST_BYTES = 4096
MAX_UIDS = 1000
MAX_REASON_BYTES = 100
# JSON text of an s packet's msg: what message.msg (TEXT) holds
MAX_MSG_BYTES = 65535
# Query parameters that look like a credential: refused, never used.
_CREDENTIAL_PARAMS = frozenset((b"api_key", b"apikey", b"key", b"token", b"access_token", b"authorization",
                                b"auth", b"bearer"))
_CHALLENGE = {b"WWW-Authenticate": b'Bearer realm="imd-api"'}

# (path) -> (endpoint label, method); orders/<id>/close is matched apart
_ROUTES = {("send",): ("send", "POST"), ("orders",): ("orders", "POST"), ("kick",): ("kick", "POST"),
           ("online",): ("online", "GET"),
           ("friends",): ("friends", "POST"), ("messages", "delete"): ("delete", "POST"),
           ("rooms",): ("rooms", "POST")}
MAX_ROOM_UIDS = 1000   # uids named in one rooms request (max_members limits what is kept)


def _digest(text: bytes) -> bytes:
    return hashlib.sha256(text).digest()


class ApiKey:
    """The configured key, compared in constant time."""

    def __init__(self, key: str) -> None:
        self._digest = _digest(key.encode("utf-8"))
        # what the key's allowance is filed under: never the key itself
        self.name = self._digest[:8].hex()

    def matches(self, presented: bytes) -> bool:
        return hmac.compare_digest(_digest(presented), self._digest)


def bearer(request: Any) -> Optional[bytes]:
    """The token of ``Authorization: Bearer <token>``, or None."""
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


def _route(postpath: List[bytes]) -> Tuple[str, str, Optional[bytes]]:
    """``(endpoint, method, order id)`` of a path under /IM/api/, or HttpError 404."""
    parts = tuple(p for p in postpath if p)
    if len(parts) == 3 and parts[0] == b"orders" and parts[2] == b"close":
        return "close", "POST", parts[1]
    if len(parts) == 3 and parts[0] == b"users" and parts[2] == b"erase":
        return "erase", "POST", parts[1]
    # rooms (contract v3 §9): the room id is checked by the endpoint (400)
    if len(parts) == 3 and parts[0] == b"rooms" and parts[2] in (b"members", b"send", b"close"):
        return "room_" + parts[2].decode("ascii"), "POST", parts[1]
    if len(parts) == 2 and parts[0] == b"rooms":
        return "room_show", "GET", parts[1]
    names = tuple(p.decode("latin-1") for p in parts)
    if names in _ROUTES:
        endpoint, method = _ROUTES[names]
        return endpoint, method, None
    raise HttpError(404, "no such resource")


def _endpoint_label(postpath: List[bytes]) -> str:
    """The endpoint a path names, or ``other``: a metrics label."""
    try:
        return _route(postpath)[0]
    except HttpError:
        return "other"


def _query(request: Any) -> Dict[bytes, List[bytes]]:
    """The query string's parameters (never a form body's)."""
    return parse_qs(urlsplit(request.uri).query, keep_blank_values=True)


def _uid(value: Any, name: str) -> int:
    try:
        return protocol.parse_uid(value, name)
    except ValueError as e:
        raise HttpError(400, str(e))


def _positive_id(body: Dict[str, object], name: str) -> int:
    """``body[name]``: a JSON integer 1..2^63-1 (not a bool, a float or a
    string of digits: an id written wrong is a platform's bug to see)."""
    value = body.get(name)
    if type(value) is not int or not 0 < value <= protocol.MAX_UID:
        raise HttpError(400, "%s: a positive integer (got %s)" % (name, json.dumps(value)[:40]))
    return value


def send_cost(recipients: int, msg_bytes: int) -> int:
    """What a ``send`` takes of the key's allowance: one per recipient per
    started :data:`COST_BYTES` of its ``msg``."""
    return max(1, recipients) * max(1, -(-msg_bytes // COST_BYTES))


class ApiResource(JsonResource):
    """Everything under /IM/api/ (a leaf: the path is routed here)."""

    def __init__(self, api: ServerApi, api_key: str, metrics: Any = None, clock: Any = None,
                 rate: float = 0, burst: int = 1, rooms: Optional[RoomAdmin] = None) -> None:
        """``rate``/``burst``: the key's allowance (``[http] api_rate``,
        ``api_burst``; rate 0: none), counted on ``clock``; ``rooms``: the
        platform's side of rooms (None: the room routes answer 503)."""
        super().__init__(())
        self._api = api
        self._room_side = rooms
        self._key = ApiKey(api_key) if api_key else None
        self._metrics = metrics
        self._clock = clock
        self._allowance = RateLimiter(rate, burst)

    def render(self, request: Any) -> Any:
        endpoint = _endpoint_label(request.postpath)   # for the metrics only, never the answer
        try:
            if self._key is None:
                raise HttpError(404, "no such resource")
            # Credentials before routing: without the key, every method and
            # path gets the same answer, so the API's routes cannot be
            # mapped (a 405 or a 404 would tell which exist).
            if _CREDENTIAL_PARAMS & {name.lower() for name in _query(request)}:
                raise HttpError(400, "credentials in the query string are refused (they end up in logs): "
                                     "send Authorization: Bearer <api_key>")
            presented = bearer(request)
            if presented is None or not self._key.matches(presented):
                raise HttpError(401, "missing or bad credentials: send Authorization: Bearer <api_key>",
                                _CHALLENGE)
            endpoint, method, order = _route(request.postpath)
            asked = request.method.decode("ascii", "replace").upper()
            if asked == "HEAD" and method == "GET":
                asked = "GET"
            if asked != method:
                raise HttpError(405, "method %s not allowed here (use %s)" % (asked[:16], method),
                                {b"Allow": method.encode("ascii")})
            if getattr(request, "body_too_large", False):
                raise HttpError(413, "request body over %d bytes" % API_MAX_BODY_BYTES)
            if endpoint != "send":   # (a send is charged by its size, once read)
                self._spend(1)
            d = defer.maybeDeferred(getattr(self, "_" + endpoint), request, order)
        except HttpError as e:
            d = defer.fail(e)
        d.addErrback(self._failed_api, request)
        d.addErrback(self._failed, request)
        d.addCallback(self._counted, request, endpoint)
        d.addCallback(self._write, request)
        return NOT_DONE_YET

    def _failed_api(self, failure: Any, request: Any) -> Any:
        if failure.check(StoreUnavailable):
            _log.warn("server API: {why}", why=failure.getErrorMessage())
            raise HttpError(503, "storage unavailable, retry later")
        if failure.check(Refused):
            raise HttpError(failure.value.status, failure.value.reason)
        if failure.check(ImdError):
            code = failure.value.code
            status = {"not_found": 404, "unavailable": 503, "forbidden": 400, "bad_packet": 400}.get(code)
            if status is None:
                return failure
            raise HttpError(status, failure.value.reason)
        return failure

    def _spend(self, cost: int) -> None:
        """Charge the key's allowance (per key: there is one key, whose
        digest names its bucket); HttpError 429 past it."""
        if self._clock is None or self._key is None:
            return
        wait = self._allowance.take(self._key.name, self._clock.seconds(), cost)
        if wait:
            raise HttpError(429, "over this key's allowance ([http] api_rate), retry in %d s" % wait,
                            {b"Retry-After": str(wait).encode("ascii")})

    def _counted(self, result: Any, request: Any, endpoint: str) -> Any:
        if self._metrics is not None:
            self._metrics.api_request(endpoint, result[0])
        return result

    # --- the endpoints ------------------------------------------------------

    @staticmethod
    def _body(request: Any) -> Dict[str, Any]:
        body = read_json_object(request)
        if body is None:
            raise HttpError(400, "the body must be a JSON object")
        return body

    @defer.inlineCallbacks
    def _send(self, request: Any, _: Any) -> Any:
        body = self._body(request)
        unknown = set(body) - {"to", "msg", "id"}
        if unknown:
            raise HttpError(400, "unknown field %s" % sorted(unknown)[0])
        try:
            recipients = recipients_list(body.get("to"), MAX_RECIPIENTS)
        except ValueError as e:
            raise HttpError(400, str(e))
        msg = body.get("msg")
        if not isinstance(msg, dict):
            raise HttpError(400, "msg: must be a JSON object")
        msg_bytes = len(json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if msg_bytes > MAX_MSG_BYTES:
            raise HttpError(400, "msg: its JSON is over %d bytes" % MAX_MSG_BYTES)
        packet_id = body.get("id")
        if packet_id is not None and not (isinstance(packet_id, str)
                                          and 1 <= len(packet_id) <= protocol.MAX_ID_CHARS):
            raise HttpError(400, "id: a string of 1-%d characters" % protocol.MAX_ID_CHARS)
        self._spend(send_cost(len(recipients), msg_bytes))
        packet_id, stored = yield self._api.send(recipients, msg, packet_id)
        return 200, {"id": packet_id, "stored": stored}

    @defer.inlineCallbacks
    def _orders(self, request: object,
                _: Optional[bytes]) -> Generator[defer.Deferred, object, Tuple[int, Dict[str, object]]]:
        body = self._body(request)
        unknown = set(body) - {"order", "customer", "courier"}
        if unknown:
            raise HttpError(400, "unknown field %s" % sorted(unknown)[0])
        order = _positive_id(body, "order")
        customer = _positive_id(body, "customer")
        courier = None if body.get("courier") is None else _positive_id(body, "courier")
        if courier == customer:
            raise HttpError(400, "courier: must be another user than the customer")
        put = cast(Dict[str, object], (yield self._api.put_order(order, customer, courier)))
        return 200, {"order": put["order"], "customer": put["customer"], "courier": put["courier"]}

    @defer.inlineCallbacks
    def _close(self, request: Any, order: bytes) -> Any:
        text = order.decode("latin-1")
        if not (text.isascii() and text.isdigit() and 0 < len(text) <= 19) or not 0 < int(text) <= protocol.MAX_UID:
            raise HttpError(400, "order id: a positive integer")
        read_json_object(request)   # a body, when sent, must still be JSON
        closed = yield self._api.close_order(int(text))
        return 200, {"order": closed["order"], "ends_at": closed["ends_at"]}

    @defer.inlineCallbacks
    def _kick(self, request: Any, _: Any) -> Any:
        body = self._body(request)
        uid = _uid(body.get("uid"), "uid")
        reason = body.get("reason", "kicked by an operator")
        if not isinstance(reason, str) or not reason.strip() or len(reason.encode("utf-8")) > MAX_REASON_BYTES:
            raise HttpError(400, "reason: 1-%d bytes of text" % MAX_REASON_BYTES)
        kicked = yield self._api.kick(uid, reason)
        return 200, {"kicked": kicked}

    @defer.inlineCallbacks
    def _online(self, request: Any, _: Any) -> Any:
        values = _query(request).get(b"uid", [])
        if not values:
            raise HttpError(400, "uid: give one or more, ?uid=1&uid=2")
        if len(values) > MAX_UIDS:
            raise HttpError(400, "uid: at most %d" % MAX_UIDS)
        uids = list(dict.fromkeys(_uid(v.decode("latin-1"), "uid") for v in values))
        answers = yield self._api.online(uids)
        return 200, {str(uid): answers[uid] for uid in uids}

    @defer.inlineCallbacks
    def _friends(self, request: Any, _: Any) -> Any:
        body = self._body(request)
        a, b = _uid(body.get("a"), "a"), _uid(body.get("b"), "b")
        op = body.get("op")
        if op not in ("add", "rm"):
            raise HttpError(400, 'op: "add" or "rm"')
        if a == b:
            raise HttpError(400, "a and b must be two users")
        yield self._api.friends(a, b, op == "add")
        return 200, {"ok": True}

    @defer.inlineCallbacks
    def _erase(self, request: object, uid: bytes) -> Generator[defer.Deferred, object, Tuple[int, Dict[str, object]]]:
        """Erasure of a user (contract v3 §11)."""
        erased = yield self._api.erase_user(_uid(uid.decode("latin-1"), "uid"))
        return 200, {"messages": erased}

    @defer.inlineCallbacks
    def _delete(self, request: object,
                _: Optional[bytes]) -> Generator[defer.Deferred, object, Tuple[int, Dict[str, object]]]:
        """Moderation delete of one message (contract v3 §11)."""
        body = self._body(request)
        unknown = set(body) - {"from", "id", "to", "room"}
        if unknown:
            raise HttpError(400, "unknown field %s" % sorted(unknown)[0])
        sender = _uid(body.get("from"), "from")
        msg_id = body.get("id")
        if not ((isinstance(msg_id, str) and 1 <= len(msg_id) <= protocol.MAX_ID_CHARS)
                or (type(msg_id) is int and 0 <= msg_id and len(str(msg_id)) <= protocol.MAX_ID_CHARS)):
            raise HttpError(400, "id: the message's id (a string of 1-%d characters or an integer)"
                            % protocol.MAX_ID_CHARS)
        if "to" in body and "room" in body:
            raise HttpError(400, 'either "to" or "room", not both')
        if "room" in body:
            deleted = yield self._api.delete_message(sender, str(msg_id), None, self._room_id(body.get("room")))
        else:
            deleted = yield self._api.delete_message(sender, str(msg_id), _uid(body.get("to"), "to"))
        if deleted is None:
            raise HttpError(404, "no such message")
        return 200, {"deleted": deleted}

    # --- rooms (contract v3 §9) ------------------------------------------------

    def _room_admin(self) -> RoomAdmin:
        if self._room_side is None:
            raise HttpError(503, "rooms are not available in this imd")
        return self._room_side

    @staticmethod
    def _room_id(value: object) -> str:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if not protocol.valid_room(text):
            raise HttpError(400, "the room id must be 1-%d characters of A-Z a-z 0-9 _ . : -, but not . or .."
                            % protocol.MAX_ROOM_CHARS)
        return cast(str, text)

    @staticmethod
    def _uid_list(body: Dict[str, object], name: str, required: bool = False) -> List[int]:
        if name not in body and not required:
            return []
        values = body.get(name)
        if not isinstance(values, list) or len(values) > MAX_ROOM_UIDS:
            raise HttpError(400, "%s: a list of at most %d user ids" % (name, MAX_ROOM_UIDS))
        return list(dict.fromkeys(_uid(v, name) for v in values))

    @defer.inlineCallbacks
    def _rooms(self, request: object, _: Optional[bytes]) -> Generator[defer.Deferred, object, Tuple[int, object]]:
        body = self._body(request)
        unknown = set(body) - {"room", "members", "meta"}
        if unknown:
            raise HttpError(400, "unknown field %s" % sorted(unknown)[0])
        room = self._room_id(body.get("room"))
        members = self._uid_list(body, "members", required=True)
        meta = body.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise HttpError(400, "meta: a JSON object")
        answer = yield self._room_admin().create(room, members, meta)
        return 200, answer

    @defer.inlineCallbacks
    def _room_members(self, request: object,
                      room: bytes) -> Generator[defer.Deferred, object, Tuple[int, object]]:
        name = self._room_id(room)
        body = self._body(request)
        unknown = set(body) - {"add", "rm"}
        if unknown:
            raise HttpError(400, "unknown field %s" % sorted(unknown)[0])
        answer = yield self._room_admin().change(name, self._uid_list(body, "add"), self._uid_list(body, "rm"))
        return 200, answer

    @defer.inlineCallbacks
    def _room_send(self, request: object, room: bytes) -> Generator[defer.Deferred, object, Tuple[int, object]]:
        name = self._room_id(room)
        body = self._body(request)
        unknown = set(body) - {"msg", "id"}
        if unknown:
            raise HttpError(400, "unknown field %s" % sorted(unknown)[0])
        msg = body.get("msg")
        if not isinstance(msg, dict):
            raise HttpError(400, "msg: must be a JSON object")
        if len(json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8")) > MAX_MSG_BYTES:
            raise HttpError(400, "msg: its JSON is over %d bytes" % MAX_MSG_BYTES)
        packet_id = body.get("id")
        if packet_id is not None and not (isinstance(packet_id, str)
                                          and 1 <= len(packet_id) <= protocol.MAX_ID_CHARS):
            raise HttpError(400, "id: a string of 1-%d characters" % protocol.MAX_ID_CHARS)
        answer = yield self._room_admin().send(name, msg, packet_id)
        return 200, answer

    @defer.inlineCallbacks
    def _room_close(self, request: Request, room: bytes) -> Generator[defer.Deferred, object, Tuple[int, object]]:
        name = self._room_id(room)
        read_json_object(request)   # a body, when sent, must still be JSON
        answer = yield self._room_admin().close(name)
        return 200, answer

    @defer.inlineCallbacks
    def _room_show(self, request: object, room: bytes) -> Generator[defer.Deferred, object, Tuple[int, object]]:
        answer = yield self._room_admin().show(self._room_id(room))
        return 200, answer

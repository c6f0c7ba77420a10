"""Costs of Autobahn that imd does not need to pay, per connection and per
frame, kept in this one module and installed by the protocol factory (never
by importing): :func:`tuned` makes the tuned protocol class from the plain
one.  ``IMD_PLAIN_AUTOBAHN=1`` in the environment turns all of it off, and
the test suite runs the WebSocket tests both ways; each piece has a test
comparing it with stock Autobahn (tests/test_autobahn_tuning.py).

- Autobahn unmasks every client frame with its compiled (CFFI) masker, whose
  set-up alone is ~9 µs a frame: more than all the XOR work of a chat
  message.  :class:`AutobahnTuning` turns Autobahn's own unmasking off
  (``applyMask``) and unmasks frames under :data:`SMALL_FRAME` bytes with one
  big-integer XOR (~2 µs), the larger ones with the compiled masker.  (On
  PyPy Autobahn's masker is plain Python the JIT compiles, faster at every
  size: :data:`SMALL_FRAME` is 0 there.)
- Autobahn's Twisted ``dataReceived`` builds the arguments of a debug line
  (``hltype``, ``hlval``) for every read, logged or not; the tuned one skips
  them while its logger has debug off, and hands an open connection's bytes
  straight to the frame parser (``processData``) when nothing is buffered,
  doing what ``_dataReceived`` and ``consumeData`` would on that path.
- Autobahn's ``onMessageEnd`` also fires a "message" event for observers
  registered with ``.on()`` (a Deferred and two callbacks per message);
  imd registers none, so the tuned one calls ``onMessage`` directly.
- :func:`text_frame` builds the unmasked, unfragmented text frame a server
  sends; Autobahn's ``sendMessage`` checks its generic options and formats
  the arguments of a debug log line on every call.
- Every protocol instance copies the factory's options into its own
  ``__dict__`` unless its class already has them; :func:`protocol_with_options`
  makes a subclass carrying them as class attributes.  Autobahn also
  formats the list of its 29 options with ``pprint.pformat`` for a debug
  log line on every new connection, whether debug logging is on or not;
  on that subclass the list it walks (``CONFIG_ATTRS``, :class:`_OptionNames`)
  is empty while debug logging is off, so there is nothing to copy or format.

- Memory of an open, idle connection (issue 29): Autobahn keeps the opening
  handshake's request and answer on every connection for its lifetime (the
  request line, its URI and path -- imd's token -- the headers, the 101
  answer: ~3.5 KB), sixty-odd attributes in the instance dict, an empty
  send queue (a deque: 760 bytes on CPython) and a dict of event results
  nobody fires.  Once the WebSocket is open (:meth:`AutobahnTuning._onOpen`)
  the handshake's state is released (:data:`HANDSHAKE_STATE`, read as None
  afterwards), attributes still holding the value the class has
  (:data:`OPEN_DEFAULTS`) are read from the class, an empty send queue is
  the class's empty tuple until something must be queued
  (:meth:`AutobahnTuning.sendData` makes it then), the event results and
  the UTF-8 validator of text messages are made on first use; on CPython the instance dicts of the protocol and of
  its TCP transport are rebuilt at their new size (a dict never shrinks).

All of it is per class: nothing in Autobahn's modules is replaced.
"""

import os
import platform
from collections import deque
from types import FunctionType
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple, Type

import autobahn.websocket.protocol as _autobahn_protocol
import txaio._common as _txaio_common
import txaio.tx as _txaio_tx
from autobahn.websocket.xormasker import create_xor_masker as _compiled_masker

if TYPE_CHECKING:
    # what the mixin is mixed into (at run time it derives from object alone)
    from autobahn.twisted.websocket import WebSocketServerProtocol as _TunedProtocol
else:
    _TunedProtocol = object

# Below this many bytes the integer XOR is faster than Autobahn's compiled
# masker (measured: 2.0 vs 9.2 µs at 16 bytes, 6.6 vs 9.0 at 1 KB, 10.4 vs
# 9.6 at 2 KB; again on 2 cores: 0.63 vs 2.20 at 90 bytes, 2.64 vs 2.37 at
# 1536).  On PyPy Autobahn's masker (Python, JIT-compiled) is the faster at
# every size (0.14 vs 0.35 µs at 90 bytes, 1.57 vs 3.22 at 1 KB): 0 there.
SMALL_FRAME = 0 if platform.python_implementation() == "PyPy" else 1536

# What txaio binds a logger's disabled levels to (None if it stops doing so:
# then the debug check below never passes and Autobahn's dataReceived runs)
_LOG_OFF = getattr(_txaio_tx, "_no_op", None)
_STATE_OPEN = _autobahn_protocol.WebSocketProtocol.STATE_OPEN
_STATE_CLOSED = _autobahn_protocol.WebSocketProtocol.STATE_CLOSED


# Autobahn's per-connection record of the opening handshake, read (as the
# ConnectionRequest handed to onConnect) during it and never after: dropped
# once the WebSocket is open; read afterwards, each is None.
HANDSHAKE_STATE = ("http_request_data", "http_status_line", "http_request_uri", "http_request_path",
                   "http_request_params", "http_request_host", "http_headers", "http_response_data", "_wskey")

# What Autobahn sets on every connection (_connectionMade, the opening
# handshake) that an idle open connection still has: while an attribute
# keeps this value it is read from the class, not stored per connection.
OPEN_DEFAULTS = (
    ("triggered", False), ("wasMaxFramePayloadSizeExceeded", False), ("wasMaxMessagePayloadSizeExceeded", False),
    ("closedByMe", False), ("failedByMe", False), ("droppedByMe", False), ("wasClean", False),
    ("wasServerConnectionDropTimeout", False), ("wasOpenHandshakeTimeout", False),
    ("wasCloseHandshakeTimeout", False), ("wasServingFlashSocketPolicyFile", False),
    ("autoPingPendingSeq", 0), ("inside_message", False), ("send_state", 0),
    ("_perMessageCompress", None), ("trackedTimings", None), ("wasNotCleanReason", None),
    ("localCloseCode", None), ("localCloseReason", None), ("remoteCloseCode", None),
    ("remoteCloseReason", None), ("openHandshakeTimeoutCall", None), ("closeHandshakeTimeoutCall", None),
    ("autoPingTimeoutCall", None), ("autoPingPending", None), ("autoPingPendingSent", None),
    ("websocket_protocol_in_use", None), ("current_frame", None),
)

# Lists Autobahn fills during the opening handshake (the subprotocols and
# extensions offered and in use): empty ones are read from the class, as
# an empty tuple, once the WebSocket is open (nothing appends to them then).
HANDSHAKE_LISTS = ("websocket_protocols", "websocket_extensions", "websocket_extensions_in_use")

# Autobahn's one event of a WebSocket protocol (ObservableMixin.set_valid_events)
_EVENTS = ["message"]

_MISSING = object()
_CPYTHON = platform.python_implementation() == "CPython"


def _compacted(attrs: object) -> None:
    """On CPython, ``attrs``'s instance dict rebuilt at the size of what it
    holds (a dict keeps its largest table; PyPy stores attributes per
    class layout, where a dict of its own would cost more)."""
    if _CPYTHON:
        attrs.__dict__ = {name: value for name, value in attrs.__dict__.items()}


class _Call:
    """txaio's ``_BatchedCall`` (what ``call_later`` of a batched timer
    returns: ``cancel``, and called when due), without its per-call closure
    and dict: ~120 bytes against ~560 on CPython."""
    __slots__ = ("_timer", "_index", "_func", "_args")

    def __init__(self, timer: "CompactBatchedTimer", index: int, func: Callable[..., object], args: tuple) -> None:
        self._timer: Optional[CompactBatchedTimer] = timer
        self._index = index
        self._func = func
        self._args = args

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer._remove_call(self._index, self)
        self._timer = None

    def __call__(self) -> object:
        return self._func(*self._args)


class CompactBatchedTimer(_txaio_common._BatchedTimer):   # (txaio is untyped)
    """txaio's batched timer (one reactor timer per bucket of calls: Autobahn's
    auto-ping and handshake timeouts of every connection), its calls
    :class:`_Call`; the buckets, their times and the order of the calls
    in them are txaio's own."""

    def call_later(self, delay: float, func: Callable[..., object], *args: object, **kwargs: object) -> object:
        if kwargs:
            return super().call_later(delay, func, *args, **kwargs)
        # txaio's quantizing, then its bucket handling with our call in it
        now = self._get_seconds()
        real_time = int(now + delay) * 1000
        real_time -= int(real_time % self._bucket_milliseconds)
        call = _Call(self, real_time, func, args)
        bucket = self._buckets.get(real_time)
        if bucket is not None:
            bucket[1].append(call)
        else:
            delayed_call = self._create_delayed_call(max(0.0, (real_time / 1000.0) - now), self._notify_bucket,
                                                     real_time)
            self._buckets[real_time] = (delayed_call, [call])
        return call


def compact_batched_timer(timer: object) -> object:
    """``timer`` (a factory's ``_batched_timer``) as a
    :class:`CompactBatchedTimer` with the same settings, or as it is when it
    is not txaio's, or already has calls."""
    if type(timer) is not _txaio_common._BatchedTimer or timer._buckets:
        return timer
    return CompactBatchedTimer(timer._bucket_milliseconds, timer._chunk_size, timer._get_seconds,
                               timer._create_delayed_call, timer._loop)


class _Utf8Validator:
    """``utf8validator`` of an open connection, made when first read (by the
    first text message; Autobahn makes one per connection at its start and
    resets it at every text message's begin, so a fresh one is the same)."""

    def __get__(self, instance: object, owner: Optional[type] = None) -> object:
        if instance is None:
            return self
        validator = _autobahn_protocol.Utf8Validator()
        setattr(instance, "utf8validator", validator)
        return validator


class _EventResults:
    """``_results`` of Autobahn's ObservableMixin, made when first read (by
    ``fire`` with a listener registered, which imd never has)."""

    def __get__(self, instance: object, owner: Optional[type] = None) -> Optional[Dict[str, None]]:
        if instance is None:
            return None
        results: Dict[str, None] = {name: None for name in getattr(instance, "_valid_events")}
        setattr(instance, "_results", results)
        return results


def enabled() -> bool:
    """False when ``IMD_PLAIN_AUTOBAHN`` asks for stock Autobahn."""
    return os.environ.get("IMD_PLAIN_AUTOBAHN", "") not in ("1", "true", "yes")


class IntXorMasker:
    """Autobahn's masker interface (``pointer``, ``reset``, ``process``) for
    small payloads.  ``process`` may be called with a frame in pieces: the
    mask goes on from where the previous piece ended."""
    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        n = len(data)
        shift = self._ptr & 3
        mask = self._mask[shift:] + self._mask[:shift] if shift else self._mask
        self._ptr += n
        key = (mask * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def create_xor_masker(mask: bytes, length: int) -> Any:
    """The cheaper masker for ``length`` bytes."""
    if length < SMALL_FRAME:
        return IntXorMasker(mask)
    return _compiled_masker(mask, length)


_SHORT_HEADERS = tuple(bytes((0x81, n)) for n in range(126))


def text_frame(payload: bytes) -> bytes:
    """``payload`` (UTF-8 bytes) as one final, unmasked text frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return _SHORT_HEADERS[n] + payload
    if n <= 0xFFFF:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class AutobahnTuning(_TunedProtocol):
    """Mixed in before the plain protocol class by :func:`tuned`."""

    _unmasker: Any = None
    _plain_frames = False   # set by protocol_with_options
    write_frame: Callable[[bytes], None]   # imd.transport.websocket's protocol has it
    logOctets: bool              # an Autobahn option (the tuned dataReceived leaves logged octets to Autobahn)

    # --- memory of an open connection -----------------------------------------

    # read while an attribute is not in the instance (see _onOpen)
    # (and, on the class tuned() makes, send_queue and HANDSHAKE_LISTS as empty tuples, utf8validator)
    _valid_events = _EVENTS
    _results = _EventResults()
    _open_defaults: Sequence[Tuple[str, object]] = ()   # set by tuned(): those the class has

    def set_valid_events(self, valid_events: Optional[Sequence[str]] = None) -> None:
        if list(valid_events or ()) != _EVENTS:
            super().set_valid_events(valid_events)

    def _onOpen(self) -> None:
        attrs = self.__dict__
        for name, value in self._open_defaults:
            if name in attrs and (value is None and name in HANDSHAKE_STATE or attrs[name] is value):
                del attrs[name]
        if not self.send_queue:
            attrs.pop("send_queue", None)
        attrs.pop("utf8validator", None)   # (unused until a text message)
        super()._onOpen()
        if self.state == _STATE_OPEN:
            for name in HANDSHAKE_LISTS:
                if not attrs.get(name, True):
                    del attrs[name]
            # what the class has (as imd's onOpen left its own attributes)
            cls = type(self)
            for name, value in list(attrs.items()):
                if (value is None or value is False) and getattr(cls, name, _MISSING) is value:
                    del attrs[name]
            _compacted(self)
            if hasattr(self.transport, "__dict__"):
                _compacted(self.transport)

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        # (Autobahn's sendData is what appends to the send queue)
        if (sync or chopsize) and type(self.send_queue) is not deque:
            self.send_queue = deque()
        super().sendData(data, sync, chopsize)

    # --- bytes in: no debug arguments, straight to the frame parser ------------

    def dataReceived(self, data: bytes) -> None:
        if _LOG_OFF is None or self.log.debug is not _LOG_OFF:
            return super().dataReceived(data)   # debug on: Autobahn's, with its line
        if self.state != _STATE_OPEN or self.data or self.logOctets:
            return self._dataReceived(data)
        # _dataReceived + consumeData for an open connection with nothing buffered
        self.trafficStats.incomingOctetsWireLevel += len(data)
        self.data = data
        while self.processData() and self.state != _STATE_CLOSED:
            pass
        return None

    # --- frames in: our own unmasking (Autobahn's is off: applyMask = False) --

    def onFrameBegin(self) -> None:
        frame = self.current_frame
        # Autobahn annotates FrameHeader.mask as str: it is the frame's 4 mask bytes
        self._unmasker = (create_xor_masker(frame.mask, frame.length)  # type: ignore[arg-type]
                          if frame.mask and frame.length else None)
        super().onFrameBegin()

    def onFrameData(self, payload: bytes) -> Any:
        if self._unmasker is not None and payload:
            payload = self._unmasker.process(payload)
        return super().onFrameData(payload)

    # --- messages in: no "message" event nobody listens to --------------------

    def onMessageEnd(self) -> None:
        if self._listeners is not None or self._parent is not None or self.trackedTimings:
            return super().onMessageEnd()
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None
        return None

    # --- packets out: the frame written directly ------------------------------

    def write_text(self, payload: bytes) -> None:
        if self.send_queue or self._perMessageCompress is not None or not self._plain_frames:
            # the plain protocol's (imd.transport.websocket), whatever the size
            super().write_text(payload)   # type: ignore[misc]  # (the class this is mixed into)
        else:
            # what sendMessage would write here, without its generic path
            # (and without its check of maxMessagePayloadSize, which limits
            # what clients send, not what the server sends)
            self.write_frame(text_frame(payload))


class _OptionNames:
    """``CONFIG_ATTRS`` of a class that has every option as a class attribute.

    Autobahn's ``_connectionMade`` walks that list on every new connection:
    it copies each option the instance lacks from the factory (none here)
    and formats the whole list with ``pprint.pformat`` for a debug log line,
    logged or not (217 µs a connection on CPython, 95 on PyPy; an empty list
    2.5 and 0.2, measured on 2 cores).  Read on an instance
    whose logger has debug off, the list is empty; on the class, or with
    debug on, it is Autobahn's."""
    __slots__ = ("names",)

    def __init__(self, names: Sequence[str]) -> None:
        self.names = names

    def __get__(self, instance: Optional[Any], owner: Optional[type] = None) -> Sequence[str]:
        if instance is not None and _LOG_OFF is not None and instance.log.debug is _LOG_OFF:
            return ()
        return self.names


def protocol_with_options(factory: Any, protocol_class: Type[Any]) -> Type[Any]:
    """``protocol_class`` with ``factory``'s current Autobahn options as class
    attributes.  Call again after changing the factory's options."""
    options = {}
    for name in protocol_class.CONFIG_ATTRS:
        value = getattr(factory, name)
        # a function option (perMessageCompressionAccept) must not become a method
        options[name] = staticmethod(value) if isinstance(value, FunctionType) else value
    # whether text_frame writes what sendMessage would (no option changes the frames)
    options["_plain_frames"] = not (factory.logFrames or factory.logOctets or factory.maskServerFrames
                                    or factory.autoFragmentSize or factory.trackTimings)
    # (read on the class, an _OptionNames gives Autobahn's own list)
    options["CONFIG_ATTRS"] = _OptionNames(protocol_class.CONFIG_ATTRS)
    return type(protocol_class.__name__, (protocol_class,), options)


def tuned(factory: Any, protocol_class: Type[Any]) -> Type[Any]:
    """The class ``factory`` should build: ``protocol_class`` with the
    tuning and the options as class attributes, or as it is when tuning is
    off."""
    if not enabled():
        return protocol_class
    # (every setProtocolOptions call resets allowNullOrigin unless it is passed)
    factory.setProtocolOptions(applyMask=False, allowNullOrigin=factory.allowNullOrigin)
    factory._batched_timer = compact_batched_timer(factory._batched_timer)
    # (an attribute the class has with another value stays per connection)
    defaults = tuple((name, value) for name, value in OPEN_DEFAULTS + tuple((name, None) for name in HANDSHAKE_STATE)
                     if getattr(protocol_class, name, value) is value)
    mixed = type(protocol_class.__name__, (AutobahnTuning, protocol_class),
                 dict(defaults, _open_defaults=defaults, send_queue=(), utf8validator=_Utf8Validator(),
                      **{name: () for name in HANDSHAKE_LISTS}))
    return protocol_with_options(factory, mixed)

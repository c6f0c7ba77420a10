"""Costs of Autobahn that imd does not need to pay, per connection and per frame.

- Autobahn formats its 29 protocol options with ``pprint.pformat`` for a debug
  log line on every new connection, whether debug logging is on or not
  (about an eighth of the daemon's CPU per login in bench/run.py's login
  run).  :func:`defer_debug_formatting` makes that formatting lazy: the text
  is produced only when a log observer renders the event.
- Every protocol instance copies the factory's options into its own
  ``__dict__`` unless its class already has them.  :func:`protocol_with_options`
  makes a subclass carrying them as class attributes, so an idle connection
  does not hold 29 more dict entries.
- Autobahn unmasks every client frame with its compiled (CFFI) masker, whose
  set-up alone is ~9 µs a frame: more than all the XOR work of a chat
  message.  :func:`fast_small_frame_masking` unmasks frames under
  :data:`SMALL_FRAME` bytes with one big-integer XOR (~2 µs) and leaves the
  larger ones to the compiled masker (bench: ~10% of the ws process's CPU at
  C=200 W=8 went to masking before).
- :func:`text_frame` builds the unmasked, unfragmented text frame a server
  sends, for the protocol's plain case (see ``ImdServerProtocol.send_packet``);
  Autobahn's ``sendMessage`` path checks its generic options and formats the
  arguments of a debug log line on every call.
"""

from pprint import pformat
from types import FunctionType

import autobahn.websocket.protocol as _autobahn_protocol

# Below this many bytes the integer XOR is faster than Autobahn's compiled
# masker (measured: 2.0 vs 9.2 µs at 16 bytes, 6.6 vs 9.0 at 1 KB, 10.4 vs
# 9.6 at 2 KB).
SMALL_FRAME = 1536


class _LazyPformat:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __format__(self, spec):
        return format(pformat(self.value), spec)

    def __str__(self):
        return pformat(self.value)

    __repr__ = __str__


def _timings_text(timings):
    return pformat(timings._timings)


def defer_debug_formatting():
    """Autobahn's module-level ``pformat`` made lazy.  It serves log fields,
    and ``Timings.__str__``, which must return text: that one keeps the real
    pformat."""
    _autobahn_protocol.Timings.__str__ = _timings_text
    _autobahn_protocol.pformat = _LazyPformat


def protocol_with_options(factory, protocol_class):
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
    return type(protocol_class.__name__, (protocol_class,), options)


class IntXorMasker:
    """Autobahn's masker interface (``pointer``, ``reset``, ``process``) for
    small payloads.  ``process`` may be called with a frame in pieces: the
    mask goes on from where the previous piece ended."""
    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask):
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self):
        return self._ptr

    def reset(self):
        self._ptr = 0

    def process(self, data):
        n = len(data)
        shift = self._ptr & 3
        mask = self._mask[shift:] + self._mask[:shift] if shift else self._mask
        self._ptr += n
        key = (mask * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


_compiled_masker = _autobahn_protocol.create_xor_masker


def create_xor_masker(mask, length=None):
    if length is not None and length < SMALL_FRAME:
        return IntXorMasker(mask)
    return _compiled_masker(mask, length)


def fast_small_frame_masking():
    """Autobahn's protocol module uses :func:`create_xor_masker` from now on."""
    _autobahn_protocol.create_xor_masker = create_xor_masker


_SHORT_HEADERS = tuple(bytes((0x81, n)) for n in range(126))


def text_frame(payload):
    """``payload`` (UTF-8 bytes) as one final, unmasked text frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return _SHORT_HEADERS[n] + payload
    if n <= 0xFFFF:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload

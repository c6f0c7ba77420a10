"""Two per-connection costs of Autobahn that imd does not need to pay.

- Autobahn formats its 29 protocol options with ``pprint.pformat`` for a debug
  log line on every new connection, whether debug logging is on or not
  (about an eighth of the daemon's CPU per login in bench/run.py's login
  run).  :func:`defer_debug_formatting` makes that formatting lazy: the text
  is produced only when a log observer renders the event.
- Every protocol instance copies the factory's options into its own
  ``__dict__`` unless its class already has them.  :func:`protocol_with_options`
  makes a subclass carrying them as class attributes, so an idle connection
  does not hold 29 more dict entries.
"""

from pprint import pformat
from types import FunctionType

import autobahn.websocket.protocol as _autobahn_protocol


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
    return type(protocol_class.__name__, (protocol_class,), options)

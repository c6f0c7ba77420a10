"""The one place that chooses between orjson and the json module.

orjson (a C extension, installed on CPython only: setup.cfg's marker) makes
the message path's encoding and the reading of stored messages several
times cheaper.  Where it is missing (PyPy, whose JIT runs the json module
well) or switched off, the users fall back to the json module: each fast
path in :mod:`imd.protocol` and :mod:`imd.messagelog.entry` checks :data:`orjson` at
call time, and its differential test runs both ways.

Client packets are parsed the other way round: :mod:`imd.protocol` reads
them with a ``json.JSONDecoder`` whose hook refuses NaN and Infinity.  On
CPython that decoder runs the C scanner (~1 µs a chat packet), but on PyPy a
decoder with a hook is the pure-Python one (1.25 µs) while plain
``json.loads`` is PyPy's own (0.12 µs; measured on 2 cores).  So on PyPy
:data:`plain_loads` is on: protocol uses ``json.loads`` for every text with
neither ``NaN`` nor ``Infinity`` in it (where the hook could not have been
called) and at most 100 brackets (PyPy's ``json.loads`` nests deeper than
the decoder, whose depth error the client gets), the hooked decoder for the
rest.  tests/test_protocol.py parses one
corpus both ways.

Without orjson, the message path's packets (flat objects of strings and
ints: a message, its ack) are written by :func:`dumps_flat`, which joins
what the json module writes for each string and int (0.30 instead of 0.52
µs a message on PyPy); anything else goes to the json module.
tests/test_protocol_dump.py compares the bytes.
"""

import platform
from json.encoder import encode_basestring as _json_string
from types import ModuleType
from typing import Any, Callable, Optional

_orjson: Optional[ModuleType]
try:
    import orjson as _orjson
except ImportError:  # PyPy: not installed
    _orjson = None

# The module the fast paths use now, or None for the json module alone.
orjson: Optional[ModuleType] = _orjson


def available() -> bool:
    """Whether orjson is installed here."""
    return _orjson is not None


def use_orjson(enabled: bool) -> bool:
    """Switch the fast paths to orjson (where installed) or to json alone;
    returns whether orjson is in use afterwards."""
    global orjson
    orjson = _orjson if enabled else None
    return orjson is not None


# Parse client packets with plain json.loads (protocol's fast path): on
# PyPy only, where it is ten times cheaper; chosen once per interpreter.
plain_loads: bool = platform.python_implementation() == "PyPy"


def use_plain_loads(enabled: bool) -> bool:
    """Switch protocol's packet parsing to plain ``json.loads`` or to the
    hooked decoder alone (tests); returns the setting."""
    global plain_loads
    plain_loads = bool(enabled)
    return plain_loads


def dumps_flat(obj: Any) -> bytes:
    """``json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`` in
    UTF-8 for a dict whose values are all str or int; TypeError for any
    other object (the caller uses the json module then)."""
    if type(obj) is not dict:
        raise TypeError("dumps_flat: not a dict")
    parts = []
    for key, value in obj.items():
        kind = type(value)
        if kind is str:
            text = _json_string(value)
        elif kind is int:
            text = int.__repr__(value)
        else:
            raise TypeError("dumps_flat: a %s value" % kind.__name__)
        parts.append(_json_string(key) + ":" + text)
    return ("{" + ",".join(parts) + "}").encode("utf-8")


# What protocol's fast path writes flat objects with when orjson is not in
# use (None: the json module alone).
flat_dumps: Optional[Callable[[Any], bytes]] = dumps_flat


def use_flat_dumps(enabled: bool) -> bool:
    """Switch :func:`dumps_flat` on or off for protocol (tests); returns the setting."""
    global flat_dumps
    flat_dumps = dumps_flat if enabled else None
    return flat_dumps is not None

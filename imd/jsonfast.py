"""The one place that chooses between orjson and the json module.

orjson (a C extension, installed on CPython only: setup.cfg's marker) makes
the message path's encoding and the reading of stored messages several
times cheaper.  Where it is missing (PyPy, whose JIT runs the json module
well) or switched off, the users fall back to the json module: each fast
path in :mod:`imd.protocol` and :mod:`imd.stored` checks :data:`orjson` at
call time, and its differential test runs both ways.
"""

from types import ModuleType
from typing import Optional

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

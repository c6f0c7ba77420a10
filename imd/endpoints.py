"""Twisted endpoint strings (``tcp:8765:interface=127.0.0.1``), read the way
Twisted reads them, in one place.

Every part of imd that needs to know where a listener binds (the config's
loopback check for ``[http] auth = dev``, the ``url`` returned with a token,
the node id, the TLS listeners) asks this module, so they can never disagree.

Twisted's syntax: ``:`` separates, ``\\`` escapes the next character, a part
with ``=`` is a keyword argument, the others are positional in the order of
the endpoint type's parser.  Twisted lets a repeated keyword silently win
(the last one); here a repeated keyword is an error, because a string like
``interface=127.0.0.1:interface=0.0.0.0`` reads as loopback to a human and
binds to every interface.
"""

import ipaddress
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

# The positional parameters of the server endpoint types imd documents, in
# Twisted's order (twisted.internet.endpoints: _parseTCP, _parseSSL).
_POSITIONAL = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "interface", "backlog"),
    "ssl": ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog"),
}


class EndpointError(ValueError):
    """An endpoint string that cannot be read."""


@dataclass(frozen=True)
class Endpoint:
    """One endpoint string taken apart: ``kind``, then the arguments by name
    (positional ones named as Twisted's parser names them)."""

    kind: str
    arguments: Dict[str, str] = field(default_factory=dict)
    extra_positional: List[str] = field(default_factory=list)

    @property
    def port(self) -> Optional[int]:
        value = self.arguments.get("port", "")
        return int(value) if value.isdigit() else None

    @property
    def interface(self) -> Optional[str]:
        """The address it binds to; None when it binds to every one."""
        value = self.arguments.get("interface", "")
        return value or None

    @property
    def is_tls(self) -> bool:
        return self.kind == "ssl"

    def is_loopback(self) -> bool:
        """True when it listens on a loopback address only (127.0.0.0/8,
        ``::1``, ``localhost``)."""
        if self.kind not in _POSITIONAL:
            return False
        return is_loopback_host(self.interface)


def is_loopback_host(host: Optional[str]) -> bool:
    if not host:
        return False
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parts(description: str) -> List[Tuple[str, Optional[str]]]:
    """``(text, None)`` for a positional part, ``(key, value)`` for a keyword
    one: Twisted's tokenizer (``\\`` escapes, the first unescaped ``=`` of a
    part assigns)."""
    parts: List[Tuple[str, Optional[str]]] = []
    current: List[str] = []
    key: Optional[str] = None
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append((key, "".join(current)) if key is not None else ("".join(current), None))
            current, key = [], None
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    parts.append((key, "".join(current)) if key is not None else ("".join(current), None))
    return parts


def escape(value: str) -> str:
    """``value`` made safe as one part of an endpoint string."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def parse(description: str) -> Endpoint:
    """An :class:`Endpoint`, or :class:`EndpointError` naming the problem."""
    parts = _parts(description)
    kind, kind_value = parts[0]
    if kind_value is not None or not kind:
        raise EndpointError("an endpoint string starts with its type, e.g. tcp:8765, got %r" % (description,))
    names = _POSITIONAL.get(kind, ())
    arguments: Dict[str, str] = {}
    extra: List[str] = []
    position = 0
    for text, value in parts[1:]:
        if value is not None:
            name = text
        elif position < len(names):
            name, value = names[position], text
            position += 1
        else:
            extra.append(text)
            continue
        if name in arguments:
            raise EndpointError("%s is given twice in %r (Twisted would bind to the last one, or fail)"
                                % (name, description))
        arguments[name] = value
    return Endpoint(kind, arguments, extra)


# The listen queue imd asks for when an endpoint string names none.
# Twisted's own default is 50: after a node restarts or crashes, thousands
# of clients reconnect within a second, the kernel turns away what does not
# fit, and those clients wait out a connect or handshake timeout (measured
# with bench/run.py --only storm, 3,000 clients: 99 % back after 29 s with
# 50, all back in 3.2 s with 4096).  The kernel caps it at
# net.core.somaxconn.
DEFAULT_BACKLOG = 4096


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """``description`` with ``:backlog=N`` added when it is a ``tcp:``,
    ``tcp6:`` or ``ssl:`` string that names no backlog of its own
    (positionally or by keyword); any other string as it is."""
    try:
        endpoint = parse(description)
    except EndpointError:
        return description
    if endpoint.kind not in _POSITIONAL or "backlog" in endpoint.arguments:
        return description
    return "%s:backlog=%d" % (description, backlog)


def port_of(description: str) -> Optional[int]:
    """The port of a ``tcp:``/``tcp6:``/``ssl:`` string, or None."""
    try:
        return parse(description).port
    except EndpointError:
        return None

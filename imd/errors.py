"""The one error family that handlers raise and the transport turns into ``E``."""

from typing import Optional

# code -> default human-readable reason; the contract's table, §2 "Errors"
ERROR_CODES = {
    "bad_packet": "malformed packet",
    "unknown_type": "unknown packet type",
    "too_long": "message too long",
    "not_friend": "recipient is not a friend",
    "forbidden": "not allowed",
    "not_found": "no such object",
    "rate_limited": "too many packets, slow down",
    "blocked": "the message contains a blocked word",
    "unavailable": "storage unavailable, retry later",
    "internal": "internal server error",
}


class ImdError(Exception):
    """A client-visible error: becomes ``{"type": "E", "code": code}``."""

    def __init__(self, code: str, reason: Optional[str] = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError("unknown error code %r" % (code,))
        self.code = code
        self.reason = reason or ERROR_CODES[code]
        super().__init__(code, self.reason)


class StoreUnavailable(Exception):
    """Redis or MySQL could not be reached or did not answer in time."""


class Refused(Exception):
    """A server-API request that what it names refuses as it stands (HTTP
    ``status``: 409 the order is taken or closed, 403 imd may not write
    there); nothing was changed."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(status, reason)


class LoginRefused(Exception):
    """A wstoken was refused; ``reason`` is sent to the client in ``C``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class AdminError(Exception):
    """An ``imd-admin`` command that cannot be done; printed as one line, exit status 1."""

"""Twirp errors: the one exception type the control API raises for a refused call.

Twirp fixes the HTTP status for each code, so the code alone decides the status.
"""

from __future__ import annotations

import json

TWIRP_STATUS: dict[str, int] = {
    "canceled": 408,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unknown": 500,
}


class TwirpError(Exception):
    """A refused call: a Twirp code (which fixes the HTTP status) and a message."""

    def __init__(self, code: str, msg: str) -> None:
        if code not in TWIRP_STATUS:
            raise ValueError(f"not a Twirp error code: {code!r}")
        super().__init__(msg)
        self.code = code
        self.msg = msg

    @property
    def status(self) -> int:
        return TWIRP_STATUS[self.code]

    def to_json(self) -> bytes:
        return json.dumps({"code": self.code, "msg": self.msg}).encode()

    def __repr__(self) -> str:
        return f"TwirpError({self.code!r}, {self.msg!r})"


def invalid_argument(msg: str) -> TwirpError:
    return TwirpError("invalid_argument", msg)

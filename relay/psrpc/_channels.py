"""Redis channel names, ids and the queue de-duplication key, as livekit/psrpc makes them.

All pure functions of their arguments. The Redis bus uses a channel's "Legacy" name
(pkg/info/channels.go, internal/bus/bus_redis.go): ``|``-joined segments, each escaped
by ``appendSanitizedChannelPart``; empty segments (no topic) are skipped.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable, Sequence

__all__ = [
    "ID_ALPHABET",
    "QUEUE_LOCK_TTL_NS",
    "claim_request_channel",
    "claim_response_channel",
    "new_id",
    "queue_lock_key",
    "request_channel",
    "response_channel",
    "sanitize",
]

ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
"""pkg/rand/id.go: ids are a prefix (CLI_, SRV_, REQ_) and 12 of these."""
ID_LENGTH = 12
QUEUE_LOCK_TTL_NS = 5_000_000_000
"""internal/bus/bus_redis.go ``lockExpiration``: how long a queue message's SET NX lives."""

_KEEP = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")


def new_id(prefix: str, choice: Callable[[str], str] = secrets.choice) -> str:
    """A psrpc id: ``prefix`` + 12 characters of :data:`ID_ALPHABET`."""
    return prefix + "".join(choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def sanitize(segment: str) -> str:
    """One channel segment escaped as psrpc does: ``[0-9A-Za-z_]`` kept, any other code
    point as ``u+`` and 4 lowercase hex digits (``U+`` and 8 above U+FFFF).

    A lone surrogate (which no Go string holds) is escaped as the replacement
    character U+FFFD, what Go reads from such bytes.
    """
    out = []
    for ch in segment:
        if ch in _KEEP:
            out.append(ch)
            continue
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            code = 0xFFFD
        out.append(f"u+{code:04x}" if code < 0x10000 else f"U+{code:08x}")
    return "".join(out)


def _join(parts: Sequence[str | Sequence[str]]) -> str:
    """``appendChannelParts`` with '|': a delimiter goes before a part only when the
    previous part wrote something (so empty parts and an absent topic vanish)."""
    buf: list[str] = []
    size = 0
    prefix = False
    for part in parts:
        if prefix:
            buf.append("|")
            size += 1
        before = size
        text = sanitize(part) if isinstance(part, str) else _join(part)
        buf.append(text)
        size += len(text)
        prefix = size > before
    return "".join(buf)


def _topic(topic: str | Sequence[str]) -> tuple[str, ...]:
    return (topic,) if isinstance(topic, str) else tuple(topic)


def request_channel(service: str, method: str, topic: str | Sequence[str] = ()) -> str:
    """Where a request is published: ``Service|Method|Topic|REQ`` (``Service|Method|REQ``
    without a topic). Servers subscribe to it (as a queue for queue methods)."""
    return _join([service, method, _topic(topic), "REQ"])


def claim_response_channel(service: str, method: str, topic: str | Sequence[str] = ()) -> str:
    """Where a client names the server it picked: ``Service|Method|Topic|RCLAIM``."""
    return _join([service, method, _topic(topic), "RCLAIM"])


def claim_request_channel(service: str, client_id: str) -> str:
    """Where servers offer to take a client's requests: ``Service|<clientID>|CLAIM``."""
    return _join([service, client_id, "CLAIM"])


def response_channel(service: str, client_id: str) -> str:
    """Where servers answer a client: ``Service|<clientID>|RES``."""
    return _join([service, client_id, "RES"])


def queue_lock_key(payload: bytes) -> str:
    """The Redis key a queue subscriber SET NXes (for :data:`QUEUE_LOCK_TTL_NS`) before it
    may handle ``payload``: base64 (standard, padded) of its SHA-256. Only the one that
    sets it handles the message; the value is irrelevant (psrpc writes a random int)."""
    return base64.b64encode(hashlib.sha256(payload).digest()).decode("ascii")

"""Identifiers in LiveKit's format, drawn from a CSPRNG.

Ingress ids (`IN_`), stream keys and session resource ids (`RT_`, `WH_`, `UR_`) are
12 characters of base57: no 0/O/1/I/l, so a key read aloud or typed from a screen
survives. 57**12 ~ 2**70, so guessing a live stream key is not a practical attack.
"""

from __future__ import annotations

import secrets

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
ID_LENGTH = 12

INGRESS_PREFIX = "IN_"
RTMP_RESOURCE_PREFIX = "RT_"
WHIP_RESOURCE_PREFIX = "WH_"
URL_RESOURCE_PREFIX = "UR_"


def random_token(length: int = ID_LENGTH) -> str:
    """`length` characters of base57 from `secrets` (the OS CSPRNG)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def new_ingress_id() -> str:
    return INGRESS_PREFIX + random_token()


def new_stream_key() -> str:
    return random_token()


def new_resource_id(prefix: str) -> str:
    return prefix + random_token()

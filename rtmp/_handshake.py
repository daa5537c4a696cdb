"""The RTMP handshake (C0/C1/C2, S0/S1/S2), plain and digest ("complex") forms.

Plain form (RTMP 1.0 spec): C1/S1 are time + zero + 1528 random bytes, C2/S2 echo the
peer's packet. Digest form (Flash Player / FMS, what FFmpeg, OBS and most hardware
encoders send): C1 carries a non-zero version and a 32-byte HMAC-SHA256 at an offset
derived from four bytes of the packet ("scheme 0" from offset 8, "scheme 1" from 772).
A server answering the digest form signs S1 the same way with the FMS key and ends S2
with an HMAC keyed by the client's digest. FFmpeg's client only checks those when it
*plays* (and S1's version byte is >= 3), but answering correctly costs nothing.

No randomness is taken from the environment: callers pass ``randbytes``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from ._errors import RTMPProtocolError

__all__ = [
    "HANDSHAKE_SIZE",
    "RTMP_VERSION",
    "client_c2",
    "client_hello",
    "find_digest",
    "server_hello",
    "verify_server_hello",
]

RTMP_VERSION = 3
HANDSHAKE_SIZE = 1536
_DIGEST_LEN = 32
_S2_SIGNED = HANDSHAKE_SIZE - _DIGEST_LEN

_KEY_TAIL = bytes.fromhex("f0eec24a8068bee82e00d0d1029e7e576eec5d2d29806fab93b8e636cfeb31ae")
FP_KEY = b"Genuine Adobe Flash Player 001" + _KEY_TAIL  # 62 bytes, first 30 sign C1
FMS_KEY = b"Genuine Adobe Flash Media Server 001" + _KEY_TAIL  # 68 bytes, first 36 sign S1

# version announced in a digest S1 (FMS-like; FFmpeg validates when byte 0 >= 3)
_SERVER_VERSION = bytes([4, 5, 0, 1])
_CLIENT_VERSION = bytes([9, 0, 124, 2])

RandBytes = Callable[[int], bytes]


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _digest_pos(packet: bytes, scheme: int) -> int:
    base = 8 if scheme == 0 else 772
    return sum(packet[base : base + 4]) % 728 + base + 4


def _sign(packet: bytearray, scheme: int, key: bytes) -> bytes:
    pos = _digest_pos(packet, scheme)
    digest = _hmac(key, bytes(packet[:pos] + packet[pos + _DIGEST_LEN :]))
    packet[pos : pos + _DIGEST_LEN] = digest
    return digest


def find_digest(packet: bytes, key: bytes) -> tuple[int, bytes] | None:
    """Return ``(scheme, digest)`` if ``packet`` (a C1 or S1) carries a valid digest."""
    if len(packet) != HANDSHAKE_SIZE:
        return None
    for scheme in (1, 0):
        pos = _digest_pos(packet, scheme)
        expected = _hmac(key, packet[:pos] + packet[pos + _DIGEST_LEN :])
        if hmac.compare_digest(expected, packet[pos : pos + _DIGEST_LEN]):
            return scheme, expected
    return None


def _checked_random(randbytes: RandBytes, n: int) -> bytes:
    data = bytes(randbytes(n))
    if len(data) != n:
        raise ValueError(f"randbytes({n}) returned {len(data)} bytes")
    return data


def server_hello(c0c1: bytes, randbytes: RandBytes) -> tuple[bytes, bool]:
    """Answer C0+C1 (1537 bytes) with S0+S1+S2; return them and whether digest form was used.

    The digest form is used when C1 announces a version and carries a valid client
    digest; otherwise (plain clients, or digest checks failing) S2 echoes C1.
    """
    if len(c0c1) != 1 + HANDSHAKE_SIZE:
        raise RTMPProtocolError("handshake: C0+C1 must be 1537 bytes")
    if c0c1[0] != RTMP_VERSION:
        raise RTMPProtocolError(
            f"handshake: unsupported RTMP version {c0c1[0]} (RTMPE/encrypted is not supported)"
        )
    c1 = bytes(c0c1[1:])
    found = find_digest(c1, FP_KEY[:30]) if c1[4:8] != b"\0\0\0\0" else None
    if found is None:
        s1 = bytes(8) + _checked_random(randbytes, HANDSHAKE_SIZE - 8)
        return bytes([RTMP_VERSION]) + s1 + c1, False
    scheme, client_digest = found
    s1 = bytearray(bytes(4) + _SERVER_VERSION + _checked_random(randbytes, HANDSHAKE_SIZE - 8))
    _sign(s1, scheme, FMS_KEY[:36])
    s2 = bytearray(_checked_random(randbytes, HANDSHAKE_SIZE))
    s2[_S2_SIGNED:] = _hmac(_hmac(FMS_KEY, client_digest), bytes(s2[:_S2_SIGNED]))
    return bytes([RTMP_VERSION]) + bytes(s1) + bytes(s2), True


# -- client side (tests and a future client) ------------------------------------------


def client_hello(randbytes: RandBytes, *, digest: bool = True, scheme: int = 0) -> bytes:
    """Build C0+C1, in digest form (like FFmpeg/OBS) or plain form."""
    if not digest:
        return bytes([RTMP_VERSION]) + bytes(8) + _checked_random(randbytes, HANDSHAKE_SIZE - 8)
    c1 = bytearray(bytes(4) + _CLIENT_VERSION + _checked_random(randbytes, HANDSHAKE_SIZE - 8))
    _sign(c1, scheme, FP_KEY[:30])
    return bytes([RTMP_VERSION]) + bytes(c1)


def verify_server_hello(c0c1: bytes, s0s1s2: bytes) -> bool:
    """Check S0+S1+S2 the way a strict digest client does (S1 digest and S2 signature)."""
    if len(s0s1s2) != 1 + 2 * HANDSHAKE_SIZE or s0s1s2[0] != RTMP_VERSION:
        return False
    s1 = s0s1s2[1 : 1 + HANDSHAKE_SIZE]
    s2 = s0s1s2[1 + HANDSHAKE_SIZE :]
    c1 = c0c1[1:]
    client = find_digest(c1, FP_KEY[:30]) if c1[4:8] != b"\0\0\0\0" else None
    if client is None:
        return s2 == c1
    if find_digest(s1, FMS_KEY[:36]) is None:
        return False
    expected = _hmac(_hmac(FMS_KEY, client[1]), s2[:_S2_SIGNED])
    return hmac.compare_digest(expected, s2[_S2_SIGNED:])


def client_c2(s0s1s2: bytes, randbytes: RandBytes) -> bytes:
    """Build C2: signed with the server digest if S1 has one, else an echo of S1."""
    s1 = s0s1s2[1 : 1 + HANDSHAKE_SIZE]
    found = find_digest(s1, FMS_KEY[:36])
    if found is None:
        return bytes(s1)
    c2 = bytearray(_checked_random(randbytes, HANDSHAKE_SIZE))
    c2[_S2_SIGNED:] = _hmac(_hmac(FP_KEY, found[1]), bytes(c2[:_S2_SIGNED]))
    return bytes(c2)

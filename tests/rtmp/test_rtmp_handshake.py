"""Handshake: plain and digest forms, both digest schemes, injected randomness."""

from __future__ import annotations

import pytest
from _rtmp_peer import det_random

import rtmp
from rtmp._handshake import (
    FMS_KEY,
    FP_KEY,
    HANDSHAKE_SIZE,
    client_c2,
    client_hello,
    find_digest,
    server_hello,
    verify_server_hello,
)


def test_plain_handshake_echoes_c1() -> None:
    c0c1 = client_hello(det_random(b"c"), digest=False)
    reply, digest = server_hello(c0c1, det_random())
    assert not digest
    assert reply[0] == 3
    assert reply[1 : 1 + 8] == bytes(8)  # time 0, zero field
    assert reply[1 + HANDSHAKE_SIZE :] == c0c1[1:]
    assert verify_server_hello(c0c1, reply)


@pytest.mark.parametrize("scheme", [0, 1])
def test_digest_handshake_both_schemes(scheme: int) -> None:
    c0c1 = client_hello(det_random(b"c"), digest=True, scheme=scheme)
    assert find_digest(c0c1[1:], FP_KEY[:30])[0] == scheme
    reply, digest = server_hello(c0c1, det_random())
    assert digest
    s1 = reply[1 : 1 + HANDSHAKE_SIZE]
    assert s1[4] >= 3  # FFmpeg validates the digest only for version >= 3
    assert find_digest(s1, FMS_KEY[:36])[0] == scheme
    assert verify_server_hello(c0c1, reply)
    tampered = bytearray(reply)
    tampered[-1] ^= 1
    assert not verify_server_hello(c0c1, bytes(tampered))


def test_digest_like_c1_with_bad_digest_falls_back_to_plain() -> None:
    c0c1 = bytearray(client_hello(det_random(b"c"), digest=True))
    for i in range(12, 1536):  # wreck every possible digest position
        c0c1[1 + i] ^= 0x55
    reply, digest = server_hello(bytes(c0c1), det_random())
    assert not digest
    assert reply[1 + HANDSHAKE_SIZE :] == bytes(c0c1[1:])


def test_randomness_is_injected_and_deterministic() -> None:
    c0c1 = client_hello(det_random(b"c"))
    assert server_hello(c0c1, det_random())[0] == server_hello(c0c1, det_random())[0]
    assert server_hello(c0c1, det_random(b"x"))[0] != server_hello(c0c1, det_random())[0]


def test_short_randbytes_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        server_hello(client_hello(det_random()), lambda n: b"x")


@pytest.mark.parametrize("version", [0, 6, 8, 9, 31])
def test_other_versions_rejected(version: int) -> None:
    c0c1 = bytes([version]) + client_hello(det_random())[1:]
    with pytest.raises(rtmp.RTMPProtocolError):
        server_hello(c0c1, det_random())


def test_client_c2_signs_server_digest() -> None:
    c0c1 = client_hello(det_random(b"c"))
    reply, _ = server_hello(c0c1, det_random())
    c2 = client_c2(reply, det_random(b"c2"))
    assert len(c2) == HANDSHAKE_SIZE and c2 != reply[1 : 1 + HANDSHAKE_SIZE]
    plain_reply, _ = server_hello(client_hello(det_random(), digest=False), det_random())
    assert client_c2(plain_reply, det_random()) == plain_reply[1 : 1 + HANDSHAKE_SIZE]


@pytest.mark.parametrize("digest", [True, False])
def test_session_handshake_split_anywhere(digest: bool) -> None:
    c0c1 = client_hello(det_random(b"c"), digest=digest)
    session = rtmp.ServerSession(rtmp.SessionConfig(randbytes=det_random()))
    for i in range(0, len(c0c1), 100):
        session.receive_data(c0c1[i : i + 100])
        assert session.next_event() is rtmp.NEED_DATA
    reply = session.data_to_send()
    assert verify_server_hello(c0c1, reply)
    c2 = client_c2(reply, det_random())
    session.receive_data(c2[:1000])
    assert session.next_event() is rtmp.NEED_DATA
    session.receive_data(c2[1000:])
    assert session.next_event() == rtmp.HandshakeComplete(digest=digest)
    assert session.bytes_received == 1 + 2 * HANDSHAKE_SIZE


def test_session_rejects_rtmpe() -> None:
    session = rtmp.ServerSession()
    session.receive_data(b"\x06" + bytes(1536))
    with pytest.raises(rtmp.RTMPProtocolError, match="version 6"):
        session.next_event()
    with pytest.raises(rtmp.RTMPProtocolError, match="already failed"):
        session.receive_data(b"x")

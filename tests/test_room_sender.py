"""PacketSender (relay/worker/room/_sender.py): SRTP-protected packets straight to
the nominated pair's socket from any thread; a relayed pair through the loop."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from types import SimpleNamespace

from aiortc.rtcdtlstransport import State
from pylibsrtp import Policy, Session

from relay.worker.room._rtp import rtp_header
from relay.worker.room._sender import PacketSender

KEY = bytes(range(30))  # 16-byte master key + 14-byte salt


def _session(direction: int) -> Session:
    return Session(policy=Policy(key=KEY, ssrc_type=direction))


def _dtls(protocol: object, remote: tuple[str, int]) -> SimpleNamespace:
    """What PacketSender reads of aiortc's RTCDtlsTransport and aioice's pair."""
    pair = SimpleNamespace(protocol=protocol, remote_addr=remote)
    connection = SimpleNamespace(_nominated={1: pair})
    return SimpleNamespace(_state=State.CONNECTED, _tx_srtp=_session(Policy.SSRC_ANY_OUTBOUND),
                           transport=SimpleNamespace(_connection=connection))


class _Transport:
    """An asyncio datagram transport as far as PacketSender looks: its socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None


def test_packets_from_threads_arrive_protected_in_order_of_sending() -> None:
    local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    local.bind(("127.0.0.1", 0))
    local.setblocking(False)
    remote = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    remote.bind(("127.0.0.1", 0))
    remote.settimeout(5)
    dtls = _dtls(SimpleNamespace(transport=_Transport(local)), remote.getsockname())
    loop = asyncio.new_event_loop()
    sender = PacketSender(dtls, loop)

    def send(ssrc: int) -> None:
        for sequence in range(50):
            with sender.lock:
                sender.send_rtp(rtp_header(96, True, sequence, 0, ssrc, b"") + b"x" * 100)

    threads = [threading.Thread(target=send, args=(ssrc,)) for ssrc in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    received = _session(Policy.SSRC_ANY_INBOUND)
    per_ssrc: dict[int, list[int]] = {1: [], 2: [], 3: []}
    for _ in range(150):
        packet = received.unprotect(remote.recv(2048))  # raises unless protected right
        per_ssrc[int.from_bytes(packet[8:12], "big")].append(
            int.from_bytes(packet[2:4], "big"))
    assert all(sequences == list(range(50)) for sequences in per_ssrc.values())

    with sender.lock:  # RTCP (a receiver report) goes through SRTCP
        sender.send_rtcp(bytes([0x80, 201, 0, 1]) + (7).to_bytes(4, "big"))
    assert received.unprotect_rtcp(remote.recv(2048))[4:8] == (7).to_bytes(4, "big")

    # the socket is a duplicate: aioice's own stays open when the sender closes
    sender.close()
    with sender.lock:
        sender.send_rtp(rtp_header(96, True, 99, 0, 1, b""))
    local.sendto(b"still open", remote.getsockname())
    assert remote.recv(2048) == b"still open"
    assert sender.dropped == 0
    for sock in (local, remote):
        sock.close()
    loop.close()


def test_nothing_leaves_before_dtls_and_refused_packets_are_counted() -> None:
    local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loop = asyncio.new_event_loop()
    fds = len(os.listdir("/proc/self/fd"))
    dtls = _dtls(SimpleNamespace(transport=_Transport(local)), ("127.0.0.1", 0))
    dtls._state = State.CONNECTING
    sender = PacketSender(dtls, loop)
    with sender.lock:
        sender.send_rtp(rtp_header(96, True, 1, 0, 1, b""))  # not connected: dropped quietly
    assert len(os.listdir("/proc/self/fd")) == fds  # no socket taken yet
    dtls._state = State.CONNECTED
    with sender.lock:
        sender.send_rtp(rtp_header(96, True, 2, 0, 1, b""))  # port 0: the kernel refuses
    assert sender.dropped == 1
    sender.close()
    assert len(os.listdir("/proc/self/fd")) == fds  # its duplicate closed with it
    local.close()
    loop.close()


def test_a_relayed_pair_sends_through_aioice_on_the_loop() -> None:
    class Relayed:  # aioice's TurnTransport: no socket of its own
        def __init__(self) -> None:
            self.sent: list[tuple[bytes, tuple[str, int]]] = []

        def get_extra_info(self, name: str) -> object:
            return None

        def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
            self.sent.append((data, addr))

    relayed = Relayed()
    dtls = _dtls(SimpleNamespace(transport=relayed), ("192.0.2.1", 3478))
    loop = asyncio.new_event_loop()
    sender = PacketSender(dtls, loop)
    with sender.lock:
        sender.send_rtp(rtp_header(96, True, 1, 0, 1, b"") + b"y")
    assert relayed.sent == []  # not from this thread: queued for the loop
    loop.run_until_complete(asyncio.sleep(0))
    [(datagram, address)] = relayed.sent
    assert address == ("192.0.2.1", 3478)
    assert _session(Policy.SSRC_ANY_INBOUND).unprotect(datagram).endswith(b"y")
    loop.close()

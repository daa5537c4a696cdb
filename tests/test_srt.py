"""relay.worker.srt against real SRT peers: Debian's ffmpeg as the listener, and an
in-process libsrt listener (ctypes, below) where the listener's side must be
observed (stream id, latency) or controlled (silent, closing). No mocks.

Each option number in relay.worker.srt is checked by a behaviour that a wrong number
would break: the peer sees the stream id, the negotiated latency changes, the
key length reads back, a wrong passphrase is rejected, the connect timeout
fires early, connect returns as soon as epoll says connected.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from relay.worker import srt

FFMPEG = "/usr/bin/ffmpeg"


@pytest.fixture(scope="module", autouse=True)
def _libsrt() -> None:
    try:
        srt.libsrt_version()
    except srt.SrtError as exc:
        pytest.skip(str(exc))


needs_ffmpeg = pytest.mark.skipif(not shutil.which(FFMPEG), reason=f"{FFMPEG} missing")


def free_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_bounded(fn: Callable[[], Any], timeout: float,
                on_timeout: Callable[[], None] | None = None) -> Any:
    """fn() in a thread, failing the test (not hanging it) after `timeout` s."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        if on_timeout:
            on_timeout()
        t.join(2)
        pytest.fail(f"still blocked after {timeout} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


# --- ffmpeg as the SRT listener ------------------------------------------------


def _udp_bound(port: int) -> bool:
    hexport = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            lines = Path(table).read_text().splitlines()[1:]
            if any(line.split()[1].endswith(hexport) for line in lines):
                return True
    return False


@contextlib.contextmanager
def ffmpeg_listener(port: int, seconds: float, query: str = "",
                    audio: bool = True) -> Iterator[subprocess.Popen[bytes]]:
    """ffmpeg pushing a small H.264/AAC MPEG-TS as an SRT listener on 127.0.0.1."""
    cmd = [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
           "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440"]
    cmd += ["-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune",
            "zerolatency", "-g", "25", "-threads", "1"]
    if audio:
        cmd += ["-c:a", "aac"]
    cmd += ["-f", "mpegts", f"srt://127.0.0.1:{port}?mode=listener&latency=120000{query}"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _udp_bound(port):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "ffmpeg never bound its SRT port"
            time.sleep(0.05)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def connect(url: str, timeout: float = 3.0) -> srt.SrtCaller:
    caller = srt.SrtCaller()
    try:
        caller.connect(srt.parse_srt_url(url), timeout)
    except BaseException:
        caller.close()
        raise
    return caller


# --- an in-process SRT listener (libsrt through ctypes) --------------------------


class Listener:
    """A one-connection SRT listener in this process, to see and steer the far side."""

    def __init__(self, host: str = "127.0.0.1", passphrase: str | None = None) -> None:
        lib = self.lib = srt._lib()
        c_int, c_void_p = ctypes.c_int, ctypes.c_void_p
        lib.srt_bind.argtypes = [c_int, c_void_p, c_int]
        lib.srt_listen.argtypes = [c_int, c_int]
        lib.srt_accept.argtypes = [c_int, c_void_p, c_void_p]
        lib.srt_send.argtypes = [c_int, ctypes.c_char_p, c_int]
        self.sock = lib.srt_create_socket()
        srt.SrtCaller._set_int(lib, self.sock, srt.SRTO_TRANSTYPE, srt.SRTT_LIVE, "TRANSTYPE")
        if passphrase:
            srt.SrtCaller._set_bytes(lib, self.sock, srt.SRTO_PASSPHRASE, passphrase.encode(),
                                     "PASSPHRASE")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.port = free_udp_port(host)
        addr = srt._sockaddr(family, (host, self.port, 0, 0)[:4 if ":" in host else 2])
        assert lib.srt_bind(self.sock, ctypes.byref(addr), ctypes.sizeof(addr)) == 0, \
            srt._last_error_text(lib)
        assert lib.srt_listen(self.sock, 1) == 0, srt._last_error_text(lib)
        self.accepted = -1
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.accepted = self.lib.srt_accept(self.sock, None, None)

    def wait_accepted(self, timeout: float = 5.0) -> int:
        self._thread.join(timeout)
        assert self.accepted >= 0, "the listener accepted nothing"
        return self.accepted

    def option_int(self, opt: int) -> int:
        val, size = ctypes.c_int(0), ctypes.c_int(4)
        assert self.lib.srt_getsockflag(self.wait_accepted(), opt, ctypes.byref(val),
                                        ctypes.byref(size)) == 0
        return val.value

    def option_str(self, opt: int) -> str:
        buf, size = ctypes.create_string_buffer(600), ctypes.c_int(600)
        assert self.lib.srt_getsockflag(self.wait_accepted(), opt, buf, ctypes.byref(size)) == 0
        return buf.raw[: size.value].decode()

    def send(self, data: bytes) -> None:
        assert self.lib.srt_send(self.wait_accepted(), data, len(data)) == len(data), \
            srt._last_error_text(self.lib)

    def close_peer(self) -> None:
        if self.accepted >= 0:
            self.lib.srt_close(self.accepted)

    def close(self) -> None:
        self.close_peer()
        self.lib.srt_close(self.sock)  # also wakes a pending srt_accept
        self._thread.join(2)


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


# --- URLs ------------------------------------------------------------------------------


def test_parse_url_options_follow_ffmpeg_units() -> None:
    url = srt.parse_srt_url(
        "srt://example.com:9000?streamid=#!::r=live/cam1,m=request%26x&passphrase=0123456789ab"
        "&pbkeylen=32&latency=250000&rcvlatency=400000&connect_timeout=1500&unknown=1")
    assert url == srt.SrtUrl(host="example.com", port=9000,
                             streamid="#!::r=live/cam1,m=request&x", passphrase="0123456789ab",
                             pbkeylen=32, latency_ms=250, rcvlatency_ms=400,
                             connect_timeout_ms=1500)
    assert "0123456789ab" not in repr(url)
    assert url.address == "example.com:9000"
    v6 = srt.parse_srt_url("srt://[::1]:7001?mode=caller&tsbpddelay=90000")
    assert (v6.host, v6.port, v6.latency_ms, v6.address) == ("::1", 7001, 90, "[::1]:7001")
    bare = srt.parse_srt_url("srt://10.0.0.1:1234")
    assert (bare.streamid, bare.passphrase, bare.latency_ms, bare.connect_timeout_ms) == (
        None, None, None, None)


@pytest.mark.parametrize(("url", "text"), [
    ("srt://127.0.0.1:9000?mode=listener", "only caller mode is supported (mode='listener')"),
    ("srt://127.0.0.1:9000?mode=rendezvous", "only caller mode is supported (mode='rendezvous')"),
    ("srt://127.0.0.1", "SRT URL has no port"),
    ("srt://127.0.0.1:0", "SRT URL has no port"),
    ("srt://:9000", "SRT URL has no host"),
    ("srt://127.0.0.1:99999", "bad SRT URL"),
    ("udp://127.0.0.1:9000", "not an SRT URL"),
    ("srt://127.0.0.1:9000?passphrase=short", "passphrase must be 10 to 79 characters"),
    ("srt://127.0.0.1:9000?passphrase=" + "x" * 80, "passphrase must be 10 to 79 characters"),
    ("srt://127.0.0.1:9000?pbkeylen=20", "pbkeylen=20: must be 16, 24 or 32"),
    ("srt://127.0.0.1:9000?latency=soon", "latency='soon': not an integer"),
    ("srt://127.0.0.1:9000?connect_timeout=0", "connect_timeout='0': must be >= 1"),
    ("srt://127.0.0.1:9000?transtype=file", "only transtype=live is supported"),
    ("srt://127.0.0.1:9000?streamid=" + "s" * 513, "streamid is too long"),
])
def test_bad_urls(url: str, text: str) -> None:
    with pytest.raises(srt.SrtError) as info:
        srt.parse_srt_url(url)
    assert text in str(info.value)


# --- connect failures ------------------------------------------------------------------


def test_nothing_listening_fails_within_connect_timeout() -> None:
    """SRTO_CONNTIMEO (36): 1000 ms makes it fail well before libsrt's 3 s default."""
    port = free_udp_port()
    t0 = time.monotonic()
    with pytest.raises(srt.SrtError) as info:
        run_bounded(lambda: connect(f"srt://127.0.0.1:{port}?connect_timeout=1000"), 10)
    elapsed = time.monotonic() - t0
    assert str(info.value) == (f"SRT connection to 127.0.0.1:{port} failed: "
                               "Connection setup failure: connection timed out")
    assert 0.8 < elapsed < 2.0, elapsed
    # Without connect_timeout in the URL, connect()'s timeout argument applies.
    t0 = time.monotonic()
    with pytest.raises(srt.SrtError, match="connection timed out"):
        run_bounded(lambda: connect(f"srt://127.0.0.1:{port}", timeout=0.5), 10)
    assert time.monotonic() - t0 < 1.5


def test_close_cancels_a_pending_connect() -> None:
    caller = srt.SrtCaller()
    url = srt.parse_srt_url(f"srt://127.0.0.1:{free_udp_port()}?connect_timeout=5000")
    threading.Timer(0.3, caller.close).start()
    t0 = time.monotonic()
    with pytest.raises(srt.SrtError, match="cancelled"):
        run_bounded(lambda: caller.connect(url), 10)
    assert time.monotonic() - t0 < 1.0
    caller.close()  # idempotent
    assert caller.recv(0.1) == b""


def test_unresolvable_host() -> None:
    with pytest.raises(srt.SrtError, match=r"cannot resolve no-such-host\.invalid"):
        connect("srt://no-such-host.invalid:9000")


# --- in-process listener: options seen by the peer, EOF, stall, cancel ------------------


def test_transtype_number() -> None:
    """SRTO_TRANSTYPE (50) is write-only: see it through what it sets (congestion, latency)."""
    lib = srt._lib()
    sock = lib.srt_create_socket()
    probe = srt.SrtCaller()
    probe._sock = sock
    try:
        srt.SrtCaller._set_int(lib, sock, srt.SRTO_TRANSTYPE, 1, "SRTO_TRANSTYPE")  # SRTT_FILE
        assert probe.get_option_str(47) == "file"  # SRTO_CONGESTION
        assert probe.get_option_int(srt.SRTO_RCVLATENCY) == 0
        srt.SrtCaller._set_int(lib, sock, srt.SRTO_TRANSTYPE, srt.SRTT_LIVE, "SRTO_TRANSTYPE")
        assert probe.get_option_str(47) == "live"
        assert probe.get_option_int(srt.SRTO_RCVLATENCY) == 120
    finally:
        probe.close()


def test_streamid_and_latency_reach_the_listener(listener: Listener) -> None:
    """SRTO_STREAMID (46), SRTO_LATENCY (23), SRTO_RCVLATENCY (43) as the peer sees them."""
    sid = "#!::r=live/cam1,m=request"
    with connect(f"srt://127.0.0.1:{listener.port}?streamid={sid}&latency=250000") as caller:
        assert listener.option_str(srt.SRTO_STREAMID) == sid
        assert caller.get_option_str(srt.SRTO_STREAMID) == sid
        # The caller asked 250 ms of both sides (libsrt's default is 120).
        assert caller.get_option_int(srt.SRTO_RCVLATENCY) == 250
        assert listener.option_int(srt.SRTO_RCVLATENCY) == 250
        assert caller.state() == srt.SRTS_CONNECTED
        # SRTO_RCVSYN (2): off (libsrt's default is on), see relay.worker.srt's docstring.
        assert caller.get_option_int(srt.SRTO_RCVSYN) == 0


def test_connect_returns_once_connected(listener: Listener) -> None:
    """SRT_EPOLL_OUT (0x4) wakes the connect wait: no POLL_INTERVAL (0.2 s) tick is waited."""
    t0 = time.monotonic()
    with connect(f"srt://127.0.0.1:{listener.port}"):
        assert time.monotonic() - t0 < 0.15


def test_rcvlatency_is_only_ours() -> None:
    lst = Listener()
    try:
        with connect(f"srt://127.0.0.1:{lst.port}?rcvlatency=400000") as caller:
            assert caller.get_option_int(srt.SRTO_RCVLATENCY) == 400
            assert lst.option_int(srt.SRTO_PEERLATENCY) == 400
            assert lst.option_int(srt.SRTO_RCVLATENCY) == 120
    finally:
        lst.close()


def test_ipv6_literal() -> None:
    lst = Listener("::1")
    try:
        with connect(f"srt://[::1]:{lst.port}?streamid=v6") as caller:
            assert lst.option_str(srt.SRTO_STREAMID) == "v6"
            lst.send(b"\x47" * 188)
            assert caller.recv(3) == b"\x47" * 188
    finally:
        lst.close()


def test_reader_keeps_the_remainder_and_ends_when_the_peer_closes(listener: Listener) -> None:
    caller = connect(f"srt://127.0.0.1:{listener.port}?latency=20000")
    reader = srt.SrtReader(caller, stall_timeout=5)
    messages = [bytes([i]) * 1316 for i in range(5)]
    for m in messages:
        listener.send(m)
    first = reader.read(1000)
    assert first == messages[0][:1000]
    assert reader.read(1000) == messages[0][1000:]  # the rest of the message, not the next
    got = b"".join(run_bounded(lambda: [reader.read(4096) for _ in range(4)], 5))
    assert got == b"".join(messages[1:])
    time.sleep(0.3)  # past the 20 ms latency: nothing in flight
    t0 = time.monotonic()
    listener.close_peer()
    assert run_bounded(lambda: reader.read(4096), 5) == b""
    assert time.monotonic() - t0 < 1.0
    assert caller.state() in (srt.SRTS_BROKEN, srt.SRTS_CLOSED, srt.SRTS_NONEXIST)
    assert reader.read(10) == b""  # and stays at EOF
    reader.close()
    reader.close()
    assert caller.closed


def test_recv_wakes_as_soon_as_data_is_due(listener: Listener) -> None:
    """SRT_EPOLL_IN (0x1) wakes a waiting recv(): not the next POLL_INTERVAL (0.2 s) tick."""
    with connect(f"srt://127.0.0.1:{listener.port}?latency=20000") as caller:
        listener.wait_accepted()
        delays = []
        for i in range(5):
            timer = threading.Timer(0.05 + 0.037 * i, listener.send, [bytes([i]) * 188])
            timer.start()
            t_sent = time.monotonic() + 0.05 + 0.037 * i
            assert run_bounded(lambda: caller.recv(2), 5) == bytes([i]) * 188
            delays.append(time.monotonic() - t_sent)
            timer.join()
        assert max(delays) < 0.1, delays  # 20 ms latency + scheduling


def test_tail_held_by_latency_is_read_before_eof(listener: Listener) -> None:
    """The peer closes while its last packets wait out a 1 s latency: none is lost.

    libsrt fails srt_recvmsg with "Connection was broken" at once; relay.worker.srt
    waits for the held packets while SRTO_RCVDATA (20) counts some.
    """
    caller = connect(f"srt://127.0.0.1:{listener.port}?latency=1000000")
    assert caller.get_option_int(srt.SRTO_RCVLATENCY) == 1000
    messages = [bytes([i]) * 1316 for i in range(10)]
    for m in messages:
        listener.send(m)
    time.sleep(0.2)  # on the wire and in the caller's buffer, not yet due
    assert caller.get_option_int(srt.SRTO_RCVDATA) == len(messages)
    listener.close_peer()
    t0 = time.monotonic()

    def read_all() -> list[bytes]:
        got = []
        while data := caller.recv(5):
            got.append(data)
        return got

    assert run_bounded(read_all, 10, caller.close) == messages
    assert time.monotonic() - t0 < 2.0
    caller.close()


def test_silent_source_stalls_and_cancel_unblocks(listener: Listener) -> None:
    """A peer that keeps the connection up (libsrt keepalives) but sends nothing."""
    reader = srt.SrtReader(connect(f"srt://127.0.0.1:{listener.port}"), stall_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(srt.SrtError) as info:
        run_bounded(lambda: reader.read(4096), 10, reader.cancel)
    assert str(info.value) == "no data from the SRT source for 2 s"
    assert 1.9 < time.monotonic() - t0 < 3.0
    # cancel() from another thread: the blocked read returns EOF at once.
    threading.Timer(0.5, reader.cancel).start()
    t0 = time.monotonic()
    assert run_bounded(lambda: reader.read(4096), 5) == b""
    assert time.monotonic() - t0 < 1.5
    reader.close()


def test_close_from_another_thread_unblocks_a_read(listener: Listener) -> None:
    reader = srt.SrtReader(connect(f"srt://127.0.0.1:{listener.port}"))
    threading.Timer(0.3, reader.close).start()
    t0 = time.monotonic()
    assert run_bounded(lambda: reader.read(4096), 5) == b""
    assert time.monotonic() - t0 < 1.3


# --- ffmpeg as the listener ----------------------------------------------------------


@pytest.mark.slow
@needs_ffmpeg
def test_pyav_demuxes_ffmpeg_srt_stream_until_eof() -> None:
    port = free_udp_port()
    with ffmpeg_listener(port, seconds=4) as proc:
        caller = connect(f"srt://127.0.0.1:{port}?latency=120000&connect_timeout=3000")
        reader = srt.SrtReader(caller, stall_timeout=10)

        def demux() -> dict[str, Any]:
            seen: dict[str, Any] = {"video": 0, "audio": 0, "packets": 0}
            with av.open(reader, format="mpegts") as container:
                video = container.streams.video[0]
                audio = container.streams.audio[0]
                seen["streams"] = (video.codec_context.name, video.codec_context.width,
                                   video.codec_context.height, audio.codec_context.name)
                for packet in container.demux(video, audio):
                    seen["packets"] += 1
                    if packet.stream is video and seen["video"] < 10:
                        seen["video"] += len(packet.decode())
                    elif packet.stream is audio and seen["audio"] < 10:
                        seen["audio"] += len(packet.decode())
            seen["eof_read"] = reader.read(4096)
            return seen

        t0 = time.monotonic()
        seen = run_bounded(demux, 30, reader.cancel)
        elapsed = time.monotonic() - t0
        assert proc.wait(5) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert seen["streams"] == ("h264", 320, 240, "aac"), seen
    assert seen["video"] >= 10 and seen["audio"] >= 10, seen
    assert seen["packets"] > 100, seen  # 4 s of 25 fps video and AAC
    assert seen["eof_read"] == b""
    assert elapsed < 15, elapsed  # the end of the stream is EOF, not a stall
    assert "rror" not in err, err
    reader.close()


@pytest.mark.slow
@needs_ffmpeg
def test_passphrase() -> None:
    """SRTO_PASSPHRASE (26) and SRTO_PBKEYLEN (27) against an encrypting ffmpeg."""
    port = free_udp_port()
    secret = "correct-horse-battery"
    with ffmpeg_listener(port, seconds=2, audio=False,
                         query=f"&passphrase={secret}&pbkeylen=24"):
        base = f"srt://127.0.0.1:{port}?connect_timeout=2000"
        # A rejected handshake never reaches ffmpeg's accept(): it keeps listening.
        with pytest.raises(srt.SrtError) as info:
            connect(f"{base}&passphrase=wrong-horse-battery&pbkeylen=24")
        assert str(info.value) == (f"SRT connection to 127.0.0.1:{port} failed: Connection "
                                   "setup failure: connection rejected (Incorrect passphrase)")
        with pytest.raises(srt.SrtError, match=r"rejected \(Password required or unexpected\)"):
            connect(base)
        with connect(f"{base}&passphrase={secret}&pbkeylen=24") as caller:
            assert caller.get_option_int(srt.SRTO_PBKEYLEN) == 24  # default would be 16
            data = run_bounded(lambda: caller.recv(5), 10)
            assert data and len(data) % 188 == 0
            assert data[::188] == b"\x47" * (len(data) // 188)  # decrypted TS packets


@pytest.mark.slow
@needs_ffmpeg
def test_stopped_ffmpeg_is_a_stall() -> None:
    port = free_udp_port()
    with ffmpeg_listener(port, seconds=10, audio=False) as proc:
        reader = srt.SrtReader(connect(f"srt://127.0.0.1:{port}"), stall_timeout=2)
        assert run_bounded(lambda: reader.read(4096), 10)
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()

        def drain() -> None:
            while reader.read(4096):
                pass

        with pytest.raises(srt.SrtError, match="no data from the SRT source for 2 s"):
            run_bounded(drain, 15, reader.cancel)
        # Within libsrt's 5 s peer-idle timeout: a stall, not (yet) a broken connection.
        assert time.monotonic() - t0 < 4.0
        reader.close()

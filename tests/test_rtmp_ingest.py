"""RTMP/RTMPS ingest end to end: the real service, Debian ffmpeg publishers, raw sockets.

What the server saw is read from its log: every session ends with a line describing
its tracks (InputStats.describe()), and live sessions log the same at DEBUG every
PROGRESS_INTERVAL seconds. The frame-exact checks tee ffmpeg's output into a local FLV
file, parse it with the same core and compare the two descriptions.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import ingress as pb

import rtmp
from relay.service.ingest.rtmp_front import PROGRESS_INTERVAL, InputStats, key_fingerprint
from rtmp._chunks import MSG_AMF0_COMMAND, MSG_SET_CHUNK_SIZE, MSG_VIDEO
from rtmp._handshake import client_c2, client_hello
from tests.service import ServiceProcess

pytestmark = pytest.mark.slow

MAX_MESSAGE = 256 * 1024
HANDSHAKE_TIMEOUT = 2.0
BUFFERING = pb.IngressState.ENDPOINT_BUFFERING
INACTIVE = pb.IngressState.ENDPOINT_INACTIVE
ERROR = pb.IngressState.ENDPOINT_ERROR


# -- fixtures and helpers ---------------------------------------------------------------


def make_cert(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            # an IP SAN: a client that verifies (the URL pull's probe, given this
            # certificate as its CA) checks the name against it
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("rtmp")
    cert, key = make_cert(workdir)
    proc = ServiceProcess(workdir, rtmp_port=0, rtmps_port=0, rtmps_cert_file=cert,
                          rtmps_key_file=key, rtmp_handshake_timeout=HANDSHAKE_TIMEOUT,
                          rtmp_max_message_size=MAX_MESSAGE, logging={"level": "debug"})
    proc.start()
    assert proc.rtmp_addr and proc.rtmps_addr
    yield proc
    proc.stop()
    # every hostile peer of this module ended its connection only, as a logged
    # refusal or protocol error: nothing at ERROR, no traceback (issue 12)
    assert not re.findall(r".* ERROR .*|Traceback", proc.log())


def api(svc: ServiceProcess, method: str, req: Any) -> Any:
    async def run(client: Any) -> Any:
        return await getattr(client, method)(req)

    return svc.api(run)


def create(svc: ServiceProcess, **kw: Any) -> pb.IngressInfo:
    kw.setdefault("input_type", pb.IngressInput.RTMP_INPUT)
    kw.setdefault("room_name", "room")
    kw.setdefault("participant_identity", "encoder")
    return api(svc, "create_ingress", pb.CreateIngressRequest(**kw))


def state(svc: ServiceProcess, ingress_id: str) -> pb.IngressState:
    items = api(svc, "list_ingress", pb.ListIngressRequest(ingress_id=ingress_id)).items
    return items[0].state


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def wait_state(svc: ServiceProcess, ingress_id: str, status: int,
               timeout: float = 10.0) -> pb.IngressState:
    def check() -> pb.IngressState | None:
        st = state(svc, ingress_id)
        return st if st.status == status else None

    return wait_for(check, timeout, f"{ingress_id} {pb.IngressState.Status.Name(status)}")


def ended_line(svc: ServiceProcess, resource_id: str) -> str:
    match = re.search(rf"rtmps? session {resource_id} of IN_\w+ from \S+ ended after .*",
                      svc.log())
    return match.group(0) if match else ""


def progress_frames(svc: ServiceProcess, resource_id: str) -> int:
    found = re.findall(rf"session {resource_id} of .* live: video \S+ \S+ frames=(\d+)",
                       svc.log())
    return int(found[-1]) if found else 0


def ffmpeg_cmd(url: str, seconds: float, *, realtime: bool = True,
               tee_file: Path | None = None) -> list[str]:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error"]
    if realtime:
        cmd.append("-re")
    cmd += ["-f", "lavfi", "-i", "testsrc2=size=192x108:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", "-bf", "0", "-g", "30", "-sc_threshold", "0",
            "-b:v", "200k", "-c:a", "aac", "-b:a", "64k"]
    if tee_file is None:
        return [*cmd, "-f", "flv", url]
    # tee does not ask encoders for global headers; FLV needs them (avcC, AAC config)
    return [*cmd, "-flags", "+global_header", "-map", "0:v", "-map", "1:a", "-f", "tee",
            f"[f=flv:onfail=abort]{url}|[f=flv]{tee_file}"]


class Publisher:
    """A Debian ffmpeg 5.1 publisher (stdin open so 'q' ends it cleanly)."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.stderr = ""

    def wait(self, timeout: float = 30.0) -> int:
        _, err = self.proc.communicate(timeout=timeout)
        self.stderr = err.decode(errors="replace")
        return self.proc.returncode

    def quit(self) -> int:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"q")
            self.proc.stdin.flush()
        return self.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def url(svc: ServiceProcess, key: str, *, tls: bool = False) -> str:
    return f"rtmps://{svc.rtmps_addr}/live/{key}" if tls else f"rtmp://{svc.rtmp_addr}/live/{key}"


def describe_flv(path: Path) -> str:
    reader = rtmp.FLVReader()
    reader.feed(path.read_bytes())
    stats = InputStats()
    while (tag := reader.next_tag()) is not None:
        for event in rtmp.parse_tag(tag):
            if isinstance(event, (*rtmp.MEDIA_EVENTS, rtmp.Metadata)):
                stats.observe(event)
    return stats.describe()


@dataclass
class Live:
    info: pb.IngressInfo
    publisher: Publisher
    resource_id: str


def start_live(svc: ServiceProcess, seconds: float = 60, **create_kw: Any) -> Live:
    info = create(svc, **create_kw)
    pub = Publisher(ffmpeg_cmd(url(svc, info.stream_key), seconds))
    st = wait_state(svc, info.ingress_id, BUFFERING)
    return Live(info, pub, st.resource_id)


@pytest.fixture(scope="module")
def healthy(svc: ServiceProcess) -> Iterator[Live]:
    """A well-behaved publisher that lives through all the hostile tests."""
    live = start_live(svc, 300, name="healthy")
    yield live
    assert live.publisher.quit() == 0, live.publisher.stderr
    line = wait_for(lambda: ended_line(svc, live.resource_id), 5, "healthy session end")
    assert "publisher ended the stream" in line
    assert len(set(re.findall(rf"(RT_\w+) of {live.info.ingress_id}", svc.log()))) == 1
    wait_state(svc, live.info.ingress_id, INACTIVE)


def assert_unaffected(svc: ServiceProcess, live: Live, frames_before: int) -> None:
    """Still the same live session, and the server keeps counting its frames."""
    st = state(svc, live.info.ingress_id)
    assert (st.status, st.resource_id) == (BUFFERING, live.resource_id)
    assert live.publisher.proc.poll() is None
    wait_for(lambda: progress_frames(svc, live.resource_id) > frames_before,
             PROGRESS_INTERVAL * 2 + 1, "healthy frame count to grow")


# -- a raw RTMP client for what ffmpeg will not do ---------------------------------------


class RawClient:
    def __init__(self, addr: str, *, chunk_size: int = 128) -> None:
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.writer = rtmp.ChunkWriter(chunk_size)
        self.reader = rtmp.ChunkReader()
        self.commands: list[list[Any]] = []

    def handshake(self) -> None:
        c0c1 = client_hello(os.urandom)
        self.sock.sendall(c0c1)
        s0s1s2 = self.recv_exact(1 + 2 * 1536)
        self.sock.sendall(client_c2(s0s1s2, os.urandom))

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            data = self.sock.recv(n - len(buf))
            if not data:
                raise ConnectionError("closed during handshake")
            buf += data
        return buf

    def send(self, csid: int, type_id: int, stream_id: int, ts: int, payload: bytes) -> None:
        self.sock.sendall(self.writer.write(csid, type_id, stream_id, ts, payload))

    def command(self, name: str, txn: float, *args: Any, stream_id: int = 0) -> None:
        self.send(8 if stream_id else 3, MSG_AMF0_COMMAND, stream_id, 0,
                  rtmp.amf0_encode(name, txn, *args))

    def read_until(self, predicate: Callable[[list[Any]], bool], timeout: float = 5) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for values in self.commands:
                if predicate(values):
                    return values
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.reader.feed(data)
            while (msg := self.reader.next_message()) is not None:
                if msg.type_id == MSG_AMF0_COMMAND:
                    self.commands.append(rtmp.amf0_decode_all(msg.payload))
        raise AssertionError("no such reply")

    def publish(self, key: str) -> tuple[int, dict[str, Any]]:
        self.command("connect", 1.0, {"app": "live", "tcUrl": "rtmp://127.0.0.1/live"})
        self.command("createStream", 2.0, None)
        sid = int(self.read_until(lambda v: v[0] == "_result" and v[1] == 2.0)[3])
        self.command("publish", 3.0, None, key, "live", stream_id=sid)
        status = self.read_until(lambda v: v[0] == "onStatus")[3]
        return sid, status

    def closed_within(self, timeout: float) -> float | None:
        """Seconds until the server closes the connection (reading and discarding)."""
        start = time.monotonic()
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                if time.monotonic() - start > timeout:
                    return None
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            return None
        return time.monotonic() - start

    def close(self) -> None:
        self.sock.close()


# -- a whole publish, rtmp and rtmps ------------------------------------------------------


def test_publish_rtmp_and_rtmps_every_frame_arrives(svc: ServiceProcess, tmp_path: Path) -> None:
    runs = {}
    for tls in (False, True):
        info = create(svc, name=f"tls={tls}")
        tee = tmp_path / f"sent-{tls}.flv"
        runs[tls] = (info, tee, Publisher(ffmpeg_cmd(url(svc, info.stream_key, tls=tls), 10,
                                                     tee_file=tee)))
    live_states = {}
    for tls, (info, _, _) in runs.items():
        live_states[tls] = st = wait_state(svc, info.ingress_id, BUFFERING)
        assert re.fullmatch(r"RT_[2-9A-HJ-NP-Za-km-z]{12}", st.resource_id)
        assert abs(st.started_at - time.time_ns()) < 10 * 10**9
        assert st.updated_at >= st.started_at and st.ended_at == 0
    time.sleep(3)
    for info, _, _ in runs.values():
        assert state(svc, info.ingress_id).status == BUFFERING  # still live mid-stream
    for tls, (info, tee, pub) in runs.items():
        assert pub.wait() == 0, pub.stderr
        final = wait_state(svc, info.ingress_id, INACTIVE)
        assert final.started_at == live_states[tls].started_at
        assert final.ended_at > final.started_at and final.updated_at == final.ended_at
        assert final.ended_at - final.started_at > 9 * 10**9
        line = wait_for(lambda rid=live_states[tls].resource_id: ended_line(svc, rid))
        assert line.startswith("rtmps session " if tls else "rtmp session ")
        assert "publisher ended the stream" in line
        sent = describe_flv(tee)
        # every frame, keyframe flag, byte and timestamp the encoder sent, as the file has it
        assert line.endswith("; " + sent), (line, sent)
        assert "video h264 192x108 frames=300 keyframes=10" in sent
        assert re.search(r"audio aac 48000Hz 1ch frames=4[67]\d", sent)


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "text"), [
    ("unknown", "unknown stream key"),
    ("disabled", "session is disabled"),
    ("whip", "ingress is not an RTMP ingress"),
    ("no_room", "no room name"),
])
def test_publish_refused(svc: ServiceProcess, healthy: Live, case: str, text: str) -> None:
    before = progress_frames(svc, healthy.resource_id)
    if case == "unknown":
        key, ingress_id = "NoSuchKey123", None
    else:
        kw: dict[str, Any] = {
            "disabled": {"enabled": False},
            "whip": {"input_type": pb.IngressInput.WHIP_INPUT},
            "no_room": {"room_name": ""},
        }[case]
        info = create(svc, **kw)
        key, ingress_id = info.stream_key, info.ingress_id
    pub = Publisher(ffmpeg_cmd(url(svc, key), 2, realtime=False))
    assert pub.wait() != 0
    assert f"Server error: {text}" in pub.stderr, pub.stderr
    assert re.search(rf"rtmp connection from 127\.0\.0\.1:\d+: publish \(app 'live', key "
                     rf"{re.escape(key_fingerprint(key))}\) refused.*: {text}$", svc.log(), re.M)
    if ingress_id:
        assert state(svc, ingress_id).status == INACTIVE
    assert_unaffected(svc, healthy, before)


# -- takeover, delete, update --------------------------------------------------------------


def test_takeover_second_publisher_wins(svc: ServiceProcess) -> None:
    first = start_live(svc, 30)
    second = Publisher(ffmpeg_cmd(url(svc, first.info.stream_key), 4))
    try:
        assert first.publisher.wait(5) != 0  # its connection was closed
        st = wait_for(lambda: (s := state(svc, first.info.ingress_id)).resource_id
                      != first.resource_id and s)
        assert st.status == BUFFERING
        line = wait_for(lambda: ended_line(svc, first.resource_id))
        assert f"taken over by {st.resource_id}" in line
        time.sleep(0.5)  # the old session's final write must not have overwritten it
        assert state(svc, first.info.ingress_id).resource_id == st.resource_id
        assert state(svc, first.info.ingress_id).status == BUFFERING
        assert second.wait() == 0, second.stderr
        final = wait_state(svc, first.info.ingress_id, INACTIVE)
        assert final.started_at == st.started_at and final.ended_at > st.started_at
    finally:
        first.publisher.kill()
        second.kill()


@pytest.mark.parametrize("action", ["delete", "update"])
def test_delete_or_update_ends_live_session_within_1s(svc: ServiceProcess, action: str) -> None:
    live = start_live(svc, 30)
    try:
        start = time.monotonic()
        if action == "delete":
            api(svc, "delete_ingress", pb.DeleteIngressRequest(ingress_id=live.info.ingress_id))
        else:
            api(svc, "update_ingress", pb.UpdateIngressRequest(ingress_id=live.info.ingress_id,
                                                               room_name="another-room"))
        assert live.publisher.wait(5) != 0
        elapsed = time.monotonic() - start
        assert elapsed < 1.0, elapsed
        reason = "ingress deleted" if action == "delete" else "ingress updated"
        assert "ended after" in wait_for(lambda: ended_line(svc, live.resource_id))
        assert reason in ended_line(svc, live.resource_id)
        if action == "update":
            wait_state(svc, live.info.ingress_id, INACTIVE)
            again = Publisher(ffmpeg_cmd(url(svc, live.info.stream_key), 2))
            assert wait_state(svc, live.info.ingress_id, BUFFERING).resource_id != \
                live.resource_id  # the key still works
            assert again.wait() == 0, again.stderr
    finally:
        live.publisher.kill()


# -- hostile peers: each ends only its own connection ----------------------------------------


def test_slowloris_cut_by_handshake_timeout(svc: ServiceProcess, healthy: Live) -> None:
    before = progress_frames(svc, healthy.resource_id)
    host, port = svc.rtmp_addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    hello = client_hello(os.urandom)
    start = time.monotonic()
    closed_at = None
    sock.settimeout(1.0)
    try:
        for i in range(10):
            sock.sendall(hello[i:i + 1])  # 1 byte per second
            try:
                if sock.recv(1) == b"":
                    closed_at = time.monotonic() - start
                    break
            except TimeoutError:
                continue
    except (ConnectionResetError, BrokenPipeError):
        closed_at = time.monotonic() - start
    finally:
        sock.close()
    assert closed_at is not None and HANDSHAKE_TIMEOUT - 0.5 < closed_at < HANDSHAKE_TIMEOUT + 1.5
    assert re.search(r"rtmp connection from 127\.0\.0\.1:\d+ closed: no publish request "
                     r"within 2 s \(handshake timeout\)", svc.log())
    assert_unaffected(svc, healthy, before)


def test_rtmps_plain_bytes_and_silent_peer(svc: ServiceProcess, healthy: Live) -> None:
    before = progress_frames(svc, healthy.resource_id)
    host, port = svc.rtmps_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(client_hello(os.urandom))  # RTMP where TLS is expected
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
    assert re.search(r"rtmps connection from \S+ ended before publishing: TLS handshake failed",
                     svc.log())
    assert_unaffected(svc, healthy, before)


def test_oversized_message_ends_that_session(svc: ServiceProcess, healthy: Live) -> None:
    before = progress_frames(svc, healthy.resource_id)
    info = create(svc, name="oversized")
    client = RawClient(svc.rtmp_addr)
    try:
        client.handshake()
        sid, status = client.publish(info.stream_key)
        assert status["code"] == "NetStream.Publish.Start"
        rid = wait_state(svc, info.ingress_id, BUFFERING).resource_id
        big = b"\x17\x01\x00\x00\x00" + b"\x00" * (MAX_MESSAGE + 1)
        with contextlib.suppress(OSError):  # the server may close while we still send
            client.send(6, MSG_VIDEO, sid, 0, big)
        assert client.closed_within(1.0) is not None
    finally:
        client.close()
    st = wait_state(svc, info.ingress_id, ERROR)
    assert st.resource_id == "" or st.resource_id == rid
    assert "RTMP protocol error" in st.error and str(MAX_MESSAGE) in st.error
    assert st.ended_at > st.started_at
    line = ended_line(svc, rid)
    assert "RTMP protocol error" in line
    assert_unaffected(svc, healthy, before)


def test_huge_chunk_size(svc: ServiceProcess, healthy: Live) -> None:
    """2^31-1 is a legal chunk size (clamped to the 16 MiB message limit): the publish
    works and the message cap still holds; bit 31 set is a protocol error."""
    before = progress_frames(svc, healthy.resource_id)
    info = create(svc, name="chunk-size")
    client = RawClient(svc.rtmp_addr)
    try:
        client.handshake()
        client.sock.sendall(client.writer.set_chunk_size(0x7FFFFFFF))
        sid, status = client.publish(info.stream_key)
        assert status["code"] == "NetStream.Publish.Start"
        rid = wait_state(svc, info.ingress_id, BUFFERING).resource_id
        # a 16 MiB message announced in one chunk: cut at its header, nothing buffered
        header = client.writer.write(6, MSG_VIDEO, sid, 0, b"\x17\x01" + b"\x00" * 0xFFFFFD)
        client.sock.sendall(header[:64 * 1024])
        assert client.closed_within(2.0) is not None
    finally:
        client.close()
    st = wait_state(svc, info.ingress_id, ERROR)
    assert "RTMP protocol error" in st.error
    assert "RTMP protocol error" in ended_line(svc, rid)

    bad = RawClient(svc.rtmp_addr)
    try:
        bad.handshake()
        bad.sock.sendall(bad.writer.write(2, MSG_SET_CHUNK_SIZE, 0, 0, b"\x80\x00\x00\x00"))
        assert bad.closed_within(2.0) is not None
    finally:
        bad.close()
    assert re.search(r"rtmp connection from \S+ closed: protocol error before publishing: "
                     r"invalid chunk size 2147483648", svc.log())
    assert_unaffected(svc, healthy, before)


def test_parallel_hostile_peers_and_healthy_publisher(svc: ServiceProcess, healthy: Live) -> None:
    """Ten slowloris peers and five garbage senders at once; the healthy publish goes on."""
    before = progress_frames(svc, healthy.resource_id)
    results: list[float | None] = []

    def slow() -> None:
        host, port = svc.rtmp_addr.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"\x03")
            sock.settimeout(HANDSHAKE_TIMEOUT + 2)
            start = time.monotonic()
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                sock.recv(1)
            results.append(time.monotonic() - start)

    def garbage() -> None:
        host, port = svc.rtmp_addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"\x03" + os.urandom(1536))
            try:
                sock.recv(3073)
                sock.sendall(os.urandom(1536 + 4096))
                while sock.recv(65536):
                    pass
            except (ConnectionResetError, BrokenPipeError):
                pass

    threads = [threading.Thread(target=slow) for _ in range(10)]
    threads += [threading.Thread(target=garbage) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 10 and all(r < HANDSHAKE_TIMEOUT + 1.5 for r in results)
    assert_unaffected(svc, healthy, before)

"""The egress policy of URL pulls (relay/worker/egress.py) and where it is enforced: at
connect time, in the session worker's egress gate (relay/worker/egress_gate.py) for
every http(s) connection, and in the SRT caller.

Connections are real: test servers listen on 127.0.0.1, which `public_here` treats as
a public address, and on 127.0.0.2, which it refuses like any loopback address; a
refused target must see nothing. Name resolution is faked where a test needs a name
to answer differently (rebinding) or to point at a private network.

The gate runs as in the worker: served by the test's event loop (trio), while its
clients, the urllib probe and FFmpeg, block in threads (`in_thread`, `pull`). Its
request parser is tested on its own in tests/test_proxy_requests.py.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import trio

from relay.service.config import load_config
from relay.worker import egress_gate
from relay.worker.egress import Refuse, Refused, check, refusal, resolve
from relay.worker.egress_gate import EgressGate, open_egress_gate
from relay.worker.url_input import (
    OpenedSource,
    SourceError,
    UrlPull,
    egress_gate_for,
    open_source,
    probe_http,
)
from tests.livekit import free_port
from tests.media_http import MediaServer, public_here, serve_media


def refused(host: str, *, literal: bool = True) -> Any:
    """pytest.raises for the refusal of `host`, the whole message."""
    verb = "is" if literal else "resolves to"
    text = (f"URL refused: {host} {verb} a private or local address "
            "(set url_allow_private_addresses to allow)")
    return pytest.raises((SourceError, Refused), match=f"^{re.escape(text)}$")


def fake_getaddrinfo(answers: dict[str, list[str]], calls: list[str] | None = None
                     ) -> Callable[..., list[tuple[Any, ...]]]:
    """A getaddrinfo answering `answers[host]`, one address per call in turn (the last
    one repeats): a name whose answer changes is DNS rebinding. IP literals answer
    themselves. Every lookup is appended to `calls`."""
    asked: dict[str, int] = {}

    def getaddrinfo(host: str, port: int, *args: Any, type: int = socket.SOCK_STREAM,
                    **kwargs: Any) -> list[tuple[Any, ...]]:
        if calls is not None:
            calls.append(host)
        if host in answers:
            index = asked.get(host, 0)
            asked[host] = index + 1
            address = answers[host][min(index, len(answers[host]) - 1)]
        else:
            try:
                address = str(ip_address(host))
            except ValueError:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
        return [(family, type, 0, "", sockaddr)]

    return getaddrinfo


async def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Blocking work (the probe, FFmpeg) as the worker runs it: in a thread, the event
    loop free to serve the gate meanwhile. A deadlock would end in TooSlowError."""
    with trio.fail_after(60):
        return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


async def pull(url: str, *, refuse: Refuse | None = refusal,
               getaddrinfo: Callable[..., Any] | None = None,
               read: Callable[[OpenedSource], Any] | None = None) -> Any:
    """open_source() with the gate the worker gives it (served here, for the pull), then
    `read(source)` and close, in a thread. Raises what open_source raises."""
    async with egress_gate_for(url, refuse, getaddrinfo=getaddrinfo) as gate:

        def work() -> Any:
            source = open_source(url, refuse=refuse, gate=gate,
                                 getaddrinfo=getaddrinfo or socket.getaddrinfo)
            try:
                return read(source) if read is not None else None
            finally:
                source.close()

        try:
            return await in_thread(work)
        except Exception as exc:  # raised here, not as the gate's nursery's group
            error = exc
    raise error


# -- the policy ------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"),  # the cloud metadata service
    ("fe80::1", "link-local"), ("fe80::1%lo", "link-local"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("fd00::1", "private"), ("fc00::1", "private"),
    ("100.64.0.1", "shared (CGNAT)"), ("100.127.255.254", "shared (CGNAT)"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    ("224.0.0.251", "multicast"), ("239.1.1.1", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("100::1", "reserved"),
    ("192.0.2.1", "documentation"), ("2001:db8::1", "documentation"),
    # IPv6 forms of IPv4 addresses reach those addresses
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.0.0.1", "private"), ("::ffff:100.64.0.1", "shared (CGNAT)"),
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("::127.0.0.1", "reserved"),  # deprecated IPv4-compatible
])
def test_refused_addresses(address: str, kind: str) -> None:
    assert refusal(address) == kind
    assert refusal(ip_address(address)) == kind


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "192.169.0.1", "11.0.0.1",
    "2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8", "64:ff9b::808:808",
    "2002:808:808::1",
])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(address) is None


def test_one_private_address_among_public_ones_refuses_the_name() -> None:
    infos = fake_getaddrinfo({"cdn.example": ["93.184.216.34"]})("cdn.example", 443) + \
        fake_getaddrinfo({"cdn.example": ["10.0.0.7"]})("cdn.example", 443)
    with refused("cdn.example", literal=False):
        check("cdn.example", infos)
    assert check("cdn.example", infos[:1]) == infos[:1]
    with refused("10.0.0.7"):
        check("10.0.0.7", fake_getaddrinfo({})("10.0.0.7", 80))


def test_resolve_looks_up_once_and_gives_the_checked_entries() -> None:
    calls: list[str] = []
    lookup = fake_getaddrinfo({"media.example": ["203.0.114.9", "10.0.0.1"]}, calls)
    infos = resolve("media.example", 8443, getaddrinfo=lookup)
    assert calls == ["media.example"]
    assert [info[4] for info in infos] == [("203.0.114.9", 8443)]
    with refused("media.example", literal=False):  # the second answer: rebound
        resolve("media.example", 8443, getaddrinfo=lookup)


def test_the_message_echoes_nothing_of_the_target() -> None:
    with pytest.raises(Refused) as caught:
        resolve("127.0.0.1", 6379, getaddrinfo=fake_getaddrinfo({}))
    assert "6379" not in str(caught.value) and caught.value.kind == "loopback"


# -- the config key ----------------------------------------------------------------------

SECRET = "s" * 32


def test_private_addresses_are_refused_by_default_and_allowed_by_dev() -> None:
    keys = {"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": SECRET}
    assert load_config(environ=keys).url_allow_private_addresses is False
    assert load_config(environ=keys | {"INGRESS_URL_ALLOW_PRIVATE_ADDRESSES": "true"}
                       ).url_allow_private_addresses is True
    assert load_config(dev=True, environ={}).url_allow_private_addresses is True
    # --dev allows them unless the configuration says otherwise
    assert load_config(dev=True, environ={"INGRESS_URL_ALLOW_PRIVATE_ADDRESSES": "false"}
                       ).url_allow_private_addresses is False


# -- the gate, with real connections -------------------------------------------------------


@pytest.fixture
def media(tmp_path: Path) -> Iterator[MediaServer]:
    (tmp_path / "notes.bin").write_bytes(b"x" * 1000)
    with serve_media(tmp_path) as server:
        yield server


@pytest.fixture
def private(media: MediaServer) -> Iterator[MediaServer]:
    """A server on 127.0.0.2, on the same port as `media`: where a rebound name or a
    redirect would lead; it must never be asked anything."""
    with serve_media(media.root, host="127.0.0.2", port=media.server_address[1]) as server:
        yield server


async def test_the_gate_connects_to_the_address_it_checked(media: MediaServer,
                                                           private: MediaServer) -> None:
    """DNS rebinding: the name answers a public address to the check and a private one
    after it. The gate looks up once per connection and connects to what it checked."""
    calls: list[str] = []
    lookup = fake_getaddrinfo({"media.test": ["127.0.0.1", "127.0.0.2"]}, calls)
    url = f"http://media.test:{media.server_address[1]}/page.html"
    async with open_egress_gate(public_here, getaddrinfo=lookup) as gate:
        assert await in_thread(probe_http, url, gate=gate) == "text/html"
        assert calls == ["media.test"]
        with refused("media.test", literal=False):  # the next connection: rebound, refused
            await in_thread(probe_http, url, gate=gate)
    assert media.requests == ["GET /page.html"]
    assert private.requests == []


async def test_a_redirect_is_checked_before_it_is_followed(media: MediaServer,
                                                           private: MediaServer) -> None:
    media.redirects["/hop"] = f"{private.base}/notes.bin"
    async with open_egress_gate(public_here) as gate:
        with refused("127.0.0.2"):
            await in_thread(probe_http, f"{media.base}/hop", gate=gate)
    with refused("127.0.0.2"):  # the production entry point, FFmpeg never asked
        await pull(f"{media.base}/hop", refuse=public_here)
    assert media.requests == ["GET /hop", "GET /hop"]
    assert private.requests == []


async def test_a_redirect_to_a_name_on_the_private_network_is_refused(media: MediaServer
                                                                      ) -> None:
    """The redirect's host is a name the (fake) resolver puts on 10/8: refused at the
    lookup, no connection is attempted."""
    calls: list[str] = []
    lookup = fake_getaddrinfo({"intranet.test": ["10.20.30.40"]}, calls)
    media.redirects["/hop"] = "http://intranet.test/admin"
    with refused("intranet.test", literal=False):
        await pull(f"{media.base}/hop", refuse=public_here, getaddrinfo=lookup)
    assert calls == ["127.0.0.1", "intranet.test"]


async def test_redirects_are_capped(media: MediaServer) -> None:
    for hop in range(10):
        media.redirects[f"/r{hop}"] = f"/r{hop + 1}"
    async with open_egress_gate(public_here) as gate:
        with pytest.raises(SourceError, match=rf"^too many redirects from {media.base}/r0$"):
            await in_thread(probe_http, f"{media.base}/r0", gate=gate)
    assert len(media.requests) == 6  # the first request and five redirects


@pytest.fixture(scope="module")
def segments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hls")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-t", "4",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-f", "hls",
                    "-hls_time", "2", "-hls_playlist_type", "vod", str(root / "index.m3u8")],
                   check=True, timeout=120)
    return root


async def test_ffmpeg_connects_only_through_the_gate(segments: Path) -> None:
    """An HLS pull that works: the playlist and both segments reach the server, and the
    gate looked up the host for each connection FFmpeg made (and for the probe)."""
    calls: list[str] = []

    def demux(source: OpenedSource) -> int:
        return sum(1 for packet in source.container.demux() if packet.size)

    with serve_media(segments) as server:
        packets = await pull(f"{server.base}/index.m3u8", refuse=public_here,
                             getaddrinfo=fake_getaddrinfo({}, calls), read=demux)
    assert packets >= 90  # 4 s at 25 fps
    assert [r.split()[1] for r in server.requests] == [
        "/index.m3u8", "/index.m3u8", "/index0.ts", "/index1.ts"]
    assert len(calls) >= 3 and set(calls) == {"127.0.0.1"}


async def test_an_hls_segment_on_a_refused_host_fails_the_pull(segments: Path,
                                                               tmp_path: Path) -> None:
    """FFmpeg's own connections are checked: the playlist is on an allowed host, its
    segments name a refused one."""
    with serve_media(segments) as server, \
            serve_media(segments, host="127.0.0.2", port=server.server_address[1]) as other:
        playlist = (segments / "index.m3u8").read_text().replace(
            "index", f"{other.base}/index")
        (tmp_path / "index.m3u8").write_text(playlist)
        with serve_media(tmp_path) as lists, refused("127.0.0.2"):
            await pull(f"{lists.base}/index.m3u8", refuse=public_here)
    assert other.requests == []
    assert server.requests == []


async def _connect(gate: EgressGate) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", int(gate.url.rsplit(":", 1)[1]))


async def _exchange(stream: trio.SocketStream, request: bytes) -> bytes:
    """Send one request, read one bodiless-or-Content-Length response: its head (or
    what came before the end of the connection, and b"<eof>")."""
    if request:
        await stream.send_all(request)
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return data + b"<eof>"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        while length and len(body) < int(length.group(1)):
            body += await stream.receive_some(65536)
    return head


async def test_one_client_connection_may_change_origin(media: MediaServer, tmp_path: Path
                                                       ) -> None:
    """Plain http through the gate: requests go in origin form, and a request for
    another origin on a kept-alive connection is checked and connected anew."""
    with serve_media(tmp_path) as second:
        async with open_egress_gate(public_here) as gate, await _connect(gate) as stream:
            for server in (media, second, media):
                reply = await _exchange(stream, f"GET {server.base}/page.html HTTP/1.1\r\n"
                                                f"Host: {server.base[7:]}\r\n"
                                                "Proxy-Connection: keep-alive\r\n\r\n".encode())
                assert reply.startswith(b"HTTP/1.1 200 "), reply
            reply = await _exchange(stream, f"GET {media.base.replace('.1:', '.2:')}/page.html"
                                            " HTTP/1.1\r\n\r\n".encode())
            assert reply.startswith(b"HTTP/1.1 403 "), reply
            assert gate.take_error() == (
                "URL refused: 127.0.0.2 is a private or local address "
                "(set url_allow_private_addresses to allow)")
            assert gate.take_error() is None  # taken
    assert media.requests == ["GET /page.html", "GET /page.html"]
    assert second.requests == ["GET /page.html"]


async def test_a_tunnel_carries_what_came_with_its_head(media: MediaServer) -> None:
    """CONNECT: the bytes the client sent right after the head (here a whole request)
    reach the origin, its answer comes back, and its end ends the tunnel."""
    async with open_egress_gate(public_here) as gate, await _connect(gate) as stream:
        await stream.send_all(f"CONNECT {media.base[7:]} HTTP/1.1\r\n\r\n"
                              "GET /page.html HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/html" in data
    assert media.requests == ["GET /page.html"]


async def test_leaving_the_gate_ends_its_connections(media: MediaServer) -> None:
    """The gate's connections live in its nursery: leaving the `async with` block ends
    an open tunnel, and the listener is gone."""
    async with open_egress_gate(public_here) as gate:
        stream = await _connect(gate)
        reply = await _exchange(stream, f"CONNECT {media.base[7:]} HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 200 "), reply
    with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):  # a reset: an end
        assert await stream.receive_some(65536) == b""
    with pytest.raises(OSError):
        await _connect(gate)
    await stream.aclose()


async def test_a_silent_client_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    """A connection that sends no request head within HEAD_TIMEOUT is closed, unanswered."""
    async with open_egress_gate(public_here) as gate, await _connect(gate) as stream:
        await stream.send_all(b"GET http://127.0.0.1:1/ HTTP/1.1\r\n")  # not a whole head
        before = trio.current_time()
        assert await stream.receive_some(65536) == b""
        assert trio.current_time() - before >= egress_gate.HEAD_TIMEOUT


@pytest.mark.parametrize(("request_head", "status"), [
    (b"POST http://127.0.0.1:1/ HTTP/1.1\r\n\r\n", b"405"),
    (b"GET /origin-form HTTP/1.1\r\n\r\n", b"400"),
    (b"GET ftp://127.0.0.1/x HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", b"400"),
    (b"GET http://127.0.0.1:1/ HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"400"),
    (b"GET http://127.0.0.1:1/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"400"),
    (b"not http at all\r\n\r\n", b"400"),
    (b"GET http://127.0.0.1:1/", b"400"),  # then the end of the client's input
])
async def test_the_gate_answers_only_what_a_pull_sends(request_head: bytes, status: bytes
                                                       ) -> None:
    async with open_egress_gate(public_here) as gate, await _connect(gate) as stream:
        await stream.send_all(request_head)
        await stream.send_eof()
        reply = await _exchange(stream, b"")
        assert reply.startswith(b"HTTP/1.1 " + status + b" "), reply
        assert gate.take_error() is None  # the client's mistake, not the pull's


async def test_the_gate_answers_unreachable_targets(media: MediaServer) -> None:
    """502 for a closed port or an unknown name, 504 when the connect times out; the
    reason is kept for the session's error text."""
    async with open_egress_gate(public_here) as gate, await _connect(gate) as stream:
        port = free_port()
        reply = await _exchange(stream, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 502 "), reply
        assert gate.take_error() == f"cannot reach 127.0.0.1:{port}: connection refused"
    async with open_egress_gate(public_here, connect_timeout=0) as gate, \
            await _connect(gate) as stream:  # no time at all to connect
        reply = await _exchange(stream, f"GET {media.base}/x HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 504 "), reply
        assert gate.take_error() == "no answer from 127.0.0.1 in 0 s"
    assert media.requests == []
    async with open_egress_gate(public_here, getaddrinfo=fake_getaddrinfo({})
                                ) as gate, await _connect(gate) as stream:
        reply = await _exchange(stream, b"GET http://nowhere.test/x HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 502 "), reply
        assert gate.take_error() == "cannot resolve host nowhere.test"


async def test_ipv6_literals_reach_the_policy() -> None:
    """The gate reads IPv6 targets in both forms clients send (https: CONNECT, which
    Python 3.11 writes without brackets; http: an absolute URL)."""
    for scheme in ("http", "https"):
        for host in ("::1", "::ffff:10.0.0.1", "fd12::3"):
            with refused(host):
                await pull(f"{scheme}://[{host}]:{free_port()}/a.mp4")


async def test_a_worker_pull_opens_through_its_gate(media: MediaServer, tmp_path: Path
                                                    ) -> None:
    """UrlPull, the worker's entry point, on the event loop: `async with` serves the
    gate, open() runs the probe and FFmpeg in a thread (were the loop to wait for them
    instead, nothing would serve the gate: a deadlock, here a timeout)."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "1",
                    "-c:a", "libmp3lame", str(media.root / "tone.mp3")], check=True, timeout=60)
    url = f"{media.base}/tone.mp3"
    pull = UrlPull(None, url)  # type: ignore[arg-type]  # no room: open() only
    pull.refuse = public_here
    async with pull:
        assert pull.gate is not None
        with trio.fail_after(30):
            await pull.open()
        assert pull.source is not None and pull.source.audio is not None
        pull.source.close()
    assert media.requests[0] == "GET /tone.mp3" and len(media.requests) >= 2
    asked = list(media.requests)
    refusing = UrlPull(None, url)  # type: ignore[arg-type]  # the default policy
    with pytest.RaisesGroup(pytest.RaisesExc(SourceError, match="^URL refused: 127.0.0.1 is ")):
        async with refusing:
            await refusing.open()
    assert media.requests == asked


def test_a_pull_under_the_policy_needs_its_gate() -> None:
    """open_source() without the gate an http(s) URL needs refuses to run: no pull goes
    around the policy."""
    with pytest.raises(ValueError, match="needs its egress gate"):
        open_source("http://127.0.0.1:1/a.mp4", refuse=public_here)


def test_srt_to_a_refused_address_sends_nothing() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        with refused("127.0.0.1"):
            open_source(f"srt://127.0.0.1:{port}?connect_timeout=300")
        with refused("srt.test", literal=False):
            open_source(f"srt://srt.test:{port}?connect_timeout=300",
                        getaddrinfo=fake_getaddrinfo({"srt.test": ["127.0.0.1"]}))
        with pytest.raises(TimeoutError):
            listener.recv(2048)


async def test_a_pull_refuses_local_targets_by_default(media: MediaServer) -> None:
    """The worker's default policy: the test server on 127.0.0.1 is refused, and is never
    asked; an open port and a closed one get the same text."""
    with refused("127.0.0.1"):
        await pull(f"{media.base}/notes.bin")
    with refused("127.0.0.1"):
        await pull(f"http://127.0.0.1:{free_port()}/notes.bin")
    with refused("169.254.169.254"):
        await pull("http://169.254.169.254/latest/meta-data/")
    with refused("localhost", literal=False):
        await pull(f"https://localhost:{media.server_address[1]}/notes.bin")
    assert media.requests == []

"""A media HTTP server for URL-pull tests, on 127.0.0.1: files with byte ranges, and faults.

Routes:
  /<name>            a file of the served directory (Range: bytes=a-b honoured, HEAD too),
                     with the Content-Type of its suffix
  /status/<code>     that status, a short text body
  /stall/<name>      the headers and the first 64 KiB of the file, then nothing (the
                     connection is held open until the server stops)
  /page.html         an HTML page (not media)
  any key of `redirects`   302 to its value

`requests` records what reached the server (the egress tests check that a refused
target saw nothing).
"""

from __future__ import annotations

import contextlib
import re
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from relay.worker.egress import refusal

TYPES = {".mp4": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
         ".webm": "video/webm", ".ogg": "audio/ogg", ".mp3": "audio/mpeg", ".m4a": "audio/mp4",
         ".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t", ".html": "text/html"}
STALL_PREFIX = 64 * 1024


def public_here(address: IPv4Address | IPv6Address) -> str | None:
    """The egress policy of in-process pull tests: 127.0.0.1, where their servers
    listen, stands for a public address; every other address is judged as in
    production (127.0.0.2, a second loopback address to listen on, is refused)."""
    if address == IPv4Address("127.0.0.1"):
        return None
    return refusal(address)


class MediaServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.root = root
        self.stop = threading.Event()
        self.requests: list[str] = []
        self.redirects: dict[str, str] = {}  # path -> Location of a 302
        self.hold_segments_until = 0.0  # time.monotonic(): .ts requests wait until then

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a puller hanging up
            super().handle_error(request, client_address)

    @property
    def base(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: MediaServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        ranges = self.headers.get("Range", "")
        self.server.requests.append(f"{self.command} {path} {ranges}".strip())
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            self._reply(code, b"no media here\n", "text/plain", body)
            return
        if path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/page.html":
            self._reply(200, b"<html><body>not media</body></html>\n", "text/html", body)
            return
        if path.endswith(".ts"):  # a stalled CDN, as a benchmark asks for it
            while time.monotonic() < self.server.hold_segments_until:
                time.sleep(0.05)
        stall = path.startswith("/stall/")
        name = path.removeprefix("/stall/" if stall else "/")
        file = (self.server.root / name).resolve()
        if self.server.root.resolve() not in file.parents or not file.is_file():
            self._reply(404, b"not found\n", "text/plain", body)
            return
        data = file.read_bytes()
        ctype = TYPES.get(file.suffix, "application/octet-stream")
        if stall:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:STALL_PREFIX])
            self.wfile.flush()
            self.server.stop.wait()
            return
        start, end = 0, len(data) - 1
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "") or "")
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)) if match.group(2) else end, end)
            else:
                start = max(0, len(data) - int(match.group(2)))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            # the puller may close early (a probe, a seek)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data[start:end + 1])

    def _reply(self, code: int, payload: bytes, ctype: str, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)


@contextmanager
def serve_media(root: Path, certificate: tuple[str, str] | None = None, *,
                host: str = "127.0.0.1", port: int = 0) -> Iterator[MediaServer]:
    """Serve `root` on a free port of 127.0.0.1 (or `host`, `port`); with `certificate`
    (PEM cert and key files) over TLS."""
    server = MediaServer(root, host, port)
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()

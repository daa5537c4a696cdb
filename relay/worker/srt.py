"""SRT caller over libsrt through ctypes, feeding MPEG-TS to PyAV.

Why ctypes over libsrt: the FFmpeg bundled in PyAV's wheels is built without
libsrt, so `av.open("srt://...")` fails with "Protocol not found". Debian's
libsrt (`libsrt1.5-gnutls`) comes in anyway as a dependency of the `ffmpeg`
package the README's setup installs, and a ctypes binding needs neither a
compiler nor a new Python package. Only the caller side is bound: the service
pulls `srt://host:port?...` URLs from an SRT listener (an encoder, a gateway).

Flow: `parse_srt_url()` -> `SrtCaller.connect()` -> `SrtReader` (a raw file
object) -> `av.open(reader, format="mpegts")`. Each SRT live-mode message is one
UDP payload of up to 1456 bytes (normally 7 TS packets, 1316 bytes).

Error contract: every failure (bad URL, libsrt missing, connection timed out
or rejected, wrong passphrase, stalled source) raises `SrtError`, whose message
names the peer and carries libsrt's own text where there is one
(`srt_getlasterror_str`, or `srt_strerror` + `srt_rejectreason_str` for a
connection attempt), e.g. "SRT connection to 127.0.0.1:9000 failed: Connection
setup failure: connection rejected (Incorrect passphrase)". A peer that closes
or breaks the connection is not an error: it is end of stream
(`SrtCaller.recv()` returns b"", `SrtReader` reads 0 bytes), after the packets
libsrt still holds back for the latency have been read.

Threading contract: the blocking calls (`SrtCaller.connect()`, `recv()`,
`SrtReader.read()`) wait inside libsrt with the GIL released (ctypes does), so
callers run them in a worker thread, never on the event loop. One thread
connects and reads; any other thread may call `SrtCaller.close()`,
`SrtReader.cancel()` or `SrtReader.close()`, which make a pending connect fail
("cancelled") and a blocked read return EOF within POLL_INTERVAL (0.2 s).

Why the socket stays non-blocking (SRTO_RCVSYN off) and waits in
srt_epoll_uwait for POLL_INTERVAL at a time, instead of a blocking
srt_recvmsg woken by SRTO_RCVTIMEO: in libsrt 1.5.1 (and still upstream), a
blocking srt_recvmsg that is waiting when the peer closes takes one message
out of the receive buffer and then fails with "Connection was broken",
losing that message; and a blocking srt_connect holds a lock that srt_close
also takes, so close() from another thread would hang until the connect
timed out. The non-blocking calls have neither problem.

Process-wide: `srt_startup()` runs once, on first use, and lowers libsrt's
stderr logging to errors; `srt_cleanup()` is never called (its threads are
cheap and it would race sockets still open at exit). Linux only (the sockaddr
layouts have no BSD sin_len). Tested with Debian's libsrt 1.5.1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = [
    "POLL_INTERVAL",
    "SrtCaller",
    "SrtError",
    "SrtReader",
    "SrtUrl",
    "libsrt_version",
    "parse_srt_url",
]

# --- libsrt constants (srtcore/srt.h, SRT 1.5; unchanged since 1.4) ---------
# SRT_SOCKOPT
SRTO_RCVSYN = 2  # bool: blocking receive and connect (kept off: see above)
SRTO_RCVDATA = 20  # int (read only): packets in the receive buffer
SRTO_LATENCY = 23  # int ms: sets RCVLATENCY and PEERLATENCY
SRTO_PASSPHRASE = 26  # string, 10..79 bytes (write only)
SRTO_PBKEYLEN = 27  # int: 0 (default, 16), 16, 24, 32
SRTO_CONNTIMEO = 36  # int ms: caller connect timeout (write only)
SRTO_RCVLATENCY = 43  # int ms: our TSBPD receive delay
SRTO_PEERLATENCY = 44  # int ms: minimum delay asked of the peer
SRTO_STREAMID = 46  # string, up to 512 bytes
SRTO_TRANSTYPE = 50  # SRT_TRANSTYPE (write only)
SRTT_LIVE = 0

# SRT_SOCKSTATUS (srt_getsockstate)
SRTS_INIT = 1
SRTS_OPENED = 2
SRTS_LISTENING = 3
SRTS_CONNECTING = 4
SRTS_CONNECTED = 5
SRTS_BROKEN = 6
SRTS_CLOSING = 7
SRTS_CLOSED = 8
SRTS_NONEXIST = 9
_GONE_STATES = frozenset({SRTS_BROKEN, SRTS_CLOSING, SRTS_CLOSED, SRTS_NONEXIST})

# SRT_ERRNO (1000 * major + minor)
SRT_ERROR = -1
SRT_ECONNREJ = 1002
SRT_ECONNLOST = 2001
SRT_ENOCONN = 2002
SRT_EINVSOCK = 5004
SRT_ENOSERVER = 1001  # its text is the connect-timeout message
SRT_EASYNCRCV = 6002
SRT_ETIMEOUT = 6003
_NO_DATA_YET = frozenset({SRT_EASYNCRCV, SRT_ETIMEOUT})
_PEER_GONE = frozenset({SRT_ECONNLOST, SRT_ENOCONN, SRT_EINVSOCK})

# SRT_REJECT_REASON (srt_getrejectreason)
SRT_REJ_TIMEOUT = 16
SRT_REJC_PREDEFINED = 1000  # reject reasons >= this are the peer's own codes

# SRT_EPOLL_OPT
SRT_EPOLL_IN = 0x1  # a message is ready (or the connection broke)
SRT_EPOLL_OUT = 0x4  # connected
SRT_EPOLL_ERR = 0x8  # connection failed (then libsrt 1.5.1 reports SRTS_BROKEN)

LOG_ERR = 3  # srt_setloglevel takes syslog levels

MIN_VERSION = 0x010400  # srt_create_socket(), srt_rejectreason_str(), these numbers
MAX_MESSAGE = 1500  # recv buffer: above SRT_LIVE_MAX_PLSIZE (1456)
MAX_STREAMID = 512
POLL_INTERVAL = 0.2  # longest epoll wait: how often a blocked call looks at the cancel flag

_LIBRARY_NAMES = (
    "libsrt-gnutls.so.1.5",
    "libsrt-openssl.so.1.5",
    "libsrt.so.1.5",
    "libsrt-gnutls.so.1.4",
    "libsrt-openssl.so.1.4",
    "libsrt.so.1.4",
)


class SrtError(Exception):
    """The one error of this module; the message is meant for the user."""


# --- URL ---------------------------------------------------------------------


@dataclass(frozen=True)
class SrtUrl:
    """What an `srt://` URL asks of a caller; times in milliseconds (libsrt's unit)."""

    host: str
    port: int
    streamid: str | None = None
    passphrase: str | None = field(default=None, repr=False)  # a secret: kept out of logs
    pbkeylen: int | None = None
    latency_ms: int | None = None
    rcvlatency_ms: int | None = None
    connect_timeout_ms: int | None = None

    @property
    def address(self) -> str:
        """host:port for messages ([v6]:port for IPv6 literals)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _shown(text: str, limit: int = 120) -> str:
    """User text quoted for an error message: control characters escaped (the message
    becomes the ingress' error text, one printable line), long text cut."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _int_option(key: str, value: str, low: int = 0) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise SrtError(f"bad SRT URL option {key}={_shown(value)}: not an integer") from None
    if number < low:
        raise SrtError(f"bad SRT URL option {key}={_shown(value)}: must be >= {low}")
    return number


def parse_srt_url(url: str) -> SrtUrl:
    """Parse an `srt://host:port?opt=val&...` caller URL the way FFmpeg reads it.

    FFmpeg's units are kept so a URL that works with `ffmpeg -i` works here:
    `latency` and `rcvlatency` are in MICROseconds (converted to ms, e.g.
    latency=200000 is 200 ms); `connect_timeout` is in milliseconds.
    `tsbpddelay` is FFmpeg's old alias of `latency`. Like FFmpeg, everything
    after the first "?" is the query (a `#` in `streamid=#!::r=live` is not a
    fragment) and the first occurrence of an option wins; values are
    %-decoded ("+" stays "+"). Unknown options are ignored, as FFmpeg does.
    """
    base, _, query = url.partition("?")
    try:
        parts = urlsplit(base)
        port = parts.port
    except ValueError as exc:
        raise SrtError(f"bad SRT URL {_shown(base)}: {_shown(str(exc))}") from None
    if parts.scheme.lower() != "srt":
        raise SrtError(f"not an SRT URL (srt://host:port expected): {_shown(base)}")
    if not parts.hostname:
        raise SrtError(f"SRT URL has no host (srt://host:port expected): {_shown(base)}")
    if port is None or port == 0:
        raise SrtError(f"SRT URL has no port (srt://host:port expected): {_shown(base)}")

    opts: dict[str, str] = {}
    for item in query.split("&"):
        if item:
            key, _, value = item.partition("=")
            opts.setdefault(unquote(key), unquote(value))

    mode = opts.get("mode", "caller")
    if mode != "caller":
        raise SrtError(
            f"only caller mode is supported (mode={_shown(mode)}): the service connects to "
            "an SRT listener; set the sender up as the listener and drop mode= from the URL")
    transtype = opts.get("transtype", "live")
    if transtype != "live":
        raise SrtError(f"only transtype=live is supported (transtype={_shown(transtype)})")

    streamid = opts.get("streamid")
    if streamid is not None and len(streamid.encode()) > MAX_STREAMID:
        raise SrtError(f"SRT streamid is too long: at most {MAX_STREAMID} bytes")
    passphrase = opts.get("passphrase") or None
    if passphrase is not None and not 10 <= len(passphrase.encode()) <= 79:
        raise SrtError("SRT passphrase must be 10 to 79 characters long")
    pbkeylen = None
    if "pbkeylen" in opts:
        pbkeylen = _int_option("pbkeylen", opts["pbkeylen"])
        if pbkeylen not in (0, 16, 24, 32):
            raise SrtError(f"bad SRT URL option pbkeylen={pbkeylen}: must be 16, 24 or 32")

    def micro_to_ms(*keys: str) -> int | None:
        for key in keys:
            if key in opts:
                return _int_option(key, opts[key]) // 1000
        return None

    connect_timeout = opts.get("connect_timeout")
    return SrtUrl(
        host=parts.hostname,
        port=port,
        streamid=streamid,
        passphrase=passphrase,
        pbkeylen=pbkeylen,
        latency_ms=micro_to_ms("latency", "tsbpddelay"),
        rcvlatency_ms=micro_to_ms("rcvlatency"),
        connect_timeout_ms=(None if connect_timeout is None
                            else _int_option("connect_timeout", connect_timeout, low=1)),
    )


# --- libsrt ------------------------------------------------------------------


class _SockaddrIn(ctypes.Structure):
    """struct sockaddr_in (Linux): 16 bytes, port and address in network order."""

    _fields_ = [
        ("sin_family", ctypes.c_uint16),
        ("sin_port", ctypes.c_uint16),
        ("sin_addr", ctypes.c_uint8 * 4),
        ("sin_zero", ctypes.c_uint8 * 8),
    ]


class _SockaddrIn6(ctypes.Structure):
    """struct sockaddr_in6 (Linux): 28 bytes."""

    _fields_ = [
        ("sin6_family", ctypes.c_uint16),
        ("sin6_port", ctypes.c_uint16),
        ("sin6_flowinfo", ctypes.c_uint32),
        ("sin6_addr", ctypes.c_uint8 * 16),
        ("sin6_scope_id", ctypes.c_uint32),
    ]


def _sockaddr(family: int, sockaddr: tuple) -> _SockaddrIn | _SockaddrIn6:
    """A C sockaddr from one of getaddrinfo's Python address tuples."""
    host = sockaddr[0].split("%", 1)[0]
    packed = socket.inet_pton(family, host)
    if family == socket.AF_INET:
        return _SockaddrIn(socket.AF_INET, socket.htons(sockaddr[1]),
                           (ctypes.c_uint8 * 4).from_buffer_copy(packed))
    _, port, flowinfo, scope_id = sockaddr
    return _SockaddrIn6(socket.AF_INET6, socket.htons(port), socket.htonl(flowinfo),
                        (ctypes.c_uint8 * 16).from_buffer_copy(packed), scope_id)


class _EpollEvent(ctypes.Structure):
    """SRT_EPOLL_EVENT: what srt_epoll_uwait reports per socket."""

    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_int)]


_lib_lock = threading.Lock()
_lib_handle: ctypes.CDLL | None = None


def _declare(lib: ctypes.CDLL) -> None:
    """Prototypes, so ctypes converts arguments and results right (no int guessing)."""
    c_int, c_void_p = ctypes.c_int, ctypes.c_void_p
    protos: dict[str, tuple[list, type | None]] = {
        "srt_startup": ([], c_int),
        "srt_getversion": ([], ctypes.c_uint32),
        "srt_create_socket": ([], c_int),
        "srt_setsockflag": ([c_int, c_int, c_void_p, c_int], c_int),
        "srt_getsockflag": ([c_int, c_int, c_void_p, ctypes.POINTER(c_int)], c_int),
        "srt_connect": ([c_int, c_void_p, c_int], c_int),
        "srt_recvmsg": ([c_int, c_void_p, c_int], c_int),
        "srt_close": ([c_int], c_int),
        "srt_getsockstate": ([c_int], c_int),
        "srt_getlasterror": ([ctypes.POINTER(c_int)], c_int),
        "srt_getlasterror_str": ([], ctypes.c_char_p),
        "srt_clearlasterror": ([], None),
        "srt_strerror": ([c_int, c_int], ctypes.c_char_p),
        "srt_getrejectreason": ([c_int], c_int),
        "srt_epoll_create": ([], c_int),
        "srt_epoll_add_usock": ([c_int, c_int, ctypes.POINTER(c_int)], c_int),
        "srt_epoll_uwait": ([c_int, ctypes.POINTER(_EpollEvent), c_int, ctypes.c_int64], c_int),
        "srt_epoll_release": ([c_int], c_int),
        "srt_rejectreason_str": ([c_int], ctypes.c_char_p),
        "srt_setloglevel": ([c_int], None),
    }
    for name, (argtypes, restype) in protos.items():
        func = getattr(lib, name)
        func.argtypes = argtypes
        func.restype = restype


def _load() -> ctypes.CDLL:
    names = list(_LIBRARY_NAMES)
    for short in ("srt-gnutls", "srt-openssl", "srt"):
        found = ctypes.util.find_library(short)
        if found:
            names.append(found)
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise SrtError("libsrt not found: SRT pulls need libsrt 1.4+ "
                   "(Debian: apt install libsrt1.5-gnutls, which ffmpeg brings in)")


def _lib() -> ctypes.CDLL:
    """libsrt, loaded, checked and started (srt_startup) once per process."""
    global _lib_handle
    with _lib_lock:
        if _lib_handle is None:
            lib = _load()
            try:
                _declare(lib)
            except AttributeError as exc:
                raise SrtError(f"libsrt is too old or incomplete: {exc}") from None
            version = lib.srt_getversion()
            if version < MIN_VERSION:
                raise SrtError(f"libsrt {_version_str(version)} is too old: 1.4.0+ needed")
            # libsrt logs straight to stderr; its warnings are noise for a caller whose
            # failures come back as SrtError. Errors stay visible.
            lib.srt_setloglevel(LOG_ERR)
            if lib.srt_startup() < 0:
                raise SrtError(f"libsrt failed to start: {_last_error_text(lib)}")
            _lib_handle = lib
        return _lib_handle


def _version_str(version: int) -> str:
    return f"{version >> 16}.{(version >> 8) & 0xFF}.{version & 0xFF}"


def libsrt_version() -> str:
    """The loaded libsrt's version, e.g. "1.5.1" (raises SrtError if there is none)."""
    return _version_str(_lib().srt_getversion())


def _epoll(lib: ctypes.CDLL, sock: int, events: int) -> int:
    """A new libsrt epoll watching `sock` for `events`."""
    eid = lib.srt_epoll_create()
    if eid < 0:
        raise SrtError(f"cannot create an SRT epoll: {_last_error_text(lib)}")
    flags = ctypes.c_int(events)
    if lib.srt_epoll_add_usock(eid, sock, ctypes.byref(flags)) < 0:
        text = _last_error_text(lib)
        lib.srt_epoll_release(eid)
        raise SrtError(f"cannot watch the SRT socket: {text}")
    return eid


def _get_int(lib: ctypes.CDLL, sock: int, opt: int) -> int | None:
    """An int (or bool) socket option, None if libsrt refuses (e.g. socket gone)."""
    val = ctypes.c_int(0)  # bool options write 1 byte: the rest stays 0
    size = ctypes.c_int(ctypes.sizeof(val))
    if lib.srt_getsockflag(sock, opt, ctypes.byref(val), ctypes.byref(size)) < 0:
        return None
    return val.value


def _reject_text(lib: ctypes.CDLL, reason: int) -> str:
    """libsrt's words for a failed connection, from srt_getrejectreason's code."""
    if reason == SRT_REJ_TIMEOUT:
        return lib.srt_strerror(SRT_ENOSERVER, 0).decode(errors="replace")
    text = lib.srt_strerror(SRT_ECONNREJ, 0).decode(errors="replace")
    if reason >= SRT_REJC_PREDEFINED:
        return f"{text} (by the listener, code {reason})"
    detail = lib.srt_rejectreason_str(reason)
    return f"{text} ({detail.decode(errors='replace')})" if detail else text


def _last_error_text(lib: ctypes.CDLL) -> str:
    text = lib.srt_getlasterror_str()
    return text.decode(errors="replace") if text else "unknown error"


# --- caller ------------------------------------------------------------------


class SrtCaller:
    """One SRT caller-mode socket in live mode: connect, then receive messages.

    Not reentrant: one thread connects and receives; `close()` may come from any
    thread, at any time, any number of times.
    """

    def __init__(self) -> None:
        self._sock = -1
        self._eid = -1  # epoll watching the connected socket for IN | ERR
        self._closed = False
        self._lock = threading.Lock()
        self._buf = ctypes.create_string_buffer(MAX_MESSAGE)
        self._latency_s = 0.12  # the negotiated SRTO_RCVLATENCY, read once connected
        self._drain_deadline: float | None = None
        self.url: SrtUrl | None = None

    def __enter__(self) -> SrtCaller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def connect(self, url: SrtUrl, timeout: float = 3.0,
                getaddrinfo: Callable[..., list] = socket.getaddrinfo) -> None:
        """Connect to the listener at `url` (blocking; run it in a thread).

        The connect timeout is the URL's `connect_timeout` (ms) if it has one,
        else `timeout` seconds, per address `getaddrinfo` gives (tried in turn like
        FFmpeg; the worker passes egress.resolve: checked addresses only). Raises
        SrtError with libsrt's reason: timed out, rejected (wrong passphrase...), cancelled.

        srt_connect runs non-blocking and the wait is an epoll loop that looks
        at the cancel flag every POLL_INTERVAL (see the module docstring).
        """
        lib = _lib()
        with self._lock:
            if self._closed:
                raise SrtError(f"SRT connection to {url.address} cancelled: caller closed")
            if self._sock >= 0:
                raise SrtError("SRT caller is already connected")
        conn_ms = url.connect_timeout_ms or max(1, round(timeout * 1000))
        try:
            infos = getaddrinfo(url.host, url.port, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise SrtError(f"SRT connection to {url.address} failed: cannot resolve "
                           f"{url.host}: {exc}") from None
        reason = "no IPv4 or IPv6 address"
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            sock = lib.srt_create_socket()
            if sock < 0:
                raise SrtError(f"cannot create an SRT socket: {_last_error_text(lib)}")
            with self._lock:
                if self._closed:
                    lib.srt_close(sock)
                    raise SrtError(f"SRT connection to {url.address} cancelled")
                self._sock = sock
            try:
                self._configure(lib, sock, url, conn_ms)
                failure = self._connect_one(lib, sock, _sockaddr(family, sockaddr))
                if failure is None:
                    self._latency_s = (_get_int(lib, sock, SRTO_RCVLATENCY) or 0) / 1000
                    eid = _epoll(lib, sock, SRT_EPOLL_IN | SRT_EPOLL_ERR)
                    with self._lock:
                        if not self._closed:
                            self._eid = eid
                            self.url = url
                            return
                    lib.srt_epoll_release(eid)
                    failure = "cancelled"
            except BaseException:
                self._drop(sock)
                raise
            self._drop(sock)
            if self._closed:
                raise SrtError(f"SRT connection to {url.address} cancelled")
            reason = failure
        raise SrtError(f"SRT connection to {url.address} failed: {reason}")

    def _connect_one(self, lib: ctypes.CDLL, sock: int,
                     addr: _SockaddrIn | _SockaddrIn6) -> str | None:
        """Non-blocking srt_connect, then wait: None once connected, else libsrt's reason."""
        eid = _epoll(lib, sock, SRT_EPOLL_OUT | SRT_EPOLL_ERR)
        try:
            if lib.srt_connect(sock, ctypes.byref(addr), ctypes.sizeof(addr)) == SRT_ERROR:
                return _last_error_text(lib)  # early failure: bad socket or address
            ready = _EpollEvent()
            poll_ms = round(POLL_INTERVAL * 1000)
            while not self._closed:
                n = lib.srt_epoll_uwait(eid, ctypes.byref(ready), 1, poll_ms)
                if n > 0 or lib.srt_getsockstate(sock) != SRTS_CONNECTING:
                    break
                if n < 0 and not self._closed:
                    return _last_error_text(lib)
            if self._closed:
                return "cancelled"
            if lib.srt_getsockstate(sock) == SRTS_CONNECTED and not ready.events & SRT_EPOLL_ERR:
                return None
            return _reject_text(lib, lib.srt_getrejectreason(sock))
        finally:
            lib.srt_epoll_release(eid)

    def _drop(self, sock: int) -> None:
        with self._lock:
            if self._sock == sock:
                self._sock = -1
                _lib().srt_close(sock)

    def _configure(self, lib: ctypes.CDLL, sock: int, url: SrtUrl, conn_ms: int) -> None:
        # TRANSTYPE first: it resets the options it covers (latency among them).
        self._set_int(lib, sock, SRTO_TRANSTYPE, SRTT_LIVE, "SRTO_TRANSTYPE")
        if url.streamid is not None:
            self._set_bytes(lib, sock, SRTO_STREAMID, url.streamid.encode(), "SRTO_STREAMID")
        if url.passphrase is not None:
            self._set_bytes(lib, sock, SRTO_PASSPHRASE, url.passphrase.encode(),
                            "SRTO_PASSPHRASE")
        if url.pbkeylen is not None:
            self._set_int(lib, sock, SRTO_PBKEYLEN, url.pbkeylen, "SRTO_PBKEYLEN")
        if url.latency_ms is not None:
            self._set_int(lib, sock, SRTO_LATENCY, url.latency_ms, "SRTO_LATENCY")
        if url.rcvlatency_ms is not None:
            self._set_int(lib, sock, SRTO_RCVLATENCY, url.rcvlatency_ms, "SRTO_RCVLATENCY")
        self._set_int(lib, sock, SRTO_CONNTIMEO, conn_ms, "SRTO_CONNTIMEO")
        # Non-blocking connect and receive, waited on with epoll (see the module docstring).
        self._set_int(lib, sock, SRTO_RCVSYN, 0, "SRTO_RCVSYN")

    @staticmethod
    def _set_int(lib: ctypes.CDLL, sock: int, opt: int, value: int, name: str) -> None:
        val = ctypes.c_int(value)
        if lib.srt_setsockflag(sock, opt, ctypes.byref(val), ctypes.sizeof(val)) == SRT_ERROR:
            raise SrtError(f"cannot set SRT option {name}={value}: {_last_error_text(lib)}")

    @staticmethod
    def _set_bytes(lib: ctypes.CDLL, sock: int, opt: int, value: bytes, name: str) -> None:
        buf = ctypes.create_string_buffer(value, len(value))
        if lib.srt_setsockflag(sock, opt, buf, len(value)) == SRT_ERROR:
            raise SrtError(f"cannot set SRT option {name}: {_last_error_text(lib)}")

    def get_option_int(self, opt: int) -> int:
        """An int (or bool) socket option via srt_getsockflag: diagnostics and tests."""
        lib = _lib()
        value = _get_int(lib, self._sock, opt)
        if value is None:
            raise SrtError(f"cannot read SRT option {opt}: {_last_error_text(lib)}")
        return value

    def get_option_str(self, opt: int) -> str:
        """A string socket option (e.g. SRTO_STREAMID) via srt_getsockflag."""
        lib = _lib()
        buf = ctypes.create_string_buffer(MAX_STREAMID + 1)
        size = ctypes.c_int(len(buf))
        if lib.srt_getsockflag(self._sock, opt, buf, ctypes.byref(size)) < 0:
            raise SrtError(f"cannot read SRT option {opt}: {_last_error_text(lib)}")
        return buf.raw[: size.value].decode(errors="replace")

    def state(self) -> int:
        """srt_getsockstate(): SRTS_CONNECTED, SRTS_BROKEN... (SRTS_NONEXIST once closed)."""
        return _lib().srt_getsockstate(self._sock) if self._sock >= 0 else SRTS_NONEXIST

    def recv(self, timeout: float) -> bytes | None:
        """The next SRT message (one datagram's payload, <= 1456 bytes).

        Returns b"" at end of stream: the peer closed or the connection broke
        (libsrt declares a silent peer broken after SRTO_PEERIDLETIMEO, 5 s),
        once the packets still held back by the latency are read (see
        `_drain`), or at once after `close()`. Returns None if nothing arrived
        within `timeout` seconds. Raises SrtError only for unexpected libsrt
        failures. Waits in srt_epoll_uwait, at most POLL_INTERVAL at a time.
        """
        lib = _lib()
        deadline = time.monotonic() + timeout
        buf = self._buf
        ready = _EpollEvent()
        while True:
            sock = self._sock
            if sock < 0 or self._closed:
                return b""
            n = lib.srt_recvmsg(sock, buf, MAX_MESSAGE)
            if n > 0:
                return buf.raw[:n]
            code = lib.srt_getlasterror(None) if n == SRT_ERROR else 0
            if self._closed:
                return b""
            if code in _PEER_GONE or lib.srt_getsockstate(sock) in _GONE_STATES:
                return self._drain(lib, sock)
            if n == SRT_ERROR and code not in _NO_DATA_YET:
                where = self.url.address if self.url else "?"
                raise SrtError(f"SRT receive from {where} failed: {_last_error_text(lib)}")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            wait_ms = max(1, min(round(left * 1000), round(POLL_INTERVAL * 1000)))
            if lib.srt_epoll_uwait(self._eid, ctypes.byref(ready), 1, wait_ms) < 0:
                time.sleep(0.01)  # closed under us: the next turn sees it, without spinning

    def _drain(self, lib: ctypes.CDLL, sock: int) -> bytes:
        """The stream's tail after the peer closed, then b"".

        libsrt keeps a broken socket's received packets readable, but only once
        their TSBPD time has come (up to the latency after arrival); until then
        srt_recvmsg fails with "Connection was broken". Returning EOF at the
        first such failure would drop the last `latency` ms of every stream, so
        wait for them while SRTO_RCVDATA says packets are left, for at most the
        latency plus half a second (a lost packet may never become readable).
        """
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self._latency_s + 0.5
        buf = self._buf
        while True:
            n = lib.srt_recvmsg(sock, buf, MAX_MESSAGE)
            if n > 0:
                return buf.raw[:n]
            if self._closed or time.monotonic() >= self._drain_deadline:
                return b""
            if not _get_int(lib, sock, SRTO_RCVDATA):  # 0, or None: socket gone
                return b""
            time.sleep(0.01)

    def close(self) -> None:
        """Close the socket (idempotent, any thread): a blocked recv() returns b""."""
        with self._lock:
            self._closed = True
            sock, self._sock = self._sock, -1
            eid, self._eid = self._eid, -1
        if sock >= 0:
            _lib().srt_close(sock)
        if eid >= 0:
            # Safe while recv() waits on it: libsrt looks epolls up by id, and the
            # wait then fails (EINVPOLLID), which recv() takes as "look again".
            _lib().srt_epoll_release(eid)


# --- file object for PyAV ----------------------------------------------------


class SrtReader(io.RawIOBase):
    """A readable raw file over an SrtCaller, for `av.open(reader, format="mpegts")`.

    Each read returns (part of) the next SRT message. End of file when the peer
    closes or after `cancel()`/`close()`; SrtError when the source stays silent
    for `stall_timeout` seconds (a peer that keeps the connection up but sends
    nothing, which a live pull must not wait on forever). The reader owns the
    caller: closing one closes the other.
    """

    def __init__(self, caller: SrtCaller, stall_timeout: float = 30.0) -> None:
        super().__init__()
        self._caller = caller
        self._stall_timeout = stall_timeout
        self._pending = memoryview(b"")
        self._cancelled = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        """Copy the next message's bytes into `b`; 0 at end of stream."""
        if not self._pending:
            if self._cancelled:
                return 0
            data = self._caller.recv(self._stall_timeout)
            if data is None:
                if self._cancelled:
                    return 0
                raise SrtError(f"no data from the SRT source for {self._stall_timeout:g} s")
            if not data:
                return 0
            self._pending = memoryview(data)
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def cancel(self) -> None:
        """From any thread: a blocked read returns EOF within POLL_INTERVAL."""
        self._cancelled = True
        self._caller.close()

    def close(self) -> None:
        """Idempotent; safe from another thread while a read is blocked."""
        self.cancel()
        super().close()

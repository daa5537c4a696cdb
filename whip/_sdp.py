"""WHIP offer inspection: is this SDP offer (RFC 8866) one we can take, and what does it send?

The HTTP side calls :func:`inspect_offer` before it starts a session worker, so a
publisher gets a precise 400/406 from the POST instead of a session that fails later
inside the WebRTC stack. Only the lines that decide acceptance are interpreted; anything
else (extmap, msid, candidates, ...) is carried untouched in :attr:`OfferSummary.sdp`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_BODY_BYTES",
    "MediaSection",
    "OfferSummary",
    "WhipOfferError",
    "inspect_offer",
    "simulcast_answer",
]

MAX_BODY_BYTES = 64 * 1024  # the HTTP side caps bodies at the same size

DUPLICATE_KIND = "more than 1 track with given media kind"  # LiveKit's text
SIMULCAST_TRANSCODING = "simulcast is not supported when transcoding"  # LiveKit's text
SIMULCAST_SSRC_GROUP = "simulcast by SSRC group (a=ssrc-group:SIM) is not supported: use rids"
SIMULCAST_NO_RID_EXTENSION = ("simulcast needs the rtp-stream-id header extension "
                              "(a=extmap ... urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id)")
MAX_SIMULCAST_LAYERS = 3  # LiveKit's LOW, MEDIUM, HIGH
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
_RID = re.compile(r"[A-Za-z0-9_-]{1,16}")  # RFC 8851 rid-id, bounded

_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_SENDING = ("sendrecv", "sendonly")
_VIDEO_CODECS = {"h264": "H264", "vp8": "VP8"}
_BEST_H264 = "42e01f"  # constrained baseline 3.1: what every WebRTC subscriber decodes
# Static payload types (RFC 3551) that need no a=rtpmap; only used to name them in errors.
_STATIC = {0: "PCMU", 3: "GSM", 4: "G723", 8: "PCMA", 9: "G722", 13: "CN", 18: "G729",
           26: "JPEG", 31: "H261", 34: "H263"}
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")  # RFC 8839 ice-char
_FINGERPRINT = re.compile(r"[!-~]+ [0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*")
_MAX_SHOWN = 40


class WhipOfferError(ValueError):
    """An offer or trickle fragment we refuse: the only error :mod:`whip` raises on input.

    ``status`` is the HTTP status to answer with (400: malformed or incomplete, 406:
    well-formed but not something we can receive), ``message`` the one-line text for the
    response body (values quoted from the input are shortened and escaped).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class MediaSection:
    """One m-line we will receive, with the codec we would pick in it.

    ``payload_types`` lists every acceptable payload type, best first (so
    ``payload_types[0] == payload_type``); ``fmtp`` is the raw a=fmtp parameter text of
    the chosen one and ``rtcp_fb`` its a=rtcp-fb values (wildcard ones included).
    ``ssrc`` is the first announced SSRC (the primary of an FID group), if any.
    """

    index: int  # position among all m-lines of the offer (the answer keeps the order)
    kind: str  # "audio" | "video"
    mid: str
    direction: str  # "sendonly" | "sendrecv"
    codec: str  # "H264" | "VP8" | "opus"
    payload_type: int
    clock_rate: int
    channels: int | None
    fmtp: str
    rtcp_fb: tuple[str, ...]
    payload_types: tuple[int, ...]
    rtx_payload_type: int | None = None
    profile_level_id: str | None = None  # H.264 only, as offered (None: absent)
    ssrc: int | None = None
    rids: tuple[str, ...] = ()  # simulcast layers sent (a=simulcast:send order), if any
    rid_extension: int | None = None  # the offer's id of the rtp-stream-id extension

    @property
    def fmtp_params(self) -> dict[str, str]:
        """``fmtp`` as a dict with lower-case keys (``key`` alone maps to ``""``)."""
        return _fmtp_params(self.fmtp)


@dataclass(frozen=True)
class OfferSummary:
    """What an accepted offer sends: at most one audio and one video section."""

    audio: MediaSection | None
    video: MediaSection | None
    ice_ufrag: str
    ice_pwd: str
    bundle: tuple[str, ...]  # the mids of the BUNDLE group the media is in
    sdp: str = field(repr=False)  # the offer as received (decoded, line ends untouched)

    @property
    def sections(self) -> tuple[MediaSection, ...]:
        """The received sections in m-line order."""
        found = [s for s in (self.audio, self.video) if s is not None]
        return tuple(sorted(found, key=lambda s: s.index))


# -- lines ------------------------------------------------------------------------------


def show(value: str, limit: int = _MAX_SHOWN) -> str:
    """A value from the input, safe to put in a one-line message (escaped, short)."""
    shown = value if value.isprintable() else ascii(value)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def decode_body(body: str | bytes, what: str) -> str:
    """The body as text, refusing oversized or non-UTF-8 input before any parsing."""
    if isinstance(body, str):
        if len(body) <= MAX_BODY_BYTES:  # a character is at least one byte
            try:
                size = len(body.encode("utf-8"))
            except UnicodeEncodeError:  # lone surrogates
                raise WhipOfferError(400, f"{what} is not UTF-8 text") from None
            if size <= MAX_BODY_BYTES:
                return body
    elif isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
        if len(data) <= MAX_BODY_BYTES:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise WhipOfferError(400, f"{what} is not UTF-8 text") from None
    else:
        raise TypeError(f"expected str or bytes, not {type(body).__name__}")
    raise WhipOfferError(400, f"{what} is larger than {MAX_BODY_BYTES // 1024} KiB")


def sdp_lines(text: str) -> Iterator[tuple[int, str, str]]:
    """``(line number, type, value)`` per non-empty line; CRLF and LF both end a line.

    Every trailing CR is dropped, so a body reads the same whichever line ends it uses.
    """
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not (line[0].isascii() and line[0].isalpha()):
            raise WhipOfferError(400, f"line {number} is not <type>=<value>: {show(line)}")
        yield number, line[0], line[2:]


def split_attribute(value: str) -> tuple[str, str | None]:
    """``name:value`` -> (name, value); a property attribute has value None."""
    name, sep, rest = value.partition(":")
    return name, rest if sep else None


def uint(text: str, limit: int) -> int | None:
    """A plain ASCII decimal in 0..limit, else None (no signs, spaces or other digits)."""
    if not text or len(text) > len(str(limit)) or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= limit else None


def check_ice_credentials(ufrag: str, pwd: str) -> None:
    """RFC 8839: ufrag 4-256, pwd 22-256 ice-chars (ALPHA / DIGIT / "+" / "/")."""
    if not (4 <= len(ufrag) <= 256 and _ICE_CHARS.fullmatch(ufrag)):
        raise WhipOfferError(400, f"invalid a=ice-ufrag {show(ufrag)} "
                             "(4 to 256 of A-Z a-z 0-9 + /)")
    if not (22 <= len(pwd) <= 256 and _ICE_CHARS.fullmatch(pwd)):
        raise WhipOfferError(400, "invalid a=ice-pwd (22 to 256 of A-Z a-z 0-9 + /)")


def _fmtp_params(fmtp: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in fmtp.split(";"):
        key, _, value = item.strip().partition("=")
        if key:
            params.setdefault(key.strip().lower(), value.strip())
    return params


# -- sections ---------------------------------------------------------------------------

Attrs = list[tuple[int, str, str | None]]  # (line number, name, value)


@dataclass
class _Section:
    index: int
    line: int
    kind: str
    port: int
    proto: str
    formats: list[str]
    attrs: Attrs = field(default_factory=list)

    def values(self, name: str) -> list[tuple[int, str]]:
        return [(n, v or "") for n, a, v in self.attrs if a == name]

    def first(self, name: str) -> str | None:
        return next((v or "" for _, a, v in self.attrs if a == name), None)

    def has(self, name: str) -> bool:
        return any(a == name for _, a, _ in self.attrs)


@dataclass
class _Codec:
    pt: int
    name: str = ""
    clock_rate: int = 0
    channels: int | None = None
    fmtp: str | None = None
    rtcp_fb: list[tuple[int, str]] = field(default_factory=list)  # (line number, value)
    params: dict[str, str] = field(default_factory=dict)  # fmtp, parsed once


def _first_line(text: str) -> str:
    """The first non-empty line, as :func:`sdp_lines` sees it."""
    start = 0
    while True:
        end = text.find("\n", start)
        line = text[start:end if end >= 0 else len(text)].rstrip("\r")
        if line or end < 0:
            return line
        start = end + 1


def _parse(text: str) -> tuple[Attrs, list[_Section]]:
    if _first_line(text) != "v=0":  # before line syntax: an HTML page is "not SDP"
        raise WhipOfferError(400, "not an SDP offer: the first line must be v=0")
    session: Attrs = []
    sections: list[_Section] = []
    for number, kind, value in sdp_lines(text):
        if kind == "m":
            sections.append(_m_line(number, value, len(sections)))
        elif kind == "a":
            name, attr_value = split_attribute(value)
            (sections[-1].attrs if sections else session).append((number, name, attr_value))
    if not sections:
        raise WhipOfferError(400, "offer has no m-line")
    return session, sections


def _m_line(number: int, value: str, index: int) -> _Section:
    parts = value.split(" ")
    port = uint(parts[1].split("/", 1)[0], 65535) if len(parts) > 1 else None
    if len(parts) < 4 or not parts[0] or not parts[2] or port is None or not all(parts[3:]):
        raise WhipOfferError(400, f"line {number}: malformed m-line "
                             "(m=<media> <port> <proto> <formats>)")
    return _Section(index, number, parts[0], port, parts[2], parts[3:])


def _direction(attrs: Attrs, default: str) -> str:
    """The last direction attribute; a session-level one is the media default."""
    found = [a for _, a, _ in attrs if a in _DIRECTIONS]
    return found[-1] if found else default


def _received(section: _Section, default: str) -> bool:
    """Audio/video that the publisher sends on a live (or bundle-only) m-line."""
    if section.kind not in ("audio", "video"):
        return False
    if section.port == 0 and not section.has("bundle-only"):
        return False  # port 0: a rejected or stopped m-line (RFC 3264 §8.2)
    return _direction(section.attrs, default) in _SENDING


def _codecs(section: _Section) -> tuple[dict[int, _Codec], list[tuple[int, str]]]:
    """The payload types of the m-line with their rtpmap/fmtp/rtcp-fb, in m-line order.

    Wildcard (``a=rtcp-fb:*``) values come back apart, with their line numbers, so one
    line costs the same however many payload types the m-line lists.
    """
    codecs: dict[int, _Codec] = {}
    wildcard: list[tuple[int, str]] = []
    for fmt in section.formats:
        pt = uint(fmt, 127)
        if pt is None:
            raise WhipOfferError(400, f"line {section.line}: payload type {show(fmt)} "
                                 "is not 0-127")
        codecs.setdefault(pt, _Codec(pt, _STATIC.get(pt, "")))
    for number, name, value in section.attrs:
        if name not in ("rtpmap", "fmtp", "rtcp-fb"):
            continue
        head, _, rest = (value or "").partition(" ")
        pt = uint(head, 127)
        if pt is None and not (name == "rtcp-fb" and head == "*"):
            raise WhipOfferError(400, f"line {number}: malformed a={name}")
        codec = codecs.get(pt) if pt is not None else None
        if name == "rtpmap":
            _rtpmap(number, rest, codec)
        elif name == "fmtp":
            if codec is not None and codec.fmtp is None:
                codec.fmtp = rest.strip()
        elif rest.strip():  # rtcp-fb: one payload type, or "*" for all of them
            fb = (number, " ".join(rest.split()))
            if pt is None:
                wildcard.append(fb)
            elif codec is not None:
                codec.rtcp_fb.append(fb)
    for codec in codecs.values():
        codec.params = _fmtp_params(codec.fmtp or "")
    return codecs, wildcard


def _rtpmap(number: int, text: str, codec: _Codec | None) -> None:
    parts = text.strip().split("/")
    rate = uint(parts[1], 0xFFFFFFFF) if len(parts) > 1 else None
    channels = uint(parts[2], 255) if len(parts) > 2 else None
    if not parts[0] or rate is None or len(parts) > 3 or (len(parts) == 3 and channels is None):
        raise WhipOfferError(400, f"line {number}: malformed a=rtpmap "
                             "(a=rtpmap:<pt> <name>/<clock rate>[/<channels>])")
    if codec is not None and not codec.clock_rate:  # the first rtpmap of a pt counts
        codec.name, codec.clock_rate, codec.channels = parts[0], rate, channels


def _h264_rank(profile_level_id: str | None) -> int:
    """0: 42e01f, 1: other constrained baseline, 2: baseline, 3: anything else."""
    plid = (profile_level_id or "").lower()
    if plid == _BEST_H264:
        return 0
    if len(plid) == 6 and plid.startswith("42") and all(c in "0123456789abcdef" for c in plid):
        return 1 if int(plid[2:4], 16) & 0x40 else 2  # constraint_set1: constrained
    return 3


def _acceptable(kind: str, codec: _Codec, wanted: str) -> bool:
    name = codec.name.lower()
    if kind == "audio":
        return name == "opus" and codec.clock_rate == 48000 and codec.channels == 2
    if name != wanted or codec.clock_rate != 90000:
        return False
    return name != "h264" or codec.params.get("packetization-mode") == "1"


def _offered_names(codecs: dict[int, _Codec]) -> str:
    names: list[str] = []
    for codec in codecs.values():
        name = show(codec.name, 20) if codec.name else str(codec.pt)
        if name not in names:
            names.append(name)
    shown = ", ".join(names[:10])
    return shown + (", ..." if len(names) > 10 else "")


def _simulcast(section: _Section) -> bool:
    if section.has("simulcast") or len(section.values("rid")) >= 2:
        return True
    return _sim_group(section)


def _sim_group(section: _Section) -> bool:
    return any(v.split(" ")[0] == "SIM" and len(v.split()) >= 3
               for _, v in section.values("ssrc-group"))


def _simulcast_rids(section: _Section) -> tuple[tuple[str, ...], int]:
    """The rids of a simulcast offer (RFC 8853), in its ``a=simulcast:send`` order, and
    the rtp-stream-id extension id. Each stream's first alternative is taken; a paused
    one (``~``) still counts (the publisher may resume it)."""
    if _sim_group(section):
        raise WhipOfferError(406, SIMULCAST_SSRC_GROUP)
    declared = {}
    for number, value in section.values("rid"):
        parts = value.split(" ")
        if len(parts) < 2 or not _RID.fullmatch(parts[0]) or parts[1] not in ("send",
                                                                             "recv"):
            raise WhipOfferError(400, f"line {number}: malformed a=rid")
        declared[parts[0]] = parts[1]
    rids: list[str] = []
    simulcast = section.first("simulcast")
    if simulcast is not None:
        words = simulcast.split()
        if "send" not in words or words.index("send") + 1 >= len(words):
            raise WhipOfferError(406, "simulcast that sends nothing (a=simulcast without "
                                 "send)")
        for stream in words[words.index("send") + 1].split(";"):
            rid = stream.split(",")[0].lstrip("~")
            if declared.get(rid) != "send":
                raise WhipOfferError(400, f"a=simulcast names rid {show(rid)}, which no "
                                     "a=rid line sends")
            if rid not in rids:
                rids.append(rid)
    else:  # a=rid lines alone (a client that omits a=simulcast)
        rids = [rid for rid, direction in declared.items() if direction == "send"]
    if len(rids) > MAX_SIMULCAST_LAYERS:
        raise WhipOfferError(406, f"{len(rids)} simulcast layers (at most "
                             f"{MAX_SIMULCAST_LAYERS})")
    extension = None
    for _, value in section.values("extmap"):
        head, _, uri = value.partition(" ")
        if uri.split(" ")[0] == RID_URI and head.split("/")[0].isdigit():
            extension = int(head.split("/")[0])
    if extension is None:
        raise WhipOfferError(406, SIMULCAST_NO_RID_EXTENSION)
    return tuple(rids), extension


def _ssrc(section: _Section) -> int | None:
    """The primary SSRC: first of an FID group, else the first a=ssrc line."""
    for number, value in section.values("ssrc-group"):
        parts = value.split()
        if parts and parts[0] == "FID":
            primary = uint(parts[1], 0xFFFFFFFF) if len(parts) > 1 else None
            if primary is None:
                raise WhipOfferError(400, f"line {number}: malformed a=ssrc-group")
            return primary
    for number, value in section.values("ssrc"):
        ssrc = uint(value.split(" ")[0], 0xFFFFFFFF)
        if ssrc is None:
            raise WhipOfferError(400, f"line {number}: malformed a=ssrc")
        return ssrc
    return None


def _media(section: _Section, direction: str, mid: str, transcoding: bool,
           video_codecs: Sequence[str]) -> MediaSection:
    kind = section.kind
    proto = section.proto.upper().split("/")
    if "RTP" not in proto or proto[-1] not in ("SAVPF", "SAVP"):
        raise WhipOfferError(406, f"{kind} transport {show(section.proto)} is not "
                             "DTLS-SRTP (UDP/TLS/RTP/SAVPF)")
    codecs, wildcard = _codecs(section)
    rids: tuple[str, ...] = ()
    rid_extension = None
    if kind == "video" and _simulcast(section):
        if transcoding:
            raise WhipOfferError(406, SIMULCAST_TRANSCODING)
        rids, rid_extension = _simulcast_rids(section)
    wanted = ["opus"] if kind == "audio" else list(dict.fromkeys(c.lower() for c in video_codecs))
    chosen: list[_Codec] = []
    for name in wanted:
        found = [c for c in codecs.values() if _acceptable(kind, c, name)]
        if name == "h264":
            found.sort(key=lambda c: _h264_rank(c.params.get("profile-level-id")))
        chosen += found
    if not chosen:
        raise WhipOfferError(406, f"no supported codec for {kind} "
                             f"(offered: {_offered_names(codecs)})")
    best = chosen[0]
    rtx = next((c.pt for c in codecs.values() if c.name.lower() == "rtx"
                and c.params.get("apt") == str(best.pt)), None)
    rtcp_fb = tuple(dict.fromkeys(fb for _, fb in sorted(best.rtcp_fb + wildcard)))
    return MediaSection(
        index=section.index, kind=kind, mid=mid, direction=direction,
        codec="opus" if kind == "audio" else _VIDEO_CODECS[best.name.lower()],
        payload_type=best.pt, clock_rate=best.clock_rate, channels=best.channels,
        fmtp=best.fmtp or "", rtcp_fb=rtcp_fb,
        payload_types=tuple(c.pt for c in chosen), rtx_payload_type=rtx,
        profile_level_id=best.params.get("profile-level-id") if kind == "video"
        and best.name.lower() == "h264" else None,
        ssrc=_ssrc(section), rids=rids, rid_extension=rid_extension,
    )


# -- the offer --------------------------------------------------------------------------


def _level(section: _Section, session: Attrs, name: str) -> str | None:
    """A media-level attribute, else the session-level one (RFC 8866 §5)."""
    value = section.first(name)
    if value is None:
        value = next((v or "" for _, a, v in session if a == name), None)
    return value


def _transport(sections: list[_Section], mids: list[str], session: Attrs
               ) -> tuple[str, str, tuple[str, ...]]:
    """ICE credentials, DTLS fingerprint and BUNDLE group of the received sections."""
    credentials: set[tuple[str, str]] = set()
    for section in sections:
        ufrag, pwd = _level(section, session, "ice-ufrag"), _level(section, session, "ice-pwd")
        if ufrag is None or pwd is None:
            raise WhipOfferError(400, "offer has no ICE credentials (a=ice-ufrag and a=ice-pwd)")
        check_ice_credentials(ufrag, pwd)
        credentials.add((ufrag, pwd))
        fingerprint = _level(section, session, "fingerprint")
        if fingerprint is None:
            raise WhipOfferError(400, "offer has no DTLS fingerprint")
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise WhipOfferError(400, f"malformed a=fingerprint {show(fingerprint)}")
    if len(credentials) > 1:
        raise WhipOfferError(400, "the bundled m-lines have different ICE credentials")
    groups = [v.split()[1:] for _, a, v in session
              if a == "group" and v is not None and v.split()[:1] == ["BUNDLE"]]
    if not groups:
        raise WhipOfferError(400, "offer has no BUNDLE group (a=group:BUNDLE)")
    group = next((g for g in groups if mids[0] in g), [])
    for mid in mids:
        if mid not in group:
            raise WhipOfferError(400, f"a=mid:{show(mid)} is not in the BUNDLE group "
                                 "of the other media")
    ufrag, pwd = credentials.pop()
    return ufrag, pwd, tuple(group)


def inspect_offer(sdp: str | bytes, *, transcoding: bool,
                  video_codecs: Sequence[str] = ("H264", "VP8")) -> OfferSummary:
    """Decide whether a WHIP offer can be received; raise :class:`WhipOfferError` if not.

    ``transcoding`` only changes the simulcast refusal text. ``video_codecs`` is the
    preference order among ``"H264"`` and ``"VP8"`` (a ``ValueError`` for other names:
    a caller bug, not bad input). Within H.264, profile-level-id 42e01f comes first, then
    other constrained baseline, baseline, the rest; only packetization-mode=1 is taken.

    Checks run in a fixed order, so one offer always gets the same answer: size, UTF-8,
    syntax (400); a second sending audio or video m-line (406); nothing sent (400); per
    sent section its transport (406), rtpmap/fmtp/rtcp-fb syntax (400), simulcast and
    codec (406); then a=mid, ICE credentials, DTLS fingerprint and BUNDLE (400).
    Inactive and recvonly m-lines, port-0 m-lines that are not bundle-only, and other
    media (application, ...) are ignored.
    """
    for name in video_codecs:
        if not isinstance(name, str) or name.lower() not in _VIDEO_CODECS:
            raise ValueError(f"video codec must be H264 or VP8, not {name!r}")
    text = decode_body(sdp, "offer")
    session, sections = _parse(text)
    default = _direction(session, "sendrecv")
    received = [s for s in sections if _received(s, default)]
    for kind in ("audio", "video"):
        if sum(s.kind == kind for s in received) > 1:
            raise WhipOfferError(406, DUPLICATE_KIND)
    if not received:
        raise WhipOfferError(400, "offer sends no media")
    mids = [s.first("mid") for s in received]
    media = [_media(s, _direction(s.attrs, default), mid or "", transcoding, video_codecs)
             for s, mid in zip(received, mids, strict=True)]
    seen: set[str] = set()
    for section in sections:
        mid = section.first("mid")
        if mid is not None:
            if mid in seen:
                raise WhipOfferError(400, f"a=mid:{show(mid)} is used by two m-lines")
            seen.add(mid)
    for section, mid in zip(received, mids, strict=True):
        if not mid:
            raise WhipOfferError(400, f"the {section.kind} m-line (line {section.line}) "
                                 "has no a=mid")
    ufrag, pwd, bundle = _transport(received, [m or "" for m in mids], session)
    by_kind = {m.kind: m for m in media}
    return OfferSummary(audio=by_kind.get("audio"), video=by_kind.get("video"),
                        ice_ufrag=ufrag, ice_pwd=pwd, bundle=bundle, sdp=text)


def simulcast_answer(answer: str, video: MediaSection) -> str:
    """An answer (e.g. aiortc's, which knows no simulcast) that accepts the offer's
    simulcast layers: in the video m-section, the rtp-stream-id extension with the
    offer's id, ``a=rid:<rid> recv`` per layer and ``a=simulcast:recv`` in the offer's
    order (RFC 8853 §5.3). Unchanged if the offer had no simulcast."""
    if not video.rids or video.rid_extension is None:
        return answer
    lines = answer.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    in_video = False
    done = False

    def close_section() -> None:
        nonlocal done
        if in_video and not done:
            out.extend(f"a=rid:{rid} recv" for rid in video.rids)
            out.append("a=simulcast:recv " + ";".join(video.rids))
            done = True

    for line in lines:
        if line.startswith("m="):
            close_section()
            in_video = False
        if line == f"a=mid:{video.mid}":
            in_video = True
            out.append(line)
            if not any(RID_URI in other for other in lines):
                out.append(f"a=extmap:{video.rid_extension} {RID_URI}")
            continue
        if line:
            out.append(line)
    close_section()
    if not done:
        raise ValueError(f"the answer has no m-section with a=mid:{video.mid}")
    return "\r\n".join(out) + "\r\n"

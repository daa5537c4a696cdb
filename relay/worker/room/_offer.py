"""The publisher's offer as LiveKit must see it, made from aiortc's (pure text work).

aiortc sends one RTP stream per m-section and knows nothing of simulcast; our RTP
streams (``_rtp.py``) are sent beside its idle senders. The offer aiortc made is
rewritten, per m-section we send on:

* one stream: its ``a=ssrc`` lines name our SSRC instead of aiortc's;
* simulcast: no ``a=ssrc`` lines (pion then finds each stream by the mid and
  rtp-stream-id header extensions of its first packets), an ``a=extmap`` for
  rtp-stream-id, one ``a=rid:<rid> send`` per layer and ``a=simulcast:send q;h;f``,
  the form browsers offer (RFC 8853) and livekit-server 1.13.5 reads
  (pkg/sfu/buffer/videolayerutils.go: rids ``q``, ``h``, ``f`` from the lowest layer);
* both: the transport-wide CC extension and ``a=rtcp-fb:<pt> transport-cc``, the
  only congestion feedback livekit-server gives a publisher (``_twcc.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RID_EXTENSION_ID = 10  # aiortc uses 1-3; any free id of 1-14 does
TWCC_EXTENSION_ID = 5
RIDS = ("q", "h", "f")  # LiveKit's names, lowest layer first


@dataclass(frozen=True)
class SectionStreams:
    """What we send on one m-section (by its mid): one SSRC, or simulcast rids."""

    mid: str
    ssrcs: tuple[int, ...]
    rids: tuple[str, ...] = ()
    cname: str = ""


def rids_for(layers: int) -> tuple[str, ...]:
    """The rids of ``layers`` simulcast layers, lowest first (none for one layer)."""
    if not 1 <= layers <= len(RIDS):
        raise ValueError(f"{layers} layers (1 to {len(RIDS)})")
    return RIDS[:layers] if layers > 1 else ()


def _split(sdp: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    session: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _mid(section: list[str]) -> str | None:
    for line in section:
        if line.startswith("a=mid:"):
            return line[len("a=mid:"):]
    return None


def _with_twcc(section: list[str]) -> list[str]:
    """Transport-wide CC: the header extension and the feedback for every payload type
    (livekit-server answers with feedback only if the offer asks for it)."""
    out = []
    extmaps = [i for i, line in enumerate(section) if line.startswith("a=extmap:")]
    for index, line in enumerate(section):
        out.append(line)
        if extmaps and index == extmaps[-1]:
            out.append(f"a=extmap:{TWCC_EXTENSION_ID} {TWCC_URI}")
        if line.startswith("a=rtpmap:"):
            out.append(f"a=rtcp-fb:{line[len('a=rtpmap:'):].split(' ', 1)[0]} transport-cc")
    return out


def _rewrite(section: list[str], streams: SectionStreams) -> list[str]:
    kept = _with_twcc([line for line in section if not line.startswith(
        ("a=ssrc:", "a=ssrc-group:", "a=rid:", "a=simulcast:"))])
    cname = streams.cname or next(
        (line.split("cname:", 1)[1] for line in section
         if line.startswith("a=ssrc:") and "cname:" in line), "relay")
    if not streams.rids:
        # where aiortc had its ssrc lines: after a=rtcp-mux
        at = next((i + 1 for i, line in enumerate(kept) if line == "a=rtcp-mux"), len(kept))
        kept[at:at] = [f"a=ssrc:{ssrc} cname:{cname}" for ssrc in streams.ssrcs]
        return kept
    last_extmap = max((i for i, line in enumerate(kept) if line.startswith("a=extmap:")),
                      default=1)
    kept.insert(last_extmap + 1, f"a=extmap:{RID_EXTENSION_ID} {RID_URI}")
    kept += [f"a=rid:{rid} send" for rid in streams.rids]
    kept.append("a=simulcast:send " + ";".join(streams.rids))
    return kept


def publish_offer(sdp: str, streams: list[SectionStreams]) -> str:
    """aiortc's offer with each listed m-section describing our streams instead.

    Raises ValueError if a listed mid is not in the offer or a section has neither
    one SSRC nor rids.
    """
    session, sections = _split(sdp)
    by_mid = {s.mid: s for s in streams}
    for entry in streams:
        if entry.rids and len(entry.rids) != len(entry.ssrcs):
            raise ValueError(f"mid {entry.mid}: one SSRC per rid")
        if not entry.rids and len(entry.ssrcs) != 1:
            raise ValueError(f"mid {entry.mid}: one SSRC without simulcast")
    out = list(session)
    seen = set()
    for section in sections:
        mid = _mid(section)
        if mid in by_mid:
            seen.add(mid)
            section = _rewrite(section, by_mid[mid])
        out += section
    missing = set(by_mid) - seen
    if missing:
        raise ValueError(f"mids not in the offer: {sorted(missing)}")
    return "\r\n".join(out) + "\r\n"


def answered_extension_ids(sdp: str, mid: str) -> dict[str, int]:
    """The header extensions the answer kept for one m-section: uri -> id."""
    _, sections = _split(sdp)
    for section in sections:
        if _mid(section) == mid:
            ids = {}
            for line in section:
                if line.startswith("a=extmap:"):
                    head, _, uri = line[len("a=extmap:"):].partition(" ")
                    ext_id = head.split("/", 1)[0]
                    if ext_id.isdigit():
                        ids[uri.split(" ", 1)[0]] = int(ext_id)
            return ids
    raise ValueError(f"mid {mid} not in the answer")


def answered_payload_type(sdp: str, mid: str, codec: str) -> int:
    """The payload type the answer gives ``codec`` (e.g. ``H264``) in one m-section."""
    _, sections = _split(sdp)
    for section in sections:
        if _mid(section) == mid:
            for line in section:
                if line.startswith("a=rtpmap:"):
                    pt, _, encoding = line[len("a=rtpmap:"):].partition(" ")
                    if encoding.split("/", 1)[0].lower() == codec.lower() and pt.isdigit():
                        return int(pt)
            raise ValueError(f"the answer has no {codec} for mid {mid}")
    raise ValueError(f"mid {mid} not in the answer")

"""Sans-IO WHIP signalling core: offer and PATCH bodies in, typed decisions out.

No sockets, clocks or WebRTC stack: the HTTP resource (relay/service/ingest/whip_front.py) asks this
package whether it can take a publisher's offer before it starts a session worker, and
what a PATCH asks for. Typical use::

    try:
        summary = whip.inspect_offer(body, transcoding=transcode)
    except whip.WhipOfferError as exc:
        return reply(exc.status, exc.message)      # 400 or 406, text for the body
    start_session(summary.sdp, video=summary.video, audio=summary.audio)

    update = whip.parse_trickle(patch_body)        # application/trickle-ice-sdpfrag
    if update.is_ice_restart(current_ufrag):
        ...                                        # new credentials + candidates
    else:
        for candidate in update.candidates:
            add_remote_candidate(candidate.mid, candidate.raw)

Offers (:func:`inspect_offer`): RFC 8866 text with CRLF or LF line ends, at most 64 KiB
of UTF-8. At most one sending audio and one sending video m-line (406 "more than 1
track with given media kind", LiveKit's text); video in H.264 (packetization-mode=1,
any profile) or VP8, audio in Opus/48000/2 (else 406 "no supported codec for <kind>
(offered: ...)"); simulcast by rid (RFC 8853, at most 3 layers, with the
rtp-stream-id header extension) only without transcoding (406 otherwise;
:func:`simulcast_answer` puts the layers in an answer); ICE credentials, a DTLS
fingerprint, a=mid on each sent m-line and one BUNDLE group (else 400). The result,
:class:`OfferSummary`, names the chosen payload type per :class:`MediaSection` and
keeps the offer text.

PATCH bodies (:func:`parse_trickle`, RFC 8840 / RFC 9725 §4.3): at most 64 KiB and
:data:`MAX_CANDIDATES` ``a=candidate`` lines, parsed into :class:`Candidate` with the
mid they came under; ``a=ice-ufrag``/``a=ice-pwd`` (both or neither) and
``a=end-of-candidates`` into :class:`TrickleUpdate`.

Errors: any malformed, oversized or unacceptable input raises :class:`WhipOfferError`
(a ``ValueError`` with ``status`` and ``message``); nothing else escapes on bad input.
A wrong argument type or an unknown name in ``video_codecs`` is a caller bug
(``TypeError``/``ValueError``).
"""

from __future__ import annotations

from ._sdp import (
    MAX_BODY_BYTES,
    MediaSection,
    OfferSummary,
    WhipOfferError,
    inspect_offer,
    simulcast_answer,
)
from ._trickle import MAX_CANDIDATES, Candidate, TrickleUpdate, parse_trickle

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_CANDIDATES",
    "Candidate",
    "MediaSection",
    "OfferSummary",
    "TrickleUpdate",
    "WhipOfferError",
    "inspect_offer",
    "parse_trickle",
    "simulcast_answer",
]

"""A WHIP publisher built on aiortc, for tests and benchmarks (a real WebRTC peer).

It sends a moving test picture and a sine tone, negotiates over WHIP (POST the
offer, apply the 201's answer) and ends the session with DELETE, like OBS or a
browser would. Run in asyncio (tests wrap it in `run_asyncio`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from dataclasses import dataclass, field

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpsender import RTCRtpSender

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
AUDIO_PTIME = 0.02


def loopback_only() -> None:
    """aioice leaves 127.0.0.1 out of host candidates; tests stay on loopback."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


class TestPictureTrack(MediaStreamTrack):
    """A moving gradient at `fps`, paced in real time."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480, fps: int = 30) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._count = 0
        self._start: float | None = None
        ramp = np.arange(width, dtype=np.uint8)[None, :].repeat(height, 0)
        self._base = np.stack([ramp, ramp[::-1], np.full_like(ramp, 128)], axis=2)

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._count / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        rgb = np.roll(self._base, self._count * 4, axis=1)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self._count * VIDEO_CLOCK // self.fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """A 440 Hz sine in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0) -> None:
        super().__init__()
        self.frequency = frequency
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._samples / AUDIO_RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        n = int(AUDIO_RATE * AUDIO_PTIME)
        t = (np.arange(n) + self._samples) / AUDIO_RATE
        pcm = (np.sin(2 * np.pi * self.frequency * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._samples += n
        return frame


@dataclass
class WhipPublish:
    """What happened to one WHIP publish."""

    status: int = 0
    location: str = ""
    etag: str = ""
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    connected: bool = False
    delete_status: int = 0
    keyframe_requests: int = 0  # PLIs that reached our video sender
    patch_statuses: list[int] = field(default_factory=list)  # trickle, then the probes
    restart_reply: tuple[str, str] = ("", "")  # the ICE-restart PATCH's (body, ETag)
    answer: str = ""  # the SDP answer of the 201


def split_candidates(sdp: str) -> tuple[str, str]:
    """(the offer without its candidates, the trickle-ice-sdpfrag that carries them)."""
    lines = sdp.splitlines()
    kept = [line for line in lines if not line.startswith(("a=candidate:",
                                                           "a=end-of-candidates"))]
    ufrag = next(line for line in lines if line.startswith("a=ice-ufrag:"))
    pwd = next(line for line in lines if line.startswith("a=ice-pwd:"))
    first_m = next(i for i, line in enumerate(lines) if line.startswith("m="))
    mid = next(line for line in lines[first_m:] if line.startswith("a=mid:"))
    candidates = [line for line in lines[first_m:] if line.startswith("a=candidate:")]
    # every m-line repeats them under BUNDLE; the first section's are enough
    candidates = candidates[:len(candidates) // max(1, sum(
        1 for line in lines if line.startswith("m=")))] or candidates
    fragment = [ufrag, pwd, lines[first_m], mid, *candidates, "a=end-of-candidates"]
    return "\r\n".join(kept) + "\r\n", "\r\n".join(fragment) + "\r\n"


async def publish(endpoint: str, *, seconds: float, video_codec: str | None = "VP8",
                  audio: bool = True, bearer: str | None = None, trickle: bool = False,
                  width: int = 640, height: int = 480,
                  video_track: MediaStreamTrack | None = None,
                  audio_track: MediaStreamTrack | None = None,
                  until: asyncio.Event | None = None) -> WhipPublish:
    """POST an offer to `endpoint`, send media for `seconds`, then DELETE the resource.

    `trickle`: the offer goes without candidates, which follow in a PATCH (then an
    ICE-restart PATCH, whose answer is kept, and one with a stale If-Match).
    `video_track`, `audio_track`: sent instead of the test picture and the tone.
    `until`: when given, media stops once it is set (or after `seconds`).
    """
    loopback_only()
    result = WhipPublish()
    pc = RTCPeerConnection()
    try:
        if video_codec is not None:
            transceiver = pc.addTransceiver(video_track or TestPictureTrack(width, height),
                                           "sendonly")
            codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs
                      if c.mimeType.lower() in (f"video/{video_codec.lower()}", "video/rtx")]
            transceiver.setCodecPreferences(codecs)
            sender = transceiver.sender
            send_keyframe = sender._send_keyframe

            def counted() -> None:
                result.keyframe_requests += 1
                send_keyframe()

            sender._send_keyframe = counted  # type: ignore[method-assign]
        if audio:
            pc.addTransceiver(audio_track or ToneTrack(), "sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"content-type": "application/sdp"}
        if bearer is not None:
            headers["authorization"] = f"Bearer {bearer}"
        offer, fragment = split_candidates(pc.localDescription.sdp)
        if not trickle:
            offer = pc.localDescription.sdp
        async with httpx.AsyncClient(timeout=20) as http:
            reply = await http.post(endpoint, content=offer, headers=headers)
            result.status = reply.status_code
            result.headers = dict(reply.headers)
            if reply.status_code != 201:
                result.error = reply.text.strip()
                return result
            result.location = reply.headers["location"]
            result.answer = reply.text
            result.etag = reply.headers.get("etag", "")
            await pc.setRemoteDescription(RTCSessionDescription(reply.text, "answer"))
            base = str(reply.url.copy_with(path="/", query=None)).rstrip("/")
            if trickle:
                sdpfrag = {"content-type": "application/trickle-ice-sdpfrag"}
                for body, extra in (
                        (fragment, {"if-match": result.etag}),
                        (fragment.replace("a=ice-ufrag:", "a=ice-ufrag:new"), {}),
                        (fragment, {"if-match": '"stale"'})):
                    patched = await http.patch(base + result.location, content=body,
                                               headers={**sdpfrag, **extra})
                    result.patch_statuses.append(patched.status_code)
                    if not extra:
                        result.restart_reply = (patched.text, patched.headers.get("etag", ""))
            deadline = time.monotonic() + 10
            while pc.connectionState != "connected" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            result.connected = pc.connectionState == "connected"
            if until is None:
                await asyncio.sleep(seconds)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(until.wait(), seconds)
            result.delete_status = (await http.delete(base + result.location)).status_code
    finally:
        await pc.close()
    return result

"""Decoders fed with the media events of real captured RTMP sessions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rtmp
from relay.worker.decode import AudioDecoder, DecodeError, VideoDecoder

CAPTURES = Path(__file__).parent / "rtmp" / "captures"
MANIFEST = json.loads((CAPTURES / "manifest.json").read_text())


def events(name: str) -> list[rtmp.Event]:
    session = rtmp.ServerSession(rtmp.SessionConfig(randbytes=lambda n: bytes(n)))
    session.receive_data((CAPTURES / f"{name}.bin").read_bytes())
    out = []
    while True:
        event = session.next_event()
        if event is rtmp.PAUSED:
            session.accept_publish()
        elif event is rtmp.NEED_DATA:
            break
        else:
            out.append(event)
    return out


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_every_captured_frame_decodes(name: str) -> None:
    video = audio = None
    pictures, samples = [], 0
    for event in events(name):
        if isinstance(event, rtmp.VideoConfig):
            video = VideoDecoder(event)
        elif isinstance(event, rtmp.AudioConfig):
            audio = AudioDecoder(event)
        elif isinstance(event, rtmp.VideoFrame):
            assert video is not None
            pictures += video.decode(event)
        elif isinstance(event, rtmp.AudioFrame):
            assert audio is not None
            samples += sum(f.samples for f in audio.decode(event))
    assert video is not None
    pictures += video.flush()
    assert len(pictures) == MANIFEST[name]["video_frames"]
    assert {(p.width, p.height) for p in pictures} == {(320, 240)} or len(
        {(p.width, p.height) for p in pictures}) == 1
    pts = [p.pts for p in pictures]
    assert pts == sorted(pts)
    assert samples > 0 and audio is not None and audio.errors == 0


def test_unsupported_codec_is_a_clear_error() -> None:
    with pytest.raises(DecodeError, match="unsupported video codec vvc"):
        VideoDecoder(None, codec="vvc")
    with pytest.raises(DecodeError, match="unsupported audio codec ac3"):
        AudioDecoder(None, codec="ac3")


def test_garbage_h264_raises_decode_error_or_yields_nothing() -> None:
    config = next(e for e in events("ffmpeg51_h264_aac") if isinstance(e, rtmp.VideoConfig))
    decoder = VideoDecoder(config)
    frame = rtmp.VideoFrame(codec="h264", dts=0, pts=0, keyframe=True,
                            data=b"\x00\x00\x00\x10" + bytes(range(16)) * 1)
    try:
        assert decoder.decode(frame) == []
    except DecodeError as exc:
        assert "h264 decoding failed" in str(exc)

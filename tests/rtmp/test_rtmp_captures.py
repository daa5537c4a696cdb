"""Real publisher captures (offline replays) and live runs against real peers (slow).

Captures in ``captures/`` come from ``make_captures.py``: Debian ffmpeg 5.1 (H.264 +
AAC, digest handshake) and PyAV's bundled FFmpeg 8 (Enhanced RTMP HEVC + AAC and
AV1 + Opus).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from _rtmp_peer import CAPTURES, ffmpeg_cmd, pyav_cmd, replay, run_publisher

import rtmp

MANIFEST = json.loads((CAPTURES / "manifest.json").read_text())
NAMES = sorted(MANIFEST)
AUDIO = {  # (sample rate, channels) of each publisher's audio config
    "ffmpeg51_h264_aac": (44100, 1),
    "pyav_hevc_aac": (48000, 2),
    "pyav_av1_opus": (48000, 2),
}


def capture(name: str) -> bytes:
    return Path(CAPTURES / f"{name}.bin").read_bytes()


def check_publish(
    events: list[rtmp.Event], frames: int, vcodec: str, acodec: str, audio: tuple[int, int]
) -> None:
    """What every real publish must look like once parsed."""
    kinds = [type(e) for e in events]
    assert kinds[0] is rtmp.HandshakeComplete and events[0].digest  # FFmpeg sends digest C1
    assert kinds.count(rtmp.Connected) == 1
    (req,) = [e for e in events if isinstance(e, rtmp.PublishRequested)]
    assert (req.stream_key, req.app) == ("KEY", "live")
    assert isinstance(events[-1], rtmp.StreamEnded)
    assert not [e for e in events if isinstance(e, rtmp.UnsupportedMedia)]

    video = [e for e in events if isinstance(e, rtmp.VideoFrame)]
    vcfg = [e for e in events if isinstance(e, rtmp.VideoConfig)]
    assert len(video) == frames
    assert len(vcfg) == 1 and events.index(vcfg[0]) < events.index(video[0])
    assert {v.codec for v in video} == {vcodec} and vcfg[0].codec == vcodec
    if vcodec == "h264":
        assert vcfg[0].profile in (66, 77, 100) and vcfg[0].nal_length_size == 4
        assert len(vcfg[0].parameter_sets) == 2
    if vcodec == "hevc":
        # VPS, SPS, PPS (+ an SEI array from x265)
        assert len(vcfg[0].parameter_sets) >= 3 and vcfg[0].nal_length_size == 4
    if vcodec == "av1":
        assert vcfg[0].config[0] == 0x81
    keys = [i for i, v in enumerate(video) if v.keyframe]
    assert keys == list(range(0, frames, 30))  # -g 30 / keyint 30
    dts = [v.dts - video[0].dts for v in video]
    assert dts == sorted(dts)
    assert all(abs(d - round(i * 1000 / 30)) <= 1 for i, d in enumerate(dts))  # 30 fps
    assert all(v.pts >= v.dts for v in video)
    assert all(len(v.data) > 0 for v in video)

    acfg = [e for e in events if isinstance(e, rtmp.AudioConfig)]
    audio_frames = [e for e in events if isinstance(e, rtmp.AudioFrame)]
    assert len(acfg) == 1 and acfg[0].codec == acodec
    assert (acfg[0].sample_rate, acfg[0].channels) == audio
    if acodec == "aac":
        assert acfg[0].object_type == 2
    assert audio_frames and {a.codec for a in audio_frames} == {acodec}
    adts = [a.dts for a in audio_frames]
    assert adts == sorted(adts)
    duration = frames / 30 * 1000
    assert duration - 100 <= adts[-1] - adts[0] <= duration + 100


@pytest.mark.parametrize("name", NAMES)
def test_capture_replay(name: str) -> None:
    m = MANIFEST[name]
    check_publish(
        replay(capture(name)), m["video_frames"], m["video_codec"], m["audio_codec"], AUDIO[name]
    )


@pytest.mark.parametrize("name", NAMES)
def test_capture_byte_by_byte_equals_whole(name: str) -> None:
    raw = capture(name)
    assert replay(raw, [1] * len(raw)) == replay(raw)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", range(5))
def test_capture_random_splits_equal_whole(name: str, seed: int) -> None:
    raw = capture(name)
    rng = random.Random(seed)
    sizes = []
    total = 0
    while total < len(raw):
        sizes.append(rng.choice([1, 2, 3, 7, 11, 100, 1000, 1537, 4096, 20000]))
        total += sizes[-1]
    assert replay(raw, sizes) == replay(raw)


# -- live runs against real peers ------------------------------------------------------------

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Debian ffmpeg needed")


@pytest.mark.slow
@needs_ffmpeg
async def test_live_debian_ffmpeg_h264_aac() -> None:
    run = await run_publisher(lambda url: ffmpeg_cmd(url, 3.0))
    assert run.error is None and run.returncode == 0, run.stderr
    check_publish(run.events, 90, "h264", "aac", (44100, 1))
    assert replay(run.raw) == run.events  # a capture replays to the same events


@pytest.mark.slow
@pytest.mark.parametrize(
    ("vcodec", "acodec", "vname", "aname"),
    [("libx265", "aac", "hevc", "aac"), ("libsvtav1", "libopus", "av1", "opus")],
)
async def test_live_pyav_enhanced_rtmp(vcodec: str, acodec: str, vname: str, aname: str) -> None:
    run = await run_publisher(lambda url: pyav_cmd(url, vcodec, acodec, 1.0))
    assert run.error is None and run.returncode == 0, run.stderr
    check_publish(run.events, 30, vname, aname, (48000, 2))

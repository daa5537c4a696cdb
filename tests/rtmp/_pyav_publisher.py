"""Publish a short synthetic stream with PyAV (bundled FFmpeg 8) to an RTMP URL or a file.

Run as a subprocess (PyAV holds the GIL while opening network outputs):
``python _pyav_publisher.py URL VIDEO_CODEC AUDIO_CODEC SECONDS``. Bundled FFmpeg's flv
muxer writes Enhanced RTMP (FourCC) tags on its own for hevc/av1/vp9 video and
opus/flac/ac3 audio; no option is needed.
"""

from __future__ import annotations

import sys
from fractions import Fraction

import av
import numpy as np

WIDTH, HEIGHT, FPS = 160, 96, 30


def main() -> None:
    url, vcodec, acodec, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    out = av.open(url, "w", format="flv")
    v = out.add_stream(vcodec, rate=FPS)
    v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    v.codec_context.gop_size = FPS
    v.codec_context.max_b_frames = 0
    v.time_base = Fraction(1, FPS)
    if vcodec == "libx265":
        v.codec_context.options = {"x265-params": "log-level=error:bframes=0:keyint=30"}
    elif vcodec == "libsvtav1":
        v.codec_context.options = {"preset": "12", "svtav1-params": "keyint=30"}
    rate = 48000
    a = out.add_stream(acodec, rate=rate)
    a.layout = "stereo"
    afmt = a.codec_context.codec.audio_formats[0].name
    frame_size = a.codec_context.frame_size or 960

    n_video = int(seconds * FPS)
    n_audio_samples = int(seconds * rate)
    sample = 0
    for i in range(n_video):
        img = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        img[:, :, 0] = (np.arange(WIDTH)[None, :] + i * 4) % 256
        img[:, :, 1] = (np.arange(HEIGHT)[:, None] * 2) % 256
        img[:, :, 2] = (i * 8) % 256
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = Fraction(1, FPS)
        for pkt in v.encode(frame):
            out.mux(pkt)
        # keep audio roughly interleaved with video
        while sample < min(n_audio_samples, (i + 1) * rate // FPS):
            n = frame_size
            ts = (np.arange(n) + sample) / rate
            tone = (0.2 * np.sin(2 * np.pi * 440 * ts)).astype(np.float32)
            if afmt == "fltp":
                arr = np.stack([tone, tone])
            elif afmt == "flt":
                arr = np.stack([tone, tone], axis=1).reshape(1, -1)
            else:  # s16
                arr = (np.stack([tone, tone], axis=1).reshape(1, -1) * 32767).astype(np.int16)
            af = av.AudioFrame.from_ndarray(arr, format=afmt, layout="stereo")
            af.sample_rate = rate
            af.pts = sample
            af.time_base = Fraction(1, rate)
            for pkt in a.encode(af):
                out.mux(pkt)
            sample += n
    for pkt in v.encode(None):
        out.mux(pkt)
    for pkt in a.encode(None):
        out.mux(pkt)
    out.close()
    print(f"video_frames={n_video}", file=sys.stderr)


if __name__ == "__main__":
    main()

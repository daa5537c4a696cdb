"""Regenerate ``tests/rtmp/captures/*.bin``: raw client->server bytes of real publishers.

Usage: ``.venv/bin/python tests/rtmp/make_captures.py`` (needs Debian ffmpeg and PyAV).
Each capture is recorded by ``_rtmp_peer.run_publisher`` (a trio listener driving
ServerSession, deterministic handshake randomness) and kept small (low resolution,
1-3 s) so byte-by-byte replay tests and the fuzz corpus stay fast. ``manifest.json``
records what each publisher encoded, for the offline tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _rtmp_peer import CAPTURES, ffmpeg_cmd, pyav_cmd, run_publisher

# name -> (command factory, expected video frames, video codec, audio codec)
PUBLISHERS = {
    "ffmpeg51_h264_aac": (lambda url: ffmpeg_cmd(url, 3.0), 90, "h264", "aac"),
    "pyav_hevc_aac": (lambda url: pyav_cmd(url, "libx265", "aac", 1.0), 30, "hevc", "aac"),
    "pyav_av1_opus": (lambda url: pyav_cmd(url, "libsvtav1", "libopus", 1.0), 30, "av1", "opus"),
}


async def main() -> None:
    CAPTURES.mkdir(exist_ok=True)
    manifest = {}
    for name, (make_cmd, frames, vcodec, acodec) in PUBLISHERS.items():
        run = await run_publisher(make_cmd)
        if run.error or run.returncode != 0:
            raise SystemExit(
                f"{name}: publisher failed: {run.error} rc={run.returncode}\n{run.stderr}"
            )
        (CAPTURES / f"{name}.bin").write_bytes(run.raw)
        manifest[name] = {
            "video_frames": frames,
            "video_codec": vcodec,
            "audio_codec": acodec,
            "bytes": len(run.raw),
        }
        print(f"{name}: {len(run.raw)} bytes, {len(run.events)} events")
    (CAPTURES / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    trio.run(main)

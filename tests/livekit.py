"""A real LiveKit server (scripts/livekit-server) and a subscriber that inspects media.

The server binds 127.0.0.1 only, on ports picked free for this run. The subscriber
is the official livekit SDK in an asyncio loop of its own thread: it joins the room
like any viewer and records what arrives (participants, tracks, decoded frame sizes,
frame times, audio level).
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.service import run_asyncio

ROOT = Path(__file__).resolve().parent.parent
API_KEY, API_SECRET = "devkey", "secret" * 6  # livekit-server wants >= 32 characters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_config(redis_address: str, rtmp_port: int = 1935, http_port: int = 8080) -> str:
    """The YAML that makes a livekit-server keep ingresses in Redis and serve the
    Ingress API for its ingress workers (our nodes in cluster mode)."""
    return f"""
redis:
  address: {redis_address}
ingress:
  rtmp_base_url: rtmp://127.0.0.1:{rtmp_port}/x
  whip_base_url: http://127.0.0.1:{http_port}/w
"""


class LiveKitServer:
    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        self.workdir = workdir
        self.extra_config = extra_config  # YAML appended to the config (redis:, ingress:)
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "livekit.log"

    def start(self) -> None:
        binary = subprocess.run([str(ROOT / "scripts" / "livekit-server"), "install"],
                                check=True, capture_output=True, text=True).stdout.strip()
        config = self.workdir / "livekit.yaml"
        config.write_text(f"""
port: {self.port}
bind_addresses: ["127.0.0.1"]
rtc:
  tcp_port: {free_port()}
  udp_port: {free_port()}
  use_external_ip: false
  node_ip: 127.0.0.1
  enable_loopback_candidate: true
keys:
  {API_KEY}: {API_SECRET}
logging:
  level: warn
""" + self.extra_config)
        self.proc = subprocess.Popen([binary, "--config", str(config), "--bind", "127.0.0.1",
                                      "--node-ip", "127.0.0.1"],
                                     stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("livekit-server exited:\n"
                                       + self.log_path.read_text()) from None
                time.sleep(0.1)
        raise RuntimeError("livekit-server did not start:\n" + self.log_path.read_text())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


@dataclass
class Seen:
    """What a subscriber saw in the room."""

    participants: dict[str, dict[str, Any]] = field(default_factory=dict)
    tracks: list[dict[str, Any]] = field(default_factory=list)
    video_sizes: collections.Counter = field(default_factory=collections.Counter)
    video_times: list[float] = field(default_factory=list)
    video_sequence: list[tuple[int, int]] = field(default_factory=list)
    audio_rms: list[float] = field(default_factory=list)
    audio_times: list[float] = field(default_factory=list)
    audio_rate: int = 0
    left: dict[str, float] = field(default_factory=dict)

    def fps(self, skip: float = 1.0) -> float:
        times = [t for t in self.video_times if t >= self.video_times[0] + skip]
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else 0.0


# The SDK (livekit 1.2.1) sometimes aborts while the viewer process exits, after the
# room is left and the figures are printed (a few runs in a hundred). Figures printed
# before that are kept; any other failure is an error.
SDK_EXIT_PANIC = "panic in a function that cannot unwind"


def _run_subscriber(args: list[str], timeout: float) -> dict[str, Any]:
    """Run a viewer process; the JSON object it printed last."""
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    printed = bool(lines) and lines[-1].startswith("{")
    if proc.returncode != 0 and not (printed and SDK_EXIT_PANIC in proc.stderr):
        raise RuntimeError(f"subscriber failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def subscriber_token(room: str, identity: str = "viewer") -> str:
    from livekit import api

    return (api.AccessToken(API_KEY, API_SECRET).with_identity(identity)
            .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=False))
            .to_jwt())


def watch(url: str, room_name: str, seconds: float, *, quality: int | None = None,
          until_left: str | None = None) -> Seen:
    """Join `room_name` for `seconds` in a subscriber process; what arrived.

    With `until_left` the viewer stays until that participant has left the room (at
    most `seconds`), so a slow start of the viewer process on a busy machine does not
    cut the end of the stream off. A process of its own, like a real viewer: the SDK's
    FFI client is process-wide, and a long-lived test process is no place to measure
    frame rates.
    """
    args = [sys.executable, "-m", "tests.livekit", "watch", url, room_name, str(seconds),
            "" if quality is None else str(quality), until_left or ""]
    data = _run_subscriber(args, seconds + 60)
    return Seen(participants=data["participants"], tracks=data["tracks"],
                video_sizes=collections.Counter({tuple(k): v for k, v in data["video_sizes"]}),
                video_times=data["video_times"],
                video_sequence=[tuple(x) for x in data["video_sequence"]],
                audio_rms=data["audio_rms"], audio_times=data["audio_times"],
                audio_rate=data["audio_rate"], left=data["left"])


def _watch_here(url: str, room_name: str, seconds: float, quality: int | None,
                until_left: str | None = None) -> Seen:
    import numpy as np
    from livekit import rtc

    seen = Seen()

    async def main() -> Seen:
        room = rtc.Room()
        tasks = []

        async def video(track: Any) -> None:
            async for event in rtc.VideoStream(track):
                seen.video_sizes[(event.frame.width, event.frame.height)] += 1
                seen.video_sequence.append((event.frame.width, event.frame.height))
                seen.video_times.append(time.monotonic())

        async def audio(track: Any) -> None:
            async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
                seen.audio_rate = event.frame.sample_rate
                pcm = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
                seen.audio_rms.append(float(np.sqrt((pcm ** 2).mean())) if pcm.size else 0.0)
                seen.audio_times.append(time.monotonic())

        @room.on("participant_connected")
        def joined(p: Any) -> None:
            seen.participants[p.identity] = {"name": p.name, "kind": p.kind,
                                             "attributes": dict(p.attributes),
                                             "metadata": p.metadata}

        @room.on("participant_disconnected")
        def left(p: Any) -> None:
            seen.left[p.identity] = time.monotonic()

        @room.on("track_subscribed")
        def subscribed(track: Any, pub: Any, participant: Any) -> None:
            seen.tracks.append({"kind": track.kind, "name": pub.name, "source": pub.source,
                                "simulcast": pub.simulcasted, "identity": participant.identity})
            if track.kind == rtc.TrackKind.KIND_VIDEO:
                if quality is not None:
                    pub.set_video_quality(quality)
                tasks.append(asyncio.ensure_future(video(track)))
            else:
                tasks.append(asyncio.ensure_future(audio(track)))

        await room.connect(url, subscriber_token(room_name))
        for p in room.remote_participants.values():
            joined(p)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until_left is not None and until_left in seen.left:
                break
            await asyncio.sleep(0.1)
        await room.disconnect()
        for task in tasks:
            task.cancel()
        return seen

    return run_asyncio(main())


@dataclass
class LayerSeen:
    """What a subscriber got during the hold period of one selected simulcast layer.

    Frame sizes are counted from the decoded frames the app sees; frame and byte counts
    are the receiver's own WebRTC stats (`get_stats()`) at the start and end of the hold,
    so frame rate and bitrate do not depend on how promptly this process reads frames.
    """

    sizes: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0
    frames_decoded: int = 0
    bytes_received: int = 0  # RTP payload bytes, what the encoder's bitrate targets

    @property
    def fps(self) -> float:
        return self.frames_decoded / self.seconds if self.seconds > 0 else 0.0

    @property
    def kbps(self) -> float:
        return self.bytes_received * 8 / 1000 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"sizes": [[list(k), v] for k, v in self.sizes.items()],
                "seconds": self.seconds, "frames_decoded": self.frames_decoded,
                "bytes_received": self.bytes_received}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerSeen:
        return cls(collections.Counter({tuple(k): v for k, v in data["sizes"]}),
                   data["seconds"], data["frames_decoded"], data["bytes_received"])


def watch_layer_stats(url: str, room_name: str, qualities: dict[str, int], *,
                      settle: float = 2.0, hold: float = 2.5, ramp_to: int = 0,
                      ramp_most: float = 20.0) -> dict[str, LayerSeen]:
    """Subscribe once (in a subscriber process) and select each simulcast layer in
    turn; what arrived per layer: frame sizes, frame rate and bitrate.

    `settle` seconds after each selection are not counted (the SFU switches at the next
    keyframe of the new layer), then `hold` seconds are. With `ramp_to` (bit/s), the
    first quality stays selected until 90% of that bitrate arrives (at most `ramp_most`
    seconds) before anything is counted: the publisher's bandwidth estimate starts
    near 1 Mbit/s, and we saw a 1080p top layer take ~15 s to reach its rate, with
    plateaus on the way that a "bitrate stopped growing" rule mistook for the end.
    """
    budget = 20 + 2 + (ramp_most if ramp_to else 0) + len(qualities) * (settle + hold) + 60
    data = _run_subscriber([sys.executable, "-m", "tests.livekit", "layers", url, room_name,
                            json.dumps(qualities), str(settle), str(hold), str(ramp_to),
                            str(ramp_most)], budget)
    return {name: LayerSeen.from_json(layer) for name, layer in data.items()}


def _watch_layers_here(url: str, room_name: str, qualities: dict[str, int],
                       settle: float = 2.0, hold: float = 2.5, start_after: float = 2.0,
                       ramp_to: int = 0, ramp_most: float = 20.0) -> dict[str, LayerSeen]:
    from livekit import rtc

    seen = {name: LayerSeen() for name in qualities}

    async def receiver_counts(track: Any) -> tuple[float, int, int] | None:
        """(stats time in s, frames decoded, payload bytes) of the track's receiver."""
        for stats in await track.get_stats():
            if stats.WhichOneof("stats") == "inbound_rtp":
                rtp = stats.inbound_rtp  # its timestamp is in microseconds
                return (rtp.rtc.timestamp / 1e6, rtp.inbound.frames_decoded,
                        rtp.inbound.bytes_received)
        return None

    async def until_bitrate(track: Any, bits_per_second: float, most: float) -> None:
        """Wait until the last 2 s brought `bits_per_second` (or `most` s have passed)."""
        samples = [await receiver_counts(track)]
        deadline = time.monotonic() + most
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            samples.append(await receiver_counts(track))
            first, last = samples[-3] if len(samples) >= 3 else None, samples[-1]
            if first is None or last is None or last[0] <= first[0]:
                continue  # a 2 s window needs three samples of the receiver
            if (last[2] - first[2]) * 8 / (last[0] - first[0]) >= bits_per_second:
                return

    async def main() -> dict[str, LayerSeen]:
        room = rtc.Room()
        phase: list[str | None] = [None]
        subscribed_video: list[tuple[Any, Any]] = []  # (publication, track)
        tasks = []

        async def video(track: Any) -> None:
            async for event in rtc.VideoStream(track):
                if phase[0] is not None:
                    seen[phase[0]].sizes[(event.frame.width, event.frame.height)] += 1

        @room.on("track_subscribed")
        def subscribed(track: Any, pub: Any, participant: Any) -> None:
            if track.kind == rtc.TrackKind.KIND_VIDEO:
                subscribed_video.append((pub, track))
                tasks.append(asyncio.ensure_future(video(track)))

        def select(quality: int) -> None:
            """Ask for a layer; a single-layer track has none to choose (the SDK raises)."""
            if subscribed_video and subscribed_video[0][0].simulcasted:
                subscribed_video[0][0].set_video_quality(quality)

        await room.connect(url, subscriber_token(room_name, "layer-viewer"))
        deadline = time.monotonic() + 20
        while not subscribed_video and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if subscribed_video and ramp_to > 0:  # the ramp is the start-up wait
            select(next(iter(qualities.values())))
            await until_bitrate(subscribed_video[0][1], 0.9 * ramp_to, ramp_most)
        else:
            await asyncio.sleep(start_after)
        for name, quality in qualities.items():
            select(quality)
            phase[0] = None
            await asyncio.sleep(settle)  # the SFU switches at the next keyframe
            track = subscribed_video[0][1] if subscribed_video else None
            before = await receiver_counts(track) if track else None
            phase[0] = name
            await asyncio.sleep(hold)
            phase[0] = None
            after = await receiver_counts(track) if track else None
            if before and after:
                seen[name].seconds = after[0] - before[0]
                seen[name].frames_decoded = after[1] - before[1]
                seen[name].bytes_received = after[2] - before[2]
        await room.disconnect()
        for task in tasks:
            task.cancel()
        return seen

    return run_asyncio(main())


def _main(argv: list[str]) -> None:
    """`python -m tests.livekit watch URL ROOM SECONDS QUALITY|"" UNTIL_LEFT|""` or
    `... layers URL ROOM QUALITIES_JSON SETTLE HOLD RAMP_TO RAMP_MOST`: one JSON line
    out."""
    if argv[0] == "layers":
        _, url, room, qualities, settle, hold, ramp_to, ramp_most = argv
        layers = _watch_layers_here(url, room, json.loads(qualities), float(settle),
                                    float(hold), ramp_to=int(ramp_to),
                                    ramp_most=float(ramp_most))
        print(json.dumps({name: seen.to_json() for name, seen in layers.items()}))
        return
    _, url, room, seconds, quality, until_left = argv
    seen = _watch_here(url, room, float(seconds), int(quality) if quality else None,
                       until_left or None)
    print(json.dumps({
        "participants": seen.participants, "tracks": seen.tracks,
        "video_sizes": [[list(k), v] for k, v in seen.video_sizes.items()],
        "video_times": seen.video_times, "video_sequence": seen.video_sequence,
        "audio_rms": seen.audio_rms, "audio_times": seen.audio_times,
        "audio_rate": seen.audio_rate, "left": seen.left,
    }))


if __name__ == "__main__":
    _main(sys.argv[1:])

"""Audio/video sync, RTMP publisher -> service -> LiveKit room -> subscriber, as a viewer
experiences it.

Lip sync is a property of the whole chain, not of any one stage: the worker publishes
video and audio through different paths of its own (decode -> lag gate -> frame-rate
limiter -> scale and libx264 per layer, each layer in its own thread -> RTP; lag gate
-> AAC decode -> resample -> 20 ms Opus frames -> RTP), and the subscriber plays each
track out of its own jitter buffer. So the measurement is
made where a viewer is:

  * the source: Debian's ffmpeg publishes, in real time (-re), a black 1280x720 30 fps
    picture that flashes for 100 ms at the start of every second, and silence that
    beeps for the same 100 ms from the same media instant. libx264 veryfast/zerolatency,
    no B-frames, + AAC, FLV over RTMP. Each second carries its number modulo 6 in both
    signals: the flash's grey level (luma 60, 95, ... 235) and the beep's pitch (500,
    1000, ... 3000 Hz), so a flash is paired with the beep of the same second even when
    the two are more than half a second apart (they were, in the first runs: with a
    plain once-a-second marker such offsets alias to the neighbouring second). The beep
    is computed per sample (aevalsrc), so it starts exactly on the second. Before the
    run the same encode is written to a file and decoded, to check that flash and beep
    coincide in the stream's own timestamps and that the levels and pitches read back;
  * the real service (child process) and a real livekit-server on 127.0.0.1, an RTMP
    ingress created with the official livekit-api client (bench/latency.py's harness);
  * the subscriber: the livekit SDK in a process of its own (like a viewer, and so the
    SDK's process-wide FFI client does not share a core with anything of ours). It asks
    for the HIGH simulcast layer and records the wall-clock arrival of every flash onset
    (mean luma of the decoded picture rises above black) and every beep onset (the first
    sample above the threshold in the 10 ms chunks of rtc.AudioStream, 48 kHz mono),
    with the grey level and the pitch (zero crossings) that say which second it is.

offset = audio onset - video onset of the same second (positive: audio late). The video
onset is known to a frame (33 ms at 30 fps, the picture arriving at any point in it);
the audio onset to the 10 ms chunk it arrives in, refined to the sample inside it. The
first --warmup seconds after the first picture are skipped (simulcast ramp-up, first
keyframe).

Run: .venv/bin/python bench/avsync.py [--seconds 30] [--preset H264_720P_30FPS_3_LAYERS]
No assertions: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.latency import (
    cpu_seconds,
    create_ingress,
    inbound_stats,
    per_frame_ms,
    print_command,
    run_options,
    start_harness,
)
from tests.service import session_workers

W, H, FPS = 1280, 720, 30
RATE = 48_000
FLASH = 0.1  # seconds of flash and beep at the start of every second
IDS = 6  # seconds are numbered modulo this: offsets up to +-3 s pair unambiguously
LEVELS = (60, 95, 130, 165, 200, 235)  # flash luma per second number (limited range)
PITCH = 500  # Hz; second number k beeps at (k + 1) * PITCH
LUMA_THRESHOLD = 38.0  # between black (16) and the dimmest flash
AMPLITUDE = 0.125  # of full scale, the beep's peak
AMPLITUDE_THRESHOLD = 1_000  # int16, for "this sample is part of a beep"
QUIET_BEFORE_ONSET = 0.3  # seconds of silence (or darkness) that make the next one an onset
VIEWER = "avsync-viewer"

# ITU-R BT.1359-1, for broadcast: audio early by more than 45 ms or late by more than
# 125 ms is detectable; beyond 90 ms early / 185 ms late it is unacceptable.
DETECTABLE = (-45, 125)
ACCEPTABLE = (-90, 185)


def ffmpeg_args(output: str, seconds: float, *, realtime: bool) -> list[str]:
    """The flash/beep source, encoded as the run publishes it (`output`: URL or file)."""
    gate = f"lt(mod(t,1),{FLASH})"
    boxes = []
    for k, luma in enumerate(LEVELS):
        grey = round((luma - 16) * 255 / 219)  # limited-range luma of an RGB grey
        boxes.append(f"drawbox=x=0:y=0:w=iw:h=ih:color=0x{grey:02x}{grey:02x}{grey:02x}"
                     f":t=fill:enable='{gate}*eq(mod(floor(t),{IDS}),{k})'")
    video = f"color=black:size={W}x{H}:rate={FPS}," + ",".join(boxes)
    audio = (f"aevalsrc='if({gate},{AMPLITUDE}*sin(2*PI*{PITCH}*(1+mod(floor(t),{IDS}))*t),0)'"
             f":s={RATE}:n={RATE // 100}")
    re = ["-re"] if realtime else []
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            *re, "-f", "lavfi", "-i", video, *re, "-f", "lavfi", "-i", audio,
            "-t", f"{seconds:g}",
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-bf", "0",
            "-g", "60", "-pix_fmt", "yuv420p", "-b:v", "2500k",
            "-c:a", "aac", "-ac", "1", "-b:a", "128k", "-f", "flv", output]


# -- onsets -----------------------------------------------------------------------------------


def flash_id(luma: float) -> int | None:
    """The second number a flash's grey level stands for, if it is clearly one."""
    k = int(np.argmin([abs(luma - level) for level in LEVELS]))
    return k if abs(luma - LEVELS[k]) < (LEVELS[1] - LEVELS[0]) / 2 else None


def beep_id(hz: float) -> int | None:
    """The second number a beep's pitch stands for, if it is clearly one."""
    k = round(hz / PITCH) - 1
    return k if 0 <= k < IDS and abs(hz - (k + 1) * PITCH) < PITCH / 4 else None


def pitch(samples: np.ndarray, rate: int) -> float | None:
    """Frequency from the zero crossings of a stretch of tone (None if too short)."""
    if samples.size < rate // 500:  # under 2 ms: a couple of crossings say little
        return None
    crossings = np.count_nonzero(np.diff(np.signbit(samples)))
    return crossings / 2 / (samples.size / rate)


class Onsets:
    """Rising edges of a signal, each at least QUIET_BEFORE_ONSET after the last activity,
    with the measurements (grey level, pitch) taken while it lasts.

    A flash is 3 frames and a beep 10 chunks: only the first of them is an onset, and
    the hold-off keeps a dip inside one flash or beep (a coding artefact) from counting
    as a second onset.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.arrivals: list[float] = []  # of the picture or chunk holding the onset
        self.marks: list[list[float]] = []
        self._last_active = -1e9

    def active(self, start: float, end: float | None = None, mark: float | None = None,
               arrival: float | None = None) -> None:
        """The signal is on from `start` (to `end`, if it ends inside the observation)."""
        if start - self._last_active > QUIET_BEFORE_ONSET:
            self.times.append(start)
            self.arrivals.append(start if arrival is None else arrival)
            self.marks.append([])
        if mark is not None:
            self.marks[-1].append(mark)
        self._last_active = start if end is None else end

    def events(self, identify: Callable[[float], int | None]) -> list[list[Any]]:
        """[onset, arrival, second number or None, median mark] per onset."""
        out = []
        for at, arrival, marks in zip(self.times, self.arrivals, self.marks, strict=True):
            mark = float(np.median(marks)) if marks else None
            out.append([at, arrival, identify(mark) if mark is not None else None, mark])
        return out


def source_check() -> str:
    """Encode the source to a file and decode it: where flash and beep start in the
    stream's own timestamps (what the service receives), so an offset measured at the
    viewer can be told from one the publisher put in; and whether levels and pitches
    read back."""
    import av

    with tempfile.TemporaryDirectory(prefix="bench-avsync-") as tmp:
        path = Path(tmp) / "source.flv"
        subprocess.run(ffmpeg_args(str(path), IDS + 1.2, realtime=False), check=True)
        flashes, beeps = Onsets(), Onsets()
        with av.open(str(path)) as container:
            for frame in container.decode(video=0, audio=0):
                at = float(frame.pts * frame.time_base)
                if isinstance(frame, av.VideoFrame):
                    luma = float(frame.to_ndarray()[:frame.height].mean())  # Y of yuv420p
                    if luma > LUMA_THRESHOLD:
                        flashes.active(at, mark=luma)
                    continue
                pcm = frame.to_ndarray()[0]
                loud = np.flatnonzero(np.abs(pcm) > AMPLITUDE_THRESHOLD / 32768)
                if loud.size:
                    beeps.active(at + loud[0] / frame.sample_rate,
                                 at + loud[-1] / frame.sample_rate,
                                 pitch(pcm[loud[0]:loud[-1] + 1], frame.sample_rate))
    offsets, _, _ = pair(flashes.events(flash_id), beeps.events(beep_id))
    # the first second is the encoder's priming, where the beep starts with the stream
    return (f"offsets after the first second {', '.join(f'{o * 1000:+.1f}' for o in offsets[1:])}"
            f" ms (FLV timestamps are whole ms); flash luma read "
            + ", ".join(f"{m:.0f}" for *_, m in flashes.events(flash_id))
            + " (sent " + ", ".join(str(v) for v in LEVELS) + "), beep Hz read "
            + ", ".join(f"{m:.0f}" for *_, m in beeps.events(beep_id)))


# -- the subscriber (a child process) ---------------------------------------------------------


def watch(url: str, room_name: str, seconds: float, warmup: float) -> dict[str, Any]:
    """Join the room for at most `seconds` (less if the source leaves); what arrived.

    Times are wall-clock seconds (time.time()), taken when a picture or a chunk arrives,
    before looking at it.
    """
    from livekit import rtc

    from tests.livekit import subscriber_token

    flashes, beeps = Onsets(), Onsets()
    seen: dict[str, Any] = {"frames": 0, "chunks": 0, "sizes": Counter(),
                            "chunk_samples": Counter(), "luma": [255.0, 0.0], "peak": 0,
                            "first_frame": None, "video_stats": [], "audio_stats": []}

    async def video(track: Any) -> None:
        async for event in rtc.VideoStream(track, format=rtc.VideoBufferType.I420):
            at = time.time()
            frame = event.frame
            luma = np.frombuffer(frame.data, np.uint8, count=frame.width * frame.height)
            level = float(luma.reshape(frame.height, frame.width)[::8, ::8].mean())
            if seen["first_frame"] is None:
                seen["first_frame"] = at
            seen["frames"] += 1
            seen["sizes"][f"{frame.width}x{frame.height}"] += 1
            seen["luma"] = [min(seen["luma"][0], level), max(seen["luma"][1], level)]
            if level > LUMA_THRESHOLD:
                flashes.active(at, mark=level)

    async def audio(track: Any) -> None:
        async for event in rtc.AudioStream(track, sample_rate=RATE, num_channels=1):
            at = time.time()
            frame = event.frame
            pcm = np.frombuffer(frame.data, np.int16).astype(np.int32)
            seen["chunks"] += 1
            seen["chunk_samples"][frame.samples_per_channel] += 1
            loud = np.flatnonzero(np.abs(pcm) > AMPLITUDE_THRESHOLD)
            if loud.size:
                seen["peak"] = max(seen["peak"], int(np.abs(pcm).max()))
                beeps.active(at + loud[0] / frame.sample_rate,
                             at + loud[-1] / frame.sample_rate,
                             pitch(pcm[loud[0]:loud[-1] + 1], frame.sample_rate), arrival=at)

    async def main() -> None:
        room = rtc.Room()
        tracks: dict[str, Any] = {}
        tasks: list[asyncio.Task[None]] = []
        left = asyncio.Event()

        @room.on("track_subscribed")
        def subscribed(track: Any, pub: Any, participant: Any) -> None:
            if track.kind == rtc.TrackKind.KIND_VIDEO:
                pub.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
                tracks["video"] = track
                tasks.append(asyncio.ensure_future(video(track)))
            else:
                tracks["audio"] = track
                tasks.append(asyncio.ensure_future(audio(track)))

        @room.on("participant_disconnected")
        def gone(participant: Any) -> None:
            left.set()

        await room.connect(url, subscriber_token(room_name, VIEWER))
        print("connected", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not left.is_set():
            await asyncio.sleep(0.05)
            first = seen["first_frame"]
            if not seen["video_stats"] and first is not None and time.time() >= first + warmup:
                await snapshot(tracks)
        await snapshot(tracks)
        await room.disconnect()
        for task in tasks:
            task.cancel()

    async def snapshot(tracks: dict[str, Any]) -> None:
        """libwebrtc's cumulative receive counters, at the end of the warm-up and at the
        end, so the figures cover the measured window."""
        for kind in ("video", "audio"):
            track = tracks.get(kind)
            seen[f"{kind}_stats"].append(await inbound_stats(track) if track else {})

    asyncio.run(main())
    return {**seen, "flashes": flashes.events(flash_id), "beeps": beeps.events(beep_id)}


# -- the run ----------------------------------------------------------------------------------


def pair(flashes: list[list[Any]], beeps: list[list[Any]]
         ) -> tuple[list[float], list[float], int]:
    """Offsets (s) from each flash to the beep of the same second number within IDS/2 s:
    from the beep's onset, and from the arrival of the chunk holding it; and how many
    flashes had no such beep (or no readable grey level)."""
    offsets, chunk_offsets, unpaired = [], [], 0
    for flash, _, k, _ in flashes:
        same = [b for b in beeps if k is not None and b[2] == k
                and abs(b[0] - flash) < IDS / 2]
        if not same:
            unpaired += 1
            continue
        beep = min(same, key=lambda b: abs(b[0] - flash))
        offsets.append(beep[0] - flash)
        chunk_offsets.append(beep[1] - flash)
    return offsets, chunk_offsets, unpaired


def describe(offsets_ms: np.ndarray) -> str:
    """Signed median (which way sync is off) and abs() spread (how far, how steadily)."""
    size = np.abs(offsets_ms)
    return (f"median {np.median(offsets_ms):+.0f} ms, |offset| median "
            f"{np.median(size):.0f} ms, p95 {np.percentile(size, 95):.0f} ms; min "
            f"{offsets_ms.min():+.0f} ms, max {offsets_ms.max():+.0f} ms, mean "
            f"{offsets_ms.mean():+.0f} ms, stdev {offsets_ms.std():.0f} ms")


def verdict(offsets_ms: np.ndarray) -> str:
    """Where the median falls against ITU-R BT.1359's thresholds."""
    median = float(np.median(offsets_ms))
    early, late = DETECTABLE
    within = [o for o in offsets_ms if ACCEPTABLE[0] <= o <= ACCEPTABLE[1]]
    return (f"ITU-R BT.1359 (audio early {-early} ms / late {late} ms detectable, "
            f"{-ACCEPTABLE[0]} / {ACCEPTABLE[1]} ms acceptable): median "
            f"{'undetectable' if early <= median <= late else 'DETECTABLE'}; "
            f"{len(within)}/{len(offsets_ms)} pairs acceptable")


def busy_jiffies() -> tuple[int, int, int]:
    """(niced, all other busy, total) jiffies from /proc/stat: shows what else (the
    niced fuzzers, say) ran on the machine during the window."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    busy = user + system + irq + softirq + steal
    return nice, busy, busy + nice + idle + iowait


def run(args: argparse.Namespace) -> None:
    """Service, room, viewer, then the publisher; figures once the source has ended."""
    from livekit.protocol import ingress as pb

    from relay.worker.layers import DEFAULT_VIDEO_PRESET

    preset = (pb.IngressVideoEncodingPreset.Value(args.preset) if args.preset
              else DEFAULT_VIDEO_PRESET)
    print(f"source check (same encode to a file): {source_check()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-avsync-") as tmp:
        livekit, service = start_harness(Path(tmp))
        procs: list[subprocess.Popen[str]] = []
        try:
            room = "bench-avsync"
            info = create_ingress(service, room, preset if args.preset else None)
            publish_for = args.warmup + args.seconds + 3  # + connect, publish, first frame
            viewer = subprocess.Popen(
                [sys.executable, __file__, "--watch", livekit.url, room,
                 "--seconds", str(publish_for + 30), "--warmup", str(args.warmup)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(viewer)
            assert viewer.stdout is not None
            if viewer.stdout.readline().strip() != "connected":
                raise RuntimeError(f"subscriber failed: {viewer.communicate()[1][-2000:]}")
            url = f"rtmp://{service.rtmp_addr}/live/{info.stream_key}"
            publisher = subprocess.Popen(ffmpeg_args(url, publish_for, realtime=True),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True)
            procs.append(publisher)
            assert service.proc is not None and livekit.proc is not None
            # CPU and machine load over the middle of the run, after start-up
            time.sleep(args.warmup + 3)
            pids = {"service": service.proc.pid, "livekit-server": livekit.proc.pid,
                    "ffmpeg": publisher.pid, "subscriber": viewer.pid}
            pids.update({f"worker{i or ''}": w
                         for i, w in enumerate(session_workers(service.proc.pid))})
            cpu0, jiffies0, t0 = ({k: cpu_seconds(p) for k, p in pids.items()},
                                  busy_jiffies(), time.monotonic())
            time.sleep(args.seconds - 1)
            cpu1, jiffies1, t1 = ({k: cpu_seconds(p) for k, p in pids.items()},
                                  busy_jiffies(), time.monotonic())
            _, publish_err = publisher.communicate(timeout=publish_for + 30)
            out, err = viewer.communicate(timeout=60)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            service.stop()
            livekit.stop()
        drops = [line for line in service.log().splitlines() if "dropp" in line]

    if publisher.returncode != 0:
        print(f"ffmpeg exited {publisher.returncode}: {publish_err.strip()[-2000:]}")
    if viewer.returncode != 0:
        print(f"subscriber exited {viewer.returncode}: {err.strip()[-2000:]}")
    if not out.strip().endswith("}"):  # it died before reporting; after, its figures stand
        return
    seen = json.loads(out.strip().splitlines()[-1])
    report(args, pb.IngressVideoEncodingPreset.Name(preset), seen)
    span = t1 - t0
    print("CPU over the window (% of one core): " + ", ".join(
        f"{k} {(cpu1[k] - cpu0[k]) / span * 100:.0f}" for k in pids))
    niced, busy, total = (b - a for a, b in zip(jiffies0, jiffies1, strict=True))
    print(f"machine over the window ({os.cpu_count()} cores): niced processes "
          f"{niced / total * 100:.0f}%, everything else {busy / total * 100:.0f}% of all "
          f"cores; load average {os.getloadavg()[0]:.2f}")
    if drops:
        print("service log mentions drops: " + " | ".join(drops[-3:]))


def report(args: argparse.Namespace, preset_name: str, seen: dict[str, Any]) -> None:
    """Print the offsets in the measured window and the subscriber's own view of it."""
    print(f"preset {preset_name}; source {W}x{H} {FPS} fps libx264 veryfast zerolatency, "
          f"no B-frames, 2.5 Mbit/s + AAC 48 kHz mono; flash and beep {FLASH * 1000:g} ms "
          f"every second, numbered modulo {IDS} by grey level and pitch")
    if seen["first_frame"] is None:
        print("no video frame reached the subscriber")
        return
    begin = seen["first_frame"] + args.warmup
    flashes = [f for f in seen["flashes"] if begin <= f[0] < begin + args.seconds]
    offsets, chunk_offsets, unpaired = pair(flashes, seen["beeps"])
    unread = sum(1 for events in (seen["flashes"], seen["beeps"]) for e in events
                 if e[2] is None)
    print(f"received {seen['frames']} pictures ("
          + ", ".join(f"{k} x{v}" for k, v in Counter(seen["sizes"]).most_common())
          + f"), {seen['chunks']} audio chunks of "
          + "/".join(str(k) for k in seen["chunk_samples"]) + " samples; mean luma "
          f"{seen['luma'][0]:.0f}..{seen['luma'][1]:.0f}, beep peak {seen['peak']}")
    print(f"measured {args.seconds:g} s after a {args.warmup:g} s warm-up: {len(flashes)} "
          f"flashes, {len(offsets)} paired with the beep of the same second, {unpaired} "
          f"not; in the whole run {len(seen['flashes'])} flashes and {len(seen['beeps'])} "
          f"beeps, {unread} of them with an unreadable grey level or pitch")
    if not offsets:
        return
    ms = np.array(offsets) * 1000
    print(f"A/V OFFSET (audio - video, + = audio late): {describe(ms)}")
    print(f"  with the audio onset at its 10 ms chunk's arrival (no refinement): median "
          f"{np.median(np.array(chunk_offsets) * 1000):+.0f} ms")
    print("  in order: " + " ".join(f"{o:+.0f}" for o in ms))
    print(f"  resolution: video {1000 / FPS:.0f} ms frames (the subscriber sees a flash "
          f"with the first frame at or after its onset), audio 10 ms chunks")
    print(f"  {verdict(ms)}")
    video, audio = seen["video_stats"], seen["audio_stats"]
    emitted = "jitter_buffer_emitted_count"
    print(f"subscriber jitter buffers over the window: video "
          f"{per_frame_ms(video, 'jitter_buffer_delay', emitted)} ms per frame (target "
          f"{per_frame_ms(video, 'jitter_buffer_target_delay', emitted)} ms), audio "
          f"{per_frame_ms(audio, 'jitter_buffer_delay', emitted)} ms per sample (target "
          f"{per_frame_ms(audio, 'jitter_buffer_target_delay', emitted)} ms); video decode "
          f"{per_frame_ms(video, 'total_decode_time', 'frames_decoded')} ms/frame")


def main() -> None:
    parser = run_options(__doc__.split("\n", 1)[0])
    parser.add_argument("--watch", nargs=2, metavar=("URL", "ROOM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch:  # the subscriber child
        print(json.dumps(watch(*args.watch, args.seconds, args.warmup)), flush=True)
        return
    print_command()
    run(args)


if __name__ == "__main__":
    main()

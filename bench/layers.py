"""Every simulcast layer a session asks for, beside what a LiveKit subscriber receives.

The session worker encodes each layer itself (relay/worker/encode.py) and publishes
exactly the layers `fit_layers` makes of the ingress' options (relay/worker/layers.py,
REFERENCE.md §5): their sizes and bitrates, at the encoding's frame rate. This
measures that the room delivers what was asked, for every video preset and the two
custom option sets of tests/test_layers_e2e.py (`CASES`: H.264 with 2 layers, VP8
with 3): a session worker (relay/worker/main.py) is fed a 1920x1080 30 fps H.264 +
AAC source in real time (larger than every top layer, so no layer is limited by the
source; with noise, like the e2e test's, so that every layer's encoder reaches its
rate) and publishes into a real livekit-server; a subscriber process selects each
asked layer in turn (`set_video_quality`, HIGH first) and reports, per layer, the
frame size it decoded and the frame rate and bitrate from its receiver's WebRTC stats
over the hold period. tests/test_layers_e2e.py asserts the same comparison (within
4 px, >= 90% of the frame rate, +/- 20% of the bitrate); this prints it.

Run: .venv/bin/python bench/layers.py [--cases NAME,...] [--hold 4] [--settle 2]
Prints a markdown table; no assertions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit.protocol import ingress as pb
from livekit.protocol import models

import rtmp
from bench.sessions import feed
from bench.transcode import source_and_server
from relay.service.ingest.tokens import participant_token
from relay.service.ingest.worker_client import SessionWorker, open_session_worker
from relay.wire import Start
from relay.worker.layers import LayerSpec, fit_layers, video_encoding
from tests.livekit import API_KEY, API_SECRET, ROOT, LayerSeen, LiveKitServer, watch_layer_stats
from tests.test_layers_e2e import CASES

SOURCE = (1920, 1080)  # make_source(): 1080p30, above every case's top layer
NAMES = {models.VideoQuality.LOW: "LOW", models.VideoQuality.MEDIUM: "MEDIUM",
         models.VideoQuality.HIGH: "HIGH"}
# The SDK's subscriber process now and then aborts as it exits (a Rust panic, "panic in a
# function that cannot unwind", 4 times in ~70 runs): one more subscriber then.
SUBSCRIBER_ATTEMPTS = 2
# seconds on HIGH at most before measuring: the SFU ramps up what it forwards to a new
# subscriber as its estimate of the subscriber's bandwidth grows
RAMP_MOST = 20.0


def make_source(path: Path) -> None:
    """10 s of 1080p30 H.264 + AAC with the detail and motion of tests/test_layers_e2e.py's
    source (testsrc2 alone is too easy: the layers' encoders undershoot their rates)."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size={SOURCE[0]}x{SOURCE[1]}:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "10",
                    "-vf", "noise=alls=12:allf=t", "-c:v", "libx264", "-preset", "ultrafast",
                    "-tune", "zerolatency", "-bf", "0", "-g", "30", "-b:v", "8000k",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-f", "flv",
                    str(path)], check=True)


def asked(options: pb.IngressVideoOptions) -> list[tuple[str, LayerSpec, float]]:
    """(quality name, layer fitted to the source, frame rate) of every layer the session
    publishes, HIGH first."""
    encoding = video_encoding(options)
    return [(NAMES[layer.quality], layer, encoding.frame_rate)
            for layer in reversed(fit_layers(encoding, *SOURCE))]


async def measure(livekit: LiveKitServer, events: list[rtmp.Event], room: str,
                  options: pb.IngressVideoOptions, settle: float, hold: float
                  ) -> tuple[dict[str, LayerSeen], str]:
    """Run one session worker with `options` and a layer-selecting subscriber on it;
    what the subscriber got per asked layer, and why the worker failed if it did.

    Nothing is counted until HIGH arrives at 90% of the top layer's bitrate (or
    RAMP_MOST has passed): the figures are for a session past its bandwidth ramp. A
    single-layer encoding is published without simulcast: only HIGH is selected.
    """
    layers = asked(options)
    top = layers[0][1]
    qualities = {name: layer.quality for name, layer, _ in layers}
    info = pb.IngressInfo(ingress_id="IN_layers", room_name=room,
                          participant_identity="bench", input_type=pb.IngressInput.RTMP_INPUT,
                          video=options)
    start = Start(livekit.url, participant_token(API_KEY, API_SECRET, info, "RT_layers"),
                  info.SerializeToString())
    async with open_session_worker(start) as worker, trio.open_nursery() as nursery:
        nursery.start_soon(feed, worker, events)
        nursery.start_soon(drain_reports, worker)
        for attempt in range(SUBSCRIBER_ATTEMPTS):
            try:
                seen = await trio.to_thread.run_sync(lambda: watch_layer_stats(
                    livekit.url, room, qualities, settle=settle, hold=hold,
                    ramp_to=top.bitrate, ramp_most=RAMP_MOST))
                break
            except RuntimeError as exc:  # the subscriber process died
                if attempt + 1 == SUBSCRIBER_ATTEMPTS or worker.exited.is_set():
                    raise
                print(f"{room}: {str(exc).strip().splitlines()[-1]}; subscribing again",
                      file=sys.stderr)
        nursery.cancel_scope.cancel()
    return seen, worker.failure


async def drain_reports(worker: SessionWorker) -> None:
    """Read the worker's state reports: a full report queue would stall the worker."""
    async for _ in worker.reports:
        pass


def describe_ask(layer: LayerSpec, fps: float) -> str:
    return f"{layer.width}x{layer.height} | {fps:g} | {layer.bitrate / 1000:,.0f}"


def describe_seen(seen: LayerSeen | None, failure: str) -> str:
    """Delivered size (the one most frames had; others listed) | fps | kbit/s."""
    if failure:
        return f"session failed: {failure} | - | -"
    if seen is None or not seen.sizes:
        return "no frames | - | -"
    (w, h), _ = seen.sizes.most_common(1)[0]
    others = [f"{ow}x{oh}: {n}" for (ow, oh), n in seen.sizes.most_common()[1:]]
    size = f"{w}x{h}" + (f" (also {', '.join(others)} frames)" if others else "")
    return f"{size} | {seen.fps:.1f} | {seen.kbps:,.0f}"


def versions() -> str:
    """The server's version and the subscriber's SDK version (printed with the table)."""
    server = subprocess.run([str(ROOT / "scripts" / "livekit-server"), "install"],
                            check=True, capture_output=True, text=True).stdout.strip()
    version = subprocess.run([server, "--version"], capture_output=True,
                             text=True).stdout.strip()
    return (f"{version}; subscriber: livekit (python SDK) "
            f"{importlib.metadata.version('livekit')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", "--presets", dest="cases", default=",".join(CASES),
                        help="comma-separated case names: preset names and the custom "
                             "option sets of tests/test_layers_e2e.py (default: all)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds after each layer selection that are not counted")
    parser.add_argument("--hold", type=float, default=4.0,
                        help="seconds each layer is measured")
    args = parser.parse_args()
    chosen = args.cases.split(",")
    unknown = [name for name in chosen if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    print("command:", " ".join(sys.argv))
    print(versions())
    rows = ["| case | layer | asked size | asked fps | asked kbit/s | delivered size "
            "| delivered fps | delivered kbit/s |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp, source_and_server(Path(tmp), make_source) as (
            _, events, livekit):
        for n, name in enumerate(chosen):
            seen, failure = trio.run(measure, livekit, events, f"layers-{n}", CASES[name],
                                     args.settle, args.hold)
            for quality, layer, fps in asked(CASES[name]):
                row = (f"| {name} | {quality} | {describe_ask(layer, fps)} | "
                       f"{describe_seen(seen.get(quality), failure)} |")
                print(row, flush=True)
                rows.append(row)
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()

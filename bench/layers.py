"""The simulcast layers a LiveKit subscriber receives, per video preset, beside what the
preset asks for.

Publishing raw frames with simulcast lets libwebrtc inside the SDK choose the lower
layers (docs/DESIGN.md), so the preset table (REFERENCE.md §5, relay/worker/layers.py) says
what we ask for, not what viewers get. This measures the latter: for every preset
(and one custom VP8 option set) a session worker (relay/worker/main.py) is fed a
1920x1080 30 fps H.264 + AAC source in real time (larger than every preset's top
layer, so no layer is limited by the source) and publishes into a real
livekit-server; a subscriber process selects HIGH, MEDIUM and LOW in turn
(`set_video_quality`) and reports, per layer, the frame size it decoded and the
frame rate and bitrate from its receiver's WebRTC stats over the hold period.

Run: .venv/bin/python bench/layers.py [--presets NAME,...] [--hold 4] [--settle 2]
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

SOURCE = (1920, 1080)  # bench/rtmp.py's encode(): 1080p30, above every preset's top layer
QUALITIES = {"HIGH": models.VideoQuality.HIGH, "MEDIUM": models.VideoQuality.MEDIUM,
             "LOW": models.VideoQuality.LOW}
CUSTOM_VP8 = "CUSTOM_VP8_720P_360P"
# The SDK's subscriber process now and then aborts as it exits (a Rust panic, "panic in a
# function that cannot unwind", 4 times in ~70 runs): one more subscriber then.
SUBSCRIBER_ATTEMPTS = 2
RAMP_MOST = 20.0  # seconds on HIGH at most before measuring (the bandwidth estimate ramps)


def cases() -> dict[str, pb.IngressVideoOptions]:
    """Every preset in enum order, then a custom VP8 option set with two layers.

    The custom layers are given without bitrates, so they also show the §5 default
    bitrate formula at work.
    """
    options = {name: pb.IngressVideoOptions(preset=value)
               for name, value in pb.IngressVideoEncodingPreset.items()}
    options[CUSTOM_VP8] = pb.IngressVideoOptions(options=pb.IngressVideoEncodingOptions(
        video_codec=models.VideoCodec.VP8, frame_rate=30, layers=[
            models.VideoLayer(quality=models.VideoQuality.HIGH, width=1280, height=720),
            models.VideoLayer(quality=models.VideoQuality.LOW, width=640, height=360)]))
    return options


async def measure(livekit: LiveKitServer, events: list[rtmp.Event], room: str,
                  options: pb.IngressVideoOptions, settle: float, hold: float
                  ) -> tuple[dict[str, LayerSeen], str]:
    """Run one session worker with `options` and a layer-selecting subscriber on it;
    what the subscriber got per layer, and why the worker failed if it did.

    Nothing is counted until HIGH arrives at 90% of the top layer's bitrate (or
    RAMP_MOST has passed): the figures are for a session past its bandwidth ramp. A
    single-layer encoding is published without simulcast, so only HIGH is measured.
    """
    asks = asked(options)
    top = asks[models.VideoQuality.HIGH][0]
    qualities = QUALITIES if len(asks) > 1 else {"HIGH": models.VideoQuality.HIGH}
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


def asked(options: pb.IngressVideoOptions) -> dict[int, tuple[LayerSpec, float]]:
    """Quality -> (layer fitted to the source, frame rate): what the session asks for."""
    encoding = video_encoding(options)
    return {layer.quality: (layer, encoding.frame_rate)
            for layer in fit_layers(encoding, *SOURCE)}


def describe_ask(ask: tuple[LayerSpec, float] | None) -> str:
    if ask is None:
        return "-"
    layer, fps = ask
    return f"{layer.width}x{layer.height} {fps:g} fps {layer.bitrate / 1000:,.0f} kbit/s"


def describe_seen(seen: LayerSeen) -> str:
    """The size most frames had (others listed, e.g. a switch late in the hold)."""
    if not seen.sizes:
        return "no frames"
    (w, h), _ = seen.sizes.most_common(1)[0]
    text = f"{w}x{h} {seen.fps:.1f} fps {seen.kbps:,.0f} kbit/s"
    others = [f"{ow}x{oh}: {n}" for (ow, oh), n in seen.sizes.most_common()[1:]]
    return text + (f" (also {', '.join(others)} frames)" if others else "")


def versions() -> str:
    """The SDK and server versions, which decide the lower layers (printed with the table)."""
    server = subprocess.run([str(ROOT / "scripts" / "livekit-server"), "install"],
                            check=True, capture_output=True, text=True).stdout.strip()
    version = subprocess.run([server, "--version"], capture_output=True,
                             text=True).stdout.strip()
    return f"livekit (python SDK) {importlib.metadata.version('livekit')}, {version}"


def main() -> None:
    options = cases()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(options),
                        help="comma-separated preset names (default: all, and "
                             f"{CUSTOM_VP8})")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds after each layer selection that are not counted")
    parser.add_argument("--hold", type=float, default=4.0,
                        help="seconds each layer is measured")
    args = parser.parse_args()
    chosen = args.presets.split(",")
    unknown = [name for name in chosen if name not in options]
    if unknown:
        parser.error(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(options)}")
    print("command:", " ".join(sys.argv))
    print(versions())
    rows = ["| preset | layer | preset asks (WxH fps kbit/s) | subscriber gets (WxH fps "
            "kbit/s) |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp, source_and_server(Path(tmp)) as (
            _, events, livekit):
        for n, name in enumerate(chosen):
            seen, failure = trio.run(measure, livekit, events, f"layers-{n}", options[name],
                                     args.settle, args.hold)
            asks = asked(options[name])
            for layer, quality in QUALITIES.items():
                got = (f"session failed: {failure}" if failure else
                       describe_seen(seen[layer]) if layer in seen else
                       "one layer, no simulcast: the HIGH row")
                row = f"| {name} | {layer} | {describe_ask(asks.get(quality))} | {got} |"
                print(row, flush=True)
                rows.append(row)
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()

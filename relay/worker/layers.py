"""Resolve the encoding an ingress session actually uses (REFERENCE.md §5).

Stored ``IngressVideoOptions`` / ``IngressAudioOptions`` stay exactly as the client sent
them; defaults are applied here, when a session starts, so that changing a default never
rewrites stored state and ``GetIngress`` keeps echoing what the client asked for.

Everything in this module is pure: frozen dataclasses in, frozen dataclasses out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from livekit.protocol import ingress as ingress_pb
from livekit.protocol import models

__all__ = [
    "AUDIO_PRESETS",
    "DEFAULT_AUDIO_PRESET",
    "DEFAULT_VIDEO_PRESET",
    "PRESETS",
    "AudioEncoding",
    "LayerSpec",
    "VideoEncoding",
    "audio_encoding",
    "default_layer_bitrate",
    "derive_layers",
    "fit_layers",
    "video_encoding",
]

LOW: int = models.VideoQuality.LOW
MEDIUM: int = models.VideoQuality.MEDIUM
HIGH: int = models.VideoQuality.HIGH

DEFAULT_VIDEO_PRESET: int = ingress_pb.IngressVideoEncodingPreset.H264_720P_30FPS_3_LAYERS
DEFAULT_AUDIO_PRESET: int = ingress_pb.IngressAudioEncodingPreset.OPUS_STEREO_96KBPS

DEFAULT_FRAME_RATE = 30.0
# Custom options without layers: HIGH 1280x720 at 1.7 Mbit/s, MEDIUM/LOW derived.
DEFAULT_CUSTOM_TOP = (1280, 720, 1_700_000)
# Reference point of the bitrate formula for a custom layer given without a bitrate.
REFERENCE_BITRATE = 3_500_000
REFERENCE_FPS = 30.0
REFERENCE_AREA = 1920 * 1080
# Bitrate grows with area ** 0.75: fewer pixels need fewer bits, but not proportionally.
BITRATE_EXPONENT = 0.75

OPUS_SAMPLE_RATE = 48_000
OPUS_FRAME_MS = 20
OPUS_MONO_BITRATE = 64_000
OPUS_STEREO_BITRATE = 96_000

_SUPPORTED_VIDEO_CODECS = frozenset({models.VideoCodec.H264_BASELINE, models.VideoCodec.VP8})
_LAYER_QUALITIES = (LOW, MEDIUM, HIGH)


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One simulcast layer: a bounding box (or, after `fit_layers`, the real size)."""

    quality: int
    width: int
    height: int
    bitrate: int


@dataclass(frozen=True, slots=True)
class VideoEncoding:
    """Resolved video encoding; ``layers`` are ordered LOW -> HIGH, never empty."""

    codec: int
    frame_rate: float
    layers: tuple[LayerSpec, ...]

    def __post_init__(self) -> None:
        # Catch hand-built encodings early: simulcast publishing relies on this order.
        if not self.layers:
            raise ValueError("video encoding needs at least one layer")
        qualities = [layer.quality for layer in self.layers]
        if qualities != sorted(set(qualities)):
            raise ValueError("video layers must have distinct qualities ordered LOW -> HIGH")

    @property
    def top(self) -> LayerSpec:
        """The highest-quality layer (the one a single-layer publish would use)."""
        return self.layers[-1]


@dataclass(frozen=True, slots=True)
class AudioEncoding:
    """Resolved Opus encoding (48 kHz, 20 ms frames, as LiveKit publishes audio)."""

    codec: int
    bitrate: int
    channels: int
    disable_dtx: bool
    sample_rate: int = OPUS_SAMPLE_RATE
    frame_ms: int = OPUS_FRAME_MS


def _scaled_bitrate(bitrate: int, area_ratio: float) -> int:
    """The §5 layer rule: ``bitrate * area_ratio ** 0.75``, truncated like the reference."""
    return int(bitrate * area_ratio**BITRATE_EXPONENT)


def default_layer_bitrate(frame_rate: float, width: int, height: int) -> int:
    """Bitrate for a custom layer sent with bitrate 0, scaled from 1080p30 at 3.5 Mbit/s."""
    fps_factor = (frame_rate / REFERENCE_FPS) ** BITRATE_EXPONENT
    area_factor = (width * height / REFERENCE_AREA) ** BITRATE_EXPONENT
    return int(REFERENCE_BITRATE * fps_factor * area_factor)


def derive_layers(top: LayerSpec, qualities: tuple[int, ...]) -> tuple[LayerSpec, ...]:
    """Build layers below ``top``: each step down halves width and height (§5 layer rule).

    ``qualities`` lists the wanted qualities LOW -> HIGH and must end with ``top.quality``;
    ``(LOW, HIGH)`` gives the 2-layer presets, whose LOW is one halving below HIGH.
    """
    if not qualities or qualities[-1] != top.quality:
        raise ValueError("qualities must end with the top layer's quality")
    layers = [top]
    width, height = top.width, top.height
    for quality in reversed(qualities[:-1]):
        width, height = width // 2, height // 2
        ratio = (width * height) / (top.width * top.height)
        layers.append(LayerSpec(quality, width, height, _scaled_bitrate(top.bitrate, ratio)))
    return tuple(reversed(layers))


def _preset(
    fps: float, width: int, height: int, bitrate: int, qualities: tuple[int, ...]
) -> VideoEncoding:
    top = LayerSpec(HIGH, width, height, bitrate)
    return VideoEncoding(models.VideoCodec.H264_BASELINE, fps, derive_layers(top, qualities))


_P = ingress_pb.IngressVideoEncodingPreset
_THREE = (LOW, MEDIUM, HIGH)
_TWO = (LOW, HIGH)
_ONE = (HIGH,)

#: Preset value -> resolved encoding. Bitrates below HIGH are computed, not typed in, so
#: the table of §5 is a test of the layer rule rather than a second source of truth.
PRESETS: Mapping[int, VideoEncoding] = MappingProxyType(
    {
        _P.H264_720P_30FPS_3_LAYERS: _preset(30.0, 1280, 720, 1_900_000, _THREE),
        _P.H264_1080P_30FPS_3_LAYERS: _preset(30.0, 1920, 1080, 3_500_000, _THREE),
        _P.H264_540P_25FPS_2_LAYERS: _preset(25.0, 960, 540, 1_000_000, _TWO),
        _P.H264_720P_30FPS_1_LAYER: _preset(30.0, 1280, 720, 1_900_000, _ONE),
        _P.H264_1080P_30FPS_1_LAYER: _preset(30.0, 1920, 1080, 3_500_000, _ONE),
        _P.H264_720P_30FPS_3_LAYERS_HIGH_MOTION: _preset(30.0, 1280, 720, 2_500_000, _THREE),
        _P.H264_1080P_30FPS_3_LAYERS_HIGH_MOTION: _preset(30.0, 1920, 1080, 4_500_000, _THREE),
        _P.H264_540P_25FPS_2_LAYERS_HIGH_MOTION: _preset(25.0, 960, 540, 1_300_000, _TWO),
        _P.H264_720P_30FPS_1_LAYER_HIGH_MOTION: _preset(30.0, 1280, 720, 2_500_000, _ONE),
        _P.H264_1080P_30FPS_1_LAYER_HIGH_MOTION: _preset(30.0, 1920, 1080, 4_500_000, _ONE),
    }
)

_A = ingress_pb.IngressAudioEncodingPreset

#: Audio preset value -> resolved encoding.
AUDIO_PRESETS: Mapping[int, AudioEncoding] = MappingProxyType(
    {
        _A.OPUS_STEREO_96KBPS: AudioEncoding(
            models.AudioCodec.OPUS, OPUS_STEREO_BITRATE, 2, disable_dtx=False
        ),
        _A.OPUS_MONO_64KBS: AudioEncoding(
            models.AudioCodec.OPUS, OPUS_MONO_BITRATE, 1, disable_dtx=False
        ),
    }
)


def _custom_video(opts: ingress_pb.IngressVideoEncodingOptions) -> VideoEncoding:
    """Apply the §5 custom defaults; reject what validation should already have rejected."""
    codec = opts.video_codec or models.VideoCodec.H264_BASELINE  # DEFAULT_VC is 0
    if codec not in _SUPPORTED_VIDEO_CODECS:
        raise ValueError(f"unsupported video codec {codec}")
    if not math.isfinite(opts.frame_rate) or opts.frame_rate < 0:
        raise ValueError(f"invalid frame rate {opts.frame_rate}")
    fps = opts.frame_rate or DEFAULT_FRAME_RATE

    if not opts.layers:
        width, height, bitrate = DEFAULT_CUSTOM_TOP
        layers = derive_layers(LayerSpec(HIGH, width, height, bitrate), _THREE)
        return VideoEncoding(codec, fps, layers)

    specs: list[LayerSpec] = []
    for layer in opts.layers:
        if layer.quality not in _LAYER_QUALITIES:
            raise ValueError(f"invalid layer quality {layer.quality}")
        if layer.width == 0 or layer.height == 0:
            raise ValueError("invalid output media dimensions")
        bitrate = layer.bitrate or default_layer_bitrate(fps, layer.width, layer.height)
        specs.append(LayerSpec(layer.quality, layer.width, layer.height, bitrate))
    specs.sort(key=lambda spec: spec.quality)
    return VideoEncoding(codec, fps, tuple(specs))


def video_encoding(options: ingress_pb.IngressVideoOptions | None) -> VideoEncoding:
    """Resolve stored video options (possibly unset) into the encoding a session uses.

    No options, or options without an encoding choice, mean the default preset 0.
    Raises ValueError for values validation should have refused (unknown preset, codec).
    """
    if options is None:
        return PRESETS[DEFAULT_VIDEO_PRESET]
    if options.WhichOneof("encoding_options") == "options":
        return _custom_video(options.options)
    # preset set explicitly, or nothing set: proto3 reads the preset as 0 (the default).
    try:
        return PRESETS[options.preset]
    except KeyError:
        raise ValueError(f"invalid video preset {options.preset}") from None


def audio_encoding(options: ingress_pb.IngressAudioOptions | None) -> AudioEncoding:
    """Resolve stored audio options (possibly unset) into the Opus encoding a session uses.

    Custom defaults: codec -> OPUS, channels 0 -> 2, bitrate 0 -> 64 kbit/s mono or
    96 kbit/s stereo; DTX stays on unless the client disabled it.
    """
    if options is None:
        return AUDIO_PRESETS[DEFAULT_AUDIO_PRESET]
    if options.WhichOneof("encoding_options") != "options":
        try:
            return AUDIO_PRESETS[options.preset]
        except KeyError:
            raise ValueError(f"invalid audio preset {options.preset}") from None

    opts = options.options
    codec = opts.audio_codec or models.AudioCodec.OPUS  # DEFAULT_AC is 0
    if codec != models.AudioCodec.OPUS:
        raise ValueError(f"unsupported audio codec {codec}")
    channels = opts.channels or 2
    if channels > 2:
        raise ValueError(f"invalid audio channel count {channels}")
    bitrate = opts.bitrate or (OPUS_MONO_BITRATE if channels == 1 else OPUS_STEREO_BITRATE)
    return AudioEncoding(codec, bitrate, channels, disable_dtx=opts.disable_dtx)


def _even(value: float, limit: int) -> int:
    """Round to the nearest even integer (halves up), within [2, limit floored to even].

    4:2:0 encoders need even dimensions. The upper limit (the source and the box) keeps an
    odd source from being rounded up by a pixel; the floor of 2 means a 1-pixel source is
    the only case that grows, because a 0 dimension cannot be encoded at all.
    """
    rounded = 2 * math.floor(value / 2 + 0.5)
    return max(2, min(rounded, limit - limit % 2))


def fit_layers(
    encoding: VideoEncoding, source_width: int, source_height: int
) -> tuple[LayerSpec, ...]:
    """Fit the encoding's layers to a source, LOW -> HIGH (§5 bounding-box rule).

    Each layer is a bounding box: the source is scaled to fit inside it, keeping its aspect
    ratio, rounded to even dimensions, never upscaled. The first layer whose box already
    covers the source gets the source size and ends the list (higher layers would only
    repeat it); a layer whose fitted size equals the previous one is dropped for the same
    reason.

    Bitrate: a layer shrunk below its box gets ``bitrate * (fitted_area / box_area) ** 0.75``
    (truncated, at least 1), the same rule the presets use between layers. A user who picks
    "720p at 1.9 Mbit/s" expects 720p quality; spending the full budget on a 406x720
    portrait picture would waste bandwidth for viewers without improving what they see,
    and a layer that is exactly its box (e.g. 640x360 into MEDIUM) keeps its bitrate.
    """
    if source_width <= 0 or source_height <= 0:
        raise ValueError(f"invalid source size {source_width}x{source_height}")
    fitted: list[LayerSpec] = []
    for layer in encoding.layers:
        scale = min(layer.width / source_width, layer.height / source_height)
        covers = scale >= 1.0
        scale = min(scale, 1.0)
        width = _even(source_width * scale, min(source_width, layer.width))
        height = _even(source_height * scale, min(source_height, layer.height))
        box_area = layer.width * layer.height
        bitrate = layer.bitrate
        if width * height < box_area:
            bitrate = max(1, _scaled_bitrate(layer.bitrate, width * height / box_area))
        if not fitted or (fitted[-1].width, fitted[-1].height) != (width, height):
            fitted.append(LayerSpec(layer.quality, width, height, bitrate))
        if covers:
            break
    return tuple(fitted)

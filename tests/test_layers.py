"""Tests for relay.worker.layers: the §5 preset table, custom defaults and the bounding-box rule."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import ingress as ingress_pb
from livekit.protocol import models

from relay.worker.layers import (
    AUDIO_PRESETS,
    PRESETS,
    AudioEncoding,
    LayerSpec,
    VideoEncoding,
    audio_encoding,
    default_layer_bitrate,
    derive_layers,
    fit_layers,
    video_encoding,
)

LOW, MEDIUM, HIGH = models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH
H264 = models.VideoCodec.H264_BASELINE
VP8 = models.VideoCodec.VP8
OPUS = models.AudioCodec.OPUS
VP = ingress_pb.IngressVideoEncodingPreset
AP = ingress_pb.IngressAudioEncodingPreset

# REFERENCE.md §5, typed in literally: value -> (fps, HIGH, MEDIUM or None, LOW or None).
PRESET_TABLE: dict[int, tuple[float, tuple[int, int, int], tuple | None, tuple | None]] = {
    0: (30, (1280, 720, 1_900_000), (640, 360, 671_751), (320, 180, 237_500)),
    1: (30, (1920, 1080, 3_500_000), (960, 540, 1_237_436), (480, 270, 437_500)),
    2: (25, (960, 540, 1_000_000), None, (480, 270, 353_553)),
    3: (30, (1280, 720, 1_900_000), None, None),
    4: (30, (1920, 1080, 3_500_000), None, None),
    5: (30, (1280, 720, 2_500_000), (640, 360, 883_883), (320, 180, 312_500)),
    6: (30, (1920, 1080, 4_500_000), (960, 540, 1_590_990), (480, 270, 562_500)),
    7: (25, (960, 540, 1_300_000), None, (480, 270, 459_619)),
    8: (30, (1280, 720, 2_500_000), None, None),
    9: (30, (1920, 1080, 4_500_000), None, None),
}


def expected_layers(value: int) -> tuple[LayerSpec, ...]:
    _, high, medium, low = PRESET_TABLE[value]
    out = []
    for quality, row in ((LOW, low), (MEDIUM, medium), (HIGH, high)):
        if row is not None:
            out.append(LayerSpec(quality, *row))
    return tuple(out)


def dims(layers: tuple[LayerSpec, ...]) -> list[tuple[int, int]]:
    return [(layer.width, layer.height) for layer in layers]


def video_custom(**kwargs: object) -> ingress_pb.IngressVideoOptions:
    return ingress_pb.IngressVideoOptions(
        options=ingress_pb.IngressVideoEncodingOptions(**kwargs)  # type: ignore[arg-type]
    )


def audio_custom(**kwargs: object) -> ingress_pb.IngressAudioOptions:
    return ingress_pb.IngressAudioOptions(
        options=ingress_pb.IngressAudioEncodingOptions(**kwargs)  # type: ignore[arg-type]
    )


# --- presets -------------------------------------------------------------------------


def test_presets_cover_every_enum_value() -> None:
    assert set(PRESETS) == set(VP.values()) == set(PRESET_TABLE)
    assert set(AUDIO_PRESETS) == set(AP.values())


@pytest.mark.parametrize("value", sorted(PRESET_TABLE))
def test_preset_matches_reference_table(value: int) -> None:
    fps = PRESET_TABLE[value][0]
    expected = VideoEncoding(H264, fps, expected_layers(value))
    assert PRESETS[value] == expected
    assert video_encoding(ingress_pb.IngressVideoOptions(preset=value)) == expected  # type: ignore[arg-type]


def test_preset_names_match_table() -> None:
    assert VP.Name(0) == "H264_720P_30FPS_3_LAYERS"
    assert VP.Name(2) == "H264_540P_25FPS_2_LAYERS"
    assert VP.Name(9) == "H264_1080P_30FPS_1_LAYER_HIGH_MOTION"


@pytest.mark.parametrize("value", [2, 7])
def test_two_layer_presets_are_low_and_high_only(value: int) -> None:
    layers = PRESETS[value].layers
    assert [layer.quality for layer in layers] == [LOW, HIGH]
    # LOW is one halving below HIGH, not two.
    assert (layers[0].width * 2, layers[0].height * 2) == (layers[1].width, layers[1].height)


@pytest.mark.parametrize("value", [3, 4, 8, 9])
def test_one_layer_presets_are_high_only(value: int) -> None:
    layers = PRESETS[value].layers
    assert [layer.quality for layer in layers] == [HIGH]
    assert PRESETS[value].top is layers[0]


def test_default_preset_when_unset() -> None:
    assert video_encoding(None) == PRESETS[0]
    assert video_encoding(ingress_pb.IngressVideoOptions()) == PRESETS[0]
    named = ingress_pb.IngressVideoOptions(name="cam", source=models.TrackSource.CAMERA)
    assert video_encoding(named) == PRESETS[0]


def test_unknown_preset_rejected() -> None:
    with pytest.raises(ValueError, match="preset"):
        video_encoding(ingress_pb.IngressVideoOptions(preset=42))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="preset"):
        audio_encoding(ingress_pb.IngressAudioOptions(preset=7))  # type: ignore[arg-type]


def test_presets_mapping_is_read_only() -> None:
    with pytest.raises(TypeError):
        PRESETS[0] = PRESETS[1]  # type: ignore[index]


def test_dataclasses_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS[0].layers[0].bitrate = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        AUDIO_PRESETS[0].bitrate = 1  # type: ignore[misc]


def test_video_encoding_rejects_bad_layer_order() -> None:
    high = LayerSpec(HIGH, 1280, 720, 1)
    low = LayerSpec(LOW, 320, 180, 1)
    with pytest.raises(ValueError):
        VideoEncoding(H264, 30.0, ())
    with pytest.raises(ValueError):
        VideoEncoding(H264, 30.0, (high, low))
    with pytest.raises(ValueError):
        VideoEncoding(H264, 30.0, (low, low))


def test_derive_layers_requires_top_quality_last() -> None:
    with pytest.raises(ValueError):
        derive_layers(LayerSpec(HIGH, 1280, 720, 1), (LOW, MEDIUM))


# --- custom video defaults -------------------------------------------------------------


def test_custom_without_layers_uses_720p_1700k() -> None:
    enc = video_encoding(video_custom())
    assert enc == VideoEncoding(
        H264,
        30.0,
        (
            LayerSpec(LOW, 320, 180, 212_500),
            LayerSpec(MEDIUM, 640, 360, 601_040),
            LayerSpec(HIGH, 1280, 720, 1_700_000),
        ),
    )


def test_custom_codec_default_and_vp8() -> None:
    assert video_encoding(video_custom(video_codec=models.VideoCodec.DEFAULT_VC)).codec == H264
    assert video_encoding(video_custom(video_codec=VP8)).codec == VP8
    assert video_encoding(video_custom(video_codec=H264)).codec == H264


@pytest.mark.parametrize("codec", [models.VideoCodec.H264_MAIN, models.VideoCodec.H264_HIGH])
def test_custom_unsupported_codec_rejected(codec: int) -> None:
    with pytest.raises(ValueError, match="codec"):
        video_encoding(video_custom(video_codec=codec))


def test_custom_frame_rate_default_and_kept() -> None:
    assert video_encoding(video_custom(frame_rate=0)).frame_rate == 30.0
    assert video_encoding(video_custom(frame_rate=24.5)).frame_rate == 24.5
    with pytest.raises(ValueError, match="frame rate"):
        video_encoding(video_custom(frame_rate=-1))


def test_custom_no_layers_bitrate_does_not_depend_on_fps() -> None:
    # §5: "no layers -> HIGH 1280x720 at 1,700,000" whatever the frame rate.
    assert video_encoding(video_custom(frame_rate=60)).top.bitrate == 1_700_000


def test_custom_layer_bitrate_zero_uses_formula() -> None:
    layers = [models.VideoLayer(quality=HIGH, width=1920, height=1080)]
    enc = video_encoding(video_custom(layers=layers))
    assert enc.layers == (LayerSpec(HIGH, 1920, 1080, 3_500_000),)

    layers = [models.VideoLayer(quality=HIGH, width=1280, height=720)]
    enc = video_encoding(video_custom(frame_rate=60, layers=layers))
    expected = int(3_500_000 * (60 / 30) ** 0.75 * (1280 * 720 / (1920 * 1080)) ** 0.75)
    assert enc.top.bitrate == expected == 3_204_082
    assert default_layer_bitrate(60, 1280, 720) == expected

    # frame rate 0 means 30 in the formula too.
    low = models.VideoLayer(quality=LOW, width=960, height=540)
    enc = video_encoding(video_custom(layers=[low]))
    assert enc.layers == (LayerSpec(LOW, 960, 540, 1_237_436),)


def test_custom_layers_kept_and_sorted_low_to_high() -> None:
    layers = [
        models.VideoLayer(quality=HIGH, width=1920, height=1080, bitrate=5_000_000),
        models.VideoLayer(quality=LOW, width=640, height=360, bitrate=0),
    ]
    enc = video_encoding(video_custom(video_codec=VP8, frame_rate=25, layers=layers))
    assert enc.codec == VP8
    assert enc.frame_rate == 25
    assert enc.layers == (
        LayerSpec(LOW, 640, 360, default_layer_bitrate(25, 640, 360)),
        LayerSpec(HIGH, 1920, 1080, 5_000_000),
    )


def test_custom_bad_layers_rejected() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        video_encoding(video_custom(layers=[models.VideoLayer(quality=HIGH, width=0, height=2)]))
    with pytest.raises(ValueError, match="quality"):
        off = models.VideoLayer(quality=models.VideoQuality.OFF, width=2, height=2)
        video_encoding(video_custom(layers=[off]))
    with pytest.raises(ValueError):
        same = models.VideoLayer(quality=HIGH, width=2, height=2)
        video_encoding(video_custom(layers=[same, same]))


def test_stored_options_are_not_modified() -> None:
    options = video_custom()
    before = options.SerializeToString()
    video_encoding(options)
    assert options.SerializeToString() == before
    assert len(options.options.layers) == 0


# --- audio -------------------------------------------------------------------------------


def test_audio_presets() -> None:
    stereo = AudioEncoding(OPUS, 96_000, 2, disable_dtx=False)
    mono = AudioEncoding(OPUS, 64_000, 1, disable_dtx=False)
    assert audio_encoding(None) == stereo
    assert audio_encoding(ingress_pb.IngressAudioOptions()) == stereo
    assert audio_encoding(ingress_pb.IngressAudioOptions(preset=AP.OPUS_STEREO_96KBPS)) == stereo
    assert audio_encoding(ingress_pb.IngressAudioOptions(preset=AP.OPUS_MONO_64KBS)) == mono
    assert (stereo.sample_rate, stereo.frame_ms) == (48_000, 20)


@pytest.mark.parametrize(
    ("channels", "bitrate", "expected_channels", "expected_bitrate"),
    [
        (0, 0, 2, 96_000),
        (2, 0, 2, 96_000),
        (1, 0, 1, 64_000),
        (1, 32_000, 1, 32_000),
        (0, 128_000, 2, 128_000),
    ],
)
def test_audio_custom_defaults(
    channels: int, bitrate: int, expected_channels: int, expected_bitrate: int
) -> None:
    enc = audio_encoding(audio_custom(channels=channels, bitrate=bitrate))
    assert enc == AudioEncoding(OPUS, expected_bitrate, expected_channels, disable_dtx=False)


def test_audio_custom_codec_and_dtx() -> None:
    assert audio_encoding(audio_custom(audio_codec=models.AudioCodec.DEFAULT_AC)).codec == OPUS
    assert audio_encoding(audio_custom(audio_codec=OPUS)).codec == OPUS
    assert audio_encoding(audio_custom()).disable_dtx is False
    assert audio_encoding(audio_custom(disable_dtx=True)).disable_dtx is True
    with pytest.raises(ValueError, match="codec"):
        audio_encoding(audio_custom(audio_codec=models.AudioCodec.AAC))
    with pytest.raises(ValueError, match="channel"):
        audio_encoding(audio_custom(channels=6))


# --- bounding boxes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ((1920, 1080), [(320, 180), (640, 360), (1280, 720)]),
        ((640, 360), [(320, 180), (640, 360)]),
        ((720, 1280), [(102, 180), (202, 360), (406, 720)]),
        ((1440, 1080), [(240, 180), (480, 360), (960, 720)]),
    ],
)
def test_reference_examples_preset0(source: tuple[int, int], expected: list) -> None:
    assert dims(fit_layers(PRESETS[0], *source)) == expected


def test_exact_box_keeps_quality_labels_and_bitrates() -> None:
    assert fit_layers(PRESETS[0], 1920, 1080) == PRESETS[0].layers
    assert fit_layers(PRESETS[0], 1280, 720) == PRESETS[0].layers
    assert fit_layers(PRESETS[0], 640, 360) == PRESETS[0].layers[:2]
    assert fit_layers(PRESETS[0], 320, 180) == PRESETS[0].layers[:1]


def test_shrunk_layer_bitrate_scales_with_area() -> None:
    high = fit_layers(PRESETS[0], 720, 1280)[-1]
    assert (high.width, high.height) == (406, 720)
    assert high.bitrate == int(1_900_000 * ((406 * 720) / (1280 * 720)) ** 0.75)
    # A smaller source inside the HIGH box: HIGH is the source size, with fewer bits.
    layers = fit_layers(PRESETS[0], 800, 450)
    assert dims(layers) == [(320, 180), (640, 360), (800, 450)]
    assert layers[-1].bitrate == int(1_900_000 * (800 * 450 / (1280 * 720)) ** 0.75)
    assert [layer.quality for layer in layers] == [LOW, MEDIUM, HIGH]


def test_larger_source_is_downscaled_to_box() -> None:
    assert dims(fit_layers(PRESETS[4], 3840, 2160)) == [(1920, 1080)]
    assert fit_layers(PRESETS[4], 3840, 2160)[0].bitrate == 3_500_000


def test_one_layer_preset_small_source() -> None:
    layers = fit_layers(PRESETS[3], 640, 360)
    assert layers == (LayerSpec(HIGH, 640, 360, int(1_900_000 * 0.25**0.75)),)


@pytest.mark.parametrize(
    ("source", "expected", "qualities"),
    [
        ((1920, 1080), [(480, 270), (960, 540)], [LOW, HIGH]),
        ((480, 270), [(480, 270)], [LOW]),
        ((600, 400), [(406, 270), (600, 400)], [LOW, HIGH]),
    ],
)
def test_two_layer_preset_fit(source: tuple[int, int], expected: list, qualities: list) -> None:
    layers = fit_layers(PRESETS[2], *source)
    assert dims(layers) == expected
    assert [layer.quality for layer in layers] == qualities


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ((641, 361), [(320, 180), (640, 360)]),  # odd source: round down, never up
        ((1921, 1081), [(320, 180), (640, 360), (1280, 720)]),
        ((1, 1), [(2, 2)]),  # cannot encode 0 or odd dims; 2x2 is the floor
        ((3, 5), [(2, 4)]),
        ((2, 2), [(2, 2)]),
        ((4000, 2), [(320, 2), (640, 2), (1280, 2)]),
        ((2, 4000), [(2, 180), (2, 360), (2, 720)]),
        ((321, 181), [(320, 180)]),
    ],
)
def test_odd_and_tiny_sources(source: tuple[int, int], expected: list) -> None:
    assert dims(fit_layers(PRESETS[0], *source)) == expected


def test_duplicate_fitted_sizes_are_dropped() -> None:
    enc = VideoEncoding(
        H264,
        30.0,
        (
            LayerSpec(LOW, 320, 180, 100),
            LayerSpec(MEDIUM, 640, 180, 200),
            LayerSpec(HIGH, 1280, 720, 300),
        ),
    )
    layers = fit_layers(enc, 1920, 1080)
    assert dims(layers) == [(320, 180), (1280, 720)]
    assert [layer.quality for layer in layers] == [LOW, HIGH]


@pytest.mark.parametrize("source", [(0, 720), (1280, 0), (-2, 2)])
def test_invalid_source_rejected(source: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        fit_layers(PRESETS[0], *source)


# --- properties ------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=8192)
even_sizes = st.integers(min_value=1, max_value=2048).map(lambda n: 2 * n)


@st.composite
def encodings(draw: st.DrawFn) -> VideoEncoding:
    """Any preset, or 1-3 custom layers with nondecreasing even boxes (what validation allows)."""
    if draw(st.booleans()):
        return PRESETS[draw(st.sampled_from(sorted(PRESETS)))]
    qualities = draw(st.sampled_from([(HIGH,), (LOW, HIGH), (LOW, MEDIUM, HIGH), (MEDIUM,)]))
    widths = sorted(draw(st.lists(even_sizes, min_size=len(qualities), max_size=len(qualities))))
    heights = sorted(draw(st.lists(even_sizes, min_size=len(qualities), max_size=len(qualities))))
    bitrates = draw(
        st.lists(st.integers(1, 10_000_000), min_size=len(qualities), max_size=len(qualities))
    )
    layers = tuple(
        LayerSpec(q, w, h, b)
        for q, w, h, b in zip(qualities, widths, heights, bitrates, strict=True)
    )
    return VideoEncoding(H264, 30.0, layers)


@settings(max_examples=500)
@given(encodings(), sizes, sizes)
def test_fit_properties(enc: VideoEncoding, sw: int, sh: int) -> None:
    layers = fit_layers(enc, sw, sh)
    assert 1 <= len(layers) <= len(enc.layers)
    boxes = {layer.quality: layer for layer in enc.layers}
    prev: LayerSpec | None = None
    for layer in layers:
        box = boxes[layer.quality]
        # even, never zero
        assert layer.width >= 2 and layer.height >= 2
        assert layer.width % 2 == 0 and layer.height % 2 == 0
        # never upscale (a 1-pixel side becomes 2: the smallest encodable size), fit the box
        assert layer.width <= max(sw, 2) and layer.height <= max(sh, 2)
        assert layer.width <= box.width and layer.height <= box.height
        # aspect ratio kept within rounding: each side within 1px of the exact scaled size,
        # unless lifted to the 2px floor
        scale = min(1.0, box.width / sw, box.height / sh)
        assert layer.width == 2 or abs(layer.width - sw * scale) <= 1
        assert layer.height == 2 or abs(layer.height - sh * scale) <= 1
        # bitrate never exceeds the box's, stays positive
        assert 1 <= layer.bitrate <= box.bitrate
        # strictly growing layers, qualities in order
        if prev is not None:
            assert layer.quality > prev.quality
            assert layer.width >= prev.width and layer.height >= prev.height
            assert (layer.width, layer.height) != (prev.width, prev.height)
        prev = layer
    # the list stops at the first covering layer; only the last one may cover the source
    for layer in layers[:-1]:
        box = boxes[layer.quality]
        assert not (box.width >= sw and box.height >= sh)


@given(st.sampled_from(sorted(PRESETS)), sizes, sizes)
def test_preset_fit_top_is_source_or_box(value: int, sw: int, sh: int) -> None:
    """The top fitted layer either touches its box on one side or is the whole source."""
    enc = PRESETS[value]
    top = fit_layers(enc, sw, sh)[-1]
    box = next(layer for layer in enc.layers if layer.quality == top.quality)
    touches_box = top.width == box.width or top.height == box.height
    is_source = top.width == max(2, sw - sw % 2) and top.height == max(2, sh - sh % 2)
    assert touches_box or is_source


@given(st.integers(1, 4096).map(lambda n: 2 * n), st.integers(1, 4096).map(lambda n: 2 * n))
def test_fit_is_idempotent_on_even_sources(sw: int, sh: int) -> None:
    """Fitting the top layer's own size again changes nothing (no drift from rounding)."""
    first = fit_layers(PRESETS[0], sw, sh)
    top = first[-1]
    again = fit_layers(VideoEncoding(H264, 30.0, (top,)), top.width, top.height)
    assert again == (top,)

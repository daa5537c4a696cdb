"""I420Packer: the same bytes as PyAV's own conversion, into one reused buffer."""

from __future__ import annotations

import av
import numpy as np
import pytest

from relay.worker.picture import I420Packer


def picture(width: int, height: int, fmt: str = "yuv420p", seed: int = 0) -> av.VideoFrame:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)


def expected(frame: av.VideoFrame, width: int, height: int) -> bytes:
    """Row by row out of the planes (PyAV's to_ndarray refuses odd sizes)."""
    if (frame.width, frame.height, frame.format.name) != (width, height, "yuv420p"):
        frame = frame.reformat(width=width, height=height, format="yuv420p",
                               interpolation="BILINEAR")
    out = b""
    for plane, w, h in zip(frame.planes, (width, (width + 1) // 2, (width + 1) // 2),
                           (height, (height + 1) // 2, (height + 1) // 2), strict=True):
        data = bytes(plane)
        out += b"".join(data[row * plane.line_size:row * plane.line_size + w]
                        for row in range(h))
    return out


@pytest.mark.parametrize(("source", "target"), [
    ((1280, 720), (1280, 720)),  # no scaling: a plain repack out of padded planes
    ((1920, 1080), (1280, 720)),
    ((720, 1280), (406, 720)),  # odd chroma width (203)
    ((322, 242), (161, 121)),  # odd sizes (fit_layers keeps them even; no need to rely on it)
])
def test_packs_like_pyav(source: tuple[int, int], target: tuple[int, int]) -> None:
    packer = I420Packer()
    frame = picture(*source)
    assert bytes(packer.pack(frame, *target)) == expected(frame, *target)


def test_other_pixel_formats_are_converted() -> None:
    frame = picture(640, 360, fmt="nv12")
    assert bytes(I420Packer().pack(frame, 640, 360)) == expected(frame, 640, 360)


def test_one_buffer_is_reused_until_the_size_changes() -> None:
    packer = I420Packer()
    first = packer.pack(picture(320, 240, seed=1), 320, 240)
    second = packer.pack(picture(320, 240, seed=2), 320, 240)
    assert first is second and bytes(second) == expected(picture(320, 240, seed=2), 320, 240)
    third = packer.pack(picture(640, 480), 640, 480)
    assert len(third) == 640 * 480 * 3 // 2

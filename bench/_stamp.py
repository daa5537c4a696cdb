"""A 32-bit value drawn into a video frame's luma as large black/white blocks.

Used by bench/latency.py to carry the capture wall-clock time through encode,
transcode, simulcast scaling and decode. The blocks are big (48 px at 1280x720,
still 12 px in the 320x180 simulcast layer) so lossy coding and bilinear scaling
keep each block's centre clearly black or white. The value is drawn twice, the
second time inverted: a frame reads back only if every bit agrees with its
complement, which rejects half-decoded, concealed or mis-scaled pictures.
"""

from __future__ import annotations

import numpy as np

REF_W, REF_H = 1280, 720  # the layout is defined on this grid and scaled to the frame
BLOCK = 48
COLS, ROWS = 16, 4  # 2 rows for the value, 2 rows for its complement
X0, Y0 = 64, 64
BLACK, WHITE = 16, 235  # limited-range luma, as x264/libwebrtc produce
THRESHOLD = (BLACK + WHITE) // 2
BITS = 32


def _bits(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    bits = [(value >> (BITS - 1 - i)) & 1 for i in range(BITS)]
    return bits + [1 - b for b in bits]


def draw(y: np.ndarray, value: int) -> None:
    """Draw `value` into the luma plane `y` (h x w, uint8, 1280x720 expected) in place."""
    sx, sy = y.shape[1] / REF_W, y.shape[0] / REF_H
    for i, bit in enumerate(_bits(value)):
        r, c = divmod(i, COLS)
        x, yy = round((X0 + c * BLOCK) * sx), round((Y0 + r * BLOCK) * sy)
        y[yy:yy + round(BLOCK * sy), x:x + round(BLOCK * sx)] = WHITE if bit else BLACK


def read(y: np.ndarray) -> int | None:
    """The value drawn in luma plane `y` (any size), or None if the check fails.

    Samples the middle half of each block (scaled to the frame's size), thresholds
    the mean at mid-grey, and requires the second half to be the first inverted.
    """
    h, w = y.shape
    sx, sy = w / REF_W, h / REF_H
    half_x, half_y = max(1, round(BLOCK * sx / 4)), max(1, round(BLOCK * sy / 4))
    bits = []
    for i in range(2 * BITS):
        r, c = divmod(i, COLS)
        cx = round((X0 + (c + 0.5) * BLOCK) * sx)
        cy = round((Y0 + (r + 0.5) * BLOCK) * sy)
        patch = y[cy - half_y:cy + half_y, cx - half_x:cx + half_x]
        bits.append(1 if float(patch.mean()) > THRESHOLD else 0)
    value, check = bits[:BITS], bits[BITS:]
    if any(a == b for a, b in zip(value, check, strict=True)):
        return None
    return int("".join(map(str, value)), 2)

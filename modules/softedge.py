"""Soft edges for edits that change a region of an image and keep the rest: the region's window,
its alpha with an exact ramp across the edge, and the blend that copies untouched pixels bit for bit.
Shared by the photo pack's edits and the hf pack's REPLACE."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

Mask = NDArray[np.bool_]
Alpha = NDArray[np.float32]
Pixels = NDArray[np.uint8]
Window = tuple[int, int, int, int]  # x0, y0, x1, y1: a slice of the image, end-exclusive


def bbox(region: Mask) -> Window | None:
    """The smallest window holding every pixel of ``region``; None for an empty one."""
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def grow(win: Window, margin: int, width: int, height: int) -> Window:
    """``win`` grown by ``margin`` on every side, inside a width×height image."""
    x0, y0, x1, y1 = win
    return max(0, x0 - margin), max(0, y0 - margin), min(width, x1 + margin), min(height, y1 + margin)


def window_sum(a: NDArray[np.float32], r: int) -> NDArray[np.float32]:
    """Sum of ``a`` over every pixel's (2r+1)² window, zeros beyond the edge. The inputs are 0/1, so
    the running sums are small integers, exact in float32: "all inside" is an exact comparison."""
    k = 2 * r + 1
    return np.asarray(cv2.boxFilter(a, -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT),
                      dtype=np.float32)


def grown(region: Mask, r: int) -> Mask:
    """``region`` grown by ``r`` pixels (a (2r+1)² square around each of its pixels)."""
    out: Mask = window_sum(region.astype(np.float32), r) > 0
    return out


def soft(region: Mask, r: int, outward: bool) -> Alpha:
    """Alpha of the region with an edge ramp of half-width ``r``: exactly 1 where the whole window
    is inside, exactly 0 where it is all outside. ``outward`` first grows the region by ``r`` so the
    ramp lies wholly outside it and every region pixel has alpha 1."""
    ones = (grown(region, r) if outward else region).astype(np.float32)
    # Divided by the window's size clipped to the frame, so a region touching the border is not faded there.
    a = window_sum(ones, r) / window_sum(np.ones_like(ones), r)
    alpha: Alpha = a * a * (3 - 2 * a)  # smoothstep: no kink where the band meets either side; keeps 0 and 1 exact
    return alpha


def blend(fg: Pixels, bg: Pixels, alpha: Alpha) -> Pixels:
    """fg where alpha is 1, bg where it is 0 (both copied, not recomputed: bit-exact), their blend between."""
    out = np.where((alpha >= 1)[..., None], fg, bg)
    band = (alpha > 0) & (alpha < 1)
    if band.any():
        a = alpha[band][:, None]
        out[band] = np.rint(a * fg[band] + (1 - a) * bg[band]).astype(np.uint8)
    return out

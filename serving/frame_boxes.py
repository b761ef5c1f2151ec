"""Boxes inside the frame they refer to, at every entry point (review boxes, event boxes,
the review export): a box is only a place in its picture, and one outside it would become
a training label outside the image."""

from __future__ import annotations

import math
from collections.abc import Sequence

# No camera frame is this large; a coordinate past it is a mistake or an attack, never a place.
MAX_SIDE = 65536.0


class BoxError(ValueError):
    """A box that cannot be placed in its frame (a 422)."""


def finite_box(box: Sequence[float], what: str = "box") -> list[float]:
    """[x1, y1, x2, y2] as floats, refused if not finite, absurdly large, or not x1 < x2, y1 < y2."""
    if len(box) != 4:
        raise BoxError(f"{what} must be [x1, y1, x2, y2]")
    values = [float(v) for v in box]
    if not all(math.isfinite(v) and -MAX_SIDE <= v <= MAX_SIDE for v in values):
        raise BoxError(f"{what} coordinates must be finite numbers within ±{MAX_SIDE:g} pixels")
    if not (values[0] < values[2] and values[1] < values[3]):
        raise BoxError(f"{what} must have x1 < x2 and y1 < y2")
    return values


def clip_box(box: Sequence[float], width: float | None, height: float | None, what: str = "box") -> list[float]:
    """The part of `box` inside a width x height frame (only the lower bound 0 when the frame's
    size is unknown); a box with nothing inside the frame is refused."""
    x1, y1, x2, y2 = finite_box(box, what)
    right = width if width is not None else MAX_SIDE
    bottom = height if height is not None else MAX_SIDE
    clipped = [min(max(x1, 0.0), right), min(max(y1, 0.0), bottom), min(max(x2, 0.0), right), min(max(y2, 0.0), bottom)]
    if not (clipped[0] < clipped[2] and clipped[1] < clipped[3]):
        size = f"{width:g}x{height:g} " if width is not None and height is not None else ""
        raise BoxError(f"{what} {[x1, y1, x2, y2]} lies outside the {size}frame")
    return clipped


def unit_box(cx: float, cy: float, w: float, h: float) -> tuple[float, float, float, float] | None:
    """A normalised (centre, size) box cut to [0, 1], or None when nothing of it is in the image."""
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        return None  # min/max would turn a NaN into a full-image box
    x1, y1 = max(0.0, cx - w / 2), max(0.0, cy - h / 2)
    x2, y2 = min(1.0, cx + w / 2), min(1.0, cy + h / 2)
    if not (x1 < x2 and y1 < y2):
        return None
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1

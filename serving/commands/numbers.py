"""Numbers on the command line, refused by argparse with a usage line when out of range:
a count of 0 or -1, a tile of -5 px (which looped forever), a NaN interval or an input size
that asks for 126 GiB would otherwise be taken and fail later, or never."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (no upper bound when high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: {_range(low, high)}")
        return value
    return parse


def real(low: float, high: float | None = None, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] ((low, high] with low_open)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {_range(low, high, low_open)}")
        return value
    return parse


def _range(low: float, high: float | None, low_open: bool = False) -> str:
    first = f"> {low}" if low_open else f">= {low}"
    return first if high is None else f"{first} and <= {high}"


THREADS = whole(1, 256)
IMGSZ = whole(32, 4096)  # a model input side: beyond it one frame's input alone is gigabytes

"""Reading images and recorded videos from disk or bytes, safely.

Images are checked for size from their header before decoding, so a decompression
bomb is refused without allocating its pixels.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from detector.files import IMAGE_SUFFIXES

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".mov", ".ts", ".flv", ".webm", ".m4v"})
DEFAULT_MAX_PIXELS = 40_000_000  # ~ 8K x 5K; far above any camera, far below a bomb

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit, with our own message


class MediaError(ValueError):
    """An input file or upload cannot be used; the message says why."""


@dataclass(frozen=True)
class SampledFrame:
    source: str
    index: int  # frame number within the source (0 for a still image)
    time_s: float  # seconds from the source's start (0 for a still image)
    image: np.ndarray  # HxWx3 uint8 BGR


def probe_image(data: bytes, *, name: str = "image") -> tuple[str, int, int]:
    """(Pillow format name, width, height) from the header alone: no pixels are decoded."""
    if not data:
        raise MediaError(f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as header:
            return str(header.format), *header.size
    # ImportError: Ultralytics, once imported in the same process (bench, tests), hooks
    # Image.open to try a HEIF codec on anything unidentified, and that codec may be absent.
    except (UnidentifiedImageError, OSError, ValueError, ImportError) as exc:
        raise MediaError(f"{name}: not a readable image ({exc.__class__.__name__})") from None


# Reduced decoding, largest reduction first. For JPEG, libjpeg scales in the DCT domain and
# never holds the full-size pixels; other formats are decoded and shrunk, still with a lower
# peak than a full decode (measured: ~3.9 vs ~6.2 bytes per original pixel).
REDUCED_DECODES = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def decode_flag(width: int, height: int, min_side: int | None) -> int:
    """The cv2 read flag with the largest reduction that keeps the longest side >= min_side
    (None: full size)."""
    if min_side is not None:
        for factor, flag in REDUCED_DECODES:
            if max(width, height) // factor >= min_side:
                return flag
    return cv2.IMREAD_COLOR


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image",
                 min_side: int | None = None) -> np.ndarray:
    """Bytes of an encoded image -> HxWx3 BGR uint8, or MediaError. With `min_side`, at a
    size reduced by 2, 4 or 8 as far as the longest side stays >= min_side; the caller
    scales coordinates back by the header size over the decoded size."""
    _, width, height = probe_image(data, name=name)
    if width * height > max_pixels:
        raise MediaError(f"{name}: {width}x{height} exceeds the {max_pixels:,}-pixel limit")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), decode_flag(width, height, min_side))
    if image is None:
        raise MediaError(f"{name}: corrupt or truncated image data")
    return image


def read_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MediaError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, max_pixels=max_pixels, name=str(path))


def expand_sources(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files to process (folders expanded, sorted) and errors for paths that don't exist."""
    files: list[Path] = []
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            )
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


def sample_video(path: Path, every_s: float) -> Iterator[SampledFrame]:
    """One decoded frame per `every_s` seconds of video time (every frame if 0)."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: not a readable video ({exc})") from None
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_time = 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
                if t + 1e-6 < next_time:
                    continue
                next_time = t + every_s if every_s > 0 else t
                yield SampledFrame(str(path), index, t, frame.to_ndarray(format="bgr24"))
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: video decoding failed at {next_time:.1f}s ({exc})") from None


def sample_file(path: Path, every_s: float, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[SampledFrame]:
    if path.suffix.lower() in VIDEO_SUFFIXES:
        yield from sample_video(path, every_s)
    else:
        yield SampledFrame(str(path), 0, 0.0, read_image(path, max_pixels=max_pixels))

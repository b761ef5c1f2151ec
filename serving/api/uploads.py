"""Checks on uploaded images before anything decodes them: byte size, declared and real
type, and dimensions read from the header, so a small file claiming 100k x 100k pixels (a
decompression bomb) is refused without allocating a pixel. Each failure carries the HTTP
status to answer."""

from __future__ import annotations

import threading

import numpy as np

from serving.streams.media import MediaError, probe_image
from serving.streams.media import decode_image as _decode

# Pillow's format name -> the media type we accept it as.
ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
ALLOWED_TYPES = tuple(ALLOWED_FORMATS.values())


# /v1/detect decodes no larger than needed: the detector letterboxes every frame to its
# input (448-640 px), so a longest side of at least this loses nothing it uses.
DETECT_MIN_SIDE = 1280

_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF", b"BM")


class UploadError(ValueError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def check_image(data: bytes, declared_type: str | None, *, max_bytes: int, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """Returns (media type, (w, h)) or raises UploadError with the HTTP status to answer."""
    if len(data) > max_bytes:
        raise UploadError(f"image is larger than the {max_bytes}-byte limit", 413)
    if not data:
        raise UploadError("empty file")
    declared = (declared_type or "").split(";")[0].strip().lower()
    if declared and declared not in ALLOWED_TYPES and declared != "application/octet-stream":
        raise UploadError(f"unsupported content type {declared!r}; send one of {', '.join(ALLOWED_TYPES)}", 415)
    try:
        kind, width, height = probe_image(data, name="upload")
    except MediaError:
        if data.startswith(_MAGIC):  # the right kind of file, but broken: not a type problem
            raise UploadError("image header is unreadable (truncated or corrupt)") from None
        raise UploadError(f"not an image this service reads ({', '.join(ALLOWED_TYPES)})", 415) from None
    if kind not in ALLOWED_FORMATS:
        raise UploadError(f"{kind} images are not accepted; send one of {', '.join(ALLOWED_TYPES)}", 415)
    if width <= 0 or height <= 0:
        raise UploadError("image header has no dimensions")
    if width * height > max_pixels:
        raise UploadError(f"image is {width}x{height} pixels, over the {max_pixels}-pixel limit", 413)
    return ALLOWED_FORMATS[kind], (width, height)


class UploadDecoder:
    """Decodes checked uploads, at most `concurrent` at a time: with the pixel limit, that
    bounds decoding memory (settings.decode_memory_budget_mb). Blocking: call it from a
    worker thread; callers past the limit wait their turn."""

    def __init__(self, concurrent: int, max_pixels: int) -> None:
        self._slots = threading.BoundedSemaphore(concurrent)
        self.max_pixels = max_pixels

    def decode(self, data: bytes, *, min_side: int | None = None) -> np.ndarray:
        """Full size, or reduced as far as the longest side stays >= min_side."""
        with self._slots:
            try:
                return _decode(data, max_pixels=self.max_pixels, name="upload", min_side=min_side)
            except MediaError as exc:
                raise UploadError(f"the image cannot be decoded: {exc}") from None


def original_size(image: np.ndarray, header_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the full-size image as decoded: the header's, swapped when the
    decoder turned the picture upright by its EXIF orientation."""
    width, height = header_size
    upright = (image.shape[1] >= image.shape[0]) == (width >= height)
    return (width, height) if upright else (height, width)

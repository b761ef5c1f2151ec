"""Checks on uploaded images before anything decodes them: byte size, declared and real
type, and dimensions read from the header, so a small file claiming 100k x 100k pixels (a
decompression bomb) is refused without allocating a pixel. Each failure carries the HTTP
status to answer."""

from __future__ import annotations

import numpy as np

from serving.streams.media import MediaError, probe_image
from serving.streams.media import decode_image as _decode

# Pillow's format name -> the media type we accept it as.
ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
ALLOWED_TYPES = tuple(ALLOWED_FORMATS.values())


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


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    try:
        return _decode(data, max_pixels=max_pixels, name="upload")
    except MediaError as exc:
        raise UploadError(f"the image cannot be decoded: {exc}") from None

"""Checks on uploaded images before anything decodes them: size, type by magic bytes, and
dimensions read from the header, so a small file claiming 100k x 100k pixels (a
decompression bomb) is refused without allocating a pixel."""

from __future__ import annotations

import struct


class UploadError(ValueError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if length < 2:
            return None
        i += 2 + length
    return None


def image_size(data: bytes, media_type: str) -> tuple[int, int] | None:
    """(width, height) from the header, or None if the header is unreadable."""
    try:
        if media_type == "image/png" and len(data) >= 24:
            return struct.unpack(">II", data[16:24])
        if media_type == "image/jpeg":
            return _jpeg_size(data)
        if media_type == "image/bmp" and len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if media_type == "image/webp" and len(data) >= 30:
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = 1 + int.from_bytes(data[24:27], "little")
                h = 1 + int.from_bytes(data[27:30], "little")
                return w, h
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    except struct.error:
        return None
    return None


ALLOWED_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp")


def check_image(data: bytes, declared_type: str | None, *, max_bytes: int, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """Returns (media type, (w, h)) or raises UploadError with the HTTP status to answer."""
    if len(data) > max_bytes:
        raise UploadError(f"image is larger than the {max_bytes}-byte limit", 413)
    if not data:
        raise UploadError("empty file")
    declared = (declared_type or "").split(";")[0].strip().lower()
    if declared and declared not in ALLOWED_TYPES and declared != "application/octet-stream":
        raise UploadError(f"unsupported content type {declared!r}; send one of {', '.join(ALLOWED_TYPES)}", 415)
    media_type = sniff(data)
    if media_type is None:
        raise UploadError(f"not an image this service reads ({', '.join(ALLOWED_TYPES)})", 415)
    size = image_size(data, media_type)
    if size is None or size[0] <= 0 or size[1] <= 0:
        raise UploadError("image header is unreadable or has no dimensions")
    if size[0] * size[1] > max_pixels:
        raise UploadError(f"image is {size[0]}x{size[1]} pixels, over the {max_pixels}-pixel limit", 413)
    return media_type, size


def decode_image(data: bytes):  # noqa: ANN201 - numpy array
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3:
        raise UploadError("the image cannot be decoded")
    return image

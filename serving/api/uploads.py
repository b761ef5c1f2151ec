"""Checks on uploaded images before anything decodes them: byte size, declared and real
type, and dimensions read from the header, so a small file claiming 100k x 100k pixels (a
decompression bomb) is refused without allocating a pixel. Each failure carries the HTTP
status to answer."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
from starlette.concurrency import run_in_threadpool

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


# What an image costs while a request holds it, per pixel of its header size: the decode's
# peak (settings.DECODE_PEAK_BYTES_PER_PIXEL), which also covers what follows it (the pixels
# themselves, and on /v1/events the annotated copy and crop made from them).
HELD_BYTES_PER_PIXEL = 6.5


class DecodeBudget:
    """Bytes of decoding memory (settings.decode_memory_budget_mb), shared by every route
    that decodes. A request reserves its image's cost before decoding and keeps it until it
    is done with the pixels, so images decoded one after another but held at once (eight
    /v1/events frames going through their evidence writes) count together. A request over
    the budget waits on the event loop, holding no worker thread, for others to finish."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.in_use = 0
        self.peak = 0
        self._changed = asyncio.Condition()

    async def acquire(self, amount: int) -> None:
        amount = min(amount, self.total_bytes)  # one image alone always fits (the settings check its pixels)
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_use + amount <= self.total_bytes)
            self.in_use += amount
            self.peak = max(self.peak, self.in_use)

    async def release(self, amount: int) -> None:
        amount = min(amount, self.total_bytes)
        async with self._changed:
            self.in_use -= amount
            self._changed.notify_all()


class Reservation:
    """One image's share of the budget: acquired before decoding, released once, however
    the request ends."""

    def __init__(self, budget: DecodeBudget, amount: int) -> None:
        self.budget, self.amount = budget, amount
        self._held = False

    async def acquire(self) -> None:
        await self.budget.acquire(self.amount)
        self._held = True  # no await in between: a cancelled request either holds it here or never got it

    async def release(self) -> None:
        held, self._held = self._held, False
        if held:
            await self.budget.release(self.amount)


class UploadDecoder:
    """Decodes checked uploads, at most `concurrent` at a time (decoding is CPU work), each
    inside its request's reservation of the shared `budget`. Blocking: call it from a
    worker thread; callers past the limit wait their turn."""

    def __init__(self, concurrent: int, max_pixels: int, budget_bytes: int | None = None) -> None:
        self._slots = threading.BoundedSemaphore(concurrent)
        self.max_pixels = max_pixels
        self.budget = DecodeBudget(budget_bytes if budget_bytes is not None
                                   else int(concurrent * max_pixels * HELD_BYTES_PER_PIXEL))

    def reservation(self, header_size: tuple[int, int]) -> Reservation:
        """What an image of this (header) size holds of the budget; not yet acquired."""
        width, height = header_size
        return Reservation(self.budget, int(width * height * HELD_BYTES_PER_PIXEL))

    def decode(self, data: bytes, *, min_side: int | None = None) -> np.ndarray:
        """Full size, or reduced as far as the longest side stays >= min_side."""
        with self._slots:
            try:
                return _decode(data, max_pixels=self.max_pixels, name="upload", min_side=min_side)
            except MediaError as exc:
                raise UploadError(f"the image cannot be decoded: {exc}") from None


class DecodeHolds:
    """What one request holds of the decode budget: each image it decodes reserves its cost
    first, and all of it is given back when the request ends (serving.api.deps.decode_holds),
    after the route is done with the pixels, however it ends."""

    def __init__(self, decoder: UploadDecoder) -> None:
        self.decoder = decoder
        self.held: list[Reservation] = []

    async def decode(self, data: bytes, header_size: tuple[int, int], *, min_side: int | None = None) -> np.ndarray:
        """Waits for budget, then decodes in a worker thread (waiting there for a decode slot)."""
        hold = self.decoder.reservation(header_size)
        self.held.append(hold)
        await hold.acquire()
        return await run_in_threadpool(self.decoder.decode, data, min_side=min_side)

    async def release(self) -> None:
        for hold in self.held:
            await hold.release()


def original_size(image: np.ndarray, header_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the full-size image as decoded: the header's, swapped when the
    decoder turned the picture upright by its EXIF orientation."""
    width, height = header_size
    upright = (image.shape[1] >= image.shape[0]) == (width >= height)
    return (width, height) if upright else (height, width)
